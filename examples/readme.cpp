// The README's C++ examples, compiled and run as a test (ctest -R Examples.Readme). Every ```cpp block
// of the README stands here verbatim (tests/python/test_readme.py checks it), so the README cannot
// drift from code that compiles; around them, the data the README describes in words.
#include "assocmem/dynamics.hpp"
#include "assocmem/engine.hpp"
#include "assocmem/models.hpp"
using namespace assocmem;

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

namespace {

std::vector<float> unit_rows(std::size_t rows, std::size_t cols, std::mt19937_64& rng) {
  std::normal_distribution<float> n;
  std::vector<float> x(rows * cols);
  for (std::size_t i = 0; i < rows; ++i) {
    double s = 0;
    for (std::size_t j = 0; j < cols; ++j) s += double(x[i * cols + j] = n(rng)) * x[i * cols + j];
    for (std::size_t j = 0; j < cols; ++j) x[i * cols + j] = static_cast<float>(x[i * cols + j] / std::sqrt(s));
  }
  return x;
}

int failures = 0;
void check(bool ok, const char* what) {
  std::printf("%s: %s\n", ok ? "ok" : "FAILED", what);
  failures += !ok;
}

}  // namespace

int main() {
  std::mt19937_64 rng(1);
  {
    const std::size_t K = 30, N = 32;
    const std::vector<float> x = unit_rows(K, N, rng);
    Matrix xi(K, N), pm1(K, N);
    for (std::size_t i = 0; i < K * N; ++i) {
      xi(i / N, i % N) = 2.0 * x[i];  // |xi_mu| = 2: beta |xi|^2 = 32 separates random memories
      pm1(i / N, i % N) = x[i] > 0 ? 1.0 : -1.0;
    }
    const Vector cue = xi.row(3).transpose() + 0.02 * Vector::Ones(N);
    const Vector v0 = cue;
    Vector sigma0 = pm1.row(5).transpose();
    sigma0.head(3) *= -1.0;

    ModelB hopfield(xi, /*beta=*/8.0);                 // eqs. (13), (16)
    RetrieveOptions o;                                 // every retrieval takes these; unset = the model's default
    o.max_steps = 100;
    o.tol = 1e-10;
    o.energy = true;                                   // energy and top_k only when asked
    Retrieval r = hopfield.retrieve(cue, o);           // r.state(), r.steps[0], r.stop[0], r.energy[0]

    ModelA dense(pm1, {Interaction::Power, 3});        // eq. (8), Krotov-Hopfield 2016 update
    RetrieveOptions oa;
    oa.seed = 1;                                       // random asynchronous order by default
    Retrieval a = dense.retrieve(sigma0, oa);

    NetworkParams p;                                   // the general network, eq. (1)
    p.tau_h = 0.01;                                    // tau_f = 1
    Network net(xi, lagrangians::log_cosh(4.0), lagrangians::log_sum_exp(8.0), p);
    SimulateOptions so;
    so.method = Method::BDF;                           // euler, rk4, rk45 (Dormand-Prince), bdf
    so.t_end = 20;
    so.fixed_point_tol = 1e-8;
    Trajectory tr = simulate(net, v0, /*h0=*/Vector(), so);  // tr.t, tr.v, tr.h, tr.energy, tr.energy_rate

    check(r.converged(), "model B converged");
    check((r.state() - xi.row(3).transpose()).norm() < 0.2, "model B retrieved memory 3");
    check(a.converged() && a.state() == pm1.row(5).transpose(), "model A retrieved memory 5");
    check(tr.energy.back() <= tr.energy.front(), "the network's energy went down (eq. 4)");
  }
  {
    const std::size_t K = 2000, batch = 4;
    std::vector<float> patterns = unit_rows(K, 256, rng);
    for (float& x : patterns) x *= 2.0f;  // |xi_mu| = 2: beta |xi|^2 = 32 separates random memories
    const std::vector<float> queries(patterns.begin(), patterns.begin() + batch * 256);  // memories 0..3
    std::vector<std::uint8_t> mask(batch * K, 0);
    mask[1 * K + 1] = 1;  // query 1 may not use its own memory
    MemoryStore store(/*dim=*/256, DType::BFloat16);
    store.append(patterns.data(), K);                  // row-major float32, converted on the way in
    store.save("memories.amem");                       // atomic; MemoryStore::open reads it back
    ModelBEngine engine(store, /*beta=*/8.0);          // or ModelBEngine(keys, values, beta): attention
    RetrieveOptions o;
    o.max_steps = 10;
    o.tol = 1e-5;
    o.top_k = 5;                                       // ids and softmax weights (one more pass)
    o.mask = {mask.data(), std::size_t(batch)};        // optional: batch x K uint8 flags, 1 = leave out
    o.monitor = [](const Progress& p) { std::fprintf(stderr, "step %ld\r", p.step); return true; };  // false cancels
    Retrieval r = engine.retrieve(queries.data(), batch, o);   // r.states, r.stop, r.top, r.steps

    check(r.top[0][0].id == 0 && r.top[2][0].id == 2, "the engine retrieved memories 0 and 2");
    check(r.top[1][0].id != 1, "the mask left memory 1 out of query 1");
    std::remove("memories.amem");
  }
  return failures == 0 ? 0 : 1;
}
