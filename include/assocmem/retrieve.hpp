// assocmem/retrieve.hpp - one options type and one result type for every retrieval.
//
// Every retrieval - the plain reference models (ModelA/B/C::retrieve), the fused engines
// (ModelBEngine, ModelCEngine) and the packed-bit engine (ModelAEngine) - takes RetrieveOptions and
// returns a Retrieval. Options left unset take the model's default from one table
// (retrieve_defaults), which the CLI and the Python bindings read too, so the three faces agree.
//
// A retrieval iterates a model's update to a fixed point (one driver, src/fixed_point.hpp):
//   model A  one sweep of the Krotov-Hopfield 2016 rule (eq. 8), change = number of flips
//   model B  eq. (15) (eq. 16 at step = 1), change = max_i |v_new - v|
//   model C  an Euler step of eq. (22), change = max_i |v_new - v| (of v/|v| when alpha = 0)
// and stops when the change is <= tol (StopReason::Converged), after max_steps updates
// (MaxSteps), or when a state leaves the float range (BlewUp: that query keeps its last finite
// state; the others go on).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "assocmem/error.hpp"
#include "assocmem/types.hpp"

namespace assocmem {

/// The effective models of Section 3.
enum class ModelKind { A, B, C };
ModelKind parse_model(const std::string& name);  ///< "A", "B", "C" (or lower case)
std::string to_string(ModelKind model);

/// Update order of model A.
enum class UpdateOrder {
  RandomAsync,  ///< asynchronous, a fresh random permutation of the neurons every sweep (seeded)
  FixedAsync,   ///< asynchronous, neurons 0, 1, ..., N_f - 1 every sweep
  Synchronous   ///< all neurons at once from the previous state (may end in a 2-cycle)
};
UpdateOrder parse_update_order(const std::string& name);  ///< "random", "fixed", "sync"
std::string to_string(UpdateOrder order);

/// Why a query's iteration ended.
enum class StopReason : std::uint8_t {
  Converged,  ///< the last update changed the state by <= tol
  MaxSteps,   ///< max_steps updates ran
  BlewUp      ///< the update left the float range; the state is the last finite one
};
std::string to_string(StopReason reason);  ///< "converged", "max_steps", "blew_up"

/// Memories to leave out, per query (engines only). Non-owning: the flags must outlive the call.
/// data holds rows x K bytes (K = memories in the store, row-major); a non-zero byte marks memory mu
/// as absent for that query, which then behaves exactly as if it had been deleted (as torch's
/// key_padding_mask and hopfield-layers' stored_pattern_padding_mask: true = ignore).
/// rows = 0: no mask; rows = 1: one mask shared by every query; rows = batch: one per query.
struct MemoryMask {
  const std::uint8_t* data = nullptr;
  std::size_t rows = 0;
};

/// Where a long call stands; passed to RetrieveOptions::monitor.
struct Progress {
  long step = 0;           ///< the update being computed (1-based)
  long max_steps = 0;
  double fraction = 0.0;   ///< of this update's work done by the calling thread, in [0, 1]
  std::size_t active = 0;  ///< queries still iterating
};

/// Called on the calling thread between steps and between tiles of a pass, at most every ~50 ms.
/// Returning false cancels the call: it throws assocmem::Cancelled within one tile of work.
using Monitor = std::function<bool(const Progress&)>;

/// Thrown when a Monitor cancels a call. Python: the pending exception (KeyboardInterrupt after Ctrl-C).
class Cancelled : public Error {
 public:
  using Error::Error;
};

/// Options of every retrieval. Unset optionals take the model's default (retrieve_defaults).
/// The most updates (sweeps for model A) one retrieval may ask for: each is a pass over every memory, so
/// more is a mistake (1e38 looped for ever), not a long run.
inline constexpr long kMaxRetrieveSteps = 1000000;

/// Each model refuses, with InvalidArgument naming the option, what it cannot honour.
struct RetrieveOptions {
  std::optional<long> max_steps;     ///< in [1, kMaxRetrieveSteps]: updates (B, C) or sweeps (A)
  std::optional<double> tol;         ///< >= 0: converged when the change is <= tol (A: flips, so 0)
  std::optional<double> step;        ///< dt / tau_f: B in (0, 1] (1 = eq. 16), C > 0 (eq. 22). Not A.
  std::optional<UpdateOrder> order;  ///< model A only
  std::uint64_t seed = 0;            ///< model A's random order; cue b of a batch uses seed + b
  /// Empty, or N_f flags shared by all queries: clamped features keep the cue's value (model A: as
  /// with an input current |I_i| -> infinity, eq. 8; B and C: reset after every update).
  std::vector<std::uint8_t> clamp;
  std::size_t top_k = 0;       ///< report the top_k memories (id, softmax weight) of each final state (B)
  bool energy = false;         ///< report the energy of each final state (eq. 8, 13, 21)
  std::optional<double> beta;  ///< model B: this call's inverse temperature instead of the model's
  /// Models B and C: certified retrieval (codes.hpp; the engine needs EngineOptions::codes): each pass
  /// screens the codes, rescores exactly the memories that can carry weight, and bounds the weight of
  /// the rest by this eps in (0, 0.5] (B: softmax weight; C, F = rectified or exp: their F'(xi . g) mass
  /// against the rescored memories'); Retrieval::certificates says what was guaranteed. Model C's energy
  /// (RetrieveOptions::energy) comes from an exact pass.
  std::optional<double> certify;
  /// Model B: approximate retrieval: each pass rescores exactly only the best `approximate` candidates
  /// of EngineOptions::candidates for each query (an ANN index), the softmax over them alone. No bound:
  /// what it misses is measured against the exact scan (bench/compare, docs/performance.md), not
  /// certified. Not with certify.
  std::optional<std::size_t> approximate;
  MemoryMask mask;             ///< engines of B and C: memories to leave out
  Monitor monitor;             ///< progress and cancellation (optional)
};

/// The defaults of one model, the single table every face reads.
struct RetrieveDefaults {
  long max_steps;
  double tol;
  double step;  ///< NaN for model A
  UpdateOrder order;
};
RetrieveDefaults retrieve_defaults(ModelKind model);

/// What a model's retrieval can take beyond max_steps, tol, clamp and energy: the one table that resolve(),
/// the Retriever and the faces (the command's options, the Python models) consult.
enum class Capability {
  Step,         ///< RetrieveOptions::step, the Euler step of eqs. (15), (22): B and C
  Order,        ///< RetrieveOptions::order: A (B and C update every feature at once)
  CallBeta,     ///< a per-call inverse temperature (RetrieveOptions::beta): B
  TopK,         ///< softmax weights to rank memories by (RetrieveOptions::top_k): B
  Mask,         ///< a memory mask (RetrieveOptions::mask): B and C
  Certify,      ///< certified retrieval over codes (RetrieveOptions::certify): B and C
  Values,       ///< a value store beside the keys: B
  Approximate,  ///< approximate retrieval over an index's candidates (RetrieveOptions::approximate): B
};
bool supports(ModelKind model, Capability what);
/// InvalidArgument "<option>: <why the model has no such thing>" unless `model` supports `what`; `option` is
/// the name the caller's face gives it ("mask", "--mask").
void require(ModelKind model, Capability what, const std::string& option);

/// Options with every default filled in and checked for `model`; throws InvalidArgument naming the
/// option that the model cannot take (require) or whose value is out of range.
struct ResolvedOptions {
  long max_steps;
  double tol;
  double step;
  UpdateOrder order;
};
ResolvedOptions resolve(const RetrieveOptions& options, ModelKind model);
/// Model B's inverse temperature for one call: the given one, checked (finite, > 0, within the float32
/// range of the scores; InvalidArgument otherwise), or the model's when none is given.
double call_beta(std::optional<double> beta, double model_beta);

/// One of the memories reported with a final state.
struct TopMemory {
  std::uint64_t id;  ///< the store's id (the row index for models built from a matrix)
  double weight;     ///< softmax weight at the final state (model B)
};

/// What a certified retrieval (RetrieveOptions::certify) guarantees for one query, over all its steps.
/// The states and the candidates are the same from run to run; with several threads the bounds
/// (discarded_weight, state_error) may differ slightly between runs, each valid: the screen's cut rises
/// as the workers find better memories, so a discarded memory's bound is the coarse or the fine one
/// depending on when its tile was screened.
struct Certificate {
  /// Upper bound on the weight of the memories it did not rescore, for the step where that bound was
  /// largest (<= eps; 0 where every step rescored everything or fell back to the exact scan). Model B:
  /// their softmax weight; model C: their sum of F'(xi . g) over the rescored memories' sum.
  double discarded_weight = 0;
  /// Upper bound on ||v - v_exact||_2 for the last step: v is the returned (float32) state, before any
  /// value association, and v_exact the update of the same previous state in exact arithmetic. Both the
  /// memories left out and the float rounding of the pass are included. Earlier steps' bounds are not
  /// propagated: each step is certified against the exact update of the state it started from.
  /// Model B: step (delta (||a|| + R) + r) (delta the discarded weight, a the computed average, r a
  /// worst-case bound on the pass's float rounding) plus the relaxation's rounding; model C: the step
  /// times (R |D| F'(u_D) + the drive's rounding) (R >= max ||xi||, D the discarded memories, u_D their
  /// largest score bound) plus the update's rounding.
  double state_error = 0;
  /// Memories rescored exactly in the last update step, the one state_error bounds (K where it fell back);
  /// not those of the pass that describes the final state for energy or top-k.
  std::size_t candidates = 0;
  /// Passes that fell back to the exact scan (too many candidates: small beta, or a top-k list that
  /// reached into the screened-out memories): the steps, and the pass that describes the final state
  /// when energy or top-k is asked for.
  long fallback_steps = 0;
};

/// The result of every retrieval: a batch of final states (one row for a single query).
struct Retrieval {
  std::size_t batch = 0, dim = 0;
  std::vector<double> states;         ///< [batch x dim], row-major (model A: +-1)
  std::vector<long> steps;            ///< [batch] updates applied (A: sweeps)
  std::vector<StopReason> stop;       ///< [batch]
  std::vector<double> last_change;    ///< [batch] the last update's change (A: flips); NaN when undefined
  std::vector<double> energy;         ///< [batch] when RetrieveOptions::energy, else empty
  std::vector<std::vector<TopMemory>> top;  ///< [batch] when top_k > 0 (at most K each), else empty
  std::vector<Certificate> certificates;    ///< [batch] when RetrieveOptions::certify, else empty
  /// Model B engines: [batch] the largest softmax weight of the last pass (over the values with a value
  /// store). Near 1/K no memory stands out: beta is too small to retrieve (the result is close to the
  /// mean of the memories); nearly_uniform() tells. Empty for other models.
  std::vector<double> max_weight;

  /// State b as a vector.
  Vector state(std::size_t b = 0) const;
  bool converged(std::size_t b = 0) const { return stop.at(b) == StopReason::Converged; }
};

/// True when the largest softmax weight w of a model B pass over K memories is below both 10 / K and
/// 0.1: no memory carries more than ten times the uniform share, so the retrieval returned nearly the
/// mean of the memories (beta far too small). The command line and Python warn on it.
inline bool nearly_uniform(double w, std::size_t K) { return w < 0.1 && w * double(K) < 10.0; }

}  // namespace assocmem
