// assocmem/lagrangian.hpp - Lagrangians of a neuron layer (paper eqs. 3, 6, 11, 17).
//
// A layer of neurons is defined by one scalar function of its currents, the Lagrangian L(x).
// Its gradient is the layer's output (eq. 3: g = dL_v/dv, f = dL_h/dh), and the energy (eq. 2)
// uses the Legendre-like term  sum_i x_i dL/dx_i - L.  The Hessian enters eq. (4): the energy
// never increases where the Hessians of both Lagrangians are positive semi-definite (PSD).
//
// Each Lagrangian here is written once - value, gradient (the activation) and Hessian-vector
// product - and the network, the energy, the effective models and the tests all use it.
//
// Additive Lagrangians (eq. 6) are L(x) = sum_i G(x_i); they also expose the scalar G, G', G''.
// Non-additive ones couple the neurons of a layer (softmax, divisive normalisation, layer norm).
#pragma once

#include <cmath>
#include <cstddef>
#include <memory>
#include <string>

#include "assocmem/types.hpp"

namespace assocmem {

/// A Lagrangian L(x) of one neuron layer. Immutable and thread-safe once built.
class Lagrangian {
 public:
  virtual ~Lagrangian() = default;

  /// Short name with parameters, e.g. "log_cosh(beta=2)".
  virtual std::string name() const = 0;

  /// L(x).
  virtual double value(const Vector& x) const = 0;

  /// The activation dL/dx (eq. 3). `out` is resized to x.size().
  virtual void gradient(const Vector& x, Vector& out) const = 0;

  /// The Hessian-vector product (d^2 L / dx dx) u. `out` is resized to x.size().
  virtual void hvp(const Vector& x, const Vector& u, Vector& out) const = 0;

  /// Where the Hessian is positive semi-definite, in words (documentation of the claim that
  /// `hessian_psd_at` tests).
  virtual std::string psd_region() const = 0;

  /// True where the Hessian at x is guaranteed positive semi-definite, so that eq. (4) gives
  /// dE/dt <= 0.
  virtual bool hessian_psd_at(const Vector& x) const = 0;

  /// True when the Hessian is positive semi-definite everywhere (psd_region() begins with
  /// "everywhere"; zero modes and an excluded x = 0 allowed): L is convex, eq. (4) gives descent and
  /// the Fenchel-Young bounds of Network::energy_bound apply.
  bool convex_everywhere() const { return psd_region().rfind("everywhere", 0) == 0; }

  /// True for L(x) = sum_i G(x_i) (eq. 6).
  virtual bool additive() const { return false; }

  /// True when the Hessian has the radial zero mode M(x) x = 0 for every x (L homogeneous of degree
  /// 1: spherical, eq. 20, and abs). Only then may the feature decay coefficient alpha differ from 1
  /// (eq. 19) without breaking the descent of eq. (23).
  virtual bool radial_zero_mode() const { return false; }

  /// sup over x of |g(x)|_2 for a layer of n neurons; +inf when the activation is unbounded.
  /// (Section 2: a bounded feature activation keeps the energy bounded below.)
  virtual double activation_bound(Eigen::Index n) const = 0;
  /// How the activation grows at infinity: |g(x)| ~ |x|^p (0 bounded, 1 linear, +inf exponential).
  virtual double activation_growth() const = 0;
  /// An upper bound of L over the ball |x|_2 <= R of a layer of n neurons (used by
  /// Network::energy_bound).
  virtual double sup_on_ball(double R, Eigen::Index n) const = 0;

  // Convenience forms returning by value.
  Vector gradient(const Vector& x) const {
    Vector g;
    gradient(x, g);
    return g;
  }
  Vector hvp(const Vector& x, const Vector& u) const {
    Vector r;
    hvp(x, u, r);
    return r;
  }
};

using LagrangianPtr = std::shared_ptr<const Lagrangian>;

/// L(x) = sum_i G(x_i) (eq. 6). Subclasses give the scalar G and its first two derivatives.
class AdditiveLagrangian : public Lagrangian {
 public:
  /// The scalar function G and its derivatives. G' is the activation of one neuron.
  virtual double G(double x) const = 0;
  virtual double dG(double x) const = 0;
  virtual double d2G(double x) const = 0;
  /// True where G''(x) >= 0 (eq. 10: the activation is non-decreasing at x).
  virtual bool convex_at(double x) const = 0;

