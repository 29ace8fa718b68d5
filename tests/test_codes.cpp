// Certified model B retrieval over int8 codes (codes.hpp, RetrieveOptions::certify; issue 14).
// The bounds are checked against an independent long-double evaluation of eq. (16): the returned state
// is within its certified error of the exact one on adversarial stores (near-ties at the threshold,
// duplicates, clusters, masks), the discarded weight stays below eps, the fallback happens where it
// must (small beta), and the codes' file refuses corruption and another store's rows.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <xxhash.h>

#include "assocmem/codes.hpp"
#include "assocmem/engine.hpp"
#include "engine_kernels.hpp"
#include "kernels.hpp"  // src/kernels: the screen kernels, tested one by one
#include "test_util.hpp"

using namespace assocmem;
using assocmem::testing::available_kernels;
using assocmem::testing::randn;
using assocmem::testing::TempDir;

namespace {

MemoryStore store_of(const Matrix& X, DType t) {
  MemoryStore s(static_cast<std::size_t>(X.cols()), t);
  s.append(X);
  return s;
}

// eq. (16) in long double over the store's decoded rows: the state and the softmax weights.
std::vector<long double> exact_state(const MemoryStore& s, const float* q, double beta, const std::uint8_t* mask,
                                     std::vector<long double>* weights = nullptr) {
  const std::size_t K = s.size(), d = s.dim();
  std::vector<float> row(d);
  std::vector<long double> sc(K, -INFINITY);
  long double m = -INFINITY;
  for (std::size_t mu = 0; mu < K; ++mu) {
    if (mask && mask[mu]) continue;
    s.decode_row(mu, row.data());
    long double x = 0;
    for (std::size_t j = 0; j < d; ++j) x += (long double)q[j] * row[j];
    sc[mu] = beta * x;
    m = std::max(m, sc[mu]);
  }
  std::vector<long double> v(d, 0), w(K, 0);
  long double z = 0;
  for (std::size_t mu = 0; mu < K; ++mu) z += (w[mu] = std::isinf(sc[mu]) ? 0 : std::exp(sc[mu] - m));
  for (std::size_t mu = 0; mu < K; ++mu) {
    if (w[mu] == 0) continue;
    s.decode_row(mu, row.data());
    for (std::size_t j = 0; j < d; ++j) v[j] += w[mu] / z * row[j];
  }
  if (weights) {
    for (auto& x : w) x /= z;
    *weights = w;
  }
  return v;
}

double dist(const std::vector<long double>& a, const double* b) {
  long double s = 0;
  for (std::size_t j = 0; j < a.size(); ++j) s += (a[j] - b[j]) * (a[j] - b[j]);
  return static_cast<double>(std::sqrt(s));
}

// K random unit rows in d dimensions (Gaussian rows, normalised).
Matrix unit_rows(std::size_t K, std::size_t d, std::mt19937_64& rng) {
  Matrix X = randn(Eigen::Index(K), Eigen::Index(d), rng);
  for (Eigen::Index i = 0; i < X.rows(); ++i) X.row(i).normalize();
  return X;
}

// K random directions in d dimensions with norms log-uniform in [1e-3, 1e3]: scores span six decades.
Matrix spread_norms(std::size_t K, std::size_t d, std::mt19937_64& rng) {
  Matrix X = randn(Eigen::Index(K), Eigen::Index(d), rng);
  std::uniform_real_distribution<double> decade(-3.0, 3.0);
  for (Eigen::Index i = 0; i < X.rows(); ++i) X.row(i) *= std::pow(10.0, decade(rng)) / X.row(i).norm();
  return X;
}

RetrieveOptions one_step(double eps) {
  RetrieveOptions o;
  o.max_steps = 1;
  o.certify = eps;
  return o;
}

}  // namespace

TEST(Codes, BoundTheScoresOfEveryMemory) {
  std::mt19937_64 rng(1);
  for (DType t : {DType::Float32, DType::BFloat16}) {
    Matrix X = randn(500, 37, rng);
    X.row(3).setZero();               // a zero memory: scale 0
    X.row(4) *= 1e-30;                // tiny
    X.row(5) = X.row(5).cwiseSign();  // ties in |x|
    const MemoryStore s = store_of(X, t);
    const CodeIndex c = CodeIndex::build(s, 2);
    ASSERT_EQ(c.size(), 500u);
    std::vector<float> row(37);
    long double R = 0;
    for (std::size_t mu = 0; mu < 500; ++mu) {
      s.decode_row(mu, row.data());
      long double r2 = 0, r1 = 0, n2 = 0;
      for (std::size_t j = 0; j < 37; ++j) {
        const int code = c.code(mu, j), h = c.coarse_code(mu, j);
        const long double rest = (long double)row[j] - (long double)c.scale()[mu] * code;
        const long double coarse = (long double)row[j] - 16.0L * c.scale()[mu] * h;
        r2 += rest * rest;
        r1 += coarse * coarse;
        n2 += (long double)row[j] * row[j];
        ASSERT_LE(std::abs(code), CodeIndex::kCodeMax);
        // The two 4-bit levels: h in [-7, 7], l = c - 16 h in [-8, 7]; zero stays zero.
        ASSERT_LE(std::abs(h), 7);
        ASSERT_GE(code - 16 * h, -8);
        ASSERT_LE(code - 16 * h, 7);
        if (row[j] == 0) {
          ASSERT_EQ(h, 0);
        }
      }
      ASSERT_LE(std::sqrt(r2), (long double)c.error()[mu]) << "memory " << mu;
      ASSERT_LE(std::sqrt(r1), (long double)c.coarse_error()[mu]) << "memory " << mu;
      R = std::max(R, std::sqrt(n2));
      // The bounds are also tight enough to be useful: at most half a step per element (fine), and half
      // a step plus 8 steps (coarse: 16 steps apart, centred to within 8).
      ASSERT_LE(c.error()[mu], 0.5001 * c.scale()[mu] * std::sqrt(37.0) + 1e-30);
      ASSERT_LE(c.coarse_error()[mu], 8.5001 * c.scale()[mu] * std::sqrt(37.0) + 1e-30);
    }
    EXPECT_LE(R, (long double)c.max_norm());
    // Two planes of 4-bit levels in blocks of 16 memories x 8 dimensions, and three floats per memory
    // (scale, fine and coarse bounds), against 4 d + 8 bytes for float32.
    EXPECT_EQ(c.bytes(), 2u * 32 * 5 * 64 + 500u * 12);
  }
  MemoryStore bits(8, DType::Bits);
  bits.append(Matrix::Ones(2, 8));
  EXPECT_THROW(CodeIndex::build(bits), InvalidArgument);
}

