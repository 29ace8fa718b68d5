// assocmem capacity: recall over random +-1 memories, sweeps and bisection.
#include "common.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "assocmem/capacity.hpp"
#include "assocmem/io.hpp"
#include "ranks.hpp"
#ifdef ASSOCMEM_WITH_MPI
#include "assocmem/distributed.hpp"
#endif

namespace assocmem::cli {
namespace fs = std::filesystem;
namespace {

struct CapacityArgs {
  std::string model = "A", F = "power", protocol = "stability", order = "random", sweep = "K", criterion = "per-cue",
              output, plot;
  double n = 2.0, beta = kDefaultBeta, rho = 0.0, step = 1.0, bisect = 0.0;
  std::size_t N = 100, hidden = 0, trials = 10, cues = 0;
  std::vector<std::string> values{"5", "10", "15", "20"};
  std::vector<std::size_t> K_range;
  long max_steps = 100;
  bool one_step = false, no_negatives = false, dry_run = false;
  std::uint64_t seed = 1;
  int threads = 0;
};

// writer: this process reports and writes (rank 0 of an MPI job, or the only process); scheduler: the
// trials shared among the ranks, or null.
int capacity(const CapacityArgs& a, bool bisect_given, bool as_json, bool writer, const TrialScheduler* scheduler) {
  check_distinct({}, {{"output", a.output}, {"plot", a.plot}});
  if (!a.output.empty()) {
    const std::string ext = fs::path(a.output).extension().string();
    if (ext != ".csv" && ext != ".json")
      throw BadInput("-o: '" + a.output + "' must end in .csv or .json (the two formats written), not '" + ext + "'");
  }
  if (bisect_given && !(std::isfinite(a.bisect) && a.bisect > 0 && a.bisect <= 1))
    throw BadInput("--bisect must be a fraction in (0, 1], got " + detail::concat(a.bisect));
  if (a.values.empty()) throw BadInput("--values: give at least one value");
  CapacitySpec s;
  s.model = parse_model(a.model);
  s.F = {parse_interaction(a.F), a.n, a.beta};
  s.beta = a.beta;
  s.N = a.N;
  s.hidden = a.hidden;
  s.protocol = parse_protocol(a.protocol);
  s.rho = a.rho;
  s.one_step = a.one_step;
  s.order = parse_update_order(a.order);
  s.max_steps = a.max_steps;
  s.step = a.step;
  s.trials = a.trials;
  s.cues = a.cues;
  s.count_negatives = !a.no_negatives;
  s.criterion = parse_criterion(a.criterion);
  s.seed = a.seed;
  s.threads = a.threads;
  s.scheduler = scheduler;
  std::vector<CapacityPoint> points;
  json out = {{"model", a.model}, {"protocol", a.protocol}, {"N", a.N}};
  ProgressBar bar("capacity");
  if (bisect_given) {
    if (a.K_range.size() != 2) throw BadInput("--bisect needs --K-range LO HI");
    if (a.K_range[0] < 1 || a.K_range[0] > a.K_range[1])
      throw BadInput("--K-range: need 1 <= LO <= HI, got " + std::to_string(a.K_range[0]) + " " + std::to_string(a.K_range[1]));
    for (std::size_t K : a.K_range) {  // both ends valid: every K in between is
      CapacitySpec t = s;
      t.K = K;
      t.validate();
    }
    if (a.dry_run) {
      if (writer)
        emit(as_json, {{"dry_run", true}, {"bisect_threshold", a.bisect}, {"K_range", a.K_range}},
           "valid: bisection over K in [" + std::to_string(a.K_range[0]) + ", " + std::to_string(a.K_range[1]) + "]\n");
      return 0;
    }
    const Bisection b = bisect_capacity(s, a.bisect, a.K_range[0], a.K_range[1], [&](double f) { bar.update(f); });
    points = b.points;
    out["bisect_threshold"] = a.bisect;
    out["K"] = b.K;
    out["K_low"] = b.K_low;
    out["K_high"] = b.K_high;
  } else {
    // Every point is built and validated before the first is measured: a bad value fails at once,
    // not after hours of the sweep.
    std::vector<CapacitySpec> plan;
    const std::vector<std::string> sweepable = {"K", "N", "n", "beta", "rho", "hidden"};
    if (std::find(sweepable.begin(), sweepable.end(), a.sweep) == sweepable.end())
      throw BadInput("--sweep must be one of K, N, n, beta, rho, hidden; got '" + a.sweep + "'");
    for (const std::string& v : a.values) {
      CapacitySpec t = s;
      if (a.sweep != "K") t.K = static_cast<std::size_t>(a.K_range.empty() ? 10 : a.K_range[0]);
      try {
        set_capacity_field(t, a.sweep, v);  // the library's names and parsing, as Python's
      } catch (const InvalidArgument& e) {
        throw BadInput(std::string("--values: ") + e.what());
      }
      t.validate();
      plan.push_back(t);
    }
    if (a.dry_run) {
      if (writer)
        emit(as_json, {{"dry_run", true}, {"sweep", a.sweep}, {"points", plan.size()}},
           "valid: " + std::to_string(plan.size()) + " points of --sweep " + a.sweep + "\n");
      return 0;
    }
    for (std::size_t i = 0; i < plan.size(); ++i)
      points.push_back(measure_capacity(plan[i], [&](double f) { bar.update((double(i) + f) / double(plan.size())); }));
    out["sweep"] = a.sweep;
  }
  if (!writer) return 0;  // every rank holds the same points; rank 0 reports them
  json rows = json::array();
  std::string csv = "K,N,n,beta,rho,hidden,cues,recalled,recalled_stderr,bit_error,seconds\n", text;
  char buf[256];
  for (const auto& p : points) {
    rows.push_back({{"K", p.spec.K}, {"N", p.spec.N}, {"n", p.spec.F.n}, {"beta", p.spec.beta}, {"rho", p.spec.rho},
                    {"hidden", p.spec.hidden}, {"cues", p.cues}, {"recalled", p.recalled},
                    {"recalled_stderr", p.recalled_stderr}, {"bit_error", p.bit_error}, {"seconds", p.seconds}});
    std::snprintf(buf, sizeof buf, "%zu,%zu,%g,%g,%g,%zu,%zu,%.6g,%.6g,%.6g,%.4g\n", p.spec.K, p.spec.N, p.spec.F.n,
                  p.spec.beta, p.spec.rho, p.spec.hidden, p.cues, p.recalled, p.recalled_stderr, p.bit_error, p.seconds);
    csv += buf;
    // The parameter of F that means something for this run: n (power, rectified), beta (model B, F = exp).
    char param[32];
    if (p.spec.model == ModelKind::B || p.spec.F.kind == Interaction::Exp)
      std::snprintf(param, sizeof param, "beta=%-5g", p.spec.beta);
    else
      std::snprintf(param, sizeof param, "n=%-4g", p.spec.F.n);
    std::snprintf(buf, sizeof buf,
                  "K=%-8zu N=%-6zu %s recalled %.4f +- %.4f (s.e. over %zu trials)  bit error %.5f  (%zu cues, %.2f s)\n",
                  p.spec.K, p.spec.N, param, p.recalled, p.recalled_stderr, p.spec.trials, p.bit_error, p.cues,
                  p.seconds);
    text += buf;
  }
  out["points"] = rows;
  if (bisect_given)
    text += "largest K with recalled >= " + std::to_string(a.bisect) + ": " + std::to_string(out["K"].get<std::size_t>()) +
            " (not separable from the threshold within 2 standard errors over trials: K in [" +
            std::to_string(out["K_low"].get<std::size_t>()) + ", " + std::to_string(out["K_high"].get<std::size_t>()) + "])\n";
  if (!a.output.empty()) {
    const std::string body = fs::path(a.output).extension() == ".json" ? dump(out) : csv;
    write_file_atomically(a.output, {{body.data(), body.size()}});
  }
  if (!a.plot.empty()) {
    const std::string xcol = bisect_given ? "K" : a.sweep;
    // The theory curve where one exists: one-step stability of model A with F = x^n against K.
    const bool with_theory = a.model == "A" && a.F == "power" && a.one_step && a.protocol == "stability" && xcol == "K";
    draw_plot("capacity", csv, a.plot, {xcol, "model " + a.model + " (" + a.protocol + ")", with_theory ? "theory" : "none"});
  }
  emit(as_json, out, text);
  return 0;
}

// Under mpirun the trials of every point are shared among the ranks (MpiTrialScheduler): the numbers of
// one process with the same seeds; rank 0 reports.
int cmd_capacity(const CapacityArgs& a, bool bisect_given, bool as_json) {
#ifdef ASSOCMEM_WITH_MPI
  if (under_mpirun())
    return on_ranks(as_json, [&](int rank, int) {
      const MpiTrialScheduler trials(MPI_COMM_WORLD);
      return capacity(a, bisect_given, as_json, rank == 0, &trials);
    });
#endif
  return capacity(a, bisect_given, as_json, true, nullptr);
}

}  // namespace

Command add_capacity(CLI::App& app) {
  auto a = std::make_shared<CapacityArgs>();
  auto* cap = app.add_subcommand("capacity", "Measure recall over random +-1 memories: sweeps and bisection");
  cap->add_option("--model", a->model, "A, B or C")->capture_default_str()->check(CLI::IsMember({"A", "B", "C"}));
  cap->add_option("--F", a->F, "Interaction of A and C: power, rectified or exp")->capture_default_str()
      ->check(CLI::IsMember({"power", "rectified", "exp"}));
  cap->add_option("--n", a->n, "Power n of F")->capture_default_str();
  cap->add_option("--beta", a->beta, "Inverse temperature (B) or gain of F = exp")->capture_default_str();
  cap->add_option("--N", a->N, "Neurons (pattern dimension)")->capture_default_str()->transform(whole<std::size_t>());
  cap->add_option("--hidden", a->hidden, "N_h: hidden neurons, one memory each (0: one per memory)")->capture_default_str()->transform(whole<std::size_t>());
  cap->add_option("--protocol", a->protocol, "stability, basin or random (starts)")->capture_default_str()
      ->check(CLI::IsMember({"stability", "basin", "random"}));
  cap->add_option("--rho", a->rho, "basin: fraction of bits flipped in the cue")->capture_default_str();
  cap->add_flag("--one-step", a->one_step, "One synchronous update instead of running to a fixed point");
  cap->add_option("--order", a->order, "Update order of model A: random, fixed or sync")->capture_default_str()
      ->check(CLI::IsMember({"random", "fixed", "sync"}));
  cap->add_option("--max-steps", a->max_steps, "Sweeps (A) or updates (B, C)")->capture_default_str()->transform(whole<long>(1, kMaxRetrieveSteps));
  cap->add_option("--step", a->step, "dt/tau_f of models B and C")->capture_default_str();
  cap->add_option("--trials", a->trials, "Independent draws of the memories (the unit of the error bars: >= 2 for a standard error)")->capture_default_str()->transform(whole<std::size_t>());
  cap->add_option("--cues", a->cues, "Cues per trial (0: min(K, 1000); random starts 100)")->capture_default_str()->transform(whole<std::size_t>());
  cap->add_option("--criterion", a->criterion, "per-cue (fraction of cues recalled) or all (fraction of trials with every "
                  "memory recalled, cued once)")->capture_default_str()->check(CLI::IsMember({"per-cue", "all"}));
  cap->add_flag("--no-negatives", a->no_negatives, "Random starts: do not count ending on -xi as a memory");
  cap->add_option("--sweep", a->sweep, "Parameter to sweep: K, N, n, beta, rho or hidden")->capture_default_str();
  cap->add_option("--values", a->values, "Values of the swept parameter")->delimiter(',')->capture_default_str();
  cap->add_option("--K-range", a->K_range, "Bisection range LO HI (or K for sweeps of other parameters)")->expected(1, 2)
      ->transform(whole<std::size_t>(1));
  auto* bisect_opt =
      cap->add_option("--bisect", a->bisect, "Find the largest K with recalled >= this fraction in (0, 1] (needs --K-range)");
  cap->add_option("--seed", a->seed, "Seed of the memories and cues")->capture_default_str()->transform(whole<std::uint64_t>());
  cap->add_option("--threads", a->threads, "Worker threads (0: the CPUs this process may run on)")->capture_default_str()->transform(whole<int>(0));
  cap->add_option("-o,--output", a->output, "Results: .csv or .json");
  cap->add_flag("--dry-run", a->dry_run, "Check every point of the sweep (or the bisection range) and stop before measuring");
  cap->add_option("--plot", a->plot, "PNG of recall against the swept parameter (matplotlib)");

  return {cap, [a, bisect_opt](bool as_json) { return cmd_capacity(*a, bisect_opt->count() > 0, as_json); }};
}

}  // namespace assocmem::cli
