// Int8 codes of a store in two 4-bit levels with certified error bounds, and their file (codes.hpp).
#include "assocmem/codes.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include <xxhash.h>

#include "assocmem/io.hpp"
#include "bytes.hpp"
#include "parallel.hpp"

namespace assocmem {

namespace {

using detail::align8;
using detail::get;
using detail::put;

constexpr char kMagic[8] = {'A', 'S', 'M', 'C', 'O', 'D', 'E', 'S'};
constexpr std::size_t kHeaderBytes = 80;
constexpr std::size_t kPayloadOffset = 4096;
constexpr std::uint32_t kInt8V1 = 1;    // format 1: codes in [-127, 127], a scale and a bound per memory
constexpr std::uint32_t kInt8Split = 2;  // format 2: codes in [-119, 119], and the coarse level's bound
constexpr std::size_t kGroupBytes = 64;

// The smallest float >= x (x >= 0, finite): bounds stay bounds after rounding to float.
float float_up(double x) {
  float f = static_cast<float>(x);
  if (static_cast<double>(f) < x) f = std::nextafter(f, std::numeric_limits<float>::infinity());
  return f;
}

std::uint64_t hash_rows(const MemoryStore& store) {
  const std::uint64_t h = XXH64(store.data(), store.size() * store.row_bytes(), 0);
  store.check_intact();
  return h;
}

// The coarse level of code c: h = floor((c + 8) / 16), so that l = c - 16 h is in [-8, 7].
int coarse_of(int c) { return (c + 8) >> 4; }

// What the codes of one memory leave out: e >= ||x - s c||_2, e1 >= ||x - 16 s h||_2, and a bound on
// ||x||_2, for the memory's decoded row x, its scale s and codes c (code(j)). The one formula of the
// bounds: build() stores them, open() checks a file's against them.
// s * c and 16 s h are exact in double (24-bit times 8-bit significands), so are x - s c and x - 16 s h:
// the sums of squares carry only their own rounding, (d + 1) 2^-53 relative, covered by the margin.
struct MemoryBounds {
  float error, coarse;
  double norm;
};
template <class CodeFn>
MemoryBounds bounds_of(const float* x, std::size_t d, float s, CodeFn&& code) {
  double r2 = 0, r1 = 0, n2 = 0;
  for (std::size_t j = 0; j < d; ++j) {
    const int c = code(j);
    const double rest = double(x[j]) - double(s) * c;
    const double coarse = double(x[j]) - 16.0 * double(s) * coarse_of(c);
    r2 += rest * rest;
    r1 += coarse * coarse;
    n2 += double(x[j]) * double(x[j]);
  }
  const double margin = 1.0 + 4.0 * double(d + 2) * 0x1p-53;
  return {float_up(std::sqrt(r2) * margin), float_up(std::sqrt(r1) * margin), std::sqrt(n2) * margin};
}

}  // namespace

void CodeIndex::allocate(std::size_t K, std::size_t d) {
  count_ = K;
  dim_ = d;
  const std::size_t blocks = (K + kBlockRows - 1) / kBlockRows;
  const std::size_t bytes = checked_mul(checked_mul(blocks, groups(), "codes: blocks x groups"), kGroupBytes, "codes");
  high_.resize(bytes);
  low_.resize(bytes);
  std::memset(high_.data(), 0x88, bytes);  // 8 in both nibbles: code 0 (padding dimensions and memories)
  std::memset(low_.data(), 0x88, bytes);
  scale_.assign(K, 0.0f);
  error_.assign(K, 0.0f);
  coarse_.assign(K, 0.0f);
}

// Where dimension j of memory mu lies in the planes: byte offset, and 0 (low nibble) or 4 (high).
std::pair<std::size_t, int> CodeIndex::place(std::size_t mu, std::size_t j) const {
  return {(mu / kBlockRows * groups() + j / kGroupDims) * kGroupBytes + 4 * (mu % kBlockRows) + j % 4,
          j % kGroupDims < 4 ? 0 : 4};
}

// Each byte holds two dimensions of one memory, so memories set from different threads touch different bytes.
void CodeIndex::set_code(std::size_t mu, std::size_t j, int c) {
  const int h = coarse_of(c), l = c - 16 * h;
  const auto [off, shift] = place(mu, j);
  const auto keep = static_cast<std::uint8_t>(0xF0 >> shift);
  high_.data()[off] = static_cast<std::uint8_t>((high_.data()[off] & keep) | ((h + 8) << shift));
  low_.data()[off] = static_cast<std::uint8_t>((low_.data()[off] & keep) | ((l + 8) << shift));
}

int CodeIndex::coarse_code(std::size_t mu, std::size_t j) const {
  const auto [off, shift] = place(mu, j);
  return ((high_.data()[off] >> shift) & 15) - 8;
}

int CodeIndex::code(std::size_t mu, std::size_t j) const {
  const auto [off, shift] = place(mu, j);
  return 16 * coarse_code(mu, j) + ((low_.data()[off] >> shift) & 15) - 8;
}

CodeIndex CodeIndex::build(const MemoryStore& store, int threads) {
  ASSOCMEM_CHECK_ARG(store.dtype() != DType::Bits, "codes: a store of bits (+-1 patterns, model A) has no int8 codes; "
                                                   "certified retrieval is for models B and C over float32 or bfloat16");
  const std::size_t K = store.size(), d = store.dim();
  ASSOCMEM_CHECK_ARG(d <= 65535, "codes: dimension ", d, " is above 65535 (the screen's exact int32 sums)");
  CodeIndex c;
  c.dtype_ = store.dtype();
  c.allocate(K, d);
  std::vector<double> norms(K);
  detail::parallel_chunks(K, detail::resolve_threads(threads), [&](std::size_t, std::size_t b, std::size_t e) {
    std::vector<float> x(d);
    for (std::size_t mu = b; mu < e; ++mu) {
      store.decode_row(mu, x.data());
      float amax = 0;
      for (float v : x) amax = std::max(amax, std::fabs(v));
      const float s = amax / float(kCodeMax);
      for (std::size_t j = 0; j < d; ++j) {
        const float q = s > 0 ? std::nearbyint(x[j] / s) : 0.0f;
        c.set_code(mu, j, static_cast<int>(std::clamp(q, -float(kCodeMax), float(kCodeMax))));
      }
      const MemoryBounds mb = bounds_of(x.data(), d, s, [&](std::size_t j) { return c.code(mu, j); });
      c.scale_[mu] = s;
      c.error_[mu] = mb.error;
      c.coarse_[mu] = mb.coarse;
      norms[mu] = mb.norm;
    }
  });
  double R = 0;
  for (double n : norms) R = std::max(R, n);
  c.max_norm_ = float_up(R);
  c.rows_hash_ = hash_rows(store);
  return c;
}

bool CodeIndex::matches(const MemoryStore& store) const {
  return store.size() == count_ && store.dim() == dim_ && store.dtype() == dtype_ && hash_rows(store) == rows_hash_;
}

void CodeIndex::save(const std::string& path) const {
  const std::size_t codes_len = count_ * dim_, pad = align8(codes_len) - codes_len;
  const std::size_t payload = align8(codes_len) + 12 * count_;
  std::vector<std::int8_t> rows(codes_len);  // the file keeps the codes row by row, whatever the planes' layout
  detail::parallel_chunks(count_, detail::resolve_threads(0), [&](std::size_t, std::size_t b, std::size_t e) {
    for (std::size_t mu = b; mu < e; ++mu)
      for (std::size_t j = 0; j < dim_; ++j) rows[mu * dim_ + j] = static_cast<std::int8_t>(code(mu, j));
  });
  const std::uint64_t zeros = 0;
  XXH64_state_t* st = XXH64_createState();
  if (!st) throw Error("codes: out of memory");
  XXH64_reset(st, 0);
  XXH64_update(st, rows.data(), codes_len);
  XXH64_update(st, &zeros, pad);
  XXH64_update(st, scale_.data(), 4 * count_);
  XXH64_update(st, error_.data(), 4 * count_);
  XXH64_update(st, coarse_.data(), 4 * count_);
  const std::uint64_t payload_hash = XXH64_digest(st);
  XXH64_freeState(st);
  std::vector<std::uint8_t> h(kPayloadOffset, 0);
  std::memcpy(h.data(), kMagic, 8);
  put<std::uint32_t>(&h[8], kFormatVersion);
  put<std::uint32_t>(&h[12], kInt8Split);
  put<std::uint64_t>(&h[16], count_);
  put<std::uint64_t>(&h[24], dim_);
  put<std::uint64_t>(&h[32], rows_hash_);
  put<std::uint32_t>(&h[40], static_cast<std::uint32_t>(dtype_));
  put<float>(&h[44], max_norm_);
  put<std::uint64_t>(&h[48], kPayloadOffset);
  put<std::uint64_t>(&h[56], payload);
  put<std::uint64_t>(&h[64], payload_hash);
  put<std::uint64_t>(&h[72], XXH64(h.data(), 72, 0));
  write_file_atomically(path, {{h.data(), h.size()},
                               {rows.data(), codes_len},
                               {&zeros, pad},
                               {scale_.data(), 4 * count_},
                               {error_.data(), 4 * count_},
                               {coarse_.data(), 4 * count_}});
}

CodeIndex CodeIndex::open(const std::string& path, const MemoryStore& store) {
  auto bad = [&](const std::string& why) { return IoError("cannot open codes '" + path + "': " + why); };
  const InputFile file(path, "codes");
  if (file.size() < kHeaderBytes)
    throw bad(detail::concat("truncated: ", file.size(), " bytes, shorter than the ", kHeaderBytes, "-byte header"));
  std::uint8_t h[kHeaderBytes];
  file.read_at(0, h, kHeaderBytes);
  if (std::memcmp(h, kMagic, 8) != 0) throw bad("not assocmem codes (bad magic)");
  const auto version = get<std::uint32_t>(h + 8);
  if (version != 1 && version != kFormatVersion)
    throw bad(detail::concat("format version ", version, " is not supported (this build reads versions 1 to ",
                             kFormatVersion, ")"));
  if (get<std::uint64_t>(h + 72) != XXH64(h, 72, 0)) throw bad("header checksum mismatch (corrupted header)");
  const auto kind = get<std::uint32_t>(h + 12);
  if (kind != (version == 1 ? kInt8V1 : kInt8Split))
    throw bad(detail::concat("unknown kind ", kind, " for format version ", version));
  const std::size_t K = get<std::uint64_t>(h + 16), d = get<std::uint64_t>(h + 24);
  const std::uint64_t rows_hash = get<std::uint64_t>(h + 32);
  const auto dtype = get<std::uint32_t>(h + 40);
  const float max_norm = get<float>(h + 44);
  if (get<std::uint64_t>(h + 48) != kPayloadOffset) throw bad("invalid payload offset");
  if (d == 0 || d > 65535 || K > kMaxStorePayload / (d + 12)) throw bad(detail::concat("invalid shape ", K, " x ", d));
  const std::size_t floats = version == 1 ? 2 : 3;  // scale, bound (, coarse bound) per memory
  const std::size_t codes_len = K * d, payload = align8(codes_len) + 4 * floats * K;
  if (get<std::uint64_t>(h + 56) != payload) throw bad("payload size does not match the shape");
  if (file.size() != kPayloadOffset + payload)
    throw bad(detail::concat(file.size() < kPayloadOffset + payload ? "truncated" : "trailing bytes", ": file has ",
                             file.size(), " bytes, expected ", kPayloadOffset + payload));
  // Whose codes: checked before reading the payload.
  if (K != store.size() || d != store.dim() || dtype != static_cast<std::uint32_t>(store.dtype()))
    throw bad(detail::concat("they were built for a store of ", K, " x ", d, " ",
                             dtype >= 1 && dtype <= 3 ? to_string(static_cast<DType>(dtype)) : std::string("(unknown dtype)"), ", and '",
                             store.source().empty() ? std::string("this store") : store.source(), "' is ", store.size(),
                             " x ", store.dim(), " ", to_string(store.dtype()),
                             ": the store changed since they were built (or they are another store's); rebuild them "
                             "(assocmem index)"));
  if (hash_rows(store) != rows_hash)
    throw bad("its rows differ from the ones they were built for (the rows' checksum): the store changed since "
              "they were built (or they are another store's); rebuild them (assocmem index)");
  if (!(std::isfinite(max_norm) && max_norm >= 0)) throw bad("invalid norm bound");
  check_fits_in_memory(payload, "codes");
  // The payload as it is in the file (padding included: a flipped bit there is corruption too).
  std::vector<std::int8_t> rows(align8(codes_len));
  std::vector<float> meta(floats * K);
  file.read_at(kPayloadOffset, rows.data(), rows.size());
  file.read_at(kPayloadOffset + rows.size(), meta.data(), 4 * meta.size());
  XXH64_state_t* st = XXH64_createState();
  if (!st) throw Error("codes: out of memory");
  XXH64_reset(st, 0);
  XXH64_update(st, rows.data(), rows.size());
  XXH64_update(st, meta.data(), 4 * meta.size());
  const std::uint64_t got = XXH64_digest(st);
  XXH64_freeState(st);
  if (got != get<std::uint64_t>(h + 64)) throw bad("payload checksum mismatch (corrupted codes)");
  for (std::size_t k = 0; k < meta.size(); ++k)
    if (!(std::isfinite(meta[k]) && meta[k] >= 0))
      throw bad(detail::concat("invalid scale or bound of memory ", k % K));
  if (version == 1) {
    // Codes in [-127, 127] do not split into two 4-bit levels: derived again from the store (whose
    // rows the checks above tied to the file).
    CodeIndex c = build(store);
    c.source_version_ = 1;
    return c;
  }
  for (std::size_t k = 0; k < codes_len; ++k)
    if (rows[k] < -kCodeMax || rows[k] > kCodeMax)
      throw bad(detail::concat("code ", int(rows[k]), " of memory ", k / d, " is outside [-", kCodeMax, ", ", kCodeMax,
                               "]"));
  CodeIndex c;
  c.dtype_ = store.dtype();
  c.rows_hash_ = rows_hash;
  c.max_norm_ = max_norm;
  c.source_version_ = version;
  c.allocate(K, d);
  std::copy(meta.begin(), meta.begin() + K, c.scale_.begin());
  std::copy(meta.begin() + K, meta.begin() + 2 * K, c.error_.begin());
  std::copy(meta.begin() + 2 * K, meta.end(), c.coarse_.begin());
  // The bounds are what a certificate rests on, and a checksum only says the file is as written: each
  // memory's stored bounds and the norm bound R are checked against the store's rows (the same formula
  // as build(); one more pass over the store). Codes and scales may be anything that the bounds then
  // cover: the screen's guarantees need only the bounds.
  std::vector<std::size_t> wrong(static_cast<std::size_t>(detail::resolve_threads(0)), K);
  std::vector<double> norms(K);
  detail::parallel_chunks(K, detail::resolve_threads(0), [&](std::size_t w, std::size_t b, std::size_t e) {
    std::vector<float> x(d);
    for (std::size_t mu = b; mu < e; ++mu) {
      for (std::size_t j = 0; j < d; ++j) c.set_code(mu, j, rows[mu * d + j]);
      store.decode_row(mu, x.data());
      const MemoryBounds mb = bounds_of(x.data(), d, c.scale_[mu], [&](std::size_t j) { return int(rows[mu * d + j]); });
      norms[mu] = mb.norm;
      if (!(c.error_[mu] >= mb.error && c.coarse_[mu] >= mb.coarse)) wrong[w] = std::min(wrong[w], mu);
    }
  });
  store.check_intact();
  const std::size_t first = *std::min_element(wrong.begin(), wrong.end());
  if (first < K)
    throw bad(detail::concat("the stored error bounds of memory ", first, " are below what its codes leave out "
                             "(the file was edited or written by a faulty tool); rebuild them (assocmem index)"));
  const double R = norms.empty() ? 0.0 : *std::max_element(norms.begin(), norms.end());
  if (!(double(max_norm) >= R))
    throw bad(detail::concat("the stored norm bound ", max_norm, " is below the largest memory norm ", R,
                             "; rebuild them (assocmem index)"));
  return c;
}

}  // namespace assocmem
