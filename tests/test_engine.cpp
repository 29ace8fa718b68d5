// The fused engine against the plain models: model B (one step, iterated, energy, top-k), the exact
// merge of partials across stores, every kernel and store dtype, threads, model C, bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <thread>

#include "assocmem/engine.hpp"
#include "assocmem/models.hpp"
#include "engine_kernels.hpp"
#include "error_bounds.hpp"
#include "test_util.hpp"

using namespace assocmem;
using assocmem::testing::kUnitRoundoffBf16;
using assocmem::testing::model_b_step_bound;
using assocmem::testing::PassShape;
using assocmem::testing::rand_pm1;
using assocmem::testing::randn;
using assocmem::testing::to_f32;
using assocmem::testing::unit_rows;

namespace {

std::vector<KernelChoice> available_kernels() {
  return assocmem::testing::available_kernels(DType::BFloat16,
                                              {KernelChoice::Avx512, KernelChoice::Avx512Bf16, KernelChoice::AmxBf16});
}

struct Fixture {
  MemoryStore store;
  Matrix X;  // the decoded memories, what the plain model sees
};

Fixture make_store(DType t, std::size_t K, std::size_t d, std::mt19937_64& rng) {
  MemoryStore s(d, t);
  s.append(t == DType::Bits ? rand_pm1(static_cast<Eigen::Index>(K), static_cast<Eigen::Index>(d), rng)
                            : unit_rows(randn(static_cast<Eigen::Index>(K), static_cast<Eigen::Index>(d), rng)));
  Matrix X = s.to_matrix();
  return {std::move(s), std::move(X)};
}

// bf16 products round queries and weights to 8 significant bits: 2^-8 relative per product.
bool bf16_products(const ModelBEngine& e) { return e.kernel() == "avx512_bf16" || e.kernel() == "amx_bf16"; }
// How the engine's passes sum (tests/error_bounds.hpp): for the forward error bounds of its float32 steps.
PassShape shape_of(const ModelBEngine& e, std::size_t K, std::size_t d, const EngineOptions& eo) {
  return {K, d, eo.tile, bf16_products(e) ? kUnitRoundoffBf16 : 0.0};
}

// An engine's iteration of one query (eq. 16 or 22), T steps, against the forward error bounds of
// error_bounds.hpp:
//  1. step by step: each float32 step, taken from the engine's own previous state, within the bound of
//     one exact step from that state;
//  2. the T steps in one call equal those T single steps (the iteration is the composition of its steps);
//  3. the whole run within the bound carried along the exact trajectory from the cue, after as many steps
//     as that worst-case bound stays finite (it grows geometrically while the step expands; at least
//     `min_carried` steps).
// run(q, steps) runs the engine for exactly `steps` steps (tol = 0) from the float32 state q.
using RunFn = std::function<Retrieval(const float* q, long steps)>;
// An engine's iteration of one query for exactly `steps` steps (tol = 0), with the other options of o.
template <class Engine>
RunFn fixed_steps(const Engine& eng, RetrieveOptions o) {
  o.tol = 0.0;
  o.energy = false;
  return [&eng, o](const float* x, long steps) {
    RetrieveOptions t = o;
    t.max_steps = steps;
    return eng.retrieve(x, 1, t);
  };
}
using StepBoundFn = std::function<assocmem::testing::StepBound(const Vector& v, double E_in)>;
void check_iteration(const RunFn& run, const StepBoundFn& step, const std::vector<float>& q0, long T, long min_carried) {
  const std::size_t d = q0.size();
  const auto as_vector = [d](const float* x) {
    return Eigen::Map<const Eigen::VectorXf>(x, Eigen::Index(d)).cast<double>().eval();
  };
  std::vector<float> cur = q0;
  for (long t = 1; t <= T; ++t) {
    const Retrieval r = run(cur.data(), 1);
    const auto sb = step(as_vector(cur.data()), 0.0);
    ASSERT_TRUE(sb.err.allFinite()) << "step " << t;
    for (std::size_t j = 0; j < d; ++j)
      ASSERT_LE(std::abs(r.states[j] - sb.next[Eigen::Index(j)]), sb.err[Eigen::Index(j)]) << "step " << t << " component " << j;
    for (std::size_t j = 0; j < d; ++j) cur[j] = static_cast<float>(r.states[j]);
  }
  const Retrieval whole = run(q0.data(), T);
  for (std::size_t j = 0; j < d; ++j) ASSERT_EQ(whole.states[j], double(cur[j])) << "after " << T << " steps, component " << j;
  const auto tb = assocmem::testing::propagate(step, as_vector(q0.data()), T);
  ASSERT_GE(tb.steps, std::min(T, min_carried));
  const Retrieval part = run(q0.data(), tb.steps);
  for (std::size_t j = 0; j < d; ++j)
    EXPECT_LE(std::abs(part.states[j] - tb.state[Eigen::Index(j)]), tb.err[Eigen::Index(j)])
        << "after " << tb.steps << " steps from the cue, component " << j;
}

TEST(EngineB, OneStepMatchesThePlainModelForEveryKernelDtypeAndBatch) {
  std::mt19937_64 rng(1);
  for (DType t : {DType::Float32, DType::BFloat16, DType::Bits}) {
    const std::size_t d = t == DType::Bits ? 70 : 37;
    Fixture s = make_store(t, 1000, d, rng);  // 1000 = 3 tiles of 256 + a partial tile
    const double beta = t == DType::Bits ? 0.05 : 4.0;
    const ModelB plain(s.X, beta);
    for (KernelChoice k : available_kernels()) {
      EngineOptions eo;
      eo.kernel = k;
      eo.threads = 2;
      const ModelBEngine eng(s.store, beta, eo);
      for (std::size_t batch : {1u, 3u, 13u}) {
        const Matrix Q = s.X.topRows(static_cast<Eigen::Index>(batch)) + randn(static_cast<Eigen::Index>(batch), static_cast<Eigen::Index>(d), rng, 0.1);
        const std::vector<float> q = to_f32(Q);
        RetrieveOptions bo;
        bo.top_k = 5;
        bo.energy = true;
        const Retrieval r = eng.retrieve(q.data(), batch, bo);
        const PassShape shape = shape_of(eng, 1000, d, eo);
        for (std::size_t b = 0; b < batch; ++b) {
          const Vector v0 = Eigen::Map<const Eigen::VectorXf>(&q[b * d], static_cast<Eigen::Index>(d)).cast<double>();
          const Vector expect = plain.update(v0);
          const Vector got = r.state(b);
          // The step (eq. 16) within its float32 forward error bound, componentwise.
          const auto step = model_b_step_bound(s.X, v0, 0.0, beta, shape);
          ASSERT_TRUE(step.err.allFinite());
          for (Eigen::Index j = 0; j < got.size(); ++j)
            ASSERT_LE(std::abs(got[j] - expect[j]), step.err[j])
                << eng.kernel() << " " << to_string(t) << " batch " << batch << " query " << b << " component " << j;
          // Energy (eq. 13) at the returned state, and the top-k weights there, within the bounds of a pass
          // from that (float32, so exactly known) state.
          const auto at = model_b_step_bound(s.X, got, 0.0, beta, shape);
          EXPECT_LE(std::abs(r.energy[b] - plain.energy(got)), at.energy_err) << eng.kernel();
          const Vector w = plain.weights(got);
          ASSERT_EQ(r.top[b].size(), 5u);
          Eigen::Index best;
          w.maxCoeff(&best);
          if (!bf16_products(eng)) {
            EXPECT_EQ(r.top[b][0].id, static_cast<std::uint64_t>(best));
          }
          for (const TopMemory& t : r.top[b]) {
            const auto id = static_cast<Eigen::Index>(t.id);
            EXPECT_LE(std::abs(t.weight - w[id]), at.weight_err[id]) << eng.kernel() << " memory " << id;
          }
        }
      }
    }
  }
}

// Iterated (step 0.5) from noisy cues, on every kernel: each step and the whole run within the float32
// forward error bounds (check_iteration), and to convergence (tol 1e-6): every query converges, to a
// fixed point of eq. (16) (one exact step from the engine's state moves it by at most tol plus forward
// error bounds), and to the plain model's: the step is a contraction there (L = ||0.5 I + 0.5 beta
// Cov_w(xi)||_inf < 1, computed at the state), so |state - p| <= |T(state) - state| / (1 - L) to first order.
TEST(EngineB, IteratesToThePlainFixedPoint) {
  std::mt19937_64 rng(2);
  Fixture s = make_store(DType::Float32, 600, 24, rng);
  const double beta = 8.0;
  const ModelB plain(s.X, beta);
  const Matrix Q = s.X.topRows(6) + randn(6, 24, rng, 0.2);
  const auto q = to_f32(Q);
  for (KernelChoice k : available_kernels()) {
    EngineOptions eo;
    eo.kernel = k;
    const ModelBEngine eng(s.store, beta, eo);
    SCOPED_TRACE(eng.kernel());
    const PassShape shape = shape_of(eng, 600, 24, eo);
    const auto stepfn = [&](const Vector& v, double E) { return model_b_step_bound(s.X, v, E, beta, shape, 0.5); };
    RetrieveOptions bo;
    bo.max_steps = 200;
    bo.tol = 1e-6;
    bo.step = 0.5;
    const auto r = eng.retrieve(q.data(), 6, bo);
    for (std::size_t b = 0; b < 6; ++b) {
      SCOPED_TRACE("query " + std::to_string(b));
      ASSERT_TRUE(r.converged(b));
      const std::vector<float> q0(q.begin() + long(b * 24), q.begin() + long(b * 24 + 24));
      check_iteration(fixed_steps(eng, bo), stepfn, q0, r.steps[b], bf16_products(eng) ? 2 : 5);
      // Converged, to a fixed point.
      const Vector got = r.state(b);
      const auto at = model_b_step_bound(s.X, got, 0.0, beta, shape, 0.5);
      ASSERT_TRUE(at.err.allFinite());
      const double residual = (at.next - got).lpNorm<Eigen::Infinity>();
      EXPECT_LE(residual, 2 * bo.tol.value() + 2 * at.err.maxCoeff());
      // ... the plain model's (converged to 1e-12): the same fixed point.
      const Vector w = plain.weights(got);
      const Vector a = s.X.transpose() * w;
      const Matrix C = s.X.transpose() * w.asDiagonal() * s.X - a * a.transpose();
      const Matrix J = 0.5 * Matrix::Identity(24, 24) + 0.5 * beta * C;
      const double L = J.cwiseAbs().rowwise().sum().maxCoeff();
      ASSERT_LT(L, 1.0);
      RetrieveOptions po;
      po.max_steps = 1000;
      po.tol = 1e-12;
      po.step = 0.5;
      const Vector v0 = Eigen::Map<const Eigen::VectorXf>(q0.data(), 24).cast<double>();
      const auto p = plain.retrieve(v0, po);
      ASSERT_TRUE(p.converged());
      EXPECT_LE((got - p.state()).lpNorm<Eigen::Infinity>(), 1.01 * (residual + 2e-12) / (1 - L));
    }
  }
}

// The online softmax's state (assocmem/online_softmax.hpp) over memories observed tile by tile in three
// disjoint groups, merged pairwise or combined at once, is the softmax over all of them: log-sum-exp and
// weighted rows agree with a direct evaluation, in double, to the forward error bound of sums of 2K terms
// (gamma_2K, weights summing to one, |x| <= 1). Scores up to 800 overflow exp without the running maximum.
TEST(OnlineSoftmax, MergeAndCombineAreTheSoftmaxOfAllMemories) {
  std::mt19937_64 rng(17);
  std::uniform_real_distribution<double> score(-700.0, 800.0), comp(-1.0, 1.0);
  std::uniform_int_distribution<int> group(0, 2);
  const std::size_t K = 1000, dim = 5, batch = 2;
  std::vector<double> s(batch * K), x(K * dim);
  for (auto& v : s) v = score(rng);
  for (auto& v : x) v = comp(rng);
  std::vector<int> g(K);
  for (auto& v : g) v = group(rng);
  // Query 1 sees only group 0: the other states stay empty for it (max -inf) and merge as nothing.
  std::vector<OnlineSoftmax<double>> parts(3, OnlineSoftmax<double>(batch, dim, dim + 3));
  auto scale = [](double* a, std::size_t n, double f) {
    for (std::size_t j = 0; j < n; ++j) a[j] *= f;
  };
  for (std::size_t t0 = 0; t0 < K; t0 += 7)
    for (std::size_t b = 0; b < batch; ++b)
      for (int h = 0; h < 3; ++h) {
        if (b == 1 && h != 0) continue;
        OnlineSoftmax<double>& p = parts[std::size_t(h)];
        double tmax = -std::numeric_limits<double>::infinity();
        for (std::size_t mu = t0; mu < std::min(K, t0 + 7); ++mu)
          if (g[mu] == h) tmax = std::max(tmax, s[b * K + mu]);
        if (tmax == -std::numeric_limits<double>::infinity()) continue;
        p.raise_max(b, tmax, p.row(b), dim, scale);
        for (std::size_t mu = t0; mu < std::min(K, t0 + 7); ++mu) {
          if (g[mu] != h) continue;
          const double w = std::exp(s[b * K + mu] - p.max[b]);
          p.sum[b] += w;
          for (std::size_t j = 0; j < dim; ++j) p.row(b)[j] += w * x[mu * dim + j];
        }
      }
  OnlineSoftmax<double> merged = parts[2];
  merged.merge(parts[0]);
  merged.merge(parts[1]);
  const double tol = assocmem::testing::gamma_n(2.0 * K, 0x1p-53);
  for (std::size_t b = 0; b < batch; ++b) {
    double m = -std::numeric_limits<double>::infinity();
    for (std::size_t mu = 0; mu < K; ++mu)
      if (b == 0 || g[mu] == 0) m = std::max(m, s[b * K + mu]);
    double S = 0;
    std::vector<double> ref(dim, 0.0), combined(dim), direct(dim);
    for (std::size_t mu = 0; mu < K; ++mu) {
      if (b == 1 && g[mu] != 0) continue;
      const double w = std::exp(s[b * K + mu] - m);
      S += w;
      for (std::size_t j = 0; j < dim; ++j) ref[j] += w * x[mu * dim + j];
    }
    const double lse = m + std::log(S);
    ASSERT_TRUE(merged.finite(b));
    EXPECT_NEAR(merged.log_sum_exp(b), lse, tol * std::abs(lse) + tol);
    EXPECT_NEAR(combine(parts, b, combined.data()), lse, tol * std::abs(lse) + tol);
    for (std::size_t j = 0; j < dim; ++j) {
      EXPECT_NEAR(merged.row(b)[j] / merged.sum[b], ref[j] / S, 2 * tol);
      EXPECT_NEAR(combined[j], ref[j] / S, 2 * tol);
    }
  }
  // A state that saw nothing: not finite, log-sum-exp -inf, and combine leaves the output alone.
  const OnlineSoftmax<double> none(1, dim);
  EXPECT_FALSE(none.finite(0));
  EXPECT_EQ(none.log_sum_exp(0), -std::numeric_limits<double>::infinity());
  std::vector<double> untouched(dim, 7.0);
  EXPECT_EQ(combine(std::vector<OnlineSoftmax<double>>{none}, 0, untouched.data()),
            -std::numeric_limits<double>::infinity());
  EXPECT_EQ(untouched[0], 7.0);
}

// Memories split across two stores: merged partials equal the partial over one store.
TEST(EngineB, PartialsMergeExactlyAcrossStores) {
  std::mt19937_64 rng(3);
  const Matrix X = unit_rows(randn(900, 40, rng));
  MemoryStore all(40, DType::Float32), first(40, DType::Float32), second(40, DType::Float32);
  all.append(X);
  std::vector<std::uint64_t> ids1(500), ids2(400);
  for (std::size_t i = 0; i < 500; ++i) ids1[i] = i;
  for (std::size_t i = 0; i < 400; ++i) ids2[i] = 500 + i;
  first.append(Matrix(X.topRows(500)), ids1);
  second.append(Matrix(X.bottomRows(400)), ids2);
  const auto q = to_f32(Matrix(X.middleRows(490, 20) + randn(20, 40, rng, 0.1)));
  const ModelBEngine e_all(all, 6.0), e1(first, 6.0), e2(second, 6.0);
  const AttentionPartial whole = e_all.partial(q.data(), 20, 4);
  AttentionPartial merged = e2.partial(q.data(), 20, 4);
  merged.merge(e1.partial(q.data(), 20, 4));
  // Both are float32 passes over the same memories summed in other orders: each within the forward error
  // bound of the exact attention (eq. 16 at step 1), so they differ by at most twice the bound.
  const PassShape shape{900, 40, EngineOptions{}.tile, 0.0};
  std::vector<float> a(40), b(40);
  for (std::size_t i = 0; i < 20; ++i) {
    const Vector v = Eigen::Map<const Eigen::VectorXf>(&q[i * 40], 40).cast<double>();
    const auto sb = model_b_step_bound(X, v, 0.0, 6.0, shape);
    whole.state(i, a.data());
    merged.state(i, b.data());
    for (std::size_t j = 0; j < 40; ++j) EXPECT_NEAR(a[j], b[j], 2 * sb.err[Eigen::Index(j)]);
    EXPECT_NEAR(whole.log_sum_exp(i), merged.log_sum_exp(i), 2 * sb.lse_err);
    EXPECT_NEAR(whole.log_sum_exp(i), sb.lse, sb.lse_err);
    const auto tw = whole.top_weights(i), tm = merged.top_weights(i);
    ASSERT_EQ(tw.size(), tm.size());
    for (std::size_t k = 0; k < tw.size(); ++k) {
      EXPECT_EQ(tw[k].first, tm[k].first);
      EXPECT_NEAR(tw[k].second, tm[k].second, 2 * sb.weight_err[Eigen::Index(tw[k].first)]);
    }
  }
  AttentionPartial wrong(3, 40, 4);
  EXPECT_THROW_MSG(merged.merge(wrong), InvalidArgument, "merge");
}

// At beta = 1e4 the scores span 1e4: the pass must stay finite, and a stored unit pattern is (to the
// float32 bound of one step from it) a fixed point.
TEST(EngineB, StableAtBetaTenThousand) {
  std::mt19937_64 rng(4);
  Fixture s = make_store(DType::Float32, 500, 16, rng);
  const ModelBEngine eng(s.store, 1e4);
  const auto q = to_f32(s.X.topRows(4));
  RetrieveOptions ro;
  ro.energy = true;
  const auto r = eng.retrieve(q.data(), 4, ro);
  const PassShape shape{500, 16, EngineOptions{}.tile, 0.0};
  for (std::size_t b = 0; b < 4; ++b) {
    EXPECT_TRUE(std::isfinite(r.energy[b]));
    const Vector v = Eigen::Map<const Eigen::VectorXf>(&q[b * 16], 16).cast<double>();
    const auto sb = model_b_step_bound(s.X, v, 0.0, 1e4, shape);
    ASSERT_TRUE(sb.err.allFinite());
    EXPECT_LE((sb.next - v).lpNorm<Eigen::Infinity>(), 1e-12);  // the exact step: a fixed point
    for (std::size_t j = 0; j < 16; ++j) {
      ASSERT_TRUE(std::isfinite(r.states[b * 16 + j]));
      EXPECT_NEAR(r.states[b * 16 + j], q[b * 16 + j], sb.err[Eigen::Index(j)]);
    }
  }
}

// Large queries (|v| = 1e4 .. 1e8, beta |v| = 20 so that the weights stay spread): the step (eq. 15)
// within its float32 bound on every kernel, at step 1 (the target a itself) and 0.5. The relaxation
// v + (a - v) in float32 lost a against |v| (at |v| = 1e8 the state was exactly 0).
TEST(EngineB, LargeQueriesStepAccuratelyForAnyNorm) {
  std::mt19937_64 rng(7);
  const std::size_t K = 300, d = 24;
  Fixture s = make_store(DType::Float32, K, d, rng);
  for (KernelChoice k : available_kernels()) {
    EngineOptions eo;
    eo.kernel = k;
    for (double norm : {1e4, 1e6, 1e8}) {
      const double beta = 20.0 / norm;
      const ModelBEngine eng(s.store, beta, eo);
      const Matrix Q = s.X.topRows(3) + randn(3, static_cast<Eigen::Index>(d), rng, 0.3);
      Matrix Qs = Q;
      for (Eigen::Index b = 0; b < 3; ++b) Qs.row(b) *= norm / Q.row(b).norm();
      const std::vector<float> q = to_f32(Qs);
      for (double step : {1.0, 0.5}) {
        RetrieveOptions ro;
        ro.max_steps = 1;
        ro.tol = 0;
        ro.step = step;
        const Retrieval r = eng.retrieve(q.data(), 3, ro);
        for (std::size_t b = 0; b < 3; ++b) {
          const Vector v0 = Eigen::Map<const Eigen::VectorXf>(&q[b * d], static_cast<Eigen::Index>(d)).cast<double>();
          const auto sb = model_b_step_bound(s.X, v0, 0.0, beta, shape_of(eng, K, d, eo), step);
          ASSERT_TRUE(sb.err.allFinite());
          const Vector got = r.state(b);
          for (Eigen::Index j = 0; j < got.size(); ++j)
            ASSERT_LE(std::abs(got[j] - sb.next[j]), sb.err[j])
                << eng.kernel() << " |v| = " << norm << " step " << step << " query " << b << " component " << j;
          if (step == 1.0) {
            EXPECT_LE(got.norm(), 1.0 + 1e-5);  // a convex combination of unit memories
          }
        }
      }
    }
  }
}

TEST(EngineB, ThreadCountDoesNotChangeTheAnswerAndCallsMayBeConcurrent) {
  std::mt19937_64 rng(5);
  // float32 products: tiling and thread count change only the rounding. (With bf16 products the
  // weights are rounded to bf16 relative to each tile's running max, so tilings differ by ~1e-4.)
  Fixture s = make_store(DType::Float32, 2000, 32, rng);
  const auto q = to_f32(Matrix(s.X.topRows(16) + randn(16, 32, rng, 0.1)));
  EngineOptions one;
  one.threads = 1;
  EngineOptions many;
  many.threads = 5;
  many.tile = 64;
  const ModelBEngine e1(s.store, 5.0, one), e5(s.store, 5.0, many);
  const auto r1 = e1.retrieve(q.data(), 16);
  const auto r5 = e5.retrieve(q.data(), 16);
  // Both within the forward error bound of the exact step (summation trees of either tiling): they
  // differ by at most the two bounds.
  for (std::size_t b = 0; b < 16; ++b) {
    const Vector v0 = Eigen::Map<const Eigen::VectorXf>(&q[b * 32], 32).cast<double>();
    const auto b1 = model_b_step_bound(s.X, v0, 0.0, 5.0, shape_of(e1, 2000, 32, one));
    const auto b5 = model_b_step_bound(s.X, v0, 0.0, 5.0, shape_of(e5, 2000, 32, many));
    for (std::size_t j = 0; j < 32; ++j)
      EXPECT_LE(std::abs(r1.states[b * 32 + j] - r5.states[b * 32 + j]), b1.err[Eigen::Index(j)] + b5.err[Eigen::Index(j)])
          << "query " << b << " component " << j;
  }
  std::vector<Retrieval> results(8);
  std::vector<std::thread> pool;
  for (int t = 0; t < 8; ++t) pool.emplace_back([&, t] { results[static_cast<std::size_t>(t)] = e5.retrieve(q.data(), 16); });
  for (auto& t : pool) t.join();
  for (const auto& r : results) EXPECT_EQ(r.states, r5.states);  // deterministic for fixed options
  // Concurrent calls on a bf16 store, on the default (best) kernel.
  Fixture b = make_store(DType::BFloat16, 2000, 32, rng);
  const ModelBEngine eb(b.store, 5.0, many);
  const auto rb = eb.retrieve(q.data(), 16);
  std::vector<Retrieval> rs(4);
  pool.clear();
  for (int t = 0; t < 4; ++t) pool.emplace_back([&, t] { rs[static_cast<std::size_t>(t)] = eb.retrieve(q.data(), 16); });
  for (auto& t : pool) t.join();
  for (const auto& r : rs) EXPECT_EQ(r.states, rb.states);
}

// Model C, 30 Euler steps of eq. (22) for two F and two alpha: each step and the run within the float32
// forward error bounds (check_iteration), the plain model's state the exact trajectory, and the energy
// (eq. 21) at the returned state within the bound of one pass from it.
TEST(EngineC, MatchesThePlainModel) {
  std::mt19937_64 rng(6);
  Fixture s = make_store(DType::Float32, 700, 20, rng);
  const Matrix X3 = s.X * 3.0;
  MemoryStore st(20, DType::Float32);
  st.append(X3);
  const Matrix X = st.to_matrix();
  const PassShape shape{700, 20, EngineOptions{}.tile, 0.0};
  struct Fn {
    InteractionSpec spec;
    std::function<double(double)> F, Fp;
    std::function<double(double, double)> Fpp_max;  // max |F''| on [x - r, x + r]
    double c_F;  // relative error of the engine's F' in units of u: F' in double, rounded to float32, and
                 // for exp the argument's rounding (|x| <= |xi| |g| = 3 here)
  };
  const std::vector<Fn> fns = {
      {{Interaction::RectifiedPower, 3}, [](double x) { return x > 0 ? x * x * x : 0.0; },
       [](double x) { return x > 0 ? 3 * x * x : 0.0; }, [](double x, double r) { return std::max(0.0, 6 * (x + r)); }, 4},
      {{Interaction::Exp, 2, 1.0}, [](double x) { return std::exp(x); }, [](double x) { return std::exp(x); },
       [](double x, double r) { return std::exp(x + r); }, 4 + 3}};
  for (const Fn& fn : fns) {
    for (double alpha : {0.0, 1.0}) {
      const ModelC plain(X, fn.spec, alpha);
      EngineOptions eo;
      eo.threads = 2;
      const ModelCEngine eng(st, fn.spec, alpha, eo);
      const Matrix Q = X3.topRows(5) + randn(5, 20, rng, 0.3);
      const auto q = to_f32(Q);
      RetrieveOptions bo;
      bo.step = 0.01;
      bo.max_steps = 30;
      bo.energy = true;
      const auto r = eng.retrieve(q.data(), 5, bo);
      RetrieveOptions po;
      po.step = 0.01;
      po.max_steps = 30;
      po.tol = 0;
      const auto stepfn = [&](const Vector& v, double E) {
        return assocmem::testing::model_c_step_bound(X, v, E, alpha, 0.01, fn.F, fn.Fp, fn.Fpp_max, fn.c_F, shape);
      };
      for (std::size_t b = 0; b < 5; ++b) {
        SCOPED_TRACE(to_string(fn.spec.kind) + " alpha " + std::to_string(alpha) + " query " + std::to_string(b));
        EXPECT_EQ(r.steps[b], 30);
        const std::vector<float> q0(q.begin() + long(b * 20), q.begin() + long(b * 20 + 20));
        check_iteration(fixed_steps(eng, bo), stepfn, q0, 30, 4);
        // The plain model is the exact trajectory (two double evaluations of 30 steps of eq. 22).
        const Vector v0 = Eigen::Map<const Eigen::VectorXf>(q0.data(), 20).cast<double>();
        const auto p = plain.retrieve(v0, po);
        Vector exact = v0;
        for (int t = 0; t < 30; ++t) exact = stepfn(exact, 0.0).next;
        EXPECT_LE((p.state() - exact).lpNorm<Eigen::Infinity>(), 1e-9 * (1 + exact.lpNorm<Eigen::Infinity>()));
        // The energy (eq. 21) at the returned state, within the bound of a pass from that (float32) state.
        const Vector got = r.state(b);
        EXPECT_LE(std::abs(r.energy[b] - plain.energy(got)), stepfn(got, 0.0).energy_err);
      }
    }
  }
}

TEST(Engine, BadInputThrowsNamingTheParameter) {
  std::mt19937_64 rng(7);
  Fixture s = make_store(DType::Float32, 100, 8, rng);
  EXPECT_THROW_MSG(ModelBEngine(s.store, 0.0), InvalidArgument, "beta");
  EXPECT_THROW_MSG(ModelBEngine(MemoryStore(8, DType::Float32), 1.0), InvalidArgument, "empty");
  EngineOptions eo;
  eo.tile = 100;
  EXPECT_THROW_MSG(ModelBEngine(s.store, 1.0, eo), InvalidArgument, "tile");
  eo = {};
  eo.threads = -1;
  EXPECT_THROW_MSG(ModelBEngine(s.store, 1.0, eo), InvalidArgument, "threads");
  EXPECT_THROW_MSG(parse_kernel("sse"), InvalidArgument, "kernel");
  const ModelBEngine eng(s.store, 1.0);
  std::vector<float> q(16, 0.5f);
  q[9] = std::nanf("");
  EXPECT_THROW_MSG(eng.retrieve(q.data(), 2), InvalidArgument, "row 1 element 1 is NaN");
  q[9] = 0.0f;
  EXPECT_THROW_MSG(eng.retrieve(q.data(), 0), InvalidArgument, "batch is empty");
  RetrieveOptions bo;
  bo.step = 2.0;
  EXPECT_THROW_MSG(eng.retrieve(q.data(), 2, bo), InvalidArgument, "step");
  bo = {};
  bo.max_steps = 0;
  EXPECT_THROW_MSG(eng.retrieve(q.data(), 2, bo), InvalidArgument, "max_steps");
  const ModelCEngine c(s.store, {Interaction::Power, 2});
  std::vector<float> zero(8, 0.0f);
  EXPECT_THROW_MSG(c.retrieve(zero.data(), 1, {}), InvalidArgument, "row 0 is zero");
}

}  // namespace
