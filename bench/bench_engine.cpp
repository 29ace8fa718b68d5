// Google Benchmark: the engine's passes at several sizes (cost against K and threads), and the plain
// reference models for comparison. Run: build/bench/bench_engine [--benchmark_filter=...]
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "assocmem/binary.hpp"
#include "assocmem/engine.hpp"
#include "assocmem/models.hpp"

using namespace assocmem;

namespace {

MemoryStore unit_store(std::size_t K, std::size_t d, DType t) {
  std::mt19937_64 rng(1);
  std::normal_distribution<float> g;
  std::vector<float> x(K * d);
  for (std::size_t i = 0; i < K; ++i) {
    double s = 0;
    for (std::size_t j = 0; j < d; ++j) s += double(x[i * d + j] = g(rng)) * x[i * d + j];
    for (std::size_t j = 0; j < d; ++j) x[i * d + j] = static_cast<float>(x[i * d + j] / std::sqrt(s));
  }
  MemoryStore st(d, t);
  st.append(x.data(), K);
  return st;
}

// Model B, one step: args K, d, batch, threads, dtype (0 float32, 1 bfloat16).
void BM_ModelB(benchmark::State& state) {
  const auto K = static_cast<std::size_t>(state.range(0)), d = static_cast<std::size_t>(state.range(1)),
             B = static_cast<std::size_t>(state.range(2));
  const MemoryStore st = unit_store(K, d, state.range(4) ? DType::BFloat16 : DType::Float32);
  EngineOptions eo;
  eo.threads = static_cast<int>(state.range(3));
  const ModelBEngine eng(st, 8.0, eo);
  std::vector<float> q(B * d);
  for (std::size_t i = 0; i < B; ++i) st.decode_row(i % K, &q[i * d]);
  RetrieveOptions bo;  // one step of eq. (16), no energy or top-k
  for (auto _ : state) benchmark::DoNotOptimize(eng.retrieve(q.data(), B, bo));
  state.SetLabel(eng.kernel());
  state.counters["memories/s"] = benchmark::Counter(double(K), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_ModelB)
    ->ArgNames({"K", "d", "batch", "threads", "bf16"})
    ->Args({10000, 64, 16, 0, 0})
    ->Args({100000, 64, 16, 0, 0})
    ->Args({1000000, 64, 16, 0, 0})
    ->Args({100000, 256, 256, 1, 0})
    ->Args({100000, 256, 256, 2, 0})
    ->Args({100000, 256, 256, 2, 1})
    ->Args({1000000, 64, 1, 0, 0})
    ->Args({1000000, 64, 1, 0, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// The plain model B (double precision, Eigen) on a small case, for scale.
void BM_PlainModelB(benchmark::State& state) {
  const MemoryStore st = unit_store(10000, 64, DType::Float32);
  const ModelB plain(st.to_matrix(), 8.0);
  const Matrix X = st.to_matrix();
  for (auto _ : state)
    for (int b = 0; b < 16; ++b) benchmark::DoNotOptimize(plain.update(X.row(b).transpose()));
}
BENCHMARK(BM_PlainModelB)->Unit(benchmark::kMillisecond);

// Model A, Appendix B protocol: N = 100, K = 2000, F = x^n, args starts, n.
void BM_ModelA(benchmark::State& state) {
  const std::size_t N = 100, K = 2000, S = static_cast<std::size_t>(state.range(0));
  std::mt19937_64 rng(2);
  std::bernoulli_distribution coin(0.5);
  std::vector<float> x(K * N);
  for (auto& v : x) v = coin(rng) ? 1.0f : -1.0f;
  MemoryStore st(N, DType::Bits);
  st.append(x.data(), K);
  std::vector<std::int8_t> cues(S * N);
  for (auto& c : cues) c = coin(rng) ? 1 : -1;
  const ModelAEngine eng(st, {Interaction::Power, double(state.range(1))});
  RetrieveOptions o;
  o.order = UpdateOrder::FixedAsync;
  for (auto _ : state) benchmark::DoNotOptimize(eng.retrieve(cues.data(), S, o));
  state.SetLabel(eng.kernel());
}
BENCHMARK(BM_ModelA)->ArgNames({"starts", "n"})->Args({1000, 5})->Args({1000, 3})->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
