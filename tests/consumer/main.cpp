// The consumer: stores memories, saves and reopens the store, retrieves with model B, and checks the
// answer. Exit 0 when every check passes. Built by tests/packaging/run with find_package, with
// add_subdirectory and with pkg-config alone.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "assocmem/engine.hpp"
#include "assocmem/models.hpp"
#include "assocmem/store.hpp"
#include "assocmem/version.hpp"

int main(int argc, char** argv) {
  using namespace assocmem;
  if (std::strcmp(version(), ASSOCMEM_VERSION) != 0) {
    std::fprintf(stderr, "library %s but headers %s\n", version(), ASSOCMEM_VERSION);
    return 1;
  }
  const std::string path = argc > 1 ? argv[1] : "consumer.amem";
  const std::size_t K = 500, d = 32;
  std::mt19937_64 rng(3);
  std::normal_distribution<float> n;
  std::vector<float> X(K * d);
  for (std::size_t i = 0; i < K; ++i) {
    float s = 0;
    for (std::size_t j = 0; j < d; ++j) s += (X[i * d + j] = n(rng)) * X[i * d + j];
    for (std::size_t j = 0; j < d; ++j) X[i * d + j] /= std::sqrt(s);
  }
  MemoryStore store(d, DType::Float32);
  store.append(X.data(), K);
  store.save(path);
  const MemoryStore opened = MemoryStore::open(path);
  const ModelBEngine engine(opened, /*beta=*/40.0);
  std::vector<float> q(X.begin() + 7 * d, X.begin() + 8 * d);
  for (auto& x : q) x += 0.02f * n(rng);
  RetrieveOptions o;
  o.max_steps = 5;
  o.top_k = 1;
  const Retrieval r = engine.retrieve(q.data(), 1, o);
  double err = 0;
  for (std::size_t j = 0; j < d; ++j) err = std::max(err, std::fabs(r.states[j] - X[7 * d + j]));
  std::printf("assocmem %s: memory %llu, weight %.4f, max error %.2g\n", version(),
              static_cast<unsigned long long>(r.top[0][0].id), r.top[0][0].weight, err);
  return r.top[0][0].id == 7 && err < 1e-3 ? 0 : 1;
}
