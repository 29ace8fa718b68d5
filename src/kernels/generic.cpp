// Portable kernels: plain loops that any x86-64 (or other) compiler vectorises as it can.
#include <cmath>
#include <cstring>

#include "kernels.hpp"

namespace assocmem::kernels {
namespace {

float bf16f(std::uint16_t b) {
  const std::uint32_t u = static_cast<std::uint32_t>(b) << 16;
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

std::uint16_t f2bf16(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, 4);
  if (std::isnan(x)) return static_cast<std::uint16_t>((u >> 16) | 0x40);
  return static_cast<std::uint16_t>((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}

void pack_xt(const float* rows, std::size_t nt, std::size_t d, float* xt) {
  const std::size_t nblocks = (nt + kBlock - 1) / kBlock;
  for (std::size_t b = 0; b < nblocks; ++b)
    for (std::size_t k = 0; k < d; ++k)
      for (std::size_t j = 0; j < kBlock; ++j) {
        const std::size_t t = b * kBlock + j;
        xt[(b * d + k) * kBlock + j] = t < nt ? rows[t * d + k] : 0.0f;
      }
}

void gemm1_f32(const float* q, std::size_t nb, std::size_t ldq, const float* xt, std::size_t nt, std::size_t d,
               float* S, std::size_t ldS) {
  const std::size_t nblocks = (nt + kBlock - 1) / kBlock;
  for (std::size_t r = 0; r < nb; ++r)
    for (std::size_t b = 0; b < nblocks; ++b) {
      float c[kBlock] = {};
      for (std::size_t k = 0; k < d; ++k) {
        const float qk = q[r * ldq + k];
        const float* x = xt + (b * d + k) * kBlock;
        for (std::size_t j = 0; j < kBlock; ++j) c[j] += qk * x[j];
      }
      std::memcpy(S + r * ldS + b * kBlock, c, sizeof c);
    }
}

void gemm2_f32(const float* P, std::size_t nb, std::size_t ldP, const float* rows, std::size_t nt, std::size_t d,
               float* acc, std::size_t dpad) {
  for (std::size_t r = 0; r < nb; ++r)
    for (std::size_t t = 0; t < nt; ++t) {
      const float p = P[r * ldP + t];
      const float* x = rows + t * d;
      float* a = acc + r * dpad;
      for (std::size_t j = 0; j < d; ++j) a[j] += p * x[j];
    }
}

void to_bf16(const float* x, std::size_t n, std::uint16_t* out) {
  for (std::size_t i = 0; i < n; ++i) out[i] = f2bf16(x[i]);
}

void dots_f32(const float* q, const float* rows, std::size_t nt, std::size_t d, float* out) {
  for (std::size_t t = 0; t < nt; ++t) {
    float s = 0;
    for (std::size_t k = 0; k < d; ++k) s += q[k] * rows[t * d + k];
    out[t] = s;
  }
}

void nibble_dots(const std::uint8_t* plane, std::size_t nblocks, std::size_t groups, const std::int8_t* q8,
                 std::int32_t* dot) {
  for (std::size_t b = 0; b < nblocks; ++b)
    for (std::size_t r = 0; r < 16; ++r) {
      std::int32_t s = 0;
      for (std::size_t g = 0; g < groups; ++g) {
        const std::uint8_t* p = plane + (b * groups + g) * 64 + 4 * r;
        for (std::size_t k = 0; k < 4; ++k)
          s += std::int32_t(p[k] & 15) * q8[8 * g + k] + std::int32_t(p[k] >> 4) * q8[8 * g + 4 + k];
      }
      dot[16 * b + r] = s;
    }
}

std::size_t screen_coarse(const std::uint8_t* high, std::size_t nt, std::size_t groups, const std::int8_t* q8,
                          const CoarseQuery& cq, const float* scale, const float* err, const std::uint8_t* mask,
                          float cut, std::int32_t* dot, float* lo, float* stats, std::uint32_t* idx) {
  nibble_dots(high, (nt + 15) / 16, groups, q8, dot);
  float ml = -__builtin_inff(), disc = ml;
  std::size_t n = 0;
  for (std::size_t t = 0; t < nt; ++t) {
    if (mask && mask[t]) {
      lo[t] = -__builtin_inff();
      continue;
    }
    float u;
    coarse_bound(dot[t], scale[t], err[t], cq, &lo[t], &u);
    ml = std::max(ml, lo[t]);
    if (u >= cut) idx[n++] = static_cast<std::uint32_t>(t);
    else disc = std::max(disc, u);
  }
  stats[0] = ml;
  stats[1] = disc;
  return n;
}

void dots_bf16(const float* q, const std::uint16_t* rows, std::size_t nt, std::size_t d, float* out) {
  for (std::size_t t = 0; t < nt; ++t) {
    float s = 0;
    for (std::size_t k = 0; k < d; ++k) s += q[k] * bf16f(rows[t * d + k]);
    out[t] = s;
  }
}

void axpy_f32(const float* p, const float* rows, std::size_t nt, std::size_t d, float* acc) {
  for (std::size_t t = 0; t < nt; ++t)
    for (std::size_t k = 0; k < d; ++k) acc[k] += p[t] * rows[t * d + k];
}

void axpy_bf16(const float* p, const std::uint16_t* rows, std::size_t nt, std::size_t d, float* acc) {
  for (std::size_t t = 0; t < nt; ++t)
    for (std::size_t k = 0; k < d; ++k) acc[k] += p[t] * bf16f(rows[t * d + k]);
}

float scaled_max(const float* s, std::size_t n, float beta) {
  float m = -INFINITY;
  for (std::size_t i = 0; i < n; ++i) m = std::fmax(m, beta * s[i]);
  return m;
}

float exp_shift_sum(const float* s, std::size_t n, float beta, float m, float* p) {
  float sum = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const float x = beta * s[i] - m;
    p[i] = x < -87.3f ? 0.0f : std::exp(x);  // no subnormal weights (as the AVX-512 kernel)
    sum += p[i];
  }
  return sum;
}

void scale(float* x, std::size_t n, float a) {
  for (std::size_t i = 0; i < n; ++i) x[i] *= a;
}

void masked_sums(const double* a, const double* b, const std::uint8_t* bits, std::size_t n, bool invert, double* sa,
                 double* sb) {
  double x = 0, y = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const bool set = ((bits[i / 8] >> (i % 8)) & 1) != invert;
    if (set) x += a[i];
    else y += b[i];
  }
  *sa = x;
  *sb = y;
}

void add_signed(std::int32_t* m, const std::uint8_t* bits, std::size_t n, std::int32_t delta) {
  for (std::size_t i = 0; i < n; ++i) m[i] += ((bits[i / 8] >> (i % 8)) & 1) ? delta : -delta;
}

void lookup_pairs(const std::int32_t* m, std::size_t n, const double* table, std::int32_t offset, double* a, double* b) {
  for (std::size_t i = 0; i < n; ++i) {
    a[i] = table[m[i] + offset];
    b[i] = table[m[i] + offset + 2];
  }
}

}  // namespace

const Ops& generic_ops() {
  static const Ops ops{"generic", false, 8, false,   &pack_xt,   &gemm1_f32, &gemm2_f32,  nullptr,       nullptr,
                       nullptr,   nullptr, &to_bf16,   &dots_f32,  &dots_bf16,  &axpy_f32,     &axpy_bf16,
                       &scaled_max, &exp_shift_sum, &scale, &masked_sums, &add_signed, &lookup_pairs,
                       &nibble_dots, &screen_coarse};
  return ops;
}

}  // namespace assocmem::kernels
