// Every entry of every kernel table this CPU runs (available_kernels(): the Highway targets, the AVX-512
// BF16/AMX tables with their hand-written entries) against scalar references: exact for the integer and data-movement
// kernels, within the float32 forward error bound gamma_n sum |terms| (tests/error_bounds.hpp) for the
// sums, which holds whatever order a target adds in. Run the whole suite with ASSOCMEM_KERNEL=<name> to
// put the engines on one table.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "assocmem/engine.hpp"
#include "error_bounds.hpp"
#include "kernels/kernels.hpp"

using namespace assocmem;
using assocmem::testing::gamma_n;
namespace k = assocmem::kernels;

namespace {

std::vector<const k::Ops*> tables() {
  std::vector<const k::Ops*> out;
  for (const std::string& name : available_kernels()) {
    const k::Ops* o = k::table_named(name.c_str());
    EXPECT_NE(o, nullptr) << name;
    if (o) out.push_back(o);
  }
  return out;
}

float bf16_value(std::uint16_t b) {
  const std::uint32_t u = std::uint32_t(b) << 16;
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}
std::uint16_t to_bf16_ref(float x) {  // round to nearest even; NaN kept quiet
  std::uint32_t u;
  std::memcpy(&u, &x, 4);
  if (std::isnan(x)) return static_cast<std::uint16_t>((u >> 16) | 0x40);
  return static_cast<std::uint16_t>((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}

std::vector<float> randf(std::size_t n, std::mt19937_64& rng) {
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

TEST(Kernels, EveryTableIsListedAndNamed) {
  const std::vector<std::string> names = available_kernels();
  ASSERT_FALSE(names.empty());
  EXPECT_EQ(names.back(), "generic");  // the portable table runs everywhere
  for (const k::Ops* o : tables()) EXPECT_EQ(k::table_named(o->name), o);
}

TEST(Kernels, SingleQueryDotsAndAxpy) {
  std::mt19937_64 rng(1);
  for (const k::Ops* o : tables())
    for (std::size_t d : {1u, 5u, 24u, 64u, 67u}) {
      SCOPED_TRACE(std::string(o->name) + " d " + std::to_string(d));
      const std::size_t nt = 37;
      const std::vector<float> q = randf(d, rng), rows = randf(nt * d, rng), p = randf(nt, rng);
      std::vector<std::uint16_t> rb(nt * d);
      for (std::size_t i = 0; i < rb.size(); ++i) rb[i] = to_bf16_ref(rows[i]);
      std::vector<float> out(nt), outb(nt);
      o->dots_f32(q.data(), rows.data(), nt, d, out.data());
      o->dots_bf16(q.data(), rb.data(), nt, d, outb.data());
      for (std::size_t t = 0; t < nt; ++t) {
        long double ref = 0, refb = 0, mag = 0, magb = 0;
        for (std::size_t j = 0; j < d; ++j) {
          ref += (long double)q[j] * rows[t * d + j];
          refb += (long double)q[j] * bf16_value(rb[t * d + j]);
          mag += std::fabs((long double)q[j] * rows[t * d + j]);
          magb += std::fabs((long double)q[j] * bf16_value(rb[t * d + j]));
        }
        EXPECT_NEAR(out[t], double(ref), gamma_n(double(d)) * double(mag) + 1e-30) << t;
        EXPECT_NEAR(outb[t], double(refb), gamma_n(double(d)) * double(magb) + 1e-30) << t;
      }
      const std::vector<float> acc0 = randf(d, rng);
      std::vector<float> acc = acc0, accb = acc0;
      o->axpy_f32(p.data(), rows.data(), nt, d, acc.data());
      o->axpy_bf16(p.data(), rb.data(), nt, d, accb.data());
      for (std::size_t j = 0; j < d; ++j) {
        long double ref = acc0[j], refb = acc0[j], mag = std::fabs(acc0[j]), magb = mag;
        for (std::size_t t = 0; t < nt; ++t) {
          ref += (long double)p[t] * rows[t * d + j];
          refb += (long double)p[t] * bf16_value(rb[t * d + j]);
          mag += std::fabs((long double)p[t] * rows[t * d + j]);
          magb += std::fabs((long double)p[t] * bf16_value(rb[t * d + j]));
        }
        EXPECT_NEAR(acc[j], double(ref), gamma_n(double(nt + 1)) * double(mag)) << j;
        EXPECT_NEAR(accb[j], double(refb), gamma_n(double(nt + 1)) * double(magb)) << j;
      }
    }
}

TEST(Kernels, BlockedProducts) {
  std::mt19937_64 rng(2);
  for (const k::Ops* o : tables())
    for (std::size_t d : {3u, 24u, 40u, 70u})  // 70: squares of 4 dimensions and 2 more
      for (std::size_t nb : {1u, 5u, 8u, 13u}) {
        SCOPED_TRACE(std::string(o->name) + " d " + std::to_string(d) + " nb " + std::to_string(nb));
        const std::size_t nt = 70, ntpad = k::round_up(nt, k::kBlock), dpad = k::round_up(d, k::kBlock);
        const std::vector<float> q = randf(nb * d, rng), rows = randf(nt * d, rng), P = randf(nb * ntpad, rng);
        std::vector<float> xt(ntpad * d), S(nb * ntpad, 7.0f);
        o->pack_xt(rows.data(), nt, d, xt.data());
        o->gemm1_f32(q.data(), nb, d, xt.data(), nt, d, S.data(), ntpad);
        for (std::size_t r = 0; r < nb; ++r)
          for (std::size_t t = 0; t < ntpad; ++t) {
            long double ref = 0, mag = 0;
            for (std::size_t j = 0; t < nt && j < d; ++j) {
              ref += (long double)q[r * d + j] * rows[t * d + j];
              mag += std::fabs((long double)q[r * d + j] * rows[t * d + j]);
            }
            if (t >= nt) {
              ASSERT_EQ(S[r * ntpad + t], 0.0f) << "padding column " << t;  // zero memories
              continue;
            }
            ASSERT_NEAR(S[r * ntpad + t], double(ref), gamma_n(double(d)) * double(mag) + 1e-30) << r << "," << t;
          }
        const std::vector<float> acc0 = randf(nb * dpad, rng);
        std::vector<float> acc = acc0;
        o->gemm2_f32(P.data(), nb, ntpad, rows.data(), nt, d, acc.data(), dpad);
        for (std::size_t r = 0; r < nb; ++r)
          for (std::size_t j = 0; j < dpad; ++j) {
            if (j >= d) {
              ASSERT_EQ(acc[r * dpad + j], acc0[r * dpad + j]) << "padding column " << j;  // += 0
              continue;
            }
            long double ref = acc0[r * dpad + j], mag = std::fabs(ref);
            for (std::size_t t = 0; t < nt; ++t) {
              ref += (long double)P[r * ntpad + t] * rows[t * d + j];
              mag += std::fabs((long double)P[r * ntpad + t] * rows[t * d + j]);
            }
            ASSERT_NEAR(acc[r * dpad + j], double(ref), gamma_n(double(nt + 1)) * double(mag)) << r << "," << j;
          }
      }
}

TEST(Kernels, Bf16RoundingIsToNearestEven) {
  std::mt19937_64 rng(3);
  std::vector<float> x = randf(203, rng);
  const float specials[] = {0.0f, -0.0f, 1.0f, std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN(),
                            std::numeric_limits<float>::max(), std::numeric_limits<float>::denorm_min(),
                            1.0f + 0x1p-8f /* a tie: to even */, 1.0f + 3 * 0x1p-8f /* a tie: up */};
  x.insert(x.end(), std::begin(specials), std::end(specials));
  for (const k::Ops* o : tables()) {
    std::vector<std::uint16_t> out(x.size());
    o->to_bf16(x.data(), x.size(), out.data());
    for (std::size_t i = 0; i < x.size(); ++i) {
      if (std::isnan(x[i])) {
        EXPECT_TRUE(std::isnan(bf16_value(out[i]))) << o->name;
        continue;
      }
      EXPECT_EQ(out[i], to_bf16_ref(x[i])) << o->name << " " << x[i];
    }
    // And back: exact (the bits shifted up), every length's tail included.
    for (std::size_t n : {x.size(), std::size_t{1}, std::size_t{7}, std::size_t{17}}) {
      std::vector<float> back(n, 1.0f);
      o->from_bf16(out.data(), n, back.data());
      for (std::size_t i = 0; i < n; ++i) {
        std::uint32_t got, want;
        const float w = bf16_value(out[i]);
        std::memcpy(&got, &back[i], 4);
        std::memcpy(&want, &w, 4);
        EXPECT_EQ(got, want) << o->name << " " << i;
      }
    }
  }
}

TEST(Kernels, SoftmaxEpilogue) {
  std::mt19937_64 rng(4);
  for (const k::Ops* o : tables())
    for (std::size_t n : {1u, 7u, 16u, 33u, 256u}) {
      SCOPED_TRACE(std::string(o->name) + " n " + std::to_string(n));
      std::vector<float> s = randf(n, rng);
      s[n / 2] = -30.0f;  // beta s - m below -87.3: weight 0 (no subnormals)
      const float beta = 4.0f;
      float mref = -INFINITY;
      for (float x : s) mref = std::max(mref, beta * x);
      EXPECT_EQ(o->scaled_max(s.data(), n, beta), mref);  // a max of the same rounded products: exact
      std::vector<float> p(n);
      const float sum = o->exp_shift_sum(s.data(), n, beta, mref, p.data());
      long double total = 0;
      for (std::size_t i = 0; i < n; ++i) {
        const float x = beta * s[i] - mref;  // rounded as the kernels round it
        if (x < -87.3f) {
          EXPECT_EQ(p[i], 0.0f) << i;
          continue;
        }
        const double e = std::exp(double(x));
        EXPECT_NEAR(p[i], e, 4 * 0x1p-24 * e) << i;  // the Cephes form (< 2 ulp), with room
        total += p[i];
      }
      EXPECT_NEAR(sum, double(total), gamma_n(double(n)) * double(total));
      std::vector<float> y = s;
      o->scale(y.data(), n, 0.37f);
      for (std::size_t i = 0; i < n; ++i) EXPECT_EQ(y[i], s[i] * 0.37f);
    }
}

// dot_f64 against the exact sum (each float product is exact in double; long double sums them with 11
// bits more), within double's gamma_n of the sum of magnitudes (a sum in float lanes would be off by
// about 2^-24 of it: it fails); and softmax_backward: its weights are
// exp_shift_sum's bit for bit, g = p (g - D) rounded once per operation as written, and its return value
// dot_f64's sum of g s. Lengths that are and are not multiples of any vector.
TEST(Kernels, DoubleDotAndTheSoftmaxBackwardRow) {
  std::mt19937_64 rng(5);
  const double ud = 0x1p-53;
  for (const k::Ops* o : tables())
    for (std::size_t n : {1u, 3u, 8u, 17u, 64u, 256u, 1001u}) {
      SCOPED_TRACE(std::string(o->name) + " n " + std::to_string(n));
      std::vector<float> x = randf(n, rng), y = randf(n, rng);
      long double exact = 0, mag = 0;
      for (std::size_t i = 0; i < n; ++i) {
        exact += (long double)x[i] * (long double)y[i];
        mag += std::fabs((long double)x[i] * (long double)y[i]);
      }
      const double dot = o->dot_f64(x.data(), y.data(), n);
      const double gam = double(n) * ud / (1 - double(n) * ud);
      EXPECT_NEAR(dot, double(exact), gam * double(mag) + 1e-300);

      std::vector<float> s = randf(n, rng), g = randf(n, rng);
      const float beta = 3.0f, D = 0.25f;
      float m = -INFINITY;
      for (float v : s) m = std::max(m, beta * v);
      const float L = m + 0.5f;  // a log-sum-exp above the maximum, as the backward pass has
      std::vector<float> p_ref(n), p(n), g2 = g;
      o->exp_shift_sum(s.data(), n, beta, L, p_ref.data());
      const double ret = o->softmax_backward(s.data(), n, beta, L, D, p.data(), g2.data());
      for (std::size_t i = 0; i < n; ++i) {
        ASSERT_EQ(p[i], p_ref[i]) << i;
        ASSERT_EQ(g2[i], p_ref[i] * (g[i] - D)) << i;
      }
      EXPECT_EQ(ret, o->dot_f64(g2.data(), s.data(), n));
    }
}

// The layer norm of memory rows and its backward pass (the fused attention's RowNorm) on every table,
// against the same formulas in double, for rows whose length is and is not a multiple of any vector, a
// constant row (variance 0: x = 0, out = bias) and rows with a large mean (the cancellation in y - mean).
// Forward bound, from the float steps (sums in any order: gamma_n): the mean within e_m = gamma_{c+1}
// mean|y|; y - mean within D_j = e_m + u (|z_j| + e_m); the variance within gamma_{c+2} sum z^2 / c +
// sum D_j (2|z_j| + D_j) / c, i.e. relatively eps_v of var + eps, so rstd within eps_r = eps_v / (1 - eps_v)
// + gamma_3 (1 + eps_v / (1 - eps_v)) relatively (sqrt halves the first, add, sqrt and divide round);
// x = z rstd within E_j = D_j r (1 + eps_r) + |z_j| r eps_r + u (|x_j| + ...); then gamma and bias: a
// rounding each. First order in u, doubled for the terms of second order. The backward pass is checked
// with the kernel's own statistics (mean, rstd) as the exact ones: its steps round x (2u), h = g gamma (u),
// the two means (gamma_{c+2}, gamma_{c+6} of the sums of magnitudes) and the last four operations.
TEST(Kernels, LayerNormAndItsBackward) {
  std::mt19937_64 rng(21);
  const double u = 0x1p-24;
  for (const k::Ops* o : tables())
    for (std::size_t c : {1u, 5u, 16u, 64u, 70u})
      for (bool affine : {false, true}) {
        SCOPED_TRACE(std::string(o->name) + " c " + std::to_string(c) + (affine ? " affine" : ""));
        const std::size_t nt = 9;
        std::vector<float> y = randf(nt * c, rng), g = randf(nt * c, rng), gamma = randf(c, rng), bias = randf(c, rng);
        for (std::size_t j = 0; j < c; ++j) y[c + j] = 0.375f;  // row 1 constant
        for (std::size_t j = 0; j < c; ++j) y[2 * c + j] += 100.0f;  // row 2: mean 100, spread 1
        const float eps = 1e-5f;
        const float* gm = affine ? gamma.data() : nullptr;
        const float* bs = affine ? bias.data() : nullptr;
        std::vector<float> out(nt * c), stats(2 * nt), dy(nt * c, 0.5f), dg(c, 0.0f), db(c, 0.0f);
        o->layer_norm(y.data(), nt, c, eps, gm, bs, out.data(), stats.data());
        const double gc = gamma_n(double(c) + 1);
        for (std::size_t r = 0; r < nt; ++r) {
          const float* yr = &y[r * c];
          double m = 0, a = 0, v = 0;
          for (std::size_t j = 0; j < c; ++j) m += yr[j], a += std::fabs(double(yr[j]));
          m /= double(c), a /= double(c);
          for (std::size_t j = 0; j < c; ++j) v += (yr[j] - m) * (yr[j] - m) / double(c);
          const double rs = 1 / std::sqrt(v + double(eps)), e_m = gc * a;
          double dv = gamma_n(double(c) + 2) * v;
          for (std::size_t j = 0; j < c; ++j) {
            const double z = std::fabs(yr[j] - m), D = e_m + u * (z + e_m);
            dv += D * (2 * z + D) / double(c);
          }
          const double ev = dv / (v + double(eps)), er = ev / (1 - ev) + gamma_n(3) * (1 + ev / (1 - ev));
          ASSERT_LT(ev, 0.5);
          EXPECT_NEAR(stats[2 * r], m, e_m) << "mean of row " << r;
          EXPECT_NEAR(stats[2 * r + 1], rs, 2 * er * rs) << "rstd of row " << r;
          for (std::size_t j = 0; j < c; ++j) {
            const double z = yr[j] - m, x = z * rs, D = e_m + u * (std::fabs(z) + e_m);
            const double ex = D * rs * (1 + er) + std::fabs(z) * rs * er;
            const double Ex = ex + u * (std::fabs(x) + ex);
            const double gj = affine ? gamma[j] : 1.0, bj = affine ? bias[j] : 0.0;
            const double want = x * gj + bj;
            const double bound = std::fabs(gj) * Ex + 2 * u * (std::fabs(gj) * (std::fabs(x) + Ex) + std::fabs(bj));
            ASSERT_NEAR(out[r * c + j], want, 2 * bound) << "row " << r << " entry " << j;
          }
        }
        for (std::size_t j = 0; j < c; ++j) ASSERT_EQ(out[c + j], affine ? bias[j] : 0.0f) << "constant row";
        // Another norm of the same rows from these stats (layer_norm_apply): the bits layer_norm gives with its
        // gamma and bias.
        std::vector<float> gamma2 = randf(c, rng), bias2 = randf(c, rng), out2(nt * c), again(nt * c);
        const float* gm2 = affine ? gamma2.data() : nullptr;
        const float* bs2 = affine ? bias2.data() : nullptr;
        o->layer_norm(y.data(), nt, c, eps, gm2, bs2, out2.data(), nullptr);
        o->layer_norm_apply(y.data(), nt, c, stats.data(), gm2, bs2, again.data());
        for (std::size_t j = 0; j < nt * c; ++j) ASSERT_EQ(again[j], out2[j]) << "layer_norm_apply, entry " << j;
        o->layer_norm_apply(y.data(), nt, c, stats.data(), gm, bs, again.data());
        for (std::size_t j = 0; j < nt * c; ++j) ASSERT_EQ(again[j], out[j]) << "layer_norm_apply, entry " << j;
        // The backward pass (added to dy = 0.5), with the kernel's statistics: of this norm alone, then of it
        // and the second norm (gamma2) together, h = g o gamma + g2 o gamma2 (each rounding of h's
        // sum within u sum_k |g_k gamma_k|).
        const std::vector<float> g2 = randf(nt * c, rng), dy0 = dy;
        for (std::size_t count : {1u, 2u}) {
          SCOPED_TRACE(count == 1 ? "one norm" : "two norms");
          std::vector<float> dg2(c, 0.0f), db2(c, 0.0f);
          dy = dy0, dg.assign(c, 0.0f), db.assign(c, 0.0f);
          const k::NormGrad gr[2] = {{g.data(), c, gm, affine ? dg.data() : nullptr, affine ? db.data() : nullptr},
                                     {g2.data(), c, gm2, affine ? dg2.data() : nullptr, affine ? db2.data() : nullptr}};
          o->layer_norm_backward(y.data(), nt, c, stats.data(), gr, count, dy.data(), true);
          std::vector<double> dgs(c, 0.0), dgb(c, 0.0), dbs(c, 0.0), dbb(c, 0.0);
          for (std::size_t r = 0; r < nt; ++r) {
            const double m = stats[2 * r], rs = stats[2 * r + 1];
            double s1 = 0, s2 = 0, H1 = 0, H2 = 0;
            std::vector<double> x(c), h(c), hm(c);
            for (std::size_t j = 0; j < c; ++j) {
              x[j] = (y[r * c + j] - m) * rs;
              const double h1 = double(g[r * c + j]) * (affine ? gamma[j] : 1.0f);
              const double h2 = count == 2 ? double(g2[r * c + j]) * (affine ? gamma2[j] : 1.0f) : 0.0;
              h[j] = h1 + h2, hm[j] = std::fabs(h1) + std::fabs(h2);
              s1 += h[j], s2 += h[j] * x[j], H1 += hm[j], H2 += hm[j] * std::fabs(x[j]);
              dgs[j] += double(g[r * c + j]) * x[j], dgb[j] += std::fabs(double(g[r * c + j]) * x[j]);
              dbs[j] += g[r * c + j], dbb[j] += std::fabs(double(g[r * c + j]));
            }
            s1 /= double(c), s2 /= double(c), H1 /= double(c), H2 /= double(c);
            const double e1 = gamma_n(double(c) + 1 + double(count)) * H1;
            const double e2 = gamma_n(double(c) + 5 + double(count)) * H2;
            for (std::size_t j = 0; j < c; ++j) {
              const double want = 0.5 + rs * (h[j] - s1 - x[j] * s2);
              const double ax = std::fabs(x[j]), ah = hm[j];
              const double bound = rs * (double(count) * u * ah + e1 + ax * e2 + 2 * u * ax * std::fabs(s2) +
                                         4 * u * (ah + std::fabs(s1) + ax * std::fabs(s2))) + u * (0.5 + std::fabs(want));
              ASSERT_NEAR(dy[r * c + j], want, 2 * bound) << "row " << r << " entry " << j;
            }
          }
          if (affine)
            for (std::size_t j = 0; j < c; ++j) {  // the first norm's parameters' (the second's: the same sums)
              EXPECT_NEAR(dg[j], dgs[j], 2 * gamma_n(double(nt) + 3) * dgb[j]) << "dgamma " << j;
              EXPECT_NEAR(db[j], dbs[j], gamma_n(double(nt)) * dbb[j]) << "dbias " << j;
            }
          if (count == 2 && affine) {  // the second's parameters' gradients: those of the second norm alone
            std::vector<float> dy1(nt * c, 0.0f), dga(c, 0.0f), dba(c, 0.0f);
            const k::NormGrad alone{g2.data(), c, gm2, dga.data(), dba.data()};
            o->layer_norm_backward(y.data(), nt, c, stats.data(), &alone, 1, dy1.data(), false);
            for (std::size_t j = 0; j < c; ++j) {
              EXPECT_EQ(dg2[j], dga[j]) << "second dgamma " << j;
              EXPECT_EQ(db2[j], dba[j]) << "second dbias " << j;
            }
          }
        }
      }
}

// exp_shift_sum over the whole range it is used on (beta s - m in [-87.3, 0], 2^n down to n = -126) and
// far above it: within 4 ulp of exp in double up to 88 (2^n up to n = 127), exactly 1 at the maximum, 0
// below -87.3 (no subnormal weights), and above 88.376 (n would be 128) exp(88.376): finite, never inf.
TEST(Kernels, ExpIsAccurateOverItsWholeRange) {
  constexpr std::size_t n = 40001;
  std::vector<float> s(n), p(n);
  for (std::size_t i = 0; i < n; ++i) s[i] = -88.0f + 176.7f * float(i) / float(n - 1);  // [-88, 88.7]
  s[n / 2] = 0.0f;
  for (const k::Ops* o : tables()) {
    SCOPED_TRACE(o->name);
    o->exp_shift_sum(s.data(), n, 1.0f, 0.0f, p.data());
    for (std::size_t i = 0; i < n; ++i) {
      if (s[i] < -87.3f) {
        ASSERT_EQ(p[i], 0.0f) << s[i];
      } else if (s[i] <= 88.0f) {
        const double e = std::exp(double(s[i]));
        ASSERT_NEAR(p[i], e, 4 * 0x1p-24 * e) << s[i];
      } else if (s[i] >= 88.376f) {
        const double e = std::exp(double(88.376f));  // the clamp, as a float
        ASSERT_NEAR(p[i], e, 4 * 0x1p-24 * e) << s[i];
      }
    }
    EXPECT_EQ(p[n / 2], 1.0f);
  }
}

TEST(Kernels, ModelAPackedBitsAreExact) {
  std::mt19937_64 rng(5);
  for (const k::Ops* o : tables())
    for (std::size_t n : {1u, 7u, 8u, 13u, 64u, 100u, 128u, 200u}) {
      SCOPED_TRACE(std::string(o->name) + " n " + std::to_string(n));
      std::vector<std::uint8_t> bits((n + 7) / 8);
      for (auto& b : bits) b = static_cast<std::uint8_t>(rng());
      const auto bit = [&](std::size_t i) { return (bits[i / 8] >> (i % 8)) & 1; };
      std::vector<double> a(n), b(n);
      for (std::size_t i = 0; i < n; ++i) {
        a[i] = std::ldexp(double(rng() % 1000), -3);  // exact binary fractions: every order gives the same sum
        b[i] = -std::ldexp(double(rng() % 1000), -5);
      }
      for (bool invert : {false, true}) {
        double sa = 0, sb = 0, ra = 0, rb = 0;
        o->masked_sums(a.data(), b.data(), bits.data(), n, invert, &sa, &sb);
        for (std::size_t i = 0; i < n; ++i) (bool(bit(i)) != invert ? ra += a[i] : rb += b[i]);
        EXPECT_EQ(sa, ra);
        EXPECT_EQ(sb, rb);
      }
      std::vector<std::int32_t> m(n), ref(n);
      for (std::size_t i = 0; i < n; ++i) m[i] = ref[i] = static_cast<std::int32_t>(rng() % 100) - 50;
      o->add_signed(m.data(), bits.data(), n, 3);
      for (std::size_t i = 0; i < n; ++i) ref[i] += bit(i) ? 3 : -3;
      EXPECT_EQ(m, ref);
      std::vector<double> table(200);
      for (std::size_t i = 0; i < table.size(); ++i) table[i] = double(i) * 0.5;
      std::vector<double> la(n), lb(n);
      for (auto& x : m) x = static_cast<std::int32_t>(rng() % 90);
      o->lookup_pairs(m.data(), n, table.data(), 7, la.data(), lb.data());
      for (std::size_t i = 0; i < n; ++i) {
        EXPECT_EQ(la[i], table[std::size_t(m[i] + 7)]);
        EXPECT_EQ(lb[i], table[std::size_t(m[i] + 9)]);
      }
    }
}

TEST(Kernels, CertifiedScreenIsExactAndKeepsWhatTheScalarBoundKeeps) {
  std::mt19937_64 rng(6);
  for (const k::Ops* o : tables())
    for (std::size_t groups : {1u, 3u, 8u}) {
      SCOPED_TRACE(std::string(o->name) + " groups " + std::to_string(groups));
      const std::size_t nt = 77, nblocks = (nt + 15) / 16;
      std::vector<std::uint8_t> plane(nblocks * groups * 64);
      for (auto& b : plane) b = static_cast<std::uint8_t>(rng());
      std::vector<std::int8_t> q8(groups * 8);
      for (auto& x : q8) x = static_cast<std::int8_t>(int(rng() % 255) - 127);
      std::vector<std::int32_t> dot(nblocks * 16), ref(nblocks * 16, 0);
      o->nibble_dots(plane.data(), nblocks, groups, q8.data(), dot.data());
      for (std::size_t b = 0; b < nblocks; ++b)
        for (std::size_t r = 0; r < 16; ++r)
          for (std::size_t g = 0; g < groups; ++g)
            for (std::size_t kk = 0; kk < 4; ++kk) {
              const std::uint8_t v = plane[(b * groups + g) * 64 + 4 * r + kk];
              ref[16 * b + r] += (v & 15) * q8[8 * g + kk] + (v >> 4) * q8[8 * g + 4 + kk];
            }
      ASSERT_EQ(dot, ref);
      // The coarse screen: lo and the survivors as coarse_bound gives them (memories masked or within
      // 2^-20 of the cut, where a contracted multiply-add may round differently, are left out).
      std::int32_t qsum = 0;
      for (auto x : q8) qsum += x;
      const k::CoarseQuery cq{qsum, 0.01f, 1.0f, 0.02f, 1.5f, 3.0f};
      std::vector<float> scale(nt), err(nt);
      std::vector<std::uint8_t> mask(nt);
      for (std::size_t t = 0; t < nt; ++t) {
        scale[t] = 0.001f + float(rng() % 1000) * 1e-5f;
        err[t] = float(rng() % 1000) * 1e-5f;
        mask[t] = rng() % 7 == 0;
      }
      const float cut = 0.5f;
      std::vector<std::int32_t> d2(nblocks * 16);
      std::vector<float> lo(nt), stats(2);
      std::vector<std::uint32_t> idx(nt + 16);
      o->nibble_dots(plane.data(), nblocks, groups, q8.data(), d2.data());
      const std::size_t n = o->screen_coarse(d2.data(), nt, cq, scale.data(), err.data(), mask.data(), cut, lo.data(),
                                             stats.data(), idx.data());
      idx.resize(n);
      float ml = -INFINITY;
      std::size_t at = 0;
      for (std::size_t t = 0; t < nt; ++t) {
        if (mask[t]) {
          EXPECT_EQ(lo[t], -INFINITY);
          EXPECT_TRUE(at >= idx.size() || idx[at] != t) << "masked memory " << t << " kept";
          continue;
        }
        float l, u;
        k::coarse_bound(ref[t], scale[t], err[t], cq, &l, &u);
        EXPECT_NEAR(lo[t], l, 0x1p-20f * std::fabs(l)) << t;
        ml = std::max(ml, l);
        const bool kept = at < idx.size() && idx[at] == t;
        if (kept) ++at;
        if (std::fabs(u - cut) > 0x1p-20f * std::fabs(cut)) {
          EXPECT_EQ(kept, u >= cut) << t;
        }
      }
      EXPECT_EQ(at, idx.size()) << "survivors out of order or repeated";
      EXPECT_NEAR(stats[0], ml, 0x1p-20f * std::fabs(ml));
    }
}

TEST(Kernels, ForcingAKernelTheCpuLacksIsAnError) {
  MemoryStore s(4, DType::Float32);
  s.append(Matrix::Ones(2, 4));
  const std::vector<std::string> here = available_kernels();
  for (const char* name : {"generic", "sse4", "avx2", "avx512", "avx512_bf16", "amx_bf16", "neon", "sve", "sve2"}) {
    EngineOptions o;
    o.kernel = parse_kernel(name);
    const bool ok = std::find(here.begin(), here.end(), name) != here.end();
    if (ok) {
      EXPECT_EQ(ModelBEngine(s, 1.0, o).kernel(), name);
    } else {
      EXPECT_THROW(ModelBEngine(s, 1.0, o), InvalidArgument) << name;
    }
  }
  EXPECT_THROW(parse_kernel("avx3"), InvalidArgument);
}

}  // namespace
