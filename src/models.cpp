// Effective models A, B, C (Section 3): plain reference implementations.
#include "assocmem/models.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "assocmem/error.hpp"
#include "fixed_point.hpp"

namespace assocmem {

Interaction parse_interaction(const std::string& name) {
  if (name == "power") return Interaction::Power;
  if (name == "rectified" || name == "rectified_power") return Interaction::RectifiedPower;
  if (name == "exp") return Interaction::Exp;
  throw InvalidArgument("F must be one of power, rectified, exp; got '" + name + "'");
}

std::string to_string(Interaction kind) {
  switch (kind) {
    case Interaction::Power: return "power";
    case Interaction::RectifiedPower: return "rectified";
    case Interaction::Exp: return "exp";
  }
  return "?";
}

InteractionSpec default_interaction(ModelKind model) {
  ASSOCMEM_CHECK_ARG(model != ModelKind::B, "model B has no interaction function F");
  return {model == ModelKind::A ? Interaction::Power : Interaction::RectifiedPower, 3.0, 1.0};
}

AdditivePtr make_interaction(const InteractionSpec& spec) {
  switch (spec.kind) {
    case Interaction::Power: return lagrangians::power(spec.n);
    case Interaction::RectifiedPower: return lagrangians::rectified_power(spec.n);
    case Interaction::Exp: return lagrangians::exp(spec.beta);
  }
  throw InvalidArgument("F: unknown interaction kind");
}

namespace {
void check_query(const Vector& v, Eigen::Index n, const char* what) {
  ASSOCMEM_CHECK_ARG(v.size() == n, what, " has length ", v.size(), " but N_f = ", n);
  check_finite(v, what);
}
}  // namespace

// ------------------------------------------------------------------------------------------------
// Model A.

ModelA::ModelA(Matrix patterns, InteractionSpec F, Vector current)
    : net_(std::move(patterns), lagrangians::abs(), make_interaction(F), NetworkParams{1.0, 1.0, 1.0, std::move(current)}),
      spec_(F),
      F_(make_interaction(F)),
      binary_(((net_.xi().array() == 1.0) || (net_.xi().array() == -1.0)).all()) {}

__extension__ typedef __int128 i128;  // exact sums of integer powers (GCC and clang)

namespace {
// s exp(logD) + two_I without forming exp(logD) when it would overflow (model A's field with F = exp).
// A non-zero field of sign `sign` and magnitude `mag` (possibly below the double range): the magnitude,
// or the smallest subnormal where it underflowed, so that the sign - all an update uses - survives
// (issue 23: at N = 64, beta = 12 the field at -xi is +6.4e-325, which underflowed to a tie).
double signed_field(double sign, double mag) {
  return sign * std::max(mag, std::numeric_limits<double>::denorm_min());
}

double add_in_log_domain(double s, double logD, double two_I) {
  if (two_I == 0.0) return signed_field(s, std::exp(logD));
  const double logI = std::log(std::fabs(two_I));
  const double hi = std::max(logD, logI), lo = std::min(logD, logI);
  if ((two_I > 0) == (s > 0)) return signed_field(s, std::exp(hi) * (1.0 + std::exp(lo - hi)));
  if (logD == logI) return 0.0;
  return signed_field(logD > logI ? s : -s, std::exp(hi) * -std::expm1(lo - hi));
}
}  // namespace

double grouped_binary_field(const InteractionSpec& F, const std::vector<std::int64_t>& c, long offset, double two_I) {
  // The highest overlap with a non-zero coefficient leads; below it everything is relative to it.
  long top = -1;
  for (long k = static_cast<long>(c.size()) - 1; k >= 0; --k)
    if (c[static_cast<std::size_t>(k)] != 0) {
      top = k;
      break;
    }
  if (top < 0) return two_I;  // every memory cancels
  if (F.kind != Interaction::Exp) {
    // D(r) = F(r + 1) - F(r - 1): integers for integer powers. Exact in 128 bits while it fits.
    const bool integral = F.n == std::floor(F.n) && F.n <= 64;
    auto Fi = [&](long x, i128& out) {
      if (F.kind == Interaction::RectifiedPower && x < 0) return out = 0, true;
      i128 v = 1;
      for (int k = 0; k < static_cast<int>(F.n); ++k)
        if (__builtin_mul_overflow(v, static_cast<i128>(x), &v)) return false;
      out = v;
      return true;
    };
    if (integral) {
      i128 sum = 0;
      bool fits = true;
      for (long k = 0; k <= top && fits; ++k) {
        const std::int64_t ck = c[static_cast<std::size_t>(k)];
        if (ck == 0) continue;
        const long r = k - offset;
        i128 a, b, d;
        fits = Fi(r + 1, a) && Fi(r - 1, b) && !__builtin_sub_overflow(a, b, &d) &&
               !__builtin_mul_overflow(d, static_cast<i128>(ck), &d) && !__builtin_add_overflow(sum, d, &sum);
      }
      if (fits) return static_cast<double>(sum) + two_I;
    }
    const AdditivePtr G = make_interaction(F);
    double sum = 0;
    for (long k = 0; k <= top; ++k)
      if (const std::int64_t ck = c[static_cast<std::size_t>(k)])
        sum += static_cast<double>(ck) * (G->G(double(k - offset) + 1.0) - G->G(double(k - offset) - 1.0));
    return sum + two_I;
  }
  // F = exp: D(r) = exp(beta r) (e^beta - e^-beta) / beta. S = sum_r c_r exp(beta (r - r_top)) has the
  // exact integer c_top as its leading term, the rest below it by factors exp(-2 beta) and more.
  const double beta = F.beta;
  double S = 0;
  for (long k = top; k >= 0; --k)
    if (const std::int64_t ck = c[static_cast<std::size_t>(k)]) S += static_cast<double>(ck) * std::exp(beta * double(k - top));
  if (S == 0) return two_I;
  // log |sum_r c_r D(r)| = log|S| + beta r_top + log(2 sinh(beta) / beta)
  const double log2sinh = beta + std::log(-std::expm1(-2.0 * beta));
  return add_in_log_domain(S > 0 ? 1.0 : -1.0,
                           std::log(std::fabs(S)) + beta * double(top - offset) + log2sinh - std::log(beta), two_I);
}

void ModelA::check_binary(const Vector& sigma, const char* what) const {
  check_query(sigma, n_features(), what);
  for (Eigen::Index i = 0; i < sigma.size(); ++i)
    ASSOCMEM_CHECK_ARG(sigma[i] == 1.0 || sigma[i] == -1.0, what, "[", i, "] = ", sigma[i],
                       ": model A states must be +1 or -1");
}

double ModelA::energy(const Vector& sigma) const {
  check_binary(sigma);
  return net_.effective_energy(sigma);  // eq. (2) at h = xi sigma, i.e. eq. (8)
}

double ModelA::field(const Vector& sigma, Eigen::Index i) const {
  ASSOCMEM_CHECK_ARG(i >= 0 && i < n_features(), "neuron index i = ", i, " is out of range [0, ", n_features(), ")");
  const Matrix& xi = net_.xi();
  const Vector overlaps = xi * sigma;                         // xi_mu . sigma
  const Vector r = overlaps - xi.col(i) * sigma[i];           // sum_{j != i} xi_mu,j sigma_j
  const double two_I = 2.0 * net_.current()[i];
  if (binary_) {  // +-1 patterns: integer overlaps, grouped (exact sign)
    const long N = static_cast<long>(n_features());
    std::vector<std::int64_t> c(static_cast<std::size_t>(2 * N + 1), 0);
    for (Eigen::Index mu = 0; mu < r.size(); ++mu)
      c[static_cast<std::size_t>(std::lround(r[mu]) + N)] += xi(mu, i) > 0 ? 1 : -1;
    return grouped_binary_field(spec_, c, N, two_I);
  }
  if (spec_.kind != Interaction::Exp) {
    double d = 0;
    for (Eigen::Index mu = 0; mu < r.size(); ++mu) d += F_->G(r[mu] + xi(mu, i)) - F_->G(r[mu] - xi(mu, i));
    return d + two_I;
  }
  // F = exp: the same difference, in the log domain so that it never overflows to inf - inf.
  const auto& E = static_cast<const ExpLagrangian&>(*F_);
  Vector lp(r.size()), lm(r.size());
  for (Eigen::Index mu = 0; mu < r.size(); ++mu) {
    lp[mu] = E.log_G(r[mu] + xi(mu, i));
    lm[mu] = E.log_G(r[mu] - xi(mu, i));
  }
  const double a = numerics::log_sum_exp(lp), b = numerics::log_sum_exp(lm);
  if (a == b) return two_I;
  // sum G(a+) - sum G(a-) = s exp(logD), s = sign(a - b).
  return add_in_log_domain(a > b ? 1.0 : -1.0, std::max(a, b) + std::log(-std::expm1(-std::fabs(a - b))), two_I);
}

namespace {
// A single query as a batch of one, run through the shared driver (fixed_point.hpp).
template <class Update, class Change>
Retrieval run_single(const Vector& v0, long max_steps, double tol, const Monitor& monitor, Update&& update,
                     Change&& change) {
  Retrieval out;
  out.batch = 1;
  out.dim = static_cast<std::size_t>(v0.size());
  out.states.assign(v0.data(), v0.data() + v0.size());
  detail::Poller poller(monitor);
  detail::iterate_to_fixed_point(out.states, 1, out.dim, max_steps, tol, poller, out,
                                 [&](const std::vector<double>& cur, const std::vector<std::size_t>&, std::vector<double>& next) {
                                   const Vector v = Eigen::Map<const Vector>(cur.data(), static_cast<Eigen::Index>(cur.size()));
                                   const Vector n = update(v);
                                   std::copy(n.data(), n.data() + n.size(), next.begin());
                                 },
                                 change);
  return out;
}

void check_clamp(const RetrieveOptions& o, Eigen::Index n) {
  ASSOCMEM_CHECK_ARG(o.clamp.empty() || o.clamp.size() == static_cast<std::size_t>(n), "clamp has length ",
                     o.clamp.size(), " but N_f = ", n);
}
}  // namespace

Retrieval ModelA::retrieve(const Vector& sigma0, const RetrieveOptions& options) const {
  const ResolvedOptions o = resolve(options, ModelKind::A);
  check_binary(sigma0, "sigma0");
  const Eigen::Index N = n_features();
  check_clamp(options, N);
  auto clamped = [&](Eigen::Index i) { return !options.clamp.empty() && options.clamp[static_cast<std::size_t>(i)]; };
  std::vector<Eigen::Index> order(static_cast<size_t>(N));
  std::iota(order.begin(), order.end(), Eigen::Index{0});
  std::mt19937_64 rng(options.seed);
  auto sweep = [&](const Vector& sigma) {  // one sweep; the driver counts the flips
    Vector next = sigma;
    if (o.order == UpdateOrder::Synchronous) {
      for (Eigen::Index i = 0; i < N; ++i) {
        if (clamped(i)) continue;
        const double f = field(sigma, i);
        if (f != 0.0) next[i] = f > 0 ? 1.0 : -1.0;
      }
    } else {
      if (o.order == UpdateOrder::RandomAsync) std::shuffle(order.begin(), order.end(), rng);
      for (Eigen::Index i : order) {
        if (clamped(i)) continue;
        const double f = field(next, i);
        if (f != 0.0) next[i] = f > 0 ? 1.0 : -1.0;
      }
    }
    return next;
  };
  Retrieval out = run_single(sigma0, o.max_steps, o.tol, options.monitor, sweep, detail::flips<double>);
  if (options.energy) out.energy = {net_.effective_energy(out.state())};  // eq. (8)
  return out;
}

// ------------------------------------------------------------------------------------------------
// Model B.

ModelB::ModelB(Matrix patterns, double beta)
    : net_(std::move(patterns), lagrangians::identity(), lagrangians::log_sum_exp(beta)), beta_(beta) {}

double ModelB::energy(const Vector& v) const {
  check_query(v, n_features(), "v");
  return net_.effective_energy(v);  // eq. (13)
}

Vector ModelB::weights(const Vector& v) const {
  check_query(v, n_features(), "v");
  return net_.hidden_lagrangian().gradient(net_.hidden_steady_state(v));  // eq. (12)
}

Vector ModelB::update(const Vector& v, double step) const {
  ASSOCMEM_CHECK_ARG(std::isfinite(step) && step > 0 && step <= 1, "step (dt/tau_f) must be in (0, 1], got ", step);
  check_query(v, n_features(), "v");
  Vector dv;
  net_.effective_rhs(v, dv);  // eq. (14), tau_f = 1
  return v + step * dv;       // eq. (15); step = 1 is eq. (16)
}

Retrieval ModelB::retrieve(const Vector& v0, const RetrieveOptions& options) const {
  const ResolvedOptions o = resolve(options, ModelKind::B);
  ASSOCMEM_CHECK_ARG(!options.beta, "beta: the reference ModelB has a fixed beta (", beta_,
                     "); a per-call beta is a ModelBEngine option");
  ASSOCMEM_CHECK_ARG(options.mask.rows == 0, "mask: the reference ModelB takes no mask; use ModelBEngine");
  ASSOCMEM_CHECK_ARG(!options.certify && !options.approximate, options.certify ? "certify" : "approximate",
                     ": the reference ModelB computes every memory exactly; certified and approximate retrieval are "
                     "ModelBEngine options");
  check_query(v0, n_features(), "v0");
  check_clamp(options, n_features());
  Retrieval out = run_single(v0, o.max_steps, o.tol, options.monitor,
                             [&](const Vector& v) {
                               Vector next = update(v, o.step);
                               for (std::size_t j = 0; j < options.clamp.size(); ++j)
                                 if (options.clamp[j]) next[static_cast<Eigen::Index>(j)] = v0[static_cast<Eigen::Index>(j)];
                               return next;
                             },
                             detail::max_abs_change<double>);
  const Vector v = out.state();
  if (options.energy) out.energy = {net_.effective_energy(v)};  // eq. (13)
  if (options.top_k) {
    const Vector w = weights(v);
    std::vector<Eigen::Index> idx(static_cast<std::size_t>(w.size()));
    std::iota(idx.begin(), idx.end(), Eigen::Index{0});
    const std::size_t k = std::min<std::size_t>(options.top_k, idx.size());
    std::partial_sort(idx.begin(), idx.begin() + static_cast<long>(k), idx.end(),
                      [&](Eigen::Index a, Eigen::Index b) { return w[a] != w[b] ? w[a] > w[b] : a < b; });
    out.top.assign(1, {});
    for (std::size_t i = 0; i < k; ++i) out.top[0].push_back({static_cast<std::uint64_t>(idx[i]), w[idx[i]]});
  }
  return out;
}

// ------------------------------------------------------------------------------------------------
// Model C.

ModelC::ModelC(Matrix patterns, InteractionSpec F, double alpha)
    : net_(std::move(patterns), lagrangians::spherical(), make_interaction(F), NetworkParams{1.0, 1.0, alpha, Vector()}) {}

double ModelC::energy(const Vector& v) const {
  check_query(v, n_features(), "v");
  return net_.effective_energy(v);  // eq. (21)
}

Vector ModelC::velocity(const Vector& v) const {
  check_query(v, n_features(), "v");
  Vector dv;
  net_.effective_rhs(v, dv);  // eq. (22), tau_f = 1
  return dv;
}

Retrieval ModelC::retrieve(const Vector& v0, const RetrieveOptions& options) const {
  const ResolvedOptions o = resolve(options, ModelKind::C);
  ASSOCMEM_CHECK_ARG(options.mask.rows == 0, "mask: the reference ModelC takes no mask; use ModelCEngine");
  ASSOCMEM_CHECK_ARG(!options.certify, "certify: the reference ModelC computes every memory exactly; certified "
                     "retrieval is a ModelCEngine option");
  check_query(v0, n_features(), "v0");
  check_clamp(options, n_features());
  ASSOCMEM_CHECK_ARG(v0.norm() > 0, "v0 must be non-zero: model C's output v/|v| is undefined at 0");
  const bool track_direction = net_.params().alpha == 0.0;  // then |v| grows without bound
  Retrieval out = run_single(
      v0, o.max_steps, o.tol, options.monitor,
      [&](const Vector& v) {
        Vector next = v + o.step * velocity(v);
        for (std::size_t j = 0; j < options.clamp.size(); ++j)
          if (options.clamp[j]) next[static_cast<Eigen::Index>(j)] = v0[static_cast<Eigen::Index>(j)];
        ASSOCMEM_CHECK_ARG(next.norm() > 0, "model C: the state reached v = 0; reduce step");
        return next;
      },
      track_direction ? detail::direction_change<double> : detail::max_abs_change<double>);
  if (options.energy) out.energy = {net_.effective_energy(out.state())};  // eq. (21)
  return out;
}

}  // namespace assocmem
