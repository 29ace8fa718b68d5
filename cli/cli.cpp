// assocmem: the command-line tool (run by main.cpp). Subcommands store, recall, simulate, capacity, demo;
// `--help` at every level.
// Exit codes: 0 success, 2 bad usage or input (a one-line message naming the problem), 1 a
// computation that could not finish (e.g. a solver reaching max steps).
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "cli.hpp"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "assocmem/binary.hpp"
#include "assocmem/capacity.hpp"
#include "assocmem/config.hpp"
#include "assocmem/dynamics.hpp"
#include "assocmem/engine.hpp"
#include "assocmem/io.hpp"
#include "assocmem/npy.hpp"
#include "assocmem/store.hpp"

using namespace assocmem;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

// ---------------------------------------------------------------------------------------------
// A progress bar on stderr, drawn only on a terminal and only once the work has run for a second.
class Progress {
 public:
  explicit Progress(std::string what) : what_(std::move(what)), start_(std::chrono::steady_clock::now()) {}
  ~Progress() {
    if (drawn_) std::fprintf(stderr, "\r\033[K");
  }
  void update(double fraction) {
    if (!isatty(STDERR_FILENO)) return;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    if (s < 1.0) return;
    const int width = 30, done = static_cast<int>(fraction * width + 0.5);
    std::fprintf(stderr, "\r%s [%s%s] %3.0f%% %.0fs", what_.c_str(), std::string(static_cast<std::size_t>(done), '#').c_str(),
                 std::string(static_cast<std::size_t>(width - done), ' ').c_str(), 100 * fraction, s);
    std::fflush(stderr);
    drawn_ = true;
  }

 private:
  std::string what_;
  std::chrono::steady_clock::time_point start_;
  bool drawn_ = false;
};

