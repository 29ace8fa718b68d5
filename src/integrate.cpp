// Steppers for dy/dt = F(t, y): Euler, RK4, Dormand-Prince 5(4) (Boost.Odeint); BDF (SUNDIALS CVODE) is in the
// component assocmem::bdf (integrate_bdf.cpp), entered through the stepper it registers (integrate_run.hpp).
#include "assocmem/integrate.hpp"

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include <boost/numeric/odeint/stepper/controlled_runge_kutta.hpp>
#include <boost/numeric/odeint/stepper/euler.hpp>
#include <boost/numeric/odeint/stepper/generation.hpp>
#include <boost/numeric/odeint/stepper/runge_kutta4.hpp>
#include <boost/numeric/odeint/stepper/runge_kutta_dopri5.hpp>


#include "assocmem/error.hpp"
#include "integrate_run.hpp"

namespace assocmem {

namespace odeint = boost::numeric::odeint;

Method parse_method(const std::string& name) {
  if (name == "euler") return Method::Euler;
  if (name == "rk4") return Method::RK4;
  if (name == "rk45" || name == "dopri5") return Method::DormandPrince;
  if (name == "bdf") return Method::BDF;
  throw InvalidArgument("method must be one of euler, rk4, rk45 (dopri5), bdf; got '" + name + "'");
}

std::string to_string(Method m) {
  switch (m) {
    case Method::Euler: return "euler";
    case Method::RK4: return "rk4";
    case Method::DormandPrince: return "rk45";
    case Method::BDF: return "bdf";
  }
  return "?";
}

std::string to_string(IntegrationStop r) {
  switch (r) {
    case IntegrationStop::ReachedEnd: return "reached t_end";
    case IntegrationStop::FixedPoint: return "fixed point";
    case IntegrationStop::ObserverStopped: return "stopped by observer";
  }
  return "?";
}

void IntegrateOptions::validate() const {
  ASSOCMEM_CHECK_ARG(std::isfinite(t0), "t0 must be finite, got ", t0);
  ASSOCMEM_CHECK_ARG(std::isfinite(t_end) && t_end > t0, "t_end must be finite and > t0 = ", t0, ", got ", t_end);
  ASSOCMEM_CHECK_ARG(std::isfinite(dt) && dt >= 0, "dt must be finite and >= 0, got ", dt);
  if (method == Method::Euler || method == Method::RK4)
    ASSOCMEM_CHECK_ARG(dt > 0, "dt must be > 0 for the fixed-step method ", to_string(method));
  ASSOCMEM_CHECK_ARG(std::isfinite(rtol) && rtol > 0, "rtol must be finite and > 0, got ", rtol);
  ASSOCMEM_CHECK_ARG(std::isfinite(atol) && atol > 0, "atol must be finite and > 0, got ", atol);
  ASSOCMEM_CHECK_ARG(max_dt > 0, "max_dt must be > 0, got ", max_dt);
  ASSOCMEM_CHECK_ARG(max_steps > 0, "max_steps must be > 0, got ", max_steps);
  ASSOCMEM_CHECK_ARG(std::isfinite(fixed_point_tol) && fixed_point_tol >= 0,
                     "fixed_point_tol must be finite and >= 0, got ", fixed_point_tol);
  ASSOCMEM_CHECK_ARG(dense_limit >= 0, "dense_limit must be >= 0, got ", dense_limit);
}

namespace {

using State = std::vector<double>;

Vector to_vector(const State& s) { return Eigen::Map<const Vector>(s.data(), static_cast<Eigen::Index>(s.size())); }

using Run = detail::IntegrationRun;

// Boost.Odeint's view of the system: state std::vector<double>.
struct OdeintSystem {
  Run* run;
  void operator()(const State& x, State& dxdt, double t) const {
    Vector d;
    run->eval(t, to_vector(x), d);
    dxdt.assign(d.data(), d.data() + d.size());
  }
};

template <class Stepper>
void fixed_step(Run& run, const OdeSystem&, State x, const IntegrateOptions& o) {
  Stepper stepper;
  OdeintSystem sys{&run};
  double t = o.t0;
  while (true) {
    // The last step is shortened to land on t_end exactly.
    const double h = std::min(o.dt, o.t_end - t);
    stepper.do_step(sys, x, t, h);
    t = (o.t_end - t <= o.dt) ? o.t_end : t + h;
    if (run.accept(t, to_vector(x))) return;
  }
}

// Hairer-Norsett-Wanner's starting-step heuristic (Solving ODEs I, II.4).
double initial_step(Run& run, double t0, const Vector& y0, const IntegrateOptions& o) {
  if (o.dt > 0) return std::min(o.dt, o.t_end - t0);
  Vector f;
  run.eval(t0, y0, f);
  const Vector scale = (o.atol + o.rtol * y0.array().abs()).matrix();
  const double d0 = (y0.array() / scale.array()).matrix().norm() / std::sqrt(double(std::max<Eigen::Index>(1, y0.size())));
  const double d1 = (f.array() / scale.array()).matrix().norm() / std::sqrt(double(std::max<Eigen::Index>(1, y0.size())));
  double h = (d0 < 1e-5 || d1 < 1e-5) ? 1e-6 : 0.01 * d0 / d1;
  return std::min({h, o.t_end - t0, o.max_dt});
}

void dormand_prince(Run& run, State x, const IntegrateOptions& o) {
  OdeintSystem sys{&run};
  const double max_dt = std::isfinite(o.max_dt) ? o.max_dt : 0.0;  // 0: no limit for Odeint
  auto stepper = odeint::make_controlled(o.atol, o.rtol, max_dt, odeint::runge_kutta_dopri5<State>());
  double t = o.t0;
  double h = initial_step(run, t, to_vector(x), o);
  while (true) {
    h = std::min(h, o.t_end - t);
    const bool last = h >= o.t_end - t;  // this step is aimed at t_end
    const auto res = stepper.try_step(sys, x, t, h);  // on success advances t, proposes the next h
    if (res == odeint::fail) {
      ++run.result.rejected_steps;
      if (!(h > 1e-14 * std::max(1.0, std::fabs(t))))
        throw SolverError(detail::concat("integrate (rk45): step size underflow (dt = ", h, ") at t = ", t,
                                         "; the problem may be stiff: use method 'bdf'"));
      if (run.result.rejected_steps > 10 * o.max_steps)
        throw SolverError(detail::concat("integrate (rk45): too many rejected steps at t = ", t));
      continue;
    }
    if (last) t = o.t_end;  // land on t_end exactly, whatever the round-off of t + h
    if (run.accept(t, to_vector(x))) return;
  }
}

}  // namespace

namespace detail {
namespace {
BdfStepper bdf_stepper = nullptr;  // set by the component assocmem::bdf when a program links it
}
void set_bdf_stepper(BdfStepper stepper) { bdf_stepper = stepper; }
}  // namespace detail

bool method_available(Method method) { return method != Method::BDF || detail::bdf_stepper != nullptr; }

IntegrateResult integrate(const OdeSystem& system, const Vector& y0, const IntegrateOptions& options,
                          const Observer& observer) {
  options.validate();
  if (!method_available(options.method))
    throw InvalidArgument(
        "method 'bdf' (SUNDIALS CVODE) is in the component assocmem::bdf, which this program does not link "
        "(CMake: target_link_libraries(<target> assocmem::bdf); pkg-config: assocmem-bdf), or assocmem was built "
        "with ASSOCMEM_WITH_SUNDIALS=OFF; use euler, rk4 or rk45, or link assocmem::bdf of a build with "
        "libsundials-dev");
  ASSOCMEM_CHECK_ARG(y0.size() == system.size(), "y0 has length ", y0.size(), " but the system has ", system.size(),
                     " unknowns");
  ASSOCMEM_CHECK_ARG(y0.allFinite(), "y0 contains NaN or Inf");
  Run run(system, options, observer);
  if (run.accept(options.t0, y0, /*counts_as_step=*/false)) return run.result;
  const State x(y0.data(), y0.data() + y0.size());
  switch (options.method) {
    case Method::Euler: fixed_step<odeint::euler<State>>(run, system, x, options); break;
    case Method::RK4: fixed_step<odeint::runge_kutta4<State>>(run, system, x, options); break;
    case Method::DormandPrince: dormand_prince(run, x, options); break;
    case Method::BDF: detail::bdf_stepper(run, system, y0, options); break;
  }
  return run.result;
}

}  // namespace assocmem
