// The network (eq. 1) and its tau_h -> 0 limit (eqs. 14, 22) as ODE systems; simulate().
#include "assocmem/dynamics.hpp"

#include <cmath>

#include "assocmem/error.hpp"

namespace assocmem {

void NetworkSystem::rhs(double, const Vector& y, Vector& dydt) const {
  Vector dv, dh;
  net_.rhs(v_of(y), h_of(y), dv, dh);
  dydt = join(dv, dh);
}

bool NetworkSystem::jvp(double, const Vector& y, const Vector& u, Vector& out) const {
  const auto& p = net_.params();
  const Vector v = v_of(y), h = h_of(y);
  const Vector uv = v_of(u), uh = h_of(u);
  const Vector Jv = (net_.xi().transpose() * net_.hidden_lagrangian().hvp(h, uh) - p.alpha * uv) / p.tau_f;
  const Vector Jh = (net_.xi() * net_.feature_lagrangian().hvp(v, uv) - uh) / p.tau_h;
  out = join(Jv, Jh);
  return true;
}

Vector NetworkSystem::join(const Vector& v, const Vector& h) const {
  Vector y(v.size() + h.size());
  y << v, h;
  return y;
}

void EffectiveSystem::rhs(double, const Vector& y, Vector& dydt) const { net_.effective_rhs(y, dydt); }

bool EffectiveSystem::jvp(double, const Vector& v, const Vector& u, Vector& out) const {
  // d/dv [xi^T f(xi g(v))] u = xi^T M_h(h) xi M_v(v) u with h = xi g(v).
  const Vector h = net_.hidden_steady_state(v);
  const Vector w = net_.xi() * net_.feature_lagrangian().hvp(v, u);
  out = (net_.xi().transpose() * net_.hidden_lagrangian().hvp(h, w) - net_.params().alpha * u) / net_.params().tau_f;
  return true;
}

Trajectory simulate(const Network& net, const Vector& v0, const Vector& h0, const SimulateOptions& options) {
  ASSOCMEM_CHECK_ARG(options.record_every >= 1, "record_every must be >= 1, got ", options.record_every);
  const Vector h_start = h0.size() == 0 ? net.hidden_steady_state(v0) : h0;
  net.check_state(v0, h_start);
  NetworkSystem sys(net);
  Trajectory tr;
  long seen = 0;
  auto record = [&](double t, const Vector& y) {
    const Vector v = sys.v_of(y), h = sys.h_of(y);
    tr.t.push_back(t);
    tr.energy.push_back(net.energy(v, h));
    tr.energy_rate.push_back(net.energy_rate(v, h));
    tr.v.push_back(v);
    tr.h.push_back(h);
  };
  Vector last_y;
  double last_t = 0;
  bool last_recorded = false;
  // Blow-up detection. With convex Lagrangians (and alpha = 1, or M_v v = 0), eq. (4) says E never increases along
  // the exact trajectory; an integration whose energy climbs clearly above E(t0) is unstable (an
  // explicit step too large for the network), not a solution, so it stops with SolverError.
  const bool descends = net.feature_lagrangian().convex_everywhere() && net.hidden_lagrangian().convex_everywhere();
  double e0 = 0;
  auto observer = [&](double t, const Vector& y) {
    const Vector v = sys.v_of(y), h = sys.h_of(y);
    const double e = net.energy(v, h), rate = net.energy_rate(v, h);
    if (!net.feature_lagrangian().hessian_psd_at(v) || !net.hidden_lagrangian().hessian_psd_at(h)) {
      if (tr.non_psd_steps++ == 0) tr.first_non_psd_t = t;  // footnote 2: eq. (4) does not hold here
    }
    if (!std::isfinite(e) || !std::isfinite(rate))
      throw SolverError(detail::concat("simulate (", to_string(options.method), "): the energy or its rate became ",
                                       "NaN or Inf at t = ", t, " (E = ", e, ", dE/dt = ", rate,
                                       "); the Lagrangians overflow at this state, or the step is too large"));
    if (seen == 0) e0 = e;
    if (descends && e > e0 + 1e-3 * (1.0 + std::fabs(e0)))
      throw SolverError(detail::concat("simulate (", to_string(options.method), "): the energy rose from ", e0,
                                       " to ", e, " at t = ", t, ", which eq. (4) forbids for these convex ",
                                       "Lagrangians: the integration is unstable; reduce dt or use rk45 or bdf"));
    last_recorded = (seen % options.record_every == 0);
    if (last_recorded) record(t, y);
    last_y = y;
    last_t = t;
    ++seen;
    if (options.on_step) options.on_step(t);
    return true;
  };
  tr.result = integrate(sys, sys.join(v0, h_start), options, observer);
  if (!last_recorded) record(last_t, last_y);
  return tr;
}

}  // namespace assocmem
