// assocmem/network.hpp - the general two-layer network of Krotov & Hopfield 2021 (eqs. 1, 2, 4).
//
//   tau_f dv/dt = xi^T f - alpha v + I,   f = dL_h/dh     (eq. 1; alpha = 1, or any alpha >= 0 when M_v v = 0 as eq. 19-20)
//   tau_h dh/dt = xi g - h,               g = dL_v/dv
//
//   E = [ (v - I).g - L_v ] + [ h.f - L_h ] - f^T xi g                                          (eq. 2)
//   dE/dt = -tau_f v'^T M_v v' - tau_h h'^T M_h h'  (alpha = 1)                                  (eq. 4)
//
// v: N_f feature currents, h: N_h hidden (memory) currents, xi: N_h x N_f, row mu = memory mu.
#pragma once

#include <cmath>
#include <string>

#include "assocmem/lagrangian.hpp"
#include "assocmem/types.hpp"

namespace assocmem {

/// Parameters of the general network. Validated by Network's constructor.
struct NetworkParams {
  double tau_f = 1.0;  ///< time constant of the feature neurons, > 0
  double tau_h = 1.0;  ///< time constant of the hidden neurons, > 0
  double alpha = 1.0;  ///< coefficient of the feature decay term (eq. 19); 1 is eq. (1). >= 0; != 1 only
                       ///< with a feature Lagrangian whose Hessian has the zero mode M_v v = 0 (eq. 20)
  Vector current;      ///< input current I into the feature neurons (length N_f), or empty for 0
};

/// The general network (eq. 1) with its energy (eq. 2). Immutable; thread-safe.
class Network {
 public:
  /// xi: N_h x N_f memory matrix (N_h, N_f >= 1, finite). Throws InvalidArgument naming the bad input.
  Network(Matrix xi, LagrangianPtr feature, LagrangianPtr hidden, NetworkParams params = {});

  Eigen::Index n_features() const { return xi_.cols(); }
  Eigen::Index n_hidden() const { return xi_.rows(); }
  const Matrix& xi() const { return xi_; }
  const Lagrangian& feature_lagrangian() const { return *Lv_; }
  const Lagrangian& hidden_lagrangian() const { return *Lh_; }
  /// The Lagrangians as shared pointers (to build other networks from the same layers).
  const LagrangianPtr& feature_lagrangian_ptr() const { return Lv_; }
  const LagrangianPtr& hidden_lagrangian_ptr() const { return Lh_; }
  const NetworkParams& params() const { return p_; }
  /// The input current I (zeros when none was given).
  const Vector& current() const { return I_; }

  /// Right-hand side of eq. (1): dv/dt and dh/dt at (v, h).
  void rhs(const Vector& v, const Vector& h, Vector& dv, Vector& dh) const;

  /// The energy, eq. (2).
  double energy(const Vector& v, const Vector& h) const;

  /// dE/dt along the trajectory through (v, h), from the Hessian-vector products (eq. 4, eq. 23).
  /// For alpha != 1 the exact rate has the extra term -(alpha - 1) v'^T M_v v, zero when M_v v = 0
  /// (the spherical Lagrangian, eq. 20); it is included.
  double energy_rate(const Vector& v, const Vector& h) const;

  /// The hidden steady state of the second eq. (1): h = xi g(v) (eq. 5).
  Vector hidden_steady_state(const Vector& v) const;

  /// The effective energy of the feature neurons when tau_h -> 0: eq. (2) at h = xi g(v), where
  /// h.f cancels the interaction term, leaving  [(v - I).g - L_v(v)] - L_h(xi g).
  /// This is eq. (8) for model A, eq. (13) for model B and eq. (21) for model C.
  double effective_energy(const Vector& v) const;

  /// dv/dt of the effective dynamics when tau_h -> 0: (xi^T f(xi g(v)) - alpha v + I) / tau_f
  /// (eq. 14 for model B, eq. 22 for model C).
  void effective_rhs(const Vector& v, Vector& dv) const;

  /// The same network with other time constants (e.g. to take the limit tau_h -> 0).
  Network with_time_constants(double tau_f, double tau_h) const;

  /// Throws InvalidArgument unless v has length N_f and h has length N_h, both finite.
  void check_state(const Vector& v, const Vector& h) const;

  /// Whether the energy (2) is bounded below over all (v, h) (Section 2: with descent, a bounded
  /// energy makes the dynamics settle). From the Fenchel-Young inequality, with convex Lagrangians:
  ///  - a bounded feature activation (|g| <= G): E >= -L_v(0) - |I| G - sup_{|c| <= |xi| G} L_h(c);
  ///  - identity features (g = v) and a bounded hidden activation (|f| <= F):
  ///    E >= -L_h(0) - (|xi| F + |I|)^2 / 2;
  ///  - identity features and an additive hidden activation growing faster than linearly (power or
  ///    rectified power n > 2, exp): unbounded (E -> -inf along h = t e_mu, v = xi^T f + I);
  ///  - anything else, or a Lagrangian that is not convex everywhere: Unknown.
  /// |xi| is bounded by the Frobenius norm, so `lower` is a valid, not a tight, bound.
  struct EnergyBound {
    enum class Verdict { Bounded, Unbounded, Unknown } verdict = Verdict::Unknown;
    double lower = -INFINITY;  ///< a lower bound of E when Bounded
    std::string why;
  };
  EnergyBound energy_bound() const;

 private:
  Matrix xi_;
  LagrangianPtr Lv_, Lh_;
  NetworkParams p_;
  Vector I_;
};

/// Shared validation helpers (throw InvalidArgument naming `what`).
void check_finite(const Vector& x, const char* what);
void check_finite(const Matrix& x, const char* what);
void check_positive(double x, const char* what);

}  // namespace assocmem
