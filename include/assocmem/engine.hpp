// assocmem/engine.hpp - the retrieval engine: fused, tiled, multi-threaded models B and C over a
// MemoryStore.
//
// Model B (eq. 16, or eq. 15 with step < 1) for a batch of queries streams over the memories in
// tiles and keeps, per query, an online softmax: the running maximum m of the scores
// beta xi_mu.v, the sum of exp(beta xi_mu.v - m) and the weighted sum of the memories. The
// batch x K score matrix is never materialised: extra memory is O(threads x batch x d).
// The partial result is a public type (AttentionPartial) whose merge is exact, so memories split
// across stores or machines give the same answer.
//
// Kernels are chosen once, at construction: for bfloat16 stores AMX-BF16 tiles or AVX-512 BF16
// (bfloat16 products with float32 accumulation; queries and softmax weights are rounded to
// bfloat16 inside the products), AVX-512 (float32), or portable code. Results agree with the plain ModelB / ModelC (tests).
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "assocmem/models.hpp"
#include "assocmem/online_softmax.hpp"
#include "assocmem/retrieve.hpp"
#include "assocmem/store.hpp"

namespace assocmem {

/// The kernel tables (src/kernels/): Generic is Highway's portable target (any CPU); Sse4, Avx2 (x86-64)
/// and Neon, Sve, Sve2 (aarch64) the same Highway source compiled for those instruction sets; Avx512,
/// Avx512Bf16 and AmxBf16 hand-written AVX-512 / AVX-512 BF16 / AMX-BF16 code. Auto: the best this CPU
/// runs, or the one named by the environment variable ASSOCMEM_KERNEL.
enum class KernelChoice : int { Auto, Generic, Avx512, Avx512Bf16, AmxBf16, Sse4, Avx2, Neon, Sve, Sve2 };
/// "auto", "generic", "sse4", "avx2", "avx512", "avx512_bf16", "amx_bf16", "neon", "sve", "sve2";
/// throws InvalidArgument otherwise.
KernelChoice parse_kernel(const std::string& name);
/// The kernels this CPU and build run, best first (the names kernel() reports and parse_kernel takes).
std::vector<std::string> available_kernels();

struct AttentionPartial;
class CodeIndex;

/// Where an engine's memories are only part of the memories of a retrieval (distributed.hpp: the shards
/// of a store on the ranks of an MPI job), the engine gives each exact pass over its own memories to a
/// PassMerger, which replaces it by the pass over all of them. Every participant calls the same
/// methods in the same order (they are collective); agree() comes first at every point where a
/// participant may fail alone, so that no participant waits for one that gave up.
class PassMerger {
 public:
  virtual ~PassMerger() = default;
  /// Collective: `failure` is this participant's exception (null if none). Throws on every participant
  /// when any failed (naming which and why); returns when none did.
  virtual void agree(std::exception_ptr failure) const = 0;
  /// Model B: the partial of this participant's memories becomes the partial of all (max, sum, acc, top).
  virtual void merge(AttentionPartial& partial) const = 0;
  /// Model C: sums over this participant's memories (drive n x d, energy n) become sums over all.
  virtual void merge_sums(std::vector<float>& drive, std::vector<double>& energy) const = 0;
  /// Model A: element-wise sums over all participants (fields and energies; exact integer counts).
  /// Every participant receives the same values.
  virtual void sum(double* values, std::size_t n) const = 0;
  virtual void sum(std::int64_t* values, std::size_t n) const = 0;
  /// Model A: the largest of the participants' values.
  virtual std::int64_t max(std::int64_t value) const = 0;
};

/// A generator of candidate memories for approximate model B retrieval (RetrieveOptions::approximate),
/// e.g. an ANN index (assocmem/ann.hpp: FAISS IVF or HNSW): for each of n queries (rows of q, the store's
/// dimension) the rows (store indices) of up to k memories likely to score highest, -1 where it has
/// fewer. Called concurrently: search must be thread-safe.
class CandidateSource {
 public:
  virtual ~CandidateSource() = default;
  /// The number of memories indexed (an engine refuses a source of another size).
  virtual std::size_t size() const = 0;
  virtual void search(const float* q, std::size_t n, std::size_t k, std::int64_t* rows) const = 0;
};

struct EngineOptions {
  int threads = 0;                          ///< worker threads; 0 = the CPUs this process may run on (affinity)
  KernelChoice kernel = KernelChoice::Auto; ///< Auto: the best this CPU runs (bf16 products only for
                                            ///< bfloat16 stores). Asking for one the CPU lacks throws.
  std::size_t tile = 256;                   ///< memories per tile, a multiple of 32 in [32, 65536]
  /// Null: the engine's store holds all the memories. Else every pass of retrieve() and energy() is
  /// merged by it (a monitor is then refused: cancelling one participant alone would desert the others).
  const PassMerger* merger = nullptr;
  /// The int8 codes of the engine's store (codes.hpp) for certified model B retrieval
  /// (RetrieveOptions::certify); null: none. Checked against the store when the engine is made.
  const CodeIndex* codes = nullptr;
  /// Candidates for approximate model B retrieval (RetrieveOptions::approximate); null: none.
  const CandidateSource* candidates = nullptr;
  void validate() const;
};

/// (beta * score, id) of one memory.
struct ScoredId {
  float score;
  std::uint64_t id;
};

/// Online-softmax state of attention for a batch of queries over some of the memories (OnlineSoftmax:
/// max, sum and acc [batch x dim] of beta xi_mu.v and the rows xi_mu), with each query's best memories.
struct AttentionPartial : OnlineSoftmax<float> {
  std::size_t top_k = 0;
  std::vector<std::vector<ScoredId>> top;  ///< [batch] the top_k best (beta * score, id), best first

