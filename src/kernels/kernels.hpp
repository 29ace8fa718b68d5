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
#include <vector>

namespace assocmem {
enum class KernelChoice : int;  // engine.hpp
}

namespace assocmem::kernels {

constexpr std::size_t kBlock = 32;
inline std::size_t round_up(std::size_t x, std::size_t m) { return (x + m - 1) / m * m; }

/// One query's constants for the coarse screen (float: the screen's slack covers their rounding).
struct CoarseQuery {
  std::int32_t qsum;  // sum_j q8[j]
  float k16;          // 16 s_q
  float qn, rq, R, beta;
};

/// One layer norm's part of layer_norm_backward: the gradient at its output (nt rows of stride ldg), its gamma
/// (null: 1), and where its parameters' gradients go (null: not wanted).
struct NormGrad {
  const float* g = nullptr;
  std::size_t ldg = 0;
  const float* gamma = nullptr;
  float* dgamma = nullptr;
  float* dbias = nullptr;
};

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
  /// out[i] = the float of bfloat16 x[i] (exact: its bits shifted up), n elements.
  void (*from_bf16)(const std::uint16_t* x, std::size_t n, float* out);

  // Single-query (matrix-vector) kernels on row-major tiles: out[t] = q . row_t ; acc += sum_t p[t] row_t.
  void (*dots_f32)(const float* q, const float* rows, std::size_t nt, std::size_t d, float* out);
  void (*dots_bf16)(const float* q, const std::uint16_t* rows, std::size_t nt, std::size_t d, float* out);
  void (*axpy_f32)(const float* p, const float* rows, std::size_t nt, std::size_t d, float* acc);
  void (*axpy_bf16)(const float* p, const std::uint16_t* rows, std::size_t nt, std::size_t d, float* acc);

  // Online-softmax epilogue pieces (eq. 12 evaluated tile by tile).
  /// max_i beta * s[i]
  float (*scaled_max)(const float* s, std::size_t n, float beta);
  /// p[i] = exp(beta * s[i] - m); returns sum_i p[i]. Stable for beta * s[i] <= m (the softmax's shift);
  /// 0 where beta s[i] - m < -87.3; an argument above 88.376 (unused) gives exp(88.376).
  float (*exp_shift_sum)(const float* s, std::size_t n, float beta, float m, float* p);
  /// x[i] *= a
  void (*scale)(float* x, std::size_t n, float a);
  /// sum_i x[i] y[i] with every product and sum in double (a product of two floats is exact there).
  double (*dot_f64)(const float* x, const float* y, std::size_t n);
  /// The softmax's backward pass over one row of a tile (the fused attention's, eq. 12's weights
  /// recomputed): p[i] = exp(beta s[i] - m) as exp_shift_sum writes it, then g[i] = p[i] (g[i] - D)
  /// (d loss / d(beta s) from g = d loss / dp and D = sum_i p[i] g[i]); returns sum_i g[i] s[i] (the
  /// row's part of d loss / d beta) as dot_f64 sums it.
  double (*softmax_backward)(const float* s, std::size_t n, float beta, float m, float D, float* p, float* g);

  // Layer norms of memory rows (the fused attention's RowNorm, attention.hpp).
  /// nt rows of c entries y (row-major) -> out (row-major): (y - mean) rstd o gamma + bias (gamma, bias
  /// null: 1, 0), rstd = 1 / sqrt(var + eps) with the biased variance, all in float; stats[2 r] and
  /// stats[2 r + 1] (when stats is not null) receive row r's mean and rstd.
  void (*layer_norm)(const float* y, std::size_t nt, std::size_t c, float eps, const float* gamma, const float* bias,
                     float* out, float* stats);
  /// The same rows normalised again from stats that layer_norm computed for them (another norm of the same
  /// rows with the same eps: only gamma and bias differ): out = (y - mean) rstd o gamma + bias, the same
  /// operations as layer_norm's, so its bits where the parameters are the same.
  void (*layer_norm_apply)(const float* y, std::size_t nt, std::size_t c, const float* stats, const float* gamma,
                           const float* bias, float* out);
  /// layer_norm's backward pass over nt rows, from its stats and the gradients at the outputs of `count` (1
  /// or 2) norms of the same rows (NormGrad: g in rows of stride ldg, gamma, and dgamma, dbias where not
  /// null): with x = (y - mean) rstd and h = sum_k g_k o gamma_k (the norms are linear in their outputs'
  /// gradients: their backward passes share the row sums), dy = rstd (h - mean(h) - x mean(h o x)) (rows of
  /// stride c; written, or added to when add); each norm's dgamma += sum over the rows of g_k o x and
  /// dbias += sum of g_k.
  void (*layer_norm_backward)(const float* y, std::size_t nt, std::size_t c, const float* stats,
                              const NormGrad* grads, std::size_t count, float* dy, bool add);

  // Model A on +-1 patterns (bits: bit mu of a neuron's column is 1 where xi_mu,i = +1).
  /// sa = sum of a[mu] where (bit mu) != invert, sb = sum of b[mu] where (bit mu) == invert.
  void (*masked_sums)(const double* a, const double* b, const std::uint8_t* bits, std::size_t n, bool invert,
                      double* sa, double* sb);
  /// m[mu] += (bit mu) ? delta : -delta
  void (*add_signed)(std::int32_t* m, const std::uint8_t* bits, std::size_t n, std::int32_t delta);
  /// a[mu] = table[m[mu] + offset], b[mu] = table[m[mu] + offset + 2]
  void (*lookup_pairs)(const std::int32_t* m, std::size_t n, const double* table, std::int32_t offset, double* a,
                       double* b);

