// Shared by the engine tests: which of the model B engine's kernels this CPU and build run.
#pragma once

#include <initializer_list>
#include <vector>

#include "assocmem/engine.hpp"

namespace assocmem::testing {

/// Generic, then each of `candidates` that an engine over a `probe_dtype` store accepts here.
inline std::vector<KernelChoice> available_kernels(DType probe_dtype, std::initializer_list<KernelChoice> candidates) {
  std::vector<KernelChoice> ks = {KernelChoice::Generic};
  MemoryStore probe(4, probe_dtype);
  probe.append(Matrix::Ones(1, 4));
  for (KernelChoice k : candidates) {
    try {
      EngineOptions o;
      o.kernel = k;
      ModelBEngine e(probe, 1.0, o);
      ks.push_back(k);
    } catch (const InvalidArgument&) {
      // not on this CPU
    }
  }
  return ks;
}

}  // namespace assocmem::testing
