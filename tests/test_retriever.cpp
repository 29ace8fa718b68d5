// The retrieval context (assocmem/retriever.hpp): each call runs on the engine its options ask for, with
// what that engine needs opened or built once - the codes of certified retrieval (the file beside a saved
// store, else built), the candidate source of approximate retrieval (a factory, or one given) - and the
// same results as that engine made by hand.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "assocmem/codes.hpp"
#include "assocmem/retriever.hpp"
#include "test_util.hpp"

using namespace assocmem;
using assocmem::testing::randn;
using assocmem::testing::TempDir;
using assocmem::testing::to_f32;
using assocmem::testing::unit_rows;

namespace {

MemoryStore store_of(const Matrix& X) {
  MemoryStore s(static_cast<std::size_t>(X.cols()), DType::Float32);
  s.append(X);
  return s;
}

// Every memory a candidate (rows 0..k-1 of the store, -1 past its end), counting its searches.
class FirstRows final : public CandidateSource {
 public:
  explicit FirstRows(std::size_t K) : K_(K) {}
  std::size_t size() const override { return K_; }
  void search(const float*, std::size_t n, std::size_t k, std::int64_t* rows) const override {
    ++searches;
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t c = 0; c < k; ++c) rows[i * k + c] = c < K_ ? std::int64_t(c) : -1;
  }
  mutable std::atomic<int> searches{0};

 private:
  std::size_t K_;
};

void expect_same(const Retrieval& a, const Retrieval& b) {
  ASSERT_EQ(a.batch, b.batch);
  EXPECT_EQ(a.states, b.states);  // the same engine and inputs: the same bits
  EXPECT_EQ(a.steps, b.steps);
  ASSERT_EQ(a.certificates.size(), b.certificates.size());
  for (std::size_t i = 0; i < a.certificates.size(); ++i) {
    EXPECT_EQ(a.certificates[i].candidates, b.certificates[i].candidates);
    EXPECT_EQ(a.certificates[i].discarded_weight, b.certificates[i].discarded_weight);
  }
}

RetrieveOptions certified(double eps) {
  RetrieveOptions o;
  o.max_steps = 3;
  o.certify = eps;
  return o;
}

}  // namespace

// Certified model B and C: the codes beside a saved store are opened; a store without them (in memory, or
// saved without `assocmem index`) has them built once; the results are those of the engine over the same
// codes made by hand, and plain calls are the plain engine's.
TEST(Retriever, CertifiedCallsUseTheCodesBesideTheStoreOrBuildThem) {
  std::mt19937_64 rng(1);
  TempDir dir;
  const std::size_t K = 400, d = 24;
  const Matrix X = unit_rows(randn(K, d, rng));
  const std::string path = dir.file("s.amem");
  store_of(X).save(path);
  const MemoryStore saved = MemoryStore::open(path);
  const auto q = to_f32(Matrix(X.topRows(6) + randn(6, d, rng, 0.05)));
  EngineOptions eo;
  eo.threads = 2;

  // No codes file yet: built in memory.
  const Retriever built = Retriever::model_b(saved, nullptr, 20.0, eo);
  EXPECT_EQ(built.codes_source(), "");
  const Retrieval rb = built.retrieve(q.data(), 6, certified(1e-3));
  EXPECT_EQ(built.codes_source(), "built in memory");
  const CodeIndex codes = CodeIndex::build(saved, eo.threads);
  EngineOptions with = eo;
  with.codes = &codes;
  expect_same(rb, ModelBEngine(saved, 20.0, with).retrieve(q.data(), 6, certified(1e-3)));
  // A plain call: the plain engine.
  RetrieveOptions plain;
  plain.max_steps = 3;
  expect_same(built.retrieve(q.data(), 6, plain), ModelBEngine(saved, 20.0, eo).retrieve(q.data(), 6, plain));

  // The codes saved beside the store: opened (model B and model C).
  codes.save(CodeIndex::default_path(path));
  const Retriever opened = Retriever::model_b(saved, nullptr, 20.0, eo);
  opened.prepare_codes();
  EXPECT_EQ(opened.codes_source(), CodeIndex::default_path(path));
  expect_same(opened.retrieve(q.data(), 6, certified(1e-3)), rb);
  const InteractionSpec F = default_interaction(ModelKind::C);
  const Retriever c = Retriever::model_c(saved, F, 1.0, eo);
  const Retrieval rc = c.retrieve(q.data(), 6, certified(1e-3));
  EXPECT_EQ(c.codes_source(), CodeIndex::default_path(path));
  expect_same(rc, ModelCEngine(saved, F, 1.0, with).retrieve(q.data(), 6, certified(1e-3)));

  // A store built in memory has no file to look beside.
  const MemoryStore mem = store_of(X);
  const Retriever inmem = Retriever::model_b(mem, nullptr, 20.0, eo);
  inmem.prepare_codes();
  EXPECT_EQ(inmem.codes_source(), "built in memory");
  // A codes file that belongs to another store is refused when opened, naming the problem.
  CodeIndex::build(store_of(unit_rows(randn(K, d, rng)))).save(CodeIndex::default_path(path));
  const Retriever wrong = Retriever::model_b(saved, nullptr, 20.0, eo);
  EXPECT_THROW_MSG(wrong.retrieve(q.data(), 6, certified(1e-3)), IoError, "rows differ");
}

