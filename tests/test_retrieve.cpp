// The one retrieval API (retrieve.hpp): defaults and refusals per model, keys and values against an
// independent softmax attention, masks against deleting the masked memories, stop reasons, clamping,
// and the monitor (progress on the calling thread, cancellation).
#include <gtest/gtest.h>

#include <Eigen/SVD>

#include <atomic>
#include <chrono>
#include <functional>
#include <set>
#include <cmath>
#include <thread>

#include "assocmem/binary.hpp"
#include "assocmem/engine.hpp"
#include "assocmem/models.hpp"
#include "engine_kernels.hpp"
#include "error_bounds.hpp"
#include "test_util.hpp"

using namespace assocmem;
using assocmem::testing::model_b_step_bound;
using assocmem::testing::PassShape;
using assocmem::testing::rand_pm1;
using assocmem::testing::randn;
using assocmem::testing::to_f32;
using assocmem::testing::unit_rows;

namespace {

std::vector<KernelChoice> kernels_here() {
  return assocmem::testing::available_kernels(DType::Float32, {KernelChoice::Avx512});
}

// softmax(beta K v)^T V in double, written out here (not the library's code).
Vector attention(const Matrix& K, const Matrix& V, const Vector& v, double beta) {
  const Vector s = beta * (K * v);
  const Vector w = (s.array() - s.maxCoeff()).exp().matrix();
  return V.transpose() * (w / w.sum());
}

// Near an isolated fixed point p of a step T (computed exactly, in double), a state s satisfies
// s - p = (I - J)^-1 (s - T(s)) to first order in |s - p|, J = dT/dv at s (by central differences, exact
// to ~h^2): |s - p|_2 <= ||(I - J)^-1||_2 |T(s) - s|_2 (the 1.01 covers the second order at these
// distances, ~1e-6). Two converged states of the same retrieval computed in other orders are then within
// the sum of their gaps (asserted by the caller), however many steps each took. `held`: components the
// step keeps (clamped), equal in both states, left out of the map.
struct FixedPointGap {
  double residual = 0, amplification = 0;  ///< |T(s) - s|_2 and ||(I - J)^-1||_2
  double gap() const { return 1.01 * residual * amplification; }
};
FixedPointGap fixed_point_gap(const std::function<Vector(const Vector&)>& T, const Vector& s,
                              const std::vector<std::uint8_t>& held = {}) {
  std::vector<Eigen::Index> free;
  for (Eigen::Index j = 0; j < s.size(); ++j)
    if (held.empty() || !held[std::size_t(j)]) free.push_back(j);
  const auto n = Eigen::Index(free.size());
  const Vector Ts = T(s);
  FixedPointGap g;
  for (Eigen::Index j = 0; j < s.size(); ++j)
    if (!held.empty() && held[std::size_t(j)]) {
      EXPECT_EQ(Ts[j], s[j]) << "held component " << j << " moved";
    }
  Vector r(n);
  for (Eigen::Index i = 0; i < n; ++i) r[i] = Ts[free[std::size_t(i)]] - s[free[std::size_t(i)]];
  g.residual = r.norm();
  Matrix J(n, n);
  const double h = 1e-6;
  for (Eigen::Index c = 0; c < n; ++c) {
    Vector a = s, b = s;
    a[free[std::size_t(c)]] += h;
    b[free[std::size_t(c)]] -= h;
    const Vector dT = (T(a) - T(b)) / (2 * h);
    for (Eigen::Index i = 0; i < n; ++i) J(i, c) = dT[free[std::size_t(i)]];
  }
  const Vector sv = Eigen::JacobiSVD<Matrix>(Matrix(Matrix::Identity(n, n) - J)).singularValues();
  g.amplification = 1.0 / sv[n - 1];
  return g;
}

TEST(Retrieve, OneTableOfDefaultsAndPerModelRefusals) {
  EXPECT_EQ(retrieve_defaults(ModelKind::A).max_steps, 1000);
  EXPECT_EQ(retrieve_defaults(ModelKind::A).order, UpdateOrder::RandomAsync);
  EXPECT_EQ(retrieve_defaults(ModelKind::B).max_steps, 1);
  EXPECT_EQ(retrieve_defaults(ModelKind::B).step, 1.0);
  EXPECT_EQ(retrieve_defaults(ModelKind::C).step, 0.1);
  RetrieveOptions o;
  const ResolvedOptions r = resolve(o, ModelKind::C);
  EXPECT_EQ(r.max_steps, retrieve_defaults(ModelKind::C).max_steps);
  o.step = 0.5;
  EXPECT_THROW_MSG(resolve(o, ModelKind::A), InvalidArgument, "step: does not apply to model A");
  o = {};
  o.order = UpdateOrder::Synchronous;
  EXPECT_THROW_MSG(resolve(o, ModelKind::B), InvalidArgument, "order: applies to model A only");
  o = {};
  o.beta = 2.0;
  EXPECT_THROW_MSG(resolve(o, ModelKind::C), InvalidArgument, "beta");
  o = {};
  o.top_k = 3;
  EXPECT_THROW_MSG(resolve(o, ModelKind::A), InvalidArgument, "top_k");
  EXPECT_THROW_MSG(resolve(o, ModelKind::C), InvalidArgument, "top_k");
  o = {};
  o.step = 1.5;
  EXPECT_THROW_MSG(resolve(o, ModelKind::B), InvalidArgument, "step (dt/tau_f) must be in (0, 1]");
  o = {};
  o.tol = -1;
  EXPECT_THROW_MSG(resolve(o, ModelKind::B), InvalidArgument, "tol");
  o = {};
  o.beta = 0.0;
  EXPECT_THROW_MSG(resolve(o, ModelKind::B), InvalidArgument, "beta");
  EXPECT_THROW_MSG(parse_model("D"), InvalidArgument, "model must be one of A, B, C");
  EXPECT_EQ(to_string(StopReason::BlewUp), "blew_up");
  // The plain models read the same table: model B's default is one step of eq. (16).
  std::mt19937_64 rng(1);
  const Matrix X = randn(20, 6, rng);
  const ModelB B(X, 2.0);
  const Vector q = randn(6, rng);
  const Retrieval one = B.retrieve(q);
  EXPECT_EQ(one.steps[0], 1);
  EXPECT_EQ(one.stop[0], StopReason::MaxSteps);
  EXPECT_LE((one.state() - B.update(q)).norm(), 1e-14);
  EXPECT_TRUE(one.energy.empty());  // only when asked
  EXPECT_TRUE(one.top.empty());
}

// The one capability table (Capability): what each model takes, as Section 3 defines them - B and C
// relax by an Euler step and take masks and certified retrieval, only B has softmax weights (top_k, a
// per-call beta, values, approximate candidates), only A has an update order; every engine and plain
// model refuses what its model lacks, naming the option, rather than ignoring it.
TEST(Retrieve, OneTableOfWhatEachModelTakes) {
  using C = Capability;
  const std::vector<std::pair<C, std::string>> table = {
      {C::Step, "BC"}, {C::Order, "A"}, {C::CallBeta, "B"}, {C::TopK, "B"},
      {C::Mask, "BC"}, {C::Certify, "BC"}, {C::Values, "B"}, {C::Approximate, "B"}};
  for (const auto& [what, models] : table)
    for (const ModelKind m : {ModelKind::A, ModelKind::B, ModelKind::C}) {
      const bool yes = models.find(to_string(m)) != std::string::npos;
      EXPECT_EQ(supports(m, what), yes) << to_string(m) << " " << static_cast<int>(what);
      if (yes) EXPECT_NO_THROW(require(m, what, "--opt"));
      else EXPECT_THROW_MSG(require(m, what, "--opt"), InvalidArgument, "--opt: ");
    }
  EXPECT_THROW_MSG(require(ModelKind::C, C::Values, "--values"), InvalidArgument,
                   "--values: only model B associates keys with values (this is model C)");

  std::mt19937_64 rng(3);
  const Matrix X = randn(64, 8, rng);
  MemoryStore store(8, DType::Float32);
  store.append(X);
  const std::vector<float> q = to_f32(randn(1, 8, rng));
  RetrieveOptions approx;
  approx.approximate = 4;
  RetrieveOptions cert;
  cert.certify = 0.1;
  // Model C's engine has no approximate pass: refused by the table (it was ignored before).
  EXPECT_THROW_MSG(ModelCEngine(store, default_interaction(ModelKind::C)).retrieve(q.data(), 1, approx), InvalidArgument,
                   "approximate: approximate retrieval is for model B (this is model C)");
  // The plain models compute every memory exactly: certified or approximate retrieval is refused.
  EXPECT_THROW_MSG(ModelB(X, 2.0).retrieve(randn(8, rng), cert), InvalidArgument, "certify: the reference ModelB");
  EXPECT_THROW_MSG(ModelB(X, 2.0).retrieve(randn(8, rng), approx), InvalidArgument, "approximate: the reference ModelB");
  EXPECT_THROW_MSG(ModelC(X, default_interaction(ModelKind::C)).retrieve(randn(8, rng), cert), InvalidArgument,
                   "certify: the reference ModelC");
  EXPECT_THROW_MSG(ModelC(X, default_interaction(ModelKind::C)).retrieve(randn(8, rng), approx), InvalidArgument,
                   "approximate: approximate retrieval is for model B");
  // Model A (its bit engine, the plain model): neither.
  MemoryStore bits(8, DType::Bits);
  Matrix S = X.array().sign().matrix();
  bits.append(S);
  const std::vector<std::int8_t> cue(8, 1);
  EXPECT_THROW_MSG(ModelAEngine(bits, default_interaction(ModelKind::A)).retrieve(cue.data(), 1, cert),
                   InvalidArgument, "certify: certified retrieval is for models B and C (this is model A)");
  EXPECT_THROW_MSG(ModelA(S, default_interaction(ModelKind::A)).retrieve(Vector(S.row(0).transpose()), approx),
                   InvalidArgument, "approximate: approximate retrieval is for model B (this is model A)");
}

// Keys and values (attention): max_steps - 1 updates on the keys, then the association with the
// values; against softmax attention computed independently in double.
TEST(Retrieve, KeysAndValuesAreSoftmaxAttention) {
  std::mt19937_64 rng(2);
  const int K = 700, d = 24, dv = 7;
  const Matrix Kx = unit_rows(randn(K, d, rng));
  const Matrix V = randn(K, dv, rng);
  MemoryStore keys(d, DType::Float32), values(dv, DType::Float32);
  keys.append(Kx);
  values.append(V);
  const double beta = 6.0;
  for (KernelChoice k : kernels_here()) {
    EngineOptions eo;
    eo.kernel = k;
    eo.threads = 2;
    const ModelBEngine eng(keys, values, beta, eo);
    ASSERT_EQ(eng.value_dim(), static_cast<std::size_t>(dv));
    const PassShape shape{std::size_t(K), std::size_t(d), eo.tile, 0.0};
    for (std::size_t batch : {1u, 2u, 9u}) {  // matrix-vector and matrix-matrix kernels
      const Matrix Q = Kx.topRows(static_cast<Eigen::Index>(batch)) + randn(static_cast<Eigen::Index>(batch), d, rng, 0.3);
      const auto q = to_f32(Q);
      for (long steps : {1L, 3L}) {
        RetrieveOptions o;
        o.max_steps = steps;
        o.top_k = 4;
        o.energy = true;
        const Retrieval r = eng.retrieve(q.data(), batch, o);
        ASSERT_EQ(r.dim, static_cast<std::size_t>(dv));
        for (std::size_t b = 0; b < batch; ++b) {
          // The float32 forward error bound carried along the exact trajectory (error_bounds.hpp): the
          // updates on the keys, then the association with the values.
          Vector v = Eigen::Map<const Eigen::VectorXf>(&q[b * d], d).cast<double>();
          double E = 0;
          for (long s = 1; s < steps; ++s) {  // updates on the keys
            const auto sb = model_b_step_bound(Kx, v, E, beta, shape);
            ASSERT_LE((sb.next - attention(Kx, Kx, v, beta)).lpNorm<Eigen::Infinity>(), 1e-12);
            v = sb.next;
            E = sb.err.maxCoeff();
          }
          const auto last = model_b_step_bound(Kx, v, E, beta, shape, 1.0, &V);
          ASSERT_TRUE(last.err.allFinite());
          const Vector expect = attention(Kx, V, v, beta);
          ASSERT_LE((last.next - expect).lpNorm<Eigen::Infinity>(), 1e-12);
          for (Eigen::Index j = 0; j < dv; ++j)
            EXPECT_LE(std::abs(r.state(b)[j] - expect[j]), last.err[j])
                << eng.kernel() << " batch " << batch << " steps " << steps << " component " << j;
          EXPECT_EQ(r.steps[b], steps);
          // Energy (eq. 13) and top-k describe that last association: at v over the keys.
          const Vector sc = beta * (Kx * v);
          const double lse = sc.maxCoeff() + std::log((sc.array() - sc.maxCoeff()).exp().sum());
          EXPECT_NEAR(r.energy[b], 0.5 * v.squaredNorm() - lse / beta, last.energy_err);
          Eigen::Index best;
          sc.maxCoeff(&best);
          EXPECT_EQ(r.top[b][0].id, static_cast<std::uint64_t>(best));
        }
      }
    }
  }
  MemoryStore short_values(3, DType::Float32);
  short_values.append(randn(5, 3, rng));
  EXPECT_THROW_MSG(ModelBEngine(keys, short_values, 1.0), InvalidArgument, "values: 5 memories");
  MemoryStore bf(dv, DType::BFloat16);
  bf.append(V);
  EXPECT_THROW_MSG(ModelBEngine(keys, bf, 1.0), InvalidArgument, "dtype");
}

// A masked memory behaves exactly as if deleted: per-query masks, iterated steps in which queries
// stop at different steps (the mask follows each query through the shrinking active set), energy,
// top-k ids (the store's ids), for models B and C and every kernel.
TEST(Retrieve, MasksEqualDeletingTheMemories) {
  std::mt19937_64 rng(3);
  const int K = 600, d = 16, B = 6;
  const Matrix X = unit_rows(randn(K, d, rng));
  MemoryStore all(d, DType::Float32);
  all.append(X);
  std::vector<std::uint8_t> mask(static_cast<std::size_t>(B * K), 0);
  for (int b = 0; b < B; ++b)
    for (int mu = 0; mu < K; ++mu)
      mask[static_cast<std::size_t>(b * K + mu)] = (mu % (b + 2) == 0) || mu == b;  // each query its own memory too
  Matrix Q(B, d);
  const double noise[B] = {0.0, 0.02, 0.05, 0.1, 0.2, 0.3};  // so that they converge at different steps
  for (int b = 0; b < B; ++b) Q.row(b) = X.row(K - 1 - b) + randn(1, d, rng, noise[b]);  // memory K-1-b is not masked
  const auto q = to_f32(Q);
  for (KernelChoice k : kernels_here()) {
    EngineOptions eo;
    eo.kernel = k;
    eo.tile = 64;
    const ModelBEngine eb(all, 40.0, eo);
    const ModelCEngine ec(all, {Interaction::Exp, 2, 4.0}, 1.0, eo);
    RetrieveOptions ob;
    ob.max_steps = 200;
    ob.tol = 1e-6;
    ob.step = 0.5;
    ob.top_k = 5;
    ob.energy = true;
    ob.mask = {mask.data(), B};
    RetrieveOptions oc;
    oc.max_steps = 40;
    oc.tol = 1e-7;
    oc.energy = true;
    oc.mask = {mask.data(), B};
    const Retrieval rb = eb.retrieve(q.data(), B, ob), rc = ec.retrieve(q.data(), B, oc);
    std::set<long> steps_seen;
    for (int b = 0; b < B; ++b) {
      // The same query on a store without its masked memories (ids kept).
      MemoryStore kept(d, DType::Float32);
      for (int mu = 0; mu < K; ++mu)
        if (!mask[static_cast<std::size_t>(b * K + mu)]) {
          const std::uint64_t id = static_cast<std::uint64_t>(mu);
          kept.append(Matrix(X.row(mu)), std::vector<std::uint64_t>{id});
        }
      RetrieveOptions one_b = ob, one_c = oc;
      one_b.mask = {};
      one_c.mask = {};
      const Retrieval pb = ModelBEngine(kept, 40.0, eo).retrieve(&q[static_cast<std::size_t>(b * d)], 1, one_b);
      const Retrieval pc = ModelCEngine(kept, {Interaction::Exp, 2, 4.0}, 1.0, eo).retrieve(&q[static_cast<std::size_t>(b * d)], 1, one_c);
      const auto ub = static_cast<std::size_t>(b);
      // Both runs converge (to float32 rounding) to the fixed point of the kept memories: each within its
      // fixed-point gap of it, exactly computed with the plain model of the kept memories. Their energies
      // (eq. 13, eq. 21) within the float32 bounds of a pass from each returned state.
      const Matrix Xk = kept.to_matrix();
      const ModelB plain_b(Xk, 40.0);
      const ModelC plain_c(Xk, {Interaction::Exp, 2, 4.0}, 1.0);
      RetrieveOptions step_b, step_c;
      step_b.step = 0.5;
      step_b.tol = 0.0;
      step_c.tol = 0.0;
      step_b.max_steps = step_c.max_steps = 1;
      const auto Tb = [&](const Vector& v) { return plain_b.retrieve(v, step_b).state(); };
      const auto Tc = [&](const Vector& v) { return plain_c.retrieve(v, step_c).state(); };
      const PassShape shape{kept.size(), std::size_t(d), eo.tile, 0.0};
      {
        SCOPED_TRACE("B query " + std::to_string(b));
        ASSERT_TRUE(rb.converged(ub) && pb.converged(0));
        const auto g1 = fixed_point_gap(Tb, rb.state(ub)), g2 = fixed_point_gap(Tb, pb.state(0));
        EXPECT_LE((rb.state(ub) - pb.state(0)).lpNorm<Eigen::Infinity>(), g1.gap() + g2.gap());
        // The stop is decided on a change near tol, which rounding may move across it by one step.
        EXPECT_LE(std::abs(rb.steps[ub] - pb.steps[0]), 1);
        EXPECT_LE(std::abs(rb.energy[ub] - plain_b.energy(rb.state(ub))),
                  model_b_step_bound(Xk, rb.state(ub), 0.0, 40.0, shape).energy_err);
        EXPECT_LE(std::abs(pb.energy[0] - plain_b.energy(pb.state(0))),
                  model_b_step_bound(Xk, pb.state(0), 0.0, 40.0, shape).energy_err);
      }
      ASSERT_EQ(rb.top[ub].size(), 5u);
      for (std::size_t i = 0; i < 5; ++i) {
        EXPECT_EQ(rb.top[ub][i].id, pb.top[0][i].id) << "B query " << b << " rank " << i;
        EXPECT_FALSE(mask[ub * K + rb.top[ub][i].id]);
      }
      {
        SCOPED_TRACE("C query " + std::to_string(b));
        const auto g1 = fixed_point_gap(Tc, rc.state(ub)), g2 = fixed_point_gap(Tc, pc.state(0));
        EXPECT_LE((rc.state(ub) - pc.state(0)).lpNorm<Eigen::Infinity>(), g1.gap() + g2.gap());
        // F = exp(4 x) / 4: F' = exp(4 x), F'' = 4 exp(4 x); F' in double from |x| <= 1, rounded to float.
        const auto F = [](double x) { return std::exp(4 * x) / 4; };
        const auto Fp = [](double x) { return std::exp(4 * x); };
        const auto Fpp_max = [](double x, double r) { return 4 * std::exp(4 * (x + r)); };
        for (const auto& [e, st] : {std::pair{rc.energy[ub], rc.state(ub)}, std::pair{pc.energy[0], pc.state(0)}})
          EXPECT_LE(std::abs(e - plain_c.energy(st)),
                    assocmem::testing::model_c_step_bound(Xk, st, 0.0, 1.0, 0.1, F, Fp, Fpp_max, 4 + 4, shape).energy_err);
      }
      steps_seen.insert(rb.steps[ub]);
    }
    EXPECT_GE(steps_seen.size(), 2u) << "the queries should stop at different steps";
    // One shared row masks the same memories for every query; energy() takes the mask too.
    std::vector<std::uint8_t> shared(mask.begin(), mask.begin() + K);
    ob.mask = {shared.data(), 1};
    const Retrieval rs = eb.retrieve(q.data(), B, ob);
    const std::vector<double> e = eb.energy(q.data(), B, {shared.data(), 1});
    std::vector<float> s0(rs.states.begin(), rs.states.begin() + d);
    // energy() and retrieve's energy at the same state: each within the float32 bound of a pass over the
    // memories the row keeps.
    Matrix Xs(0, d);
    for (int mu = 0; mu < K; ++mu)
      if (!shared[std::size_t(mu)]) {
        Xs.conservativeResize(Xs.rows() + 1, d);
        Xs.row(Xs.rows() - 1) = X.row(mu);
      }
    const Vector v0 = Eigen::Map<const Eigen::VectorXf>(s0.data(), d).cast<double>();
    const auto at = model_b_step_bound(Xs, v0, 0.0, 40.0, PassShape{std::size_t(Xs.rows()), std::size_t(d), eo.tile, 0.0});
    EXPECT_NEAR(eb.energy(s0.data(), 1, {shared.data(), 1})[0], rs.energy[0], 2 * at.energy_err);
    EXPECT_NEAR(rs.energy[0], ModelB(Xs, 40.0).energy(v0), at.energy_err);
    EXPECT_EQ(e.size(), static_cast<std::size_t>(B));
  }
  // A mask that leaves a query no memory, or of the wrong number of rows, is refused.
  const ModelBEngine eb(all, 1.0);
  std::vector<std::uint8_t> none(static_cast<std::size_t>(K), 1);
  RetrieveOptions o;
  o.mask = {none.data(), 1};
  EXPECT_THROW_MSG(eb.retrieve(q.data(), B, o), InvalidArgument, "leaves out every memory");
  o.mask = {mask.data(), 3};
  EXPECT_THROW_MSG(eb.retrieve(q.data(), B, o), InvalidArgument, "mask: 3 rows for 6 queries");
  const ModelBEngine small(all, 1.0);
  EXPECT_THROW_MSG(ModelA(rand_pm1(3, 8, rng), {Interaction::Power, 2}).retrieve(Vector::Ones(8), o), InvalidArgument,
                   "mask");
}

// A query whose update leaves the float range stops with BlewUp and keeps its last finite state;
// the others in the batch go on.
TEST(Retrieve, BlewUpKeepsTheLastFiniteStateAndTheOthersGoOn) {
  std::mt19937_64 rng(4);
  const Matrix X = unit_rows(randn(50, 8, rng));
  MemoryStore s(8, DType::Float32);
  s.append(X);
  const ModelCEngine c(s, {Interaction::Power, 3}, 0.0);
  Matrix Q(2, 8);
  Q.row(0) = X.row(0);
  Q.row(1) = X.row(1);
  const auto q = to_f32(Q);
  RetrieveOptions o;
  o.step = 1e38;  // an Euler step overflows float32 within three
  o.max_steps = 3;
  const Retrieval r = c.retrieve(q.data(), 2, o);
  for (std::size_t b = 0; b < 2; ++b) {
    EXPECT_EQ(r.stop[b], StopReason::BlewUp);
    EXPECT_LT(r.steps[b], 3);
    for (std::size_t j = 0; j < 8; ++j) EXPECT_TRUE(std::isfinite(r.states[b * 8 + j]));
  }
  // Model B never leaves the hull of the memories: converged or max_steps, never blew_up.
  RetrieveOptions ob;
  ob.max_steps = 50;
  ob.tol = 1e-6;
  const Retrieval rb = ModelBEngine(s, 20.0).retrieve(q.data(), 2, ob);
  for (std::size_t b = 0; b < 2; ++b) EXPECT_EQ(rb.stop[b], StopReason::Converged);
}

// Clamped features keep the cue's value in models B and C (engine and plain model agree).
TEST(Retrieve, ClampHoldsFeaturesInModelsBAndC) {
  std::mt19937_64 rng(5);
  const Matrix X = unit_rows(randn(40, 10, rng));
  MemoryStore s(10, DType::Float32);
  s.append(X);
  const Vector cue = X.row(3).transpose() + randn(10, rng, 0.2);
  const auto q = to_f32(Matrix(cue.transpose()));
  RetrieveOptions o;
  o.max_steps = 20;
  o.clamp.assign(10, 0);
  for (int j = 0; j < 4; ++j) o.clamp[static_cast<std::size_t>(j)] = 1;
  const Retrieval r = ModelBEngine(s, 8.0).retrieve(q.data(), 1, o);
  const Retrieval p = ModelB(X, 8.0).retrieve(Eigen::Map<const Eigen::VectorXf>(q.data(), 10).cast<double>(), o);
  for (int j = 0; j < 4; ++j) EXPECT_EQ(r.states[static_cast<std::size_t>(j)], double(q[static_cast<std::size_t>(j)]));
  // Both (20 steps of eq. 16 with 4 features held) near the clamped fixed point: each within its gap of
  // it (the step T holds the clamped features: the map of the free ones).
  RetrieveOptions one = o;
  one.max_steps = 1;
  one.tol = 0.0;
  const ModelB plain(X, 8.0);
  const auto T = [&](const Vector& v) { return plain.retrieve(v, one).state(); };
  const auto g1 = fixed_point_gap(T, r.state(), o.clamp), g2 = fixed_point_gap(T, p.state(), o.clamp);
  ASSERT_TRUE(std::isfinite(g1.gap()) && std::isfinite(g2.gap()));
  EXPECT_LE((r.state() - p.state()).lpNorm<Eigen::Infinity>(), g1.gap() + g2.gap());
  RetrieveOptions oc = o;
  const Retrieval rc = ModelCEngine(s, {Interaction::Exp, 2, 3.0}).retrieve(q.data(), 1, oc);
  for (int j = 0; j < 4; ++j) EXPECT_EQ(rc.states[static_cast<std::size_t>(j)], double(q[static_cast<std::size_t>(j)]));
  o.clamp.assign(3, 1);
  EXPECT_THROW_MSG(ModelBEngine(s, 8.0).retrieve(q.data(), 1, o), InvalidArgument, "clamp has length 3");
}

// The monitor runs on the calling thread only; returning false cancels within the call.
TEST(Retrieve, MonitorReportsProgressOnTheCallingThreadAndCancels) {
  std::mt19937_64 rng(6);
  const Matrix X = unit_rows(randn(20000, 32, rng));
  MemoryStore s(32, DType::Float32);
  s.append(X);
  EngineOptions eo;
  eo.threads = 2;
  eo.tile = 32;
  const ModelBEngine eng(s, 4.0, eo);
  const auto q = to_f32(Matrix(X.topRows(64)));
  const std::thread::id me = std::this_thread::get_id();
  std::atomic<int> calls{0}, foreign{0};
  long last_step = 0;
  RetrieveOptions o;
  o.max_steps = 1000000;  // far more than the test lets it run
  o.tol = 0;
  o.step = 0.01;
  o.monitor = [&](const Progress& p) {
    if (std::this_thread::get_id() != me) ++foreign;
    EXPECT_GE(p.step, 1);
    EXPECT_LE(p.fraction, 1.0);
    last_step = p.step;
    return ++calls < 5;
  };
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_THROW_MSG(eng.retrieve(q.data(), 64, o), Cancelled, "cancelled");
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 5.0);
  EXPECT_EQ(calls.load(), 5);
  EXPECT_EQ(foreign.load(), 0);
  EXPECT_GE(last_step, 1);
  // Model A's engine: cancelled between neuron visits.
  MemoryStore bits(400, DType::Bits);
  bits.append(rand_pm1(20000, 400, rng));
  const ModelAEngine a(bits, {Interaction::Power, 3}, Vector(), eo);
  std::vector<std::int8_t> cues(64 * 400);
  for (auto& c : cues) c = (rng() & 1) ? 1 : -1;
  calls = 0;
  RetrieveOptions oa;
  oa.monitor = [&](const Progress&) { return ++calls < 2; };
  EXPECT_THROW_MSG(a.retrieve(cues.data(), 64, oa), Cancelled, "cancelled");
}

}  // namespace
