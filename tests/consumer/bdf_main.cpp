// Method 'bdf' (SUNDIALS CVODE) lives in the component assocmem::bdf. `bdf_main linked`: a program linking it
// integrates with BDF (y' = -y from 1: y(1) = 1/e). `bdf_main unlinked`: a program linking the core alone
// does not have the method, method_available says so and integrate() refuses it naming the component; the
// other methods run. Exit status 0 when so. Built by tests/CMakeLists.txt (unlinked, a CTest) and by the
// consumer project of tests/packaging/run (linked: CMake and pkg-config).
#include <cmath>
#include <cstdio>
#include <string>

#include "assocmem/error.hpp"
#include "assocmem/integrate.hpp"

namespace {
struct Decay final : assocmem::OdeSystem {
  Eigen::Index size() const override { return 1; }
  void rhs(double, const assocmem::Vector& y, assocmem::Vector& dydt) const override { dydt = -y; }
};

// y(1) = e^-1 within what rtol = 1e-6 allows (the global error of a few hundred steps of it).
bool at_one_over_e(const assocmem::IntegrateResult& r) {
  return r.reason == assocmem::IntegrationStop::ReachedEnd && std::abs(r.y[0] - std::exp(-1.0)) < 1e-4;
}
}  // namespace

int main(int argc, char** argv) {
  using namespace assocmem;
  const std::string want = argc > 1 ? argv[1] : "";
  if (want != "linked" && want != "unlinked") {
    std::fprintf(stderr, "usage: bdf_main linked|unlinked\n");
    return 2;
  }
  Vector y0(1);
  y0 << 1.0;
  IntegrateOptions o;
  o.method = Method::BDF;
  if (want == "linked") {
    if (!method_available(Method::BDF)) {
      std::fprintf(stderr, "bdf_main: linked with assocmem::bdf, but method 'bdf' is not available\n");
      return 1;
    }
    const IntegrateResult r = integrate(Decay(), y0, o);
    if (!at_one_over_e(r)) {
      std::fprintf(stderr, "bdf_main: bdf gave y(1) = %.17g\n", r.y[0]);
      return 1;
    }
    std::printf("bdf_main: bdf integrates (%ld steps)\n", r.steps);
    return 0;
  }
  if (method_available(Method::BDF)) {
    std::fprintf(stderr, "bdf_main: method 'bdf' is available without assocmem::bdf\n");
    return 1;
  }
  try {
    integrate(Decay(), y0, o);
    std::fprintf(stderr, "bdf_main: integrate ran method 'bdf' without assocmem::bdf\n");
    return 1;
  } catch (const InvalidArgument& e) {
    if (std::string(e.what()).find("assocmem::bdf") == std::string::npos) {
      std::fprintf(stderr, "bdf_main: the error does not name the component: %s\n", e.what());
      return 1;
    }
  }
  o.method = Method::DormandPrince;
  const IntegrateResult r = integrate(Decay(), y0, o);
  if (!at_one_over_e(r)) {
    std::fprintf(stderr, "bdf_main: rk45 gave y(1) = %.17g\n", r.y[0]);
    return 1;
  }
  std::printf("bdf_main: method 'bdf' refused without assocmem::bdf; rk45 runs\n");
  return 0;
}