// Approximate model B: the factory makes the candidate source once, on the first approximate call, even
// with several threads calling at once; a source given replaces it; the results are the engine's over that
// source. Refused: a source of another size, approximate with a value store, the wrong engine's accessor.
TEST(Retriever, ApproximateCallsMakeTheCandidateSourceOnce) {
  std::mt19937_64 rng(2);
  const std::size_t K = 300, d = 16;
  const Matrix X = unit_rows(randn(K, d, rng));
  const MemoryStore s = store_of(X);
  const auto q = to_f32(Matrix(X.topRows(8) + randn(8, d, rng, 0.05)));
  Retriever r = Retriever::model_b(s, nullptr, 10.0, {});
  EXPECT_EQ(r.candidates(), nullptr);
  RetrieveOptions o;
  o.max_steps = 2;
  o.approximate = 64;
  EXPECT_THROW_MSG(r.retrieve(q.data(), 8, o), InvalidArgument, "no candidate source");
  std::atomic<int> made{0};
  r.set_candidate_factory([&](const MemoryStore& keys) -> std::shared_ptr<const CandidateSource> {
    ++made;
    return std::make_shared<FirstRows>(keys.size());
  });
  std::vector<Retrieval> got(4);
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < got.size(); ++t) threads.emplace_back([&, t] { got[t] = r.retrieve(q.data(), 8, o); });
  for (auto& t : threads) t.join();
  EXPECT_EQ(made.load(), 1);
  const auto source = std::dynamic_pointer_cast<const FirstRows>(r.candidates());
  ASSERT_NE(source, nullptr);
  EXPECT_GT(source->searches.load(), 0);
  EngineOptions eo;
  eo.candidates = source.get();
  const Retrieval by_hand = ModelBEngine(s, 10.0, eo).retrieve(q.data(), 8, o);
  for (const Retrieval& g : got) expect_same(g, by_hand);

  auto given = std::make_shared<FirstRows>(K);
  r.set_candidates(given);
  EXPECT_EQ(r.candidates(), given);
  r.retrieve(q.data(), 8, o);
  EXPECT_GT(given->searches.load(), 0);
  EXPECT_EQ(made.load(), 1);
  EXPECT_THROW_MSG(r.set_candidates(std::make_shared<FirstRows>(K - 1)), InvalidArgument, "indexes 299 memories");
  EXPECT_THROW_MSG(r.set_candidates(nullptr), InvalidArgument, "null");

  const MemoryStore values = store_of(randn(K, 5, rng));
  Retriever kv = Retriever::model_b(s, &values, 10.0, {});
  EXPECT_EQ(kv.value_dim(), 5u);
  EXPECT_THROW_MSG(kv.set_candidates(given), InvalidArgument, "value store");
  EXPECT_THROW(kv.retrieve(q.data(), 8, o), InvalidArgument);  // the plain engine refuses, naming it
  EXPECT_THROW_MSG(kv.engine_c(), InvalidArgument, "model B");
  const Retriever c = Retriever::model_c(s, default_interaction(ModelKind::C), 1.0, {});
  EXPECT_THROW_MSG(c.engine_b(), InvalidArgument, "model C");
}

