// numpy .npy reading and writing.
#include "assocmem/npy.hpp"

#include <cstring>
#include <fstream>
#include <limits>

#include "assocmem/store.hpp"  // write_file_atomically

namespace assocmem {

namespace {

// The value after 'key': in numpy's header dict, or npos. (A small parser: the header is a Python
// dict literal with the three keys descr, fortran_order and shape.)
std::size_t value_start(const std::string& h, const std::string& key) {
  const std::size_t k = h.find("'" + key + "'");
  if (k == std::string::npos) return std::string::npos;
  const std::size_t colon = h.find(':', k);
  if (colon == std::string::npos) return std::string::npos;
  return h.find_first_not_of(" \t", colon + 1);
}

std::size_t elem_size(NpyType t) { return t == NpyType::Float64 ? 8 : (t == NpyType::Float32 ? 4 : 1); }

const char* descr(NpyType t) {
  switch (t) {
    case NpyType::Float32: return "<f4";
    case NpyType::Float64: return "<f8";
    case NpyType::Int8: return "|i1";
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
  write_file_atomically(path, {{head.data(), head.size()}, {data, rows * cols * elem_size(t)}});
}

}  // namespace

NpyArray read_npy(const std::string& path) {
  auto bad = [&](const std::string& why) { return IoError("cannot read '" + path + "': " + why); };
  std::ifstream in(path, std::ios::binary);
  if (!in) throw bad(std::strerror(errno));
  char magic[8];
  if (!in.read(magic, 8)) throw bad("not a .npy file (too short)");
  if (std::memcmp(magic, "\x93NUMPY", 6) != 0) throw bad("not a .npy file (bad magic)");
  const int major = static_cast<unsigned char>(magic[6]);
  std::size_t header_len = 0;
  if (major == 1) {
    unsigned char b[2];
    if (!in.read(reinterpret_cast<char*>(b), 2)) throw bad("truncated header");
    header_len = b[0] | (std::size_t{b[1]} << 8);
  } else if (major == 2 || major == 3) {
    unsigned char b[4];
    if (!in.read(reinterpret_cast<char*>(b), 4)) throw bad("truncated header");
    header_len = b[0] | (std::size_t{b[1]} << 8) | (std::size_t{b[2]} << 16) | (std::size_t{b[3]} << 24);
  } else {
    throw bad(detail::concat("unsupported .npy format version ", major));
  }
  if (header_len > (1u << 20)) throw bad("header too long");
  std::string header(header_len, '\0');
  if (!in.read(header.data(), static_cast<std::streamsize>(header_len))) throw bad("truncated header");

  NpyArray a;
  std::size_t p = value_start(header, "descr");
  if (p == std::string::npos || header[p] != '\'') throw bad("header has no 'descr'");
  const std::size_t q = header.find('\'', p + 1);
  if (q == std::string::npos) throw bad("header has no 'descr'");
  const std::string d = header.substr(p + 1, q - p - 1);
  if (d == "<f4") a.type = NpyType::Float32;
  else if (d == "<f8") a.type = NpyType::Float64;
  else if (d == "|i1" || d == "<i1" || d == "i1") a.type = NpyType::Int8;
  else throw bad("unsupported dtype '" + d + "' (supported: float32 '<f4', float64 '<f8', int8 '|i1')");
  p = value_start(header, "fortran_order");
  if (p == std::string::npos) throw bad("header has no 'fortran_order'");
  if (header.compare(p, 4, "True") == 0) throw bad("Fortran-order arrays are not supported; save with numpy.ascontiguousarray");
  if (header.compare(p, 5, "False") != 0) throw bad("header has an invalid 'fortran_order'");
  p = value_start(header, "shape");
  if (p == std::string::npos || header[p] != '(') throw bad("header has no 'shape'");
  const std::size_t close = header.find(')', p);
  if (close == std::string::npos) throw bad("header has an invalid 'shape'");
  std::vector<std::size_t> shape;
  std::size_t digits = 0;
  std::size_t value = 0;
  for (std::size_t i = p + 1; i <= close; ++i) {
    const char ch = header[i];
    if (ch >= '0' && ch <= '9') {
      if (++digits > 15) throw bad("shape too large");
      value = value * 10 + static_cast<std::size_t>(ch - '0');
    } else if (ch == ',' || ch == ')') {
      if (digits) shape.push_back(value);
      else if (ch == ',') throw bad("header has an invalid 'shape'");
      digits = 0;
      value = 0;
    } else if (ch != ' ' && ch != 'L') {
      throw bad("header has an invalid 'shape'");
    }
  }
  if (shape.size() == 1) {
    a.rows = 1;
    a.cols = shape[0];
    a.was_1d = true;
  } else if (shape.size() == 2) {
    a.rows = shape[0];
    a.cols = shape[1];
  } else {
    throw bad(detail::concat("expected a 1-D or 2-D array, got ", shape.size(), " dimensions"));
  }
  const std::size_t es = elem_size(a.type);
  if (a.cols != 0 && a.rows > std::numeric_limits<std::size_t>::max() / a.cols / es) throw bad("shape too large");
  const std::size_t n = a.rows * a.cols * es;
  const auto data_start = in.tellg();
  in.seekg(0, std::ios::end);
  const auto end = in.tellg();
  if (end - data_start < static_cast<std::streamoff>(n))
    throw bad(detail::concat("truncated data: expected ", n, " bytes, file has ", end - data_start));
  in.seekg(data_start);
  a.bytes.resize(n);
  if (n && !in.read(reinterpret_cast<char*>(a.bytes.data()), static_cast<std::streamsize>(n))) throw bad("read failed");
  return a;
}

std::vector<float> NpyArray::to_float32() const {
  const std::size_t n = rows * cols;
  std::vector<float> out(n);
  for (std::size_t i = 0; i < n; ++i) {
    switch (type) {
      case NpyType::Float32: std::memcpy(&out[i], &bytes[4 * i], 4); break;
      case NpyType::Float64: {
        double v;
        std::memcpy(&v, &bytes[8 * i], 8);
        out[i] = static_cast<float>(v);
        break;
      }
      case NpyType::Int8: out[i] = static_cast<std::int8_t>(bytes[i]); break;
    }
  }
  return out;
}

Matrix NpyArray::to_matrix() const {
  Matrix m(static_cast<Eigen::Index>(rows), static_cast<Eigen::Index>(cols));
  for (std::size_t i = 0; i < rows * cols; ++i) {
    double v = 0;
    switch (type) {
      case NpyType::Float32: {
        float f;
        std::memcpy(&f, &bytes[4 * i], 4);
        v = f;
        break;
      }
      case NpyType::Float64: std::memcpy(&v, &bytes[8 * i], 8); break;
      case NpyType::Int8: v = static_cast<std::int8_t>(bytes[i]); break;
    }
    m.data()[i] = v;
  }
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
