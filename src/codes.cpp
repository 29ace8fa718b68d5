// Int8 codes of a store with certified error bounds, and their file (codes.hpp).
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
constexpr std::uint32_t kInt8 = 1;



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

}  // namespace

CodeIndex CodeIndex::build(const MemoryStore& store, int threads) {
  ASSOCMEM_CHECK_ARG(store.dtype() != DType::Bits, "codes: a store of bits (+-1 patterns, model A) has no int8 codes; "
                                                   "certified retrieval is for models B and C over float32 or bfloat16");
  CodeIndex c;
  c.count_ = store.size();
  c.dim_ = store.dim();
  c.dtype_ = store.dtype();
  const std::size_t K = c.count_, d = c.dim_;
  ASSOCMEM_CHECK_ARG(d <= 65535, "codes: dimension ", d, " is above 65535 (the screen's exact int32 sums)");
  c.codes_.resize(checked_mul(K, d, "codes: K x d"));
  c.scale_.resize(K);
  c.error_.resize(K);
  std::vector<double> norms(K);
  detail::parallel_chunks(K, detail::resolve_threads(threads), [&](std::size_t, std::size_t b, std::size_t e) {
    std::vector<float> x(d);
    for (std::size_t mu = b; mu < e; ++mu) {
      store.decode_row(mu, x.data());
      float amax = 0;
      for (float v : x) amax = std::max(amax, std::fabs(v));
      const float s = amax / 127.0f;
      std::int8_t* code = reinterpret_cast<std::int8_t*>(c.codes_.data()) + mu * d;
      // s * c is exact in double (24-bit times 8-bit significands), so is x - s c: the sums of
      // squares carry only their own rounding, (d + 1) 2^-53 relative, covered by the margin below.
      double r2 = 0, n2 = 0;
      for (std::size_t j = 0; j < d; ++j) {
        const float q = s > 0 ? std::nearbyint(x[j] / s) : 0.0f;
        code[j] = static_cast<std::int8_t>(std::clamp(q, -127.0f, 127.0f));
        const double rest = double(x[j]) - double(s) * double(code[j]);
        r2 += rest * rest;
        n2 += double(x[j]) * double(x[j]);
      }
      const double margin = 1.0 + 4.0 * double(d + 2) * 0x1p-53;
      c.scale_[mu] = s;
      c.error_[mu] = float_up(std::sqrt(r2) * margin);
      norms[mu] = std::sqrt(n2) * margin;
    }
  });
  double R = 0;
  for (double n : norms) R = std::max(R, n);
  c.max_norm_ = float_up(R);
  c.rows_hash_ = hash_rows(store);
  c.sum_codes();
  return c;
}

void CodeIndex::sum_codes() {
  csum_.resize(count_);
  for (std::size_t mu = 0; mu < count_; ++mu) {
    std::int32_t t = 0;
    for (std::size_t j = 0; j < dim_; ++j) t += codes()[mu * dim_ + j];
    csum_[mu] = t;
  }
}

bool CodeIndex::matches(const MemoryStore& store) const {
  return store.size() == count_ && store.dim() == dim_ && store.dtype() == dtype_ && hash_rows(store) == rows_hash_;
}

