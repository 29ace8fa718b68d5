// assocmem simulate: integrate the general two-layer network (eq. 1), or a layered network (any number
// of layers, assocmem/layered.hpp), described in a JSON file.
#include "common.hpp"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "assocmem/config.hpp"
#include "assocmem/dynamics.hpp"
#include "assocmem/io.hpp"
#include "assocmem/layered.hpp"
#include "assocmem/npy.hpp"

namespace assocmem::cli {
namespace fs = std::filesystem;
namespace {

struct SimulateArgs {
  std::string config, output, plot;
};

// A finished run, whichever network made it: the records (state columns named), how it ended, and
// Section 2's verdict on the energy's lower bound.
struct Recorded {
  std::vector<double> t, energy, energy_rate;
  std::vector<Vector> states;
  std::vector<std::string> columns;  // names of the state columns
  IntegrateResult result;
  long non_psd_steps = 0;
  double first_non_psd_t = 0;
  std::string bounded = "unknown";
};

Recorded run_two_layer(const SimulationConfig& cfg, const SimulateOptions& o) {
  const Network& net = *cfg.network;
  Recorded r;
  const Network::EnergyBound bound = net.energy_bound();  // Section 2's condition, flagged when violated
  if (bound.verdict == Network::EnergyBound::Verdict::Unbounded)
    std::fprintf(stderr, "assocmem: warning: the energy of this network is unbounded below (%s)\n", bound.why.c_str());
  r.bounded = bound.verdict == Network::EnergyBound::Verdict::Bounded     ? "yes"
              : bound.verdict == Network::EnergyBound::Verdict::Unbounded ? "no"
                                                                          : "unknown";
  const Trajectory tr = simulate(net, cfg.v0, cfg.h0, o);
  r.t = tr.t;
  r.energy = tr.energy;
  r.energy_rate = tr.energy_rate;
  for (std::size_t k = 0; k < tr.t.size(); ++k) {
    Vector x(tr.v[k].size() + tr.h[k].size());
    x << tr.v[k], tr.h[k];
    r.states.push_back(std::move(x));
  }
  for (Eigen::Index i = 0; i < net.n_features(); ++i) r.columns.push_back("v" + std::to_string(i));
  for (Eigen::Index i = 0; i < net.n_hidden(); ++i) r.columns.push_back("h" + std::to_string(i));
  r.result = tr.result;
  r.non_psd_steps = tr.non_psd_steps;
  r.first_non_psd_t = tr.first_non_psd_t;
  return r;
}

// A layered network, or its adiabatic limit when the description names fast layers (the records then
// hold every layer, the fast ones at their steady state).
Recorded run_layered(const SimulationConfig& cfg, const SimulateOptions& o) {
  const LayeredNetwork& net = *cfg.layered;
  const Network::EnergyBound bound = net.energy_bound();
  LayeredTrajectory tr;
  if (cfg.fast.empty()) {
    tr = simulate(net, cfg.x0, o);
  } else {
    const AdiabaticLayeredSystem sys(net, cfg.fast);
    tr = simulate(sys, sys.slow(cfg.x0), o);
  }
  Recorded r;
  r.t = tr.t;
  r.energy = tr.energy;
  r.energy_rate = tr.energy_rate;
  r.states = tr.x;
  r.bounded = bound.verdict == Network::EnergyBound::Verdict::Bounded ? "yes" : "unknown";
  for (std::size_t A = 0; A < net.n_layers(); ++A)
    for (Eigen::Index i = 0; i < net.layer(A).size; ++i) r.columns.push_back(net.layer(A).name + std::to_string(i));
  r.result = tr.result;
  r.non_psd_steps = tr.non_psd_steps;
  r.first_non_psd_t = tr.first_non_psd_t;
  return r;
}

int cmd_simulate(const SimulateArgs& a, bool as_json) {
  const std::string text = InputFile(a.config, "config").read_all(std::size_t{64} << 20);
  const fs::path base = fs::path(a.config).parent_path();
  SimulationConfig cfg = parse_simulation_config(text, base.string(), "config '" + a.config + "'");
  std::vector<std::pair<std::string, std::string>> inputs = {{"config", a.config}};
  inputs.insert(inputs.end(), cfg.inputs.begin(), cfg.inputs.end());  // xi and the arrays it names
  check_distinct(inputs, {{"output", a.output}, {"plot", a.plot}});
  SimulateOptions& o = cfg.options;
  ProgressBar bar("simulate");
  o.on_step = [&](double t) { bar.update((t - o.t0) / (o.t_end - o.t0)); };
  const auto t0 = std::chrono::steady_clock::now();
  const Recorded tr = cfg.layered ? run_layered(cfg, o) : run_two_layer(cfg, o);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  bar.update(1.0);
  // Output: columns t, energy, energy_rate, then the state (v..., h... or each layer's neurons).
  const std::size_t T = tr.t.size(), n = tr.columns.size(), cols = 3 + n;
  std::vector<double> table(T * cols);
  for (std::size_t k = 0; k < T; ++k) {
    double* row = &table[k * cols];
    row[0] = tr.t[k];
    row[1] = tr.energy[k];
    row[2] = tr.energy_rate[k];
    std::copy(tr.states[k].data(), tr.states[k].data() + n, row + 3);
  }
  if (!a.output.empty()) {
    if (fs::path(a.output).extension() == ".npy") {
      write_npy(a.output, table.data(), T, cols);
    } else {
      std::string csv = "t,energy,energy_rate";
      for (const std::string& c : tr.columns) csv += "," + c;
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
            {"non_psd_steps", tr.non_psd_steps}, {"energy_bounded_below", tr.bounded}};
  if (cfg.layered) {
    j["layers"] = cfg.layered->n_layers();
    j["fast"] = cfg.fast;
  }
  if (!a.output.empty()) j["output"] = a.output;
  if (!a.plot.empty()) j["plot"] = a.plot;
  // Footnote 2: where a Lagrangian's Hessian is not positive semi-definite eq. (4) does not hold, and
  // the energy may rise; say so (issue 23: text mode was silent), with the largest rise recorded.
  double rise = 0;
  for (std::size_t k = 1; k < tr.energy.size(); ++k) rise = std::max(rise, tr.energy[k] - tr.energy[k - 1]);
  j["energy_max_rise"] = rise;
  if (tr.non_psd_steps > 0)
    std::fprintf(stderr,
                 "assocmem: warning: %ld steps (from t = %g) were where a Lagrangian's Hessian is not positive "
                 "semi-definite (footnote 2: eq. 4 does not hold there)%s\n",
                 static_cast<long>(tr.non_psd_steps), tr.first_non_psd_t,
                 rise > 0 ? ("; the energy rose by up to " + std::to_string(rise)).c_str() : "");
  emit(as_json, j,
       "simulated " + std::to_string(tr.result.steps) + " steps (" + to_string(tr.result.reason) + ") to t = " +
           std::to_string(tr.result.t) + "; E " + std::to_string(tr.energy.front()) + " -> " +
           std::to_string(tr.energy.back()) + (a.output.empty() ? "" : "; wrote " + a.output) +
           (a.plot.empty() ? "" : ", " + a.plot) + "\n");
  return 0;
}

}  // namespace

Command add_simulate(CLI::App& app) {
  auto a = std::make_shared<SimulateArgs>();
  auto* sim = app.add_subcommand(
      "simulate", "Integrate the general two-layer network (eq. 1), or a layered network, described in a JSON file");
  sim->add_option("config", a->config,
                  "JSON: {\"xi\": \"xi.npy\", \"feature\": {\"name\": \"log_cosh\", \"beta\": 2}, \"hidden\": {\"name\": "
                  "\"log_sum_exp\", \"beta\": 1}, \"v0\": [..] or \"v0.npy\", optional \"h0\", \"current\", \"tau_f\", "
                  "\"tau_h\", \"alpha\", \"method\" (euler, rk4, rk45, bdf), \"t_end\", \"dt\", \"rtol\", \"atol\", "
                  "\"max_steps\", \"fixed_point_tol\", \"record_every\"}; or a layered network: {\"layers\": [{\"name\", "
                  "\"size\", \"lagrangian\", optional \"tau\", \"current\", \"x0\"}, ...], \"synapses\": [{\"from\", \"to\", "
                  "\"dense\": \"W.npy\" or \"conv2d\": {\"kernel\": \"K.npy\" (out x in kh kw), \"kernel_size\": [kh, kw], "
                  "\"in_shape\": [c, h, w], optional \"stride\", \"padding\"}}, ...], optional \"fast\": [layer names "
                  "integrated out], and the options above from \"method\"}; paths are relative to the config file")
      ->required();
  sim->add_option("-o,--output", a->output,
                  "Trajectory: .csv or .npy, columns t, energy, energy_rate, v..., h... (a layered network: each "
                  "layer's neurons, named by the layer)");
  sim->add_option("--plot", a->plot, "PNG of E(t) (matplotlib)");

  return {sim, [a](bool as_json) { return cmd_simulate(*a, as_json); }};
}

}  // namespace assocmem::cli
