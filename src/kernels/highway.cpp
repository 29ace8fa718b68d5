// The kernel table written once with Google Highway (Debian's libhwy-dev 1.0.3) and compiled for every
// target Highway builds here: SSE4 and AVX2 on x86-64, NEON and SVE/SVE2 on aarch64, and a portable
// target (the "generic" table, on any CPU: EMU128, or SCALAR under GCC < 12.3, where Highway 1.0.3 marks
// EMU128 broken). highway_tables() lists the tables of the targets this
// CPU runs; dispatch.cpp chooses among them (and the hand-written AVX-512/AMX tables) in one place.
//
// Every entry follows kernels.hpp's contract. Reductions are taken in vector order: results differ from
// the scalar order by float32 rounding, within the forward error bounds the tests derive
// (tests/error_bounds.hpp); the integer kernels (model A's packed bits, the certified screen's nibble
// dot products) are exact on every target. No FMA is contracted where kernels.hpp says an operation is
// rounded on its own (exp_shift_sum's shift, coarse_bound): Highway's Mul/Add/Sub are separate
// instructions, and this file is compiled with -ffp-contract=off.
//
// Targets compiled: every one Highway can attain with this compiler (HWY_COMPILE_ALL_ATTAINABLE), so
// that the portable table exists on aarch64 too (Highway's default leaves it out where NEON is the
// baseline), less those no table of ours uses: SSSE3 (SSE4 is every x86-64 CPU since 2008 but a few),
// AVX3_DL (Highway 1.0.3 has no operation for what it adds that we use: the VNNI screen is hand-written,
// avx512.cpp, and overrides the AVX3 table's entry in dispatch.cpp), and the fixed-width SVE variants
// SVE_256 and SVE2_128 (the length-agnostic SVE and SVE2 tables run on those CPUs). AVX3 (AVX-512 F, BW,
// DQ, VL) is the "avx512" table. Each target is another copy of this file to build and test.
#define HWY_COMPILE_ALL_ATTAINABLE
#ifndef HWY_DISABLED_TARGETS
#define HWY_DISABLED_TARGETS (HWY_SSSE3 | HWY_AVX3_DL | HWY_SVE_256 | HWY_SVE2_128)
#endif
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/highway.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep

#include <hwy/cache_control.h>
#include <hwy/highway.h>

#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/kernels.hpp"