// Every screen kernel against independent arithmetic: the planes' integer sums equal the codes' (every
// table, and the AVX-512BW form that CPUs without VNNI run), every memory's coarse and fine bounds hold
// its true score (long double) between them, and the coarse screen keeps every memory whose true score
// reaches the cut. Rows of very different scales (1e-20 to 1e3), zero and sparse rows, odd K and d.
TEST(Codes, ScreenKernelsBoundEveryScore) {
  std::mt19937_64 rng(11);
  const std::size_t K = 777, d = 45;
  Matrix X = randn(Eigen::Index(K), Eigen::Index(d), rng);
  for (std::size_t mu = 0; mu < K; ++mu) {
    X.row(Eigen::Index(mu)) *= std::pow(10.0, double(mu % 24) - 20.0);  // 1e-20 .. 1e3
    if (mu % 7 == 0) X.row(Eigen::Index(mu)).tail(30).setZero();      // sparse
  }
  X.row(5).setZero();
  // Rows whose rounding residual is parallel to the queries of trials 4 and 5 (all ones; ones after a
  // zero), where Cauchy-Schwarz is an equality and any slip in a bound shows: all elements equal (the
  // coarse level leaves 7 of 119 steps of each), and a largest element u then equal elements at a
  // fraction of the way between two codes (the fine level leaves 0.49 or 0.3 of a step of each).
  for (std::size_t mu = 10; mu < 40; ++mu) {
    const double u = std::pow(2.0, double(mu) - 25.0), st = u / 119;
    if (mu % 2 == 0) X.row(Eigen::Index(mu)).setConstant(u);
    else {
      X.row(Eigen::Index(mu)).setConstant((double(mu % 50) + (mu % 3 ? 0.49 : 0.3)) * st);
      X(Eigen::Index(mu), 0) = u;
    }
  }
  const MemoryStore s = store_of(X, DType::Float32);
  const CodeIndex c = CodeIndex::build(s);
  const std::size_t groups = c.groups(), nb = (K + 15) / 16;
  std::vector<const kernels::Ops*> tables;  // every table with its own screen (the bf16 ones share AVX-512's)
  for (const kernels::Ops* t : kernels::tables())
    if (std::none_of(tables.begin(), tables.end(), [&](const kernels::Ops* u) {
          return u->nibble_dots == t->nibble_dots && u->screen_coarse == t->screen_coarse;
        }))
      tables.push_back(t);
  std::vector<float> row(d);
  for (int trial = 0; trial < 6; ++trial) {
    std::vector<float> q(d);
    std::normal_distribution<float> g(0, 1);
    for (auto& x : q) x = g(rng) * (trial == 0 ? 1e-3f : trial == 1 ? 1.0f : 30.0f);
    if (trial == 3) std::fill(q.begin() + 3, q.end(), 0.0f);
    if (trial >= 4) std::fill(q.begin(), q.end(), 1.0f);
    if (trial == 5) q[0] = 0;
    // The query's int8 codes, as the engine makes them (independently of it: the bound needs only that
    // q = sq q8 + r_q with the stated norms).
    float amax = 0;
    for (float x : q) amax = std::max(amax, std::fabs(x));
    const double sq = double(amax) / 127.0;
    std::vector<std::int8_t> q8(groups * 8, 0);
    long double qn2 = 0, rq2 = 0;
    std::int32_t qsum = 0;
    for (std::size_t j = 0; j < d; ++j) {
      q8[j] = static_cast<std::int8_t>(std::nearbyint(q[j] / sq));
      qsum += q8[j];
      qn2 += (long double)q[j] * q[j];
      const long double r = (long double)q[j] - (long double)sq * q8[j];
      rq2 += r * r;
    }
    const double qn = double(std::sqrt(qn2)) * (1 + 1e-12), rq = double(std::sqrt(rq2)) * (1 + 1e-9) + 1e-300;
    const double beta = 3.0, R = c.max_norm();
    const kernels::CoarseQuery cq{qsum, float(16 * sq), float(qn), float(rq), float(R), float(beta)};
    // The true scores, and the planes' sums from the codes.
    std::vector<long double> score(K);
    std::vector<std::int32_t> hsum(nb * 16, 0), lsum(nb * 16, 0);
    for (std::size_t mu = 0; mu < K; ++mu) {
      s.decode_row(mu, row.data());
      long double x = 0;
      for (std::size_t j = 0; j < d; ++j) {
        x += (long double)q[j] * row[j];
        const int h = c.coarse_code(mu, j);
        hsum[mu] += (h + 8) * q8[j];
        lsum[mu] += (c.code(mu, j) - 16 * h + 8) * q8[j];
      }
      score[mu] = beta * x;
    }
    std::vector<kernels::NibbleDots> dots;
    for (const auto* t : tables) dots.push_back(t->nibble_dots);
    if (kernels::avx512_highway_nibble_dots()) dots.push_back(kernels::avx512_highway_nibble_dots());
    for (auto nd : dots) {
      std::vector<std::int32_t> h(nb * 16), l(nb * 16);
      nd(c.high_plane(), nb, groups, q8.data(), h.data());
      nd(c.low_plane(), nb, groups, q8.data(), l.data());
      for (std::size_t mu = 0; mu < K; ++mu) {
        ASSERT_EQ(h[mu], hsum[mu]) << "memory " << mu;
        ASSERT_EQ(l[mu], lsum[mu]) << "memory " << mu;
        // The fine bound from q8 . c = 16 (h - 8 qsum) + (l - 8 qsum), and the coarse bound.
        double lo, up;
        kernels::screen_bound(16 * (std::int64_t(h[mu]) - 8 * qsum) + (l[mu] - 8 * qsum), c.scale()[mu],
                              c.error()[mu], sq, qn, rq, R, beta, &lo, &up);
        ASSERT_LE(lo, score[mu]) << "memory " << mu;
        ASSERT_GE(up, score[mu]) << "memory " << mu;
        float flo, fup;
        kernels::coarse_bound(h[mu], c.scale()[mu], c.coarse_error()[mu], cq, &flo, &fup);
        ASSERT_LE(flo, score[mu]) << "memory " << mu;
        ASSERT_GE(fup, score[mu]) << "memory " << mu;
      }
    }
    // screen_coarse (each table; tiles of 256 memories as the engine runs it, with a mask) at cuts
    // across the range of the scores: nothing at or above the cut is discarded.
    std::vector<std::uint8_t> mask(K, 0);
    for (std::size_t mu = 0; mu < K; mu += 5) mask[mu] = 1;
    std::vector<long double> sorted(score);
    std::sort(sorted.begin(), sorted.end());
    for (const auto* t : tables)
      for (double quantile : {0.0, 0.5, 0.9, 0.99})
        for (const std::uint8_t* m : std::vector<const std::uint8_t*>{nullptr, mask.data()}) {
          const float cut = float(sorted[std::size_t(quantile * (K - 1))]);
          for (std::size_t m0 = 0; m0 < K; m0 += 256) {
            const std::size_t nt = std::min<std::size_t>(256, K - m0);
            std::vector<std::int32_t> dot(256);
            std::vector<float> lo(256);
            std::vector<std::uint32_t> idx(256 + 16);
            float stats[2];
            t->nibble_dots(c.high_plane() + m0 / 16 * groups * 64, (nt + 15) / 16, groups, q8.data(), dot.data());
            const std::size_t n = t->screen_coarse(dot.data(), nt, cq, c.scale() + m0, c.coarse_error() + m0,
                                                   m ? m + m0 : nullptr, cut, lo.data(), stats, idx.data());
            std::vector<bool> kept(nt, false);
            for (std::size_t k = 0; k < n; ++k) kept[idx[k]] = true;
            for (std::size_t k = 0; k < nt; ++k) {
              const std::size_t mu = m0 + k;
              if (m && m[mu]) {
                ASSERT_FALSE(kept[k]) << t->name << ": masked memory " << mu << " kept";
                ASSERT_EQ(lo[k], -INFINITY);
                continue;
              }
              ASSERT_LE(lo[k], score[mu]) << t->name << " memory " << mu;
              ASSERT_LE(lo[k], stats[0]);
              if (score[mu] >= cut) {
                ASSERT_TRUE(kept[k]) << t->name << ": memory " << mu << " above the cut discarded";
              }
              if (!kept[k]) {
                ASSERT_GE(stats[1], score[mu]) << t->name << " memory " << mu;
              }
            }
          }
        }
  }
}