  double value(const Vector& x) const final;
  void gradient(const Vector& x, Vector& out) const final;
  void hvp(const Vector& x, const Vector& u, Vector& out) const final;
  bool hessian_psd_at(const Vector& x) const final;
  bool additive() const final { return true; }
  /// n max(G(R), G(-R), G(0)): each coordinate lies in [-R, R] and a convex G peaks at an end.
  double sup_on_ball(double R, Eigen::Index n) const override;
  using Lagrangian::gradient;
  using Lagrangian::hvp;
};

using AdditivePtr = std::shared_ptr<const AdditiveLagrangian>;

class ExpLagrangian;

/// Factories. Each validates its parameters and throws InvalidArgument naming the bad one.
namespace lagrangians {

/// G(x) = x^2/2, g(x) = x. Hessian = identity: PSD everywhere. (Model B's feature layer, eq. 11.)
AdditivePtr identity();

/// G(x) = |x|, g(x) = Sign(x) (eq. 7): binary neurons. g(0) is taken as 0. G'' = 0 away from 0
/// (the Hessian-vector product returns 0 everywhere; at 0 the true Hessian is a delta). Convex.
AdditivePtr abs();

/// G(x) = log(cosh(beta x)) / beta, g(x) = tanh(beta x). PSD everywhere. beta > 0.
/// A smooth stand-in for |x|: converges to it as beta -> infinity.
AdditivePtr log_cosh(double beta);

/// G(x) = log(1 + exp(beta x)) / beta, g(x) = sigmoid(beta x). PSD everywhere. beta > 0.
AdditivePtr softplus(double beta);

/// G(x) = x^n, g(x) = n x^(n-1). n an integer >= 1. PSD everywhere for even n or n = 1,
/// only for x >= 0 when n >= 3 is odd. (Dense Associative Memory, F(x) = x^n, eq. 8.)
AdditivePtr power(double n);

/// G(x) = x^n for x >= 0, 0 below; g(x) = n x^(n-1) for x > 0. Real n >= 1. PSD everywhere.
AdditivePtr rectified_power(double n);

/// G(x) = exp(beta x) / beta, g(x) = exp(beta x). PSD everywhere. beta > 0.
/// (F(x) = exp(x) of Demircigil et al. at beta = 1.)
std::shared_ptr<const ExpLagrangian> exp(double beta);

/// L(x) = log(sum_i exp(beta x_i)) / beta, g = softmax(beta x) (eqs. 11, 12).
/// Hessian beta (diag(p) - p p^T): PSD everywhere, with the zero mode (1,...,1). Computed stably
/// (no overflow at beta = 1e4). beta > 0.
LagrangianPtr log_sum_exp(double beta);

/// L(x) = sqrt(sum_i x_i^2), g = x / |x| (eqs. 17, 18). Hessian eq. (20): PSD everywhere
/// except x = 0, where L is not differentiable (gradient and hvp throw there); zero mode x.
LagrangianPtr spherical();

/// g = x / |x| of n numbers (eq. 18), the one definition shared by spherical() and the model C
/// engine. Returns |x| (accumulated in double); g is written only when |x| is > 0 and finite.
template <class T>
double spherical_direction(const T* x, std::size_t n, T* g) {
  double r2 = 0;
  for (std::size_t i = 0; i < n; ++i) r2 += double(x[i]) * double(x[i]);
  const double r = std::sqrt(r2);
  if (r > 0 && std::isfinite(r))
    for (std::size_t i = 0; i < n; ++i) g[i] = static_cast<T>(double(x[i]) / r);
  return r;
}

/// Layer norm as in the Energy Transformer: L(x) = D gamma sqrt(var(x) + eps) + sum_i delta_i x_i,
/// g = gamma (x - mean x) / sqrt(var(x) + eps) + delta. gamma > 0, eps > 0; delta (bias) has
/// length D or is empty (zero). PSD everywhere (a convex function), zero mode (1,...,1).
LagrangianPtr layer_norm(double gamma = 1.0, double eps = 1e-5, Vector delta = Vector());

/// Parameters of by_name(); each Lagrangian reads the ones it has.
struct LagrangianParams {
  double beta = kDefaultBeta, n = 2.0, gamma = 1.0, eps = 1e-5;
};
/// The Lagrangian called `name` (identity, abs, log_cosh, softplus, power, rectified_power, exp,
/// log_sum_exp, spherical, layer_norm); throws InvalidArgument listing the names otherwise.
LagrangianPtr by_name(const std::string& name, const LagrangianParams& params = {});

}  // namespace lagrangians

/// G(x) = exp(beta x) / beta. Also exposes log G, so that sums of G can be compared stably.
class ExpLagrangian final : public AdditiveLagrangian {
 public:
  explicit ExpLagrangian(double beta);
  std::string name() const override;
  std::string psd_region() const override { return "everywhere"; }
  double G(double x) const override;
  double dG(double x) const override;
  double d2G(double x) const override;
  bool convex_at(double) const override { return true; }
  double activation_bound(Eigen::Index) const override { return INFINITY; }
  double activation_growth() const override { return INFINITY; }
  /// log G(x) = beta x - log beta, finite for every finite x.
  double log_G(double x) const;
  double beta() const { return beta_; }

 private:
  double beta_;
};

/// Numerically stable helpers, shared by the Lagrangians and the models.
namespace numerics {
/// log(sum_i exp(x_i)); -inf for an empty vector. Never overflows for finite x.
double log_sum_exp(const Vector& x);
/// softmax(x) into out, stable (subtracts the maximum).
void softmax(const Vector& x, Vector& out);
/// log(sum_i exp(beta x_i)) / beta and softmax(beta x), shifted before scaling: no overflow for any
/// finite beta and x (beta x beyond the double range included).
double log_sum_exp_scaled(double beta, const Vector& x);
void softmax_scaled(double beta, const Vector& x, Vector& out);
/// log(cosh(x)), stable for large |x|.
double log_cosh(double x);
/// log(1 + exp(x)), stable for large |x|.
double softplus(double x);
/// 1 / (1 + exp(-x)), stable.
double sigmoid(double x);
}  // namespace numerics

}  // namespace assocmem
