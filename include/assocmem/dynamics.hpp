// assocmem/dynamics.hpp - the network as an ODE system, and simulate() with a recorded trajectory.
#pragma once

#include <limits>
#include <vector>

#include "assocmem/integrate.hpp"
#include "assocmem/network.hpp"

namespace assocmem {

/// eq. (1) as an OdeSystem on y = [v; h] (N_f + N_h unknowns), with the exact Jacobian-vector
/// product J [u_v; u_h] = [ (xi^T M_h u_h - alpha u_v) / tau_f ; (xi M_v u_v - u_h) / tau_h ].
class NetworkSystem final : public OdeSystem {
 public:
  explicit NetworkSystem(const Network& net) : net_(net) {}
  Eigen::Index size() const override { return net_.n_features() + net_.n_hidden(); }
  void rhs(double t, const Vector& y, Vector& dydt) const override;
  bool jvp(double t, const Vector& y, const Vector& u, Vector& out) const override;
  /// Splits y into (v, h) and joins them back.
  Vector join(const Vector& v, const Vector& h) const;
  Vector v_of(const Vector& y) const { return y.head(net_.n_features()); }
  Vector h_of(const Vector& y) const { return y.tail(net_.n_hidden()); }

 private:
  const Network& net_;
};

/// The effective dynamics of the feature neurons for tau_h -> 0 (eqs. 14, 22) on y = v.
class EffectiveSystem final : public OdeSystem {
 public:
  explicit EffectiveSystem(const Network& net) : net_(net) {}
  Eigen::Index size() const override { return net_.n_features(); }
  void rhs(double t, const Vector& y, Vector& dydt) const override;
  bool jvp(double t, const Vector& y, const Vector& u, Vector& out) const override;

 private:
  const Network& net_;
};

struct SimulateOptions : IntegrateOptions {
  long record_every = 1;  ///< record every k-th accepted step (the first and last are always kept)
  /// Called with t after every accepted step (e.g. for a progress bar); may be empty.
  std::function<void(double)> on_step;
};

/// What simulate() returns: the recorded steps and how the run ended.
struct Trajectory {
  std::vector<double> t;
  std::vector<Vector> v, h;
  std::vector<double> energy;       ///< eq. (2) at each recorded step
  std::vector<double> energy_rate;  ///< dE/dt from eq. (4) at each recorded step
  /// Footnote 2 / eq. (4): the descent dE/dt <= 0 is guaranteed only where both Hessians are positive
  /// semi-definite. The accepted steps at which one is not (Lagrangian::hessian_psd_at, e.g. an odd
  /// power at negative h), and the first such time (NaN if none). When it is 0 the energy descended
  /// by eq. (4) all along; otherwise it may rise or cycle there and simulate does not call a rise a
  /// blow-up.
  long non_psd_steps = 0;
  double first_non_psd_t = std::numeric_limits<double>::quiet_NaN();
  IntegrateResult result;
};

/// Integrates eq. (1) from (v0, h0). An empty h0 starts the hidden layer at its steady state
/// xi g(v0) (eq. 5). Energy and dE/dt are recorded at every recorded step.
Trajectory simulate(const Network& net, const Vector& v0, const Vector& h0, const SimulateOptions& options);

}  // namespace assocmem
