// The network (eq. 1) and its tau_h -> 0 limit (eqs. 14, 22) as ODE systems; simulate().
#include "assocmem/dynamics.hpp"

#include <cmath>

#include "assocmem/error.hpp"
#include "simulate_core.hpp"

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
  // With convex Lagrangians (and alpha = 1, or M_v v = 0), eq. (4): E never increases.
  const bool descends = net.feature_lagrangian().convex_everywhere() && net.hidden_lagrangian().convex_everywhere();
  const detail::SimulateCounts c = detail::simulate_core(
      sys, sys.join(v0, h_start), options, descends,
      [&](const Vector& y) { return net.energy(sys.v_of(y), sys.h_of(y)); },
      [&](const Vector& y) { return net.energy_rate(sys.v_of(y), sys.h_of(y)); },
      [&](const Vector& y) {
        return net.feature_lagrangian().hessian_psd_at(sys.v_of(y)) && net.hidden_lagrangian().hessian_psd_at(sys.h_of(y));
      },
      [&](double t, const Vector& y, double e, double r) {
        tr.t.push_back(t);
        tr.energy.push_back(e);
        tr.energy_rate.push_back(r);
        tr.v.push_back(sys.v_of(y));
        tr.h.push_back(sys.h_of(y));
      });
  tr.non_psd_steps = c.non_psd_steps;
  tr.first_non_psd_t = c.first_non_psd_t;
  tr.result = c.result;
  return tr;
}

}  // namespace assocmem
