// Internal: the hot loops of the retrieval engine, one table of functions per instruction set.
//
// Layouts (all buffers allocated and zero-padded by the caller; kBlock = 32):
//   tile rows      nt memories, row-major, d floats (f32) or d uint16 (bf16) each, stride d
//   xt   (f32)     gemm1 operand: [ceil(nt/32)][d][32] floats, memories beyond nt are zero
//   xp1  (bf16)    gemm1 operand: [ceil(nt/32)][dpad/2][32][2] bf16 (pairs along d)
//   xp2  (bf16)    gemm2 operand: [dpad/32][ntpad/2][32][2] bf16 (pairs along memories)
//   S, P           nb x ldS scores / weights, ldS >= ntpad
//   acc            nb x dpad accumulators
// dpad = d rounded up to 32, ntpad = nt rounded up to 32.
#pragma once

#include <cstddef>
#include <cstdint>

namespace assocmem::kernels {

constexpr std::size_t kBlock = 32;
inline std::size_t round_up(std::size_t x, std::size_t m) { return (x + m - 1) / m * m; }

struct Ops {
  const char* name;
  bool bf16_products;      // gemm1/gemm2 take bf16 operands (queries and weights rounded to bf16)
  std::size_t row_block;   // queries per gemm call
  bool full_row_blocks;    // the bf16 gemms always process row_block rows (AMX): the caller pads
                           // queries, weights and accumulators with zero rows

  // f32 products.
  void (*pack_xt)(const float* rows, std::size_t nt, std::size_t d, float* xt);
  void (*gemm1_f32)(const float* q, std::size_t nb, std::size_t ldq, const float* xt, std::size_t nt, std::size_t d,
                    float* S, std::size_t ldS);
  void (*gemm2_f32)(const float* P, std::size_t nb, std::size_t ldP, const float* rows, std::size_t nt, std::size_t d,
                    float* acc, std::size_t dpad);
  // bf16 products (null where bf16_products is false).
  void (*pack_xp1)(const std::uint16_t* rows, std::size_t nt, std::size_t d, std::uint16_t* xp1);
  void (*pack_xp2)(const std::uint16_t* rows, std::size_t nt, std::size_t d, std::uint16_t* xp2);
  void (*gemm1_bf16)(const std::uint16_t* q, std::size_t nb, std::size_t ldq, const std::uint16_t* xp1, std::size_t nt,
                     std::size_t d, float* S, std::size_t ldS);
  void (*gemm2_bf16)(const std::uint16_t* P, std::size_t nb, std::size_t ldP, const std::uint16_t* xp2, std::size_t nt,
                     std::size_t d, float* acc, std::size_t dpad);
  /// out[i] = bf16(x[i]) (round to nearest even), n elements.
  void (*to_bf16)(const float* x, std::size_t n, std::uint16_t* out);

  // Single-query (matrix-vector) kernels on row-major tiles: out[t] = q . row_t ; acc += sum_t p[t] row_t.
  void (*dots_f32)(const float* q, const float* rows, std::size_t nt, std::size_t d, float* out);
  void (*dots_bf16)(const float* q, const std::uint16_t* rows, std::size_t nt, std::size_t d, float* out);
  void (*axpy_f32)(const float* p, const float* rows, std::size_t nt, std::size_t d, float* acc);
  void (*axpy_bf16)(const float* p, const std::uint16_t* rows, std::size_t nt, std::size_t d, float* acc);

  // Online-softmax epilogue pieces (eq. 12 evaluated tile by tile).
  /// max_i beta * s[i]
  float (*scaled_max)(const float* s, std::size_t n, float beta);
  /// p[i] = exp(beta * s[i] - m); returns sum_i p[i]. Stable for beta * s[i] <= m.
  float (*exp_shift_sum)(const float* s, std::size_t n, float beta, float m, float* p);
  /// x[i] *= a
  void (*scale)(float* x, std::size_t n, float a);

  // Model A on +-1 patterns (bits: bit mu of a neuron's column is 1 where xi_mu,i = +1).
  /// sa = sum of a[mu] where (bit mu) != invert, sb = sum of b[mu] where (bit mu) == invert.
  void (*masked_sums)(const double* a, const double* b, const std::uint8_t* bits, std::size_t n, bool invert,
                      double* sa, double* sb);
  /// m[mu] += (bit mu) ? delta : -delta
  void (*add_signed)(std::int32_t* m, const std::uint8_t* bits, std::size_t n, std::int32_t delta);
  /// a[mu] = table[m[mu] + offset], b[mu] = table[m[mu] + offset + 2]
  void (*lookup_pairs)(const std::int32_t* m, std::size_t n, const double* table, std::int32_t offset, double* a,
                       double* b);

  // Certified retrieval's screen (codes.hpp): the query quantised to qu = q8 + 128 (uint8), exact integer
  // dot products dot[t] = sum_j qu[j] codes_t[j] over int8 rows of stride d (d <= 65535), then
  // screen_bound (below) for each memory into lo, up, and their maxima max_lo, max_up.
  void (*screen_u8i8)(const std::uint8_t* qu, const std::int8_t* codes, const std::int32_t* csum, const float* scale,
                      const float* err, std::size_t nt, std::size_t d, double sq, double qn, double rq, double R,
                      double beta, std::int32_t* dot, double* lo, double* up, double* max_lo, double* max_up);
};

/// The screen's bound of one memory from its integer dot product (one definition, compiled into
/// each instruction set's screen_u8i8, which may evaluate it 8 memories at a time): with q = sq q8 + r_q
/// and xi_t = scale_t c_t + r_t,
///   q . xi_t = scale_t sq (q8 . c_t) + scale_t (r_q . c_t) + q . r_t,
///   |scale_t (r_q . c_t)| <= rq scale_t ||c_t|| <= rq (R + err_t),  |q . r_t| <= qn err_t,
/// a = scale_t sq (dot_t - 128 csum_t) (an exact integer, scaled in double), so with
/// b = e + 2^-40 (|a| + e), e = qn err_t + rq (R + err_t) (the 2^-40 covers every rounding of a, b and
/// the bounds, each at most 2^-53 relative): lo = beta (a - b), up = beta (a + b).
inline void screen_bound(std::int32_t dot, std::int32_t csum, float scale, float err, double sq, double qn, double rq,
                         double R, double beta, double* lo, double* up) {
  const double a = double(scale) * sq * double(dot - 128 * csum);
  const double e = qn * double(err) + rq * (R + double(err));
  const double b = e + 0x1p-40 * ((a < 0 ? -a : a) + e);
  *lo = beta * (a - b);
  *up = beta * (a + b);
}

const Ops& generic_ops();
/// Null when this build or this CPU has no AVX-512 (F, BW, VL, DQ) / AVX-512 BF16.
const Ops* avx512_ops();
const Ops* avx512_bf16_ops();
/// AMX-BF16 tile products (also needs the kernel's permission for AMX state, asked for once).
const Ops* amx_bf16_ops();

}  // namespace assocmem::kernels
