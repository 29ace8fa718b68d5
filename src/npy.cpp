// numpy .npy reading and writing.
#include "assocmem/npy.hpp"

#include <unistd.h>

#include <cctype>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>

#include "assocmem/io.hpp"

namespace assocmem {

namespace {

// numpy's header is a Python dict literal with exactly the keys descr, fortran_order and shape, e.g.
// {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }. This parser accepts that grammar and
// nothing looser (no "(1 0, 8)", no "Falsey").
struct Header {
  std::string descr;
  bool fortran = false;
  std::vector<std::size_t> shape;
};

class HeaderParser {
 public:
  explicit HeaderParser(const std::string& h) : h_(h) {}
  // Returns an empty string on success, else what is wrong.
  std::string parse(Header& out) {
    bool have_descr = false, have_order = false, have_shape = false;
    skip();
    if (!eat('{')) return "the header is not a dict";
    for (;;) {
      skip();
      if (eat('}')) break;
      std::string key;
      if (!string(key)) return "the header has an invalid key";
      skip();
      if (!eat(':')) return "the header has no ':' after '" + key + "'";
      skip();
      if (key == "descr") {
        if (have_descr || !string(out.descr)) return "the header has an invalid 'descr'";
        have_descr = true;
      } else if (key == "fortran_order") {
        if (have_order) return "the header repeats 'fortran_order'";
        if (word("True")) out.fortran = true;
        else if (word("False")) out.fortran = false;
        else return "the header has an invalid 'fortran_order'";
        have_order = true;
      } else if (key == "shape") {
        if (have_shape || !tuple(out.shape)) return "the header has an invalid 'shape'";
        have_shape = true;
      } else {
        return "the header has an unknown key '" + key + "'";
      }
      skip();
      if (eat(',')) continue;
      skip();
      if (eat('}')) break;
      return "the header dict is malformed";
    }
    skip();
    if (i_ != h_.size()) return "the header has text after the dict";
    if (!have_descr) return "the header has no 'descr'";
    if (!have_order) return "the header has no 'fortran_order'";
    if (!have_shape) return "the header has no 'shape'";
    return "";
  }

