// assocmem/integrate.hpp - integrating dy/dt = F(t, y): systems, steppers, observers.
//
// System / stepper / observer split as in Boost.Odeint: a system knows its right-hand side (and,
// optionally, its Jacobian-vector product); the steppers know nothing about networks; an observer
// sees every accepted step and may stop the run; integrate() returns what happened.
//
// Methods: explicit Euler and classical RK4 with a fixed step, adaptive Dormand-Prince 5(4) with
// rtol/atol (all three through Boost.Odeint), and SUNDIALS CVODE's variable-order BDF for stiff
// problems such as tau_h << tau_f, with a Newton iteration on the Jacobian built from the system's
// Jacobian-vector product (dense LU up to `dense_limit` unknowns, matrix-free GMRES above). BDF is the
// component assocmem::bdf (libassocmem_bdf.a, the only part that links SUNDIALS): a program that links that
// CMake target (or pkg-config's assocmem-bdf) has the method; without it method_available(Method::BDF) is
// false and integrate() refuses the method naming the component.
#pragma once

#include <functional>
#include <limits>
#include <string>

#include "assocmem/types.hpp"

namespace assocmem {

/// dy/dt = F(t, y) of a fixed size.
class OdeSystem {
 public:
  virtual ~OdeSystem() = default;
  virtual Eigen::Index size() const = 0;
  virtual void rhs(double t, const Vector& y, Vector& dydt) const = 0;
  /// J(t, y) u, the Jacobian of F applied to u. Returns false when the system has none
  /// (the BDF solver then uses difference quotients).
  virtual bool jvp(double /*t*/, const Vector& /*y*/, const Vector& /*u*/, Vector& /*out*/) const {
    return false;
  }
};

enum class Method { Euler, RK4, DormandPrince, BDF };

/// "euler", "rk4", "rk45" (or "dopri5"), "bdf"; throws InvalidArgument otherwise.
Method parse_method(const std::string& name);
std::string to_string(Method m);
/// Whether this program has the method: BDF needs the component assocmem::bdf (SUNDIALS CVODE) linked,
/// and a build with it (ASSOCMEM_WITH_SUNDIALS=ON; the aarch64 cross build leaves it out); integrate()
/// otherwise throws InvalidArgument for Method::BDF. The other methods are always there.
bool method_available(Method m);

struct IntegrateOptions {
  Method method = Method::DormandPrince;
  double t0 = 0.0;
  double t_end = 1.0;        ///< > t0
  double dt = 0.0;           ///< fixed step for Euler/RK4 (required there); initial step for the
                             ///< adaptive methods (0: chosen automatically)
  double rtol = 1e-6;        ///< relative tolerance (Dormand-Prince, BDF), > 0
  double atol = 1e-9;        ///< absolute tolerance (Dormand-Prince, BDF), > 0
  double max_dt = std::numeric_limits<double>::infinity();  ///< largest step of the adaptive methods
  long max_steps = 100000;   ///< accepted steps before integrate() throws SolverError
  double fixed_point_tol = 0.0;  ///< stop when max_i |dy_i/dt| <= this; 0 disables
  Eigen::Index dense_limit = 400;  ///< BDF: dense LU up to this size, GMRES above
  /// Throws InvalidArgument naming the bad field.
  void validate() const;
};

enum class IntegrationStop { ReachedEnd, FixedPoint, ObserverStopped };
std::string to_string(IntegrationStop r);

struct IntegrateResult {
  IntegrationStop reason = IntegrationStop::ReachedEnd;
  long steps = 0;           ///< accepted steps
  long rejected_steps = 0;  ///< error-test failures (adaptive methods)
  long rhs_evals = 0;       ///< right-hand-side evaluations
  double t = 0.0;           ///< final time
  Vector y;                 ///< final state
};

/// Called at t0 and after every accepted step; return false to stop the run.
using Observer = std::function<bool(double t, const Vector& y)>;

/// Integrates from y0 at options.t0 until t_end, a fixed point, or the observer stops it.
/// Throws SolverError after max_steps accepted steps, when the state becomes NaN/Inf, or when the
/// solver fails (the message says which and at which t); InvalidArgument for bad options or y0.
IntegrateResult integrate(const OdeSystem& system, const Vector& y0, const IntegrateOptions& options,
                          const Observer& observer = {});

}  // namespace assocmem
