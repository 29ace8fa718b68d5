// Steppers for dy/dt = F(t, y): Euler, RK4, Dormand-Prince 5(4) (Boost.Odeint), BDF (SUNDIALS CVODE).
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

#ifdef ASSOCMEM_HAVE_SUNDIALS
#include <cvode/cvode.h>
#include <nvector/nvector_serial.h>
#include <sundials/sundials_context.h>
#include <sunlinsol/sunlinsol_dense.h>
#include <sunlinsol/sunlinsol_spgmr.h>
#include <sunmatrix/sunmatrix_dense.h>
#endif

#include "assocmem/error.hpp"

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

// Bookkeeping shared by all methods: step counting, the observer, fixed-point and blow-up checks.
class Run {
 public:
  Run(const OdeSystem& sys, const IntegrateOptions& o, const Observer& obs) : sys_(sys), o_(o), obs_(obs) {}

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

// ------------------------------------------------------------------------------------------------
// SUNDIALS CVODE (BDF). RAII wrappers so that every exit frees the solver. Without SUNDIALS
// (ASSOCMEM_WITH_SUNDIALS=OFF) the method is an InvalidArgument naming the build option.
[[noreturn, maybe_unused]] void bdf_unavailable() {
  throw InvalidArgument(
      "method 'bdf' is not in this build of assocmem (configured with ASSOCMEM_WITH_SUNDIALS=OFF, no SUNDIALS "
      "CVODE); use euler, rk4 or rk45, or rebuild with libsundials-dev");
}
#ifdef ASSOCMEM_HAVE_SUNDIALS
struct CvodeData {
  Run* run;
  const OdeSystem* sys;
  std::string last_error;
  std::exception_ptr exception;  // an exception from the system, re-thrown on the caller
  Eigen::Index n;
};

int cvode_rhs(sunrealtype t, N_Vector y, N_Vector ydot, void* user) {
  auto* d = static_cast<CvodeData*>(user);
  try {
    const Eigen::Map<const Vector> ym(N_VGetArrayPointer(y), d->n);
    Vector f;
    d->run->eval(t, ym, f);
    if (!f.allFinite()) return 1;  // recoverable: CVODE retries with a smaller step
    Eigen::Map<Vector>(N_VGetArrayPointer(ydot), d->n) = f;
    return 0;
  } catch (...) {
    d->exception = std::current_exception();
    return -1;
  }
}

int cvode_jtimes(N_Vector v, N_Vector Jv, sunrealtype t, N_Vector y, N_Vector /*fy*/, void* user, N_Vector /*tmp*/) {
  auto* d = static_cast<CvodeData*>(user);
  try {
    const Eigen::Map<const Vector> ym(N_VGetArrayPointer(y), d->n), vm(N_VGetArrayPointer(v), d->n);
    Vector out;
    d->sys->jvp(t, ym, vm, out);
    Eigen::Map<Vector>(N_VGetArrayPointer(Jv), d->n) = out;
    return 0;
  } catch (...) {
    d->exception = std::current_exception();
    return -1;
  }
}

// Dense Jacobian assembled column by column from the system's Jacobian-vector product.
int cvode_dense_jac(sunrealtype t, N_Vector y, N_Vector /*fy*/, SUNMatrix J, void* user, N_Vector, N_Vector, N_Vector) {
  auto* d = static_cast<CvodeData*>(user);
  try {
    const Eigen::Map<const Vector> ym(N_VGetArrayPointer(y), d->n);
    Vector e = Vector::Zero(d->n), col;
    for (Eigen::Index j = 0; j < d->n; ++j) {
      e[j] = 1.0;
      d->sys->jvp(t, ym, e, col);
      e[j] = 0.0;
      sunrealtype* cj = SUNDenseMatrix_Column(J, j);  // column-major
      for (Eigen::Index i = 0; i < d->n; ++i) cj[i] = col[i];
    }
    return 0;
  } catch (...) {
    d->exception = std::current_exception();
    return -1;
  }
}

void cvode_error_handler(int, const char* module, const char* function, char* msg, void* user) {
  auto* d = static_cast<CvodeData*>(user);
  d->last_error = detail::concat(module ? module : "", "/", function ? function : "", ": ", msg ? msg : "");
}

struct ContextDeleter { void operator()(SUNContext c) const { SUNContext_Free(&c); } };
struct NVectorDeleter { void operator()(N_Vector v) const { N_VDestroy(v); } };
struct MatrixDeleter { void operator()(SUNMatrix m) const { SUNMatDestroy(m); } };
struct LinSolDeleter { void operator()(SUNLinearSolver s) const { SUNLinSolFree(s); } };
struct CvodeDeleter { void operator()(void* m) const { CVodeFree(&m); } };

void bdf(Run& run, const OdeSystem& sys, const Vector& y0, const IntegrateOptions& o) {
  const Eigen::Index n = y0.size();
  CvodeData data{&run, &sys, {}, nullptr, n};
  auto fail = [&](const char* what, int flag) {
    if (data.exception) std::rethrow_exception(data.exception);
    throw SolverError(detail::concat("integrate (bdf): ", what, " failed (CVODE flag ", flag, ") at t = ",
                                     run.result.t, data.last_error.empty() ? "" : ": ", data.last_error));
  };
  SUNContext raw_ctx = nullptr;
  if (SUNContext_Create(nullptr, &raw_ctx) != 0) throw SolverError("integrate (bdf): SUNContext_Create failed");
  std::unique_ptr<std::remove_pointer_t<SUNContext>, ContextDeleter> ctx(raw_ctx);
  std::unique_ptr<std::remove_pointer_t<N_Vector>, NVectorDeleter> y(N_VNew_Serial(n, raw_ctx));
  Eigen::Map<Vector>(N_VGetArrayPointer(y.get()), n) = y0;
  std::unique_ptr<void, CvodeDeleter> mem(CVodeCreate(CV_BDF, raw_ctx));
  if (!mem) throw SolverError("integrate (bdf): CVodeCreate failed");
  void* m = mem.get();
  int flag = CVodeSetErrHandlerFn(m, cvode_error_handler, &data);
  if (flag == CV_SUCCESS) flag = CVodeInit(m, cvode_rhs, o.t0, y.get());
  if (flag == CV_SUCCESS) flag = CVodeSetUserData(m, &data);
  if (flag == CV_SUCCESS) flag = CVodeSStolerances(m, o.rtol, o.atol);
  if (flag == CV_SUCCESS) flag = CVodeSetStopTime(m, o.t_end);
  if (flag == CV_SUCCESS) flag = CVodeSetMaxNumSteps(m, o.max_steps + 1);
  if (flag == CV_SUCCESS && o.dt > 0) flag = CVodeSetInitStep(m, o.dt);
  if (flag == CV_SUCCESS && std::isfinite(o.max_dt)) flag = CVodeSetMaxStep(m, o.max_dt);
  if (flag != CV_SUCCESS) fail("setup", flag);

  // Linear solver for the Newton iteration.
  Vector probe_out;
  const bool has_jvp = sys.jvp(o.t0, y0, Vector::Zero(n), probe_out);
  std::unique_ptr<std::remove_pointer_t<SUNMatrix>, MatrixDeleter> A;
  std::unique_ptr<std::remove_pointer_t<SUNLinearSolver>, LinSolDeleter> LS;
  if (n <= o.dense_limit) {
    A.reset(SUNDenseMatrix(n, n, raw_ctx));
    LS.reset(SUNLinSol_Dense(y.get(), A.get(), raw_ctx));
    flag = CVodeSetLinearSolver(m, LS.get(), A.get());
    if (flag == CV_SUCCESS && has_jvp) flag = CVodeSetJacFn(m, cvode_dense_jac);
  } else {
    LS.reset(SUNLinSol_SPGMR(y.get(), SUN_PREC_NONE, 0, raw_ctx));
    flag = CVodeSetLinearSolver(m, LS.get(), nullptr);
    if (flag == CV_SUCCESS && has_jvp) flag = CVodeSetJacTimes(m, nullptr, cvode_jtimes);
  }
  if (flag != CV_SUCCESS) fail("linear solver setup", flag);

  while (true) {
    sunrealtype t = 0;
    flag = CVode(m, o.t_end, y.get(), &t, CV_ONE_STEP);
    if (flag < 0) fail("CVode", flag);
    long nfails = 0;
    CVodeGetNumErrTestFails(m, &nfails);
    run.result.rejected_steps = nfails;
    if (run.accept(flag == CV_TSTOP_RETURN ? o.t_end : t, Eigen::Map<const Vector>(N_VGetArrayPointer(y.get()), n)))
      return;
  }
}
#else
void bdf(Run&, const OdeSystem&, const Vector&, const IntegrateOptions&) { bdf_unavailable(); }
#endif

}  // namespace

bool method_available([[maybe_unused]] Method method) {
#ifdef ASSOCMEM_HAVE_SUNDIALS
  return true;
#else
  return method != Method::BDF;
#endif
}

IntegrateResult integrate(const OdeSystem& system, const Vector& y0, const IntegrateOptions& options,
                          const Observer& observer) {
  options.validate();
  if (!method_available(options.method)) bdf_unavailable();
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
    case Method::BDF: bdf(run, system, y0, options); break;
  }
  return run.result;
}

}  // namespace assocmem
