// AVX-512 kernels (F, BW, VL, DQ, FMA) and AVX-512 BF16 products (vdpbf16ps).
//
// This file is compiled with -mavx512* flags; it is entered only through the tables returned by
// avx512_table() / avx512_bf16_table(), which dispatch.cpp hands out after checking the CPU.
// Everything here has internal linkage and uses no inline library templates, so no AVX-512 code
// can leak into the rest of the program through a shared (weak) symbol.
#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kernels.hpp"

namespace assocmem::kernels {
namespace {

constexpr std::size_t B = 32;  // = kBlock
std::size_t up(std::size_t x, std::size_t m) { return (x + m - 1) / m * m; }
std::size_t lesser(std::size_t a, std::size_t b) { return a < b ? a : b; }
__mmask16 tail_mask(std::size_t n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1u); }

// exp(x) for float lanes: Cephes' range reduction and polynomial (|rel. error| < 2 ulp), scaled by
// 2^n with vscalefps. Results that would be subnormal (x < -87.3) are flushed to 0: subnormal
// weights would cost a micro-code assist in every later product. Inputs above 88.7 give inf.
__m512 exp512(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.3f), hi = _mm512_set1_ps(88.7f);
  const __mmask16 tiny = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
  x = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_maskz_mov_ps(static_cast<__mmask16>(~tiny), _mm512_scalef_ps(p, n));
}

