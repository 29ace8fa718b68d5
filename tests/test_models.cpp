// Effective models A, B, C (Section 3): the classical network as model A with n = 2, the cubic
// three-index tensor (Fig. 1), attention as one step of model B (eq. 16), the tau_h -> 0 limit of
// the full network (eqs. 5, 14, 22), stability at large beta, retrieval, and bad input.
#include <gtest/gtest.h>

#include <cmath>

#include "assocmem/dynamics.hpp"
#include "assocmem/models.hpp"
#include "test_util.hpp"

using namespace assocmem;
using assocmem::testing::flip_bits;
using assocmem::testing::rand_pm1;
using assocmem::testing::randn;

namespace {

Vector row(const Matrix& m, Eigen::Index i) { return m.row(i).transpose(); }

// Model A with F = x^2 is the classical network: T = sum_mu xi_mu xi_mu^T, zero diagonal.
TEST(ModelA, PowerTwoIsTheClassicalHopfieldNetwork) {
  std::mt19937_64 rng(31);
  const Matrix xi = rand_pm1(6, 20, rng);
  const ModelA A(xi, {Interaction::Power, 2});
  Matrix T = xi.transpose() * xi;
  const Matrix T_full = T;
  T.diagonal().setZero();
  for (int trial = 0; trial < 10; ++trial) {
    const Vector s = row(rand_pm1(1, 20, rng), 0);
    // eq. (8): E = -sum_mu (xi_mu.s)^2 = -s^T T_full s.
    EXPECT_NEAR(A.energy(s), -s.dot(T_full * s), 1e-9);
    // The KH-2016 field for n = 2 is 4 sum_{j != i} T_ij s_j: the classical local field.
    const Vector h = T * s;
    for (Eigen::Index i = 0; i < 20; ++i) EXPECT_NEAR(A.field(s, i), 4.0 * h[i], 1e-9);
    // One synchronous sweep is s <- Sign(T s) (ties keep s_i).
    RetrieveOptions o;
    o.order = UpdateOrder::Synchronous;
    o.max_steps = 1;
    const Vector next = A.retrieve(s, o).state();
    for (Eigen::Index i = 0; i < 20; ++i) EXPECT_EQ(next[i], h[i] > 0 ? 1.0 : (h[i] < 0 ? -1.0 : s[i]));
  }
}

// Fig. 1: with F = x^3 the energy is -sum_{ijk} T_ijk s_i s_j s_k, T_ijk = sum_mu xi_mui xi_muj xi_muk.
TEST(ModelA, CubicEnergyIsTheThreeIndexTensor) {
  std::mt19937_64 rng(32);
  const int N = 6;
  const Matrix xi = rand_pm1(4, N, rng);
  const ModelA A(xi, {Interaction::Power, 3});
  for (int trial = 0; trial < 8; ++trial) {
    const Vector s = row(rand_pm1(1, N, rng), 0);
    double tensor = 0;
    for (int i = 0; i < N; ++i)
      for (int j = 0; j < N; ++j)
        for (int k = 0; k < N; ++k) {
          double Tijk = 0;
          for (Eigen::Index mu = 0; mu < xi.rows(); ++mu) Tijk += xi(mu, i) * xi(mu, j) * xi(mu, k);
          tensor += Tijk * s[i] * s[j] * s[k];
        }
    EXPECT_NEAR(A.energy(s), -tensor, 1e-9);
  }
}

// The field is the energy difference of flipping neuron i, for every F and with a current.
TEST(ModelA, FieldIsTheEnergyDifference) {
  std::mt19937_64 rng(33);
  const Matrix xi = rand_pm1(15, 12, rng);
  const Vector I = randn(12, rng, 2.0);
  for (InteractionSpec F : {InteractionSpec{Interaction::Power, 3}, InteractionSpec{Interaction::RectifiedPower, 4},
                            InteractionSpec{Interaction::Exp, 2, 0.7}}) {
    const ModelA A(xi, F, I);
    const Vector s = row(rand_pm1(1, 12, rng), 0);
    for (Eigen::Index i = 0; i < 12; ++i) {
      Vector sp = s, sm = s;
      sp[i] = 1;
      sm[i] = -1;
      const double d = A.energy(sm) - A.energy(sp);
      EXPECT_NEAR(A.field(s, i), d, 1e-9 * (1 + std::fabs(d))) << to_string(F.kind) << " i=" << i;
    }
  }
}

// Asynchronous updates never increase eq. (8) and end at a fixed point.
TEST(ModelA, AsynchronousUpdatesDescendToAFixedPoint) {
  std::mt19937_64 rng(34);
  const Matrix xi = rand_pm1(40, 30, rng);
  for (InteractionSpec F : {InteractionSpec{Interaction::Power, 2}, InteractionSpec{Interaction::Power, 3},
                            InteractionSpec{Interaction::RectifiedPower, 3}, InteractionSpec{Interaction::Exp, 2, 0.3}}) {
    const ModelA A(xi, F);
    for (UpdateOrder order : {UpdateOrder::RandomAsync, UpdateOrder::FixedAsync}) {
      Vector s = row(rand_pm1(1, 30, rng), 0);
      double E = A.energy(s);
      RetrieveOptions one;
      one.order = order;
      one.max_steps = 1;
      one.seed = 5;
      for (int sweep = 0; sweep < 50; ++sweep) {
        s = A.retrieve(s, one).state();
        const double En = A.energy(s);
        EXPECT_LE(En, E + 1e-9 * (1 + std::fabs(E))) << to_string(F.kind);
        E = En;
      }
      RetrieveOptions o;
      o.order = order;
      const auto r = A.retrieve(s, o);
      ASSERT_TRUE(r.converged());
      for (Eigen::Index i = 0; i < 30; ++i) {
        const double f = A.field(r.state(), i);
        if (f != 0) {
          EXPECT_EQ(r.state()[i], f > 0 ? 1.0 : -1.0);  // every neuron agrees with its field
        }
      }
    }
  }
}

// Dense memory recalls far beyond 0.14 N: N = 40, K = 40 (7x the classical 0.14 N), n = 3
// (KH 2016 eq. 6: K_max ~ N^2 / (6 ln N) = 72), cue with 4 flipped bits.
TEST(ModelA, DenseMemoryRecallsBeyondClassicalCapacity) {
  std::mt19937_64 rng(35);
  const int N = 40, K = 40;
  const Matrix xi = rand_pm1(K, N, rng);
  const ModelA dense(xi, {Interaction::Power, 3});
  const ModelA classical(xi, {Interaction::Power, 2});
  int dense_ok = 0, classical_ok = 0;
  for (int mu = 0; mu < 20; ++mu) {
    const Vector cue = flip_bits(row(xi, mu), 4, rng);
    dense_ok += dense.retrieve(cue).state() == row(xi, mu);
    classical_ok += classical.retrieve(cue).state() == row(xi, mu);
  }
  EXPECT_GE(dense_ok, 19);
  EXPECT_LE(classical_ok, 5);
}

// F = exp at N = 2000: exp(2000) overflows a double, the log-domain field does not.
TEST(ModelA, ExpFieldIsStableBeyondOverflow) {
  std::mt19937_64 rng(36);
  const int N = 2000;
  const Matrix xi = rand_pm1(5, N, rng);
  const ModelA A(xi, {Interaction::Exp, 2, 1.0});
  const Vector cue = flip_bits(row(xi, 2), 300, rng);
  for (Eigen::Index i = 0; i < 50; ++i) {
    const double f = A.field(cue, i);
    EXPECT_FALSE(std::isnan(f));
    EXPECT_EQ(f > 0 ? 1.0 : -1.0, xi(2, i));  // the dominant memory decides every bit
  }
  RetrieveOptions o;
  o.order = UpdateOrder::Synchronous;
  const auto r = A.retrieve(cue, o);
  EXPECT_TRUE(r.converged());
  EXPECT_TRUE(r.state() == row(xi, 2));
  // A current of 1e300 against the memory term (~e^1400) does not change the sign, and no NaN.
  const ModelA Ai(xi, {Interaction::Exp, 2, 1.0}, Vector(-1e300 * row(xi, 2)));
  for (Eigen::Index i = 0; i < 20; ++i) EXPECT_EQ(Ai.field(cue, i) > 0 ? 1.0 : -1.0, xi(2, i));
}

// eq. (16): one step with dt = tau_f is softmax attention, v <- X^T softmax(beta X v).
TEST(ModelB, OneStepIsSoftmaxAttention) {
  std::mt19937_64 rng(41);
  const Matrix X = randn(9, 5, rng);
  for (double beta : {0.3, 1.0, 4.0}) {
    const ModelB B(X, beta);
    const Vector q = randn(5, rng);
    const Vector scores = beta * (X * q);
    const Vector w = (scores.array() - scores.maxCoeff()).exp().matrix();
    const Vector attention = X.transpose() * (w / w.sum());
    EXPECT_LE((B.update(q, 1.0) - attention).norm(), 1e-13);
    // eq. (15) with dt/tau_f = 0.25 is the convex combination.
    EXPECT_LE((B.update(q, 0.25) - (0.75 * q + 0.25 * attention)).norm(), 1e-13);
  }
}

TEST(ModelB, EnergyDecreasesAndRetrievesAStoredPattern) {
  std::mt19937_64 rng(42);
  const Matrix X = randn(20, 16, rng);
  const ModelB B(X, 2.0);
  Vector v = row(X, 3) + randn(16, rng, 0.3);
  double E = B.energy(v);
  for (int k = 0; k < 10; ++k) {
    v = B.update(v);
    EXPECT_LE(B.energy(v), E + 1e-12);
    E = B.energy(v);
  }
  RetrieveOptions ro;
  ro.max_steps = 100;
  ro.tol = 1e-10;
  const auto r = B.retrieve(row(X, 3) + randn(16, rng, 0.3), ro);
  EXPECT_TRUE(r.converged());
  EXPECT_LE((r.state() - row(X, 3)).norm(), 1e-3 * row(X, 3).norm());
  Eigen::Index best;
  B.weights(r.state()).maxCoeff(&best);
  EXPECT_EQ(best, 3);
}

TEST(ModelB, StableAtBetaTenThousand) {
  std::mt19937_64 rng(43);
  Matrix X = randn(50, 8, rng);
  X.rowwise().normalize();  // unit patterns: each is its own best match, a fixed point at large beta
  const ModelB B(X, 1e4);
  const Vector q = row(X, 7);
  const Vector w = B.weights(q);
  EXPECT_TRUE(w.allFinite());
  EXPECT_NEAR(w.sum(), 1.0, 1e-12);
  EXPECT_TRUE(std::isfinite(B.energy(q)));
  const auto r = B.retrieve(q);
  EXPECT_TRUE(r.state().allFinite());
  EXPECT_LE((r.state() - q).norm(), 1e-9);
}

// Limit tau_h -> 0: integrating the full network (eq. 1) with tau_h / tau_f = 1e-3 reaches the
// same fixed point as the effective model (eq. 16 iterated, eq. 22 integrated) to 1e-5.
TEST(Limits, FullNetworkFixedPointIsModelBFixedPoint) {
  std::mt19937_64 rng(51);
  const Matrix X = randn(6, 10, rng);
  const ModelB B(X, 1.5);
  for (int mu : {0, 4}) {
    const Vector v0 = row(X, mu) + randn(10, rng, 0.2);
    RetrieveOptions bo;
    bo.max_steps = 1000;
    bo.tol = 1e-13;
    const auto eff = B.retrieve(v0, bo);
    ASSERT_TRUE(eff.converged());
    const Network full = B.network().with_time_constants(1.0, 1e-3);
    SimulateOptions o;
    o.method = Method::BDF;
    o.t_end = 1e3;
    o.rtol = 1e-11;
    o.atol = 1e-13;
    o.fixed_point_tol = 1e-11;
    const auto tr = simulate(full, v0, Vector(), o);
    EXPECT_EQ(tr.result.reason, IntegrationStop::FixedPoint);
    EXPECT_LE((tr.v.back() - eff.state()).lpNorm<Eigen::Infinity>(), 1e-5);
    // And the hidden layer sits at its steady state h = xi g (eq. 5).
    EXPECT_LE((tr.h.back() - X * tr.v.back()).lpNorm<Eigen::Infinity>(), 1e-5);
  }
}

// Model A as a limit of the two-body network (Section 3.1), stated precisely. With a steep feature
// activation (g = tanh(100 v): log_cosh gain 100, a smooth stand-in for Sign) and fast hidden neurons
// (tau_h = 0.01), a settled state has v_i = sum_mu xi_mu,i F'(xi_mu . sigma) with sigma = Sign(v): the
// network reproduces the *gradient* condition of eq. (8), sigma_i = Sign(sum_mu xi_mu,i F'(xi_mu.sigma)),
// exactly - checked at every neuron of every cue. The Krotov-Hopfield rule uses the finite difference
// F(r + 1) - F(r - 1) instead of 2 F'(r), and it stops only at single-flip minima of eq. (8). The
// network's end states are not always such minima: 82-84% are, from 11 to 19 of 20 cues per memory set
// (docs/results.md: 10 sets; 411 of 500 cues over 25 other sets). Issue 23: the old test also asked for >= 15 of 20 here, a rate above
// the typical one that held on this seed only; a statistic of the landscape is not asserted.
TEST(Limits, TwoBodyNetworkMeetsTheGradientConditionOfEq8) {
  std::mt19937_64 rng(53);
  const int N = 30, K = 40, cues = 20;
  const Matrix X = rand_pm1(K, N, rng);
  const ModelA A(X, {Interaction::RectifiedPower, 3});
  const Network net(X, lagrangians::log_cosh(100.0), lagrangians::rectified_power(3), {1.0, 0.01, 1.0, Vector()});
  const AdditivePtr F = lagrangians::rectified_power(3);
  SimulateOptions o;
  o.method = Method::BDF;
  o.t_end = 200;
  o.fixed_point_tol = 1e-6;
  o.max_steps = 200000;
  auto is_minimum = [&](const Vector& sigma) {
    for (Eigen::Index i = 0; i < N; ++i)
      if (A.field(sigma, i) * sigma[i] < 0) return false;  // flipping sigma_i would lower eq. (8)
    return true;
  };
  const auto sign = [](const Vector& v) { return Vector(v.unaryExpr([](double x) { return x > 0 ? 1.0 : -1.0; })); };
  int rule = 0;
  for (int c = 0; c < cues; ++c) {
    const Vector s0 = flip_bits(row(X, c), 6, rng);
    const Trajectory tr = simulate(net, s0, Vector(), o);
    const Vector& v = tr.v.back();
    const Vector sigma = sign(v);
    ASSERT_GT(v.cwiseAbs().minCoeff() * 100.0, 5.0) << "cue " << c << ": not saturated";
    // The gradient condition of eq. (8), from an independent formula.
    const Vector h = X * sigma;
    Vector grad = Vector::Zero(N);
    for (Eigen::Index mu = 0; mu < K; ++mu) grad += X.row(mu).transpose() * F->dG(h[mu]);
    EXPECT_TRUE(sign(grad) == sigma) << "cue " << c;
    RetrieveOptions ro;
    ro.order = UpdateOrder::RandomAsync;
    ro.seed = static_cast<std::uint64_t>(c);
    const Retrieval r = A.retrieve(s0, ro);
    ASSERT_TRUE(r.converged());
    rule += is_minimum(r.state());
  }
  EXPECT_EQ(rule, cues);  // the rule stops only at single-flip minima
}

TEST(Limits, FullNetworkFixedPointIsModelCFixedPoint) {
  std::mt19937_64 rng(52);
  const Matrix X = randn(6, 10, rng, 1.0 / std::sqrt(10.0)) * 3.0;
  const ModelC C(X, {Interaction::Exp, 2, 1.0}, 1.0);
  for (int mu : {1, 5}) {
    const Vector v0 = row(X, mu) + randn(10, rng, 0.1);
    RetrieveOptions co;
    co.step = 0.05;
    co.max_steps = 200000;
    co.tol = 1e-13;
    const auto eff = C.retrieve(v0, co);
    ASSERT_TRUE(eff.converged());
    const Network full = C.network().with_time_constants(1.0, 1e-3);
    SimulateOptions o;
    o.method = Method::BDF;
    o.t_end = 1e3;
    o.rtol = 1e-11;
    o.atol = 1e-13;
    o.fixed_point_tol = 1e-11;
    const auto tr = simulate(full, v0, Vector(), o);
    EXPECT_EQ(tr.result.reason, IntegrationStop::FixedPoint);
    EXPECT_LE((tr.v.back() - eff.state()).lpNorm<Eigen::Infinity>(), 1e-5);
    // The fixed point of eq. (22): alpha v = xi^T f(xi v/|v|).
    EXPECT_LE(C.velocity(eff.state()).lpNorm<Eigen::Infinity>(), 1e-10);
  }
}

// Model C's energy (eq. 21) does not increase along small Euler steps of eq. (22), for any alpha.
TEST(ModelC, EnergyDecreasesForAnyAlpha) {
  std::mt19937_64 rng(53);
  const Matrix X = randn(12, 8, rng);
  for (double alpha : {0.0, 1.0, 3.0}) {
    const ModelC C(X, {Interaction::RectifiedPower, 3}, alpha);
    Vector v = randn(8, rng);
    double E = C.energy(v);
    for (int k = 0; k < 200; ++k) {
      v += 1e-3 * C.velocity(v);
      const double En = C.energy(v);
      EXPECT_LE(En, E + 1e-10 * (1 + std::fabs(E))) << "alpha=" << alpha;
      E = En;
    }
    // Scale invariance of eq. (21).
    EXPECT_NEAR(C.energy(3.7 * v), C.energy(v), 1e-12 * (1 + std::fabs(E)));
  }
}

TEST(Models, BadInputThrowsNamingTheParameter) {
  std::mt19937_64 rng(61);
  const Matrix X = rand_pm1(5, 8, rng);
  EXPECT_THROW_MSG(ModelB(X, 0.0), InvalidArgument, "beta");
  EXPECT_THROW_MSG(ModelB(X, -2.0), InvalidArgument, "beta");
  EXPECT_THROW_MSG(ModelB(Matrix(0, 8), 1.0), InvalidArgument, "empty");
  EXPECT_THROW_MSG(ModelA(X, {Interaction::Power, 0.5}), InvalidArgument, "n must");
  EXPECT_THROW_MSG(ModelA(X, {Interaction::Exp, 2, 0.0}), InvalidArgument, "beta");
  EXPECT_THROW_MSG(ModelA(X, {Interaction::Power, 2}, Vector::Ones(3)), InvalidArgument, "current I");
  EXPECT_THROW_MSG(ModelC(X, {Interaction::Power, 2}, -1.0), InvalidArgument, "alpha");
  Matrix bad = X;
  bad(0, 0) = INFINITY;
  EXPECT_THROW_MSG(ModelA(bad, {Interaction::Power, 2}), InvalidArgument, "xi contains NaN or Inf");

  const ModelA A(X, {Interaction::Power, 3});
  EXPECT_THROW_MSG(A.energy(Vector::Ones(7)), InvalidArgument, "length 7");
  Vector half = Vector::Ones(8);
  half[2] = 0.5;
  EXPECT_THROW_MSG(A.retrieve(half), InvalidArgument, "+1 or -1");
  RetrieveOptions ao;
  ao.max_steps = 0;
  EXPECT_THROW_MSG(A.retrieve(Vector::Ones(8), ao), InvalidArgument, "max_steps");
  EXPECT_THROW_MSG(A.field(Vector::Ones(8), 8), InvalidArgument, "neuron index");

  const ModelB B(X, 1.0);
  Vector q = Vector::Ones(8);
  q[1] = std::nan("");
  EXPECT_THROW_MSG(B.retrieve(q), InvalidArgument, "v0 contains NaN");
  RetrieveOptions bo;
  bo.step = 1.5;
  EXPECT_THROW_MSG(B.retrieve(Vector::Ones(8), bo), InvalidArgument, "step");
  bo = {};
  bo.tol = -1;
  EXPECT_THROW_MSG(B.retrieve(Vector::Ones(8), bo), InvalidArgument, "tol");

  const ModelC C(X, {Interaction::Exp, 2, 1.0});
  EXPECT_THROW_MSG(C.retrieve(Vector::Zero(8)), InvalidArgument, "non-zero");
  EXPECT_THROW_MSG(parse_interaction("cubic"), InvalidArgument, "F must be");
  EXPECT_THROW_MSG(parse_update_order("shuffle"), InvalidArgument, "order");
}

}  // namespace
