// Forward error bounds of the engines' float32 passes, for the tests' tolerances.
//
// A test that compares a float32 engine with the plain (double) model, or two float32 computations
// that sum in different orders (threads, shards, MPI ranks, kernels), needs a tolerance. These helpers
// derive it from the computation, with the standard model of floating-point arithmetic
// (fl(a op b) = (a op b)(1 + delta), |delta| <= u; Higham, Accuracy and Stability of Numerical Algorithms,
// 2nd ed., ch. 3-4):
//  - a dot product of d terms, summed in any order (FMA or not): |error| <= gamma_d sum_k |x_k y_k|;
//  - a sum of terms by any summation tree of depth h: |error| <= gamma_h sum |terms|;
// with gamma_n = n u / (1 - n u) and u = 2^-24 (float32). The bounds are worst cases over every order
// and every CPU (the order a kernel sums in is not part of the bound), so a test using them holds on
// any instruction set, thread count or number of ranks; an error larger than the bound is a bug.
//
// The helpers follow the exact (double) trajectory of eq. (16) / eq. (22) and carry, step by step, a
// componentwise bound E_t on |computed state - exact state|: step t's scores see E_t through
// |xi_mu . delta v| <= |xi_mu|_1 E_t, so the bound propagates through the dynamics with the Jacobian
// the model actually has at the trajectory (for converging retrievals it shrinks).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "assocmem/types.hpp"

