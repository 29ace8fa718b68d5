// assocmem/error.hpp - the project's exception type and argument checks.
//
// Everything a user can get wrong (shapes, non-finite numbers, out-of-range parameters, a solver that
// cannot finish) throws assocmem::Error with a message that names the parameter and the problem.
// Internal invariants are plain asserts. Nothing a user does may abort the process.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace assocmem {

/// The exception thrown for every error a user can cause. The message names the parameter.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Input that is invalid in itself (a bad shape, NaN, a parameter out of range). Python: ValueError.
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

/// A computation that could not finish as asked (max steps reached, solver failure).
class SolverError : public Error {
 public:
  using Error::Error;
};

/// A file that cannot be read or written, or that is not what it claims to be. Python: OSError.
class IoError : public Error {
 public:
  using Error::Error;
};

namespace detail {
template <class... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  os.precision(17);
  (os << ... << std::forward<Args>(args));
  return os.str();
}
}  // namespace detail

}  // namespace assocmem

/// Throws assocmem::InvalidArgument with the concatenated message when `cond` is false.
#define ASSOCMEM_CHECK_ARG(cond, ...)                                            \
  do {                                                                           \
    if (!(cond)) throw ::assocmem::InvalidArgument(::assocmem::detail::concat(__VA_ARGS__)); \
  } while (0)
