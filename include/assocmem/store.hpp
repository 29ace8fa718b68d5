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
// Saving goes through write_file_atomically (assocmem/io.hpp): a crash at any moment leaves either
// the old file or the new one, concurrent writers serialise on the folder lock, and append_to_file
// holds that lock from the read to the rename so that no append is lost.
// Opening reads the file into memory (so a file changed or truncated afterwards cannot disturb the
// reader) or, for stores larger than a quarter of the RAM or when asked, maps it read-only; a mapped
// store whose file shrinks does not crash the process: check_intact() (called by the engines after
// every pass) throws IoError. The padding bits of a bits store are verified zero on open.
// Limits (checked when a store is made, appended to or opened, so that whatever is written can be
// read back): 1 <= dim <= 2^40 and count * (row_bytes + 8) <= 2^62 bytes.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "assocmem/error.hpp"
#include "assocmem/io.hpp"
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

/// How an opened store holds its memories.
enum class Access {
  Auto,  ///< Copy when the payload is at most a quarter of the physical memory, Map otherwise
  Copy,  ///< read into private memory: later changes to the file cannot affect this store
  Map    ///< map read-only (stores larger than RAM); a shrinking file makes check_intact() throw
};
/// "auto", "copy", "map"; throws InvalidArgument otherwise.
Access parse_access(const std::string& name);

struct OpenOptions {
  bool verify_checksum = true;  ///< hash the whole payload on open (reads the file once)
  Access access = Access::Auto;
};

/// The largest dimension and payload a store may have (see the file format above).
inline constexpr std::uint64_t kMaxStoreDim = std::uint64_t{1} << 40;
inline constexpr std::uint64_t kMaxStorePayload = std::uint64_t{1} << 62;

class MemoryStore;
namespace detail {
/// A use of a store by an engine, an index or a model (RAII; copies are uses too): while any exists the
/// store refuses to change (MemoryStore::append), so nothing that read it - norms, codes, tiles,
/// candidate indexes sized for its K - can see it change underneath (issue 23).
class StoreLease {
 public:
  explicit StoreLease(const MemoryStore& s);
  StoreLease(const StoreLease& o);
  StoreLease& operator=(const StoreLease& o);
  ~StoreLease();

 private:
  const MemoryStore* s_;
};
}  // namespace detail

class MemoryStore {
 public:
  static constexpr std::uint32_t kFormatVersion = 1;

  /// An empty in-memory store of dimension dim (>= 1).
  MemoryStore(std::size_t dim, DType dtype);
  ~MemoryStore();
  /// Moving a store moves its memories, not its users: an engine keeps pointing at the moved-from object
  /// (as with any C++ reference), so move a store only while nothing uses it (users() == 0).
  MemoryStore(MemoryStore&&) noexcept;
  MemoryStore& operator=(MemoryStore&&) noexcept;
  MemoryStore(const MemoryStore&) = delete;
  MemoryStore& operator=(const MemoryStore&) = delete;

  /// Opens a saved store: reads it into memory or maps it (OpenOptions::access). Throws IoError naming
  /// the file and the problem
  /// (missing, truncated, wrong magic or version, corrupted header or payload).
  static MemoryStore open(const std::string& path, const OpenOptions& options = {});

  /// Appends n memories given as row-major float32 (n x dim). ids: n ids, distinct and not in the store,
  /// or null for next_id(), next_id()+1, ... Values must be finite; for Bits, exactly +1 or -1.
  /// Refused (InvalidArgument) while the store is in use (users() > 0): engines and models read a store
  /// that cannot change under them; build a new engine after appending.
  void append(const float* rows, std::size_t n, const std::uint64_t* ids = nullptr);
  /// Appends the rows of a double matrix (n x dim).
  void append(const Matrix& rows, const std::vector<std::uint64_t>& ids = {});

  /// Appends the rows of a .npy file (float32, float64 or int8, C order; 2-D, or 1-D for one
  /// pattern). Throws IoError for an unreadable file, InvalidArgument for a wrong shape or values.
  void append_npy(const std::string& path);
  /// Writes the memories as a .npy file (K x d): float32 for float32 and bfloat16 stores, int8 (+-1)
  /// for bits. Atomic.
  void export_npy(const std::string& path) const;

  /// Writes the store atomically to path. Throws IoError naming the file. Returns the XXH64 checksum
  /// of the payload it wrote (the one in the file's header).
  std::uint64_t save(const std::string& path) const;

  /// A new in-memory store holding memories [begin, end) of this one, rows and ids copied byte for byte.
  MemoryStore slice(std::size_t begin, std::size_t end) const;
  /// The payload checksum recorded in the header of the file this store was opened from (verified
  /// against the payload on open unless OpenOptions::verify_checksum was false); 0 for a store built
  /// in memory.
  std::uint64_t file_checksum() const { return file_checksum_; }

  /// Appends n rows (n x dim float32) to the store file at `path` under the folder lock, creating it
  /// with `dtype_if_new` when it does not exist. `dtype` (optional, 0 = any) must match an existing
  /// store's. Concurrent appenders serialise: every call that returns is in the file. Returns the
  /// new number of memories; with `result`, also the store as written.
  static std::size_t append_to_file(const std::string& path, const float* rows, std::size_t n, std::size_t dim,
                                    DType dtype_if_new, bool require_dtype = false, MemoryStore* result = nullptr);

  /// Throws IoError when the file of a mapped store shrank while it was mapped (the data read since
  /// is invalid). A no-op for stores in memory.
  void check_intact() const;
  /// The file this store was opened from ("" for a store built in memory).
  const std::string& source() const { return source_; }

  std::size_t size() const { return count_; }
  std::size_t dim() const { return dim_; }
  /// The engines, indexes and models using this store now (detail::StoreLease); append() needs 0.
  std::size_t users() const { return users_.load(); }
  /// The id an append without ids gives its first memory: one more than the largest id (0 when empty).
  std::uint64_t next_id() const { return next_id_; }
  DType dtype() const { return dtype_; }
  std::size_t row_bytes() const { return row_bytes_; }
  /// True when the rows live in a read-only mapping of a file (Access::Map).
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
  std::string source_;
  std::uint64_t file_checksum_ = 0;
  std::uint64_t next_id_ = 0;
  friend class detail::StoreLease;
  mutable std::atomic<std::size_t> users_{0};
};

}  // namespace assocmem
