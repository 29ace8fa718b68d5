// The memory store: versioned binary format with checksums, atomic save, memory-mapped open.
#include "assocmem/store.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <algorithm>
#include <limits>
#include <utility>
#include <vector>

#include <xxhash.h>

#include "assocmem/io.hpp"
#include "bytes.hpp"
#include "assocmem/npy.hpp"

namespace assocmem {

namespace {

using detail::align8;
using detail::get;
using detail::put;

constexpr char kMagic[8] = {'A', 'S', 'M', 'S', 'T', 'O', 'R', 'E'};
constexpr std::size_t kHeaderBytes = 72;
constexpr std::size_t kPayloadOffset = 4096;


// The limits of the file format, checked wherever a store gets its shape (constructor, append,
// open), so that whatever can be written can be read back.
void check_shape(std::uint64_t count, std::uint64_t dim, std::uint64_t row_bytes, const char* what) {
  ASSOCMEM_CHECK_ARG(dim >= 1 && dim <= kMaxStoreDim, what, ": dim must be in [1, 2^40], got ", dim);
  ASSOCMEM_CHECK_ARG(count <= kMaxStorePayload / (row_bytes + 8), what, ": ", count, " memories of dimension ", dim,
                     " exceed the largest store (2^62 bytes)");
}

std::size_t row_bytes_for(std::size_t dim, DType t) {
  switch (t) {
    case DType::Float32: return dim * 4;
    case DType::BFloat16: return dim * 2;
    case DType::Bits: return ((dim + 63) / 64) * 8;
  }
  return 0;
}

std::string errno_text() { return std::strerror(errno); }


}  // namespace

Access parse_access(const std::string& name) {
  if (name == "auto") return Access::Auto;
  if (name == "copy") return Access::Copy;
  if (name == "map") return Access::Map;
  throw InvalidArgument("access must be one of auto, copy, map; got '" + name + "'");
}

DType parse_dtype(const std::string& name) {
  if (name == "float32" || name == "f32") return DType::Float32;
  if (name == "bfloat16" || name == "bf16") return DType::BFloat16;
  if (name == "bits") return DType::Bits;
  throw InvalidArgument("dtype must be one of float32, bfloat16, bits; got '" + name + "'");
}

std::string to_string(DType t) {
  switch (t) {
    case DType::Float32: return "float32";
    case DType::BFloat16: return "bfloat16";
    case DType::Bits: return "bits";
  }
  return "?";
}

std::uint16_t float_to_bf16(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, 4);
  if (std::isnan(x)) return static_cast<std::uint16_t>((u >> 16) | 0x40);  // quiet NaN
  const std::uint32_t rounding = 0x7FFF + ((u >> 16) & 1);                 // to nearest, ties to even
  return static_cast<std::uint16_t>((u + rounding) >> 16);
}

