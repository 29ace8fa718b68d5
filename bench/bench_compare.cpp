// bench_compare: times assocmem's engine on the workloads of bench/compare and prints JSON lines
// {"case": ..., "median_s": ..., ...}. Inputs are random unit patterns (seeded); bench/compare
// runs numpy (and PyTorch when installed) on the same shapes in the same run and prints ratios.
//
// usage: bench_compare CASE [--reps N] [--threads T]
//   CASE: b_batch_f32 | b_batch_bf16 | b_single_f32 | b_single_bf16 | a_appendix_b | b_scaling
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <cmath>
#include <vector>

#include "assocmem/engine.hpp"

using namespace assocmem;
using Clock = std::chrono::steady_clock;

namespace {

std::vector<float> unit_rows(std::size_t n, std::size_t d, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> x(n * d);
  for (std::size_t i = 0; i < n; ++i) {
    double s = 0;
    for (std::size_t j = 0; j < d; ++j) s += double(x[i * d + j] = g(rng)) * x[i * d + j];
    const float inv = static_cast<float>(1.0 / std::sqrt(s));
    for (std::size_t j = 0; j < d; ++j) x[i * d + j] *= inv;
  }
  return x;
}

template <class F>
double median_seconds(int reps, F&& f) {
  f();  // warm-up
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    const auto a = Clock::now();
    f();
    t.push_back(std::chrono::duration<double>(Clock::now() - a).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Memory read bandwidth: the median time to sum a buffer of `bytes` with all threads.
double read_bandwidth_gbs(std::size_t bytes, int threads) {
  std::vector<float> buf(bytes / 4, 1.0f);
  volatile float sink = 0;
  const double s = median_seconds(5, [&] {
    std::vector<double> part(static_cast<std::size_t>(threads), 0.0);
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&, t] {
        const std::size_t n = buf.size(), b = n * static_cast<std::size_t>(t) / threads,
                          e = n * static_cast<std::size_t>(t + 1) / threads;
        float acc[16] = {};
        for (std::size_t i = b; i + 16 <= e; i += 16)
          for (int k = 0; k < 16; ++k) acc[k] += buf[i + static_cast<std::size_t>(k)];
        double s2 = 0;
        for (float a : acc) s2 += a;
        part[static_cast<std::size_t>(t)] = s2;
      });
    for (auto& p : pool) p.join();
    sink = sink + static_cast<float>(part[0]);
  });
  return double(bytes) / s / 1e9;
}

std::size_t g_tile = 256;

void model_b(const char* name, DType dtype, std::size_t K, std::size_t d, std::size_t B, int reps, int threads) {
  MemoryStore store(d, dtype);
  const auto X = unit_rows(K, d, 1);
  store.append(X.data(), K);
  std::vector<float> Q(X.begin(), X.begin() + static_cast<long>(B * d));
  EngineOptions eo;
  eo.threads = threads;
  eo.tile = g_tile;
  const ModelBEngine eng(store, 8.0, eo);
  BatchOptions bo;
  bo.max_steps = 1;
  bo.final_pass = false;  // one step of eq. (16), as numpy's X^T softmax(beta X v)
  const double s = median_seconds(reps, [&] { eng.retrieve(Q.data(), B, bo); });
  const double bytes = double(K) * store.row_bytes();
  std::printf("{\"case\": \"%s\", \"K\": %zu, \"d\": %zu, \"batch\": %zu, \"dtype\": \"%s\", \"kernel\": \"%s\", "
              "\"threads\": %d, \"median_s\": %.6g, \"pattern_gb_per_s\": %.4g}\n",
              name, K, d, B, to_string(dtype).c_str(), eng.kernel().c_str(), threads, s, bytes / s / 1e9);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: bench_compare CASE [--reps N] [--threads T]\n");
    return 2;
  }
  const std::string c = argv[1];
  int reps = 5, threads = 0;
  std::size_t tile = 256;
  for (int i = 2; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--reps")) reps = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--tile")) tile = static_cast<std::size_t>(std::atol(argv[i + 1]));
  }
  g_tile = tile;
  try {
    if (c == "b_batch_f32") model_b(c.c_str(), DType::Float32, 100000, 256, 1024, reps, threads);
    else if (c == "b_batch_bf16") model_b(c.c_str(), DType::BFloat16, 100000, 256, 1024, reps, threads);
    else if (c == "b_single_f32") model_b(c.c_str(), DType::Float32, 1000000, 64, 1, reps, threads);
    else if (c == "b_single_bf16") model_b(c.c_str(), DType::BFloat16, 1000000, 64, 1, reps, threads);
    else if (c == "bandwidth") {
      const int t = threads > 0 ? threads : static_cast<int>(std::thread::hardware_concurrency());
      std::printf("{\"case\": \"bandwidth\", \"bytes\": %zu, \"threads\": %d, \"gb_per_s\": %.4g}\n", std::size_t{256} << 20,
                  t, read_bandwidth_gbs(std::size_t{256} << 20, t));
    } else if (c == "b_scaling") {
      for (std::size_t K : {10000u, 30000u, 100000u, 300000u, 1000000u})
        model_b("b_scaling", DType::Float32, K, 64, 16, reps, threads);
    } else if (c == "b_threads") {
      for (int t : {1, 2}) model_b("b_threads", DType::Float32, 100000, 256, 256, reps, t);
    } else {
      std::fprintf(stderr, "bench_compare: unknown case '%s'\n", c.c_str());
      return 2;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_compare: %s\n", e.what());
    return 1;
  }
  return 0;
}