 private:
  void skip() {
    while (i_ < h_.size() && (h_[i_] == ' ' || h_[i_] == '\t' || h_[i_] == '\n' || h_[i_] == '\r')) ++i_;
  }
  bool eat(char c) {
    if (i_ < h_.size() && h_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  bool string(std::string& out) {
    if (i_ >= h_.size() || (h_[i_] != '\'' && h_[i_] != '"')) return false;
    const char q = h_[i_++];
    const std::size_t end = h_.find(q, i_);
    if (end == std::string::npos) return false;
    out = h_.substr(i_, end - i_);
    i_ = end + 1;
    return true;
  }
  bool word(const char* w) {  // a bare word followed by a delimiter
    const std::size_t n = std::strlen(w);
    if (h_.compare(i_, n, w) != 0) return false;
    const std::size_t j = i_ + n;
    if (j < h_.size() && (std::isalnum(static_cast<unsigned char>(h_[j])) || h_[j] == '_')) return false;
    i_ = j;
    return true;
  }
  bool tuple(std::vector<std::size_t>& out) {
    if (!eat('(')) return false;
    for (;;) {
      skip();
      if (eat(')')) return true;
      std::size_t digits = 0, value = 0;
      while (i_ < h_.size() && h_[i_] >= '0' && h_[i_] <= '9') {
        if (++digits > 18) return false;
        value = value * 10 + static_cast<std::size_t>(h_[i_++] - '0');
      }
      if (digits == 0) return false;
      if (i_ < h_.size() && h_[i_] == 'L') ++i_;  // Python 2 long
      out.push_back(value);
      skip();
      if (eat(',')) continue;
      skip();
      if (eat(')')) return out.size() != 1;  // "(5)" is an int in Python; a 1-tuple is "(5,)"
      return false;
    }
  }
  const std::string& h_;
  std::size_t i_ = 0;
};

std::size_t elem_size(NpyType t) {
  switch (t) {
    case NpyType::Float64:
    case NpyType::Int64:
    case NpyType::UInt64: return 8;
    case NpyType::Float32:
    case NpyType::Int32:
    case NpyType::UInt32: return 4;
    case NpyType::Float16:
    case NpyType::Int16:
    case NpyType::UInt16: return 2;
    default: return 1;
  }
}

// IEEE half to double (exact: every half is a double).
double half_to_double(std::uint16_t h) {
  const int exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
  const double sign = (h & 0x8000) ? -1.0 : 1.0;
  if (exp == 0) return sign * std::ldexp(double(mant), -24);  // subnormal (or zero)
  if (exp == 31) return mant ? std::numeric_limits<double>::quiet_NaN() : sign * std::numeric_limits<double>::infinity();
  return sign * std::ldexp(double(mant | 0x400), exp - 25);
}

// Element i of any supported type, as a double (the one conversion of every reader): exact for every
// type but 64-bit integers beyond 2^53, which round to the nearest double.
double element(const NpyArray& a, std::size_t i) {
  const std::uint8_t* p = &a.bytes[elem_size(a.type) * i];
  auto get = [&](auto v) {
    std::memcpy(&v, p, sizeof v);
    return v;
  };
  switch (a.type) {
    case NpyType::Float32: return get(float{});
    case NpyType::Float64: return get(double{});
    case NpyType::Float16: return half_to_double(get(std::uint16_t{}));
    case NpyType::Int8: return get(std::int8_t{});
    case NpyType::Int16: return get(std::int16_t{});
    case NpyType::Int32: return get(std::int32_t{});
    case NpyType::Int64: return double(get(std::int64_t{}));
    case NpyType::UInt8:
    case NpyType::Bool: return get(std::uint8_t{});
    case NpyType::UInt16: return get(std::uint16_t{});
    case NpyType::UInt32: return get(std::uint32_t{});
    case NpyType::UInt64: return double(get(std::uint64_t{}));
  }
  return 0.0;
}

const char* descr(NpyType t) {
  switch (t) {
    case NpyType::Float32: return "<f4";
    case NpyType::Float64: return "<f8";
    case NpyType::Int8: return "|i1";
    case NpyType::UInt8: return "|u1";
    case NpyType::Bool: return "|b1";
    case NpyType::Float16: return "<f2";
    case NpyType::Int16: return "<i2";
    case NpyType::Int32: return "<i4";
    case NpyType::Int64: return "<i8";
    case NpyType::UInt16: return "<u2";
    case NpyType::UInt32: return "<u4";
    case NpyType::UInt64: return "<u8";
  }
  return "?";
}

void write_any(const std::string& path, const void* data, NpyType t, std::size_t rows, std::size_t cols, bool as_1d) {
  ASSOCMEM_CHECK_ARG(!as_1d || rows == 1, "write_npy: a 1-D array must have one row, got ", rows);
  std::string shape = as_1d ? detail::concat("(", cols, ",)") : detail::concat("(", rows, ", ", cols, ")");
  std::string dict = std::string("{'descr': '") + descr(t) + "', 'fortran_order': False, 'shape': " + shape + ", }";
  // Version 1.0: magic (6) + version (2) + header length (2) + dict padded with spaces and '\n' to 64.
  std::size_t total = 10 + dict.size() + 1;
  dict.append((64 - total % 64) % 64, ' ');
  dict.push_back('\n');
  ASSOCMEM_CHECK_ARG(dict.size() <= 65535, "write_npy: header too long");
  std::string head = "\x93NUMPY";
  head.push_back('\x01');
  head.push_back('\x00');
  const auto hl = static_cast<std::uint16_t>(dict.size());
  head.push_back(static_cast<char>(hl & 0xFF));
  head.push_back(static_cast<char>(hl >> 8));
  head += dict;
  const std::size_t n = checked_mul(checked_mul(rows, cols, "write_npy: shape"), elem_size(t), "write_npy: bytes");
  write_file_atomically(path, {{head.data(), head.size()}, {data, n}});
}

}  // namespace

NpyArray read_npy(const std::string& path) {
  auto bad = [&](const std::string& why) { return IoError("cannot read '" + path + "': " + why); };
  const InputFile in(path, ".npy file");  // regular files only; a FIFO does not block
  if (in.size() < 10) throw bad("not a .npy file (too short)");
  unsigned char magic[12];
  in.read_at(0, magic, 8);
  if (std::memcmp(magic, "\x93NUMPY", 6) != 0) throw bad("not a .npy file (bad magic)");
  const int major = magic[6];
  std::size_t header_len = 0, pos = 0;
  if (major == 1) {
    in.read_at(8, magic + 8, 2);
    header_len = magic[8] | (std::size_t{magic[9]} << 8);
    pos = 10;
  } else if (major == 2 || major == 3) {
    if (in.size() < 12) throw bad("truncated header");
    in.read_at(8, magic + 8, 4);
    header_len = magic[8] | (std::size_t{magic[9]} << 8) | (std::size_t{magic[10]} << 16) | (std::size_t{magic[11]} << 24);
    pos = 12;
  } else {
    throw bad(detail::concat("unsupported .npy format version ", major));
  }
  if (header_len > (1u << 20)) throw bad("header too long");
  if (in.size() < pos + header_len) throw bad("truncated header");
  std::string header(header_len, '\0');
  in.read_at(pos, header.data(), header_len);
  pos += header_len;

  Header hd;
  const std::string problem = HeaderParser(header).parse(hd);
  if (!problem.empty()) throw bad(problem);
  NpyArray a;
  a.path = path;
  const std::string& d = hd.descr;
  if (d == "<f4") a.type = NpyType::Float32;
  else if (d == "<f8") a.type = NpyType::Float64;
  else if (d == "<f2") a.type = NpyType::Float16;
  else if (d == "|i1" || d == "<i1" || d == "i1") a.type = NpyType::Int8;
  else if (d == "|u1" || d == "<u1" || d == "u1") a.type = NpyType::UInt8;
  else if (d == "|b1" || d == "b1") a.type = NpyType::Bool;
  else if (d == "<i2") a.type = NpyType::Int16;
  else if (d == "<i4") a.type = NpyType::Int32;
  else if (d == "<i8") a.type = NpyType::Int64;
  else if (d == "<u2") a.type = NpyType::UInt16;
  else if (d == "<u4") a.type = NpyType::UInt32;
  else if (d == "<u8") a.type = NpyType::UInt64;
  else
    throw bad("unsupported dtype '" + d + "' (supported: little-endian float16/32/64, int8/16/32/64, uint8/16/32/64 "
              "and bool; complex, strings and dates are not numbers we can store)");
  if (hd.fortran) throw bad("Fortran-order arrays are not supported; save with numpy.ascontiguousarray");
  if (hd.shape.size() == 1) {
    a.rows = 1;
    a.cols = hd.shape[0];
    a.was_1d = true;
  } else if (hd.shape.size() == 2) {
    a.rows = hd.shape[0];
    a.cols = hd.shape[1];
  } else {
    throw bad(detail::concat("expected a 1-D or 2-D array, got ", hd.shape.size(), " dimensions"));
  }
  const std::size_t es = elem_size(a.type);
  std::size_t n = 0;
  if (__builtin_mul_overflow(a.rows, a.cols, &n) || __builtin_mul_overflow(n, es, &n))
    throw bad(detail::concat("shape (", a.rows, ", ", a.cols, ") is too large"));
  if (in.size() - pos < n)
    throw bad(detail::concat("truncated data: expected ", n, " bytes, file has ", in.size() - pos));
  try {
    check_fits_in_memory(n, "the data");
  } catch (const InvalidArgument& e) {
    throw bad(e.what());
  }
  try {
    a.bytes.resize(n);
  } catch (const std::bad_alloc&) {
    throw bad(detail::concat("out of memory reading ", n, " bytes of data"));
  }
  in.read_at(pos, a.bytes.data(), n);
  return a;
}

std::vector<float> NpyArray::to_float32() const {
  const std::size_t n = rows * cols;
  std::vector<float> out(n);
  for (std::size_t i = 0; i < n; ++i) {
    const double v = element(*this, i);
    out[i] = static_cast<float>(v);
    ASSOCMEM_CHECK_ARG(!std::isfinite(v) || std::isfinite(out[i]), "'", path, "': row ", i / cols, " element ",
                       i % cols, " = ", v, " does not fit in float32 (largest 3.4028e38)");
  }
  return out;
}

Matrix NpyArray::to_matrix() const {
  Matrix m(static_cast<Eigen::Index>(rows), static_cast<Eigen::Index>(cols));
  for (std::size_t i = 0; i < rows * cols; ++i) m.data()[i] = element(*this, i);
  return m;
}

void write_npy(const std::string& path, const float* data, std::size_t rows, std::size_t cols, bool as_1d) {
  write_any(path, data, NpyType::Float32, rows, cols, as_1d);
}
void write_npy(const std::string& path, const double* data, std::size_t rows, std::size_t cols, bool as_1d) {
  write_any(path, data, NpyType::Float64, rows, cols, as_1d);
}
void write_npy(const std::string& path, const std::int8_t* data, std::size_t rows, std::size_t cols, bool as_1d) {
  write_any(path, data, NpyType::Int8, rows, cols, as_1d);
}
void write_npy(const std::string& path, const Matrix& m) {
  write_any(path, m.data(), NpyType::Float64, static_cast<std::size_t>(m.rows()), static_cast<std::size_t>(m.cols()),
            false);
}

}  // namespace assocmem
