// libFuzzer target: every input a user controls must either work or throw assocmem::Error / exit
// with a code (never crash, hang, abort or read out of bounds). The first byte selects what the rest is:
//   (mode >> 2) & 3 == 0 or 3: a store (bit 0 clear) or a .npy file (bit 0 set); bit 1 repairs a
//                              store's checksums so that mutations reach the structural checks;
//                          1: a simulation description (JSON, assocmem/config.hpp), then a run of
//                             at most 200 steps of it;
//                          2: the CLI's numeric options: lines "<option byte><value>" turned into
//                             `assocmem capacity ... --dry-run` or `assocmem recall` on a tiny store.
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <xxhash.h>

#include "assocmem/config.hpp"
#include "assocmem/dynamics.hpp"
#include "assocmem/npy.hpp"
#include "assocmem/store.hpp"
#include "cli.hpp"

namespace {

// A private folder with the fixed files the modes refer to (xi.npy, a tiny store and queries).
const std::string& workdir() {
  static const std::string dir = [] {
    std::string t = "/tmp/assocmem_fuzz_XXXXXX";
    if (!mkdtemp(t.data())) return std::string("/tmp");
    const double xi[12] = {1, -1, 0.5, 0, -0.5, 1, 1, -1, 0.25, 0, 1, 1};
    assocmem::write_npy(t + "/xi.npy", xi, 3, 4);
    assocmem::MemoryStore s(4, assocmem::DType::Float32);
    const float rows[16] = {1, -1, 1, -1, 1, 1, -1, -1, -1, 1, 1, -1, 1, 1, 1, 1};
    s.append(rows, 4);
    s.save(t + "/m.amem");
    const float q[8] = {1, -1, 1, 1, -1, -1, 1, -1};
    assocmem::write_npy(t + "/q.npy", q, 2, 4);
    return t;
  }();
  return dir;
}

void fuzz_file(std::uint8_t mode, std::vector<std::uint8_t> bytes) {
  if (!(mode & 1) && (mode & 2) && bytes.size() >= 72) {
    std::uint64_t h = XXH64(bytes.data(), 64, 0);
    std::memcpy(&bytes[64], &h, 8);
    if (bytes.size() > 4096) {
      h = XXH64(bytes.data() + 4096, bytes.size() - 4096, 0);
      std::memcpy(&bytes[56], &h, 8);
      h = XXH64(bytes.data(), 64, 0);
      std::memcpy(&bytes[64], &h, 8);
    }
  }
  const std::string path = workdir() + "/input";
  if (std::FILE* f = std::fopen(path.c_str(), "wb")) {
    if (!bytes.empty()) std::fwrite(bytes.data(), 1, bytes.size(), f);
    std::fclose(f);
  } else {
    return;
  }
  if (mode & 1) {
    const assocmem::NpyArray a = assocmem::read_npy(path);
    volatile float sink = a.rows * a.cols ? a.to_float32()[0] : 0.0f;
    (void)sink;
  } else {
    for (auto access : {assocmem::Access::Copy, assocmem::Access::Map}) {
      const assocmem::MemoryStore s = assocmem::MemoryStore::open(path, {true, access});
      std::vector<float> row(std::min<std::size_t>(s.dim(), 1 << 16));
      for (std::size_t i = 0; i < s.size() && i < 4 && s.dim() <= row.size(); ++i) s.decode_row(i, row.data());
      volatile std::uint64_t sink = s.size() ? s.ids()[s.size() - 1] : 0;
      (void)sink;
    }
  }
}

void fuzz_simulation(const std::string& text) {
  assocmem::SimulationConfig c = assocmem::parse_simulation_config(text, workdir(), "fuzz");
  c.options.max_steps = std::min<long>(c.options.max_steps, 200);  // bounded work per input
  if (c.layered) {
    if (c.layered->size() > 100000) return;  // bounded memory per input
    volatile double sink = 0;
    if (c.fast.empty()) {
      sink = assocmem::simulate(*c.layered, c.x0, c.options).energy.back();
    } else {
      const assocmem::AdiabaticLayeredSystem sys(*c.layered, c.fast);
      sink = assocmem::simulate(sys, sys.slow(c.x0), c.options).energy.back();
    }
    (void)sink;
    return;
  }
  volatile double sink = assocmem::simulate(*c.network, c.v0, c.h0, c.options).energy.back();
  (void)sink;
}

void fuzz_cli(const std::string& text, bool capacity) {
  static const char* kCapacity[] = {"--N",     "--n",    "--beta",  "--rho",     "--values",   "--K-range",
                                    "--bisect", "--trials", "--cues", "--step",    "--threads",  "--seed",
                                    "--hidden", "--sweep", "--model", "--F",       "--protocol", "--order"};
  static const char* kRecall[] = {"--beta", "--n",       "--alpha", "--tol",   "--step",  "--top-k",
                                  "--seed", "--threads", "--model", "--F",     "--order", "--kernel"};
  const std::string d = workdir();
  std::vector<std::string> args = {"assocmem"};
  if (capacity) args.insert(args.end(), {"capacity", "--dry-run"});
  else args.insert(args.end(), {"recall", d + "/m.amem", d + "/q.npy", d + "/out.npy", "--steps", "3", "--max-sweeps", "5"});
  std::size_t start = 0;
  while (start < text.size() && args.size() < 40) {
    std::size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    if (end > start) {
      const auto pick = static_cast<unsigned char>(text[start]);
      args.push_back(capacity ? kCapacity[pick % std::size(kCapacity)] : kRecall[pick % std::size(kRecall)]);
      args.push_back(text.substr(start + 1, end - start - 1));
    }
    start = end + 1;
  }
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  assocmem::cli::run(static_cast<int>(args.size()), argv.data());  // any exit code is fine; a crash is not
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::uint8_t mode = data[0];
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  try {
    switch ((mode >> 2) & 3) {
      case 1: fuzz_simulation(text); break;
      case 2: fuzz_cli(text, !(mode & 1)); break;
      default: fuzz_file(mode, std::vector<std::uint8_t>(data + 1, data + size)); break;
    }
  } catch (const assocmem::Error&) {
    // a clear error is the expected outcome for broken input
  }
  return 0;
}
