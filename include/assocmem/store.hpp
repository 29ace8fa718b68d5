// assocmem/store.hpp - a persistent store of K memories of dimension d.
//
// Element types: float32, bfloat16 (the upper half of a float32, round-to-nearest-even) and packed
// bits for +-1 patterns (bit 1 = +1, 64 neurons per uint64 word). Each memory has a 64-bit id.
//
// File format (version 1, little-endian):
//   bytes 0..7    magic "ASMSTORE"
//   8..11         uint32 format version (1)
//   12..15        uint32 dtype (1 float32, 2 bfloat16, 3 bits)
//   16..23        uint64 count K
//   24..31        uint64 dim d
//   32..39        uint64 row_bytes (bytes of one stored memory)
//   40..47        uint64 payload offset (4096)
//   48..55        uint64 payload bytes = align8(K * row_bytes) + 8 K
//   56..63        uint64 XXH64 (seed 0) of the payload
//   64..71        uint64 XXH64 (seed 0) of bytes 0..63
//   ...           zero up to the payload offset
//   payload       K rows of row_bytes, zero padding to a multiple of 8 bytes, then K uint64 ids
// Saving writes a temporary file in the same folder, fsyncs it and renames it over the target, so a
// crash at any moment leaves either the old file or the new one. Opening maps the file read-only
// (a store larger than RAM works); appending to an opened store first copies it into memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "assocmem/error.hpp"
#include "assocmem/types.hpp"

namespace assocmem {

enum class DType : std::uint32_t { Float32 = 1, BFloat16 = 2, Bits = 3 };

namespace detail {
/// A growable byte buffer in anonymous memory advised for transparent huge pages, so that streaming
/// over millions of memories is not cut at every 4 KiB page by the hardware prefetcher.
class RowBuffer {
 public:
  RowBuffer() = default;
  ~RowBuffer();
  RowBuffer(RowBuffer&& o) noexcept;
  RowBuffer& operator=(RowBuffer&& o) noexcept;
  RowBuffer(const RowBuffer&) = delete;
  RowBuffer& operator=(const RowBuffer&) = delete;
  /// Grows or shrinks to n bytes; new bytes are zero.
  void resize(std::size_t n);
  std::uint8_t* data() { return p_; }
  const std::uint8_t* data() const { return p_; }
  std::size_t size() const { return size_; }

 private:
  std::uint8_t* p_ = nullptr;
  std::size_t size_ = 0, cap_ = 0;
};
}  // namespace detail

/// "float32" / "f32", "bfloat16" / "bf16", "bits"; throws InvalidArgument otherwise.
DType parse_dtype(const std::string& name);
std::string to_string(DType t);

/// bfloat16 conversions (round to nearest even; NaN stays NaN).
std::uint16_t float_to_bf16(float x);
float bf16_to_float(std::uint16_t b);

struct OpenOptions {
  bool verify_checksum = true;  ///< hash the whole payload on open (reads the file once)
};

class MemoryStore {
 public:
  static constexpr std::uint32_t kFormatVersion = 1;

  /// An empty in-memory store of dimension dim (>= 1).
  MemoryStore(std::size_t dim, DType dtype);
  ~MemoryStore();
  MemoryStore(MemoryStore&&) noexcept;
  MemoryStore& operator=(MemoryStore&&) noexcept;
  MemoryStore(const MemoryStore&) = delete;
  MemoryStore& operator=(const MemoryStore&) = delete;

  /// Opens a saved store by memory mapping. Throws IoError naming the file and the problem
  /// (missing, truncated, wrong magic or version, corrupted header or payload).
  static MemoryStore open(const std::string& path, const OpenOptions& options = {});

  /// Appends n memories given as row-major float32 (n x dim). ids: n ids, or null for
  /// size(), size()+1, ... Values must be finite; for Bits, exactly +1 or -1.
  void append(const float* rows, std::size_t n, const std::uint64_t* ids = nullptr);
  /// Appends the rows of a double matrix (n x dim).
  void append(const Matrix& rows, const std::vector<std::uint64_t>& ids = {});

  /// Appends the rows of a .npy file (float32, float64 or int8, C order; 2-D, or 1-D for one
  /// pattern). Throws IoError for an unreadable file, InvalidArgument for a wrong shape or values.
  void append_npy(const std::string& path);
  /// Writes the memories as a .npy file (K x d): float32 for float32 and bfloat16 stores, int8 (+-1)
  /// for bits. Atomic.
  void export_npy(const std::string& path) const;

  /// Writes the store atomically to path. Throws IoError naming the file.
  void save(const std::string& path) const;

  std::size_t size() const { return count_; }
  std::size_t dim() const { return dim_; }
  DType dtype() const { return dtype_; }
  std::size_t row_bytes() const { return row_bytes_; }
  /// True when the rows live in a read-only mapping of a file.
  bool mapped() const { return mapping_ != nullptr; }

  /// Raw row-major storage: size() rows of row_bytes() bytes.
  const std::uint8_t* data() const { return rows_; }
  const std::uint8_t* row(std::size_t i) const { return rows_ + i * row_bytes_; }
  const std::uint64_t* ids() const { return ids_; }

  /// Decodes memory i into dim() floats (bits decode to +-1).
  void decode_row(std::size_t i, float* out) const;
  /// All memories as a K x d double matrix (for the plain models).
  Matrix to_matrix() const;

 private:
  struct Mapping;
  void materialize();  // copy a mapped store into owned buffers
  void refresh_pointers();

  std::size_t dim_ = 0;
  DType dtype_ = DType::Float32;
  std::size_t row_bytes_ = 0;
  std::size_t count_ = 0;
  detail::RowBuffer owned_rows_;
  std::vector<std::uint64_t> owned_ids_;
  std::unique_ptr<Mapping> mapping_;
  const std::uint8_t* rows_ = nullptr;
  const std::uint64_t* ids_ = nullptr;
};

/// Writes `bytes` to `path` atomically (temp file in the same folder, fsync, rename, fsync folder).
void write_file_atomically(const std::string& path, const std::vector<std::pair<const void*, std::size_t>>& parts);

}  // namespace assocmem
