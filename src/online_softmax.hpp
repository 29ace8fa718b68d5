// Internal: the online softmax's one rescaling formula (eq. 12 evaluated tile by tile), shared by the
// retrieval engine (AttentionPartial) and the differentiable attention (attention.cpp).
#pragma once

#include <cmath>
#include <limits>

namespace assocmem::detail {

/// exp(from - to): the factor that moves sums kept relative to the maximum `from` to the maximum `to`
/// (>= from); 0 from -inf (nothing accumulated yet).
inline double rescale_factor(double from, double to) {
  return from == -std::numeric_limits<double>::infinity() ? 0.0 : std::exp(from - to);
}

}  // namespace assocmem::detail