// Issue 23: `candidates` reported the pass that describes the final state (for energy or top-k) instead of
// the last update step. The same step with and without that pass reports the same candidates (one step
// from a noisy cue moves the state, and the describing pass screens for the top 5 at the new state: the
// old code reported other counts here).
TEST(Certified, CandidatesAreThoseOfTheLastStep) {
  std::mt19937_64 rng(4);
  const Matrix X = unit_rows(4000, 48, rng);
  const MemoryStore s = store_of(X, DType::Float32);
  const CodeIndex c = CodeIndex::build(s);
  EngineOptions eo;
  eo.codes = &c;
  const ModelBEngine e(s, 40.0, eo);
  std::vector<float> q(8 * 48);
  std::normal_distribution<float> noise(0, 0.1f);
  for (std::size_t b = 0; b < 8; ++b)
    for (std::size_t j = 0; j < 48; ++j) q[b * 48 + j] = static_cast<float>(X(Eigen::Index(b * 7), Eigen::Index(j))) + noise(rng);
  RetrieveOptions bare = one_step(1e-4);
  bare.energy = false;
  bare.top_k = 0;
  RetrieveOptions described = one_step(1e-4);
  described.energy = true;
  described.top_k = 5;
  const Retrieval a = e.retrieve(q.data(), 8, bare), b = e.retrieve(q.data(), 8, described);
  for (std::size_t i = 0; i < 8; ++i) {
    EXPECT_EQ(a.certificates[i].fallback_steps, 0) << "query " << i << ": the test needs screened steps";
    EXPECT_EQ(a.certificates[i].candidates, b.certificates[i].candidates) << "query " << i;
    // state_error is not compared exactly: the discarded memories' largest upper bound depends on which
    // cut was in force when a worker screened them (the lower bound L is shared while the workers run),
    // so two runs give different (each valid) bounds. Each run's bound holds.
    const auto v = exact_state(s, &q[i * 48], 40.0, nullptr);
    EXPECT_LE(dist(v, &a.states[i * 48]), a.certificates[i].state_error) << "query " << i;
    EXPECT_LE(dist(v, &b.states[i * 48]), b.certificates[i].state_error) << "query " << i;
  }
}

// Well separated memories at a retrieving beta: few candidates, and the state within its bound of the
// exact one (float32 and bfloat16, every kernel, one and several steps, top-k ids as the exact engine's).
TEST(Certified, EqualsTheExactStateWithinItsBound) {
  std::mt19937_64 rng(2);
  for (DType t : {DType::Float32, DType::BFloat16})
    for (KernelChoice k : available_kernels(t, {KernelChoice::Avx512})) {
      const Matrix X = unit_rows(4000, 48, rng);
      const MemoryStore s = store_of(X, t);
      const CodeIndex c = CodeIndex::build(s);
      EngineOptions eo;
      eo.kernel = k;
      eo.codes = &c;
      const ModelBEngine e(s, 40.0, eo);
      std::vector<float> q(6 * 48);
      std::normal_distribution<float> noise(0, 0.05f);
      for (std::size_t b = 0; b < 6; ++b)
        for (std::size_t j = 0; j < 48; ++j) q[b * 48 + j] = static_cast<float>(X(Eigen::Index(b * 11), Eigen::Index(j))) + noise(rng);
      RetrieveOptions o = one_step(1e-4);
      o.top_k = 3;
      const Retrieval r = e.retrieve(q.data(), 6, o);
      RetrieveOptions plain = o;
      plain.certify.reset();
      const Retrieval x = e.retrieve(q.data(), 6, plain);
      ASSERT_EQ(r.certificates.size(), 6u);
      for (std::size_t b = 0; b < 6; ++b) {
        const Certificate& cert = r.certificates[b];
        EXPECT_EQ(cert.fallback_steps, 0) << "query " << b;
        EXPECT_LT(cert.candidates, 400u);
        EXPECT_LE(cert.discarded_weight, 1e-4);
        const auto v = exact_state(s, &q[b * 48], 40.0, nullptr);
        EXPECT_LE(dist(v, &r.states[b * 48]), cert.state_error) << "query " << b;
        for (std::size_t i = 0; i < 3; ++i) EXPECT_EQ(r.top[b][i].id, x.top[b][i].id);
      }
      // Iterated: every step certified.
      RetrieveOptions it = one_step(1e-4);
      it.max_steps = 5;
      const Retrieval ri = e.retrieve(q.data(), 6, it);
      plain.max_steps = 5;
      plain.top_k = 0;
      const Retrieval xi = e.retrieve(q.data(), 6, plain);
      // (Steps may differ by one where a query's change is within float rounding of tol.)
      for (std::size_t i = 0; i < ri.states.size(); ++i) EXPECT_NEAR(ri.states[i], xi.states[i], 1e-4);
      for (const Certificate& ct : ri.certificates) EXPECT_LE(ct.discarded_weight, 1e-4);
    }
}

