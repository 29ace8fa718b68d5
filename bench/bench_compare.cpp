// bench_compare: times assocmem's engine on the workloads of bench/compare and prints JSON lines
// {"case": ..., "median_s": ..., ...}. Inputs are random unit patterns (seeded); bench/compare
// runs numpy (and PyTorch when installed) on the same shapes in the same run and prints ratios.
//
// usage: bench_compare CASE [--reps N] [--threads T]
//   CASE: b_batch_f32 | b_batch_bf16 | b_single_f32 | b_single_bf16 | bandwidth | b_scaling | b_threads
//         | a_appendix_b [--starts S] [--n N]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <cmath>
#include <vector>

#include "assocmem/binary.hpp"
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

// Resident memory (KiB) now and its peak since the last reset_peak() (Linux /proc).
long proc_status_kib(const char* key) {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return -1;
  char line[256];
  long v = -1;
  const std::size_t n = std::strlen(key);
  while (std::fgets(line, sizeof line, f))
    if (!std::strncmp(line, key, n)) v = std::atol(line + n + 1);
  std::fclose(f);
  return v;
}
void reset_peak() {
  if (std::FILE* f = std::fopen("/proc/self/clear_refs", "w")) {
    std::fputs("5", f);
    std::fclose(f);
  }
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
        float acc[64] = {};  // 64 independent sums: bound by memory, not by add latency
        for (std::size_t i = b; i + 64 <= e; i += 64)
          for (int k = 0; k < 64; ++k) acc[k] += buf[i + static_cast<std::size_t>(k)];
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
  std::vector<float> Q;
  {
    const auto X = unit_rows(K, d, 1);
    store.append(X.data(), K);
    Q.assign(X.begin(), X.begin() + static_cast<long>(B * d));
  }
  EngineOptions eo;
  eo.threads = threads;
  eo.tile = g_tile;
  const ModelBEngine eng(store, 8.0, eo);
  RetrieveOptions bo;
  bo.max_steps = 1;  // one step of eq. (16), as numpy's X^T softmax(beta X v); no energy, no top-k
  reset_peak();
  const long rss_before = proc_status_kib("VmRSS:");
  const double s = median_seconds(reps, [&] { eng.retrieve(Q.data(), B, bo); });
  const long extra_kib = proc_status_kib("VmHWM:") - rss_before;
  const double bytes = double(K) * store.row_bytes();
  std::printf("{\"case\": \"%s\", \"K\": %zu, \"d\": %zu, \"batch\": %zu, \"dtype\": \"%s\", \"kernel\": \"%s\", "
              "\"threads\": %d, \"median_s\": %.6g, \"pattern_gb_per_s\": %.4g, \"extra_memory_mb\": %.1f}\n",
              name, K, d, B, to_string(dtype).c_str(), eng.kernel().c_str(), threads, s, bytes / s / 1e9,
              extra_kib / 1024.0);
}

// Krotov-Hopfield 2016 Appendix B: N = 100, K = 2000 random memories, F = x^n, random starts run to
// convergence (asynchronous, neurons in fixed order as in the numpy reference).
void model_a(std::size_t starts, double n, int reps, int threads, UpdateOrder order, const char* name) {
  const std::size_t N = 100, K = 2000;
  std::mt19937_64 rng(7);
  std::bernoulli_distribution coin(0.5);
  std::vector<float> X(K * N);
  for (auto& x : X) x = coin(rng) ? 1.0f : -1.0f;
  MemoryStore store(N, DType::Bits);
  store.append(X.data(), K);
  std::vector<std::int8_t> cues(starts * N);
  for (auto& c : cues) c = coin(rng) ? 1 : -1;
  EngineOptions eo;
  eo.threads = threads;
  const ModelAEngine eng(store, {Interaction::Power, n}, Vector(), eo);
  RetrieveOptions o;
  o.order = order;
  o.max_steps = 100;
  Retrieval r;
  const double s = median_seconds(reps, [&] { r = eng.retrieve(cues.data(), starts, o); });
  // How many starts ended on a stored memory (or its negative: |overlap| = N)?
  std::size_t on_memory = 0;
  for (std::size_t b = 0; b < starts; ++b) {
    bool hit = false;
    for (std::size_t mu = 0; mu < K && !hit; ++mu) {
      long m = 0;
      for (std::size_t i = 0; i < N; ++i) m += static_cast<long>(X[mu * N + i]) * static_cast<long>(r.states[b * N + i]);
      hit = static_cast<std::size_t>(std::labs(m)) == N;
    }
    on_memory += hit;
  }
  long max_sweeps = 0;
  for (long sw : r.steps) max_sweeps = std::max(max_sweeps, sw);
  std::printf("{\"case\": \"%s\", \"N\": %zu, \"K\": %zu, \"n\": %g, \"starts\": %zu, \"kernel\": \"%s\", "
              "\"threads\": %d, \"median_s\": %.6g, \"fraction_on_memory\": %.4f, \"max_sweeps\": %ld}\n",
              name, N, K, n, starts, eng.kernel().c_str(), threads, s, double(on_memory) / double(starts), max_sweeps);
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
    } else if (c == "a_appendix_b") {
      std::size_t starts = 10000;
      double n = 5;
      for (int i = 2; i + 1 < argc; i += 2) {
        if (!std::strcmp(argv[i], "--starts")) starts = static_cast<std::size_t>(std::atol(argv[i + 1]));
        if (!std::strcmp(argv[i], "--n")) n = std::atof(argv[i + 1]);
      }
      model_a(starts, n, reps, threads, UpdateOrder::FixedAsync, "a_appendix_b");
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