  AttentionPartial() = default;
  AttentionPartial(std::size_t batch, std::size_t dim, std::size_t top_k);

  /// Combines with the partial of other memories (same batch, dim, top_k): exact up to rounding.
  void merge(const AttentionPartial& other);
  /// log sum_mu exp(beta xi_mu.v) for query b (-inf when no memory was seen).
  double log_sum_exp(std::size_t b) const;
  /// The attention output sum_mu softmax(beta xi v)_mu xi_mu (eq. 16) for query b, into out[dim].
  void state(std::size_t b, float* out) const;
  /// The top_k memories of query b with their softmax weights, best first.
  std::vector<std::pair<std::uint64_t, double>> top_weights(std::size_t b) const;
  /// Throws InvalidArgument naming the query's row (rows[b], or b without rows) and beta where a query's
  /// softmax is not finite (no memory seen, or an overflow).
  void check_finite(const std::vector<std::size_t>* rows, double beta) const;
};

namespace detail {
struct EngineCore;
}

/// Model B over a store. Keeps a reference: the store must outlive the engine. Thread-safe: many
/// threads may call retrieve() on one engine (or on several engines over one store) at once.
///
/// With a separate value store (hetero-association, as attention's keys and values), the scores are
/// beta xi_mu . v over the keys and an association returns sum_mu softmax_mu y_mu over the values:
/// max_steps - 1 updates of eq. (15) iterate the query on the keys (as hopfield-layers does with
/// update_steps_max), then one association with the values gives the result (dimension of the values).
/// Energy and top-k then describe that last association.
class ModelBEngine {
 public:
  ModelBEngine(const MemoryStore& store, double beta, EngineOptions options = {});
  /// keys and values: the same number of memories (row mu of each belongs together) and dtype.
  ModelBEngine(const MemoryStore& keys, const MemoryStore& values, double beta, EngineOptions options = {});
  ~ModelBEngine();
  ModelBEngine(ModelBEngine&&) noexcept;
  ModelBEngine& operator=(ModelBEngine&&) noexcept;

  /// The kernel table in use: one of available_kernels().
  std::string kernel() const;
  double beta() const { return beta_; }
  std::size_t dim() const;        ///< d, the dimension of queries and keys
  std::size_t value_dim() const;  ///< the dimension of the results (d without a value store)
  std::size_t size() const;       ///< K

  /// One pass over the memories for queries [batch x dim] (row-major): the mergeable partial of the
  /// association (over the values, if any). beta: this call's inverse temperature (unset: the engine's;
  /// a given value must be finite and > 0, as everywhere: 0 is refused, not read as "the engine's").
  /// monitor (as RetrieveOptions::monitor): polled between tiles; returning false cancels (Cancelled).
  AttentionPartial partial(const float* queries, std::size_t batch, std::size_t top_k = 0, MemoryMask mask = {},
                           std::optional<double> beta = std::nullopt, const Monitor& monitor = {}) const;
  /// Iterates eq. (15)/(16) from the queries [batch x dim]; results [batch x value_dim].
  Retrieval retrieve(const float* queries, std::size_t batch, const RetrieveOptions& options = {}) const;
  /// eq. (13) for each of `batch` states (over the memories the mask leaves); monitor as in partial().
  std::vector<double> energy(const float* states, std::size_t batch, MemoryMask mask = {},
                             std::optional<double> beta = std::nullopt, const Monitor& monitor = {}) const;

 private:
  std::unique_ptr<detail::EngineCore> core_;
  double beta_;
};

/// Model C over a store (eq. 22 by Euler steps, energy eq. 21), batched like model B.
class ModelCEngine {
 public:
  ModelCEngine(const MemoryStore& store, InteractionSpec F, double alpha = 1.0, EngineOptions options = {});
  ~ModelCEngine();
  ModelCEngine(ModelCEngine&&) noexcept;
  ModelCEngine& operator=(ModelCEngine&&) noexcept;
  std::string kernel() const;
  std::size_t dim() const;
  std::size_t size() const;
  /// Iterates eq. (22) from the queries (each non-zero).
  Retrieval retrieve(const float* queries, std::size_t batch, const RetrieveOptions& options = {}) const;
  /// eq. (21) for each of `batch` non-zero states (over the memories the mask leaves); monitor as in
  /// ModelBEngine::partial().
  std::vector<double> energy(const float* states, std::size_t batch, MemoryMask mask = {},
                             const Monitor& monitor = {}) const;

 private:
  std::unique_ptr<detail::EngineCore> core_;
  InteractionSpec spec_;
  AdditivePtr F_;
  double alpha_;
};

}  // namespace assocmem
