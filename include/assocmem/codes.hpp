// assocmem/codes.hpp - a quantised side copy of a store for certified retrieval (issue 14).
//
// Memory xi_mu is kept as int8 codes c_mu in [-119, 119] with a scale s_mu = max_j |xi_mu,j| / 119
// (c = round(xi / s)) and a bound e_mu >= ||xi_mu - s_mu c_mu||_2 on what the codes leave out. Each code
// splits exactly into two 4-bit levels, c = 16 h + l with h = floor((c + 8) / 16) in [-7, 7] and
// l in [-8, 7], and the coarse level alone is a quantisation too, with its own bound
// e1_mu >= ||xi_mu - 16 s_mu h_mu||_2 (it keeps a zero level: zero stays zero).
// The screen quantises the query the same way, q = s_q q8 + r_q (int8), and computes q8 . h_mu and
// q8 . c_mu exactly in integers (AVX-512 VNNI where the CPU has it), so by Cauchy-Schwarz
//   |q . xi_mu - s_mu s_q (q8 . c_mu)| <= ||q|| e_mu + ||r_q|| (R + e_mu)        (fine)
//   |q . xi_mu - 16 s_mu s_q (q8 . h_mu)| <= ||q|| e1_mu + ||r_q|| (R + e1_mu)   (coarse)
// with R >= max ||xi||. Certified model B retrieval (RetrieveOptions::certify, engine.hpp) reads the
// coarse levels of every memory (d / 2 bytes), the fine levels only of the few memories the coarse
// bounds cannot discard, and rescores the candidates that remain exactly.
//
// In memory the two levels are two planes of 4-bit values (h + 8 and l + 8, both in [0, 15]) in blocks
// of 16 memories x 8 dimensions (64 bytes: byte 4 r + k holds dimension 8 g + k of memory r in its low
// nibble and dimension 8 g + 4 + k in its high nibble), the layout the integer dot-product
// instructions read 16 memories at a time.
//
// The codes are derived data: they live beside the store in a file of their own (`store.amem.codes`,
// written by `assocmem index`), bound to the store by a checksum of its rows, so a store's format and
// checksums never change and an old store needs nothing to be used with them.
// File format (version 2, little-endian):
//   bytes 0..7    magic "ASMCODES"
//   8..11         uint32 format version (2)
//   12..15        uint32 kind (2 = int8 in [-119, 119], two 4-bit levels)
//   16..23        uint64 count K
//   24..31        uint64 dim d
//   32..39        uint64 XXH64 (seed 0) of the store's rows (K x row_bytes bytes): the binding
//   40..43        uint32 the store's dtype
//   44..47        float32 R >= max_mu ||xi_mu||_2
//   48..55        uint64 payload offset (4096)
//   56..63        uint64 payload bytes = align8(K d) + 12 K
//   64..71        uint64 XXH64 (seed 0) of the payload
//   72..79        uint64 XXH64 (seed 0) of bytes 0..71
//   payload       K rows of d int8 codes, zero padding to a multiple of 8, K float32 scales s_mu,
//                 K float32 bounds e_mu, K float32 coarse bounds e1_mu
// Version 1 files (kind 1: codes in [-127, 127], no coarse bounds) are still read: they are checked
// (checksums, binding) and their codes re-derived from the store, since they cannot be split into two
// 4-bit levels; `assocmem index` rewrites them as version 2.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "assocmem/store.hpp"

namespace assocmem {

class CodeIndex {
 public:
  static constexpr std::uint32_t kFormatVersion = 2;
  static constexpr int kCodeMax = 119;          ///< |c| <= kCodeMax
  static constexpr std::size_t kBlockRows = 16;  ///< memories per block of the planes
  static constexpr std::size_t kGroupDims = 8;   ///< dimensions per 64-byte group of a block

  /// The codes of every memory of `store` (float32 or bfloat16, dimension <= 65535; InvalidArgument
  /// otherwise).
  /// threads: 0 = the CPUs this process may run on.
  static CodeIndex build(const MemoryStore& store, int threads = 0);
  /// Opens saved codes (format 2, or 1: see above) and checks that they belong to `store` (same count,
  /// dimension, dtype and rows): IoError naming the file and the problem (missing, truncated, corrupted,
  /// another store's).
  static CodeIndex open(const std::string& path, const MemoryStore& store);
  /// Writes the codes atomically (assocmem/io.hpp) in the current format; IoError naming the file.
  void save(const std::string& path) const;
  /// Where `assocmem index` puts the codes of the store at store_path.
  static std::string default_path(const std::string& store_path) { return store_path + ".codes"; }

  std::size_t size() const { return count_; }
  std::size_t dim() const { return dim_; }
  /// The checksum of the rows of the store these codes belong to.
  std::uint64_t rows_hash() const { return rows_hash_; }
  /// True when the codes were made from (or checked against) a store with these rows.
  bool matches(const MemoryStore& store) const;
  /// The format version of the file these codes were opened from (0: built in memory).
  std::uint32_t source_version() const { return source_version_; }
  /// Bytes the codes take in memory: d (rounded up to 8) + 12 per memory (16 at a time).
  std::size_t bytes() const { return high_.size() + low_.size() + 4 * (scale_.size() + error_.size() + coarse_.size()); }

  /// Code c of memory mu, dimension j (= 16 h + l, from the planes).
  int code(std::size_t mu, std::size_t j) const;
  /// Its coarse level h in [-7, 7].
  int coarse_code(std::size_t mu, std::size_t j) const;
  const float* scale() const { return scale_.data(); }          ///< [K] s_mu
  const float* error() const { return error_.data(); }          ///< [K] e_mu >= ||xi - s c||
  const float* coarse_error() const { return coarse_.data(); }  ///< [K] e1_mu >= ||xi - 16 s h||
  float max_norm() const { return max_norm_; }                  ///< R >= max_mu ||xi_mu||_2

  /// The planes (layout above): ceil(K / 16) blocks of groups() x 64 bytes.
  const std::uint8_t* high_plane() const { return high_.data(); }  ///< h + 8
  const std::uint8_t* low_plane() const { return low_.data(); }    ///< l + 8
  std::size_t groups() const { return (dim_ + kGroupDims - 1) / kGroupDims; }

 private:
  CodeIndex() = default;
  void allocate(std::size_t K, std::size_t d);
  void set_code(std::size_t mu, std::size_t j, int c);
  std::pair<std::size_t, int> place(std::size_t mu, std::size_t j) const;
  std::size_t count_ = 0, dim_ = 0;
  DType dtype_ = DType::Float32;
  std::uint64_t rows_hash_ = 0;
  std::uint32_t source_version_ = 0;
  float max_norm_ = 0;
  detail::RowBuffer high_, low_;  // huge pages where the system gives them: the screen streams through them
  std::vector<float> scale_, error_, coarse_;
};

}  // namespace assocmem
