// assocmem/npy.hpp - reading and writing numpy .npy files (format versions 1.0, 2.0, 3.0).
//
// Reads little-endian float32 ('<f4'), float64 ('<f8'), int8 ('|i1'), uint8 ('|u1') and bool ('|b1') arrays in C order with 1 or 2
// dimensions; writes float32, float64 and int8 atomically. Errors name the file and the problem.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "assocmem/error.hpp"
#include "assocmem/types.hpp"

namespace assocmem {

enum class NpyType { Float32, Float64, Int8, UInt8, Bool, Float16, Int16, Int32, Int64, UInt16, UInt32, UInt64 };

/// A 2-D array read from a .npy file (a 1-D file of shape (d,) reads as 1 x d, with `was_1d`).
struct NpyArray {
  NpyType type = NpyType::Float32;
  std::size_t rows = 0, cols = 0;
  bool was_1d = false;
  std::string path;                 ///< the file it was read from (for messages)
  std::vector<std::uint8_t> bytes;  ///< rows * cols elements, C order

  /// The values converted to float32 / double (row-major). to_float32 throws InvalidArgument for a
  /// finite float64 that overflows float32 (naming the file, row and element).
  std::vector<float> to_float32() const;
  Matrix to_matrix() const;
};

/// Throws IoError (unreadable or special file, not a .npy, malformed header, unsupported dtype or
/// order, truncated, larger than memory).
NpyArray read_npy(const std::string& path);

/// Writes a rows x cols C-order array atomically.
void write_npy(const std::string& path, const float* data, std::size_t rows, std::size_t cols, bool as_1d = false);
void write_npy(const std::string& path, const double* data, std::size_t rows, std::size_t cols, bool as_1d = false);
void write_npy(const std::string& path, const std::int8_t* data, std::size_t rows, std::size_t cols, bool as_1d = false);
/// A double matrix as float64.
void write_npy(const std::string& path, const Matrix& m);

}  // namespace assocmem