struct BadInput : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Runs /usr/bin/python3 with `args` (no shell: paths are passed as they are), with the build tree's
// package appended to PYTHONPATH for an uninstalled build. Returns its exit status.
int run_python(const std::vector<std::string>& args) {
  std::vector<std::string> owned = {"/usr/bin/python3"};
  owned.insert(owned.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : owned) argv.push_back(a.data());
  argv.push_back(nullptr);
  const char* old = std::getenv("PYTHONPATH");
  const std::string path = (old && *old ? std::string(old) + ":" : std::string()) + ASSOCMEM_BUILD_PYTHON_DIR;
  std::fflush(stdout);
  const pid_t pid = fork();
  if (pid < 0) throw std::runtime_error("could not start /usr/bin/python3: fork failed");
  if (pid == 0) {
    setenv("PYTHONPATH", path.c_str(), 1);
    execv(argv[0], argv.data());
    std::fprintf(stderr, "assocmem: error: cannot run /usr/bin/python3: %s\n", std::strerror(errno));
    _exit(127);
  }
  detail::set_cleanup_child(pid);  // an interrupt stops the child before removing its files
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  detail::set_cleanup_child(0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

// JSON text of j. File names and option values are arbitrary bytes on Linux: bytes that are not UTF-8
// become U+FFFD instead of making dump() throw (found by fuzz_inputs).
std::string dump(const json& j) { return j.dump(2, ' ', false, json::error_handler_t::replace) + "\n"; }

void emit(bool as_json, const json& j, const std::string& text) {
  if (as_json) std::cout << dump(j);
  else std::cout << text;
}

// Draws a PNG with `python3 -m assocmem.plot KIND data.csv out.png ARGS...`: the CSV and the PNG live
// in a private temporary folder (removed on exit and on SIGINT/SIGTERM), and the PNG is then written
// to `output` under the output rules of assocmem/io.hpp (atomic, no special files).
void draw_plot(const std::string& kind, const std::string& csv, const std::string& output,
               const std::vector<std::string>& extra) {
  const TempFolder folder;
  const TempPath data(folder.path() + "/data.csv"), png(folder.path() + "/plot.png");
  write_file_atomically(data.path(), {{csv.data(), csv.size()}});
  std::vector<std::string> args = {"-m", "assocmem.plot", kind, data.path(), png.path()};
  args.insert(args.end(), extra.begin(), extra.end());
  if (run_python(args) != 0)
    throw IoError("could not draw '" + output + "': the plot needs /usr/bin/python3 with matplotlib and assocmem");
  const InputFile in(png.path(), "plot");
  const std::string bytes = in.read_all(std::size_t{1} << 30);
  write_file_atomically(output, {{bytes.data(), bytes.size()}});
}

// Every value finite (a NaN would pass silently through sign or l2 normalisation).
void check_finite_rows(const std::vector<float>& rows, std::size_t cols, const std::string& file) {
  for (std::size_t k = 0; k < rows.size(); ++k)
    if (!std::isfinite(rows[k]))
      throw BadInput("'" + file + "': pattern " + std::to_string(k / cols) + " element " + std::to_string(k % cols) +
                     " is NaN or Inf");
}

// ---------------------------------------------------------------------------------------------
// store
struct StoreArgs {
  std::string input, output, dtype = "float32", normalize = "none";
  bool append = false;
};

int cmd_store(const StoreArgs& a, bool dtype_given, bool as_json) {
  check_distinct({{"input", a.input}}, {{"store", a.output}});
  const NpyArray arr = read_npy(a.input);
  std::vector<float> rows = arr.to_float32();
  check_finite_rows(rows, arr.cols, a.input);
  if (a.normalize == "l2") {
    for (std::size_t i = 0; i < arr.rows; ++i) {
      double s = 0;
      for (std::size_t j = 0; j < arr.cols; ++j) s += double(rows[i * arr.cols + j]) * rows[i * arr.cols + j];
      if (s == 0) throw BadInput("--normalize l2: pattern " + std::to_string(i) + " of '" + a.input + "' is zero");
      const float inv = static_cast<float>(1.0 / std::sqrt(s));
      for (std::size_t j = 0; j < arr.cols; ++j) rows[i * arr.cols + j] *= inv;
    }
  } else if (a.normalize == "sign") {
    for (auto& x : rows) x = x > 0 ? 1.0f : -1.0f;
  }
  const DType dtype = parse_dtype(a.dtype);
  std::size_t count = 0;
  DType written = dtype;
  try {
    if (a.append) {
      // Under the folder lock from the read to the rename: concurrent appends are all kept.
      count = MemoryStore::append_to_file(a.output, rows.data(), arr.rows, arr.cols, dtype, dtype_given);
      written = MemoryStore::open(a.output, {false, Access::Map}).dtype();
    } else {
      MemoryStore s(arr.cols, dtype);
      s.append(rows.data(), arr.rows);
      s.save(a.output);
      count = s.size();
    }
  } catch (const InvalidArgument& e) {
    throw BadInput("'" + a.input + "': " + e.what() + (dtype == DType::Bits ? " (use --normalize sign)" : ""));
  }
  emit(as_json, {{"store", a.output}, {"count", count}, {"dim", arr.cols}, {"dtype", to_string(written)}},
       "wrote " + a.output + ": " + std::to_string(count) + " memories of dimension " + std::to_string(arr.cols) + " (" +
           to_string(written) + ")\n");
  return 0;
}

// ---------------------------------------------------------------------------------------------
// recall
struct RecallArgs {
  std::string store, queries, output, details, model = "B", F = "exp", order = "sync", kernel = "auto";
  double beta = 1.0, n = 3.0, alpha = 1.0, tol = 0.0, step = 1.0;
  long steps = 1, max_sweeps = 1000;
  long long top_k = 5;
  std::size_t chunk = 1024;
  std::uint64_t seed = 0;
  int threads = 0;
};

int cmd_recall(const RecallArgs& a, bool as_json) {
  check_distinct({{"store", a.store}, {"queries", a.queries}}, {{"output", a.output}, {"details", a.details}});
  if (a.top_k < 0) throw BadInput("--top-k must be >= 0, got " + std::to_string(a.top_k));
  const MemoryStore store = MemoryStore::open(a.store);
  const NpyArray q = read_npy(a.queries);
  if (q.cols != store.dim())
    throw BadInput("'" + a.queries + "' has queries of dimension " + std::to_string(q.cols) + " but '" + a.store +
                   "' holds memories of dimension " + std::to_string(store.dim()));
  const std::vector<float> Q = q.to_float32();
  const std::size_t B = q.rows, d = q.cols;
  if (B == 0) throw BadInput("'" + a.queries + "' holds no queries");
  std::vector<float> states(B * d);
  json per_query = json::array();
  Progress bar("recall");
  const auto t0 = std::chrono::steady_clock::now();
  std::string kernel;
  if (a.model == "A") {
    // Model A runs on packed bits: a float store of +-1 patterns is packed here.
    MemoryStore bits(d, DType::Bits);
    const MemoryStore* src = &store;
    if (store.dtype() != DType::Bits) {
      std::vector<float> row(d);
      for (std::size_t i = 0; i < store.size(); ++i) {
        store.decode_row(i, row.data());
        try {
          bits.append(row.data(), 1, store.ids() + i);
        } catch (const InvalidArgument&) {
          throw BadInput("model A needs +1/-1 memories; '" + a.store + "' memory " + std::to_string(i) + " is not (store it with --dtype bits)");
        }
      }
      src = &bits;
    }
    const ModelAEngine eng(*src, {parse_interaction(a.F), a.n, a.beta});
    kernel = eng.kernel();
    BinaryOptions o;
    o.order = parse_update_order(a.order);
    o.max_sweeps = a.max_sweeps;
    o.seed = a.seed;
    o.threads = a.threads;
    std::vector<std::int8_t> cues(B * d);
    for (std::size_t k = 0; k < cues.size(); ++k) {
      if (Q[k] != 1.0f && Q[k] != -1.0f)
        throw BadInput("'" + a.queries + "': query " + std::to_string(k / d) + " element " + std::to_string(k % d) +
                       " is " + std::to_string(Q[k]) + "; model A cues must be +1 or -1");
      cues[k] = Q[k] > 0 ? 1 : -1;
    }
    for (std::size_t b0 = 0; b0 < B; b0 += a.chunk) {
      const std::size_t nb = std::min(a.chunk, B - b0);
      o.seed = a.seed + b0;
      const BinaryRetrieval r = eng.retrieve(&cues[b0 * d], nb, o);
      for (std::size_t k = 0; k < nb * d; ++k) states[b0 * d + k] = r.states[k];
      for (std::size_t i = 0; i < nb; ++i)
        per_query.push_back({{"steps", r.sweeps[i]}, {"converged", bool(r.converged[i])}, {"energy", r.energy[i]}});
      bar.update(double(b0 + nb) / double(B));
    }
  } else if (a.model == "B" || a.model == "C") {
    EngineOptions eo;
    eo.threads = a.threads;
    eo.kernel = parse_kernel(a.kernel);
    BatchOptions o;
    o.max_steps = a.steps;
    o.tol = a.tol;
    o.step = a.step;
    o.top_k = a.model == "B" ? static_cast<std::size_t>(std::min<long long>(a.top_k, static_cast<long long>(store.size()))) : 0;
    std::unique_ptr<ModelBEngine> eb;
    std::unique_ptr<ModelCEngine> ec;
    if (a.model == "B") eb = std::make_unique<ModelBEngine>(store, a.beta, eo);
    else ec = std::make_unique<ModelCEngine>(store, InteractionSpec{parse_interaction(a.F), a.n, a.beta}, a.alpha, eo);
    kernel = eb ? eb->kernel() : ec->kernel();
    for (std::size_t b0 = 0; b0 < B; b0 += a.chunk) {
      const std::size_t nb = std::min(a.chunk, B - b0);
      const BatchRetrieval r = eb ? eb->retrieve(&Q[b0 * d], nb, o) : ec->retrieve(&Q[b0 * d], nb, o);
      std::copy(r.states.begin(), r.states.end(), &states[b0 * d]);
      for (std::size_t i = 0; i < nb; ++i) {
        json j = {{"steps", r.steps[i]}, {"converged", bool(r.converged[i])}, {"energy", r.energy[i]}};
        if (o.top_k) {
          json ids = json::array(), w = json::array();
          for (const auto& [id, weight] : r.top[i]) {
            ids.push_back(id);
            w.push_back(weight);
          }
          j["top_ids"] = ids;
          j["top_weights"] = w;
        }
        per_query.push_back(j);
      }
      bar.update(double(b0 + nb) / double(B));
    }
  } else {
    throw BadInput("--model must be A, B or C, got '" + a.model + "'");
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  write_npy(a.output, states.data(), B, d, q.was_1d);
  json summary = {{"model", a.model}, {"queries", B}, {"dim", d}, {"memories", store.size()}, {"kernel", kernel},
                  {"seconds", secs}, {"output", a.output}};
  if (!a.details.empty()) {
    json full = summary;
    full["results"] = per_query;
    const std::string text = dump(full);
    write_file_atomically(a.details, {{text.data(), text.size()}});
    summary["details"] = a.details;
  }
  emit(as_json, summary,
       "recalled " + std::to_string(B) + " queries with model " + a.model + " (" + kernel + ") in " +
           std::to_string(secs).substr(0, 6) + " s; wrote " + a.output + (a.details.empty() ? "" : " and " + a.details) + "\n");
  return 0;
}

// ---------------------------------------------------------------------------------------------
// simulate
struct SimulateArgs {
  std::string config, output, plot;
};

int cmd_simulate(const SimulateArgs& a, bool as_json) {
  const std::string text = InputFile(a.config, "config").read_all(std::size_t{64} << 20);
  const fs::path base = fs::path(a.config).parent_path();
  SimulationConfig cfg = parse_simulation_config(text, base.string(), "config '" + a.config + "'");
  check_distinct({{"config", a.config}, {"xi", cfg.xi_path}}, {{"output", a.output}, {"plot", a.plot}});
  const Network& net = *cfg.network;
  SimulateOptions& o = cfg.options;
  const Network::EnergyBound bound = net.energy_bound();  // Section 2's condition, flagged when violated
  if (bound.verdict == Network::EnergyBound::Verdict::Unbounded)
    std::fprintf(stderr, "assocmem: warning: the energy of this network is unbounded below (%s)\n", bound.why.c_str());
  const Vector& v0 = cfg.v0;
  const Vector& h0 = cfg.h0;
  {
    Progress bar("simulate");
    o.on_step = [&](double t) { bar.update((t - o.t0) / (o.t_end - o.t0)); };
    const auto t0 = std::chrono::steady_clock::now();
    const Trajectory tr = simulate(net, v0, h0, o);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    bar.update(1.0);
    // Output: columns t, energy, energy_rate, v_0..v_{N_f-1}, h_0..h_{N_h-1}.
    const std::size_t T = tr.t.size(), nf = static_cast<std::size_t>(net.n_features()),
                      nh = static_cast<std::size_t>(net.n_hidden()), cols = 3 + nf + nh;
    std::vector<double> table(T * cols);
    for (std::size_t k = 0; k < T; ++k) {
      double* row = &table[k * cols];
      row[0] = tr.t[k];
      row[1] = tr.energy[k];
      row[2] = tr.energy_rate[k];
      std::copy(tr.v[k].data(), tr.v[k].data() + nf, row + 3);
      std::copy(tr.h[k].data(), tr.h[k].data() + nh, row + 3 + nf);
    }
    if (!a.output.empty()) {
      if (fs::path(a.output).extension() == ".npy") {
        write_npy(a.output, table.data(), T, cols);
      } else {
        std::string csv = "t,energy,energy_rate";
        for (std::size_t i = 0; i < nf; ++i) csv += ",v" + std::to_string(i);
        for (std::size_t i = 0; i < nh; ++i) csv += ",h" + std::to_string(i);
        csv += "\n";
        char buf[64];
        for (std::size_t k = 0; k < T; ++k)
          for (std::size_t j = 0; j < cols; ++j) {
            std::snprintf(buf, sizeof buf, "%.17g%c", table[k * cols + j], j + 1 == cols ? '\n' : ',');
            csv += buf;
          }
        write_file_atomically(a.output, {{csv.data(), csv.size()}});
      }
    }
    if (!a.plot.empty()) {  // E(t) drawn by assocmem.plot (matplotlib) from a CSV of (t, E)
      std::string csv;
      char buf[64];
      for (std::size_t k = 0; k < T; ++k) {
        std::snprintf(buf, sizeof buf, "%.17g,%.17g\n", tr.t[k], tr.energy[k]);
        csv += buf;
      }
      draw_plot("energy", csv, a.plot, {});
    }
    json j = {{"records", T}, {"steps", tr.result.steps}, {"t", tr.result.t}, {"reason", to_string(tr.result.reason)},
              {"energy_start", tr.energy.front()}, {"energy_end", tr.energy.back()}, {"seconds", secs},
              {"non_psd_steps", tr.non_psd_steps},
              {"energy_bounded_below", bound.verdict == Network::EnergyBound::Verdict::Bounded     ? "yes"
                                       : bound.verdict == Network::EnergyBound::Verdict::Unbounded ? "no"
                                                                                                   : "unknown"}};
    if (!a.output.empty()) j["output"] = a.output;
    if (!a.plot.empty()) j["plot"] = a.plot;
    emit(as_json, j,
         "simulated " + std::to_string(tr.result.steps) + " steps (" + to_string(tr.result.reason) + ") to t = " +
             std::to_string(tr.result.t) + "; E " + std::to_string(tr.energy.front()) + " -> " + std::to_string(tr.energy.back()) +
             (a.output.empty() ? "" : "; wrote " + a.output) + (a.plot.empty() ? "" : ", " + a.plot) + "\n");
    return 0;
  }
}

// ---------------------------------------------------------------------------------------------
// capacity
struct CapacityArgs {
  std::string model = "A", F = "power", protocol = "stability", order = "random", sweep = "K", criterion = "per-cue",
              output, plot;
  double n = 2.0, beta = 1.0, rho = 0.0, step = 1.0, bisect = 0.0;
  std::size_t N = 100, hidden = 0, trials = 10, cues = 0;
  std::vector<double> values{5, 10, 15, 20};
  std::vector<std::size_t> K_range;
  long max_steps = 100;
  bool one_step = false, no_negatives = false, dry_run = false;
  std::uint64_t seed = 1;
  int threads = 0;
};

// A value of an integer parameter given as a double (--values): finite, whole, in [lo, 2^40].
std::size_t whole_value(double v, const std::string& name, double lo) {
  if (!std::isfinite(v) || v != std::floor(v) || v < lo || v > 1099511627776.0)
    throw BadInput("--values: " + name + " must be a whole number in [" + std::to_string(static_cast<long>(lo)) +
                   ", 2^40], got " + detail::concat(v));
  return static_cast<std::size_t>(v);
}

int cmd_capacity(const CapacityArgs& a, bool bisect_given, bool as_json) {
  check_distinct({}, {{"output", a.output}, {"plot", a.plot}});
  if (bisect_given && !(std::isfinite(a.bisect) && a.bisect > 0 && a.bisect <= 1))
    throw BadInput("--bisect must be a fraction in (0, 1], got " + detail::concat(a.bisect));
  if (a.values.empty()) throw BadInput("--values: give at least one value");
  CapacitySpec s;
  if (a.model.size() != 1) throw BadInput("--model must be A, B or C");
  s.model = a.model[0];
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
  std::vector<CapacityPoint> points;
  json out = {{"model", a.model}, {"protocol", a.protocol}, {"N", a.N}};
  Progress bar("capacity");
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
    for (const double v : a.values) {
      CapacitySpec t = s;
      if (a.sweep == "K") t.K = whole_value(v, "K", 1);
      else if (a.sweep == "N") t.N = whole_value(v, "N", 2);
      else if (a.sweep == "n") t.F.n = v;
      else if (a.sweep == "beta") t.beta = t.F.beta = v;
      else if (a.sweep == "rho") t.rho = v;
      else if (a.sweep == "hidden") t.hidden = whole_value(v, "hidden", 0);
      else throw BadInput("--sweep must be one of K, N, n, beta, rho, hidden; got '" + a.sweep + "'");
      if (a.sweep != "K") t.K = static_cast<std::size_t>(a.K_range.empty() ? 10 : a.K_range[0]);
      t.validate();
      plan.push_back(t);
    }
    if (a.dry_run) {
      emit(as_json, {{"dry_run", true}, {"sweep", a.sweep}, {"points", plan.size()}},
           "valid: " + std::to_string(plan.size()) + " points of --sweep " + a.sweep + "\n");
      return 0;
    }
    for (std::size_t i = 0; i < plan.size(); ++i)
      points.push_back(measure_capacity(plan[i], [&](double f) { bar.update((double(i) + f) / double(plan.size())); }));
    out["sweep"] = a.sweep;
  }
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
    std::snprintf(buf, sizeof buf,
                  "K=%-8zu N=%-6zu n=%-4g recalled %.4f +- %.4f (s.e. over %zu trials)  bit error %.5f  (%zu cues, %.2f s)\n",
                  p.spec.K, p.spec.N, p.spec.F.n, p.recalled, p.recalled_stderr, p.spec.trials, p.bit_error, p.cues,
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

// ---------------------------------------------------------------------------------------------
// demo: the runnable examples live in the Python package (assocmem.demos).
int cmd_demo(const std::string& name, const std::vector<std::string>& rest, bool as_json) {
  if (name != "kanji" && name != "immune" && name != "colour")
    throw BadInput("unknown demo '" + name + "' (available: kanji, immune, colour)");
  std::vector<std::string> args = {"-m", "assocmem.demos." + name};
  args.insert(args.end(), rest.begin(), rest.end());
  if (as_json) args.push_back("--json");
  return run_python(args);
}

}  // namespace

int assocmem::cli::run(int argc, char** argv) {
  CLI::App app{"assocmem: large associative memories (Krotov & Hopfield 2021): build memory stores, recall with "
               "models A, B and C, integrate the general two-layer network, measure capacity, run the demos."};
  app.require_subcommand(1);
  app.fallthrough();  // --json is accepted before or after the subcommand
  bool as_json = false;
  app.add_flag("--json", as_json, "Machine-readable JSON on stdout");
  app.set_version_flag("--version", "assocmem 0.1.0");

  StoreArgs sa;
  auto* st = app.add_subcommand("store", "Build a memory store from a .npy file of patterns (K x d)");
  st->add_option("input", sa.input, "Patterns (.npy: float32, float64 or int8, C order)")->required();
  st->add_option("output", sa.output, "Store file to write (atomically)")->required();
  auto* dtype_opt = st->add_option("--dtype", sa.dtype, "Element type: float32, bfloat16 or bits (+-1); with --append, "
                                   "must match the existing store's")->capture_default_str()
      ->check(CLI::IsMember({"float32", "bfloat16", "bits"}));
  st->add_option("--normalize", sa.normalize, "none, l2 (unit rows) or sign (+-1)")->capture_default_str()
      ->check(CLI::IsMember({"none", "l2", "sign"}));
  st->add_flag("--append", sa.append, "Append to the store when it exists (concurrent appends are serialised by a lock)");

  RecallArgs ra;
  auto* rc = app.add_subcommand("recall", "Retrieve memories for a .npy of queries with model A, B or C");
  rc->add_option("store", ra.store, "Memory store")->required();
  rc->add_option("queries", ra.queries, "Queries (.npy, (B, d) or (d,))")->required();
  rc->add_option("output", ra.output, "Retrieved states (.npy, float32, the queries' shape)")->required();
  rc->add_option("--model", ra.model, "A (dense associative memory), B (modern Hopfield) or C (spherical)")
      ->capture_default_str()->check(CLI::IsMember({"A", "B", "C"}));
  rc->add_option("--beta", ra.beta, "Inverse temperature (B) or gain of F = exp (A, C)")->capture_default_str();
  rc->add_option("--F", ra.F, "Interaction for A and C: power, rectified or exp")->capture_default_str()
      ->check(CLI::IsMember({"power", "rectified", "exp"}));
  rc->add_option("--n", ra.n, "Power n of F (A, C)")->capture_default_str();
  rc->add_option("--alpha", ra.alpha, "Decay coefficient of model C (eq. 19)")->capture_default_str();
  rc->add_option("--steps", ra.steps, "Update steps (B, C)")->capture_default_str();
  rc->add_option("--tol", ra.tol, "Stop a query when max |v_new - v| <= tol (B, C)")->capture_default_str();
  rc->add_option("--step", ra.step, "dt / tau_f of each update (B: (0, 1], C: > 0)")->capture_default_str();
  rc->add_option("--order", ra.order, "Update order of model A: random, fixed or sync")->capture_default_str()
      ->check(CLI::IsMember({"random", "fixed", "sync"}));
  rc->add_option("--max-sweeps", ra.max_sweeps, "Sweeps of model A before giving up")->capture_default_str();
  rc->add_option("--seed", ra.seed, "Seed of model A's random order")->capture_default_str()->check(CLI::NonNegativeNumber);
  rc->add_option("--top-k", ra.top_k, "Memories to report per query in --details (B; at most K are reported)")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  rc->add_option("--details", ra.details, "Write JSON with steps, convergence, energy and top-k ids and weights");
  rc->add_option("--threads", ra.threads, "Worker threads (0: all)")->capture_default_str();
  rc->add_option("--kernel", ra.kernel, "auto, generic, avx512, avx512_bf16 or amx_bf16 (B, C)")->capture_default_str();

  SimulateArgs sm;
  auto* sim = app.add_subcommand("simulate", "Integrate the general two-layer network (eq. 1) described in a JSON file");
  sim->add_option("config", sm.config,
                  "JSON: {\"xi\": \"xi.npy\", \"feature\": {\"name\": \"log_cosh\", \"beta\": 2}, \"hidden\": {\"name\": "
                  "\"log_sum_exp\", \"beta\": 1}, \"v0\": [..] or \"v0.npy\", optional \"h0\", \"current\", \"tau_f\", "
                  "\"tau_h\", \"alpha\", \"method\" (euler, rk4, rk45, bdf), \"t_end\", \"dt\", \"rtol\", \"atol\", "
                  "\"max_steps\", \"fixed_point_tol\", \"record_every\"}; paths are relative to the config file")
      ->required();
  sim->add_option("-o,--output", sm.output, "Trajectory: .csv or .npy, columns t, energy, energy_rate, v..., h...");
  sim->add_option("--plot", sm.plot, "PNG of E(t) (matplotlib)");

  CapacityArgs ca;
  auto* cap = app.add_subcommand("capacity", "Measure recall over random +-1 memories: sweeps and bisection");
  cap->add_option("--model", ca.model, "A, B or C")->capture_default_str()->check(CLI::IsMember({"A", "B", "C"}));
  cap->add_option("--F", ca.F, "Interaction of A and C: power, rectified or exp")->capture_default_str()
      ->check(CLI::IsMember({"power", "rectified", "exp"}));
  cap->add_option("--n", ca.n, "Power n of F")->capture_default_str();
  cap->add_option("--beta", ca.beta, "Inverse temperature (B) or gain of F = exp")->capture_default_str();
  cap->add_option("--N", ca.N, "Neurons (pattern dimension)")->capture_default_str()->check(CLI::NonNegativeNumber);
  cap->add_option("--hidden", ca.hidden, "N_h: hidden neurons, one memory each (0: one per memory)")->capture_default_str()->check(CLI::NonNegativeNumber);
  cap->add_option("--protocol", ca.protocol, "stability, basin or random (starts)")->capture_default_str()
      ->check(CLI::IsMember({"stability", "basin", "random"}));
  cap->add_option("--rho", ca.rho, "basin: fraction of bits flipped in the cue")->capture_default_str();
  cap->add_flag("--one-step", ca.one_step, "One synchronous update instead of running to a fixed point");
  cap->add_option("--order", ca.order, "Update order of model A: random, fixed or sync")->capture_default_str()
      ->check(CLI::IsMember({"random", "fixed", "sync"}));
  cap->add_option("--max-steps", ca.max_steps, "Sweeps (A) or updates (B, C)")->capture_default_str();
  cap->add_option("--step", ca.step, "dt/tau_f of models B and C")->capture_default_str();
  cap->add_option("--trials", ca.trials, "Independent draws of the memories (the unit of the error bars: >= 2 for a standard error)")->capture_default_str()->check(CLI::NonNegativeNumber);
  cap->add_option("--cues", ca.cues, "Cues per trial (0: min(K, 1000)->check(CLI::NonNegativeNumber); random starts 100)")->capture_default_str();
  cap->add_option("--criterion", ca.criterion, "per-cue (fraction of cues recalled) or all (fraction of trials with every "
                  "memory recalled, cued once)")->capture_default_str()->check(CLI::IsMember({"per-cue", "all"}));
  cap->add_flag("--no-negatives", ca.no_negatives, "Random starts: do not count ending on -xi as a memory");
  cap->add_option("--sweep", ca.sweep, "Parameter to sweep: K, N, n, beta, rho or hidden")->capture_default_str();
  cap->add_option("--values", ca.values, "Values of the swept parameter")->delimiter(',')->capture_default_str();
  cap->add_option("--K-range", ca.K_range, "Bisection range LO HI (or K for sweeps of other parameters)")->expected(1, 2)
      ->check(CLI::PositiveNumber);
  auto* bisect_opt =
      cap->add_option("--bisect", ca.bisect, "Find the largest K with recalled >= this fraction in (0, 1] (needs --K-range)");
  cap->add_option("--seed", ca.seed, "Seed of the memories and cues")->capture_default_str()->check(CLI::NonNegativeNumber);
  cap->add_option("--threads", ca.threads, "Worker threads (0: all)")->capture_default_str();
  cap->add_option("-o,--output", ca.output, "Results: .csv or .json");
  cap->add_flag("--dry-run", ca.dry_run, "Check every point of the sweep (or the bisection range) and stop before measuring");
  cap->add_option("--plot", ca.plot, "PNG of recall against the swept parameter (matplotlib)");

  std::string demo_name;
  std::vector<std::string> demo_rest;
  auto* dm = app.add_subcommand("demo", "Run a demo: kanji (the main job), immune, colour (the paper's Section 4 problems)");
  dm->add_option("name", demo_name, "Demo name: kanji, immune or colour");
  dm->prefix_command();  // everything after the name goes to the demo, including --options and --help
  dm->allow_extras();
  dm->fallthrough(false);
  dm->set_help_flag();   // `assocmem demo kanji --help` shows the demo's own options
  const std::string demo_help =
      "Usage: assocmem demo NAME [options of the demo]\n"
      "  kanji   the main job: 3000 Kanji as 64x64 images, recalled from half-hidden and noisy cues\n"
      "  immune  N_f = 32 with 100,000 memories, model B from noisy cues\n"
      "  colour  N_f = 3: named colours and up to 10^6 colours\n"
      "assocmem demo NAME --help lists the options of a demo.\n";

  install_signal_cleanup();  // SIGINT/SIGTERM/SIGHUP remove the temporaries in flight
  // One line on stderr naming the problem; with --json also an error object on stdout.
  auto fail = [&](int code, const std::string& msg) {
    std::fprintf(stderr, "assocmem: %s: %s\n", code == 2 ? "error" : "failed", msg.c_str());
    if (as_json) std::cout << dump(json{{"error", msg}, {"exit_code", code}});
    return code;
  };
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::string msg = e.what();
    for (auto& ch : msg)
      if (ch == '\n') ch = ' ';
    for (int i = 1; i < argc; ++i) as_json = as_json || std::strcmp(argv[i], "--json") == 0;
    return fail(2, msg + " (see --help)");
  }
  try {
    if (*st) return cmd_store(sa, dtype_opt->count() > 0, as_json);
    if (*rc) return cmd_recall(ra, as_json);
    if (*sim) return cmd_simulate(sm, as_json);
    if (*cap) return cmd_capacity(ca, bisect_opt->count() > 0, as_json);
    if (*dm) {
      std::vector<std::string> rest = demo_rest;
      for (const auto& r : dm->remaining()) rest.push_back(r);
      const bool asks_help = demo_name == "--help" || demo_name == "-h" ||
                             (demo_name.empty() && !rest.empty() && (rest[0] == "--help" || rest[0] == "-h"));
      if (demo_name.empty() || asks_help) {
        std::cout << demo_help;
        if (!asks_help) std::fprintf(stderr, "assocmem: error: demo: a NAME is required (kanji, immune, colour)\n");
        return asks_help ? 0 : 2;
      }
      return cmd_demo(demo_name, rest, as_json);
    }
  } catch (const BadInput& e) {
    return fail(2, e.what());
  } catch (const InvalidArgument& e) {
    return fail(2, e.what());
  } catch (const IoError& e) {
    return fail(2, e.what());
  } catch (const fs::filesystem_error& e) {
    return fail(2, e.what());
  } catch (const std::bad_alloc&) {
    return fail(1, "out of memory");
  } catch (const std::exception& e) {
    return fail(1, e.what());
  }
  return 0;
}
