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

#include <xxhash.h>

#include "assocmem/npy.hpp"

namespace assocmem {

namespace {

constexpr char kMagic[8] = {'A', 'S', 'M', 'S', 'T', 'O', 'R', 'E'};
constexpr std::size_t kHeaderBytes = 72;
constexpr std::size_t kPayloadOffset = 4096;

std::size_t align8(std::size_t x) { return (x + 7) & ~std::size_t{7}; }

std::size_t row_bytes_for(std::size_t dim, DType t) {
  switch (t) {
    case DType::Float32: return dim * 4;
    case DType::BFloat16: return dim * 2;
    case DType::Bits: return ((dim + 63) / 64) * 8;
  }
  return 0;
}

std::string errno_text() { return std::strerror(errno); }

template <class T>
void put(std::uint8_t* p, T v) {
  std::memcpy(p, &v, sizeof v);
}
template <class T>
T get(const std::uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

}  // namespace

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
  ~Mapping() {
    if (base != MAP_FAILED) munmap(base, length);
  }
};

MemoryStore::MemoryStore(std::size_t dim, DType dtype) : dim_(dim), dtype_(dtype) {
  ASSOCMEM_CHECK_ARG(dim >= 1, "dim must be >= 1, got ", dim);
  ASSOCMEM_CHECK_ARG(dtype == DType::Float32 || dtype == DType::BFloat16 || dtype == DType::Bits,
                     "dtype: unknown value ", static_cast<std::uint32_t>(dtype));
  row_bytes_ = row_bytes_for(dim, dtype);
  refresh_pointers();
}

MemoryStore::~MemoryStore() = default;
MemoryStore::MemoryStore(MemoryStore&&) noexcept = default;
MemoryStore& MemoryStore::operator=(MemoryStore&&) noexcept = default;

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
  if (n == 0) return;
  ASSOCMEM_CHECK_ARG(rows != nullptr, "append: rows is null");
  for (std::size_t k = 0; k < n * dim_; ++k) {
    ASSOCMEM_CHECK_ARG(std::isfinite(rows[k]), "append: pattern ", k / dim_, " element ", k % dim_,
                       " is NaN or Inf");
    if (dtype_ == DType::Bits)
      ASSOCMEM_CHECK_ARG(rows[k] == 1.0f || rows[k] == -1.0f, "append: pattern ", k / dim_, " element ", k % dim_,
                         " = ", rows[k], ": a bits store holds only +1 and -1");
  }
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
    owned_ids_[old + r] = ids ? ids[r] : static_cast<std::uint64_t>(old + r);
  }
  count_ = old + n;
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
  if (dtype_ == DType::Bits) {
    std::vector<std::int8_t> out(count_ * dim_);
    std::vector<float> row(dim_);
    for (std::size_t i = 0; i < count_; ++i) {
      decode_row(i, row.data());
      for (std::size_t j = 0; j < dim_; ++j) out[i * dim_ + j] = row[j] > 0 ? 1 : -1;
    }
    write_npy(path, out.data(), count_, dim_);
    return;
  }
  std::vector<float> out(count_ * dim_);
  for (std::size_t i = 0; i < count_; ++i) decode_row(i, &out[i * dim_]);
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
  return m;
}

// ------------------------------------------------------------------------------------------------
void write_file_atomically(const std::string& path, const std::vector<std::pair<const void*, std::size_t>>& parts) {
  const auto slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  std::string tmpl = path + ".tmp.XXXXXX";
  std::vector<char> name(tmpl.begin(), tmpl.end());
  name.push_back('\0');
  const int fd = mkstemp(name.data());
  if (fd < 0) throw IoError("cannot write '" + path + "': cannot create a temporary file in '" + dir + "': " + errno_text());
  const std::string tmp(name.data());
  auto fail = [&](const std::string& what) {
    const std::string reason = errno_text();
    ::close(fd);
    ::unlink(tmp.c_str());
    throw IoError("cannot write '" + path + "': " + what + ": " + reason);
  };
  for (const auto& [ptr, len] : parts) {
    const auto* p = static_cast<const char*>(ptr);
    std::size_t left = len;
    while (left > 0) {
      const ssize_t w = ::write(fd, p, left);
      if (w < 0) {
        if (errno == EINTR) continue;
        fail("write failed");
      }
      p += w;
      left -= static_cast<std::size_t>(w);
    }
  }
  if (::fchmod(fd, 0644) != 0) fail("fchmod failed");
  if (::fsync(fd) != 0) fail("fsync failed");
  if (::close(fd) != 0) {
    const std::string reason = errno_text();
    ::unlink(tmp.c_str());
    throw IoError("cannot write '" + path + "': close failed: " + reason);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string reason = errno_text();
    ::unlink(tmp.c_str());
    throw IoError("cannot write '" + path + "': rename failed: " + reason);
  }
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {  // make the rename durable; best effort
    ::fsync(dfd);
    ::close(dfd);
  }
}

void MemoryStore::save(const std::string& path) const {
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
}

MemoryStore MemoryStore::open(const std::string& path, const OpenOptions& options) {
  auto bad = [&](const std::string& why) { return IoError("cannot open store '" + path + "': " + why); };
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw bad(errno_text());
  struct stat sb {};
  if (::fstat(fd, &sb) != 0) {
    const std::string reason = errno_text();
    ::close(fd);
    throw bad(reason);
  }
  if (!S_ISREG(sb.st_mode)) {
    ::close(fd);
    throw bad("not a regular file");
  }
  const auto file_size = static_cast<std::size_t>(sb.st_size);
  if (file_size < kHeaderBytes) {
    ::close(fd);
    throw bad(detail::concat("truncated: ", file_size, " bytes, shorter than the ", kHeaderBytes, "-byte header"));
  }
  auto mapping = std::make_unique<Mapping>();
  mapping->base = ::mmap(nullptr, file_size, PROT_READ, MAP_SHARED, fd, 0);
  const std::string map_err = errno_text();
  ::close(fd);
  if (mapping->base == MAP_FAILED) throw bad("mmap failed: " + map_err);
  mapping->length = file_size;
  const auto* h = static_cast<const std::uint8_t*>(mapping->base);

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
  if (dim == 0 || dim > (std::uint64_t{1} << 40)) throw bad(detail::concat("invalid dim ", dim));
  if (row_bytes != row_bytes_for(dim, dtype)) throw bad(detail::concat("row_bytes ", row_bytes, " does not match dim ", dim));
  if (offset != kPayloadOffset) throw bad(detail::concat("invalid payload offset ", offset));
  const std::uint64_t max_count = (std::numeric_limits<std::uint64_t>::max() / 2) / (row_bytes + 8);
  if (count > max_count) throw bad(detail::concat("invalid count ", count));
  const std::uint64_t expected_payload = align8(count * row_bytes) + 8 * count;
  if (payload != expected_payload) throw bad(detail::concat("payload size ", payload, " does not match ", count, " rows"));
  if (file_size != offset + payload)
    throw bad(detail::concat(file_size < offset + payload ? "truncated" : "trailing bytes", ": file has ", file_size,
                             " bytes, the header says ", offset + payload));
  if (options.verify_checksum && XXH64(h + offset, payload, 0) != get<std::uint64_t>(h + 56))
    throw bad("payload checksum mismatch (the file is corrupted)");

  MemoryStore s(dim, dtype);
  s.count_ = count;
  s.rows_ = h + offset;
  s.ids_ = reinterpret_cast<const std::uint64_t*>(h + offset + align8(count * row_bytes));
  s.mapping_ = std::move(mapping);
  return s;
}

}  // namespace assocmem
