// assocmem/models.hpp - the effective models of Section 3 (tau_h -> 0): A, B and C.
//
// Each model is the general network (network.hpp) with particular Lagrangians, with the hidden
// neurons integrated out (eq. 5). Its energy is Network::effective_energy, i.e. eq. (2) at the
// hidden steady state, so energy and dynamics share one definition. These are the plain, readable
// reference implementations; fast paths must agree with them.
//
//   Model A: L_v = sum |v| (binary sigma = Sign v, eq. 7), L_h = sum F(h) (eq. 6).  Energy eq. (8).
//   Model B: L_v = v^2/2, L_h = log-sum-exp with beta (eq. 11).  Energy eq. (13), update eqs. (15), (16).
//   Model C: L_v = |v| (spherical, eq. 17), L_h = sum F(h).  Energy eq. (21), dynamics eq. (22).
//
// Patterns are K x N_f (row mu = memory xi_mu), K = N_h.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "assocmem/lagrangian.hpp"
#include "assocmem/network.hpp"
#include "assocmem/retrieve.hpp"

namespace assocmem {

/// The interaction function F of models A and C: the hidden layer's additive Lagrangian G.
enum class Interaction {
  Power,           ///< F(x) = x^n, integer n >= 1 (n = 2: the classical Hopfield network)
  RectifiedPower,  ///< F(x) = x^n for x >= 0, else 0; real n >= 1
  Exp              ///< F(x) = exp(beta x) / beta (Demircigil et al. at beta = 1)
};

struct InteractionSpec {
  Interaction kind = Interaction::Power;
  double n = 2.0;     ///< power (Power, RectifiedPower)
  double beta = kDefaultBeta;  ///< gain (Exp)
};

/// The default F of models A and C, the same in C++, the CLI and Python: A F(x) = x^3 (Krotov &
/// Hopfield 2016's dense memory), C F(x) = x^3 for x >= 0 (rectified). Model B has no F.
InteractionSpec default_interaction(ModelKind model);

/// "power", "rectified" (or "rectified_power"), "exp"; throws InvalidArgument otherwise.
Interaction parse_interaction(const std::string& name);
std::string to_string(Interaction kind);
/// The Lagrangian G = F for a spec (validates n and beta).
AdditivePtr make_interaction(const InteractionSpec& spec);

/// The Krotov-Hopfield 2016 field of neuron i for +-1 memories, grouped by overlap:
///   E(sigma_i = -1) - E(sigma_i = +1) = 2 I_i + sum_r c_r [F(r + 1) - F(r - 1)],
///   c_r = sum of xi_mu,i over the memories whose r_mu = sum_{j != i} xi_mu,j sigma_j equals r,
/// given as c[r + offset] (integers). Memories that cancel (same r, opposite xi_mu,i) cancel exactly
/// in c_r, so the sign is exact for every beta: integer arithmetic for integer powers (while it fits
/// in 128 bits, else double), and for F = exp the sum scaled by exp(-beta r_max), whose leading
/// coefficient is an exact non-zero integer. The magnitude may overflow to +-inf (F = exp).
/// Shared by ModelA::field and the fast engine's exact fallback (binary.cpp).
double grouped_binary_field(const InteractionSpec& F, const std::vector<std::int64_t>& c, long offset, double two_I);

/// Model A, the binary Dense Associative Memory (Section 3.1; Krotov & Hopfield 2016).
class ModelA {
 public:
  /// patterns: K x N_f (typically +-1). current: input current I (length N_f) or empty.
  ModelA(Matrix patterns, InteractionSpec F, Vector current = Vector());

  Eigen::Index n_features() const { return net_.n_features(); }
  Eigen::Index n_memories() const { return net_.n_hidden(); }
  const Network& network() const { return net_; }

  /// eq. (8): E = -sum_i I_i sigma_i - sum_mu F(xi_mu . sigma). sigma must be +-1.
  /// (With F = exp it overflows to -inf once beta xi.sigma > ~709; the update rule does not.)
  double energy(const Vector& sigma) const;

