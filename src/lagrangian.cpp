// Lagrangians of a neuron layer: eqs. (3), (6), (11), (17), (18), (20) of Krotov & Hopfield 2021.
#include "assocmem/lagrangian.hpp"

#include <cmath>
#include <limits>

#include "assocmem/error.hpp"

namespace assocmem {

// ---------------------------------------------------------------------------------------------
// Stable scalar helpers.
namespace numerics {

double log_sum_exp(const Vector& x) {
  if (x.size() == 0) return -std::numeric_limits<double>::infinity();
  const double m = x.maxCoeff();
  if (!std::isfinite(m)) return m;  // +inf, or -inf when every entry is -inf
  return m + std::log((x.array() - m).exp().sum());
}

void softmax(const Vector& x, Vector& out) {
  out.resize(x.size());
  if (x.size() == 0) return;
  const double m = x.maxCoeff();
  out = (x.array() - m).exp().matrix();
  out /= out.sum();
}

// log sum_i exp(beta x_i) / beta and softmax(beta x) with the shift taken before the scaling:
// beta (x_i - max x) is <= 0 and exactly 0 at the maximum, so neither overflows however large
// beta x is (beta = 1e308, x = 1e308). eq. (11), (12) with the inverse temperature.
double log_sum_exp_scaled(double beta, const Vector& x) {
  if (x.size() == 0) return -std::numeric_limits<double>::infinity();
  const double m = x.maxCoeff();
  if (!std::isfinite(m)) return m;
  return m + std::log((beta * (x.array() - m)).exp().sum()) / beta;
}

void softmax_scaled(double beta, const Vector& x, Vector& out) {
  out.resize(x.size());
  if (x.size() == 0) return;
  const double m = x.maxCoeff();
  out = (beta * (x.array() - m)).exp().matrix();
  out /= out.sum();
}

double log_cosh(double x) {
  const double a = std::fabs(x);
  return a + std::log1p(std::exp(-2.0 * a)) - std::log(2.0);
}

double softplus(double x) { return x > 0 ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x)); }

double sigmoid(double x) {
  if (x >= 0) return 1.0 / (1.0 + std::exp(-x));
  const double e = std::exp(x);
  return e / (1.0 + e);
}

}  // namespace numerics