void CodeIndex::save(const std::string& path) const {
  const std::size_t codes_len = codes_.size(), pad = align8(codes_len) - codes_len;
  const std::size_t payload = align8(codes_len) + 8 * count_;
  const std::uint64_t zeros = 0;
  XXH64_state_t* st = XXH64_createState();
  if (!st) throw Error("codes: out of memory");
  XXH64_reset(st, 0);
  XXH64_update(st, codes_.data(), codes_len);
  XXH64_update(st, &zeros, pad);
  XXH64_update(st, scale_.data(), 4 * count_);
  XXH64_update(st, error_.data(), 4 * count_);
  const std::uint64_t payload_hash = XXH64_digest(st);
  XXH64_freeState(st);
  std::vector<std::uint8_t> h(kPayloadOffset, 0);
  std::memcpy(h.data(), kMagic, 8);
  put<std::uint32_t>(&h[8], kFormatVersion);
  put<std::uint32_t>(&h[12], kInt8);
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
                               {codes_.data(), codes_len},
                               {&zeros, pad},
                               {scale_.data(), 4 * count_},
                               {error_.data(), 4 * count_}});
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
  if (version != kFormatVersion)
    throw bad(detail::concat("format version ", version, " is not supported (this build reads version ", kFormatVersion,
                             ")"));
  if (get<std::uint64_t>(h + 72) != XXH64(h, 72, 0)) throw bad("header checksum mismatch (corrupted header)");
  if (get<std::uint32_t>(h + 12) != kInt8) throw bad(detail::concat("unknown kind ", get<std::uint32_t>(h + 12)));
  CodeIndex c;
  c.count_ = get<std::uint64_t>(h + 16);
  c.dim_ = get<std::uint64_t>(h + 24);
  c.rows_hash_ = get<std::uint64_t>(h + 32);
  const auto dtype = get<std::uint32_t>(h + 40);
  c.max_norm_ = get<float>(h + 44);
  if (get<std::uint64_t>(h + 48) != kPayloadOffset) throw bad("invalid payload offset");
  if (c.dim_ == 0 || c.dim_ > 65535 || c.count_ > kMaxStorePayload / (c.dim_ + 8))
    throw bad(detail::concat("invalid shape ", c.count_, " x ", c.dim_));
  const std::size_t codes_len = c.count_ * c.dim_, payload = align8(codes_len) + 8 * c.count_;
  if (get<std::uint64_t>(h + 56) != payload) throw bad("payload size does not match the shape");
  if (file.size() != kPayloadOffset + payload)
    throw bad(detail::concat(file.size() < kPayloadOffset + payload ? "truncated" : "trailing bytes", ": file has ",
                             file.size(), " bytes, expected ", kPayloadOffset + payload));
  // Whose codes: checked before reading the payload.
  if (c.count_ != store.size() || c.dim_ != store.dim() || dtype != static_cast<std::uint32_t>(store.dtype()))
    throw bad(detail::concat("they belong to a store of ", c.count_, " memories of dimension ", c.dim_, ", not to '",
                             store.source().empty() ? std::string("this store") : store.source(), "' (", store.size(),
                             " x ", store.dim(), " ", to_string(store.dtype()), "); rebuild them (assocmem index)"));
  if (hash_rows(store) != c.rows_hash_)
    throw bad("they belong to another store of the same shape (the rows' checksum differs); rebuild them "
              "(assocmem index)");
  if (!(std::isfinite(c.max_norm_) && c.max_norm_ >= 0)) throw bad("invalid norm bound");
  check_fits_in_memory(payload, "codes");
  c.dtype_ = store.dtype();
  c.codes_.resize(codes_len);
  c.scale_.resize(c.count_);
  c.error_.resize(c.count_);
  file.read_at(kPayloadOffset, c.codes_.data(), codes_len);
  file.read_at(kPayloadOffset + align8(codes_len), c.scale_.data(), 4 * c.count_);
  file.read_at(kPayloadOffset + align8(codes_len) + 4 * c.count_, c.error_.data(), 4 * c.count_);
  XXH64_state_t* st = XXH64_createState();
  if (!st) throw Error("codes: out of memory");
  std::uint64_t pad = 0;  // the padding as it is in the file: a flipped bit there is corruption too
  file.read_at(kPayloadOffset + codes_len, &pad, align8(codes_len) - codes_len);
  XXH64_reset(st, 0);
  XXH64_update(st, c.codes_.data(), codes_len);
  XXH64_update(st, &pad, align8(codes_len) - codes_len);
  XXH64_update(st, c.scale_.data(), 4 * c.count_);
  XXH64_update(st, c.error_.data(), 4 * c.count_);
  const std::uint64_t got = XXH64_digest(st);
  XXH64_freeState(st);
  if (got != get<std::uint64_t>(h + 64)) throw bad("payload checksum mismatch (corrupted codes)");
  for (std::size_t mu = 0; mu < c.count_; ++mu)
    if (!(std::isfinite(c.scale_[mu]) && c.scale_[mu] >= 0 && std::isfinite(c.error_[mu]) && c.error_[mu] >= 0))
      throw bad(detail::concat("invalid scale or bound of memory ", mu));
  c.sum_codes();
  return c;
}

}  // namespace assocmem