  /// E(sigma with sigma_i = -1) - E(sigma with sigma_i = +1)
  ///   = 2 I_i + sum_mu [F(xi_mu,i + r_mu) - F(-xi_mu,i + r_mu)],  r_mu = sum_{j != i} xi_mu,j sigma_j,
  /// the Krotov-Hopfield 2016 update field. Its sign is the energy-lowering value of sigma_i.
  /// For +-1 patterns the sign is exact for every F and beta (grouped_binary_field); for real-valued
  /// patterns F = exp is summed in the log domain (no overflow; terms below 2^-53 of the largest are
  /// lost when the largest cancel).
  double field(const Vector& sigma, Eigen::Index i) const;

  /// Runs the update rule from sigma0 until a full sweep changes nothing (tol flips), or max_steps
  /// sweeps. sigma_i <- Sign(field); a zero field keeps sigma_i. Options: retrieve.hpp (no step,
  /// beta, top_k or mask).
  Retrieval retrieve(const Vector& sigma0, const RetrieveOptions& options = {}) const;

  /// Throws InvalidArgument unless sigma has length N_f and entries +-1.
  void check_binary(const Vector& sigma, const char* what = "sigma") const;

 private:
  Network net_;
  InteractionSpec spec_;
  AdditivePtr F_;
  bool binary_ = false;  // every pattern entry is +1 or -1: fields are grouped by overlap (exact sign)
};

// ------------------------------------------------------------------------------------------------
/// Model B, the modern Hopfield network (Section 3.2; Ramsauer et al. 2020).
class ModelB {
 public:
  ModelB(Matrix patterns, double beta);

  Eigen::Index n_features() const { return net_.n_features(); }
  Eigen::Index n_memories() const { return net_.n_hidden(); }
  double beta() const { return beta_; }
  const Network& network() const { return net_; }

  /// eq. (13) with inverse temperature beta: E = v.v/2 - (1/beta) log sum_mu exp(beta xi_mu . v).
  /// Ramsauer et al.'s energy is this + (1/beta) log K + M^2/2 (M = max |xi_mu|).
  double energy(const Vector& v) const;
  /// softmax(beta xi v) (eq. 12 at h = xi v): the attention weights over the memories.
  Vector weights(const Vector& v) const;
  /// One update, eq. (15): v + step (xi^T softmax(beta xi v) - v); step = 1 is eq. (16).
  Vector update(const Vector& v, double step = 1.0) const;
  /// Iterates eq. (15) to convergence or max_steps. Options: retrieve.hpp; top_k ranks memories by
  /// their softmax weight at the final state. The engine (ModelBEngine) also takes masks, values
  /// and a per-call beta; this reference implementation refuses them.
  Retrieval retrieve(const Vector& v0, const RetrieveOptions& options = {}) const;

 private:
  Network net_;
  double beta_;
};

// ------------------------------------------------------------------------------------------------
/// Model C, the spherical memory (Section 3.3).
class ModelC {
 public:
  /// alpha >= 0 is the decay coefficient of eq. (19); it does not change the energy (eq. 20).
  ModelC(Matrix patterns, InteractionSpec F, double alpha = 1.0);

  Eigen::Index n_features() const { return net_.n_features(); }
  Eigen::Index n_memories() const { return net_.n_hidden(); }
  const Network& network() const { return net_; }

  /// eq. (21): E = -sum_mu F(xi_mu . v / |v|). v must be non-zero.
  double energy(const Vector& v) const;
  /// tau_f dv/dt of eq. (22): xi^T f(xi v/|v|) - alpha v.
  Vector velocity(const Vector& v) const;
  /// Euler steps of eq. (22) to convergence or max_steps (the change is that of v/|v| when
  /// alpha = 0, as |v| then grows without bound). Options: retrieve.hpp (no mask here).
  Retrieval retrieve(const Vector& v0, const RetrieveOptions& options = {}) const;

 private:
  Network net_;
};

}  // namespace assocmem
