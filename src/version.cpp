// The library's version, from project(VERSION) (cmake/version.hpp.in).
#include "assocmem/version.hpp"

namespace assocmem {
const char* version() { return ASSOCMEM_VERSION; }
}  // namespace assocmem
