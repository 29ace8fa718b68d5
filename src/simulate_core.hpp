// Internal: the integration loop shared by simulate() of the two-layer network (dynamics.cpp) and of the
// layered network (layered.cpp): recording every k-th step, the PSD accounting of footnote 2 / eq. (4),
// and the blow-up check. Written once; each network supplies its energy, rate, PSD test and record.
#pragma once

#include <cmath>
#include <limits>

#include "assocmem/dynamics.hpp"
#include "assocmem/error.hpp"

namespace assocmem::detail {

struct SimulateCounts {
  long non_psd_steps = 0;
  double first_non_psd_t = std::numeric_limits<double>::quiet_NaN();
  IntegrateResult result;
};

/// energy(y), rate(y): eq. (2) and eq. (4) at state y; psd(y): whether eq. (4) guarantees descent there;
/// descends: whether every Lagrangian is convex everywhere (then an energy rising clearly above E(t0) is
/// an unstable integration, not a solution, and stops with SolverError); record(t, y) keeps a step.
template <class Energy, class Rate, class Psd, class Record>
SimulateCounts simulate_core(const OdeSystem& sys, const Vector& y0, const SimulateOptions& options, bool descends,
                             const Energy& energy, const Rate& rate, const Psd& psd, const Record& record) {
  ASSOCMEM_CHECK_ARG(options.record_every >= 1, "record_every must be >= 1, got ", options.record_every);
  SimulateCounts out;
  long seen = 0;
  Vector last_y;
  double last_t = 0, e0 = 0;
  bool last_recorded = false;
  auto observer = [&](double t, const Vector& y) {
    const double e = energy(y), r = rate(y);
    if (!psd(y)) {
      if (out.non_psd_steps++ == 0) out.first_non_psd_t = t;  // footnote 2: eq. (4) does not hold here
    }
    if (!std::isfinite(e) || !std::isfinite(r))
      throw SolverError(concat("simulate (", to_string(options.method), "): the energy or its rate became ",
                               "NaN or Inf at t = ", t, " (E = ", e, ", dE/dt = ", r,
                               "); the Lagrangians overflow at this state, or the step is too large"));
    if (seen == 0) e0 = e;
    if (descends && e > e0 + 1e-3 * (1.0 + std::fabs(e0)))
      throw SolverError(concat("simulate (", to_string(options.method), "): the energy rose from ", e0, " to ", e,
                               " at t = ", t, ", which eq. (4) forbids for these convex ",
                               "Lagrangians: the integration is unstable; reduce dt or use rk45 or bdf"));
    last_recorded = (seen % options.record_every == 0);
    if (last_recorded) record(t, y, e, r);
    last_y = y;
    last_t = t;
    ++seen;
    if (options.on_step) options.on_step(t);
    return true;
  };
  out.result = integrate(sys, y0, options, observer);
  if (!last_recorded) record(last_t, last_y, energy(last_y), rate(last_y));
  return out;
}

}  // namespace assocmem::detail