// The adversary: a target memory and many memories whose scores sit just above and just below the
// threshold L - tau, far from the target in the other directions, so that the discarded memories carry
// nearly the weight the certificate allows and pull the exact state away from the returned one. The
// exact state (long double) must stay within the certified error, for eps from 1e-6 to 0.5, and the
// bound must not be vacuous (within a factor 100 of the actual error where that is above float noise).
TEST(Certified, TheBoundHoldsWithManyNearTiesAtTheThreshold) {
  int certified = 0, tight = 0;
  std::mt19937_64 rng(3);
  const std::size_t K = 3000, d = 32;
  for (double eps : {1e-6, 1e-3, 0.05, 0.5})
    for (double beta : {20.0, 80.0, 300.0}) {
      const double tau = std::log(double(K) / eps) / beta;  // in score units
      Matrix X = randn(Eigen::Index(K), Eigen::Index(d), rng) * 0.002;
      X.row(0).setZero();
      X(0, 0) = 1.0;  // the target: score 1 for q = e_0
      for (std::size_t mu = 1; mu < K; ++mu) {
        // One in 32 just above the threshold (kept), the rest just below (discarded), by 5% of tau plus
        // the codes' error (~0.013: half a step of 3 / 119 on the two large components, and the small
        // ones rounded to zero); all with a large component along e_1, away from the target.
        const double margin = 0.05 * tau + 0.015;
        X(Eigen::Index(mu), 0) = 1.0 - tau + (mu % 32 == 1 ? margin : -margin);
        X(Eigen::Index(mu), 1) = 3.0;
      }
      const MemoryStore s = store_of(X, DType::Float32);
      const CodeIndex c = CodeIndex::build(s);
      EngineOptions eo;
      eo.codes = &c;
      const ModelBEngine e(s, beta, eo);
      std::vector<float> q(d, 0.0f);
      q[0] = 1.0f;
      const Retrieval r = e.retrieve(q.data(), 1, one_step(eps));
      const Certificate& cert = r.certificates[0];
      SCOPED_TRACE("eps " + std::to_string(eps) + " beta " + std::to_string(beta));
      EXPECT_LE(cert.discarded_weight, eps * (1 + 1e-9));
      std::vector<long double> w;
      const auto v = exact_state(s, q.data(), beta, nullptr, &w);
      const double err = dist(v, r.states.data());
      EXPECT_LE(err, cert.state_error);
      if (cert.fallback_steps == 0) {
        EXPECT_LT(cert.candidates, K);
        // The discarded memories' true weight against its bound.
        long double wd = 0;
        for (std::size_t mu = 2; mu < K; ++mu) wd += mu % 32 == 1 ? 0 : w[mu];
        EXPECT_LE(double(wd), cert.discarded_weight);
        ++certified;
        if (err > 1e-4) {
          EXPECT_LE(cert.state_error, 100 * err);
          ++tight;
        }
      }
    }
  EXPECT_GE(certified, 6);  // the adversary reaches the certified path, and its discarded weight matters
  EXPECT_GE(tight, 4);
}

// The certificate covers the float rounding of the pass, not only what the screen discarded: memories
// with norms from 1e-3 to 1e3 (the scores span six decades) and queries along large memories, where the
// screen discards a weight of ~1e-200 and the float32 rescoring is the whole error. On every kernel, for
// float32 and bfloat16 stores, certified and fallen-back passes, steps 1 and 0.5: the exact state (long
// double) within state_error; and the rounding does matter here (the screen's part alone, what
// state_error was before, is exceeded by the actual error in many queries).
TEST(Certified, StateErrorIncludesTheFloatRounding) {
  std::mt19937_64 rng(31);
  const std::size_t K = 2000, d = 32;
  const Matrix X = spread_norms(K, d, rng);
  int checked = 0, beyond_screen = 0, fell = 0;
  for (DType t : {DType::Float32, DType::BFloat16}) {
    const MemoryStore s = store_of(X, t);
    const CodeIndex c = CodeIndex::build(s);
    double R = 0;
    std::vector<float> row(d);
    for (std::size_t mu = 0; mu < K; ++mu) {
      s.decode_row(mu, row.data());
      double n2 = 0;
      for (float x : row) n2 += double(x) * x;
      R = std::max(R, std::sqrt(n2));
    }
    for (KernelChoice k : available_kernels(t, {KernelChoice::Avx512}))
      for (double beta : {1e-3, 0.05})
        for (double step : {1.0, 0.5}) {
          EngineOptions eo;
          eo.kernel = k;
          eo.codes = &c;
          const ModelBEngine e(s, beta, eo);
          const std::size_t n = 8;
          std::vector<float> q(n * d);
          for (std::size_t b = 0; b < n; ++b) {  // near memories of every size, and one of the largest
            const Eigen::Index mu = Eigen::Index((b * 251) % K);
            for (std::size_t j = 0; j < d; ++j)
              q[b * d + j] = static_cast<float>(X(mu, Eigen::Index(j)) * (b == 0 ? 1.0 : 1.0 + 0.01 * double(b)));
          }
          RetrieveOptions o = one_step(1e-3);
          o.step = step;
          const Retrieval r = e.retrieve(q.data(), n, o);
          for (std::size_t b = 0; b < n; ++b) {
            const Certificate& cert = r.certificates[b];
            const auto a = exact_state(s, &q[b * d], beta, nullptr);
            std::vector<long double> want(d);
            for (std::size_t j = 0; j < d; ++j) want[j] = (1 - step) * (long double)q[b * d + j] + step * a[j];
            const double err = dist(want, &r.states[b * d]);
            SCOPED_TRACE(to_string(t) + " " + e.kernel() + " beta " + std::to_string(beta) + " step " +
                         std::to_string(step) + " query " + std::to_string(b));
            EXPECT_LE(err, cert.state_error);
            double an = 0;
            for (std::size_t j = 0; j < d; ++j) an += r.states[b * d + j] * r.states[b * d + j];
            const double screen_only = step * cert.discarded_weight * (std::sqrt(an) + R);
            beyond_screen += err > screen_only;
            fell += cert.fallback_steps > 0;
            ++checked;
          }
        }
  }
  EXPECT_GE(beyond_screen, checked / 4);
  EXPECT_GT(fell, 0);
  EXPECT_LT(fell, checked);
}

// Beta swept across the fallback threshold (more than K / 16 candidates): below it the pass falls back and
// equals the exact one; above it the certified state is within its bound; the certified betas nearest the
// threshold keep close to K / 16 candidates (the screen works at the edge of its rule, not only far above).
TEST(Certified, BetaAcrossTheFallbackThreshold) {
  std::mt19937_64 rng(6);
  const std::size_t K = 4000, d = 16;
  const Matrix X = unit_rows(K, d, rng);
  const MemoryStore s = store_of(X, DType::Float32);
  const CodeIndex c = CodeIndex::build(s);
  EngineOptions eo;
  eo.codes = &c;
  std::vector<float> q(d);
  for (std::size_t j = 0; j < d; ++j) q[j] = static_cast<float>(X(3, Eigen::Index(j)));
  int fell = 0, certified = 0;
  std::size_t most = 0;  // the most candidates of a certified pass
  for (double beta = 4; beta < 400; beta *= 1.15) {
    const ModelBEngine e(s, beta, eo);
    const Retrieval r = e.retrieve(q.data(), 1, one_step(1e-4));
    const Certificate& cert = r.certificates[0];
    const auto v = exact_state(s, q.data(), beta, nullptr);
    SCOPED_TRACE("beta " + std::to_string(beta));
    if (cert.fallback_steps) {
      ++fell;
      EXPECT_EQ(cert.candidates, K);
      const Retrieval x = e.retrieve(q.data(), 1, [] {
        RetrieveOptions o;
        o.max_steps = 1;
        return o;
      }());
      for (std::size_t j = 0; j < d; ++j) EXPECT_EQ(r.states[j], x.states[j]);
    } else {
      ++certified;
      EXPECT_LE(cert.candidates, K / 16);
      EXPECT_LE(dist(v, r.states.data()), cert.state_error);
      most = std::max(most, cert.candidates);
    }
  }
  EXPECT_GE(fell, 3);
  EXPECT_GE(certified, 3);
  EXPECT_GE(most, K / 64);  // a certified pass within a factor 4 of the rule's limit
}

