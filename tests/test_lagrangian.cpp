// Lagrangians (eqs. 3, 6, 11, 17, 20): gradient and Hessian-vector product against finite
// differences, positive semi-definiteness where claimed, stability, parameter validation.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "assocmem/lagrangian.hpp"
#include "test_util.hpp"

using namespace assocmem;
using assocmem::testing::randn;

namespace {

struct Case {
  std::string label;
  LagrangianPtr L;
  double scale;  // spread of the random probe points
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.label; }

std::vector<Case> all_cases() {
  namespace lg = lagrangians;
  Vector delta(6);
  delta << 0.1, -0.2, 0.3, 0.0, 0.5, -0.4;
  return {
      {"identity", lg::identity(), 1.0},
      {"abs", lg::abs(), 1.0},
      {"log_cosh", lg::log_cosh(2.5), 1.0},
      {"softplus", lg::softplus(1.7), 1.0},
      {"power2", lg::power(2), 1.0},
      {"power3", lg::power(3), 1.0},
      {"power4", lg::power(4), 1.0},
      {"rectified3", lg::rectified_power(3), 1.0},
      {"rectified2.5", lg::rectified_power(2.5), 1.0},
      {"exp", lg::exp(1.3), 1.0},
      {"log_sum_exp", lg::log_sum_exp(2.0), 1.0},
      {"spherical", lg::spherical(), 1.0},
      {"layer_norm", lg::layer_norm(1.5, 1e-3), 1.0},
      {"layer_norm_bias", lg::layer_norm(0.7, 1e-2, delta), 1.0},
  };
}

// A probe point that keeps clear of the non-smooth points of |x| and the rectified powers.
Vector probe(std::mt19937_64& rng, Eigen::Index n, double scale) {
  Vector x = randn(n, rng, scale);
  for (Eigen::Index i = 0; i < n; ++i)
    if (std::fabs(x[i]) < 0.05) x[i] = x[i] < 0 ? -0.05 : 0.05;
  return x;
}

class LagrangianTest : public ::testing::TestWithParam<Case> {};

// Tolerances: central differences with h = 1e-6 have error O(h^2 L''') + O(eps/h) ~ 1e-9 relative.
TEST_P(LagrangianTest, GradientIsFiniteDifferenceOfValue) {
  const auto& c = GetParam();
  std::mt19937_64 rng(11);
  const double h = 1e-6;
  for (int trial = 0; trial < 20; ++trial) {
    const Vector x = probe(rng, 6, c.scale);
    const Vector g = c.L->gradient(x);
    for (Eigen::Index i = 0; i < x.size(); ++i) {
      Vector xp = x, xm = x;
      xp[i] += h;
      xm[i] -= h;
      const double fd = (c.L->value(xp) - c.L->value(xm)) / (2 * h);
      EXPECT_NEAR(g[i], fd, 1e-6 * (1 + std::fabs(fd))) << c.label << " i=" << i;
    }
  }
}

TEST_P(LagrangianTest, HvpIsFiniteDifferenceOfGradient) {
  const auto& c = GetParam();
  std::mt19937_64 rng(12);
  const double h = 1e-6;
  for (int trial = 0; trial < 20; ++trial) {
    const Vector x = probe(rng, 6, c.scale);
    const Vector u = randn(6, rng);
    const Vector Hu = c.L->hvp(x, u);
    const Vector fd = (c.L->gradient(Vector(x + h * u)) - c.L->gradient(Vector(x - h * u))) / (2 * h);
    EXPECT_LE((Hu - fd).lpNorm<Eigen::Infinity>(), 1e-5 * (1 + fd.lpNorm<Eigen::Infinity>())) << c.label;
  }
}

TEST_P(LagrangianTest, HessianIsPsdWhereClaimed) {
  const auto& c = GetParam();
  std::mt19937_64 rng(13);
  int claimed = 0;
  for (int trial = 0; trial < 200; ++trial) {
    const Vector x = probe(rng, 6, 2.0);
    if (!c.L->hessian_psd_at(x)) continue;
    ++claimed;
    for (int k = 0; k < 5; ++k) {
      const Vector u = randn(6, rng);
      EXPECT_GE(u.dot(c.L->hvp(x, u)), -1e-12 * (1 + u.squaredNorm())) << c.label;
    }
  }
  EXPECT_GT(claimed, 0) << c.label << ": no probe point had a PSD claim";
  EXPECT_FALSE(c.L->psd_region().empty());
}

INSTANTIATE_TEST_SUITE_P(All, LagrangianTest, ::testing::ValuesIn(all_cases()),
                         [](const auto& info) {
                           std::string s = info.param.label;
                           for (auto& ch : s)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return s;
                         });

// The claim is sharp: an odd power has a negative curvature where it says it is not PSD.
TEST(Lagrangian, OddPowerIsNotPsdForNegativeArguments) {
  const auto L = lagrangians::power(3);
  Vector x(2);
  x << -1.0, 0.5;
  EXPECT_FALSE(L->hessian_psd_at(x));
  Vector u(2);
  u << 1.0, 0.0;
  EXPECT_LT(u.dot(L->hvp(x, u)), 0.0);
}

// eq. (20): the spherical Hessian annihilates v; log-sum-exp and layer norm annihilate (1,...,1).
TEST(Lagrangian, ZeroModes) {
  std::mt19937_64 rng(3);
  const Vector x = randn(7, rng);
  EXPECT_LE(lagrangians::spherical()->hvp(x, x).norm(), 1e-14);
  const Vector ones = Vector::Ones(7);
  EXPECT_LE(lagrangians::log_sum_exp(3.0)->hvp(x, ones).norm(), 1e-14);
  EXPECT_LE(lagrangians::layer_norm(2.0, 1e-4)->hvp(x, ones).norm(), 1e-12);
}

// eq. (12): the activation of log-sum-exp is softmax, and (7): |x| gives Sign.
TEST(Lagrangian, ActivationsAreTheNamedFunctions) {
  Vector x(4);
  x << 0.3, -1.2, 2.0, 0.0;
  const Vector p = lagrangians::log_sum_exp(1.0)->gradient(x);
  const Vector e = x.array().exp();
  EXPECT_LE((p - e / e.sum()).norm(), 1e-15);
  const Vector s = lagrangians::abs()->gradient(x);
  EXPECT_EQ(s[0], 1.0);
  EXPECT_EQ(s[1], -1.0);
  EXPECT_EQ(s[3], 0.0);
  const Vector t = lagrangians::log_cosh(3.0)->gradient(x);
  EXPECT_NEAR(t[1], std::tanh(-3.6), 1e-15);
  EXPECT_NEAR(lagrangians::softplus(2.0)->gradient(x)[0], 1.0 / (1.0 + std::exp(-0.6)), 1e-15);
}

// log-sum-exp and softmax are stable: no overflow at beta = 1e4.
TEST(Lagrangian, LogSumExpIsStableAtLargeBeta) {
  const auto L = lagrangians::log_sum_exp(1e4);
  Vector x(3);
  x << 1.0, 0.999, -5.0;
  const double v = L->value(x);
  EXPECT_TRUE(std::isfinite(v));
  EXPECT_NEAR(v, 1.0, 1e-8);  // (1/beta) log(e^{beta} (1 + e^{-10} + ...)) = 1 + ~4.5e-9
  const Vector p = L->gradient(x);
  EXPECT_TRUE(p.allFinite());
  EXPECT_NEAR(p.sum(), 1.0, 1e-15);
  EXPECT_NEAR(p[0], 1.0 / (1.0 + std::exp(-10.0)), 1e-12);
  EXPECT_TRUE(L->hvp(x, x).allFinite());
  // log cosh and softplus at huge arguments stay finite and exact.
  EXPECT_NEAR(lagrangians::log_cosh(1e4)->value(Vector::Constant(1, 1.0)), 1.0 - std::log(2.0) / 1e4, 1e-12);
  EXPECT_NEAR(lagrangians::softplus(1e4)->value(Vector::Constant(1, 1.0)), 1.0, 1e-12);
  EXPECT_NEAR(lagrangians::softplus(1e4)->value(Vector::Constant(1, -1.0)), 0.0, 1e-12);
}

TEST(Lagrangian, BadParametersThrowNamingTheParameter) {
  using lagrangians::exp;
  for (double b : {0.0, -1.0, std::nan(""), double(INFINITY)}) {
    EXPECT_THROW_MSG(lagrangians::log_cosh(b), InvalidArgument, "beta");
    EXPECT_THROW_MSG(lagrangians::softplus(b), InvalidArgument, "beta");
    EXPECT_THROW_MSG(exp(b), InvalidArgument, "beta");
    EXPECT_THROW_MSG(lagrangians::log_sum_exp(b), InvalidArgument, "beta");
  }
  EXPECT_THROW_MSG(lagrangians::power(0.5), InvalidArgument, "n must");
  EXPECT_THROW_MSG(lagrangians::power(2.5), InvalidArgument, "integer");
  EXPECT_THROW_MSG(lagrangians::rectified_power(0.0), InvalidArgument, "n must");
  EXPECT_THROW_MSG(lagrangians::layer_norm(0.0), InvalidArgument, "gamma");
  EXPECT_THROW_MSG(lagrangians::layer_norm(1.0, -1.0), InvalidArgument, "eps");
  EXPECT_THROW_MSG(lagrangians::spherical()->gradient(Vector::Zero(3)), InvalidArgument, "x = 0");
  EXPECT_THROW_MSG(lagrangians::identity()->hvp(Vector::Zero(3), Vector::Zero(2)), InvalidArgument, "length");
  EXPECT_THROW_MSG(lagrangians::layer_norm(1.0, 1e-5, Vector::Ones(2))->value(Vector::Ones(3)), InvalidArgument,
                   "delta");
}

}  // namespace

namespace {
TEST(Lagrangian, ByNameBuildsTheNamedLagrangian) {
  lagrangians::LagrangianParams p;
  p.beta = 2.5;
  p.n = 3;
  EXPECT_EQ(lagrangians::by_name("log_cosh", p)->name(), lagrangians::log_cosh(2.5)->name());
  EXPECT_EQ(lagrangians::by_name("power", p)->name(), "power(n=3)");
  EXPECT_EQ(lagrangians::by_name("spherical")->name(), "spherical");
  EXPECT_THROW_MSG(lagrangians::by_name("tanh"), InvalidArgument, "unknown Lagrangian 'tanh'");
  p.beta = -1;
  EXPECT_THROW_MSG(lagrangians::by_name("exp", p), InvalidArgument, "beta");
}
}  // namespace
