// Writes a seed corpus for fuzz_store: valid stores of each dtype and valid .npy files, each
// prefixed with the mode byte that fuzz_store reads.
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
  return 0;
}