// Model A: a float32 store of +-1 memories is packed once and runs the engine over pack_bits(store), bit for
// bit, from +-1 cues and from floats; a bits store is used as it is; a memory that is not +-1 is refused,
// named, at construction; cues that are not +-1 are named "queries"; certified and approximate retrieval
// and the other models' engines are refused.
TEST(Retriever, ModelAPacksAFloatStoreOnce) {
  std::mt19937_64 rng(3);
  const std::size_t K = 40, N = 70;
  Matrix X(K, N);
  for (Eigen::Index i = 0; i < X.size(); ++i) X.data()[i] = (rng() & 1) ? 1.0 : -1.0;
  const MemoryStore floats = store_of(X);
  const MemoryStore bits = pack_bits(floats);
  const InteractionSpec F = default_interaction(ModelKind::A);
  const Retriever r = Retriever::model_a(floats, F);
  EXPECT_EQ(r.model(), ModelKind::A);
  EXPECT_EQ(r.dim(), N);
  EXPECT_EQ(r.value_dim(), N);
  EXPECT_EQ(r.size(), K);
  std::vector<float> q(3 * N);
  for (std::size_t i = 0; i < q.size(); ++i) q[i] = float(X(Eigen::Index(i / N), Eigen::Index(i % N)));
  for (std::size_t i = 0; i < 3; ++i) q[i * N + i] = -q[i * N + i];  // one flipped neuron per cue
  const std::vector<std::int8_t> spins = to_spins(q.data(), 3, N, "q");
  RetrieveOptions o;
  o.seed = 11;
  const ModelAEngine direct(bits, F);
  const Retrieval want = direct.retrieve(spins.data(), 3, o);
  expect_same(r.retrieve(spins.data(), 3, o), want);
  expect_same(r.retrieve(q.data(), 3, o), want);
  expect_same(Retriever::model_a(bits, F).retrieve(spins.data(), 3, o), want);
  EXPECT_EQ(r.engine_a().n_memories(), K);

  q[5] = 0.5f;
  EXPECT_THROW_MSG(r.retrieve(q.data(), 3, o), InvalidArgument, "queries: row 0 element 5 is 0.5");
  Matrix bad = X;
  bad(7, 3) = 0.25;
  EXPECT_THROW_MSG(Retriever::model_a(store_of(bad), F), InvalidArgument, "memory 7 (id 7) element 3 is 0.25");
  o.certify = 0.01;
  EXPECT_THROW_MSG(r.retrieve(spins.data(), 3, o), InvalidArgument, "certify: certified retrieval is for models B and C (this is model A)");
  EXPECT_THROW_MSG(r.prepare_codes(), InvalidArgument, "models B and C");
  EXPECT_THROW_MSG(r.engine_b(), InvalidArgument, "model A");
  const Retriever b = Retriever::model_b(floats, nullptr, 1.0, {});
  EXPECT_THROW_MSG(b.retrieve(spins.data(), 3, RetrieveOptions{}), InvalidArgument, "model A's");
  EXPECT_THROW_MSG(b.engine_a(), InvalidArgument, "model B");
}
