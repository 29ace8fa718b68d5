// Writes a seed corpus for fuzz_inputs: valid stores of each dtype, valid .npy files, simulation
// descriptions and CLI option lines, each prefixed with the mode byte that fuzz_inputs reads.
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "assocmem/npy.hpp"
#include "assocmem/store.hpp"

using namespace assocmem;

static void add(const std::string& dir, const std::string& name, const std::string& src, unsigned char mode) {
  std::ifstream in(src, std::ios::binary);
  std::vector<char> b((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::ofstream out(dir + "/" + name, std::ios::binary);
  out.put(static_cast<char>(mode));
  out.write(b.data(), static_cast<std::streamsize>(b.size()));
  std::remove(src.c_str());
}

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_seeds DIR\n");
    return 2;
  }
  const std::string dir = argv[1], tmp = dir + "/.seed";
  int k = 0;
  for (DType t : {DType::Float32, DType::BFloat16, DType::Bits}) {
    MemoryStore s(5, t);
    const float rows[10] = {1, -1, 1, 1, -1, -1, 1, -1, 1, 1};
    s.append(rows, 2);
    s.save(tmp);
    add(dir, "store" + std::to_string(k++), tmp, 0);
    s.save(tmp);
    add(dir, "store" + std::to_string(k++), tmp, 2);
  }
  const float f[6] = {1, 2, 3, 4, 5, 6};
  write_npy(tmp, f, 2, 3);
  add(dir, "npy_f32", tmp, 1);
  const double g[2] = {1, 2};
  write_npy(tmp, g, 1, 2, true);
  add(dir, "npy_f64", tmp, 1);
  auto text = [&](const std::string& name, unsigned char mode, const std::string& body) {
    std::ofstream out(dir + "/" + name, std::ios::binary);
    out.put(static_cast<char>(mode));
    out << body;
  };
  // Simulations (mode 4): xi.npy is 3 x 4 in the fuzzer's folder.
  text("sim_rk45", 4, R"({"xi": "xi.npy", "feature": {"name": "log_cosh", "beta": 2}, "hidden": {"name": "log_sum_exp"},
                         "v0": [0.5, -0.2, 0.1, 0.3], "t_end": 2})");
  text("sim_euler", 4, R"({"xi": "xi.npy", "feature": {"name": "identity"}, "hidden": {"name": "power", "n": 3},
                          "v0": [1, 0, 0, 0], "method": "euler", "dt": 0.1, "t_end": 1, "alpha": 1, "tau_h": 0.1})");
  text("sim_bdf", 4, R"({"xi": "xi.npy", "feature": {"name": "spherical"}, "hidden": {"name": "exp", "beta": 1},
                        "v0": [1, 1, 0, 0], "h0": [0, 0, 0], "method": "bdf", "t_end": 3, "current": [0, 0, 0, 0.1]})");
  // Layered networks (the same 3 x 4 xi.npy as a dense synapse from a 4-neuron layer to a 3-neuron one;
  // as a 1 x 2 x 2 -> 3 x 1 x 1 convolution with kernel 2 x 2), with and without a fast layer.
  text("sim_layered", 4, R"({"layers": [{"name": "a", "size": 4, "lagrangian": {"name": "log_cosh"}, "x0": [1, 0, 0, 0]},
                              {"name": "b", "size": 3, "lagrangian": {"name": "log_sum_exp"}, "tau": 0.5},
                              {"name": "c", "size": 3, "lagrangian": {"name": "softplus"}}],
                             "synapses": [{"from": "a", "to": "b", "dense": "xi.npy"},
                                          {"from": "a", "to": "c", "conv2d": {"kernel": "xi.npy", "kernel_size": [2, 2],
                                           "in_shape": [1, 2, 2]}}], "t_end": 1})");
  text("sim_layered_fast", 4, R"({"layers": [{"name": "a", "size": 4, "lagrangian": {"name": "identity"}, "x0": [1, 2, 0, 0]},
                                   {"name": "b", "size": 3, "lagrangian": {"name": "log_sum_exp"}}],
                                  "synapses": [{"from": "a", "to": "b", "dense": "xi.npy"}], "fast": ["b"],
                                  "method": "rk4", "dt": 0.1, "t_end": 1})");
  // CLI options (mode 8: capacity --dry-run, mode 9: recall): lines of an option byte (an index into
  // fuzz_inputs' option tables) and the value.
  auto line = [](char option, const std::string& value) { return std::string(1, option) + value + "\n"; };
  text("cli_capacity", 8, line(0, "100") + line(4, "5,10,15") + line(7, "3") + line(6, "0.9"));
  text("cli_recall", 9, line(0, "8") + line(5, "3") + line(8, "B") + line(3, "1e-6"));
  text("cli_recall_a", 9, line(8, "A") + line(9, "exp") + line(10, "sync") + line(0, "2"));
  return 0;
}