namespace assocmem::testing {

constexpr double kUnitRoundoffF32 = 0x1p-24;
constexpr double kUnitRoundoffBf16 = 0x1p-8;

inline double gamma_n(double n, double u = kUnitRoundoffF32) { return n * u / (1.0 - n * u); }

/// How an engine pass sums: over K memories in tiles of `tile` (a kernel accumulates a tile's terms in
/// one chain, then the tiles' partials are chained per worker, rescaled when the running maximum rises,
/// and the workers', shards' and ranks' partials merged). Every term then passes through at most
/// tile + 3 ceil(K / 32) additions and multiplications: a tile chain (<= tile), one rescaling and one
/// addition per later tile of its worker (< 2 K / 32: tiles hold >= 32 memories), and one merge per
/// other participant (fewer participants than tiles: < K / 32).
struct PassShape {
  std::size_t K = 0, d = 0, tile = 256;
  /// Operands rounded before the products: 0 for float32 products; kUnitRoundoffBf16 where the engine
  /// rounds queries and softmax weights to bfloat16 (bf16 products).
  double u_operands = 0.0;
  double depth() const { return double(tile) + 3.0 * std::ceil(double(K) / 32.0); }
};

/// The bound after one step: the exact next state, and per component the bound on the computed one.
struct StepBound {
  Vector next;  ///< the exact step from the exact input
  Vector err;   ///< |computed next - exact next| <= err (componentwise)
  double energy = 0, energy_err = 0;  ///< the exact energy at the exact input, and the bound of the computed one
  double lse = 0, lse_err = 0;        ///< model B: log sum_mu exp(beta xi_mu . v) at the input, and its bound
  Vector weights, weight_err;         ///< model B: softmax weights at the input, and bounds (absolute)
};

/// One float32 step of model B (eq. 15; eq. 16 at step = 1) from the exact input v, when the computed
/// input differs from v by at most E_in per component. X: the memories (K x d) exactly as stored.
/// The engine computes s = X v (dot products), beta s, m = max, w = exp(beta s - m) (exp within 4 ulp),
/// acc = sum w xi and S = sum w (summation trees of depth <= shape.depth()), a = acc / S, and then
/// (1 - step) v + step a (a at step 1); the energy (eq. 13) as v.v/2 - (m + log S) / beta.
/// With `values` (K x d_v, hetero-association: keys X, values V) the pass accumulates the values' rows
/// and the result is the association a = V^T softmax(beta X v) itself (step must be 1); `next`, `err` and
/// `weights` then describe a, and `energy` still the keys' eq. (13) at v.
inline StepBound model_b_step_bound(const Matrix& X, const Vector& v, double E_in, double beta, const PassShape& shape,
                                    double step = 1.0, const Matrix* values = nullptr) {
  const double u = kUnitRoundoffF32, gd = gamma_n(double(shape.d) + 1), h = gamma_n(shape.depth());
  const Eigen::Index K = X.rows(), d = X.cols();
  const Vector s = X * v;
  const double m = (beta * s).maxCoeff();
  const Vector w = (beta * s.array() - m).exp().matrix();
  const double S = w.sum();
  const Matrix& V = values ? *values : X;  // the rows accumulated
  const Vector a = V.transpose() * w / S;
  // theta_mu: the relative error of each computed weight w~ = w (1 + theta).
  Vector theta(K);
  for (Eigen::Index mu = 0; mu < K; ++mu) {
    double dot_abs = 0;
    for (Eigen::Index k = 0; k < d; ++k) dot_abs += std::abs(X(mu, k)) * (std::abs(v[k]) + E_in);
    const double ds = X.row(mu).lpNorm<1>() * E_in + (gd + shape.u_operands) * dot_abs;
    const double bs = beta * s[mu];
    const double t = beta * ds + u * (std::abs(bs) + std::abs(bs - m)) + 6 * u + shape.u_operands;
    theta[mu] = std::expm1(t);
  }
  const double tmax = theta.maxCoeff();
  StepBound out;
  if (!(tmax < 0.5)) {  // weights uncertain by 50% or more: no useful bound
    const double inf = std::numeric_limits<double>::infinity();
    out.next = values ? a : v;
    out.err = Vector::Constant(V.cols(), inf);
    out.energy_err = inf;
    out.weights = Vector::Zero(K);
    out.weight_err = Vector::Constant(K, inf);
    return out;
  }
  out.err.resize(V.cols());
  for (Eigen::Index j = 0; j < V.cols(); ++j) {
    double spread = 0, mag = 0;
    for (Eigen::Index mu = 0; mu < K; ++mu) {
      spread += w[mu] * theta[mu] * std::abs(V(mu, j) - a[j]);
      mag += w[mu] * (1 + theta[mu]) * std::abs(V(mu, j));
    }
    // Perturbed weights move a by sum w theta (xi - a) / sum w~; the sums' rounding (and the weights'
    // rounding to the operand format) moves acc by (h + u_op) mag and S by h S~; then a's division.
    const double Sl = S * (1 - tmax);
    const double err_a = spread / Sl + (h + shape.u_operands) * mag / Sl / (1 - h) +
                         h * (std::abs(a[j]) + spread / Sl) / (1 - h) + u * std::abs(a[j]);
    // The relaxation (eq. 15) is (1 - step) v + step a in double, rounded once to float32: a itself at
    // step 1 (src/fixed_point.hpp relax).
    out.err[j] = values || step == 1.0
                     ? err_a
                     : std::abs(1 - step) * E_in + step * err_a +
                           (u + 0x1p-51) * (std::abs(1 - step) * (std::abs(v[j]) + E_in) + step * (std::abs(a[j]) + err_a));
  }
  out.next = values ? a : Vector(v + step * (a - v));
  const double lse = m + std::log(S);
  const double lse_err = std::log1p(tmax) + 2 * h + u * (std::abs(m) + std::abs(lse));
  out.lse = lse;
  out.lse_err = lse_err;
  out.energy = 0.5 * v.squaredNorm() - lse / beta;
  out.energy_err = (v.lpNorm<1>() + double(d) * E_in) * E_in + gd * v.squaredNorm() + lse_err / beta +
                   u * std::abs(out.energy) + 1e-300;
  out.weights = w / S;
  out.weight_err.resize(K);
  for (Eigen::Index mu = 0; mu < K; ++mu) out.weight_err[mu] = out.weights[mu] * std::expm1(std::log1p(theta[mu]) + lse_err + 4 * u);
  return out;
}

/// One float32 step of model C (eq. 22: v + step (sum_mu xi_mu F'(xi_mu . g) - alpha v), g = v / |v|)
/// from the exact input v, with the computed input within E_in per component. Fp, Fpp: F' and F'';
/// Fpp_max(x, r): max |F''| on [x - r, x + r]; c_F: F''s relative evaluation error in units of u.
/// The energy (eq. 21) -sum F(xi . g) at the input.
inline StepBound model_c_step_bound(const Matrix& X, const Vector& v, double E_in, double alpha, double step,
                                    const std::function<double(double)>& F, const std::function<double(double)>& Fp,
                                    const std::function<double(double, double)>& Fpp_max, double c_F,
                                    const PassShape& shape) {
  const double u = kUnitRoundoffF32, gd = gamma_n(double(shape.d) + 1), h = gamma_n(shape.depth());
  const Eigen::Index K = X.rows(), d = X.cols();
  const double n = v.norm();
  const Vector g = v / n;
  const double dn = std::sqrt(double(d)) * E_in;  // |delta v|_2
  if (!(dn < 0.25 * n)) {  // the direction itself is uncertain: no useful bound
    const double inf = std::numeric_limits<double>::infinity();
    StepBound out;
    out.next = v;
    out.err = Vector::Constant(d, inf);
    out.energy_err = inf;
    return out;
  }
  // |delta g_k| from the input (first order, divided by 1 - dn/n for the second) and from g's rounding
  // (the norm's sum of squares, its square root and the division).
  Vector dg(d);
  for (Eigen::Index k = 0; k < d; ++k)
    dg[k] = (E_in + std::abs(g[k]) * dn) / n / (1 - 2 * dn / n) + (gd + 3 * u) * (std::abs(g[k]) + E_in / n);
  const Vector x = X * g;
  Vector f(K), df(K), dx(K);
  double energy = 0, energy_err = 0;
  for (Eigen::Index mu = 0; mu < K; ++mu) {
    double dot_abs = 0, in = 0;
    for (Eigen::Index k = 0; k < d; ++k) {
      dot_abs += std::abs(X(mu, k)) * (std::abs(g[k]) + dg[k]);
      in += std::abs(X(mu, k)) * dg[k];
    }
    dx[mu] = in + gd * dot_abs;
    f[mu] = Fp(x[mu]);
    df[mu] = Fpp_max(x[mu], dx[mu]) * dx[mu] + c_F * u * (std::abs(f[mu]) + Fpp_max(x[mu], dx[mu]) * dx[mu]);
    energy -= F(x[mu]);
    energy_err += (std::abs(f[mu]) + df[mu]) * dx[mu] + c_F * u * std::abs(F(x[mu]));
  }
  StepBound out;
  out.err.resize(d);
  const Vector D = X.transpose() * f;
  for (Eigen::Index j = 0; j < d; ++j) {
    double moved = 0, mag = 0;
    for (Eigen::Index mu = 0; mu < K; ++mu) {
      moved += df[mu] * std::abs(X(mu, j));
      mag += (std::abs(f[mu]) + df[mu]) * std::abs(X(mu, j));
    }
    const double err_D = moved + h * mag;
    out.err[j] = std::abs(1 - step * alpha) * E_in + step * err_D +
                 3 * u * (std::abs(v[j]) + E_in + step * (std::abs(D[j]) + err_D + alpha * (std::abs(v[j]) + E_in)));
  }
  out.next = v + step * (D - alpha * v);
  out.energy = energy;
  out.energy_err = energy_err + h * std::abs(energy) + 1e-300;
  return out;
}

/// The fused attention (eq. 16 with keys X, values V; softmax weights eq. 12) and its gradient for an
/// upstream gradient G of the output, as the float32 backward pass computes it (src/attention.cpp,
/// FlashAttention style): P recomputed as exp(beta S - L) from the float32 log-sum-exp L,
/// Dlt = rowsum(G o O) (double sum of float32 products, rounded), dS = P o (G V^T - Dlt),
/// dQ = beta dS X, dK = beta dS^T Q, dV = P^T G, dbeta = sum dS o S (double sums). Exact values (double,
/// from the float32 inputs as given) and componentwise bounds of the float32 results. mask: n x K bytes
/// (non-zero = memory absent for that query) or empty. When the values are the keys, the caller adds dK
/// and dV (and their bounds, plus u |dK + dV|).
struct AttentionBound {
  Matrix out, out_err, dq, dq_err, dk, dk_err, dv, dv_err;
  /// The bound of dk + dv where the values are the keys, summed either way: each product on its own
  /// (inner dimension n), or both as one product [beta Q^T | dO^T] [dS; P] of inner dimension 2n (beta
  /// rounded into the queries: one rounding more).
  Matrix dkv_err;
  Vector lse, lse_err;
  double dbeta = 0, dbeta_err = 0;
};
inline AttentionBound attention_bound(const Matrix& Q, const Matrix& X, const Matrix& V, const Matrix& G, double beta,
                                      const std::vector<std::uint8_t>& mask, const PassShape& shape) {
  const double u = kUnitRoundoffF32;
  const Eigen::Index n = Q.rows(), K = X.rows(), d = X.cols(), dv = V.cols();
  const double gd = gamma_n(double(d) + 1), gv = gamma_n(double(dv) + 1), gq = gamma_n(double(n) + 2),
               h = gamma_n(shape.depth() + 2);
  AttentionBound r;
  r.out = r.out_err = Matrix::Zero(n, dv);
  r.dq = r.dq_err = Matrix::Zero(n, d);
  r.dk = r.dk_err = Matrix::Zero(K, d);
  r.dv = r.dv_err = Matrix::Zero(K, dv);
  r.lse = r.lse_err = Vector::Zero(n);
  Matrix dk_mag = Matrix::Zero(K, d), dv_mag = Matrix::Zero(K, dv);  // sum_i (|ds| + e_ds) |q_i| etc.
  for (Eigen::Index i = 0; i < n; ++i) {
    std::vector<Eigen::Index> kept;
    for (Eigen::Index mu = 0; mu < K; ++mu)
      if (mask.empty() || !mask[std::size_t(i * K + mu)]) kept.push_back(mu);
    const auto Ki = Eigen::Index(kept.size());
    Matrix Xi(Ki, d), Vi(Ki, dv);
    for (Eigen::Index r2 = 0; r2 < Ki; ++r2) {
      Xi.row(r2) = X.row(kept[std::size_t(r2)]);
      Vi.row(r2) = V.row(kept[std::size_t(r2)]);
    }
    const Vector q = Q.row(i).transpose(), g = G.row(i).transpose();
    const StepBound sb = model_b_step_bound(Xi, q, 0.0, beta, shape, 1.0, &Vi);
    r.out.row(i) = sb.next.transpose();
    r.out_err.row(i) = sb.err.transpose();
    r.lse[i] = sb.lse;
    r.lse_err[i] = sb.lse_err;
    const double c = g.dot(sb.next);
    const double e_c = g.cwiseAbs().dot(sb.err) + u * (std::abs(c) + g.cwiseAbs().dot(sb.err)) +
                       1e-15 * g.cwiseAbs().dot(sb.next.cwiseAbs());
    for (Eigen::Index r2 = 0; r2 < Ki; ++r2) {
      const Eigen::Index mu = kept[std::size_t(r2)];
      const double p = sb.weights[r2];
      const double pe = sb.weight_err[r2] + (p + sb.weight_err[r2]) * std::expm1(u * (std::abs(sb.lse) + 2)) + 0x1p-126;
      const double dp = g.dot(Vi.row(r2).transpose()), e_dp = gv * g.cwiseAbs().dot(Vi.row(r2).cwiseAbs().transpose());
      const double ds = p * (dp - c);
      const double e_ds = pe * std::abs(dp - c) + (p + pe) * (e_dp + e_c) + 2 * u * (p + pe) * (std::abs(dp - c) + e_dp + e_c);
      const double sc = q.dot(Xi.row(r2).transpose()), e_s = gd * q.cwiseAbs().dot(Xi.row(r2).cwiseAbs().transpose());
      r.dbeta += ds * sc;
      r.dbeta_err += e_ds * std::abs(sc) + (std::abs(ds) + e_ds) * e_s + 0x1p-50 * (std::abs(ds) + e_ds) * (std::abs(sc) + e_s);
      for (Eigen::Index j = 0; j < d; ++j) {
        r.dq(i, j) += beta * ds * X(mu, j);
        r.dq_err(i, j) += beta * (e_ds + h * (std::abs(ds) + e_ds)) * std::abs(X(mu, j));
        r.dk(mu, j) += beta * ds * q[j];
        r.dk_err(mu, j) += beta * e_ds * std::abs(q[j]);
        dk_mag(mu, j) += beta * (std::abs(ds) + e_ds) * std::abs(q[j]);
      }
      for (Eigen::Index j = 0; j < dv; ++j) {
        r.dv(mu, j) += p * g[j];
        r.dv_err(mu, j) += pe * std::abs(g[j]);
        dv_mag(mu, j) += (p + pe) * std::abs(g[j]);
      }
    }
  }
  r.dq_err += u * r.dq.cwiseAbs();
  if (d == dv)  // dk_err and dv_err hold the inputs' errors here
    r.dkv_err = r.dk_err + r.dv_err + gamma_n(2 * double(n) + 3) * (dk_mag + dv_mag) + u * (r.dk + r.dv).cwiseAbs();
  r.dk_err += gq * dk_mag + u * r.dk.cwiseAbs();
  r.dv_err += gq * dv_mag;
  return r;
}

/// The bound carried along T steps of the exact trajectory from v0 (computed input = v0 exactly, as a
/// float32 query is): after each step the computed state is within err of the exact one componentwise,
/// and the next step sees that as its E_in (the max). `state` is the exact (double) state after `steps`
/// steps. The bound is a worst case: where the step expands (early in a retrieval, beta Cov_w(xi) > 1)
/// it grows geometrically and may pass every scale; `steps` then counts the steps it stayed finite for
/// (fewer than asked), and state/err are those after them.
struct TrajectoryBound {
  Vector state, err;
  long steps = 0;
  double energy = 0, energy_err = 0;  ///< the energy at the exact state and its bound (from one more pass)
};
template <class StepFn>
TrajectoryBound propagate(const StepFn& step, const Vector& v0, long steps) {
  TrajectoryBound out;
  out.state = v0;
  out.err = Vector::Zero(v0.size());
  for (long t = 0; t < steps; ++t) {
    const StepBound sb = step(out.state, out.err.maxCoeff());
    if (!sb.err.allFinite()) break;
    out.state = sb.next;
    out.err = sb.err;
    out.steps = t + 1;
  }
  const StepBound at = step(out.state, out.err.maxCoeff());
  out.energy = at.energy;
  out.energy_err = at.energy_err;
  return out;
}

}  // namespace assocmem::testing
