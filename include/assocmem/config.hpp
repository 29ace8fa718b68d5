// assocmem/config.hpp - a simulation of the general network (eq. 1) described in JSON: the format
// of `assocmem simulate`, parsed and validated in one place (the CLI and the fuzz target use it).
//
// {"xi": "xi.npy",                                   N_h x N_f memories (a .npy path)
//  "feature": {"name": "log_cosh", "beta": 2},       L_v by name (lagrangians::by_name; keys name,
//  "hidden":  {"name": "log_sum_exp", "beta": 1},    beta, n, gamma, eps)
//  "v0": [..] or "v0.npy",  optional "h0", "current" (lists or .npy paths),
//  optional "tau_f", "tau_h", "alpha", "method" (euler, rk4, rk45, bdf), "t_end", "dt", "rtol", "atol",
//  "max_steps", "fixed_point_tol", "record_every"}
// Paths are relative to base_dir. Unknown keys, wrong types and missing keys are InvalidArgument
// naming the key; unreadable files are IoError.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "assocmem/dynamics.hpp"
#include "assocmem/network.hpp"

namespace assocmem {

struct SimulationConfig {
  std::unique_ptr<Network> network;
  Vector v0, h0;  ///< h0 empty: start the hidden neurons at their steady state (eq. 5)
  SimulateOptions options;
  std::string xi_path;  ///< the .npy the memories were read from (an input of the run)
  /// Every file the description named and the run read: ("xi", path), and ("v0" | "h0" | "current", path)
  /// for arrays given as .npy paths (a command must not write over any of them).
  std::vector<std::pair<std::string, std::string>> inputs;
};

/// Parses and validates a simulation description. `name` is used in messages (e.g. the file name).
SimulationConfig parse_simulation_config(const std::string& json_text, const std::string& base_dir,
                                         const std::string& name = "config");

}  // namespace assocmem
