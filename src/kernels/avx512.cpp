// Hand-written AVX-512 kernels where Highway 1.0.3 has no operation for the instruction: AVX-512 BF16
// products (vdpbf16ps) and conversion (vcvtne2ps2bf16), AVX-512 VNNI integer dots (vpdpbusd) for the
// certified screen, and AMX-BF16 tiles. Everything else of the AVX-512 tables is Highway's AVX3 target
// (highway.cpp); dispatch.cpp puts these entries over it, in the one place tables are chosen.
//
// This file is compiled with -mavx512* flags; it is entered only through the entries handed to
// dispatch.cpp, which uses them after checking the CPU. Everything here has internal linkage and uses
// no inline library templates, so no AVX-512 code can leak into the rest of the program through a
// shared (weak) symbol.
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

std::uint32_t load_pair(const std::uint16_t* p) {
  std::uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
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

// R = 8 with the 16 accumulators as named variables: GCC 12 keeps an array of them in memory
// (a store per iteration) in this loop, halving the throughput.
#define ASSOCMEM_ROWS8(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#define STORE(r)                                                                \
  {                                                                             \
    float* o = acc + r * dpad + j0;                                             \
    _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), a##r));               \
    _mm512_storeu_ps(o + 16, _mm512_add_ps(_mm512_loadu_ps(o + 16), b##r));     \
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
// Exact integer dot products for the certified screen over 4-bit planes (codes.hpp) with AVX-512 VNNI
// (vpdpbusd: 64 byte products per instruction, 16 memories per register, no horizontal sums), on CPUs
// that have it (Zen 4, Ice Lake and later); others run Highway's AVX3 entry.
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

}  // namespace

void use_avx512_bf16(Ops& o) {
  o.bf16_products = true;
  o.row_block = 8;
  o.full_row_blocks = false;
  o.pack_xp1 = &pack_xp1;
  o.pack_xp2 = &pack_xp2;
  o.gemm1_bf16 = &gemm1_bf16;
  o.gemm2_bf16 = &gemm2_bf16;
  o.to_bf16 = &to_bf16;
}

void use_amx_bf16(Ops& o) {
  use_avx512_bf16(o);
  o.row_block = 16;
  o.full_row_blocks = true;
  o.gemm1_bf16 = &gemm1_amx;
  o.gemm2_bf16 = &gemm2_amx;
}

NibbleDots avx512_vnni_nibble_dots() { return &nibble_dots_vnni; }

}  // namespace assocmem::kernels
