// Internal: running a step that may fail on one participant of a merged retrieval (engine.hpp's
// PassMerger) so that every participant learns of the failure, shared by the engines of models A, B, C.
#pragma once

#include <exception>

#include "assocmem/engine.hpp"

namespace assocmem::detail {

/// Runs fn. With a merger (the memories spread over participants), a failure here is agreed on
/// collectively: every participant throws, none is left waiting in the merger's next collective.
template <class Fn>
void collectively(const PassMerger* merger, Fn&& fn) {
  if (!merger) return fn();
  std::exception_ptr failure;
  try {
    fn();
  } catch (...) {
    failure = std::current_exception();
  }
  merger->agree(failure);
}

}  // namespace assocmem::detail