// Duplicates, clusters and masks: the certificate holds and the mask is respected.
TEST(Certified, DuplicatesClustersAndMasks) {
  std::mt19937_64 rng(4);
  const std::size_t d = 24, K = 12000;
  Matrix centers = randn(60, Eigen::Index(d), rng);
  for (Eigen::Index i = 0; i < centers.rows(); ++i) centers.row(i).normalize();
  Matrix X = Matrix::Zero(Eigen::Index(K), Eigen::Index(d));
  for (Eigen::Index mu = 0; mu < X.rows(); ++mu) {
    if (mu < 300) X.row(mu) = centers.row(0);  // 300 duplicates
    else X.row(mu) = centers.row(mu % 60) + 0.05 * randn(1, Eigen::Index(d), rng);
  }
  const MemoryStore s = store_of(X, DType::Float32);
  const CodeIndex c = CodeIndex::build(s);
  EngineOptions eo;
  eo.codes = &c;
  const ModelBEngine e(s, 30.0, eo);
  std::vector<float> q(2 * d);
  for (std::size_t j = 0; j < d; ++j) {
    q[j] = static_cast<float>(centers(0, Eigen::Index(j)));  // the duplicates and their cluster
    q[d + j] = static_cast<float>(centers(7, Eigen::Index(j)));
  }
  std::vector<std::uint8_t> mask(K, 0);
  for (std::size_t mu = 7; mu < K; mu += 60) mask[mu] = mu % 120 == 7;  // half of cluster 7 left out
  RetrieveOptions o = one_step(1e-3);
  o.mask = {mask.data(), 1};
  const Retrieval r = e.retrieve(q.data(), 2, o);
  for (std::size_t b = 0; b < 2; ++b) {
    const auto v = exact_state(s, &q[b * d], 30.0, mask.data());
    EXPECT_LE(dist(v, &r.states[b * d]), r.certificates[b].state_error) << "query " << b;
    EXPECT_LE(r.certificates[b].discarded_weight, 1e-3);
    // The duplicates and the cluster (about 500 and 100 memories) are under K / 16: certified.
    EXPECT_EQ(r.certificates[b].fallback_steps, 0) << "query " << b;
  }
  RetrieveOptions plain = o;
  plain.certify.reset();
  const Retrieval x = e.retrieve(q.data(), 2, plain);
  for (std::size_t i = 0; i < x.states.size(); ++i) EXPECT_NEAR(r.states[i], x.states[i], 1e-4);
}

// Small beta: every memory carries weight, so the candidates would be most of the store: the pass falls
// back to the exact scan, says so, and equals the exact engine.
TEST(Certified, FallsBackToTheExactScanWhereItMust) {
  std::mt19937_64 rng(5);
  const Matrix X = unit_rows(2000, 16, rng);
  const MemoryStore s = store_of(X, DType::Float32);
  const CodeIndex c = CodeIndex::build(s);
  EngineOptions eo;
  eo.codes = &c;
  const ModelBEngine e(s, 0.5, eo);
  std::vector<float> q(16);
  for (std::size_t j = 0; j < 16; ++j) q[j] = static_cast<float>(X(0, Eigen::Index(j)));
  RetrieveOptions o = one_step(1e-4);
  o.max_steps = 3;
  const Retrieval r = e.retrieve(q.data(), 1, o);
  EXPECT_EQ(r.certificates[0].fallback_steps, 3);
  EXPECT_EQ(r.certificates[0].candidates, 2000u);
  EXPECT_EQ(r.certificates[0].discarded_weight, 0.0);
  o.certify.reset();
  const Retrieval x = e.retrieve(q.data(), 1, o);
  for (std::size_t j = 0; j < 16; ++j) EXPECT_EQ(r.states[j], x.states[j]);
  // A top-k list longer than the candidates falls back too, and equals the exact list.
  RetrieveOptions t = one_step(1e-4);
  t.top_k = 50;
  const ModelBEngine sharp(s, 60.0, eo);
  const Retrieval rt = sharp.retrieve(q.data(), 1, t);
  t.certify.reset();
  const Retrieval xt = sharp.retrieve(q.data(), 1, t);
  ASSERT_EQ(rt.top[0].size(), 50u);
  for (std::size_t i = 0; i < 50; ++i) EXPECT_EQ(rt.top[0][i].id, xt.top[0][i].id) << i;
}

TEST(Certified, BadInput) {
  std::mt19937_64 rng(6);
  const MemoryStore s = store_of(randn(100, 8, rng), DType::Float32);
  const MemoryStore other = store_of(randn(100, 8, rng), DType::Float32);
  const CodeIndex c = CodeIndex::build(s);
  std::vector<float> q(8, 0.5f);
  EXPECT_THROW_MSG(ModelBEngine(s, 2.0).retrieve(q.data(), 1, one_step(1e-3)), InvalidArgument,
                   "certify: the engine has no codes");
  EngineOptions eo;
  eo.codes = &c;
  EXPECT_THROW_MSG(ModelBEngine(other, 2.0, eo), InvalidArgument, "codes: they belong to another store");
  const ModelBEngine e(s, 2.0, eo);
  for (double eps : {0.0, -1.0, 0.7, std::nan("")})
    EXPECT_THROW_MSG(e.retrieve(q.data(), 1, one_step(eps)), InvalidArgument, "certify: eps must be in (0, 0.5]");
  const ModelBEngine kv(s, other, 2.0, eo);
  EXPECT_THROW_MSG(kv.retrieve(q.data(), 1, one_step(1e-3)), InvalidArgument, "value store");
}

TEST(Codes, FileRoundTripAndRefusals) {
  std::mt19937_64 rng(7);
  TempDir dir;
  const MemoryStore s = store_of(randn(301, 19, rng), DType::BFloat16);
  const std::string store_path = dir.file("s.amem");
  s.save(store_path);
  const MemoryStore opened = MemoryStore::open(store_path);
  const CodeIndex c = CodeIndex::build(opened);
  const std::string path = CodeIndex::default_path(store_path);
  EXPECT_EQ(path, store_path + ".codes");
  c.save(path);
  const CodeIndex back = CodeIndex::open(path, opened);
  ASSERT_EQ(back.size(), c.size());
  EXPECT_EQ(back.source_version(), CodeIndex::kFormatVersion);
  for (std::size_t mu = 0; mu < 301; ++mu)
    for (std::size_t j = 0; j < 19; ++j) ASSERT_EQ(back.code(mu, j), c.code(mu, j)) << mu << "," << j;
  EXPECT_EQ(std::vector<float>(back.scale(), back.scale() + 301), std::vector<float>(c.scale(), c.scale() + 301));
  EXPECT_EQ(std::vector<float>(back.coarse_error(), back.coarse_error() + 301),
            std::vector<float>(c.coarse_error(), c.coarse_error() + 301));
  EXPECT_EQ(back.max_norm(), c.max_norm());
  EXPECT_EQ(std::vector<float>(back.error(), back.error() + 301), std::vector<float>(c.error(), c.error() + 301));
  // Another store of the same shape; another shape; corruption anywhere; truncation; not codes at all.
  const MemoryStore same_shape = store_of(randn(301, 19, rng), DType::BFloat16);
  EXPECT_THROW_MSG(CodeIndex::open(path, same_shape), IoError, "its rows differ from the ones they were built for");
  const MemoryStore shape = store_of(randn(300, 19, rng), DType::BFloat16);
  EXPECT_THROW_MSG(CodeIndex::open(path, shape), IoError, "they were built for a store of 301 x");
  const std::vector<char> good = assocmem::testing::read_all(path);
  for (std::size_t at : {std::size_t{20}, std::size_t{4096 + 7}, good.size() - 3, std::size_t{4096 + 301 * 19 + 2}}) {
    auto bad = good;
    bad[at] ^= 0x10;
    assocmem::testing::write_all(path, bad);
    EXPECT_THROW(CodeIndex::open(path, opened), IoError) << "byte " << at;
  }
  auto cut = good;
  cut.resize(good.size() - 8);
  assocmem::testing::write_all(path, cut);
  EXPECT_THROW_MSG(CodeIndex::open(path, opened), IoError, "truncated");
  EXPECT_THROW_MSG(CodeIndex::open(store_path, opened), IoError, "not assocmem codes");
  EXPECT_THROW(CodeIndex::open(dir.file("missing.codes"), opened), IoError);
}

