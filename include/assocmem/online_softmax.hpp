// assocmem/online_softmax.hpp - the online softmax: eq. (12)/(16) evaluated memory tile by memory tile.
//
// For each of `batch` queries the state holds the largest scaled score m seen so far, the sum
// s = sum_mu exp(score_mu - m) and the weighted rows acc = sum_mu exp(score_mu - m) x_mu, kept relative to
// m so that nothing overflows. A new tile with a larger maximum rescales (raise_max); two states over
// disjoint memories combine exactly up to rounding (merge, combine); log s + m is the log-sum-exp and
// acc / s the softmax-weighted sum (eq. 16). This one type is the state of the retrieval engine's pass
// (AttentionPartial, engine.hpp), of its certified and approximate passes, of the fused attention of
// assocmem.torch (attention.hpp) and of the MPI merge (distributed.hpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

namespace assocmem {

namespace detail {

/// exp(from - to): the factor that moves sums kept relative to the maximum `from` to the maximum `to`
/// (>= from); 0 from -inf (nothing accumulated yet).
inline double rescale_factor(double from, double to) {
  return from == -std::numeric_limits<double>::infinity() ? 0.0 : std::exp(from - to);
}

/// One query's state meets a tile whose largest scaled score is new_max: if that is larger than the
/// running maximum `max`, the sum and the accumulator acc[0, n) (kept relative to max) are moved to
/// new_max by scale(acc, n, exp(max - new_max)), and max becomes new_max. Nothing is accumulated while
/// max is -inf. The one rescaling of every online softmax in the library.
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

}  // namespace detail

/// The online softmax's state for a batch of queries: T = float (the engine) or double (the fused
/// attention's gradient-check path). Rows of acc are `stride` >= dim apart (the kernels' padding).
template <class T>
struct OnlineSoftmax {
  std::size_t batch = 0, dim = 0, stride = 0;
  std::vector<T> max;       ///< [batch] running maximum of the scaled scores; -inf before any memory
  std::vector<double> sum;  ///< [batch] sum_mu exp(score_mu - max)
  std::vector<T> acc;       ///< [batch x stride] sum_mu exp(score_mu - max) x_mu in [0, dim) of each row

  OnlineSoftmax() = default;
  OnlineSoftmax(std::size_t batch_, std::size_t dim_, std::size_t stride_ = 0)
      : batch(batch_),
        dim(dim_),
        stride(stride_ ? stride_ : dim_),
        max(batch_, -std::numeric_limits<T>::infinity()),
        sum(batch_, 0.0),
        acc(batch_ * (stride_ ? stride_ : dim_), T(0)) {}

  T* row(std::size_t b) { return acc.data() + b * stride; }
  const T* row(std::size_t b) const { return acc.data() + b * stride; }

  /// Query b meets a tile with largest scaled score new_max (detail::raise_max on its own row, or on the
  /// kernels' buffer acc_b[0, n) where they accumulate elsewhere).
  template <class Scale>
  void raise_max(std::size_t b, T new_max, T* acc_b, std::size_t n, Scale&& scale) {
    detail::raise_max(max[b], sum[b], acc_b, n, new_max, scale);
  }

  /// Query b's whole state, set at once (a pass over one query's candidates): maximum m, sum s, row x.
  void set(std::size_t b, T m, double s, const T* x) {
    max[b] = m;
    sum[b] = s;
    std::copy(x, x + dim, row(b));
  }
  /// Query b's state copied from query k of another state of the same dim.
  void set(std::size_t b, const OnlineSoftmax& o, std::size_t k) { set(b, o.max[k], o.sum[k], o.row(k)); }

  /// Query b's sum and row moved to the maximum `to` (>= max[b]) and added, in double, to sum_out and
  /// out[0, dim): the terms of a merge over several states.
  void add_rescaled(std::size_t b, double to, double& sum_out, double* out) const {
    const double f = detail::rescale_factor(double(max[b]), to);
    sum_out += sum[b] * f;
    const T* x = row(b);
    for (std::size_t j = 0; j < dim; ++j) out[j] += double(x[j]) * f;
  }

  /// Combines with the state of other memories for the same queries (same batch and dim): exact up to
  /// one rounding of each sum (taken in double).
  void merge(const OnlineSoftmax& o) {
    for (std::size_t b = 0; b < batch; ++b) {
      if (o.max[b] == -std::numeric_limits<T>::infinity()) continue;
      const T m = std::max(max[b], o.max[b]);
      const double f = detail::rescale_factor(double(max[b]), double(m));
      const double g = detail::rescale_factor(double(o.max[b]), double(m));
      T* x = row(b);
      const T* y = o.row(b);
      for (std::size_t j = 0; j < dim; ++j) x[j] = static_cast<T>(double(x[j]) * f + double(y[j]) * g);
      sum[b] = sum[b] * f + o.sum[b] * g;
      max[b] = m;
    }
  }

  /// Whether query b saw a memory and its sum and maximum are finite (a softmax is defined).
  bool finite(std::size_t b) const { return std::isfinite(double(max[b])) && std::isfinite(sum[b]) && sum[b] > 0; }

  /// log sum_mu exp(score_mu) for query b (-inf when no memory was seen).
  double log_sum_exp(std::size_t b) const {
    if (sum[b] == 0.0) return -std::numeric_limits<double>::infinity();
    return double(max[b]) + std::log(sum[b]);
  }
};

/// The states of several workers over disjoint memories combined for query b: the softmax-weighted rows
/// acc / sum into out[0, dim) and the log-sum-exp returned, every term moved to the common maximum and
/// summed in double (one rounding at the end). -inf and an untouched out when no state saw a memory.
template <class T>
double combine(const std::vector<OnlineSoftmax<T>>& parts, std::size_t b, T* out) {
  T m = -std::numeric_limits<T>::infinity();
  for (const auto& p : parts) m = std::max(m, p.max[b]);
  if (m == -std::numeric_limits<T>::infinity() || parts.empty()) return -std::numeric_limits<double>::infinity();
  const std::size_t dim = parts.front().dim;
  double total = 0;
  std::vector<double> o(dim, 0.0);
  for (const auto& p : parts) p.add_rescaled(b, double(m), total, o.data());
  for (std::size_t j = 0; j < dim; ++j) out[j] = static_cast<T>(o[j] / total);
  return double(m) + std::log(total);
}

}  // namespace assocmem
