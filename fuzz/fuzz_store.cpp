// libFuzzer target: MemoryStore::open and read_npy on arbitrary bytes must either succeed or throw
// assocmem::Error (never crash, hang or read out of bounds).
//
// The first byte selects the mode: bit 0 = the rest is a .npy file instead of a store; bit 1 = repair
// the store's checksums before opening, so that mutations reach the structural checks behind them.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <xxhash.h>

#include "assocmem/npy.hpp"
#include "assocmem/store.hpp"

namespace {
std::string temp_path() {
  static const std::string p = "/tmp/assocmem_fuzz_" + std::to_string(getpid());
  return p;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::uint8_t mode = data[0];
  std::vector<std::uint8_t> bytes(data + 1, data + size);
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
  const std::string path = temp_path();
  if (std::FILE* f = std::fopen(path.c_str(), "wb")) {
    if (!bytes.empty()) std::fwrite(bytes.data(), 1, bytes.size(), f);
    std::fclose(f);
  } else {
    return 0;
  }
  try {
    if (mode & 1) {
      const assocmem::NpyArray a = assocmem::read_npy(path);
      volatile float sink = a.rows * a.cols ? a.to_float32()[0] : 0.0f;
      (void)sink;
    } else {
      const assocmem::MemoryStore s = assocmem::MemoryStore::open(path);
      std::vector<float> row(s.dim());
      for (std::size_t i = 0; i < s.size() && i < 4; ++i) s.decode_row(i, row.data());
      volatile std::uint64_t sink = s.size() ? s.ids()[s.size() - 1] : 0;
      (void)sink;
    }
  } catch (const assocmem::Error&) {
    // a clear error is the expected outcome for broken input
  }
  return 0;
}
