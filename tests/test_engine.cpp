// The fused engine against the plain models: model B (one step, iterated, energy, top-k), the exact
// merge of partials across stores, every kernel and store dtype, threads, model C, bad input.
#include <gtest/gtest.h>

#include <cmath>
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

TEST(EngineB, IteratesToThePlainFixedPoint) {
  std::mt19937_64 rng(2);
  Fixture s = make_store(DType::Float32, 600, 24, rng);
  const ModelB plain(s.X, 8.0);
  for (KernelChoice k : available_kernels()) {
    EngineOptions eo;
    eo.kernel = k;
    const ModelBEngine eng(s.store, 8.0, eo);
    const Matrix Q = s.X.topRows(6) + randn(6, 24, rng, 0.2);
    const auto q = to_f32(Q);
    RetrieveOptions bo;
    bo.max_steps = 200;
    bo.tol = 1e-6;
    bo.step = 0.5;
    const auto r = eng.retrieve(q.data(), 6, bo);
    RetrieveOptions po;
    po.max_steps = 400;
    po.tol = 1e-9;
    po.step = 0.5;
    for (std::size_t b = 0; b < 6; ++b) {
      EXPECT_TRUE(r.converged(b)) << eng.kernel();
      const auto p = plain.retrieve(Q.row(static_cast<Eigen::Index>(b)).transpose(), po);
      const Vector got = r.state(b);
      EXPECT_LE((got - p.state()).lpNorm<Eigen::Infinity>(), bf16_products(eng) ? 2e-2 : 1e-4) << eng.kernel();
    }
  }
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
  std::vector<float> a(40), b(40);
  for (std::size_t i = 0; i < 20; ++i) {
    whole.state(i, a.data());
    merged.state(i, b.data());
    for (std::size_t j = 0; j < 40; ++j) EXPECT_NEAR(a[j], b[j], 1e-6);
    EXPECT_NEAR(whole.log_sum_exp(i), merged.log_sum_exp(i), 1e-6);
    const auto tw = whole.top_weights(i), tm = merged.top_weights(i);
    ASSERT_EQ(tw.size(), tm.size());
    for (std::size_t k = 0; k < tw.size(); ++k) {
      EXPECT_EQ(tw[k].first, tm[k].first);
      EXPECT_NEAR(tw[k].second, tm[k].second, 1e-6);
    }
  }
  AttentionPartial wrong(3, 40, 4);
  EXPECT_THROW_MSG(merged.merge(wrong), InvalidArgument, "merge");
}

TEST(EngineB, StableAtBetaTenThousand) {
  std::mt19937_64 rng(4);
  Fixture s = make_store(DType::Float32, 500, 16, rng);
  const ModelBEngine eng(s.store, 1e4);
  const auto q = to_f32(s.X.topRows(4));
  RetrieveOptions ro;
  ro.energy = true;
  const auto r = eng.retrieve(q.data(), 4, ro);
  for (std::size_t b = 0; b < 4; ++b) {
    EXPECT_TRUE(std::isfinite(r.energy[b]));
    for (std::size_t j = 0; j < 16; ++j) {
      ASSERT_TRUE(std::isfinite(r.states[b * 16 + j]));
      EXPECT_NEAR(r.states[b * 16 + j], q[b * 16 + j], 1e-5);  // a stored unit pattern is a fixed point
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

TEST(EngineC, MatchesThePlainModel) {
  std::mt19937_64 rng(6);
  Fixture s = make_store(DType::Float32, 700, 20, rng);
  const Matrix X3 = s.X * 3.0;
  MemoryStore st(20, DType::Float32);
  st.append(X3);
  for (InteractionSpec F : {InteractionSpec{Interaction::RectifiedPower, 3}, InteractionSpec{Interaction::Exp, 2, 1.0}}) {
    for (double alpha : {0.0, 1.0}) {
      const ModelC plain(st.to_matrix(), F, alpha);
      EngineOptions eo;
      eo.threads = 2;
      const ModelCEngine eng(st, F, alpha, eo);
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
      for (std::size_t b = 0; b < 5; ++b) {
        const Vector v0 = Eigen::Map<const Eigen::VectorXf>(&q[b * 20], 20).cast<double>();
        const auto p = plain.retrieve(v0, po);
        const Vector got = r.state(b);
        EXPECT_LE((got - p.state()).lpNorm<Eigen::Infinity>(), 1e-4 * (1 + p.state().lpNorm<Eigen::Infinity>()))
            << to_string(F.kind) << " alpha " << alpha;
        EXPECT_NEAR(r.energy[b], plain.energy(got), 1e-4 * (1 + std::fabs(r.energy[b])));
        EXPECT_EQ(r.steps[b], 30);
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
