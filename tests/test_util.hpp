// Shared helpers for the C++ tests: seeded random data and message-checking throws.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "assocmem/error.hpp"
#include "assocmem/types.hpp"

namespace assocmem::testing {

inline Vector randn(Eigen::Index n, std::mt19937_64& rng, double scale = 1.0) {
  std::normal_distribution<double> d(0.0, scale);
  Vector x(n);
  for (Eigen::Index i = 0; i < n; ++i) x[i] = d(rng);
  return x;
}

inline Matrix randn(Eigen::Index rows, Eigen::Index cols, std::mt19937_64& rng, double scale = 1.0) {
  std::normal_distribution<double> d(0.0, scale);
  Matrix m(rows, cols);
  for (Eigen::Index i = 0; i < rows; ++i)
    for (Eigen::Index j = 0; j < cols; ++j) m(i, j) = d(rng);
  return m;
}

/// A matrix as row-major float32 (the engines' queries).
inline std::vector<float> to_f32(const Matrix& m) {
  std::vector<float> out(static_cast<std::size_t>(m.size()));
  for (Eigen::Index i = 0; i < m.rows(); ++i)
    for (Eigen::Index j = 0; j < m.cols(); ++j) out[static_cast<std::size_t>(i * m.cols() + j)] = static_cast<float>(m(i, j));
  return out;
}

/// The rows scaled to unit length.
inline Matrix unit_rows(Matrix m) {
  m.rowwise().normalize();
  return m;
}

/// Random +-1 matrix (K x N).
inline Matrix rand_pm1(Eigen::Index rows, Eigen::Index cols, std::mt19937_64& rng) {
  std::bernoulli_distribution b(0.5);
  Matrix m(rows, cols);
  for (Eigen::Index i = 0; i < rows; ++i)
    for (Eigen::Index j = 0; j < cols; ++j) m(i, j) = b(rng) ? 1.0 : -1.0;
  return m;
}

/// Flips each of `count` distinct random entries of a +-1 vector.
inline Vector flip_bits(Vector s, int count, std::mt19937_64& rng) {
  std::vector<Eigen::Index> idx(static_cast<size_t>(s.size()));
  for (Eigen::Index i = 0; i < s.size(); ++i) idx[static_cast<size_t>(i)] = i;
  std::shuffle(idx.begin(), idx.end(), rng);
  for (int k = 0; k < count; ++k) s[idx[static_cast<size_t>(k)]] *= -1.0;
  return s;
}

/// A fresh folder under the temporary directory, removed with its contents.
class TempDir {
 public:
  TempDir() {
    std::string t = (std::filesystem::temp_directory_path() / "assocmem_test_XXXXXX").string();
    path_ = mkdtemp(t.data());
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return (std::filesystem::path(path_) / name).string(); }

 private:
  std::string path_;
};

inline std::vector<char> read_all(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
inline void write_all(const std::string& p, const std::vector<char>& b) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(b.data(), static_cast<std::streamsize>(b.size()));
}

}  // namespace assocmem::testing

/// Expects `stmt` to throw `type` whose what() contains `needle`.
#define EXPECT_THROW_MSG(stmt, type, needle)                                                   \
  do {                                                                                         \
    try {                                                                                      \
      stmt;                                                                                    \
      ADD_FAILURE() << "expected " #type " containing '" << (needle) << "' from: " #stmt;      \
    } catch (const type& e) {                                                                  \
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)                         \
          << "message '" << e.what() << "' does not mention '" << (needle) << "'";             \
    } catch (const std::exception& e) {                                                        \
      ADD_FAILURE() << "expected " #type ", got another exception: " << e.what();              \
    }                                                                                          \
  } while (0)
