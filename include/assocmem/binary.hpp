// assocmem/binary.hpp - model A, fast: +-1 patterns packed in bits, many cues in parallel.
//
// Same rule as ModelA (Krotov-Hopfield 2016 asynchronous or synchronous updates, eq. 8), computed
// differently. For each cue the K overlaps m_mu = xi_mu . sigma start from popcounts of the packed
// rows (N - 2 popcount(xi_mu XOR sigma)) and are then kept up to date incrementally (O(K) per flip,
// not O(K N)). With t_mu = xi_mu,i sigma_i, the field of neuron i is
//   field_i = 2 I_i + sigma_i [ sum_{t_mu = +1} A_mu - sum_{t_mu = -1} B_mu ],
//   A_mu = F(m_mu) - F(m_mu - 2),  B_mu = F(m_mu + 2) - F(m_mu),
// so a neuron visit is two masked sums over K (bits of neuron i's column as masks) and a flip
// refreshes A and B from a table of F on the integers [-N-2, N+2]. For F = exp the table is scaled
// by exp(-beta S0) for a shift S0 near max_mu m_mu + 2, rebased when the largest overlap moves by
// more than 200 / beta, which keeps every value finite (the sign is what matters).
// Cue c of a batch uses the random order of seed + c, so ModelA::retrieve(cue, options with seed + c)
// follows the same trajectory. Options and result: retrieve.hpp (threads: EngineOptions).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "assocmem/engine.hpp"
#include "assocmem/retrieve.hpp"
#include "assocmem/models.hpp"
#include "assocmem/store.hpp"

namespace assocmem {

namespace kernels {
struct Ops;  // src/kernels/kernels.hpp: internal
}  // namespace kernels

namespace detail {
class Poller;
}

/// Model A's +-1 states from floats (rows x cols): InvalidArgument naming `what`, the row and the
/// element of any value other than +1 or -1. Shared by the CLI and the Python bindings.
std::vector<std::int8_t> to_spins(const float* x, std::size_t rows, std::size_t cols, const std::string& what);

/// A bits store holding the +-1 memories of `store` (float32 or bfloat16) with the same ids; the
/// model A engine runs on bits. InvalidArgument naming the first memory that is not +-1.
MemoryStore pack_bits(const MemoryStore& store);

class ModelAEngine {
 public:
  /// store: a Bits store (K memories of N neurons). current: I (length N) or empty. The store must
  /// outlive the engine; the engine is immutable and thread-safe.
  /// options: threads and kernel (tile is not used). With options.merger the store holds part of the
  /// memories (distributed.hpp): retrieve() and energy() are then collective, and run the synchronous
  /// order only, its per-neuron fields summed over every participant once per sweep (the random and
  /// fixed orders visit one neuron at a time and would need a collective per visit).
  ModelAEngine(const MemoryStore& store, InteractionSpec F, Vector current = Vector(), EngineOptions options = {});
  std::size_t n_features() const { return N_; }
  std::size_t n_memories() const { return K_; }
  std::string kernel() const;

  /// Runs the update rule from each cue ([batch x N], entries +-1) to a fixed point or max_steps sweeps.
  Retrieval retrieve(const std::int8_t* cues, std::size_t batch, const RetrieveOptions& options = {}) const;
  /// eq. (8) for one +-1 state of length N.
  double energy(const std::int8_t* sigma) const;

 private:
  struct Cue;
  void refresh(Cue& c) const;
  /// Neuron i's masked sums of A and B over this engine's memories.
  void local_sums(const Cue& c, std::size_t i, double* sa, double* sb) const;
  /// Neuron i's field from its sums over K memories; NaN where their rounding could flip its sign.
  double certified_field(const Cue& c, std::size_t i, double sa, double sb, double K, double power_error) const;
  /// The exact fallback's counts c_r (grouped_binary_field) over this engine's memories, into hist[2N+1].
  void overlap_counts(const Cue& c, std::size_t i, std::int64_t* hist) const;
  /// One neuron's field, certified or exact (no merger).
  double field(const Cue& c, std::size_t i) const;
  /// Every unclamped neuron's field for a synchronous sweep, over all participants' memories.
  void sync_fields(const Cue& c, const std::vector<std::uint8_t>& clamp, int threads, double K, double power_error,
                   detail::Poller& poller, std::vector<double>& f) const;
  /// Bound on the rounding of the power table's sums over K memories (0: exact).
  double power_error(double K) const;

  const MemoryStore* store_;
  detail::StoreLease lease_;  ///< the store cannot change while this engine exists
  std::size_t N_, K_, col_bytes_;
  InteractionSpec spec_;
  AdditivePtr F_;
  std::vector<double> I_;
  std::vector<std::uint8_t> cols_;  ///< N columns of ceil(K/8) bytes: bit mu = (xi_mu,i == +1)
  std::vector<double> table_;       ///< F(m) - F(m - 2) for m in [-N-2, N+4] (power, rectified)
  double table_max_ = 0;            ///< power, rectified: max |table_|
  double power_error_ = 0;          ///< power_error(K) (0: exact)
  const kernels::Ops* ops_;  ///< the kernel table (src/kernels/kernels.hpp), chosen at construction
  int threads_;
  const PassMerger* merger_;
};

}  // namespace assocmem
