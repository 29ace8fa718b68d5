// The general network: eqs. (1), (2), (4), (5), (23).
#include "assocmem/network.hpp"

#include <cmath>

#include "assocmem/error.hpp"

namespace assocmem {

void check_finite(const Vector& x, const char* what) {
  ASSOCMEM_CHECK_ARG(x.allFinite(), what, " contains NaN or Inf");
}
void check_finite(const Matrix& x, const char* what) {
  ASSOCMEM_CHECK_ARG(x.allFinite(), what, " contains NaN or Inf");
}
void check_positive(double x, const char* what) {
  ASSOCMEM_CHECK_ARG(std::isfinite(x) && x > 0, what, " must be finite and > 0, got ", x);
}

Network::Network(Matrix xi, LagrangianPtr feature, LagrangianPtr hidden, NetworkParams params)
    : xi_(std::move(xi)), Lv_(std::move(feature)), Lh_(std::move(hidden)), p_(std::move(params)) {
  ASSOCMEM_CHECK_ARG(xi_.rows() > 0, "xi: the memory is empty (N_h = 0 rows)");
  ASSOCMEM_CHECK_ARG(xi_.cols() > 0, "xi: patterns have dimension N_f = 0");
  check_finite(xi_, "xi");
  ASSOCMEM_CHECK_ARG(Lv_ != nullptr, "feature Lagrangian is null");
  ASSOCMEM_CHECK_ARG(Lh_ != nullptr, "hidden Lagrangian is null");
  check_positive(p_.tau_f, "tau_f");
  check_positive(p_.tau_h, "tau_h");
  ASSOCMEM_CHECK_ARG(std::isfinite(p_.alpha) && p_.alpha >= 0, "alpha must be finite and >= 0, got ", p_.alpha);
  // eq. (23) with alpha != 1 gains -(alpha - 1) v'^T M_v v, which has no sign unless M_v v = 0
  // (eq. 20): with identity features and alpha = 0.3 the energy rises (4.88 -> 9.27, issue 9).
  ASSOCMEM_CHECK_ARG(p_.alpha == 1.0 || Lv_->radial_zero_mode(), "alpha = ", p_.alpha,
                     " != 1 needs a feature Lagrangian whose Hessian has the zero mode M_v v = 0 (eq. 20: "
                     "spherical or abs); with ",
                     Lv_->name(), " the energy is not guaranteed to decrease (eq. 23)");
  if (p_.current.size() == 0) {
    I_ = Vector::Zero(xi_.cols());
  } else {
    ASSOCMEM_CHECK_ARG(p_.current.size() == xi_.cols(), "current I has length ", p_.current.size(),
                       " but N_f = ", xi_.cols());
    check_finite(p_.current, "current I");
    I_ = p_.current;
  }
}

void Network::check_state(const Vector& v, const Vector& h) const {
  ASSOCMEM_CHECK_ARG(v.size() == n_features(), "v has length ", v.size(), " but N_f = ", n_features());
  ASSOCMEM_CHECK_ARG(h.size() == n_hidden(), "h has length ", h.size(), " but N_h = ", n_hidden());
  check_finite(v, "v");
  check_finite(h, "h");
}

void Network::rhs(const Vector& v, const Vector& h, Vector& dv, Vector& dh) const {
  check_state(v, h);
  const Vector f = Lh_->gradient(h);  // eq. (3)
  const Vector g = Lv_->gradient(v);
  // eq. (1)
  dv = (xi_.transpose() * f - p_.alpha * v + I_) / p_.tau_f;
  dh = (xi_ * g - h) / p_.tau_h;
}

double Network::energy(const Vector& v, const Vector& h) const {
  check_state(v, h);
  const Vector f = Lh_->gradient(h);
  const Vector g = Lv_->gradient(v);
  // eq. (2): two Legendre terms and the two-body interaction.
  return ((v - I_).dot(g) - Lv_->value(v)) + (h.dot(f) - Lh_->value(h)) - f.dot(xi_ * g);
}

double Network::energy_rate(const Vector& v, const Vector& h) const {
  Vector dv, dh;
  rhs(v, h, dv, dh);
  const Vector Mv_dv = Lv_->hvp(v, dv);
  const Vector Mh_dh = Lh_->hvp(h, dh);
  // eq. (4) / eq. (23). With alpha != 1 the bracket [xi f + I - v] of eq. (23) equals
  // tau_f v' + (alpha - 1) v, which adds -(alpha - 1) v'^T M_v v.
  double rate = -p_.tau_f * dv.dot(Mv_dv) - p_.tau_h * dh.dot(Mh_dh);
  if (p_.alpha != 1.0) rate -= (p_.alpha - 1.0) * Mv_dv.dot(v);
  return rate;
}

Vector Network::hidden_steady_state(const Vector& v) const {
  ASSOCMEM_CHECK_ARG(v.size() == n_features(), "v has length ", v.size(), " but N_f = ", n_features());
  check_finite(v, "v");
  return xi_ * Lv_->gradient(v);  // eq. (5)
}

double Network::effective_energy(const Vector& v) const {
  const Vector h = hidden_steady_state(v);
  const Vector g = Lv_->gradient(v);
  // eq. (2) with eq. (5) substituted: sum_mu h_mu f_mu = f^T xi g cancels the interaction term.
  return ((v - I_).dot(g) - Lv_->value(v)) - Lh_->value(h);
}

void Network::effective_rhs(const Vector& v, Vector& dv) const {
  const Vector h = hidden_steady_state(v);
  // eq. (1), first line, with eq. (5): eqs. (14) and (22).
  dv = (xi_.transpose() * Lh_->gradient(h) - p_.alpha * v + I_) / p_.tau_f;
}

Network Network::with_time_constants(double tau_f, double tau_h) const {
  NetworkParams p = p_;
  p.tau_f = tau_f;
  p.tau_h = tau_h;
  return Network(xi_, Lv_, Lh_, p);
}

Network::EnergyBound Network::energy_bound() const {
  EnergyBound b;
  if (!Lv_->convex_everywhere() || !Lh_->convex_everywhere()) {
    b.why = "a Lagrangian is not convex everywhere (" + Lv_->psd_region() + "; " + Lh_->psd_region() +
            "): the Legendre form of eq. (2) gives no bound";
    return b;
  }
  const Eigen::Index nf = n_features(), nh = n_hidden();
  const double xi_norm = xi_.norm();  // Frobenius >= spectral norm
  const double I_norm = I_.norm();
  const double G = Lv_->activation_bound(nf);
  if (std::isfinite(G)) {
    const double sup = Lh_->sup_on_ball(xi_norm * G, nh);
    b.verdict = EnergyBound::Verdict::Bounded;
    b.lower = -Lv_->value(Vector::Zero(nf)) - I_norm * G - sup;
    b.why = "the feature activation is bounded (|g| <= " + detail::concat(G) + ")";
    return b;
  }
  if (Lv_->name() == "identity") {
    const double F = Lh_->activation_bound(nh);
    if (std::isfinite(F)) {
      b.verdict = EnergyBound::Verdict::Bounded;
      b.lower = -Lh_->value(Vector::Zero(nh)) - 0.5 * (xi_norm * F + I_norm) * (xi_norm * F + I_norm);
      b.why = "identity features and a bounded hidden activation (|f| <= " + detail::concat(F) + ")";
      return b;
    }
    if (Lh_->additive() && Lh_->activation_growth() > 1 && xi_norm > 0) {
      b.verdict = EnergyBound::Verdict::Unbounded;
      b.why = "identity features with a hidden activation growing like |h|^" + detail::concat(Lh_->activation_growth()) +
              ": the conjugate of L_h grows slower than the quadratic |xi^T f|^2 / 2 it must hold";
      return b;
    }
  }
  b.why = "no bound is known for features " + Lv_->name() + " with hidden " + Lh_->name();
  return b;
}

}  // namespace assocmem
