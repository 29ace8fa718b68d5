// Method 'bdf' of integrate() (assocmem/integrate.hpp): SUNDIALS CVODE's variable-order BDF with a Newton
// iteration on the system's Jacobian-vector product (dense LU up to dense_limit unknowns, matrix-free GMRES
// above). The component assocmem::bdf (libassocmem_bdf.a): the only code that links SUNDIALS. Linking it
// installs the stepper in the core (set_bdf_stepper): its target's link option --undefined=assocmem_bdf_anchor
// makes the linker take this object from the archive, and the object's initialisation registers it.
#include <cvode/cvode.h>
#include <nvector/nvector_serial.h>
#include <sundials/sundials_context.h>
#include <sunlinsol/sunlinsol_dense.h>
#include <sunlinsol/sunlinsol_spgmr.h>
#include <sunmatrix/sunmatrix_dense.h>

#include <cmath>
#include <exception>
#include <memory>
#include <string>
#include <type_traits>

#include "integrate_run.hpp"

namespace assocmem::detail {
namespace {

// RAII wrappers so that every exit frees the solver.
struct CvodeData {
  IntegrationRun* run;
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

void bdf(IntegrationRun& run, const OdeSystem& sys, const Vector& y0, const IntegrateOptions& o) {
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

const bool registered = (set_bdf_stepper(&bdf), true);

}  // namespace
}  // namespace assocmem::detail

/// The symbol the component's link option names (so that a static link keeps this object).
extern "C" int assocmem_bdf_anchor() { return assocmem::detail::registered ? 1 : 0; }