// A codes file edited and given valid checksums again (a faulty tool, or on purpose): the checksums
// pass, so the bounds a certificate rests on are checked against the store itself. A lowered error
// bound (fine or coarse) or norm bound is refused, naming the memory; a changed code whose bounds still
// cover it is accepted, and the certificates computed from it still hold.
TEST(Codes, EditedFilesWithValidChecksumsAreCheckedAgainstTheStore) {
  std::mt19937_64 rng(8);
  TempDir dir;
  const std::size_t K = 200, d = 16;
  const Matrix X = unit_rows(K, d, rng);
  const MemoryStore s = store_of(X, DType::Float32);
  const std::string path = dir.file("s.codes");
  CodeIndex::build(s).save(path);
  const std::vector<char> good = assocmem::testing::read_all(path);
  const std::size_t payload = 4096, codes_len = (K * d + 7) / 8 * 8;
  auto reseal = [&](std::vector<char> f) {
    const std::uint64_t ph = XXH64(&f[payload], f.size() - payload, 0);
    std::memcpy(&f[64], &ph, 8);
    const std::uint64_t hh = XXH64(f.data(), 72, 0);
    std::memcpy(&f[72], &hh, 8);
    assocmem::testing::write_all(path, f);
  };
  auto set_float = [](std::vector<char>& f, std::size_t at, float x) { std::memcpy(&f[at], &x, 4); };
  auto get_float = [](const std::vector<char>& f, std::size_t at) {
    float x;
    std::memcpy(&x, &f[at], 4);
    return x;
  };
  reseal(good);
  EXPECT_NO_THROW(CodeIndex::open(path, s));
  const std::size_t mu = 37;
  for (std::size_t which : {1u, 2u}) {  // e_mu, then e1_mu, halved
    auto f = good;
    const std::size_t at = payload + codes_len + which * 4 * K + 4 * mu;
    set_float(f, at, 0.5f * get_float(f, at));
    reseal(f);
    EXPECT_THROW_MSG(CodeIndex::open(path, s), IoError, "the stored error bounds of memory 37 are below");
  }
  {
    auto f = good;
    set_float(f, 44, 0.9f);  // R, below the unit norms
    const std::uint64_t hh = XXH64(f.data(), 72, 0);
    std::memcpy(&f[72], &hh, 8);
    assocmem::testing::write_all(path, f);
    EXPECT_THROW_MSG(CodeIndex::open(path, s), IoError, "is below the largest memory norm");
  }
  {
    // Memory 37's first code moved by one step, its bounds widened to cover it: accepted, and the
    // certified state of a query at that memory is within its bound of the exact one.
    auto f = good;
    signed char& c0 = reinterpret_cast<signed char&>(f[payload + mu * d]);
    c0 = static_cast<signed char>(c0 > 0 ? c0 - 1 : c0 + 1);
    for (std::size_t which : {1u, 2u}) {
      const std::size_t at = payload + codes_len + which * 4 * K + 4 * mu;
      set_float(f, at, get_float(f, at) + 2 * get_float(f, payload + codes_len + 4 * mu));  // + 2 scales
    }
    reseal(f);
    const CodeIndex edited = CodeIndex::open(path, s);
    EXPECT_EQ(edited.code(mu, 0), int(c0));
    EngineOptions eo;
    eo.codes = &edited;
    const ModelBEngine e(s, 30.0, eo);
    std::vector<float> q(d);
    s.decode_row(mu, q.data());
    const Retrieval r = e.retrieve(q.data(), 1, one_step(1e-3));
    EXPECT_LE(dist(exact_state(s, q.data(), 30.0, nullptr), r.states.data()), r.certificates[0].state_error);
  }
}

// Backward compatibility: a store and its codes written by codes format versions 1 and 2 (tests/data,
// made with `assocmem store` and `assocmem index` from X[i][j] = (((7 i + 3 j) mod 11) - 5) / 4, 16 x 8)
// still open, hold those values, and serve a certified retrieval. A later format must keep reading them.
TEST(Codes, FilesOfFormatVersion1StillOpen) {
  const std::string dir = ASSOCMEM_TEST_DATA;
  const MemoryStore s = MemoryStore::open(dir + "/v1-float32.amem");
  ASSERT_EQ(s.size(), 16u);
  ASSERT_EQ(s.dim(), 8u);
  std::vector<float> row(8);
  for (std::size_t i = 0; i < 16; ++i) {
    s.decode_row(i, row.data());
    for (std::size_t j = 0; j < 8; ++j) ASSERT_EQ(row[j], float(int((7 * i + 3 * j) % 11) - 5) / 4) << i << "," << j;
    EXPECT_EQ(s.ids()[i], i);
  }
  // Codes format 1 (int8 in [-127, 127]): checked, then derived again from the store; format 2 (written
  // by `assocmem index` of this format's first build, as v1-float32.amem.codes-v2): read as they are.
  const CodeIndex c1 = CodeIndex::open(CodeIndex::default_path(dir + "/v1-float32.amem"), s);
  const CodeIndex c = CodeIndex::open(dir + "/v1-float32.amem.codes-v2", s);
  EXPECT_EQ(c1.source_version(), 1u);
  EXPECT_EQ(c.source_version(), 2u);
  const CodeIndex built = CodeIndex::build(s);
  for (std::size_t mu = 0; mu < 16; ++mu) {
    EXPECT_EQ(c.scale()[mu], built.scale()[mu]);
    EXPECT_EQ(c.error()[mu], built.error()[mu]);
    EXPECT_EQ(c.coarse_error()[mu], built.coarse_error()[mu]);
    for (std::size_t j = 0; j < 8; ++j) {
      ASSERT_EQ(c.code(mu, j), built.code(mu, j));
      ASSERT_EQ(c1.code(mu, j), built.code(mu, j));
    }
  }
  EngineOptions eo;
  eo.codes = &c;
  const ModelBEngine e(s, 8.0, eo);
  std::vector<float> q(8);
  s.decode_row(5, q.data());
  RetrieveOptions o = one_step(1e-3);
  o.top_k = 1;
  const Retrieval r = e.retrieve(q.data(), 1, o);
  o.certify.reset();
  const Retrieval x = e.retrieve(q.data(), 1, o);
  EXPECT_EQ(r.top[0][0].id, x.top[0][0].id);
  for (std::size_t j = 0; j < 8; ++j) EXPECT_NEAR(r.states[j], x.states[j], r.certificates[0].state_error + 1e-5);
}

