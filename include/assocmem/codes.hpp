// assocmem/codes.hpp - a quantised side copy of a store for certified retrieval (issue 14).
//
// Memory xi_mu is kept as int8 codes c_mu with a scale s_mu = max_j |xi_mu,j| / 127 (c = round(xi / s))
// and a bound e_mu >= ||xi_mu - s_mu c_mu||_2 on what the codes leave out. The screen quantises the
// query the same way, q = s_q q8 + r_q, and computes q8 . c_mu exactly in integers (AVX-512 VNNI where
// the CPU has it), so by Cauchy-Schwarz
//   |q . xi_mu - s_mu s_q (q8 . c_mu)| <= ||q|| e_mu + ||r_q|| s_mu ||c_mu||,  s_mu ||c_mu|| <= R + e_mu
// and a scan of the codes (a quarter of a float32 store's bytes) bounds every score from above and below.
// Certified model B retrieval (RetrieveOptions::certify, engine.hpp) uses those bounds to discard the
// memories whose softmax weight provably stays below eps in total and rescores the rest exactly.
//
// The codes are derived data: they live beside the store in a file of their own (`store.amem.codes`,
// written by `assocmem index`), bound to the store by a checksum of its rows, so a store's format and
// checksums never change and an old store needs nothing to be used with them.
// File format (version 1, little-endian):
//   bytes 0..7    magic "ASMCODES"
//   8..11         uint32 format version (1)
//   12..15        uint32 kind (1 = int8)
//   16..23        uint64 count K
//   24..31        uint64 dim d
//   32..39        uint64 XXH64 (seed 0) of the store's rows (K x row_bytes bytes): the binding
//   40..43        uint32 the store's dtype
//   44..47        float32 R >= max_mu ||xi_mu||_2
//   48..55        uint64 payload offset (4096)
//   56..63        uint64 payload bytes = align8(K d) + 8 K
//   64..71        uint64 XXH64 (seed 0) of the payload
//   72..79        uint64 XXH64 (seed 0) of bytes 0..71
//   payload       K rows of d int8 codes, zero padding to a multiple of 8, K float32 scales s_mu,
//                 K float32 bounds e_mu
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "assocmem/store.hpp"

namespace assocmem {

class CodeIndex {
 public:
  static constexpr std::uint32_t kFormatVersion = 1;

  /// The int8 codes of every memory of `store` (float32 or bfloat16, dimension <= 65535; InvalidArgument
  /// otherwise).
  /// threads: 0 = the CPUs this process may run on.
  static CodeIndex build(const MemoryStore& store, int threads = 0);
  /// Opens saved codes and checks that they belong to `store` (same count, dimension, dtype and rows):
  /// IoError naming the file and the problem (missing, truncated, corrupted, another store's).
  static CodeIndex open(const std::string& path, const MemoryStore& store);
  /// Writes the codes atomically (assocmem/io.hpp); IoError naming the file.
  void save(const std::string& path) const;
  /// Where `assocmem index` puts the codes of the store at store_path.
  static std::string default_path(const std::string& store_path) { return store_path + ".codes"; }

  std::size_t size() const { return count_; }
  std::size_t dim() const { return dim_; }
  /// The checksum of the rows of the store these codes belong to.
  std::uint64_t rows_hash() const { return rows_hash_; }
  /// True when the codes were made from (or checked against) a store with these rows.
  bool matches(const MemoryStore& store) const;
  /// Bytes the codes take in memory: d + 12 per memory (on disk d + 8, and the 4096-byte header).
  std::size_t bytes() const { return codes_.size() + 4 * (scale_.size() + error_.size() + csum_.size()); }

  const std::int8_t* codes() const { return reinterpret_cast<const std::int8_t*>(codes_.data()); }  ///< [K x d]
  const float* scale() const { return scale_.data(); }        ///< [K] s_mu
  const float* error() const { return error_.data(); }        ///< [K] e_mu (above)
  float max_norm() const { return max_norm_; }                ///< R >= max_mu ||xi_mu||_2
  const std::int32_t* code_sums() const { return csum_.data(); }  ///< [K] sum_j c_mu,j (in memory only)

 private:
  CodeIndex() = default;
  void sum_codes();
  std::size_t count_ = 0, dim_ = 0;
  DType dtype_ = DType::Float32;
  std::uint64_t rows_hash_ = 0;
  float max_norm_ = 0;
  detail::RowBuffer codes_;  // huge pages where the system gives them: the screen streams through it
  std::vector<float> scale_, error_;
  std::vector<std::int32_t> csum_;
};

}  // namespace assocmem
