// assocmem/ann.hpp - approximate candidates from FAISS (issue 14, item 3): an IVF or HNSW index over a
// store's memories as the CandidateSource of approximate model B retrieval (RetrieveOptions::approximate),
// whose candidates the engine then rescores exactly. An ANN index gives no bound on what it misses: the
// recall of the top weights against the exact scan is measured (bench/compare, docs/performance.md),
// not certified; certified retrieval (codes.hpp) is the bounded alternative.
//
// Part of the assocmem_ann library, built where FAISS is found (Debian: libfaiss-dev); inner-product
// metric. Kinds:
//   "ivf"   IndexIVFScalarQuantizer: k-means into `lists` cells (default about 4 sqrt K), each memory kept as
//           8-bit scalar codes (a quarter of a float32 store); a search visits `probes` cells.
//   "hnsw"  IndexHNSWFlat: a graph of `links` neighbours per memory over a float32 copy of the store;
//           a search keeps `ef_search` candidates. Slow to build on few cores (Debian's FAISS: 100,000
//           memories of d = 64 took about 25 s on 2 cores).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "assocmem/engine.hpp"
#include "assocmem/store.hpp"

namespace assocmem {

struct AnnOptions {
  std::string kind = "ivf";    ///< "ivf" or "hnsw"
  std::size_t lists = 0;       ///< ivf: k-means cells; 0 = min(4 sqrt(K), K / 39), at least 1
  std::size_t probes = 16;     ///< ivf: cells visited per search (at most lists)
  std::size_t links = 32;      ///< hnsw: neighbours per memory (M)
  std::size_t ef_search = 64;  ///< hnsw: candidates kept during a search (raised to k when smaller)
  std::uint64_t seed = 0;      ///< ivf: the k-means seed
  void validate() const;       ///< InvalidArgument naming the option
};

class AnnIndex final : public CandidateSource {
 public:
  /// Indexes every memory of `store` (float32 or bfloat16; InvalidArgument otherwise).
  static std::unique_ptr<AnnIndex> build(const MemoryStore& store, const AnnOptions& options = {});
  ~AnnIndex() override;
  std::size_t size() const override { return count_; }
  void search(const float* q, std::size_t n, std::size_t k, std::int64_t* rows) const override;
  const AnnOptions& options() const { return options_; }
  /// Bytes of the index (codes or vectors, and the graph or cell lists), as FAISS serialises it.
  std::size_t bytes() const;

 private:
  struct Impl;
  AnnIndex() = default;
  std::unique_ptr<Impl> impl_;
  std::size_t count_ = 0, dim_ = 0;
  AnnOptions options_;
};

}  // namespace assocmem