namespace {
// One step of eq. (22) in long double: v + step (sum_mu xi_mu F'(xi_mu . g) - alpha v), g = v / |v|,
// and each memory's F'(xi_mu . g).
std::vector<long double> exact_c_step(const MemoryStore& s, const std::vector<float>& v, const InteractionSpec& F,
                                      double step, std::vector<long double>* fprime) {
  const std::size_t K = s.size(), d = s.dim();
  long double n2 = 0;
  for (float x : v) n2 += (long double)x * x;
  const long double norm = std::sqrt(n2);
  std::vector<long double> drive(d, 0), out(d);
  std::vector<float> row(d);
  fprime->assign(K, 0);
  for (std::size_t mu = 0; mu < K; ++mu) {
    s.decode_row(mu, row.data());
    long double x = 0;
    for (std::size_t j = 0; j < d; ++j) x += row[j] * (v[j] / norm);
    const long double f = F.kind == Interaction::Exp ? std::exp(F.beta * x)
                                                     : (x > 0 ? F.n * std::pow(x, (long double)F.n - 1) : 0.0L);
    (*fprime)[mu] = f;
    for (std::size_t j = 0; j < d; ++j) drive[j] += f * row[j];
  }
  for (std::size_t j = 0; j < d; ++j) out[j] = v[j] + step * (drive[j] - v[j]);  // alpha = 1
  return out;
}
}  // namespace

// Model C (eq. 22) with F = exp and F = rectified power: memories placed just above and just below the
// cut (exp: L - ln(K / eps) / beta, as model B; rectified: (eps / K)^(1 / (n - 1)) L), whose discarded
// F' mass matters. The step is within its certified error of the exact one (long double), the
// discarded mass within its bound and below eps.
TEST(Certified, ModelCWithinItsBound) {
  int certified = 0, tight = 0;
  std::mt19937_64 rng(21);
  const std::size_t K = 3000, d = 16;
  const double step = 0.1;
  for (const InteractionSpec& F : {InteractionSpec{Interaction::Exp, 2, 20.0}, InteractionSpec{Interaction::Exp, 2, 80.0},
                                   InteractionSpec{Interaction::RectifiedPower, 3.0, 1},
                                   InteractionSpec{Interaction::RectifiedPower, 1.5, 1}})
    for (double eps : {1e-6, 1e-3, 0.1}) {
      const bool is_exp = F.kind == Interaction::Exp;
      const double cut = is_exp ? 1.0 - std::log(double(K) / eps) / F.beta : std::pow(eps / double(K), 1.0 / (F.n - 1));
      Matrix X = Matrix::Zero(Eigen::Index(K), Eigen::Index(d));
      X(0, 0) = 1.0;  // the target: x = 1 for g = e_0
      for (std::size_t mu = 1; mu < K; ++mu) {
        const bool above = mu % 32 == 1;
        if (is_exp) {  // near-ties 5% of the window (plus the codes' error) from the cut, along e_1 besides
          const double margin = 0.05 * (1 - cut) + 0.015;
          X(Eigen::Index(mu), 0) = cut + (above ? margin : -margin);
          X(Eigen::Index(mu), 1) = 3.0;
        } else {  // a single component: codes exact to rounding, so the cut can be met closely
          X(Eigen::Index(mu), 0) = cut * (above ? 1.05 : 0.95);
        }
        if (mu % 5 == 0) X.row(Eigen::Index(mu)) = -randn(1, Eigen::Index(d), rng).cwiseAbs();  // x < 0
      }
      const MemoryStore s = store_of(X, DType::Float32);
      const CodeIndex c = CodeIndex::build(s);
      EngineOptions eo;
      eo.codes = &c;
      const ModelCEngine e(s, F, 1.0, eo);
      std::vector<float> v(d, 0.0f);
      v[0] = 2.0f;
      RetrieveOptions o = one_step(eps);
      o.step = step;
      const Retrieval r = e.retrieve(v.data(), 1, o);
      const Certificate& cert = r.certificates[0];
      SCOPED_TRACE(to_string(F.kind) + " eps " + std::to_string(eps));
      std::vector<long double> fp;
      const auto want = exact_c_step(s, v, F, step, &fp);
      const double err = dist(want, r.states.data());
      long double norm = 0;
      for (auto x : want) norm += x * x;
      const double slack = 1e-5 * double(std::sqrt(norm)) + 1e-30;  // float noise: below it the bound need not be tight
      EXPECT_LE(err, cert.state_error);
      EXPECT_LE(cert.discarded_weight, eps * (1 + 1e-9));
      if (cert.fallback_steps == 0) {
        ++certified;
        EXPECT_LT(cert.candidates, K);
        long double kept = 0, disc = 0;
        for (std::size_t mu = 0; mu < K; ++mu) (mu == 0 || mu % 32 == 1 ? kept : disc) += fp[mu];
        EXPECT_LE(double(disc / kept), cert.discarded_weight * (1 + 1e-6));
        EXPECT_GT(double(disc / kept), 0.0);  // the adversary's discarded memories do carry weight
        if (is_exp && err > slack) {
          EXPECT_LE(cert.state_error, 100 * err);
          ++tight;
        }
      }
      // The exact engine agrees on the same step (a check of the test's own arithmetic).
      const Retrieval x = ModelCEngine(s, F, 1.0).retrieve(v.data(), 1, [&] {
        RetrieveOptions p;
        p.max_steps = 1;
        p.step = step;
        return p;
      }());
      EXPECT_LE(dist(want, x.states.data()), 3e-4 * double(std::sqrt(norm)));  // 3000 float terms: K 2^-24
    }
  EXPECT_GE(certified, 9);
  EXPECT_GE(tight, 3);
}

