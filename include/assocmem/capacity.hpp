// assocmem/capacity.hpp - capacity measurements: how many random memories a model stores and
// recalls (Krotov & Hopfield 2021 eq. 9; Krotov & Hopfield 2016; Demircigil et al. 2017).
//
// Memories are random +-1 patterns of N neurons (seeded, fresh for every trial). Protocols:
//   stability  start at each stored pattern (one_step: a single synchronous update, as in Krotov &
//              Hopfield 2016's table; otherwise run to a fixed point); recalled = no wrong bit;
//   basin      start from a stored pattern with round(rho N) bits flipped; recalled = no wrong bit;
//   random     start from random states; "on a memory" = the fixed point is a stored pattern (or its
//              negative, when count_negatives: with even n, -xi is an energy minimum too).
// Models: A (F = power, rectified, exp, on packed bits), B (one or more steps of eq. 16, the sign of
// the state is compared) and C (Euler steps of eq. 22, sign compared). hidden = N_h < K stores only
// the first N_h patterns (one memory per hidden neuron, eq. 9's bound) while all K are probed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <string>
#include <vector>

#include "assocmem/models.hpp"

namespace assocmem {

enum class Protocol { Stability, Basin, RandomStarts };
Protocol parse_protocol(const std::string& name);  ///< "stability", "basin", "random"
std::string to_string(Protocol p);

/// What counts as recalled. PerCue: the fraction of cues recalled (each trial's fraction, averaged).
/// AllMemories: the fraction of trials in which every stored memory, cued once, is recalled: the
/// event of Demircigil et al.'s theorem (all e^{alpha N} memories at once), whose exponent alpha_max
/// is half the per-cue one, I(1 - 2 rho) / 2 against I(1 - 2 rho).
enum class Criterion { PerCue, AllMemories };
Criterion parse_criterion(const std::string& name);  ///< "per-cue", "all"
std::string to_string(Criterion c);

struct TrialScheduler;

struct CapacitySpec {
  ModelKind model = ModelKind::A;
  InteractionSpec F{Interaction::Power, 2.0, 1.0};  ///< models A and C
  double beta = kDefaultBeta;       ///< model B's inverse temperature
  std::size_t N = 100;              ///< neurons (pattern dimension), >= 2
  std::size_t K = 10;               ///< memories per trial, >= 1
  std::size_t hidden = 0;           ///< N_h; 0 = K (every memory has its hidden neuron)
  Protocol protocol = Protocol::Stability;
  double rho = 0.0;                 ///< basin: fraction of bits flipped in [0, 0.5]
  bool one_step = false;            ///< one synchronous update instead of running to a fixed point
  UpdateOrder order = UpdateOrder::RandomAsync;  ///< model A when not one_step
  long max_steps = 100;             ///< sweeps (A) or updates (B, C)
  double step = 1.0;                ///< dt/tau_f of models B and C
  std::size_t trials = 10;          ///< independent draws of the memories
  std::size_t cues = 0;             ///< cues per trial; 0: min(K, 1000) (random starts: 100)
  bool count_negatives = true;      ///< random starts: ending on -xi counts as on a memory
  Criterion criterion = Criterion::PerCue;  ///< AllMemories: cues = every stored memory once (not random)
  std::uint64_t seed = 1;
  int threads = 0;
  /// Null: this process runs every trial. Else the trials are shared among participants (the ranks of
  /// an MPI job: distributed.hpp), with exactly the numbers of one process. Not settable by name.
  const TrialScheduler* scheduler = nullptr;
  void validate() const;
};

/// What one trial found. Its memories and cues come from (seed, trial index) alone, so a trial gives
/// the same outcome wherever it runs.
struct TrialOutcome {
  std::uint64_t hits = 0;         ///< cues recalled
  std::uint64_t cues = 0;         ///< cues probed
  std::uint64_t wrong_bits = 0;   ///< stability and basin: bits that differ from the cued memory
  std::uint64_t probed_bits = 0;
};
/// Runs trial `trial` (< spec.trials) of a measurement.
TrialOutcome run_capacity_trial(const CapacitySpec& spec, std::size_t trial);

/// Shares the trials of a measurement among participants. Every participant calls share() once per
/// measurement, with the outcomes of the trials mine() gave it (the others left as they are) and its
/// failure (null if none); afterwards every participant holds every outcome, or every one throws.
struct TrialScheduler {
  virtual ~TrialScheduler() = default;
  virtual bool mine(std::size_t trial) const = 0;
  virtual void share(std::vector<TrialOutcome>& outcomes, std::exception_ptr failure) const = 0;
};

/// Sets the field `name` of a spec from its text, the one place where the command line (`capacity
/// --sweep NAME --values ...`) and Python (`assocmem.capacity.measure(NAME=...)`) name the fields:
/// model, F, n, beta (model B's beta and the gain of F = exp), N, K, hidden, protocol, rho, one_step,
/// order, max_steps, step, trials, cues, count_negatives, seed, threads, criterion. Counts must be
/// whole numbers in [0, 2^40] (1e3 is 1000). InvalidArgument names the field and the value.
void set_capacity_field(CapacitySpec& spec, const std::string& name, const std::string& value);
/// The names set_capacity_field takes.
const std::vector<std::string>& capacity_fields();

struct CapacityPoint {
  CapacitySpec spec;
  std::size_t cues = 0;          ///< cues probed in all trials
  double recalled = 0.0;         ///< fraction recalled with no wrong bit (random: fraction ending on a memory);
                                 ///< AllMemories: fraction of trials with every memory recalled
  /// Standard error of `recalled` over trials: sd(trial fractions) / sqrt(trials), NaN for one trial.
  /// The trial is the unit of repetition: cues of one trial share its memories, so a binomial error
  /// over cues would understate the spread (e.g. 0.006 instead of ~0.016 at n = 3, N = 100, K = 700).
  double recalled_stderr = 0.0;
  std::vector<double> trial_recalled;  ///< each trial's fraction (AllMemories: 1 or 0), for bootstraps
  double bit_error = 0.0;        ///< fraction of wrong bits (stability, basin)
  double seconds = 0.0;
};

/// Runs one measurement. `progress` (optional) is called with the fraction of trials done.
CapacityPoint measure_capacity(const CapacitySpec& spec, const std::function<void(double)>& progress = {});

/// The largest K in [K_lo, K_hi] whose recalled fraction is >= threshold, by bisection (recall is
/// taken to fall with K). Returns it with every point measured on the way.
struct Bisection {
  std::size_t K = 0;
  /// The range of K that the trial-level errors cannot separate from the threshold, found by two
  /// more bisections: K_low is the largest K with recalled - 2 stderr >= threshold (confidently above;
  /// 0 if none), K_high the largest with recalled + 2 stderr >= threshold (K_hi if all are). A wide
  /// interval asks for more trials.
  std::size_t K_low = 0, K_high = 0;
  std::vector<CapacityPoint> points;
};
/// with_interval = false skips the two bisections for K_low and K_high (then both equal K).
Bisection bisect_capacity(CapacitySpec spec, double threshold, std::size_t K_lo, std::size_t K_hi,
                          const std::function<void(double)>& progress = {}, bool with_interval = true);

/// A growth exponent d ln K / d ln N with its standard error, fitted (least squares) to capacity
/// ranges [K_low, K_high] (Bisection) at sizes N: each range's geometric midpoint is the point and its
/// half-width in ln K is taken as one standard error (the range spans 2 standard errors of the recalled
/// fraction either side of the threshold). For comparing a measured trend with a law such as eq. 6.
struct SlopeFit {
  double slope = 0.0, stderr_ = 0.0;
};
/// Throws InvalidArgument unless there are >= 2 distinct positive N and 1 <= K_low <= K_high.
SlopeFit fit_loglog_slope(const std::vector<double>& N, const std::vector<std::pair<double, double>>& K_ranges);

}  // namespace assocmem
