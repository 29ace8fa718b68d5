// Models A, B and C over the ranks of an MPI job (distributed.hpp), run by CTest under mpirun with 1, 2
// and 4 ranks: every rank's result equals the single-process engine over the unsharded store (states,
// energies and top-k weights within twice the float32 forward error bound of the exact computation,
// error_bounds.hpp, which holds on any CPU and any number of threads or ranks; steps, stop reasons,
// identical top-k ids), for float32 and bfloat16 and for 4 and 7 shards; model A's states equal the plain ModelA's exactly; a corrupted shard, too many ranks and bad queries throw on every rank, naming the
// rank and shard, and nothing hangs.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "assocmem/binary.hpp"
#include "assocmem/distributed.hpp"
#include "assocmem/engine.hpp"
#include "assocmem/models.hpp"
#include "assocmem/shards.hpp"
#include "engine_kernels.hpp"
#include "error_bounds.hpp"
#include "test_util.hpp"

using namespace assocmem;
using assocmem::testing::flip_bits;
using assocmem::testing::kUnitRoundoffBf16;
using assocmem::testing::model_b_step_bound;
using assocmem::testing::model_c_step_bound;
using assocmem::testing::PassShape;
using assocmem::testing::StepBound;
using assocmem::testing::rand_pm1;
using assocmem::testing::randn;
using assocmem::testing::read_all;
using assocmem::testing::write_all;