  // Certified retrieval's screen over the codes' 4-bit planes (codes.hpp: blocks of 16 memories x 8
  // dimensions, 64 bytes per group, values in [0, 15]) against the query's int8 codes q8 (zero-padded
  // to groups x 8): exact integer dot products, dot[16 b + r] = sum_j plane(b, r, j) q8[j], for nblocks
  // blocks.
  void (*nibble_dots)(const std::uint8_t* plane, std::size_t nblocks, std::size_t groups, const std::int8_t* q8,
                      std::int32_t* dot);
  /// The coarse screen of memories [0, nt) of a tile, from dot = nibble_dots on the high plane (the
  /// caller runs it first): coarse_bound below for each memory not masked (mask[t] != 0: masked; mask
  /// may be null): lo[t] (-inf where masked); the indices t with up >= cut appended to idx (returns how
  /// many; idx has 16 slots beyond nt for whole-vector stores); stats[0] = the largest lo, stats[1] = the
  /// largest up among the others (the memories the screen discards).
  std::size_t (*screen_coarse)(const std::int32_t* dot, std::size_t nt, const CoarseQuery& cq, const float* scale,
                               const float* err, const std::uint8_t* mask, float cut, float* lo, float* stats,
                               std::uint32_t* idx);
};

/// The coarse bound of one memory (one definition, compiled into each instruction set's screen_coarse,
/// which may evaluate it 16 memories at a time): dot = q8 . (h + 8), so q8 . h = dot - 8 qsum exactly and
/// a = 16 s s_q (q8 . h) approximates q . xi within e = qn e1 + rq (R + e1) (codes.hpp). In float: the
/// conversion and the three products round a by at most 4 2^-24 relative, e by about as much, and
/// beta (a -+ b) by 2 2^-24 more; b = e + 2^-16 (|a| + e) + 2^-100 covers them all with room (the last
/// term for underflow), so lo <= beta q . xi <= up.
inline void coarse_bound(std::int32_t dot, float scale, float err, const CoarseQuery& c, float* lo, float* up) {
  const float a = scale * c.k16 * static_cast<float>(dot - 8 * c.qsum);
  const float e = c.qn * err + c.rq * (c.R + err);
  const float b = e + 0x1p-16f * ((a < 0 ? -a : a) + e) + 0x1p-100f;
  *lo = c.beta * (a - b);
  *up = c.beta * (a + b);
}

/// The fine bound of one memory from its code's exact integer product p = q8 . c (c = 16 h + l,
/// codes.hpp): with q = sq q8 + r_q and xi = s c + r,
///   q . xi = s sq (q8 . c) + s (r_q . c) + q . r,
///   |s (r_q . c)| <= rq s ||c|| <= rq (R + err),  |q . r| <= qn err,
/// a = s sq p (exact integer, scaled in double), so with b = e + 2^-40 (|a| + e), e = qn err + rq (R + err)
/// (the 2^-40 covers every rounding of a, b and the bounds, each at most 2^-53 relative):
/// lo = beta (a - b) <= beta q . xi <= up = beta (a + b).
inline void screen_bound(std::int64_t p, float scale, float err, double sq, double qn, double rq, double R, double beta,
                         double* lo, double* up) {
  const double a = double(scale) * sq * double(p);
  const double e = qn * double(err) + rq * (R + double(err));
  const double b = e + 0x1p-40 * ((a < 0 ? -a : a) + e);
  *lo = beta * (a - b);
  *up = beta * (a + b);
}

using NibbleDots = decltype(Ops::nibble_dots);
/// Highway's AVX3 nibble_dots, for tests on CPUs where the AVX-512 table runs the VNNI one instead; null
/// where this build or this CPU has no AVX-512 or the table runs it anyway.
NibbleDots avx512_highway_nibble_dots();

/// A table written once with Highway (highway.cpp), compiled for one of its targets.
struct HighwayTable {
  std::int64_t target;  ///< HWY_AVX2, HWY_NEON, ...
  const Ops* ops;
};
/// The Highway tables this CPU runs, best first; the last is the portable one ("generic").
std::vector<HighwayTable> highway_tables();

/// Every table this CPU and build run, best first (available_kernels() gives their names).
const std::vector<const Ops*>& tables();
/// The portable table (Highway's EMU128 target): runs on any CPU.
const Ops& generic_ops();
/// The table named `name` ("avx512", "avx2", "sse4", "neon", "sve", "sve2", "generic", "avx512_bf16",
/// "amx_bf16") if this build and CPU run it, else null.
const Ops* table_named(const char* name);
/// The one place a table is chosen (engines of models A, B and C, the fused attention): a forced choice
/// that this CPU or build cannot run throws InvalidArgument; Auto follows the environment variable
/// ASSOCMEM_KERNEL when it is set (a kernel name, checked the same way), else takes the best table
/// here: for bfloat16 stores (bf16_store) AMX-BF16, then AVX-512 BF16; then the best Highway target
/// (AVX-512, AVX2, SSE4; SVE2, SVE, NEON), then the portable one.
const Ops& choose(KernelChoice choice, bool bf16_store);

/// The AVX-512 tables: Highway's AVX3 target with the hand-written entries of avx512.cpp put over it
/// where Highway 1.0.3 lacks the instruction (VNNI for the screen where the CPU has it; AVX-512 BF16
/// products; AMX-BF16 tiles). Null when this build or this CPU has no AVX-512 (F, BW, VL, DQ) /
/// AVX-512 BF16 / AMX-BF16 (which also needs the kernel's permission for AMX state, asked for once).
const Ops* avx512_ops();
const Ops* avx512_bf16_ops();
const Ops* amx_bf16_ops();

}  // namespace assocmem::kernels