float bf16_to_float(std::uint16_t b) {
  const std::uint32_t u = static_cast<std::uint32_t>(b) << 16;
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

// ------------------------------------------------------------------------------------------------
namespace detail {

RowBuffer::~RowBuffer() {
  if (p_) munmap(p_, cap_);
}
RowBuffer::RowBuffer(RowBuffer&& o) noexcept : p_(o.p_), size_(o.size_), cap_(o.cap_) {
  o.p_ = nullptr;
  o.size_ = o.cap_ = 0;
}
RowBuffer& RowBuffer::operator=(RowBuffer&& o) noexcept {
  if (this != &o) {
    if (p_) munmap(p_, cap_);
    p_ = o.p_;
    size_ = o.size_;
    cap_ = o.cap_;
    o.p_ = nullptr;
    o.size_ = o.cap_ = 0;
  }
  return *this;
}
void RowBuffer::resize(std::size_t n) {
  if (n <= cap_) {
    if (n > size_) std::memset(p_ + size_, 0, n - size_);
    size_ = n;
    return;
  }
  constexpr std::size_t kHuge = std::size_t{2} << 20;
  std::size_t cap = std::max(n, 2 * cap_);
  cap = (cap + kHuge - 1) / kHuge * kHuge;
  void* q = mmap(nullptr, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (q == MAP_FAILED) throw Error(detail::concat("memory store: cannot allocate ", cap, " bytes: ", errno_text()));
#ifdef MADV_HUGEPAGE
  madvise(q, cap, MADV_HUGEPAGE);  // advisory; ignored where THP is off
#endif
  auto* nq = static_cast<std::uint8_t*>(q);  // anonymous memory starts zeroed
  if (p_) {
    std::memcpy(nq, p_, size_);
    munmap(p_, cap_);
  }
  p_ = nq;
  size_ = n;
  cap_ = cap;
}

}  // namespace detail

struct MemoryStore::Mapping {
  void* base = MAP_FAILED;
  std::size_t length = 0;
  int guard = -1;  // SIGBUS guard slot (assocmem/io.hpp)
  ~Mapping() {
    detail::unguard_mapping(guard);
    if (base != MAP_FAILED) munmap(base, length);
  }
};

MemoryStore::MemoryStore(std::size_t dim, DType dtype) : dim_(dim), dtype_(dtype) {
  ASSOCMEM_CHECK_ARG(dim >= 1 && dim <= kMaxStoreDim, "dim must be in [1, 2^40], got ", dim);
  ASSOCMEM_CHECK_ARG(dtype == DType::Float32 || dtype == DType::BFloat16 || dtype == DType::Bits,
                     "dtype: unknown value ", static_cast<std::uint32_t>(dtype));
  row_bytes_ = row_bytes_for(dim, dtype);
  refresh_pointers();
}

MemoryStore::~MemoryStore() = default;
MemoryStore::MemoryStore(MemoryStore&& o) noexcept
    : dim_(o.dim_), dtype_(o.dtype_), row_bytes_(o.row_bytes_), count_(o.count_), owned_rows_(std::move(o.owned_rows_)),
      owned_ids_(std::move(o.owned_ids_)), mapping_(std::move(o.mapping_)), rows_(o.rows_), ids_(o.ids_),
      source_(std::move(o.source_)), file_checksum_(o.file_checksum_), next_id_(o.next_id_) {
  refresh_pointers();
}
MemoryStore& MemoryStore::operator=(MemoryStore&& o) noexcept {
  if (this == &o) return *this;
  dim_ = o.dim_;
  dtype_ = o.dtype_;
  row_bytes_ = o.row_bytes_;
  count_ = o.count_;
  owned_rows_ = std::move(o.owned_rows_);
  owned_ids_ = std::move(o.owned_ids_);
  mapping_ = std::move(o.mapping_);
  rows_ = o.rows_;
  ids_ = o.ids_;
  source_ = std::move(o.source_);
  file_checksum_ = o.file_checksum_;
  next_id_ = o.next_id_;
  refresh_pointers();
  return *this;
}

namespace detail {
StoreLease::StoreLease(const MemoryStore& s) : s_(&s) { ++s_->users_; }
StoreLease::StoreLease(const StoreLease& o) : s_(o.s_) { ++s_->users_; }
StoreLease& StoreLease::operator=(const StoreLease& o) {
  if (this != &o) {
    ++o.s_->users_;
    --s_->users_;
    s_ = o.s_;
  }
  return *this;
}
StoreLease::~StoreLease() { --s_->users_; }
}  // namespace detail

void MemoryStore::refresh_pointers() {
  if (mapping_) return;
  rows_ = owned_rows_.data();
  ids_ = owned_ids_.data();
}

void MemoryStore::materialize() {
  if (!mapping_) return;
  detail::RowBuffer rows;
  rows.resize(count_ * row_bytes_);
  if (count_) std::memcpy(rows.data(), rows_, count_ * row_bytes_);
  owned_rows_ = std::move(rows);
  owned_ids_.assign(ids_, ids_ + count_);
  mapping_.reset();
  refresh_pointers();
}

void MemoryStore::append(const float* rows, std::size_t n, const std::uint64_t* ids) {
  ASSOCMEM_CHECK_ARG(users() == 0, "append: the store is in use by ", users(), users() == 1 ? " engine or model" :
                     " engines or models", " (they read it as it was when they were made); append before making "
                     "them, or make new ones after appending (in Python: delete the model first)");
  if (n == 0) return;
  ASSOCMEM_CHECK_ARG(rows != nullptr, "append: rows is null");
  check_shape(checked_add(count_, n, "append: memories"), dim_, row_bytes_, "append");
  const std::size_t total = checked_mul(n, dim_, "append: rows x dim");
  for (std::size_t k = 0; k < total; ++k) {
    ASSOCMEM_CHECK_ARG(std::isfinite(rows[k]), "append: pattern ", k / dim_, " element ", k % dim_,
                       " is NaN or Inf");
    if (dtype_ == DType::Bits)
      ASSOCMEM_CHECK_ARG(rows[k] == 1.0f || rows[k] == -1.0f, "append: pattern ", k / dim_, " element ", k % dim_,
                         " = ", rows[k], ": a bits store holds only +1 and -1");
    if (dtype_ == DType::BFloat16)
      ASSOCMEM_CHECK_ARG(std::isfinite(bf16_to_float(float_to_bf16(rows[k]))), "append: pattern ", k / dim_,
                         " element ", k % dim_, " = ", rows[k], " overflows bfloat16 (largest finite 3.3895e38)");
  }
  // Ids stay unique: given ones must be distinct and new; the default ones continue after the largest.
  std::uint64_t next = next_id_;
  if (ids) {
    std::vector<std::uint64_t> given(ids, ids + n);
    std::sort(given.begin(), given.end());
    for (std::size_t r = 1; r < n; ++r)
      ASSOCMEM_CHECK_ARG(given[r] != given[r - 1], "append: id ", given[r], " is given twice");
    std::vector<std::uint64_t> have(ids_, ids_ + count_);
    std::sort(have.begin(), have.end());
    for (std::uint64_t id : given)
      ASSOCMEM_CHECK_ARG(!std::binary_search(have.begin(), have.end(), id), "append: id ", id,
                         " is already in the store (ids are unique)");
    next = std::max(next, given.back() + 1);
    ASSOCMEM_CHECK_ARG(given.back() != std::numeric_limits<std::uint64_t>::max(), "append: id 2^64 - 1 is reserved");
  } else {
    ASSOCMEM_CHECK_ARG(next_id_ <= std::numeric_limits<std::uint64_t>::max() - n, "append: the ids would pass 2^64 - 1");
    next = next_id_ + n;
  }
  check_intact();
  materialize();
  const std::size_t old = count_;
  owned_rows_.resize((old + n) * row_bytes_);
  owned_ids_.resize(old + n);
  for (std::size_t r = 0; r < n; ++r) {
    std::uint8_t* dst = owned_rows_.data() + (old + r) * row_bytes_;
    const float* src = rows + r * dim_;
    switch (dtype_) {
      case DType::Float32: std::memcpy(dst, src, dim_ * 4); break;
      case DType::BFloat16:
        for (std::size_t j = 0; j < dim_; ++j) put<std::uint16_t>(dst + 2 * j, float_to_bf16(src[j]));
        break;
      case DType::Bits: {
        std::uint64_t word = 0;
        for (std::size_t j = 0; j < dim_; ++j) {
          if (src[j] > 0) word |= std::uint64_t{1} << (j % 64);
          if (j % 64 == 63 || j + 1 == dim_) {
            put<std::uint64_t>(dst + 8 * (j / 64), word);
            word = 0;
          }
        }
        break;
      }
    }
    owned_ids_[old + r] = ids ? ids[r] : next_id_ + r;
  }
  count_ = old + n;
  next_id_ = next;
  refresh_pointers();
}

void MemoryStore::append(const Matrix& rows, const std::vector<std::uint64_t>& ids) {
  ASSOCMEM_CHECK_ARG(static_cast<std::size_t>(rows.cols()) == dim_, "append: rows have ", rows.cols(),
                     " columns but the store has dim ", dim_);
  ASSOCMEM_CHECK_ARG(ids.empty() || ids.size() == static_cast<std::size_t>(rows.rows()), "append: ", ids.size(),
                     " ids for ", rows.rows(), " rows");
  const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> f = rows.cast<float>();
  for (Eigen::Index i = 0; i < rows.size(); ++i)
    ASSOCMEM_CHECK_ARG(std::isfinite(rows.data()[i]), "append: pattern ", i / rows.cols(), " element ",
                       i % rows.cols(), " is NaN or Inf");
  append(f.data(), static_cast<std::size_t>(rows.rows()), ids.empty() ? nullptr : ids.data());
}

void MemoryStore::append_npy(const std::string& path) {
  const NpyArray a = read_npy(path);
  ASSOCMEM_CHECK_ARG(a.cols == dim_, "'", path, "': patterns have dimension ", a.cols, " but the store has dim ", dim_);
  const std::vector<float> v = a.to_float32();
  try {
    append(v.data(), a.rows);
  } catch (const InvalidArgument& e) {
    throw InvalidArgument("'" + path + "': " + e.what());
  }
}

void MemoryStore::export_npy(const std::string& path) const {
  // The store's own file is an input: an export over it replaced the store with a .npy (issue 23).
  if (!source_.empty()) check_distinct({{"store", source_}}, {{"export", path}});
  if (dtype_ == DType::Bits) {
    std::vector<std::int8_t> out(count_ * dim_);
    std::vector<float> row(dim_);
    for (std::size_t i = 0; i < count_; ++i) {
      decode_row(i, row.data());
      for (std::size_t j = 0; j < dim_; ++j) out[i * dim_ + j] = row[j] > 0 ? 1 : -1;
    }
    check_intact();
    write_npy(path, out.data(), count_, dim_);
    return;
  }
  std::vector<float> out(count_ * dim_);
  for (std::size_t i = 0; i < count_; ++i) decode_row(i, &out[i * dim_]);
  check_intact();
  write_npy(path, out.data(), count_, dim_);
}

void MemoryStore::decode_row(std::size_t i, float* out) const {
  ASSOCMEM_CHECK_ARG(i < count_, "row index ", i, " out of range (store has ", count_, " memories)");
  const std::uint8_t* r = row(i);
  switch (dtype_) {
    case DType::Float32: std::memcpy(out, r, dim_ * 4); break;
    case DType::BFloat16:
      for (std::size_t j = 0; j < dim_; ++j) out[j] = bf16_to_float(get<std::uint16_t>(r + 2 * j));
      break;
    case DType::Bits:
      for (std::size_t j = 0; j < dim_; ++j)
        out[j] = (get<std::uint64_t>(r + 8 * (j / 64)) >> (j % 64)) & 1 ? 1.0f : -1.0f;
      break;
  }
}

Matrix MemoryStore::to_matrix() const {
  Matrix m(static_cast<Eigen::Index>(count_), static_cast<Eigen::Index>(dim_));
  std::vector<float> buf(dim_);
  for (std::size_t i = 0; i < count_; ++i) {
    decode_row(i, buf.data());
    for (std::size_t j = 0; j < dim_; ++j) m(static_cast<Eigen::Index>(i), static_cast<Eigen::Index>(j)) = buf[j];
  }
  check_intact();
  return m;
}

void MemoryStore::check_intact() const {
  if (mapping_ && detail::mapping_faulted(mapping_->guard))
    throw IoError("store '" + source_ +
                  "' shrank while it was mapped (truncated or overwritten in place by another program); the data "
                  "read from it is invalid. Open it again, or open with access=copy");
}

MemoryStore MemoryStore::slice(std::size_t begin, std::size_t end) const {
  ASSOCMEM_CHECK_ARG(begin <= end && end <= count_, "slice: [", begin, ", ", end, ") is not within the ", count_,
                     " memories");
  check_intact();
  MemoryStore out(dim_, dtype_);
  out.owned_rows_.resize((end - begin) * row_bytes_);
  if (end > begin) std::memcpy(out.owned_rows_.data(), rows_ + begin * row_bytes_, (end - begin) * row_bytes_);
  out.owned_ids_.assign(ids_ + begin, ids_ + end);
  out.count_ = end - begin;
  out.next_id_ = next_id_;  // appends to a slice continue after every id of the whole store
  out.refresh_pointers();
  check_intact();  // a mapped file that shrank during the copy: the copy is invalid
  return out;
}

std::uint64_t MemoryStore::save(const std::string& path) const {
  check_intact();
  const std::size_t rows_len = count_ * row_bytes_;
  const std::size_t pad = align8(rows_len) - rows_len;
  const std::size_t payload = align8(rows_len) + 8 * count_;
  const std::uint64_t zeros = 0;
  XXH64_state_t* st = XXH64_createState();
  if (!st) throw Error("save: out of memory");
  XXH64_reset(st, 0);
  XXH64_update(st, rows_, rows_len);
  XXH64_update(st, &zeros, pad);
  XXH64_update(st, ids_, 8 * count_);
  const std::uint64_t payload_hash = XXH64_digest(st);
  XXH64_freeState(st);

  std::vector<std::uint8_t> header(kPayloadOffset, 0);
  std::memcpy(header.data(), kMagic, 8);
  put<std::uint32_t>(&header[8], kFormatVersion);
  put<std::uint32_t>(&header[12], static_cast<std::uint32_t>(dtype_));
  put<std::uint64_t>(&header[16], count_);
  put<std::uint64_t>(&header[24], dim_);
  put<std::uint64_t>(&header[32], row_bytes_);
  put<std::uint64_t>(&header[40], kPayloadOffset);
  put<std::uint64_t>(&header[48], payload);
  put<std::uint64_t>(&header[56], payload_hash);
  put<std::uint64_t>(&header[64], XXH64(header.data(), 64, 0));
  write_file_atomically(path, {{header.data(), header.size()}, {rows_, rows_len}, {&zeros, pad}, {ids_, 8 * count_}});
  return payload_hash;
}

namespace {
std::size_t auto_copy_limit() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page <= 0) return std::size_t{1} << 30;
  return static_cast<std::size_t>(pages) / 4 * static_cast<std::size_t>(page);
}
}  // namespace