namespace {

int rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int ranks() {
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

// A folder shared by every rank (made by rank 0), removed at the end.
class SharedDir {
 public:
  SharedDir() {
    std::string path;
    if (rank() == 0) {
      std::string t = (std::filesystem::temp_directory_path() / "assocmem_mpi_XXXXXX").string();
      path = mkdtemp(t.data());
    }
    int len = static_cast<int>(path.size());
    MPI_Bcast(&len, 1, MPI_INT, 0, MPI_COMM_WORLD);
    path.resize(static_cast<std::size_t>(len));
    MPI_Bcast(path.data(), len, MPI_CHAR, 0, MPI_COMM_WORLD);
    path_ = path;
  }
  ~SharedDir() {
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank() == 0) std::filesystem::remove_all(path_);
  }
  std::string file(const std::string& name) const { return (std::filesystem::path(path_) / name).string(); }

 private:
  std::string path_;
};

// make_store's ids: row i has id 5000 + 3 (K - i).
std::size_t store_row(std::uint64_t id, std::size_t K) { return K - std::size_t((id - 5000) / 3); }

// The same store on every rank (same seed); rank 0 writes its shards.
MemoryStore make_store(DType t, std::size_t K, std::size_t d, unsigned seed) {
  std::mt19937_64 rng(seed);
  Matrix X = randn(Eigen::Index(K), Eigen::Index(d), rng);
  for (Eigen::Index i = 0; i < X.rows(); ++i) X.row(i).normalize();
  std::vector<std::uint64_t> ids(K);
  for (std::size_t i = 0; i < K; ++i) ids[i] = 5000 + 3 * (K - i);
  MemoryStore s(d, t);
  s.append(X, ids);
  return s;
}

std::string shard(const MemoryStore& s, const SharedDir& dir, const std::string& name, std::size_t parts) {
  if (rank() == 0) write_shards(s, dir.file(name), parts);
  MPI_Barrier(MPI_COMM_WORLD);
  return dir.file(name + "/manifest.json");
}

std::vector<float> noisy_queries(const MemoryStore& s, std::size_t n, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> noise(0.0f, 0.15f);
  std::vector<float> q(n * s.dim());
  for (std::size_t b = 0; b < n; ++b) {
    s.decode_row((b * 37) % s.size(), &q[b * s.dim()]);
    for (std::size_t j = 0; j < s.dim(); ++j) q[b * s.dim() + j] += noise(rng);
  }
  return q;
}

// Two float32 computations of one model step (sharded and not) from the same input each lie within the
// forward error bound of the exact step (error_bounds.hpp), so they differ by at most twice the bound:
// the states, the energies and the top-k weights (at the output, whose own error bound `at` carries).
using StepFn = std::function<StepBound(const Vector& v, double E_in)>;

void expect_within_bounds(const Retrieval& dist, const Retrieval& one, const std::vector<float>& input, const StepFn& step,
                          const std::function<std::size_t(std::uint64_t)>& row_of_id) {
  ASSERT_EQ(dist.batch, one.batch);
  ASSERT_EQ(dist.states.size(), one.states.size());
  const std::size_t d = one.dim;
  for (std::size_t b = 0; b < one.batch; ++b) {
    Vector v = Vector::Zero(Eigen::Index(d));
    for (std::size_t j = 0; j < d; ++j) v[Eigen::Index(j)] = input[b * d + j];
    const StepBound first = step(v, 0.0);                          // the step from the (shared) input
    const StepBound at = step(first.next, first.err.maxCoeff());  // energy and weights at the output
    EXPECT_EQ(dist.steps[b], one.steps[b]) << "query " << b;
    EXPECT_EQ(dist.stop[b], one.stop[b]) << "query " << b;
    for (std::size_t j = 0; j < d; ++j) {
      ASSERT_NEAR(dist.states[b * d + j], one.states[b * d + j], 2 * first.err[Eigen::Index(j)])
          << "query " << b << " state " << j;
    }
    if (!one.energy.empty()) {
      EXPECT_NEAR(dist.energy[b], one.energy[b], 2 * at.energy_err) << "query " << b;
    }
    if (one.top.empty()) continue;
    ASSERT_EQ(dist.top[b].size(), one.top[b].size());
    for (std::size_t i = 0; i < one.top[b].size(); ++i) {
      EXPECT_EQ(dist.top[b][i].id, one.top[b][i].id) << "query " << b << " rank " << i;
      const Eigen::Index mu = Eigen::Index(row_of_id(one.top[b][i].id));
      EXPECT_NEAR(dist.top[b][i].weight, one.top[b][i].weight, 2 * at.weight_err[mu]) << "query " << b << " rank " << i;
    }
  }
}

// A retrieval compared step by step: each step of the sharded computation from the single process's
// state (then both take their step from the same input), and then the whole run in one call, which
// must take as many steps and stop for the same reason (tol = 0: every run takes max_steps unless its
// state is an exact fixed point in float32, which these cues do not reach) with final states within
// the bound propagated along the exact trajectory, where that bound is finite.
template <class Run>
void compare_runs(const Run& dist, const Run& one, std::vector<float> q, std::size_t n, std::size_t d, long steps,
                  RetrieveOptions o, const StepFn& step, const std::function<std::size_t(std::uint64_t)>& row_of) {
  o.tol = 0.0;
  RetrieveOptions o1 = o;
  o1.max_steps = 1;
  const std::vector<float> q0 = q;
  for (long t = 0; t < steps; ++t) {
    SCOPED_TRACE("step " + std::to_string(t + 1));
    const Retrieval a = dist(q.data(), o1), b = one(q.data(), o1);
    expect_within_bounds(a, b, q, step, row_of);
    for (std::size_t i = 0; i < q.size(); ++i) q[i] = static_cast<float>(b.states[i]);
  }
  o.max_steps = steps;
  const Retrieval a = dist(q0.data(), o), b = one(q0.data(), o);
  for (std::size_t i = 0; i < n; ++i) {
    EXPECT_EQ(a.steps[i], steps) << "query " << i;
    EXPECT_EQ(b.steps[i], steps) << "query " << i;
    Vector v = Vector::Zero(Eigen::Index(d));
    for (std::size_t j = 0; j < d; ++j) v[Eigen::Index(j)] = q0[i * d + j];
    double E = 0;
    Vector err = Vector::Zero(Eigen::Index(d));
    for (long t = 0; t < steps; ++t) {
      const StepBound sb = step(v, E);
      v = sb.next;
      err = sb.err;
      E = err.maxCoeff();
    }
    if (!std::isfinite(E)) continue;  // the worst case grew past every scale: nothing to assert
    for (std::size_t j = 0; j < d; ++j)
      EXPECT_NEAR(a.states[i * d + j], b.states[i * d + j], 2 * err[Eigen::Index(j)]) << "query " << i << " state " << j;
  }
}

// With bfloat16 products the engine rounds queries and softmax weights to bfloat16 (PassShape::u_operands).
bool bf16_products(const ModelBEngine& e) { return e.kernel() == "avx512_bf16" || e.kernel() == "amx_bf16"; }

TEST(Distributed, ModelBEqualsTheSingleProcessEngine) {
  SharedDir dir;
  struct Case {
    DType t;
    KernelChoice kernel;
  };
  std::vector<Case> cases = {{DType::Float32, KernelChoice::Auto}, {DType::BFloat16, KernelChoice::Generic},
                             {DType::BFloat16, KernelChoice::Auto}};
  for (KernelChoice k : assocmem::testing::available_kernels(DType::Float32, {KernelChoice::Avx512}))
    if (k == KernelChoice::Avx512) cases.push_back({DType::BFloat16, k});
  const std::size_t K = 3001, d = 24, n = 9;
  const double beta = 12.0;
  const auto row_of = [K](std::uint64_t id) { return store_row(id, K); };
  for (const Case& c : cases)
    for (std::size_t parts : {4u, 7u}) {
      const DType t = c.t;
      SCOPED_TRACE(to_string(t) + " (kernel choice " + std::to_string(int(c.kernel)) + "), " +
                   std::to_string(parts) + " shards, " + std::to_string(ranks()) + " ranks");
      const MemoryStore whole = make_store(t, K, d, 3);
      const std::string man =
          shard(whole, dir, "b-" + to_string(t) + std::to_string(int(c.kernel)) + std::to_string(parts), parts);
      const DistributedStore ds(MPI_COMM_WORLD, man);
      RetrieveOptions o;
      o.top_k = 5;
      o.energy = true;
      EngineOptions eo;
      eo.kernel = c.kernel;
      const ModelBEngine engine(whole, beta, eo);
      const PassShape shape{K, d, eo.tile, bf16_products(engine) ? kUnitRoundoffBf16 : 0.0};
      const Matrix X = whole.to_matrix();
      compare_runs(
          std::function<Retrieval(const float*, const RetrieveOptions&)>(
              [&](const float* x, const RetrieveOptions& opt) { return distributed_retrieve_b(ds, beta, x, n, opt, eo); }),
          std::function<Retrieval(const float*, const RetrieveOptions&)>(
              [&](const float* x, const RetrieveOptions& opt) { return engine.retrieve(x, n, opt); }),
          noisy_queries(whole, n, 4), n, d, 4, o,
          [&](const Vector& v, double E) { return model_b_step_bound(X, v, E, beta, shape); }, row_of);
    }
}

TEST(Distributed, ModelCEqualsTheSingleProcessEngine) {
  SharedDir dir;
  const std::size_t K = 1500, d = 16, n = 6;
  const MemoryStore whole = make_store(DType::Float32, K, d, 5);
  const std::string man = shard(whole, dir, "c", 4);
  const DistributedStore ds(MPI_COMM_WORLD, man);
  RetrieveOptions o;
  o.energy = true;
  const double step = resolve(o, ModelKind::C).step;
  const InteractionSpec F{Interaction::RectifiedPower, 3};  // F = max(x, 0)^3: F' = 3 x+^2, F'' = 6 x+
  const auto Fv = [](double x) { return x > 0 ? x * x * x : 0.0; };
  const auto Fp = [](double x) { return x > 0 ? 3 * x * x : 0.0; };
  const auto Fpp_max = [](double x, double r) { return std::max(0.0, 6 * (x + r)); };
  const Matrix X = whole.to_matrix();
  const PassShape shape{K, d, EngineOptions{}.tile, 0.0};
  const ModelCEngine engine(whole, F, 1.0);
  compare_runs(
      std::function<Retrieval(const float*, const RetrieveOptions&)>(
          [&](const float* x, const RetrieveOptions& opt) { return distributed_retrieve_c(ds, F, 1.0, x, n, opt); }),
      std::function<Retrieval(const float*, const RetrieveOptions&)>(
          [&](const float* x, const RetrieveOptions& opt) { return engine.retrieve(x, n, opt); }),
      noisy_queries(whole, n, 6), n, d, 20, o,
      [&](const Vector& v, double E) { return model_c_step_bound(X, v, E, 1.0, step, Fv, Fp, Fpp_max, 4, shape); },
      [K](std::uint64_t id) { return store_row(id, K); });
}

// Model A, synchronous order: the states equal the plain ModelA's (exact fields) and the single-process
// engine's, sweep by sweep, for power F (exact integer sums, and a non-integer power whose sums carry a
// rounding bound), F = exp (every rank's table scaled by the largest overlap of all ranks) and memories
// in near-identical pairs at large beta, where the fast sums cancel and the exact counts of every rank
// decide (issue 9's fallback). Shards of bits and of +-1 float32 (packed on their rank).
TEST(Distributed, ModelAEqualsThePlainModelAndTheSingleProcessEngine) {
  SharedDir dir;
  std::mt19937_64 rng(21);
  const int N = 48, K = 90;  // K > 0.14 N: the n = 2 network mixes memories, other F retrieve
  Matrix X = rand_pm1(K, N, rng);
  for (int p = 0; p < 20; ++p) {  // pairs that differ at one neuron: exact ties in the fields
    X.row(2 * p + 1) = X.row(2 * p);
    X(2 * p + 1, static_cast<Eigen::Index>(rng() % N)) *= -1;
  }
  std::vector<std::uint64_t> ids(K);
  for (int i = 0; i < K; ++i) ids[static_cast<std::size_t>(i)] = 900 + 7 * static_cast<std::uint64_t>(i);
  const std::size_t B = 6;
  std::vector<std::int8_t> cues(B * N);
  Matrix cue_rows(Eigen::Index(B), N);
  for (std::size_t b = 0; b < B; ++b) {
    const Vector c = flip_bits(X.row(static_cast<Eigen::Index>(2 * b)).transpose(), 3 + static_cast<int>(b) * 3, rng);
    cue_rows.row(Eigen::Index(b)) = c.transpose();
    for (int i = 0; i < N; ++i) cues[b * N + static_cast<std::size_t>(i)] = static_cast<std::int8_t>(c[i]);
  }
  const std::vector<InteractionSpec> Fs = {{Interaction::Power, 2},          {Interaction::Power, 3},
                                           {Interaction::RectifiedPower, 3.5}, {Interaction::Exp, 2, 0.3},
                                           {Interaction::Exp, 2, 50.0},      {Interaction::Exp, 2, 400.0}};
  for (DType t : {DType::Bits, DType::Float32}) {
    MemoryStore whole(N, t);
    whole.append(X, ids);
    MemoryStore packed = t == DType::Bits ? MemoryStore(N, t) : pack_bits(whole);
    const MemoryStore& bits = t == DType::Bits ? whole : packed;
    for (std::size_t parts : {4u, 7u}) {
      const std::string man = shard(whole, dir, "a-" + to_string(t) + std::to_string(parts), parts);
      const DistributedStore ds(MPI_COMM_WORLD, man);
      for (const InteractionSpec& F : Fs) {
        SCOPED_TRACE(to_string(t) + ", " + std::to_string(parts) + " shards, F kind " + std::to_string(int(F.kind)) +
                     " n " + std::to_string(F.n) + " beta " + std::to_string(F.beta));
        RetrieveOptions o;
        o.order = UpdateOrder::Synchronous;
        o.max_steps = 30;
        o.energy = true;
        const Retrieval dist = distributed_retrieve_a(ds, F, cues.data(), B, o);
        const Retrieval one = ModelAEngine(bits, F).retrieve(cues.data(), B, o);
        ASSERT_EQ(dist.states, one.states);
        EXPECT_EQ(dist.steps, one.steps);
        EXPECT_EQ(dist.stop, one.stop);
        for (std::size_t b = 0; b < B; ++b) {
          if (std::isinf(one.energy[b])) EXPECT_EQ(dist.energy[b], one.energy[b]);  // exp(beta N) overflows
          else EXPECT_NEAR(dist.energy[b], one.energy[b], 1e-9 * std::max(1.0, std::abs(one.energy[b])));
          // The plain model (Eigen, exact grouped fields), sweep for sweep.
          const ModelA plain(X, F);
          RetrieveOptions po = o;
          po.energy = false;
          const Retrieval p = plain.retrieve(cue_rows.row(Eigen::Index(b)).transpose(), po);
          for (int i = 0; i < N; ++i)
            ASSERT_EQ(dist.states[b * N + static_cast<std::size_t>(i)], p.state()[i]) << "cue " << b << " neuron " << i;
          EXPECT_EQ(dist.steps[b], p.steps[0]) << "cue " << b;
        }
      }
      // Orders that visit one neuron at a time are refused on every rank.
      RetrieveOptions o;
      o.order = UpdateOrder::RandomAsync;
      EXPECT_THROW_MSG(distributed_retrieve_a(ds, {Interaction::Power, 3}, cues.data(), B, o), InvalidArgument,
                       "synchronous order only");
    }
  }
  // A shard of floats that are not +-1 fails on its rank, named.
  MemoryStore floats(8, DType::Float32);
  floats.append(randn(40, 8, rng));
  const DistributedStore ds(MPI_COMM_WORLD, shard(floats, dir, "a-floats", 4));
  const std::vector<std::int8_t> one_cue(8, 1);
  EXPECT_THROW_MSG(distributed_retrieve_a(ds, {Interaction::Power, 3}, one_cue.data(), 1), InvalidArgument,
                   "model A needs +1/-1 memories");
}

TEST(Distributed, FailuresThrowOnEveryRankNamingTheRankAndShard) {
  SharedDir dir;
  const MemoryStore whole = make_store(DType::Float32, 400, 8, 7);
  const std::string man = shard(whole, dir, "f", 4);
  // Bad queries: refused on every rank (no rank left waiting in a collective).
  {
    const DistributedStore ds(MPI_COMM_WORLD, man);
    std::vector<float> q = noisy_queries(whole, 2, 8);
    q[3] = std::nanf("");
    EXPECT_THROW_MSG(distributed_retrieve_b(ds, 4.0, q.data(), 2), InvalidArgument,
                     ranks() > 1 ? "every rank: queries: row 0 element 3 is NaN" : "rank 0 (shards 0, 1, 2, 3): queries");
    RetrieveOptions o;
    o.monitor = [](const Progress&) { return true; };
    EXPECT_THROW_MSG(distributed_retrieve_b(ds, 4.0, q.data(), 1, o), InvalidArgument, "monitor");
  }
  // A corrupted shard: the rank that owns it fails to open it, and every rank says so.
  const std::string victim = dir.file("f/shard-00002.amem");
  std::vector<char> original;
  if (rank() == 0) {
    original = read_all(victim);
    auto bad = original;
    bad[4096 + 5] ^= 0x20;
    write_all(victim, bad);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  const std::string owner = "rank " + std::to_string(2 % ranks()) + " (shard";
  EXPECT_THROW_MSG(DistributedStore(MPI_COMM_WORLD, man), IoError, owner);
  EXPECT_THROW_MSG(DistributedStore(MPI_COMM_WORLD, man), IoError, "payload checksum mismatch");
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank() == 0) write_all(victim, original);
  MPI_Barrier(MPI_COMM_WORLD);
  // More ranks than shards.
  if (ranks() > 1) {
    const std::string one = shard(whole, dir, "one", 1);
    EXPECT_THROW_MSG(DistributedStore(MPI_COMM_WORLD, one), InvalidArgument, "every rank: the job has");
  }
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  if (rank() != 0) {  // one report: rank 0's; every rank's failures still count in the exit code
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int failed = RUN_ALL_TESTS();
  if (failed && rank() != 0) std::fprintf(stderr, "test_distributed: rank %d had failures\n", rank());
  int any = 0;
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return any;
}
