// Internal: the bookkeeping every integration method shares (integrate.cpp) and the hook through which the
// component assocmem::bdf (integrate_bdf.cpp, SUNDIALS CVODE) supplies method 'bdf' without the core linking
// SUNDIALS (docs/architecture.md: dependencies by layer).
#pragma once

#include <Eigen/Core>

#include "assocmem/error.hpp"
#include "assocmem/integrate.hpp"

namespace assocmem::detail {

// Bookkeeping shared by all methods: step counting, the observer, fixed-point and blow-up checks.
class IntegrationRun {
 public:
  IntegrationRun(const OdeSystem& sys, const IntegrateOptions& o, const Observer& obs) : sys_(sys), o_(o), obs_(obs) {}

  void eval(double t, const Vector& y, Vector& dydt) {
    ++result.rhs_evals;
    sys_.rhs(t, y, dydt);
  }

  // Called after each accepted step (and at t0 with counts_as_step = false). True: stop.
  bool accept(double t, const Vector& y, bool counts_as_step = true) {
    if (counts_as_step) ++result.steps;
    result.t = t;
    result.y = y;
    if (!y.allFinite())
      throw SolverError(detail::concat("integrate (", to_string(o_.method), "): the state became NaN or Inf at t = ",
                                       t, " after ", result.steps, " steps; reduce dt or the tolerances"));
    if (obs_ && !obs_(t, y)) {
      result.reason = IntegrationStop::ObserverStopped;
      return true;
    }
    if (o_.fixed_point_tol > 0) {
      Vector d;
      eval(t, y, d);
      if (d.lpNorm<Eigen::Infinity>() <= o_.fixed_point_tol) {
        result.reason = IntegrationStop::FixedPoint;
        return true;
      }
    }
    if (t >= o_.t_end) {
      result.reason = IntegrationStop::ReachedEnd;
      return true;
    }
    if (result.steps >= o_.max_steps)
      throw SolverError(detail::concat("integrate (", to_string(o_.method), "): max_steps = ", o_.max_steps,
                                       " reached at t = ", t, " before t_end = ", o_.t_end,
                                       "; raise max_steps or use method 'bdf' for stiff problems"));
    return false;
  }

  IntegrateResult result;

 private:
  const OdeSystem& sys_;
  const IntegrateOptions& o_;
  const Observer& obs_;
};


/// A stepper: integrates from y0, handing every accepted step to run.accept() until it returns true.
using BdfStepper = void (*)(IntegrationRun& run, const OdeSystem& system, const Vector& y0,
                            const IntegrateOptions& options);
/// Installs method 'bdf' (called once, while the component's object is initialised; integrate.cpp).
void set_bdf_stepper(BdfStepper stepper);

}  // namespace assocmem::detail
