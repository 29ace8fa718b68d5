// assocmem/config.hpp - a simulation of the general network (eq. 1) described in JSON: the format
// of `assocmem simulate`, parsed and validated in one place (the CLI and the fuzz target use it).
//
// {"xi": "xi.npy",                                   N_h x N_f memories (a .npy path)
//  "feature": {"name": "log_cosh", "beta": 2},       L_v by name (lagrangians::by_name; keys name,
//  "hidden":  {"name": "log_sum_exp", "beta": 1},    beta, n, gamma, eps)
//  "v0": [..] or "v0.npy",  optional "h0", "current" (lists or .npy paths),
//  optional "tau_f", "tau_h", "alpha", "method" (euler, rk4, rk45, bdf), "t_end", "dt", "rtol", "atol",
//  "max_steps", "fixed_point_tol", "record_every"}
// or a layered network (assocmem/layered.hpp), recognised by its "layers":
// {"layers": [{"name": "image", "size": 64, "lagrangian": {"name": "log_cosh", "beta": 2},
//              optional "tau" (1), "current", "x0" (lists or .npy paths; x0 0 when left out)}, ...],
//  "synapses": [{"from": "image", "to": "features", "dense": "W.npy"},                    W: to x from
//               {"from": "image", "to": "features", "conv2d": {"kernel": "K.npy",   (out, in kh kw): a 2-D array
//                "kernel_size": [kh, kw], "in_shape": [1, 8, 8], optional "stride" (1), "padding" (0)}}, ...],
//  optional "fast": ["memories"] (those layers integrated out: the adiabatic limit), and the options
//  above from "method" on}
// Paths are relative to base_dir. Unknown keys, wrong types and missing keys are InvalidArgument
// naming the key; unreadable files are IoError.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "assocmem/dynamics.hpp"
#include "assocmem/layered.hpp"
#include "assocmem/network.hpp"

namespace assocmem {

struct SimulationConfig {
  std::unique_ptr<Network> network;  ///< the two-layer network, or null for a layered one
  Vector v0, h0;  ///< h0 empty: start the hidden neurons at their steady state (eq. 5)
  std::unique_ptr<LayeredNetwork> layered;  ///< the layered network, or null for a two-layer one
  Vector x0;                                ///< its stacked initial state
  std::vector<std::string> fast;            ///< its layers integrated out (empty: none)
  SimulateOptions options;
  std::string xi_path;  ///< the .npy the memories were read from (an input of the run)
  /// Every file the description named and the run read: ("xi", path), and ("v0" | "h0" | "current", path)
  /// for arrays given as .npy paths; for a layered network ("layers[A].current" | "layers[A].x0" |
  /// "synapses[s]", path) (a command must not write over any of them).
  std::vector<std::pair<std::string, std::string>> inputs;
};

/// Parses and validates a simulation description. `name` is used in messages (e.g. the file name).
SimulationConfig parse_simulation_config(const std::string& json_text, const std::string& base_dir,
                                         const std::string& name = "config");

}  // namespace assocmem