HWY_BEFORE_NAMESPACE();
namespace assocmem::kernels {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Queries per microkernel call: 8 rows x 2 vectors of accumulators fit in 32 vector registers (NEON,
// SVE, EMU128); x86 targets below AVX-512 have 16, so 6 rows (12 accumulators, 2 operands, 1 broadcast).
#if HWY_TARGET == HWY_SSE4 || HWY_TARGET == HWY_AVX2 || HWY_TARGET == HWY_SSSE3
constexpr int kRows = 6;
#else
constexpr int kRows = 8;
#endif

template <class D>
using V = hn::Vec<D>;

// n < Lanes(d) elements from p, zero-padded (reads nothing beyond p[n - 1]).
template <class D, typename T = hn::TFromD<D>>
HWY_INLINE V<D> LoadN(D d, const T* HWY_RESTRICT p, std::size_t n) {
  HWY_ALIGN T buf[HWY_MAX_BYTES / sizeof(T)] = {};
  std::memcpy(buf, p, n * sizeof(T));
  return hn::Load(d, buf);
}
template <class D, typename T = hn::TFromD<D>>
HWY_INLINE void StoreN(D d, V<D> v, T* HWY_RESTRICT p, std::size_t n) {
  HWY_ALIGN T buf[HWY_MAX_BYTES / sizeof(T)];
  hn::Store(v, d, buf);
  std::memcpy(p, buf, n * sizeof(T));
}
// Lanes [0, n) of the vector at p (n = min(left, Lanes)): a plain load when whole.
template <class D, typename T = hn::TFromD<D>>
HWY_INLINE V<D> LoadUpTo(D d, const T* HWY_RESTRICT p, std::size_t left) {
  const std::size_t N = hn::Lanes(d);
  return left >= N ? hn::LoadU(d, p) : LoadN(d, p, left);
}

// bfloat16 widened on load: the upper 16 bits of a float32 (exact).
template <class DF>
HWY_INLINE V<DF> WidenBf16(DF df, hn::Vec<hn::Rebind<std::uint16_t, DF>> h) {
  const hn::RebindToUnsigned<DF> du32;
  return hn::BitCast(df, hn::ShiftLeft<16>(hn::PromoteTo(du32, h)));
}
template <class DF>
HWY_INLINE V<DF> LoadBf16UpTo(DF df, const std::uint16_t* HWY_RESTRICT p, std::size_t left) {
  const hn::Rebind<std::uint16_t, DF> d16;
  return WidenBf16(df, LoadUpTo(d16, p, left));
}

// ---------------------------------------------------------------------------------------------
// f32 products (layouts: kernels.hpp).

// xt[b][k][j] = rows[32 b + j][k]: squares of 4 memories x 4 dimensions transposed in 128-bit vectors
// (two interleaves of floats, then of pairs), the rest of the dimensions one by one.
void PackXt(const float* rows, std::size_t nt, std::size_t d, float* xt) {
  const std::size_t nblocks = (nt + kBlock - 1) / kBlock;
#if HWY_TARGET == HWY_SCALAR
  const std::size_t d4 = 0;
#else
  const hn::FixedTag<float, 4> d4t;
  const hn::FixedTag<double, 2> d2t;
  const std::size_t d4 = d / 4 * 4;
#endif
  for (std::size_t b = 0; b < nblocks; ++b) {
    float* out = xt + b * d * kBlock;
    const std::size_t t0 = b * kBlock, m = std::min(kBlock, nt - t0);
    for (std::size_t j0 = 0; j0 < kBlock; j0 += 4) {
#if HWY_TARGET != HWY_SCALAR
      const auto row = [&](std::size_t j, std::size_t k) {
        return j0 + j < m ? hn::LoadU(d4t, rows + (t0 + j0 + j) * d + k) : hn::Zero(d4t);
      };
      for (std::size_t k = 0; k < d4; k += 4) {
        const auto r0 = row(0, k), r1 = row(1, k), r2 = row(2, k), r3 = row(3, k);
        const auto a = hn::BitCast(d2t, hn::InterleaveLower(d4t, r0, r1));     // r0[0] r1[0] r0[1] r1[1]
        const auto c = hn::BitCast(d2t, hn::InterleaveLower(d4t, r2, r3));     // r2[0] r3[0] r2[1] r3[1]
        const auto e = hn::BitCast(d2t, hn::InterleaveUpper(d4t, r0, r1));     // r0[2] r1[2] r0[3] r1[3]
        const auto f = hn::BitCast(d2t, hn::InterleaveUpper(d4t, r2, r3));     // r2[2] r3[2] r2[3] r3[3]
        float* o = out + k * kBlock + j0;
        hn::StoreU(hn::BitCast(d4t, hn::InterleaveLower(d2t, a, c)), d4t, o);
        hn::StoreU(hn::BitCast(d4t, hn::InterleaveUpper(d2t, a, c)), d4t, o + kBlock);
        hn::StoreU(hn::BitCast(d4t, hn::InterleaveLower(d2t, e, f)), d4t, o + 2 * kBlock);
        hn::StoreU(hn::BitCast(d4t, hn::InterleaveUpper(d2t, e, f)), d4t, o + 3 * kBlock);
      }
#endif
      for (std::size_t j = j0; j < j0 + 4; ++j)
        for (std::size_t k = d4; k < d; ++k) out[k * kBlock + j] = j < m ? rows[(t0 + j) * d + k] : 0.0f;
    }
  }
}

// The column width of one microkernel call: two vectors of at most 16 lanes (a divisor of kBlock).
using DC = hn::CappedTag<float, 16>;

// Accumulators as named variables (GCC keeps an array of them in memory; SVE vectors cannot be in one).
#define ASSOCMEM_HWY_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#define ASSOCMEM_HWY_DECL(r) auto a##r = hn::Zero(dc), b##r = hn::Zero(dc);
// One rank-1 update of row r's two accumulators: the scalar bc[r * ldb] times the vectors x0, x1.
#define ASSOCMEM_HWY_STEP(r)                       \
  if constexpr (R > r) {                           \
    const auto s = hn::Set(dc, bc[r * ldb]);       \
    a##r = hn::MulAdd(s, x0, a##r);                \
    b##r = hn::MulAdd(s, x1, b##r);                \
  }

// S[r][c0 .. c0 + 2N) = sum_k q[r][k] xt[k][c0 ..] for R rows.
template <int R>
HWY_INLINE void Mk1(const float* HWY_RESTRICT q, std::size_t ldq, const float* HWY_RESTRICT xtb, std::size_t d,
                    float* HWY_RESTRICT S, std::size_t ldS) {
  const DC dc;
  const std::size_t N = hn::Lanes(dc);
  ASSOCMEM_HWY_ROWS(ASSOCMEM_HWY_DECL)
  for (std::size_t k = 0; k < d; ++k) {
    const auto x0 = hn::LoadU(dc, xtb + k * kBlock), x1 = hn::LoadU(dc, xtb + k * kBlock + N);
    const float* bc = q + k;  // q[r][k]
    const std::size_t ldb = ldq;
    ASSOCMEM_HWY_ROWS(ASSOCMEM_HWY_STEP)
  }
#define ASSOCMEM_HWY_STORE(r)                    \
  if constexpr (R > r) {                         \
    hn::StoreU(a##r, dc, S + r * ldS);           \
    hn::StoreU(b##r, dc, S + r * ldS + N);       \
  }
  ASSOCMEM_HWY_ROWS(ASSOCMEM_HWY_STORE)
#undef ASSOCMEM_HWY_STORE
}

template <int R>
HWY_INLINE void Gemm1Rows(const float* q, std::size_t ldq, const float* xt, std::size_t nblocks, std::size_t d,
                          float* S, std::size_t ldS) {
  const std::size_t W = 2 * hn::Lanes(DC());
  for (std::size_t b = 0; b < nblocks; ++b)
    for (std::size_t c = 0; c < kBlock; c += W) Mk1<R>(q, ldq, xt + b * d * kBlock + c, d, S + b * kBlock + c, ldS);
}

// fn(std::integral_constant<int, R>{}) for R = rows in [1, 8]: one switch for both products.
template <class Fn>
HWY_INLINE void WithRows(std::size_t rows, const Fn& fn) {
  switch (rows) {
    case 8: fn(std::integral_constant<int, 8>{}); break;
    case 7: fn(std::integral_constant<int, 7>{}); break;
    case 6: fn(std::integral_constant<int, 6>{}); break;
    case 5: fn(std::integral_constant<int, 5>{}); break;
    case 4: fn(std::integral_constant<int, 4>{}); break;
    case 3: fn(std::integral_constant<int, 3>{}); break;
    case 2: fn(std::integral_constant<int, 2>{}); break;
    default: fn(std::integral_constant<int, 1>{}); break;
  }
}

void Gemm1F32(const float* q, std::size_t nb, std::size_t ldq, const float* xt, std::size_t nt, std::size_t d,
              float* S, std::size_t ldS) {
  const std::size_t nblocks = (nt + kBlock - 1) / kBlock;
  for (std::size_t r0 = 0; r0 < nb; r0 += kRows) {
    const std::size_t R = std::min<std::size_t>(kRows, nb - r0);
    const float* qq = q + r0 * ldq;
    float* s = S + r0 * ldS;
    WithRows(R, [&](auto r) { Gemm1Rows<decltype(r)::value>(qq, ldq, xt, nblocks, d, s, ldS); });
  }
}

// acc[r][j0 .. j0 + 2N) += sum_t P[r][t] rows[t][j0 ..] for R rows; columns >= d read as 0 (acc is
// padded to dpad, a multiple of kBlock, so the stores stay inside it).
template <int R>
HWY_INLINE void Mk2(const float* HWY_RESTRICT P, std::size_t ldP, const float* HWY_RESTRICT rows, std::size_t nt,
                    std::size_t d, std::size_t j0, float* HWY_RESTRICT acc, std::size_t dpad) {
  const DC dc;
  const std::size_t N = hn::Lanes(dc);
  ASSOCMEM_HWY_ROWS(ASSOCMEM_HWY_DECL)
  const bool whole = j0 + 2 * N <= d;
  const std::size_t left0 = d - j0, left1 = d > j0 + N ? d - j0 - N : 0;
  for (std::size_t t = 0; t < nt; ++t) {
    const float* x = rows + t * d + j0;
    const auto x0 = whole ? hn::LoadU(dc, x) : LoadUpTo(dc, x, left0);
    const auto x1 = whole ? hn::LoadU(dc, x + N) : (left1 ? LoadUpTo(dc, x + N, left1) : hn::Zero(dc));
    const float* bc = P + t;  // P[r][t]
    const std::size_t ldb = ldP;
    ASSOCMEM_HWY_ROWS(ASSOCMEM_HWY_STEP)
  }
#define ASSOCMEM_HWY_STORE(r)                                           \
  if constexpr (R > r) {                                                \
    float* o = acc + r * dpad + j0;                                     \
    hn::StoreU(hn::Add(hn::LoadU(dc, o), a##r), dc, o);                 \
    hn::StoreU(hn::Add(hn::LoadU(dc, o + N), b##r), dc, o + N);         \
  }
  ASSOCMEM_HWY_ROWS(ASSOCMEM_HWY_STORE)
#undef ASSOCMEM_HWY_STORE
}
#undef ASSOCMEM_HWY_STEP
#undef ASSOCMEM_HWY_DECL

template <int R>
HWY_INLINE void Gemm2Rows(const float* P, std::size_t ldP, const float* rows, std::size_t nt, std::size_t d,
                          float* acc, std::size_t dpad) {
  const std::size_t W = 2 * hn::Lanes(DC());
  for (std::size_t j0 = 0; j0 < d; j0 += W) Mk2<R>(P, ldP, rows, nt, d, j0, acc, dpad);
}

void Gemm2F32(const float* P, std::size_t nb, std::size_t ldP, const float* rows, std::size_t nt, std::size_t d,
              float* acc, std::size_t dpad) {
  for (std::size_t r0 = 0; r0 < nb; r0 += kRows) {
    const std::size_t R = std::min<std::size_t>(kRows, nb - r0);
    const float* pp = P + r0 * ldP;
    float* a = acc + r0 * dpad;
    WithRows(R, [&](auto r) { Gemm2Rows<decltype(r)::value>(pp, ldP, rows, nt, d, a, dpad); });
  }
}

// float32 -> bfloat16, round to nearest even; NaN stays NaN (quiet): integer operations on the bits,
// a vector at a time (the bfloat16 products round every weight row of a tile).
void ToBf16(const float* x, std::size_t n, std::uint16_t* out) {
  const hn::ScalableTag<float> df;
  const hn::RebindToUnsigned<decltype(df)> du;
  const hn::RebindToSigned<decltype(df)> di;
  const hn::Rebind<std::uint16_t, decltype(df)> d16;
  const std::size_t N = hn::Lanes(df);
  const auto half = hn::Set(du, 0x7FFFu), one = hn::Set(du, 1u), quiet = hn::Set(du, 0x40u);
  const auto convert = [&](V<decltype(df)> v) {
    const auto u = hn::BitCast(du, v);
    const auto rounded = hn::ShiftRight<16>(hn::Add(hn::Add(u, half), hn::And(hn::ShiftRight<16>(u), one)));
    const auto nan = hn::Or(hn::ShiftRight<16>(u), quiet);
    const auto r = hn::IfThenElse(hn::RebindMask(du, hn::IsNaN(v)), nan, rounded);
    return hn::DemoteTo(d16, hn::BitCast(di, r));  // every lane is in [0, 65535]: no saturation
  };
  std::size_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(convert(hn::LoadU(df, x + i)), d16, out + i);
  if (i < n) {
    HWY_ALIGN std::uint16_t buf[HWY_MAX_BYTES / sizeof(float)];
    hn::Store(convert(LoadN(df, x + i, n - i)), d16, buf);
    std::memcpy(out + i, buf, (n - i) * sizeof(std::uint16_t));
  }
}

void FromBf16(const std::uint16_t* x, std::size_t n, float* out) {
  const hn::ScalableTag<float> df;
  const std::size_t N = hn::Lanes(df);
  std::size_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(LoadBf16UpTo(df, x + i, N), df, out + i);
  if (i < n) StoreN(df, LoadBf16UpTo(df, x + i, n - i), out + i, n - i);
}

// ---------------------------------------------------------------------------------------------
// Single query: memory-bound streams over row-major tiles (4 rows at a time, the rows 16 ahead
// prefetched); bfloat16 rows are widened on load (half the bytes read).

// A stream's load of row data (left >= 1 elements at p; whole vectors where left >= the lanes). On
// AVX-512 a zero-masking load (vmovups {z}) with a mask computed at run time (the callers pass the
// elements left in the row, so the compiler cannot turn it into a plain load): in the single-query
// stream it ran ~1.2-1.3x faster than a plain load on Zen 5, folded into the FMA or not (the
// hand-written kernel it replaces did the same).
#if HWY_TARGET == HWY_AVX3
constexpr bool kMaskedStreams = true;
#else
constexpr bool kMaskedStreams = false;
#endif
template <class D, typename T = hn::TFromD<D>>
HWY_INLINE V<D> StreamLoad(D d, const T* HWY_RESTRICT p, std::size_t left) {
  if constexpr (kMaskedStreams) return hn::MaskedLoad(hn::FirstN(d, left), d, p);
  else return LoadUpTo(d, p, left);
}

template <class Load>
HWY_INLINE void Dots(const float* HWY_RESTRICT q, std::size_t nt, std::size_t d, float* HWY_RESTRICT out,
                     std::size_t row_bytes, const char* base, const Load& load) {
  const hn::ScalableTag<float> df;
  const std::size_t N = hn::Lanes(df);
  const std::size_t dw = d - d % N;  // whole vectors; the rest of a row is one partial vector
  std::size_t t = 0;
  for (; t + 4 <= nt; t += 4) {
    for (std::size_t p = 0; p < 4 * row_bytes; p += 64) hwy::Prefetch(base + (t + 16) * row_bytes + p);
    auto a0 = hn::Zero(df), a1 = a0, a2 = a0, a3 = a0;
    for (std::size_t k = 0; k < dw; k += N) {
      const auto qv = hn::LoadU(df, q + k);
      const std::size_t left = kMaskedStreams ? d - k : N;  // >= N: whole vectors
      a0 = hn::MulAdd(qv, load(df, t, k, left), a0);
      a1 = hn::MulAdd(qv, load(df, t + 1, k, left), a1);
      a2 = hn::MulAdd(qv, load(df, t + 2, k, left), a2);
      a3 = hn::MulAdd(qv, load(df, t + 3, k, left), a3);
    }
    if (dw < d) {
      const auto qv = LoadN(df, q + dw, d - dw);
      a0 = hn::MulAdd(qv, load(df, t, dw, d - dw), a0);
      a1 = hn::MulAdd(qv, load(df, t + 1, dw, d - dw), a1);
      a2 = hn::MulAdd(qv, load(df, t + 2, dw, d - dw), a2);
      a3 = hn::MulAdd(qv, load(df, t + 3, dw, d - dw), a3);
    }
    out[t] = hn::GetLane(hn::SumOfLanes(df, a0));
    out[t + 1] = hn::GetLane(hn::SumOfLanes(df, a1));
    out[t + 2] = hn::GetLane(hn::SumOfLanes(df, a2));
    out[t + 3] = hn::GetLane(hn::SumOfLanes(df, a3));
  }
  for (; t < nt; ++t) {
    auto a = hn::Zero(df);
    for (std::size_t k = 0; k < d; k += N) a = hn::MulAdd(LoadUpTo(df, q + k, d - k), load(df, t, k, d - k), a);
    out[t] = hn::GetLane(hn::SumOfLanes(df, a));
  }
}

void DotsF32(const float* q, const float* rows, std::size_t nt, std::size_t d, float* out) {
  Dots(q, nt, d, out, d * 4, reinterpret_cast<const char*>(rows),
       [&](auto df, std::size_t t, std::size_t k, std::size_t left) { return StreamLoad(df, rows + t * d + k, left); });
}

void DotsBf16(const float* q, const std::uint16_t* rows, std::size_t nt, std::size_t d, float* out) {
  Dots(q, nt, d, out, d * 2, reinterpret_cast<const char*>(rows),
       [&](auto df, std::size_t t, std::size_t k, std::size_t left) {
         return WidenBf16(df, StreamLoad(hn::Rebind<std::uint16_t, decltype(df)>(), rows + t * d + k, left));
       });
}

// acc[j0, j0 + 8 N) += sum_t p[t] row_t there: eight independent accumulator chains (the FMA latency
// hidden), each row's 8 N columns read in one stretch.
template <class DF, class Load>
HWY_INLINE void Axpy8(DF df, const float* HWY_RESTRICT p, std::size_t nt, std::size_t j0, float* HWY_RESTRICT acc,
                      const Load& load) {
  const std::size_t N = hn::Lanes(df);
  auto a0 = hn::LoadU(df, acc + j0), a1 = hn::LoadU(df, acc + j0 + N), a2 = hn::LoadU(df, acc + j0 + 2 * N),
       a3 = hn::LoadU(df, acc + j0 + 3 * N), a4 = hn::LoadU(df, acc + j0 + 4 * N),
       a5 = hn::LoadU(df, acc + j0 + 5 * N), a6 = hn::LoadU(df, acc + j0 + 6 * N),
       a7 = hn::LoadU(df, acc + j0 + 7 * N);
  for (std::size_t t = 0; t < nt; ++t) {
    const auto pb = hn::Set(df, p[t]);
    a0 = hn::MulAdd(pb, load(df, t, j0, 8 * N), a0);
    a1 = hn::MulAdd(pb, load(df, t, j0 + N, 7 * N), a1);
    a2 = hn::MulAdd(pb, load(df, t, j0 + 2 * N, 6 * N), a2);
    a3 = hn::MulAdd(pb, load(df, t, j0 + 3 * N, 5 * N), a3);
    a4 = hn::MulAdd(pb, load(df, t, j0 + 4 * N, 4 * N), a4);
    a5 = hn::MulAdd(pb, load(df, t, j0 + 5 * N, 3 * N), a5);
    a6 = hn::MulAdd(pb, load(df, t, j0 + 6 * N, 2 * N), a6);
    a7 = hn::MulAdd(pb, load(df, t, j0 + 7 * N, N), a7);
  }
  hn::StoreU(a0, df, acc + j0);
  hn::StoreU(a1, df, acc + j0 + N);
  hn::StoreU(a2, df, acc + j0 + 2 * N);
  hn::StoreU(a3, df, acc + j0 + 3 * N);
  hn::StoreU(a4, df, acc + j0 + 4 * N);
  hn::StoreU(a5, df, acc + j0 + 5 * N);
  hn::StoreU(a6, df, acc + j0 + 6 * N);
  hn::StoreU(a7, df, acc + j0 + 7 * N);
}

// acc[0, d) += sum_t p[t] row_t: eight vectors of columns at a time while they fill, then four (with
// partial vectors at the end). Each column's sum is one chain over t in every case.
template <class Load>
HWY_INLINE void Axpy(const float* HWY_RESTRICT p, std::size_t nt, std::size_t d, float* HWY_RESTRICT acc,
                     const Load& load) {
  const hn::ScalableTag<float> df;
  const std::size_t N = hn::Lanes(df);
  std::size_t start = 0;
  for (; start + 8 * N <= d; start += 8 * N) Axpy8(df, p, nt, start, acc, load);
  for (std::size_t j0 = start; j0 < d; j0 += 4 * N) {
    const std::size_t left = d - j0;
    const bool whole = left >= 4 * N;
    auto a0 = LoadUpTo(df, acc + j0, left);
    auto a1 = left > N ? LoadUpTo(df, acc + j0 + N, left - N) : hn::Zero(df);
    auto a2 = left > 2 * N ? LoadUpTo(df, acc + j0 + 2 * N, left - 2 * N) : hn::Zero(df);
    auto a3 = left > 3 * N ? LoadUpTo(df, acc + j0 + 3 * N, left - 3 * N) : hn::Zero(df);
    if (whole) {  // whole vectors: no length checks in the loop
      for (std::size_t t = 0; t < nt; ++t) {
        const auto pb = hn::Set(df, p[t]);
        a0 = hn::MulAdd(pb, load(df, t, j0, N), a0);
        a1 = hn::MulAdd(pb, load(df, t, j0 + N, N), a1);
        a2 = hn::MulAdd(pb, load(df, t, j0 + 2 * N, N), a2);
        a3 = hn::MulAdd(pb, load(df, t, j0 + 3 * N, N), a3);
      }
    } else {
      for (std::size_t t = 0; t < nt; ++t) {
        const auto pb = hn::Set(df, p[t]);
        a0 = hn::MulAdd(pb, load(df, t, j0, left), a0);
        if (left > N) a1 = hn::MulAdd(pb, load(df, t, j0 + N, left - N), a1);
        if (left > 2 * N) a2 = hn::MulAdd(pb, load(df, t, j0 + 2 * N, left - 2 * N), a2);
        if (left > 3 * N) a3 = hn::MulAdd(pb, load(df, t, j0 + 3 * N, left - 3 * N), a3);
      }
    }
    if (whole) {
      hn::StoreU(a0, df, acc + j0);
      hn::StoreU(a1, df, acc + j0 + N);
      hn::StoreU(a2, df, acc + j0 + 2 * N);
      hn::StoreU(a3, df, acc + j0 + 3 * N);
    } else {
      StoreN(df, a0, acc + j0, std::min(left, N));
      if (left > N) StoreN(df, a1, acc + j0 + N, std::min(left - N, N));
      if (left > 2 * N) StoreN(df, a2, acc + j0 + 2 * N, std::min(left - 2 * N, N));
      if (left > 3 * N) StoreN(df, a3, acc + j0 + 3 * N, std::min(left - 3 * N, N));
    }
  }
}

void AxpyF32(const float* p, const float* rows, std::size_t nt, std::size_t d, float* acc) {
  Axpy(p, nt, d, acc, [&](auto df, std::size_t t, std::size_t k, std::size_t left) {
    return LoadUpTo(df, rows + t * d + k, left);
  });
}

void AxpyBf16(const float* p, const std::uint16_t* rows, std::size_t nt, std::size_t d, float* acc) {
  Axpy(p, nt, d, acc, [&](auto df, std::size_t t, std::size_t k, std::size_t left) {
    return LoadBf16UpTo(df, rows + t * d + k, left);
  });
}

// ---------------------------------------------------------------------------------------------
// Online-softmax epilogue (eq. 12 tile by tile).

float ScaledMax(const float* s, std::size_t n, float beta) {
  const hn::ScalableTag<float> df;
  const std::size_t N = hn::Lanes(df);
  const auto b = hn::Set(df, beta), none = hn::Set(df, -HUGE_VALF);
  auto m = none;
  std::size_t i = 0;
  for (; i + N <= n; i += N) m = hn::Max(m, hn::Mul(b, hn::LoadU(df, s + i)));
  if (i < n) m = hn::Max(m, hn::IfThenElse(hn::FirstN(df, n - i), hn::Mul(b, LoadN(df, s + i, n - i)), none));
  return hn::GetLane(hn::MaxOfLanes(df, m));
}

// exp(x) for x in [-87.3, 88.376] (the caller clamps): Cephes' expf, the same steps on every target:
// n = round(x log2 e), taken as t = x log2 e + (1.5 2^23 + 127) in one multiply-add (t's low mantissa bits
// then hold n + 127: 2^n is t's bits shifted up by 23, exact for n in [-126, 127]); r = x - n ln 2 in two
// parts (multiply-adds: the reduction wants them exact); a degree-6 polynomial (|rel. error| < 2 ulp);
// times 2^n (on AVX-512 one vscalefps, exact as well). Cheaper than Highway's Exp (which covers the whole
// range): the online softmax takes one per score. (Two power-of-two factors and a separate rounding,
// which covered n = 128 too, took 1.7x the time on AVX2 and 1.4x on SSE4 in a microbenchmark.)
template <class DF>
HWY_INLINE V<DF> ExpReduced(DF df, V<DF> x) {
  const hn::RebindToSigned<DF> di;
  const auto magic = hn::Set(df, 12582912.0f + 127.0f);  // 1.5 2^23 + 127: exactly representable
  const auto t = hn::MulAdd(x, hn::Set(df, 1.44269504088896341f), magic);
  const auto n = hn::Sub(t, magic);  // round(x log2 e), exact
  auto r = hn::NegMulAdd(n, hn::Set(df, 0.693359375f), x);
  r = hn::NegMulAdd(n, hn::Set(df, -2.12194440e-4f), r);
  auto p = hn::Set(df, 1.9875691500e-4f);
  p = hn::MulAdd(p, r, hn::Set(df, 1.3981999507e-3f));
  p = hn::MulAdd(p, r, hn::Set(df, 8.3334519073e-3f));
  p = hn::MulAdd(p, r, hn::Set(df, 4.1665795894e-2f));
  p = hn::MulAdd(p, r, hn::Set(df, 1.6666665459e-1f));
  p = hn::MulAdd(p, r, hn::Set(df, 5.0000001201e-1f));
  p = hn::MulAdd(hn::Mul(p, r), r, hn::Add(r, hn::Set(df, 1.0f)));
#if HWY_TARGET == HWY_AVX3
  if constexpr (hn::MaxLanes(DF()) == 16) {  // p 2^n in one instruction (vscalefps; Highway 1.0.3 has none)
    return V<DF>{_mm512_scalef_ps(p.raw, n.raw)};
  }
#endif
  return hn::Mul(p, hn::BitCast(df, hn::ShiftLeft<23>(hn::BitCast(di, t))));
}

// p = exp(beta s - m) where x = beta s - m >= -87.3, 0 below (no subnormal weights); x above 88.376
// (exp(x) > 2.4e38; the softmax has x <= 0, the callers m >= beta s) gives exp(88.376).
template <class DF>
HWY_INLINE V<DF> ShiftedExp(DF df, V<DF> b, V<DF> mv, V<DF> sv) {
  const auto lo = hn::Set(df, -87.3f), hi = hn::Set(df, 88.376f);
  const auto x = hn::Sub(hn::Mul(b, sv), mv);
  return hn::IfThenZeroElse(hn::Lt(x, lo), ExpReduced(df, hn::Min(hn::Max(x, lo), hi)));
}

// p[i] = exp(beta s[i] - m): beta s rounded first, then the shift (so the maximum gives exactly 0);
// results that would be subnormal (x < -87.3) are 0, as on every table.
float ExpShiftSum(const float* s, std::size_t n, float beta, float mx, float* p) {
  const hn::ScalableTag<float> df;
  const std::size_t N = hn::Lanes(df);
  const auto b = hn::Set(df, beta), mv = hn::Set(df, mx);
  auto sum = hn::Zero(df);
  const auto weights = [&](V<decltype(df)> sv) { return ShiftedExp(df, b, mv, sv); };
  std::size_t i = 0;
  for (; i + N <= n; i += N) {
    const auto e = weights(hn::LoadU(df, s + i));
    hn::StoreU(e, df, p + i);
    sum = hn::Add(sum, e);
  }
  if (i < n) {
    const auto e = hn::IfThenElseZero(hn::FirstN(df, n - i), weights(LoadN(df, s + i, n - i)));
    StoreN(df, e, p + i, n - i);
    sum = hn::Add(sum, e);
  }
  return hn::GetLane(hn::SumOfLanes(df, sum));
}

// sum_i x[i] y[i] in double lanes: each float pair widened, multiplied exactly and added in double.
double DotF64(const float* x, const float* y, std::size_t n) {
  const hn::ScalableTag<double> dd;
  const hn::Rebind<float, decltype(dd)> df;  // as many float lanes as double ones
  const std::size_t N = hn::Lanes(dd);
  auto s0 = hn::Zero(dd), s1 = hn::Zero(dd);
  const auto wide = [&](const float* p) { return hn::PromoteTo(dd, hn::LoadU(df, p)); };
  std::size_t i = 0;
  for (; i + 2 * N <= n; i += 2 * N) {
    s0 = hn::MulAdd(wide(x + i), wide(y + i), s0);
    s1 = hn::MulAdd(wide(x + i + N), wide(y + i + N), s1);
  }
  for (; i < n; i += N) {
    const std::size_t left = std::min(N, n - i);
    s0 = hn::MulAdd(hn::PromoteTo(dd, LoadUpTo(df, x + i, left)), hn::PromoteTo(dd, LoadUpTo(df, y + i, left)), s0);
  }
  return hn::GetLane(hn::SumOfLanes(dd, hn::Add(s0, s1)));
}

// p = exp(beta s - m) (ExpShiftSum's weights), g = p (g - D), then sum g s in double.
double SoftmaxBackward(const float* s, std::size_t n, float beta, float m, float D, float* p, float* g) {
  const hn::ScalableTag<float> df;
  const std::size_t N = hn::Lanes(df);
  const auto b = hn::Set(df, beta), mv = hn::Set(df, m), Dv = hn::Set(df, D);
  std::size_t i = 0;
  for (; i + N <= n; i += N) {
    const auto e = ShiftedExp(df, b, mv, hn::LoadU(df, s + i));
    hn::StoreU(e, df, p + i);
    hn::StoreU(hn::Mul(e, hn::Sub(hn::LoadU(df, g + i), Dv)), df, g + i);
  }
  if (i < n) {
    const auto e = hn::IfThenElseZero(hn::FirstN(df, n - i), ShiftedExp(df, b, mv, LoadN(df, s + i, n - i)));
    StoreN(df, e, p + i, n - i);
    StoreN(df, hn::Mul(e, hn::Sub(LoadN(df, g + i, n - i), Dv)), g + i, n - i);
  }
  return DotF64(g, s, n);
}

void Scale(float* x, std::size_t n, float a) {
  const hn::ScalableTag<float> df;
  const std::size_t N = hn::Lanes(df);
  const auto av = hn::Set(df, a);
  std::size_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(hn::Mul(av, hn::LoadU(df, x + i)), df, x + i);
  if (i < n) StoreN(df, hn::Mul(av, LoadN(df, x + i, n - i)), x + i, n - i);
}

// ---------------------------------------------------------------------------------------------
// Layer norms of memory rows (the fused attention's RowNorm): sums in vector order, in float.

// sum_i f(i) over [0, c) for f returning a vector of lanes [i, i + N) (zero beyond c).
template <class DF, class F>
HWY_INLINE float SumRow(DF df, std::size_t c, const F& f) {
  const std::size_t N = hn::Lanes(df);
  auto s = hn::Zero(df);
  for (std::size_t i = 0; i < c; i += N) s = hn::Add(s, f(i, c - i));
  return hn::GetLane(hn::SumOfLanes(df, s));
}

// One row's normalised entries from its mean and rstd: out = (y - mean) rstd o gamma + bias (layer_norm and
// layer_norm_apply alike, so that both give the same bits).
template <class DF>
HWY_INLINE void NormaliseRow(DF df, const float* y, std::size_t c, V<DF> mv, V<DF> rv, const float* gamma,
                             const float* bias, float* out) {
  const std::size_t N = hn::Lanes(df);
  for (std::size_t i = 0; i < c; i += N) {
    const std::size_t left = c - i;
    auto x = hn::Mul(hn::Sub(LoadUpTo(df, y + i, left), mv), rv);
    if (gamma) x = hn::Mul(x, LoadUpTo(df, gamma + i, left));
    if (bias) x = hn::Add(x, LoadUpTo(df, bias + i, left));
    if (left >= N) hn::StoreU(x, df, out + i);
    else StoreN(df, x, out + i, left);
  }
}

void LayerNorm(const float* y, std::size_t nt, std::size_t c, float eps, const float* gamma, const float* bias,
               float* out, float* stats) {
  const hn::ScalableTag<float> df;
  const std::size_t N = hn::Lanes(df);
  const float inv_c = 1.0f / static_cast<float>(c);
  for (std::size_t r = 0; r < nt; ++r, y += c, out += c) {
    const float mean = SumRow(df, c, [&](std::size_t i, std::size_t left) { return LoadUpTo(df, y + i, left); }) * inv_c;
    const auto mv = hn::Set(df, mean);
    const float var = SumRow(df, c, [&](std::size_t i, std::size_t left) {
      const auto z = hn::Sub(LoadUpTo(df, y + i, left), mv);
      return left >= N ? hn::Mul(z, z) : hn::IfThenElseZero(hn::FirstN(df, left), hn::Mul(z, z));
    }) * inv_c;
    const float rstd = 1.0f / std::sqrt(var + eps);
    if (stats) {
      stats[2 * r] = mean;
      stats[2 * r + 1] = rstd;
    }
    NormaliseRow(df, y, c, mv, hn::Set(df, rstd), gamma, bias, out);
  }
}

void LayerNormApply(const float* y, std::size_t nt, std::size_t c, const float* stats, const float* gamma,
                    const float* bias, float* out) {
  const hn::ScalableTag<float> df;
  for (std::size_t r = 0; r < nt; ++r, y += c, out += c)
    NormaliseRow(df, y, c, hn::Set(df, stats[2 * r]), hn::Set(df, stats[2 * r + 1]), gamma, bias, out);
}

// layer_norm_backward for kCount (1 or 2) norms of the rows: their gradients' h summed, the row sums once.
template <std::size_t kCount>
void NormBackwardRows(const float* y, std::size_t nt, std::size_t c, const float* stats, const NormGrad* gr, float* dy,
                      bool add) {
  const hn::ScalableTag<float> df;
  const std::size_t N = hn::Lanes(df);
  const float inv_c = 1.0f / static_cast<float>(c);
  for (std::size_t r = 0; r < nt; ++r, y += c, dy += c) {
    const auto mv = hn::Set(df, stats[2 * r]), rv = hn::Set(df, stats[2 * r + 1]);
    const auto x_at = [&](std::size_t i, std::size_t left) { return hn::Mul(hn::Sub(LoadUpTo(df, y + i, left), mv), rv); };
    const auto g_at = [&](std::size_t k, std::size_t i, std::size_t left) {
      return LoadUpTo(df, gr[k].g + r * gr[k].ldg + i, left);
    };
    const auto h_at = [&](std::size_t i, std::size_t left) {  // sum_k g_k o gamma_k
      auto h = g_at(0, i, left);
      if (gr[0].gamma) h = hn::Mul(h, LoadUpTo(df, gr[0].gamma + i, left));
      if constexpr (kCount == 2) {
        const auto g1 = g_at(1, i, left);
        h = gr[1].gamma ? hn::MulAdd(g1, LoadUpTo(df, gr[1].gamma + i, left), h) : hn::Add(h, g1);
      }
      return h;
    };
    auto s1 = hn::Zero(df), s2 = hn::Zero(df);
    for (std::size_t i = 0; i < c; i += N) {
      const std::size_t left = c - i;
      const auto x = x_at(i, left), h = h_at(i, left);  // zero beyond c
      s1 = hn::Add(s1, h);
      s2 = hn::Add(s2, hn::Mul(h, x));
      for (std::size_t k = 0; k < kCount; ++k) {
        const auto gv = g_at(k, i, left);
        if (gr[k].dgamma) {
          const auto v = hn::Add(LoadUpTo(df, gr[k].dgamma + i, left), hn::Mul(gv, x));
          if (left >= N) hn::StoreU(v, df, gr[k].dgamma + i);
          else StoreN(df, v, gr[k].dgamma + i, left);
        }
        if (gr[k].dbias) {
          const auto v = hn::Add(LoadUpTo(df, gr[k].dbias + i, left), gv);
          if (left >= N) hn::StoreU(v, df, gr[k].dbias + i);
          else StoreN(df, v, gr[k].dbias + i, left);
        }
      }
    }
    const auto m1 = hn::Set(df, hn::GetLane(hn::SumOfLanes(df, s1)) * inv_c);
    const auto m2 = hn::Set(df, hn::GetLane(hn::SumOfLanes(df, s2)) * inv_c);
    for (std::size_t i = 0; i < c; i += N) {
      const std::size_t left = c - i;
      auto v = hn::Mul(rv, hn::Sub(hn::Sub(h_at(i, left), m1), hn::Mul(x_at(i, left), m2)));
      if (add) v = hn::Add(v, LoadUpTo(df, dy + i, left));
      if (left >= N) hn::StoreU(v, df, dy + i);
      else StoreN(df, v, dy + i, left);
    }
  }
}

void LayerNormBackward(const float* y, std::size_t nt, std::size_t c, const float* stats, const NormGrad* grads,
                       std::size_t count, float* dy, bool add) {
  if (count == 2) NormBackwardRows<2>(y, nt, c, stats, grads, dy, add);
  else NormBackwardRows<1>(y, nt, c, stats, grads, dy, add);
}

// ---------------------------------------------------------------------------------------------
// Model A on packed +-1 columns (bit mu of the column: xi_mu,i = +1).

// The bits of lanes [i, i + lanes) of a packed column of n bits (bytes beyond the column not read).
HWY_INLINE std::uint64_t BitsAt(const std::uint8_t* bits, std::size_t n, std::size_t i) {
  const std::size_t byte = i / 8, bytes = std::min<std::size_t>(8, (n + 7) / 8 - byte);
  std::uint64_t w = 0;
  std::memcpy(&w, bits + byte, bytes);  // little-endian: bit i of the column is bit i % 8 of w's byte 0
  return w >> (i % 8);
}

// The lane masks 1 << lane (as the lane's unsigned type), for TestBit.
template <class DU>
HWY_INLINE V<DU> LaneBits(DU du) {
  using T = hn::TFromD<DU>;
  HWY_ALIGN T b[HWY_MAX_BYTES / sizeof(T)];
  for (std::size_t l = 0; l < hn::Lanes(du); ++l) b[l] = static_cast<T>(T{1} << l);
  return hn::Load(du, b);
}

// Model A's kernels walk the column 64 memories at a time: one 8-byte load of bits per word, its
// lanes' bits shifted down vector by vector (N <= 32 and a power of two, so 2 N divides 64); the last
// partial word goes lane group by lane group through BitsAt.
void MaskedSums(const double* a, const double* b, const std::uint8_t* bits, std::size_t n, bool invert, double* sa,
                double* sb) {
  const hn::CappedTag<double, 32> dd;  // at most 32 lanes: a lane's bit within one 64-bit word
  const hn::RebindToUnsigned<decltype(dd)> du;
  const std::size_t N = hn::Lanes(dd);
  const auto lane_bits = LaneBits(du);
  const std::uint64_t flip = invert ? ~std::uint64_t{0} : 0;
  auto x0 = hn::Zero(dd), x1 = x0, y0 = x0, y1 = x0;
  std::size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    std::uint64_t word;
    std::memcpy(&word, bits + i / 8, 8);  // little-endian: bit mu % 64 of the word is memory mu
    word ^= flip;
    for (std::size_t j = 0; j < 64; j += 2 * N) {
      const auto s0 = hn::RebindMask(dd, hn::TestBit(hn::Set(du, word >> j), lane_bits));
      const auto s1 = hn::RebindMask(dd, hn::TestBit(hn::Set(du, word >> (j + N)), lane_bits));
      x0 = hn::Add(x0, hn::IfThenElseZero(s0, hn::LoadU(dd, a + i + j)));
      y0 = hn::Add(y0, hn::IfThenZeroElse(s0, hn::LoadU(dd, b + i + j)));
      x1 = hn::Add(x1, hn::IfThenElseZero(s1, hn::LoadU(dd, a + i + j + N)));
      y1 = hn::Add(y1, hn::IfThenZeroElse(s1, hn::LoadU(dd, b + i + j + N)));
    }
  }
  for (; i < n; i += N) {
    const auto set = hn::RebindMask(dd, hn::TestBit(hn::Set(du, BitsAt(bits, n, i) ^ flip), lane_bits));
    const std::size_t left = n - i;
    // Lanes beyond n load as 0.0 and add nothing.
    x0 = hn::Add(x0, hn::IfThenElseZero(set, LoadUpTo(dd, a + i, left)));
    y0 = hn::Add(y0, hn::IfThenZeroElse(set, LoadUpTo(dd, b + i, left)));
  }
  *sa = hn::GetLane(hn::SumOfLanes(dd, hn::Add(x0, x1)));
  *sb = hn::GetLane(hn::SumOfLanes(dd, hn::Add(y0, y1)));
}

void AddSigned(std::int32_t* m, const std::uint8_t* bits, std::size_t n, std::int32_t delta) {
  const hn::CappedTag<std::int32_t, 32> di;
  const hn::RebindToUnsigned<decltype(di)> du;
  const std::size_t N = hn::Lanes(di);
  const auto lane_bits = LaneBits(du);
  const auto plus = hn::Set(di, delta), minus = hn::Set(di, -delta);
  std::size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    std::uint64_t word;
    std::memcpy(&word, bits + i / 8, 8);
    for (std::size_t j = 0; j < 64; j += N) {
      const auto set = hn::RebindMask(di, hn::TestBit(hn::Set(du, static_cast<std::uint32_t>(word >> j)), lane_bits));
      hn::StoreU(hn::Add(hn::LoadU(di, m + i + j), hn::IfThenElse(set, plus, minus)), di, m + i + j);
    }
  }
  for (; i < n; i += N) {
    const auto set = hn::RebindMask(di, hn::TestBit(hn::Set(du, static_cast<std::uint32_t>(BitsAt(bits, n, i))), lane_bits));
    const auto step = hn::IfThenElse(set, plus, minus);
    if (i + N <= n) {
      hn::StoreU(hn::Add(hn::LoadU(di, m + i), step), di, m + i);
    } else {
      StoreN(di, hn::Add(LoadN(di, m + i, n - i), step), m + i, n - i);
    }
  }
}

// Table lookups by index: Highway's gathers (AVX2's vgatherdpd; element by element where a target has
// none).
void LookupPairs(const std::int32_t* m, std::size_t n, const double* table, std::int32_t offset, double* a, double* b) {
  const hn::ScalableTag<double> dd;
  const hn::Rebind<std::int64_t, decltype(dd)> di;
  const hn::Rebind<std::int32_t, decltype(dd)> d32;
  const std::size_t N = hn::Lanes(dd);
  const auto off = hn::Set(di, offset), off2 = hn::Set(di, std::int64_t{offset} + 2);
  std::size_t i = 0;
  for (; i + N <= n; i += N) {
    const auto idx = hn::PromoteTo(di, hn::LoadU(d32, m + i));
    hn::StoreU(hn::GatherIndex(dd, table, hn::Add(idx, off)), dd, a + i);
    hn::StoreU(hn::GatherIndex(dd, table, hn::Add(idx, off2)), dd, b + i);
  }
  for (; i < n; ++i) {
    a[i] = table[m[i] + offset];
    b[i] = table[m[i] + offset + 2];
  }
}

// ---------------------------------------------------------------------------------------------
// Certified screen: exact integer dot products over the codes' 4-bit planes (codes.hpp: 64-byte
// groups, memory r's 4 bytes at 4r, byte k's low nibble weighs q8[8g + k], its high nibble
// q8[8g + 4 + k]). Read as 16-bit lanes, lane L holds bytes k0 = 2 (L % 2) and k0 + 1 of memory L / 2:
// its four nibbles times their query codes (|sum| <= 4 x 15 x 127 = 7620) fit in int16, and the two
// lanes of a memory are added in int32: exact on every target, no saturation.
void NibbleDots(const std::uint8_t* plane, std::size_t nblocks, std::size_t groups, const std::int8_t* q8,
                std::int32_t* dot) {
#if HWY_TARGET == HWY_SCALAR  // one lane: no 16-bit view of bytes; the same sums one memory at a time
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
#else
  const hn::CappedTag<std::uint16_t, 32> du16;  // at most one 64-byte group per vector
  const hn::RebindToSigned<decltype(du16)> di16;
  const hn::Repartition<std::int32_t, decltype(du16)> di32;
  const hn::Repartition<std::uint32_t, decltype(du16)> du32;
  const hn::Repartition<std::uint8_t, decltype(du16)> du8;
  const std::size_t N16 = hn::Lanes(du16), chunk_bytes = 2 * N16;
  // Per group, the 16-bit query codes of lanes (even, odd) for the four nibbles, as 32-bit patterns.
  constexpr std::size_t kStackGroups = 512;  // d <= 4096 on the stack (8 KB), larger on the heap
  std::uint32_t stack_pat[4 * kStackGroups];
  std::vector<std::uint32_t> heap_pat(groups > kStackGroups ? 4 * groups : 0);
  std::uint32_t* pat = groups > kStackGroups ? heap_pat.data() : stack_pat;
  const auto pair = [&](std::size_t even, std::size_t odd) {
    return std::uint32_t(std::uint16_t(std::int16_t(q8[even]))) | (std::uint32_t(std::uint16_t(std::int16_t(q8[odd]))) << 16);
  };
  for (std::size_t g = 0; g < groups; ++g) {
    pat[4 * g + 0] = pair(8 * g + 0, 8 * g + 2);
    pat[4 * g + 1] = pair(8 * g + 4, 8 * g + 6);
    pat[4 * g + 2] = pair(8 * g + 1, 8 * g + 3);
    pat[4 * g + 3] = pair(8 * g + 5, 8 * g + 7);
  }
  const auto low4 = hn::Set(du16, 0x000F);
  for (std::size_t b = 0; b < nblocks; ++b) {
    hwy::Prefetch(plane + (b + 4) * groups * 64);
    for (std::size_t c = 0; c < 64; c += chunk_bytes) {
      auto acc = hn::Zero(di32);
      for (std::size_t g = 0; g < groups; ++g) {
        const auto v = hn::BitCast(du16, hn::LoadU(du8, plane + (b * groups + g) * 64 + c));
        const auto n0 = hn::BitCast(di16, hn::And(v, low4));
        const auto n1 = hn::BitCast(di16, hn::And(hn::ShiftRight<4>(v), low4));
        const auto n2 = hn::BitCast(di16, hn::And(hn::ShiftRight<8>(v), low4));
        const auto n3 = hn::BitCast(di16, hn::ShiftRight<12>(v));
        const auto q0 = hn::BitCast(di16, hn::Set(du32, pat[4 * g + 0]));
        const auto q1 = hn::BitCast(di16, hn::Set(du32, pat[4 * g + 1]));
        const auto q2 = hn::BitCast(di16, hn::Set(du32, pat[4 * g + 2]));
        const auto q3 = hn::BitCast(di16, hn::Set(du32, pat[4 * g + 3]));
        const auto s = hn::Add(hn::Add(hn::Mul(n0, q0), hn::Mul(n1, q1)), hn::Add(hn::Mul(n2, q2), hn::Mul(n3, q3)));
        const auto x = hn::BitCast(di32, s);
        acc = hn::Add(acc, hn::Add(hn::ShiftRight<16>(hn::ShiftLeft<16>(x)), hn::ShiftRight<16>(x)));
      }
      hn::StoreU(acc, di32, dot + 16 * b + c / 4);
    }
  }
#endif
}

// coarse_bound (kernels.hpp) a vector of memories at a time, the same operations in the same order;
// the survivors' indices compressed in a register and stored whole (idx has 16 slots beyond nt): a
// compressing store to memory is slow on Zen 4.
std::size_t ScreenCoarse(const std::int32_t* dot, std::size_t nt, const CoarseQuery& cq, const float* scale,
                         const float* err, const std::uint8_t* mask, float cut, float* lo, float* stats,
                         std::uint32_t* idx) {
  for (std::size_t t = 0; t < nt; t += 16) {  // the next tile's scales and bounds
    hwy::Prefetch(scale + nt + t);
    hwy::Prefetch(err + nt + t);
  }
  const hn::CappedTag<float, 16> df;  // idx has 16 slots beyond nt for the compressing stores
  const hn::RebindToSigned<decltype(df)> di;
  const hn::RebindToUnsigned<decltype(df)> du;
  const hn::Rebind<std::uint8_t, decltype(df)> du8;
  const std::size_t N = hn::Lanes(df);
  const auto k16 = hn::Set(df, cq.k16), qn = hn::Set(df, cq.qn), rq = hn::Set(df, cq.rq);
  const auto R = hn::Set(df, cq.R), beta = hn::Set(df, cq.beta), vcut = hn::Set(df, cut);
  const auto rel = hn::Set(df, 0x1p-16f), tiny = hn::Set(df, 0x1p-100f), none = hn::Set(df, -HUGE_VALF);
  const auto shift = hn::Set(di, 8 * cq.qsum);
  auto ml = none, disc = none;
  std::size_t n = 0;
  for (std::size_t t = 0; t < nt; t += N) {
    const std::size_t left = nt - t;
    auto keep = hn::FirstN(df, left);
    if (mask) keep = hn::And(keep, hn::RebindMask(df, hn::Eq(hn::PromoteTo(du, LoadUpTo(du8, mask + t, left)), hn::Zero(du))));
    const auto x = hn::ConvertTo(df, hn::Sub(hn::LoadU(di, dot + t), shift));
    const auto sc = LoadUpTo(df, scale + t, left), er = LoadUpTo(df, err + t, left);
    const auto a = hn::Mul(hn::Mul(sc, k16), x);
    const auto e = hn::Add(hn::Mul(qn, er), hn::Mul(rq, hn::Add(R, er)));
    const auto bnd = hn::Add(hn::Add(e, hn::Mul(rel, hn::Add(hn::Abs(a), e))), tiny);
    const auto l = hn::Mul(beta, hn::Sub(a, bnd)), u = hn::Mul(beta, hn::Add(a, bnd));
    const auto lv = hn::IfThenElse(keep, l, none);
    if (left >= N) hn::StoreU(lv, df, lo + t);
    else StoreN(df, lv, lo + t, left);
    ml = hn::Max(ml, lv);
    const auto ge = hn::And(keep, hn::Ge(u, vcut));
    disc = hn::Max(disc, hn::IfThenElse(hn::AndNot(ge, keep), u, none));
    if (!hn::AllFalse(df, ge)) {
      const auto keep_u = hn::RebindMask(du, ge);
      hn::StoreU(hn::Compress(hn::Iota(du, static_cast<std::uint32_t>(t)), keep_u), du, idx + n);
      n += hn::CountTrue(du, keep_u);
    }
  }
  stats[0] = hn::GetLane(hn::MaxOfLanes(df, ml));
  stats[1] = hn::GetLane(hn::MaxOfLanes(df, disc));
  return n;
}

#undef ASSOCMEM_HWY_ROWS

const Ops* Table(const char* name) {
  static const Ops ops = [&] {
    Ops o{};
    o.name = name;
    o.bf16_products = false;
    o.row_block = 2 * kRows;
    o.full_row_blocks = false;
    o.pack_xt = &PackXt;
    o.gemm1_f32 = &Gemm1F32;
    o.gemm2_f32 = &Gemm2F32;
    o.to_bf16 = &ToBf16;
    o.from_bf16 = &FromBf16;
    o.dots_f32 = &DotsF32;
    o.dots_bf16 = &DotsBf16;
    o.axpy_f32 = &AxpyF32;
    o.axpy_bf16 = &AxpyBf16;
    o.scaled_max = &ScaledMax;
    o.exp_shift_sum = &ExpShiftSum;
    o.scale = &Scale;
    o.dot_f64 = &DotF64;
    o.softmax_backward = &SoftmaxBackward;
    o.layer_norm = &LayerNorm;
    o.layer_norm_apply = &LayerNormApply;
    o.layer_norm_backward = &LayerNormBackward;
    o.masked_sums = &MaskedSums;
    o.add_signed = &AddSigned;
    o.lookup_pairs = &LookupPairs;
    o.nibble_dots = &NibbleDots;
    o.screen_coarse = &ScreenCoarse;
    return o;
  }();
  return &ops;
}

}  // namespace HWY_NAMESPACE
}  // namespace assocmem::kernels
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace assocmem::kernels {

std::vector<HighwayTable> highway_tables() {
  std::vector<HighwayTable> all;
  const std::int64_t cpu = hwy::SupportedTargets();
  const auto add = [&](std::int64_t target, const Ops* (*table)(const char*), const char* name) {
    if (cpu & target) all.push_back({target, table(name)});
  };
  // Best first. The portable table (EMU128 or SCALAR) is "generic" (every CPU runs it).
#if HWY_TARGETS & HWY_SVE2
  add(HWY_SVE2, &N_SVE2::Table, "sve2");
#endif
#if HWY_TARGETS & HWY_SVE
  add(HWY_SVE, &N_SVE::Table, "sve");
#endif
#if HWY_TARGETS & HWY_NEON
  add(HWY_NEON, &N_NEON::Table, "neon");
#endif
#if HWY_TARGETS & HWY_AVX3
  add(HWY_AVX3, &N_AVX3::Table, "avx512");
#endif
#if HWY_TARGETS & HWY_AVX2
  add(HWY_AVX2, &N_AVX2::Table, "avx2");
#endif
#if HWY_TARGETS & HWY_SSE4
  add(HWY_SSE4, &N_SSE4::Table, "sse4");
#endif
#if HWY_TARGETS & HWY_EMU128
  add(HWY_EMU128, &N_EMU128::Table, "generic");
#elif HWY_TARGETS & HWY_SCALAR
  add(HWY_SCALAR, &N_SCALAR::Table, "generic");
#endif
  return all;
}

}  // namespace assocmem::kernels
#endif  // HWY_ONCE