MemoryStore MemoryStore::open(const std::string& path, const OpenOptions& options) {
  auto bad = [&](const std::string& why) { return IoError("cannot open store '" + path + "': " + why); };
  const InputFile file(path, "store");  // a regular file; FIFOs and devices are refused without blocking
  const std::size_t file_size = file.size();
  if (file_size < kHeaderBytes)
    throw bad(detail::concat("truncated: ", file_size, " bytes, shorter than the ", kHeaderBytes, "-byte header"));
  std::uint8_t h[kHeaderBytes];
  file.read_at(0, h, kHeaderBytes);

  if (std::memcmp(h, kMagic, 8) != 0) throw bad("not an assocmem store (bad magic)");
  const auto version = get<std::uint32_t>(h + 8);
  if (version != kFormatVersion)
    throw bad(detail::concat("format version ", version, " is not supported (this build reads version ", kFormatVersion,
                             ")"));
  if (get<std::uint64_t>(h + 64) != XXH64(h, 64, 0)) throw bad("header checksum mismatch (corrupted header)");
  const auto dtype_raw = get<std::uint32_t>(h + 12);
  if (dtype_raw < 1 || dtype_raw > 3) throw bad(detail::concat("unknown dtype code ", dtype_raw));
  const auto dtype = static_cast<DType>(dtype_raw);
  const auto count = get<std::uint64_t>(h + 16);
  const auto dim = get<std::uint64_t>(h + 24);
  const auto row_bytes = get<std::uint64_t>(h + 32);
  const auto offset = get<std::uint64_t>(h + 40);
  const auto payload = get<std::uint64_t>(h + 48);
  if (dim == 0 || dim > kMaxStoreDim) throw bad(detail::concat("invalid dim ", dim));
  if (row_bytes != row_bytes_for(dim, dtype)) throw bad(detail::concat("row_bytes ", row_bytes, " does not match dim ", dim));
  if (offset != kPayloadOffset) throw bad(detail::concat("invalid payload offset ", offset));
  if (count > kMaxStorePayload / (row_bytes + 8)) throw bad(detail::concat("invalid count ", count));
  const std::uint64_t rows_len = count * row_bytes, rows_padded = align8(rows_len);
  const std::uint64_t expected_payload = rows_padded + 8 * count;
  if (payload != expected_payload) throw bad(detail::concat("payload size ", payload, " does not match ", count, " rows"));
  if (file_size != offset + payload)
    throw bad(detail::concat(file_size < offset + payload ? "truncated" : "trailing bytes", ": file has ", file_size,
                             " bytes, the header says ", offset + payload));
  {  // bytes 72..4095 are zero in every file we write (no checksum covers them: a flipped bit there was unseen)
    std::vector<std::uint8_t> gap(kPayloadOffset - kHeaderBytes);
    file.read_at(kHeaderBytes, gap.data(), gap.size());
    const auto nz = std::find_if(gap.begin(), gap.end(), [](std::uint8_t b) { return b != 0; });
    if (nz != gap.end())
      throw bad(detail::concat("byte ", kHeaderBytes + std::size_t(nz - gap.begin()),
                               " between the header and the payload is not zero (the file is corrupted)"));
  }

  MemoryStore s(dim, dtype);
  s.source_ = path;
  s.file_checksum_ = get<std::uint64_t>(h + 56);
  const bool map = options.access == Access::Map || (options.access == Access::Auto && payload > auto_copy_limit());
  std::uint64_t hash = 0;
  if (!map) {
    // Read into private memory, hashing as we go: one pass over the file.
    s.owned_rows_.resize(rows_len);
    s.owned_ids_.resize(count);
    XXH64_state_t* st = XXH64_createState();
    if (!st) throw Error("open: out of memory");
    XXH64_reset(st, 0);
    constexpr std::size_t kChunk = std::size_t{32} << 20;
    for (std::size_t done = 0; done < rows_len; done += kChunk) {
      const std::size_t n = std::min(kChunk, rows_len - done);
      try {
        file.read_at(offset + done, s.owned_rows_.data() + done, n);
      } catch (...) {
        XXH64_freeState(st);
        throw;
      }
      XXH64_update(st, s.owned_rows_.data() + done, n);
    }
    std::uint8_t pad[8] = {};
    try {
      file.read_at(offset + rows_len, pad, rows_padded - rows_len);
      file.read_at(offset + rows_padded, s.owned_ids_.data(), 8 * count);
    } catch (...) {
      XXH64_freeState(st);
      throw;
    }
    XXH64_update(st, pad, rows_padded - rows_len);
    XXH64_update(st, s.owned_ids_.data(), 8 * count);
    hash = XXH64_digest(st);
    XXH64_freeState(st);
    s.count_ = count;
    s.refresh_pointers();
  } else {
    auto mapping = std::make_unique<Mapping>();
    mapping->base = ::mmap(nullptr, file_size, PROT_READ, MAP_SHARED, file.fd(), 0);
    if (mapping->base == MAP_FAILED) throw bad("mmap failed: " + errno_text());
    mapping->length = file_size;
    mapping->guard = detail::guard_mapping(mapping->base, file_size);
    const auto* base = static_cast<const std::uint8_t*>(mapping->base);
    if (options.verify_checksum) hash = XXH64(base + offset, payload, 0);
    s.count_ = count;
    s.rows_ = base + offset;
    s.ids_ = reinterpret_cast<const std::uint64_t*>(base + offset + rows_padded);
    s.mapping_ = std::move(mapping);
    s.check_intact();
  }
  if (options.verify_checksum && hash != get<std::uint64_t>(h + 56))
    throw bad("payload checksum mismatch (the file is corrupted)");
  if (dtype == DType::Bits && dim % 64 != 0) {
    // Bits past dim in each row's last word must be zero: the engine's popcounts would count them.
    const std::uint64_t mask = ~std::uint64_t{0} << (dim % 64);
    for (std::size_t i = 0; i < count; ++i)
      if (get<std::uint64_t>(s.rows_ + i * row_bytes + row_bytes - 8) & mask)
        throw bad(detail::concat("memory ", i, " has nonzero padding bits past dim ", dim, " (the file is corrupted)"));
    s.check_intact();
  }
  // What a checksum cannot vouch for (a file written by another tool, or edited with the checksums
  // recomputed): the ids are unique, and with verify_checksum (the payload is read anyway) every
  // element is finite. Engines check finiteness again when they are made (a mapped store unverified).
  if (options.verify_checksum && dtype != DType::Bits) {
    std::vector<float> row(dim);
    for (std::size_t i = 0; i < count; ++i) {
      s.decode_row(i, row.data());
      for (std::size_t j = 0; j < dim; ++j)
        if (!std::isfinite(row[j]))
          throw bad(detail::concat("memory ", i, " (id ", s.ids_[i], ") element ", j, " is NaN or Inf"));
    }
  }
  std::vector<std::pair<std::uint64_t, std::size_t>> ids(count);
  for (std::size_t i = 0; i < count; ++i) ids[i] = {s.ids_[i], i};
  s.check_intact();
  std::sort(ids.begin(), ids.end());
  for (std::size_t i = 1; i < count; ++i)
    if (ids[i].first == ids[i - 1].first)
      throw bad(detail::concat("id ", ids[i].first, " belongs to memories ", ids[i - 1].second, " and ", ids[i].second,
                               " (ids must be unique)"));
  if (count) {
    if (ids.back().first == std::numeric_limits<std::uint64_t>::max()) throw bad("id 2^64 - 1 is reserved");
    s.next_id_ = ids.back().first + 1;
  }
  return s;
}

std::size_t MemoryStore::append_to_file(const std::string& path, const float* rows, std::size_t n, std::size_t dim,
                                        DType dtype_if_new, bool require_dtype, MemoryStore* result) {
  const FolderLock lock(path);  // held from the read to the rename: concurrent appends serialise
  struct stat sb {};
  const std::string target = resolve_output(path);
  const bool exists = ::stat(target.c_str(), &sb) == 0;
  MemoryStore s = exists ? open(path, {true, Access::Copy}) : MemoryStore(dim, dtype_if_new);
  ASSOCMEM_CHECK_ARG(s.dim() == dim, "append: the patterns have dimension ", dim, " but store '", path, "' has ",
                     s.dim());
  ASSOCMEM_CHECK_ARG(!require_dtype || s.dtype() == dtype_if_new, "append: dtype ", to_string(dtype_if_new),
                     " was asked for but store '", path, "' holds ", to_string(s.dtype()));
  s.append(rows, n);
  s.save(path);
  const std::size_t count = s.size();
  if (result) *result = std::move(s);
  return count;
}

}  // namespace assocmem