namespace {

void check_finite_beta(double beta, const char* who) {
  ASSOCMEM_CHECK_ARG(std::isfinite(beta) && beta > 0, who, ": beta must be finite and > 0, got ", beta);
}

void check_same_size(const Vector& x, const Vector& u) {
  ASSOCMEM_CHECK_ARG(x.size() == u.size(), "hvp: direction u has length ", u.size(),
                     " but the state x has length ", x.size());
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Additive Lagrangians, eq. (6): L(x) = sum_i G(x_i); Hessian diag(G''(x_i)) (eq. 10).

double AdditiveLagrangian::value(const Vector& x) const {
  double s = 0;
  for (Eigen::Index i = 0; i < x.size(); ++i) s += G(x[i]);
  return s;
}

void AdditiveLagrangian::gradient(const Vector& x, Vector& out) const {
  out.resize(x.size());
  for (Eigen::Index i = 0; i < x.size(); ++i) out[i] = dG(x[i]);
}

void AdditiveLagrangian::hvp(const Vector& x, const Vector& u, Vector& out) const {
  check_same_size(x, u);
  out.resize(x.size());
  for (Eigen::Index i = 0; i < x.size(); ++i) out[i] = d2G(x[i]) * u[i];
}

double AdditiveLagrangian::sup_on_ball(double R, Eigen::Index n) const {
  return double(n) * std::max({G(R), G(-R), G(0.0)});
}

bool AdditiveLagrangian::hessian_psd_at(const Vector& x) const {
  for (Eigen::Index i = 0; i < x.size(); ++i)
    if (!convex_at(x[i])) return false;
  return true;
}

namespace {

class Identity final : public AdditiveLagrangian {
 public:
  std::string name() const override { return "identity"; }
  double activation_bound(Eigen::Index) const override { return INFINITY; }
  double activation_growth() const override { return 1.0; }
  std::string psd_region() const override { return "everywhere"; }
  double G(double x) const override { return 0.5 * x * x; }
  double dG(double x) const override { return x; }
  double d2G(double) const override { return 1.0; }
  bool convex_at(double) const override { return true; }
};

class Abs final : public AdditiveLagrangian {
 public:
  std::string name() const override { return "abs"; }
  double activation_bound(Eigen::Index n) const override { return std::sqrt(double(n)); }  // |Sign| <= 1
  double activation_growth() const override { return 0.0; }
  bool radial_zero_mode() const override { return true; }  // G'' = 0: M x = 0
  std::string psd_region() const override {
    return "everywhere (convex; G'' = 0 away from 0, a delta at 0)";
  }
  double G(double x) const override { return std::fabs(x); }
  // eq. (7): sigma = Sign(v); Sign(0) = 0, the symmetric subgradient.
  double dG(double x) const override { return x > 0 ? 1.0 : (x < 0 ? -1.0 : 0.0); }
  double d2G(double) const override { return 0.0; }
  bool convex_at(double) const override { return true; }
};

class LogCosh final : public AdditiveLagrangian {
  // tanh: |g| <= 1
  double activation_bound(Eigen::Index n) const override { return std::sqrt(double(n)); }
  double activation_growth() const override { return 0.0; }
 public:
  explicit LogCosh(double beta) : beta_(beta) { check_finite_beta(beta, "log_cosh"); }
  std::string name() const override { return detail::concat("log_cosh(beta=", beta_, ")"); }
  std::string psd_region() const override { return "everywhere"; }
  double G(double x) const override { return numerics::log_cosh(beta_ * x) / beta_; }
  double dG(double x) const override { return std::tanh(beta_ * x); }
  double d2G(double x) const override {
    const double t = std::tanh(beta_ * x);
    return beta_ * (1.0 - t * t);
  }
  bool convex_at(double) const override { return true; }

 private:
  double beta_;
};

class Softplus final : public AdditiveLagrangian {
  // the logistic sigmoid: 0 < g < 1
  double activation_bound(Eigen::Index n) const override { return std::sqrt(double(n)); }
  double activation_growth() const override { return 0.0; }
 public:
  explicit Softplus(double beta) : beta_(beta) { check_finite_beta(beta, "softplus"); }
  std::string name() const override { return detail::concat("softplus(beta=", beta_, ")"); }
  std::string psd_region() const override { return "everywhere"; }
  double G(double x) const override { return numerics::softplus(beta_ * x) / beta_; }
  double dG(double x) const override { return numerics::sigmoid(beta_ * x); }
  double d2G(double x) const override {
    const double s = numerics::sigmoid(beta_ * x);
    return beta_ * s * (1.0 - s);
  }
  bool convex_at(double) const override { return true; }

 private:
  double beta_;
};

// x^k for real k >= 0 and x >= 0, or integer k and any x. k = 0 gives 1.
double powk(double x, double k) { return k == 0 ? 1.0 : std::pow(x, k); }

class Power final : public AdditiveLagrangian {
  double activation_bound(Eigen::Index n) const override { return n_ == 1 ? std::sqrt(double(n)) : INFINITY; }
  double activation_growth() const override { return n_ - 1; }
 public:
  explicit Power(double n) : n_(n) {
    ASSOCMEM_CHECK_ARG(std::isfinite(n) && n >= 1 && n == std::floor(n),
                       "power: n must be an integer >= 1, got ", n,
                       " (use rectified_power for a real exponent)");
  }
  std::string name() const override { return detail::concat("power(n=", n_, ")"); }
  std::string psd_region() const override {
    return odd_ge3() ? "x >= 0 (n odd: G''(x) = n(n-1)x^(n-2) < 0 for x < 0)" : "everywhere";
  }
  double G(double x) const override { return powk(x, n_); }
  double dG(double x) const override { return n_ * powk(x, n_ - 1); }
  double d2G(double x) const override { return n_ * (n_ - 1) * powk(x, n_ - 2); }
  bool convex_at(double x) const override { return !odd_ge3() || x >= 0; }

 private:
  bool odd_ge3() const { return n_ >= 3 && std::fmod(n_, 2.0) == 1.0; }
  double n_;
};

class RectifiedPower final : public AdditiveLagrangian {
  double activation_bound(Eigen::Index n) const override { return n_ == 1 ? std::sqrt(double(n)) : INFINITY; }
  double activation_growth() const override { return n_ - 1; }
 public:
  explicit RectifiedPower(double n) : n_(n) {
    ASSOCMEM_CHECK_ARG(std::isfinite(n) && n >= 1, "rectified_power: n must be finite and >= 1, got ", n);
  }
  std::string name() const override { return detail::concat("rectified_power(n=", n_, ")"); }
  std::string psd_region() const override { return "everywhere"; }
  double G(double x) const override { return x > 0 ? powk(x, n_) : 0.0; }
  double dG(double x) const override { return x > 0 ? n_ * powk(x, n_ - 1) : 0.0; }
  // For 1 < n < 2, G'' is unbounded as x -> 0+, still >= 0. For n = 1 G'' = 0 (a kink at 0).
  double d2G(double x) const override { return x > 0 ? n_ * (n_ - 1) * powk(x, n_ - 2) : 0.0; }
  bool convex_at(double) const override { return true; }

 private:
  double n_;
};

// eq. (11), (12): L = log(sum exp(beta x)) / beta, f = softmax(beta x),
// Hessian beta (diag(p) - p p^T).
class LogSumExp final : public Lagrangian {
  double activation_bound(Eigen::Index) const override { return 1.0; }  // softmax: |p|_2 <= |p|_1 = 1
  double activation_growth() const override { return 0.0; }
  double sup_on_ball(double R, Eigen::Index n) const override { return R + std::log(double(n)) / beta_; }
 public:
  explicit LogSumExp(double beta) : beta_(beta) { check_finite_beta(beta, "log_sum_exp"); }
  std::string name() const override { return detail::concat("log_sum_exp(beta=", beta_, ")"); }
  std::string psd_region() const override { return "everywhere (zero mode along (1,...,1))"; }
  double value(const Vector& x) const override {
    ASSOCMEM_CHECK_ARG(x.size() > 0, "log_sum_exp: the layer is empty (no neurons)");
    return numerics::log_sum_exp_scaled(beta_, x);
  }
  void gradient(const Vector& x, Vector& out) const override { numerics::softmax_scaled(beta_, x, out); }
  void hvp(const Vector& x, const Vector& u, Vector& out) const override {
    check_same_size(x, u);
    Vector p;
    numerics::softmax_scaled(beta_, x, p);
    out = beta_ * (p.cwiseProduct(u) - p * p.dot(u));
  }
  bool hessian_psd_at(const Vector&) const override { return true; }

 private:
  double beta_;
};

// eq. (17), (18), (20): L = |x|, g = x/|x|, M = (I |x|^2 - x x^T) / |x|^3.
class Spherical final : public Lagrangian {
  double activation_bound(Eigen::Index) const override { return 1.0; }  // g = x/|x|
  double activation_growth() const override { return 0.0; }
  double sup_on_ball(double R, Eigen::Index) const override { return R; }
 public:
  std::string name() const override { return "spherical"; }
  bool radial_zero_mode() const override { return true; }  // eq. (20)
  std::string psd_region() const override {
    return "everywhere except x = 0 (zero mode along x, eq. 20)";
  }
  double value(const Vector& x) const override { return x.norm(); }
  void gradient(const Vector& x, Vector& out) const override {
    out.resize(x.size());
    check_norm(lagrangians::spherical_direction(x.data(), static_cast<std::size_t>(x.size()), out.data()));
  }
  void hvp(const Vector& x, const Vector& u, Vector& out) const override {
    check_same_size(x, u);
    const double r = checked_norm(x);
    out = (u - x * (x.dot(u) / (r * r))) / r;
  }
  bool hessian_psd_at(const Vector& x) const override { return x.norm() > 0; }

 private:
  static double check_norm(double r) {
    ASSOCMEM_CHECK_ARG(r > 0 && std::isfinite(r),
                       "spherical: the gradient x/|x| is undefined at x = 0 (state must be non-zero and finite)");
    return r;
  }
  static double checked_norm(const Vector& x) { return check_norm(x.norm()); }
};

// Energy Transformer layer norm: L = D gamma sqrt(var + eps) + delta . x.
// g = gamma (x - m)/s + delta, s = sqrt(var + eps);
// H u = (gamma/s) [ (u - mean(u)) - (x - m) ((x - m).u) / (D s^2) ].
class LayerNorm final : public Lagrangian {
  // g = gamma (x - mean) / sqrt(var + eps) + delta: |g| <= gamma sqrt(n) + |delta|.
  double activation_bound(Eigen::Index n) const override { return gamma_ * std::sqrt(double(n)) + delta_.norm(); }
  double activation_growth() const override { return 0.0; }
  double sup_on_ball(double R, Eigen::Index n) const override {  // var <= |x|^2 / n
    return double(n) * gamma_ * std::sqrt(R * R / double(n) + eps_) + delta_.norm() * R;
  }
 public:
  LayerNorm(double gamma, double eps, Vector delta) : gamma_(gamma), eps_(eps), delta_(std::move(delta)) {
    ASSOCMEM_CHECK_ARG(std::isfinite(gamma) && gamma > 0, "layer_norm: gamma must be finite and > 0, got ", gamma);
    ASSOCMEM_CHECK_ARG(std::isfinite(eps) && eps > 0, "layer_norm: eps must be finite and > 0, got ", eps);
    ASSOCMEM_CHECK_ARG(delta_.allFinite(), "layer_norm: delta contains NaN or Inf");
  }
  std::string name() const override {
    return detail::concat("layer_norm(gamma=", gamma_, ", eps=", eps_, delta_.size() ? ", delta" : "", ")");
  }
  std::string psd_region() const override { return "everywhere (zero mode along (1,...,1))"; }
  double value(const Vector& x) const override {
    check(x);
    const double D = static_cast<double>(x.size());
    double v = D * gamma_ * std::sqrt(variance(x) + eps_);
    if (delta_.size()) v += delta_.dot(x);
    return v;
  }
  void gradient(const Vector& x, Vector& out) const override {
    check(x);
    const double s = std::sqrt(variance(x) + eps_);
    out = gamma_ * (x.array() - x.mean()).matrix() / s;
    if (delta_.size()) out += delta_;
  }
  void hvp(const Vector& x, const Vector& u, Vector& out) const override {
    check(x);
    check_same_size(x, u);
    const double D = static_cast<double>(x.size());
    const double s2 = variance(x) + eps_;
    const Vector c = (x.array() - x.mean()).matrix();
    out = (gamma_ / std::sqrt(s2)) * ((u.array() - u.mean()).matrix() - c * (c.dot(u) / (D * s2)));
  }
  bool hessian_psd_at(const Vector&) const override { return true; }

 private:
  void check(const Vector& x) const {
    ASSOCMEM_CHECK_ARG(x.size() > 0, "layer_norm: the layer is empty (no neurons)");
    ASSOCMEM_CHECK_ARG(delta_.size() == 0 || delta_.size() == x.size(), "layer_norm: delta has length ",
                       delta_.size(), " but the layer has ", x.size(), " neurons");
  }
  static double variance(const Vector& x) { return (x.array() - x.mean()).square().mean(); }
  double gamma_, eps_;
  Vector delta_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
ExpLagrangian::ExpLagrangian(double beta) : beta_(beta) { check_finite_beta(beta, "exp"); }
std::string ExpLagrangian::name() const { return detail::concat("exp(beta=", beta_, ")"); }
double ExpLagrangian::G(double x) const { return std::exp(beta_ * x) / beta_; }
double ExpLagrangian::dG(double x) const { return std::exp(beta_ * x); }
double ExpLagrangian::d2G(double x) const { return beta_ * std::exp(beta_ * x); }
double ExpLagrangian::log_G(double x) const { return beta_ * x - std::log(beta_); }

namespace lagrangians {
AdditivePtr identity() { return std::make_shared<Identity>(); }
AdditivePtr abs() { return std::make_shared<Abs>(); }
AdditivePtr log_cosh(double beta) { return std::make_shared<LogCosh>(beta); }
AdditivePtr softplus(double beta) { return std::make_shared<Softplus>(beta); }
AdditivePtr power(double n) { return std::make_shared<Power>(n); }
AdditivePtr rectified_power(double n) { return std::make_shared<RectifiedPower>(n); }
std::shared_ptr<const ExpLagrangian> exp(double beta) { return std::make_shared<ExpLagrangian>(beta); }
LagrangianPtr log_sum_exp(double beta) { return std::make_shared<LogSumExp>(beta); }
LagrangianPtr spherical() { return std::make_shared<Spherical>(); }
LagrangianPtr layer_norm(double gamma, double eps, Vector delta) {
  return std::make_shared<LayerNorm>(gamma, eps, std::move(delta));
}
LagrangianPtr by_name(const std::string& name, const LagrangianParams& p) {
  if (name == "identity") return identity();
  if (name == "abs") return abs();
  if (name == "log_cosh") return log_cosh(p.beta);
  if (name == "softplus") return softplus(p.beta);
  if (name == "power") return power(p.n);
  if (name == "rectified_power") return rectified_power(p.n);
  if (name == "exp") return exp(p.beta);
  if (name == "log_sum_exp") return log_sum_exp(p.beta);
  if (name == "spherical") return spherical();
  if (name == "layer_norm") return layer_norm(p.gamma, p.eps);
  throw InvalidArgument("unknown Lagrangian '" + name +
                        "' (identity, abs, log_cosh, softplus, power, rectified_power, exp, log_sum_exp, spherical, "
                        "layer_norm)");
}
}  // namespace lagrangians

}  // namespace assocmem
