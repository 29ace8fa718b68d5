// assocmem/retriever.hpp - the retrieval context over one store: the engine of models B and C and, built
// on demand, what certified and approximate retrieval need.
//
// A program that retrieves from a store needs more than an engine: model A runs on the memories packed
// into bits (a float store is packed once, every rank of an MPI job agreeing on a failure first); certified retrieval
// (RetrieveOptions::certify) runs over the store's int8 codes (codes.hpp), which live in a file beside a
// saved store (`assocmem index`, CodeIndex::default_path) or are built; approximate retrieval
// (RetrieveOptions::approximate) needs a candidate source (the ANN component's AnnIndex, FAISS). A
// Retriever owns that policy once, for the command and the Python module alike: it makes the model's
// engine at construction, opens or builds the codes on the first certified call (or prepare_codes()),
// makes the candidate source on the first approximate call from a factory (or takes one given), and
// runs each call on the engine its options ask for. Thread-safe: many threads may call retrieve() at
// once; what is built on demand is built once, under a lock.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include "assocmem/binary.hpp"
#include "assocmem/engine.hpp"
#include "assocmem/models.hpp"
#include "assocmem/retrieve.hpp"
#include "assocmem/store.hpp"

namespace assocmem {

class Retriever {
 public:
  /// Makes the candidate source of approximate retrieval over the keys (e.g. AnnIndex::build with the
  /// default options, assocmem/ann.hpp). Called at most once per source, under the retriever's lock.
  using CandidateFactory = std::function<std::shared_ptr<const CandidateSource>(const MemoryStore& keys)>;

  /// Model B (eqs. 15, 16) over keys, hetero-associative with values when given. The stores must outlive
  /// the retriever (it keeps references, as the engines do).
  static Retriever model_b(const MemoryStore& keys, const MemoryStore* values, double beta, EngineOptions options = {});
  /// Model C (eq. 22) over a store.
  static Retriever model_c(const MemoryStore& store, const InteractionSpec& F, double alpha,
                           EngineOptions options = {});
  /// Model A (eq. 8; ModelAEngine, binary.hpp) over +-1 memories: a Bits store as it is, a float32 or
  /// bfloat16 store packed into bits here, once (InvalidArgument naming the first memory that is not +-1).
  /// With options.merger (the memories sharded over the ranks of an MPI job) the ranks agree on a packing
  /// failure before the engine is made, so that every rank throws it. current: I (length N) or empty.
  static Retriever model_a(const MemoryStore& store, const InteractionSpec& F, Vector current = Vector(),
                           EngineOptions options = {});
  ~Retriever();
  Retriever(Retriever&&) noexcept;
  Retriever& operator=(Retriever&&) noexcept;

  /// Retrieves from the queries [batch x dim] on the engine the options ask for: with `certify`, the
  /// engine over the store's codes (opened or built on first use); with `approximate` (model B), the
  /// engine over the candidate source (made on first use). Model B with a value store, or with both
  /// certify and approximate, runs the plain engine, which refuses what it does not support, naming it.
  Retrieval retrieve(const float* queries, std::size_t batch, const RetrieveOptions& options) const;
  /// Model A from +-1 cues [batch x N] (to_spins makes them from floats, naming the caller's argument);
  /// retrieve(const float*) converts them itself, naming them "queries".
  Retrieval retrieve(const std::int8_t* cues, std::size_t batch, const RetrieveOptions& options) const;

  /// Opens the codes beside the store (CodeIndex::default_path(store.source()), when the store came from
  /// a file and that file exists) or builds them in memory; a no-op once done. Certified calls do this
  /// themselves; a caller may do it first (e.g. to time it apart from the retrieval).
  void prepare_codes() const;
  /// Where the codes came from: the file's path, "built in memory", or "" (not used yet).
  std::string codes_source() const;

  /// The factory of approximate retrieval's candidate source (replaces the current source on next use).
  void set_candidate_factory(CandidateFactory factory);
  /// Uses this candidate source for approximate retrieval from now on (model B without values; calls
  /// already running keep the one they started with). InvalidArgument for null or a source of another size.
  void set_candidates(std::shared_ptr<const CandidateSource> source);
  /// The candidate source in use (null before the first approximate call or set_candidates()).
  std::shared_ptr<const CandidateSource> candidates() const;

  ModelKind model() const;
  /// The plain engines: model_a(), model_b() and model_c() make one of them; the others throw InvalidArgument.
  const ModelAEngine& engine_a() const;
  const ModelBEngine& engine_b() const;
  const ModelCEngine& engine_c() const;
  std::string kernel() const;
  std::size_t dim() const;        ///< the dimension of queries
  std::size_t value_dim() const;  ///< the dimension of results (dim() without a value store)
  std::size_t size() const;       ///< K

 private:
  struct Impl;
  explicit Retriever(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace assocmem
