// Internal: the online softmax's one rescaling formula (eq. 12 evaluated tile by tile), shared by the
// retrieval engine (AttentionPartial), the differentiable attention (attention.cpp) and the MPI merge.
#pragma once

#include <cmath>
#include <cstddef>
#include <limits>

namespace assocmem::detail {

/// exp(from - to): the factor that moves sums kept relative to the maximum `from` to the maximum `to`
/// (>= from); 0 from -inf (nothing accumulated yet).
inline double rescale_factor(double from, double to) {
  return from == -std::numeric_limits<double>::infinity() ? 0.0 : std::exp(from - to);
}

/// One query's online-softmax state meets a tile whose largest scaled score is new_max: if that is larger
/// than the running maximum `max`, the sum and the accumulator acc[0, n) (kept relative to max) are moved
/// to new_max by scale(acc, n, exp(max - new_max)), and max becomes new_max. Nothing is accumulated while
/// max is -inf. The one rescaling of the engine's epilogue and merge (AttentionPartial::raise_max) and of
/// the fused attention's forward pass.
template <class T, class Scale>
inline void raise_max(T& max, double& sum, T* acc, std::size_t n, T new_max, Scale&& scale) {
  if (!(new_max > max)) return;
  if (max != -std::numeric_limits<T>::infinity()) {
    const double f = rescale_factor(double(max), double(new_max));
    scale(acc, n, static_cast<T>(f));
    sum *= f;
  }
  max = new_max;
}

}  // namespace assocmem::detail