__m512 load_bf16(const std::uint16_t* p, __mmask16 m) {
  const __m256i h = _mm256_maskz_loadu_epi16(m, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

std::uint32_t load_pair(const std::uint16_t* p) {
  std::uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// ---------------------------------------------------------------------------------------------
// f32 products.

void pack_xt(const float* rows, std::size_t nt, std::size_t d, float* xt) {
  const std::size_t nblocks = up(nt, B) / B;
  for (std::size_t b = 0; b < nblocks; ++b) {
    float* out = xt + b * d * B;
    const std::size_t m = lesser(B, nt - b * B);
    for (std::size_t j = 0; j < B; ++j) {
      if (j < m) {
        const float* src = rows + (b * B + j) * d;
        for (std::size_t k = 0; k < d; ++k) out[k * B + j] = src[k];
      } else {
        for (std::size_t k = 0; k < d; ++k) out[k * B + j] = 0.0f;
      }
    }
  }
}

template <int R>
void mk1_f32(const float* q, std::size_t ldq, const float* xtb, std::size_t d, float* S, std::size_t ldS) {
  __m512 c0[R], c1[R];
  for (int r = 0; r < R; ++r) c0[r] = c1[r] = _mm512_setzero_ps();
  for (std::size_t k = 0; k < d; ++k) {
    const __m512 x0 = _mm512_loadu_ps(xtb + k * B), x1 = _mm512_loadu_ps(xtb + k * B + 16);
    for (int r = 0; r < R; ++r) {
      const __m512 qb = _mm512_set1_ps(q[r * ldq + k]);
      c0[r] = _mm512_fmadd_ps(qb, x0, c0[r]);
      c1[r] = _mm512_fmadd_ps(qb, x1, c1[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    _mm512_storeu_ps(S + r * ldS, c0[r]);
    _mm512_storeu_ps(S + r * ldS + 16, c1[r]);
  }
}

void gemm1_f32(const float* q, std::size_t nb, std::size_t ldq, const float* xt, std::size_t nt, std::size_t d,
               float* S, std::size_t ldS) {
  const std::size_t nblocks = up(nt, B) / B;
  for (std::size_t r0 = 0; r0 < nb; r0 += 8) {
    const std::size_t R = lesser(8, nb - r0);
    for (std::size_t b = 0; b < nblocks; ++b) {
      const float* qq = q + r0 * ldq;
      const float* xb = xt + b * d * B;
      float* s = S + r0 * ldS + b * B;
      switch (R) {
        case 8: mk1_f32<8>(qq, ldq, xb, d, s, ldS); break;
        case 7: mk1_f32<7>(qq, ldq, xb, d, s, ldS); break;
        case 6: mk1_f32<6>(qq, ldq, xb, d, s, ldS); break;
        case 5: mk1_f32<5>(qq, ldq, xb, d, s, ldS); break;
        case 4: mk1_f32<4>(qq, ldq, xb, d, s, ldS); break;
        case 3: mk1_f32<3>(qq, ldq, xb, d, s, ldS); break;
        case 2: mk1_f32<2>(qq, ldq, xb, d, s, ldS); break;
        default: mk1_f32<1>(qq, ldq, xb, d, s, ldS); break;
      }
    }
  }
}

template <int R>
void mk2_f32(const float* P, std::size_t ldP, const float* rows, std::size_t nt, std::size_t d, std::size_t j0,
             float* acc, std::size_t dpad) {
  const __mmask16 m0 = tail_mask(d - j0), m1 = d > j0 + 16 ? tail_mask(d - j0 - 16) : __mmask16(0);
  // Accumulate from zero and add to acc at the end (keeps the accumulators in registers).
  __m512 c0[R], c1[R];
  for (int r = 0; r < R; ++r) c0[r] = c1[r] = _mm512_setzero_ps();
  for (std::size_t t = 0; t < nt; ++t) {
    const float* x = rows + t * d + j0;
    const __m512 x0 = _mm512_maskz_loadu_ps(m0, x), x1 = _mm512_maskz_loadu_ps(m1, x + 16);
    for (int r = 0; r < R; ++r) {
      const __m512 pb = _mm512_set1_ps(P[r * ldP + t]);
      c0[r] = _mm512_fmadd_ps(pb, x0, c0[r]);
      c1[r] = _mm512_fmadd_ps(pb, x1, c1[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    float* a = acc + r * dpad + j0;
    _mm512_storeu_ps(a, _mm512_add_ps(_mm512_loadu_ps(a), c0[r]));
    _mm512_storeu_ps(a + 16, _mm512_add_ps(_mm512_loadu_ps(a + 16), c1[r]));
  }
}

// R = 8 with the 16 accumulators as named variables: GCC 12 keeps an array of them in memory
// (a store per iteration) in this loop, halving the throughput.
#define ASSOCMEM_ROWS8(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
void mk2_f32_8(const float* P, std::size_t ldP, const float* rows, std::size_t nt, std::size_t d, std::size_t j0,
               float* acc, std::size_t dpad) {
  const __mmask16 m0 = tail_mask(d - j0), m1 = d > j0 + 16 ? tail_mask(d - j0 - 16) : __mmask16(0);
#define DECL(r) __m512 a##r = _mm512_setzero_ps(), b##r = _mm512_setzero_ps();
  ASSOCMEM_ROWS8(DECL)
#undef DECL
  for (std::size_t t = 0; t < nt; ++t) {
    const float* x = rows + t * d + j0;
    const __m512 x0 = _mm512_maskz_loadu_ps(m0, x), x1 = _mm512_maskz_loadu_ps(m1, x + 16);
#define STEP(r)                                               \
  {                                                           \
    const __m512 pb = _mm512_set1_ps(P[r * ldP + t]);         \
    a##r = _mm512_fmadd_ps(pb, x0, a##r);                     \
    b##r = _mm512_fmadd_ps(pb, x1, b##r);                     \
  }
    ASSOCMEM_ROWS8(STEP)
#undef STEP
  }
#define STORE(r)                                                                \
  {                                                                             \
    float* o = acc + r * dpad + j0;                                             \
    _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), a##r));               \
    _mm512_storeu_ps(o + 16, _mm512_add_ps(_mm512_loadu_ps(o + 16), b##r));     \
  }
  ASSOCMEM_ROWS8(STORE)
}

void mk2_bf16_8(const std::uint16_t* P, std::size_t ldP, const std::uint16_t* xpb, std::size_t tpairs, float* acc,
                std::size_t dpad) {
#define DECL(r) __m512 a##r = _mm512_setzero_ps(), b##r = _mm512_setzero_ps();
  ASSOCMEM_ROWS8(DECL)
#undef DECL
  for (std::size_t tp = 0; tp < tpairs; ++tp) {
    const __m512i x0 = _mm512_loadu_si512(xpb + tp * 2 * B), x1 = _mm512_loadu_si512(xpb + tp * 2 * B + B);
#define STEP(r)                                                                         \
  {                                                                                     \
    const __m512i pb = _mm512_set1_epi32(static_cast<int>(load_pair(P + r * ldP + 2 * tp))); \
    a##r = _mm512_dpbf16_ps(a##r, (__m512bh)pb, (__m512bh)x0);                          \
    b##r = _mm512_dpbf16_ps(b##r, (__m512bh)pb, (__m512bh)x1);                          \
  }
    ASSOCMEM_ROWS8(STEP)
#undef STEP
  }
  const std::size_t j0 = 0;
  ASSOCMEM_ROWS8(STORE)
}
#undef STORE

void gemm2_f32(const float* P, std::size_t nb, std::size_t ldP, const float* rows, std::size_t nt, std::size_t d,
               float* acc, std::size_t dpad) {
  for (std::size_t r0 = 0; r0 < nb; r0 += 8) {
    const std::size_t R = lesser(8, nb - r0);
    for (std::size_t j0 = 0; j0 < d; j0 += B) {
      const float* pp = P + r0 * ldP;
      float* a = acc + r0 * dpad;
      switch (R) {
        case 8: mk2_f32_8(pp, ldP, rows, nt, d, j0, a, dpad); break;
        case 7: mk2_f32<7>(pp, ldP, rows, nt, d, j0, a, dpad); break;
        case 6: mk2_f32<6>(pp, ldP, rows, nt, d, j0, a, dpad); break;
        case 5: mk2_f32<5>(pp, ldP, rows, nt, d, j0, a, dpad); break;
        case 4: mk2_f32<4>(pp, ldP, rows, nt, d, j0, a, dpad); break;
        case 3: mk2_f32<3>(pp, ldP, rows, nt, d, j0, a, dpad); break;
        case 2: mk2_f32<2>(pp, ldP, rows, nt, d, j0, a, dpad); break;
        default: mk2_f32<1>(pp, ldP, rows, nt, d, j0, a, dpad); break;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// bf16 products with f32 accumulation (vdpbf16ps: lane j += a[2j] b[2j] + a[2j+1] b[2j+1]).

void pack_xp1(const std::uint16_t* rows, std::size_t nt, std::size_t d, std::uint16_t* xp1) {
  const std::size_t nblocks = up(nt, B) / B, dpairs = up(d, B) / 2;
  for (std::size_t b = 0; b < nblocks; ++b)
    for (std::size_t j = 0; j < B; ++j) {
      const std::size_t t = b * B + j;
      for (std::size_t kp = 0; kp < dpairs; ++kp)
        for (std::size_t e = 0; e < 2; ++e) {
          const std::size_t k = 2 * kp + e;
          xp1[((b * dpairs + kp) * B + j) * 2 + e] = (t < nt && k < d) ? rows[t * d + k] : std::uint16_t(0);
        }
    }
}

void pack_xp2(const std::uint16_t* rows, std::size_t nt, std::size_t d, std::uint16_t* xp2) {
  const std::size_t dblocks = up(d, B) / B, tpairs = up(nt, B) / 2;
  for (std::size_t jb = 0; jb < dblocks; ++jb)
    for (std::size_t tp = 0; tp < tpairs; ++tp)
      for (std::size_t e = 0; e < 2; ++e) {
        const std::size_t t = 2 * tp + e;
        for (std::size_t j = 0; j < B; ++j) {
          const std::size_t k = jb * B + j;
          xp2[((jb * tpairs + tp) * B + j) * 2 + e] = (t < nt && k < d) ? rows[t * d + k] : std::uint16_t(0);
        }
      }
}

template <int R>
void mk1_bf16(const std::uint16_t* q, std::size_t ldq, const std::uint16_t* xpb, std::size_t dpairs, float* S,
              std::size_t ldS) {
  __m512 c0[R], c1[R];
  for (int r = 0; r < R; ++r) c0[r] = c1[r] = _mm512_setzero_ps();
  for (std::size_t kp = 0; kp < dpairs; ++kp) {
    const __m512i x0 = _mm512_loadu_si512(xpb + kp * 2 * B), x1 = _mm512_loadu_si512(xpb + kp * 2 * B + B);
    for (int r = 0; r < R; ++r) {
      const __m512i qb = _mm512_set1_epi32(static_cast<int>(load_pair(q + r * ldq + 2 * kp)));
      c0[r] = _mm512_dpbf16_ps(c0[r], (__m512bh)qb, (__m512bh)x0);
      c1[r] = _mm512_dpbf16_ps(c1[r], (__m512bh)qb, (__m512bh)x1);
    }
  }
  for (int r = 0; r < R; ++r) {
    _mm512_storeu_ps(S + r * ldS, c0[r]);
    _mm512_storeu_ps(S + r * ldS + 16, c1[r]);
  }
}

void gemm1_bf16(const std::uint16_t* q, std::size_t nb, std::size_t ldq, const std::uint16_t* xp1, std::size_t nt,
                std::size_t d, float* S, std::size_t ldS) {
  const std::size_t nblocks = up(nt, B) / B, dpairs = up(d, B) / 2;
  for (std::size_t r0 = 0; r0 < nb; r0 += 8) {
    const std::size_t R = lesser(8, nb - r0);
    for (std::size_t b = 0; b < nblocks; ++b) {
      const std::uint16_t* qq = q + r0 * ldq;
      const std::uint16_t* xb = xp1 + b * dpairs * 2 * B;
      float* s = S + r0 * ldS + b * B;
      switch (R) {
        case 8: mk1_bf16<8>(qq, ldq, xb, dpairs, s, ldS); break;
        case 7: mk1_bf16<7>(qq, ldq, xb, dpairs, s, ldS); break;
        case 6: mk1_bf16<6>(qq, ldq, xb, dpairs, s, ldS); break;
        case 5: mk1_bf16<5>(qq, ldq, xb, dpairs, s, ldS); break;
        case 4: mk1_bf16<4>(qq, ldq, xb, dpairs, s, ldS); break;
        case 3: mk1_bf16<3>(qq, ldq, xb, dpairs, s, ldS); break;
        case 2: mk1_bf16<2>(qq, ldq, xb, dpairs, s, ldS); break;
        default: mk1_bf16<1>(qq, ldq, xb, dpairs, s, ldS); break;
      }
    }
  }
}

template <int R>
void mk2_bf16(const std::uint16_t* P, std::size_t ldP, const std::uint16_t* xpb, std::size_t tpairs, float* acc,
              std::size_t dpad) {
  __m512 c0[R], c1[R];
  for (int r = 0; r < R; ++r) c0[r] = c1[r] = _mm512_setzero_ps();
  for (std::size_t tp = 0; tp < tpairs; ++tp) {
    const __m512i x0 = _mm512_loadu_si512(xpb + tp * 2 * B), x1 = _mm512_loadu_si512(xpb + tp * 2 * B + B);
    for (int r = 0; r < R; ++r) {
      const __m512i pb = _mm512_set1_epi32(static_cast<int>(load_pair(P + r * ldP + 2 * tp)));
      c0[r] = _mm512_dpbf16_ps(c0[r], (__m512bh)pb, (__m512bh)x0);
      c1[r] = _mm512_dpbf16_ps(c1[r], (__m512bh)pb, (__m512bh)x1);
    }
  }
  for (int r = 0; r < R; ++r) {
    float* a = acc + r * dpad;
    _mm512_storeu_ps(a, _mm512_add_ps(_mm512_loadu_ps(a), c0[r]));
    _mm512_storeu_ps(a + 16, _mm512_add_ps(_mm512_loadu_ps(a + 16), c1[r]));
  }
}

void gemm2_bf16(const std::uint16_t* P, std::size_t nb, std::size_t ldP, const std::uint16_t* xp2, std::size_t nt,
                std::size_t d, float* acc, std::size_t dpad) {
  const std::size_t dblocks = up(d, B) / B, tpairs = up(nt, B) / 2;
  for (std::size_t r0 = 0; r0 < nb; r0 += 8) {
    const std::size_t R = lesser(8, nb - r0);
    for (std::size_t jb = 0; jb < dblocks; ++jb) {
      const std::uint16_t* pp = P + r0 * ldP;
      const std::uint16_t* xb = xp2 + jb * tpairs * 2 * B;
      float* a = acc + r0 * dpad + jb * B;
      switch (R) {
        case 8: mk2_bf16_8(pp, ldP, xb, tpairs, a, dpad); break;
        case 7: mk2_bf16<7>(pp, ldP, xb, tpairs, a, dpad); break;
        case 6: mk2_bf16<6>(pp, ldP, xb, tpairs, a, dpad); break;
        case 5: mk2_bf16<5>(pp, ldP, xb, tpairs, a, dpad); break;
        case 4: mk2_bf16<4>(pp, ldP, xb, tpairs, a, dpad); break;
        case 3: mk2_bf16<3>(pp, ldP, xb, tpairs, a, dpad); break;
        case 2: mk2_bf16<2>(pp, ldP, xb, tpairs, a, dpad); break;
        default: mk2_bf16<1>(pp, ldP, xb, tpairs, a, dpad); break;
      }
    }
  }
}

void to_bf16(const float* x, std::size_t n, std::uint16_t* out) {
  std::size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i));
    _mm512_storeu_si512(out + i, (__m512i)v);
  }
  for (; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m256bh v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, x + i));
    _mm256_mask_storeu_epi16(out + i, m, (__m256i)v);
  }
}

// ---------------------------------------------------------------------------------------------
// Single query.

// Memory-bound: 8 rows at a time with software prefetch of the rows 16 ahead.
template <class Load>
void dots(const float* q, std::size_t nt, std::size_t d, float* out, std::size_t row_bytes, const char* base,
          Load load_row_chunk) {
  std::size_t t = 0;
  for (; t + 8 <= nt; t += 8) {
    for (std::size_t p = 0; p < 8 * row_bytes; p += 64) _mm_prefetch(base + (t + 16) * row_bytes + p, _MM_HINT_T0);
    __m512 a[8];
    for (int r = 0; r < 8; ++r) a[r] = _mm512_setzero_ps();
    for (std::size_t k = 0; k < d; k += 16) {
      const __mmask16 m = tail_mask(d - k);
      const __m512 qv = _mm512_maskz_loadu_ps(m, q + k);
      for (int r = 0; r < 8; ++r) a[r] = _mm512_fmadd_ps(qv, load_row_chunk(t + static_cast<std::size_t>(r), k, m), a[r]);
    }
    for (int r = 0; r < 8; ++r) out[t + static_cast<std::size_t>(r)] = _mm512_reduce_add_ps(a[r]);
  }
  for (; t < nt; ++t) {
    __m512 a = _mm512_setzero_ps();
    for (std::size_t k = 0; k < d; k += 16) {
      const __mmask16 m = tail_mask(d - k);
      a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + k), load_row_chunk(t, k, m), a);
    }
    out[t] = _mm512_reduce_add_ps(a);
  }
}

void dots_f32(const float* q, const float* rows, std::size_t nt, std::size_t d, float* out) {
  dots(q, nt, d, out, d * 4, reinterpret_cast<const char*>(rows),
       [&](std::size_t t, std::size_t k, __mmask16 m) { return _mm512_maskz_loadu_ps(m, rows + t * d + k); });
}

void dots_bf16(const float* q, const std::uint16_t* rows, std::size_t nt, std::size_t d, float* out) {
  dots(q, nt, d, out, d * 2, reinterpret_cast<const char*>(rows),
       [&](std::size_t t, std::size_t k, __mmask16 m) { return load_bf16(rows + t * d + k, m); });
}

// Exact integer dot products for the certified screen over 4-bit planes (codes.hpp): AVX-512 VNNI
// (vpdpbusd: 64 byte products per instruction, 16 memories per register, no horizontal sums) where the
// CPU has it (Zen 4, Ice Lake and later), else AVX-512BW (pmaddubsw then pmaddwd: 15 x 127 x 2 fits in
// int16, so nothing saturates).
std::int32_t q8_word(const std::int8_t* q8) {
  std::int32_t w;
  std::memcpy(&w, q8, 4);
  return w;
}

__attribute__((target("avx512vnni"))) void nibble_dots_vnni(const std::uint8_t* plane, std::size_t nblocks,
                                                             std::size_t groups, const std::int8_t* q8,
                                                             std::int32_t* dot) {
  const __m512i low = _mm512_set1_epi8(0x0F);
  std::size_t b = 0;
  // Four blocks at a time, two accumulators each: eight independent chains hide vpdpbusd's latency.
  // The next four blocks are prefetched: without it one core streams 8 GB/s here, with it 22 (Zen 4 VM).
  const std::size_t step = 4 * groups * 64;
  for (; b + 4 <= nblocks; b += 4) {
    const char* next = reinterpret_cast<const char*>(plane + b * groups * 64 + step);
    for (std::size_t o = 0; o < step; o += 64) _mm_prefetch(next + o, _MM_HINT_T0);
    __m512i A[4], B[4];
    for (int r = 0; r < 4; ++r) A[r] = B[r] = _mm512_setzero_si512();
    for (std::size_t g = 0; g < groups; ++g) {
      const __m512i qa = _mm512_set1_epi32(q8_word(q8 + 8 * g)), qb = _mm512_set1_epi32(q8_word(q8 + 8 * g + 4));
      for (int r = 0; r < 4; ++r) {
        const __m512i v = _mm512_loadu_si512(plane + ((b + std::size_t(r)) * groups + g) * 64);
        A[r] = _mm512_dpbusd_epi32(A[r], _mm512_and_si512(v, low), qa);
        B[r] = _mm512_dpbusd_epi32(B[r], _mm512_and_si512(_mm512_srli_epi16(v, 4), low), qb);
      }
    }
    for (int r = 0; r < 4; ++r) _mm512_storeu_si512(dot + 16 * (b + std::size_t(r)), _mm512_add_epi32(A[r], B[r]));
  }
  for (; b < nblocks; ++b) {
    __m512i A = _mm512_setzero_si512(), B = A;
    for (std::size_t g = 0; g < groups; ++g) {
      const __m512i v = _mm512_loadu_si512(plane + (b * groups + g) * 64);
      A = _mm512_dpbusd_epi32(A, _mm512_and_si512(v, low), _mm512_set1_epi32(q8_word(q8 + 8 * g)));
      B = _mm512_dpbusd_epi32(B, _mm512_and_si512(_mm512_srli_epi16(v, 4), low), _mm512_set1_epi32(q8_word(q8 + 8 * g + 4)));
    }
    _mm512_storeu_si512(dot + 16 * b, _mm512_add_epi32(A, B));
  }
}

void nibble_dots_bw(const std::uint8_t* plane, std::size_t nblocks, std::size_t groups, const std::int8_t* q8,
                    std::int32_t* dot) {
  const __m512i low = _mm512_set1_epi8(0x0F), ones = _mm512_set1_epi16(1);
  for (std::size_t b = 0; b < nblocks; ++b) {
    const char* next = reinterpret_cast<const char*>(plane + (b + 4) * groups * 64);
    for (std::size_t o = 0; o < groups * 64; o += 64) _mm_prefetch(next + o, _MM_HINT_T0);
    __m512i A = _mm512_setzero_si512();
    for (std::size_t g = 0; g < groups; ++g) {
      const __m512i v = _mm512_loadu_si512(plane + (b * groups + g) * 64);
      const __m512i lo = _mm512_maddubs_epi16(_mm512_and_si512(v, low), _mm512_set1_epi32(q8_word(q8 + 8 * g)));
      const __m512i hi = _mm512_maddubs_epi16(_mm512_and_si512(_mm512_srli_epi16(v, 4), low),
                                              _mm512_set1_epi32(q8_word(q8 + 8 * g + 4)));
      A = _mm512_add_epi32(A, _mm512_add_epi32(_mm512_madd_epi16(lo, ones), _mm512_madd_epi16(hi, ones)));
    }
    _mm512_storeu_si512(dot + 16 * b, A);
  }
}

void nibble_dots(const std::uint8_t* plane, std::size_t nblocks, std::size_t groups, const std::int8_t* q8,
                 std::int32_t* dot) {
  static const bool vnni = __builtin_cpu_supports("avx512vnni");
  (vnni ? nibble_dots_vnni : nibble_dots_bw)(plane, nblocks, groups, q8, dot);
}

// coarse_bound (kernels.hpp), 16 memories at a time, the same operations in the same order; the
// survivors' indices compressed in a register (a compressing store to memory is slow on Zen 4), so idx
// needs 16 slots beyond nt.
std::size_t screen_coarse(const std::uint8_t* high, std::size_t nt, std::size_t groups, const std::int8_t* q8,
                          const CoarseQuery& cq, const float* scale, const float* err, const std::uint8_t* mask,
                          float cut, std::int32_t* dot, float* lo, float* stats, std::uint32_t* idx) {
  nibble_dots(high, (nt + 15) / 16, groups, q8, dot);
  for (std::size_t t = 0; t < nt; t += 16) {  // the next tile's scales and bounds (the planes prefetch themselves)
    _mm_prefetch(reinterpret_cast<const char*>(scale + nt + t), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(err + nt + t), _MM_HINT_T0);
  }
  const __m512 k16 = _mm512_set1_ps(cq.k16), qn = _mm512_set1_ps(cq.qn), rq = _mm512_set1_ps(cq.rq);
  const __m512 R = _mm512_set1_ps(cq.R), beta = _mm512_set1_ps(cq.beta), vcut = _mm512_set1_ps(cut);
  const __m512 rel = _mm512_set1_ps(0x1p-16f), tiny = _mm512_set1_ps(0x1p-100f);
  const __m512 none = _mm512_set1_ps(-__builtin_inff());
  const __m512i shift = _mm512_set1_epi32(8 * cq.qsum);
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512 ml = none, disc = none;
  std::size_t n = 0;
  for (std::size_t t = 0; t < nt; t += 16) {
    const __mmask16 in = tail_mask(nt - t);
    __mmask16 m = in;
    if (mask) m &= _mm_mask_cmpeq_epi8_mask(in, _mm_maskz_loadu_epi8(in, mask + t), _mm_setzero_si128());
    const __m512 x = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_loadu_si512(dot + t), shift));
    const __m512 sc = _mm512_maskz_loadu_ps(m, scale + t), er = _mm512_maskz_loadu_ps(m, err + t);
    const __m512 a = _mm512_mul_ps(_mm512_mul_ps(sc, k16), x);
    const __m512 e = _mm512_add_ps(_mm512_mul_ps(qn, er), _mm512_mul_ps(rq, _mm512_add_ps(R, er)));
    const __m512 b = _mm512_add_ps(_mm512_add_ps(e, _mm512_mul_ps(rel, _mm512_add_ps(_mm512_abs_ps(a), e))), tiny);
    const __m512 l = _mm512_mul_ps(beta, _mm512_sub_ps(a, b)), u = _mm512_mul_ps(beta, _mm512_add_ps(a, b));
    _mm512_mask_storeu_ps(lo + t, in, _mm512_mask_blend_ps(m, none, l));
    ml = _mm512_mask_max_ps(ml, m, ml, l);
    const __mmask16 ge = _mm512_mask_cmp_ps_mask(m, u, vcut, _CMP_GE_OQ);
    disc = _mm512_mask_max_ps(disc, m & ~ge, disc, u);
    if (ge) {
      const __m512i ids = _mm512_add_epi32(iota, _mm512_set1_epi32(static_cast<int>(t)));
      _mm512_storeu_si512(idx + n, _mm512_maskz_compress_epi32(ge, ids));
      n += static_cast<std::size_t>(__builtin_popcount(ge));
    }
  }
  stats[0] = _mm512_reduce_max_ps(ml);
  stats[1] = _mm512_reduce_max_ps(disc);
  return n;
}

template <class Load>
void axpy(const float* p, std::size_t nt, std::size_t d, float* acc, Load load_row_chunk) {
  for (std::size_t j0 = 0; j0 < d; j0 += 64) {
    __mmask16 m[4];
    __m512 a[4];
    for (int c = 0; c < 4; ++c) {
      const std::size_t j = j0 + 16 * static_cast<std::size_t>(c);
      m[c] = j < d ? tail_mask(d - j) : __mmask16(0);
      a[c] = _mm512_maskz_loadu_ps(m[c], acc + j);
    }
    for (std::size_t t = 0; t < nt; ++t) {
      const __m512 pb = _mm512_set1_ps(p[t]);
      for (int c = 0; c < 4; ++c)
        if (m[c]) a[c] = _mm512_fmadd_ps(pb, load_row_chunk(t, j0 + 16 * static_cast<std::size_t>(c), m[c]), a[c]);
    }
    for (int c = 0; c < 4; ++c) _mm512_mask_storeu_ps(acc + j0 + 16 * static_cast<std::size_t>(c), m[c], a[c]);
  }
}

void axpy_f32(const float* p, const float* rows, std::size_t nt, std::size_t d, float* acc) {
  axpy(p, nt, d, acc, [&](std::size_t t, std::size_t k, __mmask16 m) { return _mm512_maskz_loadu_ps(m, rows + t * d + k); });
}

void axpy_bf16(const float* p, const std::uint16_t* rows, std::size_t nt, std::size_t d, float* acc) {
  axpy(p, nt, d, acc, [&](std::size_t t, std::size_t k, __mmask16 m) { return load_bf16(rows + t * d + k, m); });
}

// ---------------------------------------------------------------------------------------------
// Online-softmax epilogue.

float scaled_max(const float* s, std::size_t n, float beta) {
  __m512 m = _mm512_set1_ps(-__builtin_inff());
  const __m512 b = _mm512_set1_ps(beta);
  for (std::size_t i = 0; i < n; i += 16) {
    const __mmask16 k = tail_mask(n - i);
    m = _mm512_mask_max_ps(m, k, m, _mm512_mul_ps(b, _mm512_maskz_loadu_ps(k, s + i)));
  }
  return _mm512_reduce_max_ps(m);
}

float exp_shift_sum(const float* s, std::size_t n, float beta, float mx, float* p) {
  __m512 sum = _mm512_setzero_ps();
  const __m512 b = _mm512_set1_ps(beta), mv = _mm512_set1_ps(mx);
  for (std::size_t i = 0; i < n; i += 16) {
    const __mmask16 k = tail_mask(n - i);
    // beta*s rounded first, then the shift: the maximum gives exactly 0 (an FMA would keep the
    // rounding error of beta*s, ~1e24 at beta*s = 1e31), as scaled_max and the generic kernel do.
    const __m512 e = exp512(_mm512_sub_ps(_mm512_mul_ps(b, _mm512_maskz_loadu_ps(k, s + i)), mv));
    _mm512_mask_storeu_ps(p + i, k, e);
    sum = _mm512_mask_add_ps(sum, k, sum, e);
  }
  return _mm512_reduce_add_ps(sum);
}

void scale(float* x, std::size_t n, float a) {
  const __m512 av = _mm512_set1_ps(a);
  for (std::size_t i = 0; i < n; i += 16) {
    const __mmask16 k = tail_mask(n - i);
    _mm512_mask_storeu_ps(x + i, k, _mm512_mul_ps(av, _mm512_maskz_loadu_ps(k, x + i)));
  }
}

// ---------------------------------------------------------------------------------------------
// Model A on packed +-1 columns: 8 memories per mask byte.

void masked_sums(const double* a, const double* b, const std::uint8_t* bits, std::size_t n, bool invert, double* sa,
                 double* sb) {
  __m512d x0 = _mm512_setzero_pd(), x1 = x0, y0 = x0, y1 = x0;
  const std::uint8_t flip = invert ? 0xFF : 0x00;
  std::size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __mmask8 m0 = static_cast<__mmask8>(bits[i / 8] ^ flip), m1 = static_cast<__mmask8>(bits[i / 8 + 1] ^ flip);
    x0 = _mm512_mask_add_pd(x0, m0, x0, _mm512_loadu_pd(a + i));
    y0 = _mm512_mask_add_pd(y0, static_cast<__mmask8>(~m0), y0, _mm512_loadu_pd(b + i));
    x1 = _mm512_mask_add_pd(x1, m1, x1, _mm512_loadu_pd(a + i + 8));
    y1 = _mm512_mask_add_pd(y1, static_cast<__mmask8>(~m1), y1, _mm512_loadu_pd(b + i + 8));
  }
  for (; i < n; i += 8) {
    const std::size_t left = n - i;
    const __mmask8 valid = left >= 8 ? __mmask8(0xFF) : static_cast<__mmask8>((1u << left) - 1u);
    const __mmask8 m0 = static_cast<__mmask8>((bits[i / 8] ^ flip) & valid);
    const __mmask8 n0 = static_cast<__mmask8>(~(bits[i / 8] ^ flip) & valid);
    x0 = _mm512_mask_add_pd(x0, m0, x0, _mm512_maskz_loadu_pd(valid, a + i));
    y0 = _mm512_mask_add_pd(y0, n0, y0, _mm512_maskz_loadu_pd(valid, b + i));
  }
  *sa = _mm512_reduce_add_pd(_mm512_add_pd(x0, x1));
  *sb = _mm512_reduce_add_pd(_mm512_add_pd(y0, y1));
}

void add_signed(std::int32_t* m, const std::uint8_t* bits, std::size_t n, std::int32_t delta) {
  const __m512i plus = _mm512_set1_epi32(delta), minus = _mm512_set1_epi32(-delta);
  for (std::size_t i = 0; i < n; i += 16) {
    const std::size_t left = n - i;
    const __mmask16 valid = tail_mask(left);
    std::uint16_t word = bits[i / 8];
    if (left > 8) word = static_cast<std::uint16_t>(word | (bits[i / 8 + 1] << 8));
    const __m512i step = _mm512_mask_blend_epi32(static_cast<__mmask16>(word), minus, plus);
    const __m512i v = _mm512_maskz_loadu_epi32(valid, m + i);
    _mm512_mask_storeu_epi32(m + i, valid, _mm512_add_epi32(v, step));
  }
}

void lookup_pairs(const std::int32_t* m, std::size_t n, const double* table, std::int32_t offset, double* a, double* b) {
  const __m256i off = _mm256_set1_epi32(offset), off2 = _mm256_set1_epi32(offset + 2);
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i idx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(m + i));
    _mm512_storeu_pd(a + i, _mm512_i32gather_pd(_mm256_add_epi32(idx, off), table, 8));
    _mm512_storeu_pd(b + i, _mm512_i32gather_pd(_mm256_add_epi32(idx, off2), table, 8));
  }
  for (; i < n; ++i) {
    a[i] = table[m[i] + offset];
    b[i] = table[m[i] + offset + 2];
  }
}

constexpr Ops kAvx512{"avx512", false, 8, false,      &pack_xt,   &gemm1_f32, &gemm2_f32,  nullptr,       nullptr,
                      nullptr,  nullptr,    &to_bf16,   &dots_f32,  &dots_bf16,  &axpy_f32,     &axpy_bf16,
                      &scaled_max, &exp_shift_sum, &scale, &masked_sums, &add_signed, &lookup_pairs,
                      &nibble_dots, &screen_coarse};
constexpr Ops kAvx512Bf16{"avx512_bf16", true, 8, false,        &pack_xt,  &gemm1_f32, &gemm2_f32, &pack_xp1,
                          &pack_xp2,     &gemm1_bf16, &gemm2_bf16, &to_bf16, &dots_f32,  &dots_bf16,
                          &axpy_f32,     &axpy_bf16,  &scaled_max, &exp_shift_sum, &scale, &masked_sums, &add_signed, &lookup_pairs,
                      &nibble_dots, &screen_coarse};

// ---------------------------------------------------------------------------------------------
// AMX-BF16: 16 x 16 float32 tiles += (16 x 32 bf16) x (32 x 16 bf16, pairs along k). The xp1/xp2
// layouts above are exactly AMX's "VNNI" B operand: 16 rows of pairs, 64 bytes per 16 columns,
// row stride 128 bytes (32 columns). Tiles: 0-3 results, 4 the A operand, 5-7 B operands.
struct alignas(64) TileConfig {
  std::uint8_t palette_id;
  std::uint8_t start_row;
  std::uint8_t reserved[14];
  std::uint16_t colsb[16];
  std::uint8_t rows[16];
};

void configure_tiles() {
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof cfg);
  cfg.palette_id = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  _tile_loadconfig(&cfg);
}

void gemm1_amx(const std::uint16_t* q, std::size_t nb, std::size_t ldq, const std::uint16_t* xp1, std::size_t nt,
               std::size_t d, float* S, std::size_t ldS) {
  configure_tiles();
  const std::size_t nblocks = up(nt, B) / B, dpairs = up(d, B) / 2, kcs = up(d, B) / B;
  const std::size_t qs = ldq * 2, ss = ldS * 4;
  for (std::size_t r0 = 0; r0 < nb; r0 += 16) {
    const std::uint16_t* A = q + r0 * ldq;
    float* Sr = S + r0 * ldS;
    std::size_t b = 0;
    for (; b + 1 < nblocks; b += 2) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (std::size_t kc = 0; kc < kcs; ++kc) {
        const std::uint16_t* x0 = xp1 + (b * dpairs + kc * 16) * 2 * B;
        const std::uint16_t* x1 = xp1 + ((b + 1) * dpairs + kc * 16) * 2 * B;
        _tile_loadd(4, A + kc * B, qs);
        _tile_loadd(5, x0, 4 * B);
        _tile_loadd(6, x0 + B, 4 * B);
        _tile_dpbf16ps(0, 4, 5);
        _tile_loadd(7, x1, 4 * B);
        _tile_dpbf16ps(1, 4, 6);
        _tile_loadd(5, x1 + B, 4 * B);
        _tile_dpbf16ps(2, 4, 7);
        _tile_dpbf16ps(3, 4, 5);
      }
      _tile_stored(0, Sr + b * B, ss);
      _tile_stored(1, Sr + b * B + 16, ss);
      _tile_stored(2, Sr + (b + 1) * B, ss);
      _tile_stored(3, Sr + (b + 1) * B + 16, ss);
    }
    if (b < nblocks) {
      _tile_zero(0);
      _tile_zero(1);
      for (std::size_t kc = 0; kc < kcs; ++kc) {
        const std::uint16_t* x0 = xp1 + (b * dpairs + kc * 16) * 2 * B;
        _tile_loadd(4, A + kc * B, qs);
        _tile_loadd(5, x0, 4 * B);
        _tile_loadd(6, x0 + B, 4 * B);
        _tile_dpbf16ps(0, 4, 5);
        _tile_dpbf16ps(1, 4, 6);
      }
      _tile_stored(0, Sr + b * B, ss);
      _tile_stored(1, Sr + b * B + 16, ss);
    }
  }
  _tile_release();
}

