// Internal: little-endian fields of the file formats (store.hpp, codes.hpp), read and written byte-wise.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace assocmem::detail {

inline std::size_t align8(std::size_t x) { return (x + 7) & ~std::size_t{7}; }

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

}  // namespace assocmem::detail