// Model C's certificate covers the float rounding too (as model B's above): memories with norms from
// 1e-3 to 1e3, F = exp and rectified powers (convex and concave F'), certified and fallen-back passes.
TEST(Certified, ModelCStateErrorIncludesTheFloatRounding) {
  std::mt19937_64 rng(32);
  const std::size_t K = 2000, d = 24;
  const Matrix X = spread_norms(K, d, rng);
  const MemoryStore s = store_of(X, DType::Float32);
  const CodeIndex c = CodeIndex::build(s);
  int checked = 0, fell = 0, beyond_screen = 0;
  for (const InteractionSpec& F : {InteractionSpec{Interaction::Exp, 2, 0.02}, InteractionSpec{Interaction::Exp, 2, 0.002},
                                   InteractionSpec{Interaction::RectifiedPower, 3.0, 1},
                                   InteractionSpec{Interaction::RectifiedPower, 1.5, 1}})
    for (KernelChoice k : available_kernels(DType::Float32, {KernelChoice::Avx512})) {
      EngineOptions eo;
      eo.kernel = k;
      eo.codes = &c;
      const ModelCEngine e(s, F, 1.0, eo);
      for (std::size_t b = 0; b < 6; ++b) {
        std::vector<float> v(d);
        const Eigen::Index mu = Eigen::Index((b * 331) % K);
        for (std::size_t j = 0; j < d; ++j) v[j] = static_cast<float>(X(mu, Eigen::Index(j)) + 0.01 * X(mu / 2, Eigen::Index(j)));
        RetrieveOptions o = one_step(1e-3);
        o.step = 0.1;
        const Retrieval r = e.retrieve(v.data(), 1, o);
        const Certificate& cert = r.certificates[0];
        std::vector<long double> fp;
        const auto want = exact_c_step(s, v, F, 0.1, &fp);
        const double err = dist(want, r.states.data());
        SCOPED_TRACE(to_string(F.kind) + " n " + std::to_string(F.n) + " beta " + std::to_string(F.beta) + " " +
                     e.kernel() + " query " + std::to_string(b));
        EXPECT_LE(err, cert.state_error);
        long double mass = 0;
        for (auto f : fp) mass += f;
        // The screen's part alone: the discarded F' mass (relative to the kept one) times R, times the step.
        beyond_screen += err > 0.1 * cert.discarded_weight * double(mass) * 1e3;
        fell += cert.fallback_steps > 0;
        ++checked;
      }
    }
  EXPECT_GT(fell, 0);
  EXPECT_LT(fell, checked);
  EXPECT_GE(beyond_screen, checked / 4);
}

// Model C falls back where half the memories overlap the state (random directions, rectified F: too
// many candidates) and agrees with the exact engine then; F = power and bad eps are refused.
TEST(Certified, ModelCFallsBackAndRefuses) {
  std::mt19937_64 rng(22);
  const Matrix X = unit_rows(5000, 24, rng);
  const MemoryStore s = store_of(X, DType::Float32);
  const CodeIndex c = CodeIndex::build(s);
  EngineOptions eo;
  eo.codes = &c;
  std::vector<float> v(24);
  s.decode_row(7, v.data());
  RetrieveOptions o = one_step(1e-3);
  const ModelCEngine e(s, InteractionSpec{Interaction::RectifiedPower, 3.0, 1}, 1.0, eo);
  const Retrieval r = e.retrieve(v.data(), 1, o);
  EXPECT_EQ(r.certificates[0].fallback_steps, 1);
  EXPECT_EQ(r.certificates[0].candidates, 5000u);
  o.certify.reset();
  const Retrieval x = e.retrieve(v.data(), 1, o);
  for (std::size_t j = 0; j < 24; ++j) EXPECT_EQ(r.states[j], x.states[j]);
  o.certify = 1e-3;
  EXPECT_THROW_MSG(ModelCEngine(s, InteractionSpec{Interaction::Power, 3.0, 1}, 1.0, eo).retrieve(v.data(), 1, o),
                   InvalidArgument, "certify: model C needs F' >= 0 and non-decreasing");
  EXPECT_THROW_MSG(ModelCEngine(s, InteractionSpec{Interaction::Exp, 2, 5.0}).retrieve(v.data(), 1, o), InvalidArgument,
                   "certify: the engine has no codes");
  o.certify = 0.9;
  EXPECT_THROW_MSG(e.retrieve(v.data(), 1, o), InvalidArgument, "certify: eps must be in (0, 0.5]");
  const MemoryStore other = store_of(randn(5000, 24, rng), DType::Float32);
  EXPECT_THROW_MSG(ModelCEngine(other, InteractionSpec{Interaction::Exp, 2, 5.0}, 1.0, eo), InvalidArgument,
                   "codes: they belong to another store");
}

// Approximate retrieval (RetrieveOptions::approximate) over a fixed candidate source: the state is
// eq. (16) over exactly the candidates the source gives (long double), masked and repeated rows
// dropped, -1 padding ignored; top-k from them; bad input refused.
namespace {
struct FixedCandidates final : CandidateSource {
  std::size_t K;
  std::vector<std::int64_t> rows;  // the same for every query
  std::size_t size() const override { return K; }
  void search(const float*, std::size_t n, std::size_t k, std::int64_t* out) const override {
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t c = 0; c < k; ++c) out[i * k + c] = c < rows.size() ? rows[c] : -1;
  }
};
}  // namespace

TEST(Approximate, RescoresExactlyTheCandidatesOfItsSource) {
  std::mt19937_64 rng(31);
  const MemoryStore s = store_of(randn(500, 12, rng), DType::Float32);
  FixedCandidates src;
  src.K = 500;
  src.rows = {17, 3, 17, 250, 499, 3, 42};
  EngineOptions eo;
  eo.candidates = &src;
  const ModelBEngine e(s, 2.0, eo);
  std::vector<float> q(2 * 12);
  std::normal_distribution<float> g(0, 1);
  for (auto& x : q) x = g(rng);
  std::vector<std::uint8_t> mask(2 * 500, 0);
  mask[500 + 42] = 1;  // the second query leaves memory 42 out
  RetrieveOptions o;
  o.max_steps = 1;
  o.approximate = 10;  // more than the source has: -1 padding
  o.top_k = 3;
  o.mask = {mask.data(), 2};
  const Retrieval r = e.retrieve(q.data(), 2, o);
  EXPECT_TRUE(r.certificates.empty());
  for (std::size_t b = 0; b < 2; ++b) {
    std::vector<std::uint8_t> keep(500, 1);  // exact_state's mask: non-zero leaves a memory out
    for (std::int64_t mu : {17, 3, 250, 499, 42})
      if (!(b == 1 && mu == 42)) keep[std::size_t(mu)] = 0;
    std::vector<long double> w;
    const auto v = exact_state(s, &q[b * 12], 2.0, keep.data(), &w);
    // The returned state is the start of the final pass: compare the top-k weights, then the state.
    EXPECT_LT(dist(v, &r.states[b * 12]), 1e-5);
    ASSERT_EQ(r.top[b].size(), 3u);
    for (const auto& t : r.top[b]) {
      EXPECT_EQ(keep[t.id], 0) << t.id;
    }
  }
  o.mask = {};
  o.approximate = 0;
  EXPECT_THROW_MSG(e.retrieve(q.data(), 1, o), InvalidArgument, "approximate: the number of candidates must be > 0");
  o.approximate = 4;
  o.certify = 1e-3;
  EXPECT_THROW_MSG(e.retrieve(q.data(), 1, o), InvalidArgument, "approximate: not with certify");
  o.certify.reset();
  EXPECT_THROW_MSG(ModelBEngine(s, 2.0).retrieve(q.data(), 1, o), InvalidArgument,
                   "approximate: the engine has no candidate source");
  src.rows = {-1};
  EXPECT_THROW_MSG(e.retrieve(q.data(), 1, o), InvalidArgument, "found no memory the mask leaves");
  FixedCandidates small;
  small.K = 499;
  EngineOptions bad;
  bad.candidates = &small;
  EXPECT_THROW_MSG(ModelBEngine(s, 2.0, bad), InvalidArgument, "candidates: the source indexes 499 memories");
}