void gemm2_amx(const std::uint16_t* P, std::size_t nb, std::size_t ldP, const std::uint16_t* xp2, std::size_t nt,
               std::size_t d, float* acc, std::size_t dpad) {
  configure_tiles();
  const std::size_t dblocks = up(d, B) / B, tpairs = up(nt, B) / 2, tcs = up(nt, B) / B;
  const std::size_t ps = ldP * 2, as = dpad * 4;
  for (std::size_t r0 = 0; r0 < nb; r0 += 16) {
    const std::uint16_t* A = P + r0 * ldP;
    float* C = acc + r0 * dpad;
    std::size_t jb = 0;
    for (; jb + 1 < dblocks; jb += 2) {
      _tile_loadd(0, C + jb * B, as);
      _tile_loadd(1, C + jb * B + 16, as);
      _tile_loadd(2, C + (jb + 1) * B, as);
      _tile_loadd(3, C + (jb + 1) * B + 16, as);
      for (std::size_t tc = 0; tc < tcs; ++tc) {
        const std::uint16_t* x0 = xp2 + (jb * tpairs + tc * 16) * 2 * B;
        const std::uint16_t* x1 = xp2 + ((jb + 1) * tpairs + tc * 16) * 2 * B;
        _tile_loadd(4, A + tc * B, ps);
        _tile_loadd(5, x0, 4 * B);
        _tile_loadd(6, x0 + B, 4 * B);
        _tile_dpbf16ps(0, 4, 5);
        _tile_loadd(7, x1, 4 * B);
        _tile_dpbf16ps(1, 4, 6);
        _tile_loadd(5, x1 + B, 4 * B);
        _tile_dpbf16ps(2, 4, 7);
        _tile_dpbf16ps(3, 4, 5);
      }
      _tile_stored(0, C + jb * B, as);
      _tile_stored(1, C + jb * B + 16, as);
      _tile_stored(2, C + (jb + 1) * B, as);
      _tile_stored(3, C + (jb + 1) * B + 16, as);
    }
    if (jb < dblocks) {
      _tile_loadd(0, C + jb * B, as);
      _tile_loadd(1, C + jb * B + 16, as);
      for (std::size_t tc = 0; tc < tcs; ++tc) {
        const std::uint16_t* x0 = xp2 + (jb * tpairs + tc * 16) * 2 * B;
        _tile_loadd(4, A + tc * B, ps);
        _tile_loadd(5, x0, 4 * B);
        _tile_loadd(6, x0 + B, 4 * B);
        _tile_dpbf16ps(0, 4, 5);
        _tile_dpbf16ps(1, 4, 6);
      }
      _tile_stored(0, C + jb * B, as);
      _tile_stored(1, C + jb * B + 16, as);
    }
  }
  _tile_release();
}

constexpr Ops kAmxBf16{"amx_bf16", true, 16, true,        &pack_xt,  &gemm1_f32, &gemm2_f32, &pack_xp1,
                       &pack_xp2,  &gemm1_amx, &gemm2_amx, &to_bf16, &dots_f32,  &dots_bf16, &axpy_f32,
                       &axpy_bf16, &scaled_max, &exp_shift_sum, &scale, &masked_sums, &add_signed, &lookup_pairs,
                      &nibble_dots, &screen_coarse};

}  // namespace

const Ops* avx512_table() { return &kAvx512; }
const Ops* avx512_bf16_table() { return &kAvx512Bf16; }
const Ops* amx_bf16_table() { return &kAmxBf16; }
NibbleDots avx512bw_nibble_dots_entry() { return &nibble_dots_bw; }

}  // namespace assocmem::kernels
