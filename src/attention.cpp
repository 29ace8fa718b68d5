// Differentiable softmax attention, fused over tiles of memories (attention.hpp): eq. (16) with keys
// and values, and its gradients by recomputation from the saved log-sum-exp.
#include "assocmem/attention.hpp"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "assocmem/io.hpp"
#include "assocmem/store.hpp"
#include "assocmem/engine.hpp"
#include "kernels/kernels.hpp"
#include "assocmem/online_softmax.hpp"
#include "parallel.hpp"
#include "fixed_point.hpp"

namespace assocmem {
namespace {

// Memories per tile (the extra memory is about threads x n x kTile): a tile's buffers (its normalised keys and
// values, their packed copies, the backward's gradients: a few times kTile x d floats each) stay in a core's
// L2 cache. 128 against 256 (Sapphire Rapids, 2 MB of L2 per core; forward + backward): hopfield-layers'
// Hopfield at K = 10k, 16 queries per element, 1.52 -> 1.28 ms per element, 4 heads 3.22 -> 2.67 ms,
// hopfield_retrieve K = 1M, 16 queries 122 -> 105 ms, K = 100k, 256 queries 71 -> 67 ms; 64 was slower
// again at 256 queries and for HopfieldPooling at batch 64.
constexpr std::size_t kTile = 128;

template <class T>
using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using ConstMap = Eigen::Map<const Mat<T>>;
template <class T>
using MutMap = Eigen::Map<Mat<T>>;

// The checks of the inputs read every key and value once more before the pass: written so that the compiler
// vectorises them (a branch-free flag per block, the bad block searched again for the message; a row's
// squared norm in four independent partial sums) and split over the pass's threads, they cost a fraction
// of the pass (at K = 1M, d = 64, 16 queries a scalar, one-thread scan took 3x the forward pass itself).
constexpr std::size_t kCheckBlock = 1024;

inline bool finite_value(float x) { return std::fabs(x) <= std::numeric_limits<float>::max(); }  // false: NaN, Inf
inline bool finite_value(double x) { return std::fabs(x) <= std::numeric_limits<double>::max(); }
inline bool finite_value(std::uint16_t bf16) { return (bf16 & 0x7F80u) != 0x7F80u; }
inline double widen(float x) { return double(x); }
inline double widen(double x) { return x; }
inline double widen(std::uint16_t bf16) { return double(bf16_to_float(bf16)); }

// sum_i x_i y_i in double, in four independent partial sums (not one chain of dependent additions).
template <class E>
double dot_in_double(const E* x, const E* y, std::size_t n) {
  double p[4] = {0, 0, 0, 0};
  std::size_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (std::size_t l = 0; l < 4; ++l) p[l] += widen(x[i + l]) * widen(y[i + l]);
  for (; i < n; ++i) p[0] += widen(x[i]) * widen(y[i]);
  return (p[0] + p[1]) + (p[2] + p[3]);
}

// The best kernel table of this CPU: the checks' and conversions' kernels, whose results do not depend
// on the table (exact, or a bound's guard).
const kernels::Ops& best_ops() {
  static const kernels::Ops* const ops = kernels::tables().front();
  return *ops;
}

// bfloat16 x[0, n) widened to T (exact): float on best_ops()'s from_bf16.
template <class T>
void widen_bf16(const std::uint16_t* x, std::size_t n, T* out) {
  if constexpr (std::is_same_v<T, float>) {
    best_ops().from_bf16(x, n, out);
  } else {
    for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<T>(bf16_to_float(x[i]));
  }
}

// |x|^2 in double: float rows on best_ops()'s dot_f64 (the same sum in double lanes).
template <class E>
double norm2(const E* x, std::size_t n) {
  if constexpr (std::is_same_v<E, float>) {
    return best_ops().dot_f64(x, x, n);
  } else {
    return dot_in_double(x, x, n);
  }
}

// The first index i in [i0, i1) with x[i] NaN or Inf, or i1 when there is none.
template <class E>
std::size_t first_non_finite(const E* x, std::size_t i0, std::size_t i1) {
  for (std::size_t b0 = i0; b0 < i1; b0 += kCheckBlock) {
    const std::size_t b1 = std::min(i1, b0 + kCheckBlock);
    unsigned bad = 0;
    for (std::size_t i = b0; i < b1; ++i) bad |= finite_value(x[i]) ? 0u : 1u;
    if (bad)
      for (std::size_t i = b0; i < b1; ++i)
        if (!finite_value(x[i])) return i;
  }
  return i1;
}

// What a scan of rows of keys or values found: the index of the first entry that is NaN or Inf (`none`:
// none) and the largest squared row norm (when asked for).
struct RowScan {
  static constexpr std::size_t none = std::numeric_limits<std::size_t>::max();
  std::size_t bad = none;
  double max2 = 0;
  void merge(const RowScan& o) {
    bad = std::min(bad, o.bad);
    max2 = std::max(max2, o.max2);
  }
};

// Rows [r0, r1) of x (`cols` entries each) into s, stopping at the first row with a NaN or Inf entry (s.bad:
// its index in x); the largest squared row norm when `norms`. A row's squared norm in double is finite when
// its entries are (float's or bfloat16's largest squared, times any row length that fits in memory, is far
// below double's range; a double row's may overflow): the norm is the test, and the first bad entry is
// looked for only in a row that fails it. Scanning rows in order from where the last scan of s stopped, s.bad
// is the first bad entry of all the rows scanned.
template <class E>
void scan_rows(const E* x, std::size_t r0, std::size_t r1, std::size_t cols, bool norms, RowScan& s) {
  if (s.bad != RowScan::none) return;
  for (std::size_t r = r0; r < r1; ++r) {
    const double n2 = norm2(x + r * cols, cols);
    if (!(n2 <= std::numeric_limits<double>::max())) {  // (double rows' squares may overflow: look)
      const std::size_t at = first_non_finite(x, r * cols, (r + 1) * cols);
      if (at != (r + 1) * cols) {
        s.bad = at;
        return;
      }
    }
    if (norms) s.max2 = std::max(s.max2, n2);
  }
}

template <class T>
void check_finite_array(const T* x, std::size_t count, const char* what) {
  const std::size_t bad = first_non_finite(x, 0, count);
  ASSOCMEM_CHECK_ARG(bad == count, what, " contains NaN or Inf (element ", bad, ")");
}

// ---- the layer norms of the memories (RowNorm) -------------------------------------------------------
// Whether the values are the same memory as the keys (one array; with layer norms, whichever they are), and
// whether they are the keys themselves (the same memory and the same norm).
template <class T>
bool same_memory(const AttentionArgs<T>& a) {
  return (a.k_bf16 ? a.v_bf16 == a.k_bf16 : a.v == a.k) && a.dv == a.d;
}
template <class T>
bool values_are_keys(const AttentionArgs<T>& a) {
  return same_memory(a) && a.value_norm == a.key_norm;
}
// Whether the values are the keys' rows under another layer norm with the same eps (hopfield-layers' stored
// patterns and pattern projections of one input): the rows' mean and rstd are then the keys' norm's, and
// only gamma and bias differ (Products::apply_norm, norm_backward_pair).
template <class T>
bool same_row_stats(const AttentionArgs<T>& a) {
  return same_memory(a) && !values_are_keys(a) && a.key_norm.on && a.value_norm.on && a.key_norm.eps == a.value_norm.eps;
}

// The layer norm in double, row by row (the double path's; float runs the dispatched kernels'
// layer_norm and layer_norm_backward, kernels.hpp). The mean and 1 / sqrt(var + eps) of a row of c
// entries (two passes; the biased variance, as torch's layer_norm).
void row_stats(const double* y, std::size_t c, double eps, double& mean, double& rstd) {
  double s = 0;
  for (std::size_t j = 0; j < c; ++j) s += y[j];
  mean = s / double(c);
  double v = 0;
  for (std::size_t j = 0; j < c; ++j) v += (y[j] - mean) * (y[j] - mean);
  rstd = 1.0 / std::sqrt(v / double(c) + eps);
}

// nt rows of c entries normalised: out = (y - mean) rstd o gamma + bias.
void normalise_rows(const RowNorm<double>& nm, const double* y, std::size_t nt, std::size_t c, double* out) {
  for (std::size_t r = 0; r < nt; ++r, y += c, out += c) {
    double mean, rstd;
    row_stats(y, c, nm.eps, mean, rstd);
    for (std::size_t j = 0; j < c; ++j) {
      double x = (y[j] - mean) * rstd;
      if (nm.gamma) x *= nm.gamma[j];
      if (nm.bias) x += nm.bias[j];
      out[j] = x;
    }
  }
}

// The layer norm's backward pass for one row y (c entries), g the gradient at its output: with
// x = (y - mean) rstd and h = g o gamma, dy = rstd (h - mean(h) - x mean(h o x)); dgamma += g o x and
// dbias += g (when not null). dy is written, or added to when `add`.
void norm_backward_row(const RowNorm<double>& nm, const double* y, std::size_t c, const double* g, double* dy, bool add,
                       double* dgamma, double* dbias) {
  double mean, rstd;
  row_stats(y, c, nm.eps, mean, rstd);
  double s1 = 0, s2 = 0;
  for (std::size_t j = 0; j < c; ++j) {
    const double x = (y[j] - mean) * rstd, h = nm.gamma ? g[j] * nm.gamma[j] : g[j];
    s1 += h;
    s2 += h * x;
    if (dgamma) dgamma[j] += g[j] * x;
    if (dbias) dbias[j] += g[j];
  }
  s1 /= double(c);
  s2 /= double(c);
  for (std::size_t j = 0; j < c; ++j) {
    const double x = (y[j] - mean) * rstd, h = nm.gamma ? g[j] * nm.gamma[j] : g[j];
    dy[j] = (add ? dy[j] : 0.0) + rstd * (h - s1 - x * s2);
  }
}

// A norm that is off passes its gradient through: dy (rows of c) = g (rows of stride ldg), or += g.
template <class T>
void pass_rows(const T* g, std::size_t ldg, std::size_t nt, std::size_t c, T* dy, bool add) {
  for (std::size_t r = 0; r < nt; ++r)
    for (std::size_t j = 0; j < c; ++j) dy[r * c + j] = (add ? dy[r * c + j] : T(0)) + g[r * ldg + j];
}

// A norm's parameters checked; returns the bound sqrt(c) max|gamma| + |bias| on the norm of its output rows
// (|x| <= sqrt(c): x has mean 0 and mean square var / (var + eps) < 1).
template <class T>
double check_norm(const RowNorm<T>& nm, std::size_t c, const char* what) {
  ASSOCMEM_CHECK_ARG(std::isfinite(nm.eps) && static_cast<T>(nm.eps) > 0, what, ": eps must be finite and > 0 (in ",
                     sizeof(T) == 4 ? "float32" : "float64", "), got ", nm.eps);
  double g = 1, b2 = 0;
  if (nm.gamma) {
    check_finite_array(nm.gamma, c, (std::string(what) + " gamma").c_str());
    g = 0;
    for (std::size_t j = 0; j < c; ++j) g = std::max(g, std::fabs(double(nm.gamma[j])));
  }
  if (nm.bias) {
    check_finite_array(nm.bias, c, (std::string(what) + " bias").c_str());
    for (std::size_t j = 0; j < c; ++j) b2 += double(nm.bias[j]) * double(nm.bias[j]);
  }
  return std::sqrt(double(c)) * g + std::sqrt(b2);
}

template <class T>
void refuse_norms(const AttentionArgs<T>& a, const char* fn) {
  ASSOCMEM_CHECK_ARG(!a.key_norm.on && !a.value_norm.on, fn, ": layer norms of the memories (key_norm, value_norm) are "
                     "supported by attention_forward and attention_backward only");
}

// Rows [t0, t0 + nt) of keys or values (cols wide) as T: a view of the caller's float memory, or the
// bfloat16 rows widened into buf.
template <class T>
ConstMap<T> rows_of(const T* f, const std::uint16_t* b, std::size_t t0, std::size_t nt, std::size_t cols, Mat<T>& buf) {
  const auto NT = static_cast<Eigen::Index>(nt), C = static_cast<Eigen::Index>(cols);
  if (!b) return ConstMap<T>(f + t0 * cols, NT, C);
  buf.resize(NT, C);
  widen_bf16(b + t0 * cols, nt * cols, buf.data());
  return ConstMap<T>(buf.data(), NT, C);
}

// The checks of check() that read no memory rows: the sizes, beta, dropout, threads, the queries, the layer
// norms' parameters, the bias and the mask.
template <class T>
void check_args(const AttentionArgs<T>& a) {
  const bool bf16 = a.k_bf16 != nullptr;
  ASSOCMEM_CHECK_ARG(a.q != nullptr && (bf16 ? a.v_bf16 != nullptr && !a.k && !a.v : a.k != nullptr && a.v != nullptr),
                     "attention: a null input (or float and bfloat16 memories mixed)");
  ASSOCMEM_CHECK_ARG(a.n > 0 && a.d > 0 && a.K > 0 && a.dv > 0, "attention: empty input (queries ", a.n, ", dim ", a.d,
                     ", memories ", a.K, ", value dim ", a.dv, ")");
  ASSOCMEM_CHECK_ARG(std::isfinite(a.beta) && a.beta > 0, "beta must be finite and > 0, got ", a.beta);
  ASSOCMEM_CHECK_ARG(a.dropout >= 0 && a.dropout < 1, "dropout must be in [0, 1), got ", a.dropout);
  ASSOCMEM_CHECK_ARG(a.threads >= 0 && a.threads <= kMaxThreads, "threads must be in [0, ", kMaxThreads, "], got ",
                     a.threads);
  check_finite_array(a.q, checked_mul(a.n, a.d, "queries"), "queries");
  checked_mul(a.K, a.d, "keys");
  checked_mul(a.K, a.dv, "values");
  if (a.key_norm.on) check_norm(a.key_norm, a.d, "key_norm");
  if (a.value_norm.on) check_norm(a.value_norm, a.dv, "value_norm");
  if (a.bias_rows) {
    ASSOCMEM_CHECK_ARG(a.bias != nullptr, "bias: data is null");
    ASSOCMEM_CHECK_ARG(a.bias_rows == 1 || a.bias_rows == a.n, "bias: ", a.bias_rows, " rows for ", a.n,
                       " queries (give 1 row shared by all, or one per query)");
    for (std::size_t i = 0; i < a.bias_rows * a.K; ++i)
      ASSOCMEM_CHECK_ARG(std::isfinite(a.bias[i]) || a.bias[i] == -std::numeric_limits<T>::infinity(), "bias: entry ",
                         i, " is ", a.bias[i], "; each must be finite or -inf");
  }
  if (a.mask.rows) {
    ASSOCMEM_CHECK_ARG(a.mask.data != nullptr, "mask: data is null");
    ASSOCMEM_CHECK_ARG(a.mask.rows == 1 || a.mask.rows == a.n, "mask: ", a.mask.rows, " rows for ", a.n,
                       " queries (give 1 row shared by all, or one per query)");
  }
  // Every query keeps a memory: one neither masked nor at bias -inf.
  const std::size_t rows = std::max(a.mask.rows, a.bias_rows);
  for (std::size_t r = 0; r < rows; ++r) {
    const std::uint8_t* m = a.mask.rows ? a.mask.data + (a.mask.rows == 1 ? 0 : r) * a.K : nullptr;
    const T* bias = a.bias_rows ? a.bias + (a.bias_rows == 1 ? 0 : r) * a.K : nullptr;
    bool any = false;
    for (std::size_t mu = 0; mu < a.K && !any; ++mu)
      any = (!m || !m[mu]) && (!bias || bias[mu] != -std::numeric_limits<T>::infinity());
    ASSOCMEM_CHECK_ARG(any, a.bias_rows ? "mask and bias: row " : "mask: row ", r,
                       " leaves out every memory; a query needs at least one");
  }
}

// The checks of check() on the memories' rows, from scans of them: the keys' (with their norms) and the
// values' (when they are another memory than the keys; their norms when they have a layer norm).
template <class T>
void check_memory(const AttentionArgs<T>& a, const RowScan& keys, const RowScan& values) {
  ASSOCMEM_CHECK_ARG(keys.bad == RowScan::none, "keys contains NaN or Inf (element ", keys.bad, ")");
  // A layer norm sums a row's squares (its variance, sum (y - mean)^2 <= |y|^2) in T: rows whose squared
  // norm could overflow it are refused (the variance would be inf and the row silently its bias).
  const double limit = double(std::numeric_limits<T>::max()) / 4;
  const char* type = sizeof(T) == 4 ? "float32" : "float64";
  const auto norm_range = [&](double r2, const char* what) {
    ASSOCMEM_CHECK_ARG(r2 < limit, what, ": a row's squared norm ", r2, " exceeds the ", type,
                       " range of its layer norm's variance; scale the inputs");
  };
  double k2 = keys.max2;
  if (a.key_norm.on) {
    norm_range(k2, "keys");
    k2 = std::pow(check_norm(a.key_norm, a.d, "key_norm"), 2);  // the normalised rows' bound
  }
  if (!same_memory(a)) {
    ASSOCMEM_CHECK_ARG(values.bad == RowScan::none, "values contains NaN or Inf (element ", values.bad, ")");
    if (a.value_norm.on) norm_range(values.max2, "values");
  } else if (a.value_norm.on && !a.key_norm.on) {
    norm_range(k2, "values");  // the same rows; k2 is still their largest squared norm
  }
  // Scores beta q . k that could overflow T are refused (|q . k| <= |q| max|k|, Cauchy-Schwarz), as the
  // engines do: at beta = 1e38 the softmax became NaN.
  for (std::size_t i = 0; i < a.n; ++i) {
    double q2 = 0;
    for (std::size_t j = 0; j < a.d; ++j) q2 += double(a.q[i * a.d + j]) * double(a.q[i * a.d + j]);
    const double bound = a.beta * std::sqrt(q2) * std::sqrt(k2);
    ASSOCMEM_CHECK_ARG(bound < limit, "queries: row ", i, ": beta * |q| * max|k| = ", bound, " exceeds the ", type,
                       " range of the scores; lower beta or scale the inputs");
  }
}

// The memories' rows scanned where a pass reads them anyway (MemoryScan::tile, called by for_each_raw_tile on
// each tile before its products), instead of in a pass of their own before it: in memory-bound calls (a few
// queries against many memories) that pass had read every key and value once more. The scans of the workers'
// tiles (each worker's a run of consecutive tiles) merge into the first bad entry of the whole array, as
// check() finds it; check() (check_memory) then runs on them after the pass, whose results on rows
// that fail it are discarded (NaN or Inf entries make NaN and Inf there, nothing worse).
template <class T>
struct MemoryScan {
  std::vector<RowScan> keys, values;  // per worker
  explicit MemoryScan(std::size_t workers) : keys(workers), values(workers) {}
  // Rows [t0, t0 + nt) of the keys (their norms too) and, when they are another memory, of the values (their
  // norms when they have a layer norm), scanned into worker w's RowScans.
  void tile(const AttentionArgs<T>& a, std::size_t w, std::size_t t0, std::size_t nt) {
    if (a.k_bf16) scan_rows(a.k_bf16, t0, t0 + nt, a.d, true, keys[w]);
    else scan_rows(a.k, t0, t0 + nt, a.d, true, keys[w]);
    if (same_memory(a)) return;
    if (a.v_bf16) scan_rows(a.v_bf16, t0, t0 + nt, a.dv, a.value_norm.on, values[w]);
    else scan_rows(a.v, t0, t0 + nt, a.dv, a.value_norm.on, values[w]);
  }
  void check(const AttentionArgs<T>& a) const {
    RowScan k, v;
    for (const RowScan& s : keys) k.merge(s);
    for (const RowScan& s : values) v.merge(s);
    check_memory(a, k, v);
  }
};

// Every input checked before a computation: check_args, then the memories' rows in a pass of their own,
// split over the threads in runs of rows (as the pass's tiles are).
template <class T>
void check(const AttentionArgs<T>& a) {
  check_args(a);
  const std::size_t threads = static_cast<std::size_t>(detail::resolve_threads(a.threads));
  const std::size_t nw = std::max<std::size_t>(1, std::min(threads, a.K / 256 + 1));
  MemoryScan<T> scan(nw);
  detail::parallel_chunks(a.K, static_cast<int>(nw),
                          [&](std::size_t w, std::size_t r0, std::size_t r1) { scan.tile(a, w, r0, r1 - r0); });
  scan.check(a);
}

// Query b's bias for memories [t0, ...), or null without one.
template <class T>
const T* bias_of(const AttentionArgs<T>& a, std::size_t b, std::size_t t0) {
  if (a.bias_rows == 0) return nullptr;
  return a.bias + (a.bias_rows == 1 ? 0 : b * a.K) + t0;
}

// Flags of query b's mask for memories [t0, t0 + nt), or null without a mask.
template <class T>
const std::uint8_t* mask_of(const AttentionArgs<T>& a, std::size_t b, std::size_t t0) {
  if (a.mask.rows == 0) return nullptr;
  return a.mask.data + (a.mask.rows == 1 ? 0 : b * a.K) + t0;
}

// Dropout on the association weights (AttentionArgs::dropout): the factor of weight (b, mu), 0 or
// 1 / (1 - p), from a counter-based generator (SplitMix64's finaliser of the seed and the index; a uniform
// in [0, 1) from its top 53 bits): the same in the forward and backward passes, whatever the tiling.
std::uint64_t mix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
template <class T>
struct Dropout {
  bool on = false;
  double p = 0;
  T scale = T(1);
  std::uint64_t seed = 0;
  std::size_t K = 0;
  explicit Dropout(const AttentionArgs<T>& a)
      : on(a.dropout > 0), p(a.dropout), scale(static_cast<T>(1.0 / (1.0 - a.dropout))), seed(mix64(a.dropout_seed)), K(a.K) {}
  T factor(std::size_t b, std::size_t mu) const {
    const double u = double(mix64(seed ^ mix64(b * K + mu)) >> 11) * 0x1p-53;
    return u < p ? T(0) : scale;
  }
};

// Sets the weights of masked memories to 0: as if they were not there.
template <class T>
void zero_masked(const AttentionArgs<T>& a, std::size_t t0, Mat<T>& P) {
  if (a.mask.rows == 0) return;
  for (Eigen::Index b = 0; b < P.rows(); ++b) {
    const std::uint8_t* m = mask_of(a, static_cast<std::size_t>(b), t0);
    for (Eigen::Index i = 0; i < P.cols(); ++i)
      if (m[i]) P(b, i) = T(0);
  }
}

// exp(beta S - shift) row by row, masked memories 0: the softmax weights of a tile when shift is the
// log-sum-exp (eq. 12), or their unnormalised form when it is the row maximum.
template <class T>
Mat<T> shifted_exp(const AttentionArgs<T>& a, std::size_t t0, const Mat<T>& S, T beta,
                   const Eigen::Matrix<T, Eigen::Dynamic, 1>& shift) {
  Mat<T> P = ((beta * S).array().colwise() - shift.array()).exp().matrix();
  zero_masked(a, t0, P);
  return P;
}

// Runs fn(worker, tile start, tile size, raw scores Q K_t^T, K_t, V_t) over every tile (K_t, V_t: the
// tile's keys and values as T); one worker per chunk.
template <class T, class Fn>
void for_each_tile(const AttentionArgs<T>& a, std::size_t workers, Fn&& fn) {
  const std::size_t tiles = (a.K + kTile - 1) / kTile;
  const ConstMap<T> Q(a.q, static_cast<Eigen::Index>(a.n), static_cast<Eigen::Index>(a.d));
  detail::parallel_chunks(tiles, static_cast<int>(workers), [&](std::size_t w, std::size_t tb, std::size_t te) {
    Mat<T> S, kbuf, vbuf;
    for (std::size_t t = tb; t < te; ++t) {
      const std::size_t t0 = t * kTile, nt = std::min(kTile, a.K - t0);
      const ConstMap<T> Kt = rows_of(a.k, a.k_bf16, t0, nt, a.d, kbuf);
      const bool same = a.v_bf16 ? a.v_bf16 == a.k_bf16 && a.dv == a.d : a.v == a.k && a.dv == a.d;
      const ConstMap<T> Vt = same ? Kt : rows_of(a.v, a.v_bf16, t0, nt, a.dv, vbuf);
      S.noalias() = Q * Kt.transpose();
      fn(w, t0, nt, S, Kt, Vt);
    }
  });
}

template <class T>
std::size_t worker_count(const AttentionArgs<T>& a) {
  const std::size_t tiles = (a.K + kTile - 1) / kTile;
  return std::max<std::size_t>(1, std::min<std::size_t>(static_cast<std::size_t>(detail::resolve_threads(a.threads)), tiles));
}

// Sums the workers' query gradients into dq and their beta gradients into dbeta.
template <class T>
void reduce_workers(const std::vector<Mat<T>>& dQ, const std::vector<double>& db, T* dq, double* dbeta) {
  MutMap<T> out(dq, dQ[0].rows(), dQ[0].cols());
  out.setZero();
  double total = 0;
  for (std::size_t w = 0; w < dQ.size(); ++w) {
    out += dQ[w];
    total += db[w];
  }
  *dbeta = total;
}

// The frame both backward passes share: per tile, fn(worker, t0, nt, S, P, K_t, V_t, dQ_w, dbeta_w) with
// the softmax weights P recomputed from the log-sum-exp L; the workers' query and beta gradients are
// then summed into dq and dbeta.
template <class T, class Fn>
void backward_tiles(const AttentionArgs<T>& a, const Eigen::Matrix<T, Eigen::Dynamic, 1>& L, T* dq, double* dbeta,
                    Fn&& fn) {
  const std::size_t nw = worker_count(a);
  const T beta = static_cast<T>(a.beta);
  std::vector<Mat<T>> dQ(nw, Mat<T>::Zero(static_cast<Eigen::Index>(a.n), static_cast<Eigen::Index>(a.d)));
  std::vector<double> db(nw, 0.0);
  for_each_tile(a, nw, [&](std::size_t w, std::size_t t0, std::size_t nt, const Mat<T>& S, const ConstMap<T>& Kt,
                           const ConstMap<T>& Vt) {
    const Mat<T> P = shifted_exp(a, t0, S, beta, L);  // the softmax weights, recomputed from lse
    fn(t0, static_cast<Eigen::Index>(nt), S, P, Kt, Vt, dQ[w], db[w]);
  });
  reduce_workers(dQ, db, dq, dbeta);
}


// The fused backward passes' workers summed: dq = beta sum_w dQ_w (rows of stride dp, in double) and
// dbeta = sum_w db_w.
template <class T>
void sum_workers(const std::vector<std::vector<T>>& dQ, const std::vector<double>& db, std::size_t n, std::size_t d,
                 std::size_t dp, T beta, T* dq, double* dbeta) {
  for (std::size_t b = 0; b < n; ++b)
    for (std::size_t j = 0; j < d; ++j) {
      double s = 0;
      for (const auto& w : dQ) s += double(w[b * dp + j]);
      dq[b * d + j] = static_cast<T>(double(beta) * s);
    }
  double total = 0;
  for (double x : db) total += x;
  *dbeta = total;
}

// ---- the fused attention (eq. 16 with keys and values) on raw tiles ---------------------------------
// The products of a tile, by element type. float: the retrieval engine's kernels, dispatched once
// (kernels.hpp: AVX-512 register-blocked products and a vectorised exp where the CPU has them, portable
// loops elsewhere); double (the gradient-check path): Eigen. Shapes: S (nb x ldS) = q (nb x d, stride
// ldq) . rows^T for the nt rows (row-major, stride d) of a tile; acc (nb x ldacc) += P (nb x nt, stride
// ldP) . rows (nt x d). ldS and ldacc are multiples of kernels::kBlock; the float kernels write whole
// blocks of 32 columns (zeros past nt and d).
template <class T>
struct Products;

template <>
struct Products<float> {
  const kernels::Ops* ops;
  // One query (a.n == 1; hopfield-layers' pooling, one retrieval): its scores and weighted sums are
  // matrix-vector products, taken from the rows as they are (dots_f32, axpy_f32) instead of packing every
  // tile for the products' register blocks: a pack costs more than the product of one row.
  bool one_query;
  explicit Products(const AttentionArgs<float>& a)
      : ops(a.portable_kernels ? &kernels::generic_ops() : &kernels::choose(KernelChoice::Auto, false)),
        one_query(a.n == 1) {}
  void pack(const float* rows, std::size_t nt, std::size_t d, std::vector<float>& buf) const {
    if (one_query) return;  // scores() reads the rows themselves
    buf.resize(kernels::round_up(nt, kernels::kBlock) * d);
    ops->pack_xt(rows, nt, d, buf.data());
  }
  /// S[b][0, nt) = q_b . rows for the nb queries (the scores() of the attention's n queries: nb is n).
  void scores(const float* q, std::size_t nb, std::size_t ldq, const std::vector<float>& packed, const float* rows,
              std::size_t nt, std::size_t d, float* S, std::size_t ldS) const {
    if (one_query) {
      for (std::size_t b = 0; b < nb; ++b) ops->dots_f32(q + b * ldq, rows, nt, d, S + b * ldS);
      return;
    }
    ops->gemm1_f32(q, nb, ldq, packed.data(), nt, d, S, ldS);
  }
  void accumulate(const float* P, std::size_t nb, std::size_t ldP, const float* rows, std::size_t nt, std::size_t d,
                  float* acc, std::size_t ldacc) const {
    if (nb == 1) return ops->axpy_f32(P, rows, nt, d, acc);  // one row of weights: acc += sum_t P[t] row_t
    ops->gemm2_f32(P, nb, ldP, rows, nt, d, acc, ldacc);
  }
  float max(const float* s, std::size_t n, float beta) const { return ops->scaled_max(s, n, beta); }
  /// p = exp(beta s - m) (0 below float's range); returns sum p.
  float exp_shift(const float* s, std::size_t n, float beta, float m, float* p) const {
    return ops->exp_shift_sum(s, n, beta, m, p);
  }
  void scale(float* x, std::size_t n, float a) const { ops->scale(x, n, a); }
  /// p = exp(beta s - m), g = p o (g - D); returns sum g o s (kernels.hpp: softmax_backward).
  double softmax_backward(const float* s, std::size_t n, float beta, float m, float D, float* p, float* g) const {
    return ops->softmax_backward(s, n, beta, m, D, p, g);
  }
  /// The layer norm of nt rows (RowNorm; stats: the rows' mean and rstd, pairs) and its backward pass.
  void normalise(const RowNorm<float>& nm, const float* y, std::size_t nt, std::size_t c, float* out, float* stats) const {
    ops->layer_norm(y, nt, c, static_cast<float>(nm.eps), nm.gamma, nm.bias, out, stats);
  }
  /// Another norm of rows `normalise` has taken, from its stats (same_row_stats): only gamma and bias differ.
  void apply_norm(const RowNorm<float>& nm, const float* y, std::size_t nt, std::size_t c, const float* stats,
                  float* out) const {
    ops->layer_norm_apply(y, nt, c, stats, nm.gamma, nm.bias, out);
  }
  void norm_backward(const RowNorm<float>& nm, const float* y, std::size_t nt, std::size_t c, const float* stats,
                     const float* g, std::size_t ldg, float* dy, bool add, float* dgamma, float* dbias) const {
    if (!nm.on) return pass_rows(g, ldg, nt, c, dy, add);
    const kernels::NormGrad gr{g, ldg, nm.gamma, nm.gamma ? dgamma : nullptr, nm.bias ? dbias : nullptr};
    ops->layer_norm_backward(y, nt, c, stats, &gr, 1, dy, add);
  }
  /// The backward passes of two norms of the same rows with the same stats (same_row_stats) into one dy
  /// (written), their row sums taken once; each norm's parameters' gradients (d*: gamma, bias) as above.
  void norm_backward_pair(const RowNorm<float>& n1, const RowNorm<float>& n2, const float* y, std::size_t nt, std::size_t c,
                          const float* stats, const float* g1, std::size_t ld1, const float* g2, std::size_t ld2, float* dy,
                          float* dg1, float* db1, float* dg2, float* db2) const {
    const kernels::NormGrad gr[2] = {{g1, ld1, n1.gamma, n1.gamma ? dg1 : nullptr, n1.bias ? db1 : nullptr},
                                     {g2, ld2, n2.gamma, n2.gamma ? dg2 : nullptr, n2.bias ? db2 : nullptr}};
    ops->layer_norm_backward(y, nt, c, stats, gr, 2, dy, false);
  }
};

template <>
struct Products<double> {
  using Strided = Eigen::Map<Mat<double>, 0, Eigen::OuterStride<>>;
  using ConstStrided = Eigen::Map<const Mat<double>, 0, Eigen::OuterStride<>>;
  explicit Products(const AttentionArgs<double>&) {}
  static Eigen::Index I(std::size_t x) { return static_cast<Eigen::Index>(x); }
  void pack(const double*, std::size_t, std::size_t, std::vector<double>&) const {}
  void scores(const double* q, std::size_t nb, std::size_t ldq, const std::vector<double>&, const double* rows,
              std::size_t nt, std::size_t d, double* S, std::size_t ldS) const {
    Strided(S, I(nb), I(nt), Eigen::OuterStride<>(I(ldS))).noalias() =
        ConstStrided(q, I(nb), I(d), Eigen::OuterStride<>(I(ldq))) * ConstMap<double>(rows, I(nt), I(d)).transpose();
  }
  void accumulate(const double* P, std::size_t nb, std::size_t ldP, const double* rows, std::size_t nt, std::size_t d,
                  double* acc, std::size_t ldacc) const {
    Strided(acc, I(nb), I(d), Eigen::OuterStride<>(I(ldacc))).noalias() +=
        ConstStrided(P, I(nb), I(nt), Eigen::OuterStride<>(I(ldP))) * ConstMap<double>(rows, I(nt), I(d));
  }
  double max(const double* s, std::size_t n, double beta) const {
    double m = -std::numeric_limits<double>::infinity();
    for (std::size_t i = 0; i < n; ++i) m = std::fmax(m, beta * s[i]);
    return m;
  }
  double exp_shift(const double* s, std::size_t n, double beta, double m, double* p) const {
    double sum = 0;
    for (std::size_t i = 0; i < n; ++i) sum += (p[i] = std::exp(beta * s[i] - m));
    return sum;
  }
  void scale(double* x, std::size_t n, double a) const {
    for (std::size_t i = 0; i < n; ++i) x[i] *= a;
  }
  double softmax_backward(const double* s, std::size_t n, double beta, double m, double D, double* p, double* g) const {
    exp_shift(s, n, beta, m, p);
    for (std::size_t i = 0; i < n; ++i) g[i] = p[i] * (g[i] - D);
    return dot_in_double(g, s, n);
  }
  void normalise(const RowNorm<double>& nm, const double* y, std::size_t nt, std::size_t c, double* out, double*) const {
    normalise_rows(nm, y, nt, c, out);
  }
  void apply_norm(const RowNorm<double>& nm, const double* y, std::size_t nt, std::size_t c, const double*,
                  double* out) const {
    normalise_rows(nm, y, nt, c, out);  // the stats recomputed: the same numbers
  }
  void norm_backward(const RowNorm<double>& nm, const double* y, std::size_t nt, std::size_t c, const double*,
                     const double* g, std::size_t ldg, double* dy, bool add, double* dgamma, double* dbias) const {
    if (!nm.on) return pass_rows(g, ldg, nt, c, dy, add);
    for (std::size_t r = 0; r < nt; ++r)
      norm_backward_row(nm, y + r * c, c, g + r * ldg, dy + r * c, add, nm.gamma ? dgamma : nullptr,
                        nm.bias ? dbias : nullptr);
  }
  void norm_backward_pair(const RowNorm<double>& n1, const RowNorm<double>& n2, const double* y, std::size_t nt,
                          std::size_t c, const double* stats, const double* g1, std::size_t ld1, const double* g2,
                          std::size_t ld2, double* dy, double* dg1, double* db1, double* dg2, double* db2) const {
    norm_backward(n1, y, nt, c, stats, g1, ld1, dy, false, dg1, db1);
    norm_backward(n2, y, nt, c, stats, g2, ld2, dy, true, dg2, db2);
  }
};

// Rows [t0, t0 + nt) of keys or values (cols wide) as T: the caller's memory, or bfloat16 rows widened
// into buf.
template <class T>
const T* tile_rows(const T* f, const std::uint16_t* b, std::size_t t0, std::size_t nt, std::size_t cols,
                   std::vector<T>& buf) {
  if (!b) return f + t0 * cols;
  buf.resize(nt * cols);
  widen_bf16(b + t0 * cols, nt * cols, buf.data());
  return buf.data();
}

// x (rows x cols, row-major) copied into rows x ld with zero padding: the kernels' operand layout.
template <class T>
std::vector<T> padded(const T* x, std::size_t rows, std::size_t cols, std::size_t ld) {
  std::vector<T> out(rows * ld, T(0));
  for (std::size_t r = 0; r < rows; ++r) std::copy(x + r * cols, x + (r + 1) * cols, out.begin() + static_cast<long>(r * ld));
  return out;
}

// x (rows x cols) transposed: cols x rows.
template <class T>
std::vector<T> transposed(const T* x, std::size_t rows, std::size_t cols) {
  std::vector<T> out(rows * cols);
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t c = 0; c < cols; ++c) out[c * rows + r] = x[r * cols + c];
  return out;
}

// Runs fn(worker, t0, nt, K_t, V_t, Y_k, Y_v, s_k, s_v) over the tiles of memories, one worker per chunk of
// tiles: K_t and V_t are the tile's keys and values as T, row-major, after their layer norms (the same
// pointer when the values are the keys); Y_k and Y_v the raw rows they were normalised from (K_t and V_t
// without norms), s_k and s_v the norms' row statistics (Products::normalise; one computation where the
// values' norm shares them, same_row_stats). With a scan, each tile's raw rows are scanned first
// (MemoryScan::tile).
template <class T, class Fn>
void for_each_raw_tile(const AttentionArgs<T>& a, const Products<T>& pr, std::size_t workers,
                       std::type_identity_t<MemoryScan<T>>* scan, Fn&& fn) {
  const std::size_t tiles = (a.K + kTile - 1) / kTile;
  const bool same = values_are_keys(a), same_raw = same_memory(a), same_stats = same_row_stats(a);
  detail::parallel_chunks(tiles, static_cast<int>(workers), [&](std::size_t w, std::size_t tb, std::size_t te) {
    std::vector<T> kbuf, vbuf, knorm, vnorm, kstat(2 * kTile), vstat(2 * kTile);
    for (std::size_t t = tb; t < te; ++t) {
      const std::size_t t0 = t * kTile, nt = std::min(kTile, a.K - t0);
      if (scan) scan->tile(a, w, t0, nt);
      const T* Yk = tile_rows(a.k, a.k_bf16, t0, nt, a.d, kbuf);
      const T* Yv = same_raw ? Yk : tile_rows(a.v, a.v_bf16, t0, nt, a.dv, vbuf);
      const T* Kt = Yk;
      if (a.key_norm.on) {
        knorm.resize(nt * a.d);
        pr.normalise(a.key_norm, Yk, nt, a.d, knorm.data(), kstat.data());
        Kt = knorm.data();
      }
      const T* Vt = same ? Kt : Yv;
      if (!same && a.value_norm.on) {
        vnorm.resize(nt * a.dv);
        if (same_stats) pr.apply_norm(a.value_norm, Yv, nt, a.dv, kstat.data(), vnorm.data());
        else pr.normalise(a.value_norm, Yv, nt, a.dv, vnorm.data(), vstat.data());
        Vt = vnorm.data();
      }
      fn(w, t0, nt, Kt, Vt, Yk, Yv, kstat.data(), same || same_stats ? kstat.data() : vstat.data());
    }
  });
}
}  // namespace

namespace {
// attention_forward on arguments check_args() has passed; the memories' rows scanned in its pass and checked
// after it (MemoryScan) when scan_memory, else already checked (attention_fixed_point checks once, not per
// update).
template <class T>
void forward_checked(const AttentionArgs<T>& a, T* out, double* lse, bool scan_memory) {
  const Products<T> pr(a);
  const std::size_t n = a.n, d = a.d, dv = a.dv, nw = worker_count(a);
  const std::size_t dp = kernels::round_up(d, kernels::kBlock), dvp = kernels::round_up(dv, kernels::kBlock);
  const T beta = static_cast<T>(a.beta), inf = std::numeric_limits<T>::infinity();
  const Dropout<T> drop(a);
  const std::vector<T> Qp = padded(a.q, n, d, dp);
  // One pass, online softmax (eq. 12 tile by tile): per worker and query the running maximum m of
  // beta q . k_mu, sum_mu exp(beta q . k_mu - m) and sum_mu exp(beta q . k_mu - m) v_mu.
  std::vector<OnlineSoftmax<T>> parts(nw, OnlineSoftmax<T>(n, dv, dvp));
  std::vector<std::vector<T>> S(nw, std::vector<T>(n * kTile)), W(nw, std::vector<T>(n * kTile)), packed(nw);
  MemoryScan<T> scan(nw);
  for_each_raw_tile(a, pr, nw, scan_memory ? &scan : nullptr, [&](std::size_t w, std::size_t t0, std::size_t nt,
                                                                   const T* Kt, const T* Vt, const T*, const T*,
                                                                   const T*, const T*) {
    OnlineSoftmax<T>& part = parts[w];
    pr.pack(Kt, nt, d, packed[w]);
    pr.scores(Qp.data(), n, dp, packed[w], Kt, nt, d, S[w].data(), kTile);
    for (std::size_t b = 0; b < n; ++b) {
      T* s = &S[w][b * kTile];
      T* p = &W[w][b * kTile];
      if (const std::uint8_t* m = mask_of(a, b, t0))
        for (std::size_t i = 0; i < nt; ++i)
          if (m[i]) s[i] = -inf;  // weight exp(-inf) = 0: as if absent
      if (const T* bias = bias_of(a, b, t0))  // beta (s + bias / beta) = beta s + bias
        for (std::size_t i = 0; i < nt; ++i) s[i] += bias[i] / beta;
      const T m_tile = pr.max(s, nt, beta);
      if (m_tile == -inf) {
        std::fill(p, p + nt, T(0));
        continue;
      }
      part.raise_max(b, m_tile, part.row(b), dvp, [&](T* x, std::size_t len, T f) { pr.scale(x, len, f); });
      part.sum[b] += double(pr.exp_shift(s, nt, beta, part.max[b], p));
      if (drop.on)  // after the normaliser: dropout acts on the softmax weights
        for (std::size_t i = 0; i < nt; ++i) p[i] *= drop.factor(b, t0 + i);
    }
    pr.accumulate(W[w].data(), n, kTile, Vt, nt, dv, part.acc.data(), dvp);
  });
  if (scan_memory) scan.check(a);
  for (std::size_t b = 0; b < n; ++b) lse[b] = combine(parts, b, out + b * dv);  // the workers' states merged
}
}  // namespace

template <class T>
void attention_forward(const AttentionArgs<T>& a, T* out, double* lse) {
  check_args(a);
  forward_checked(a, out, lse, true);  // the memories checked in its pass
}

template <class T>
void attention_backward(const AttentionArgs<T>& a, const T* out, const double* lse, const T* dout, T* dq, T* dk, T* dv,
                        double* dbeta, T* dbias, const RowNormGradients<T>* dnorm) {
  check_args(a);  // the memories checked in the pass below (MemoryScan)
  ASSOCMEM_CHECK_ARG(dv != dk || same_memory(a), "attention_backward: dk and dv may share a buffer only when the values "
                     "are the same memory as the keys");
  const Products<T> pr(a);
  const std::size_t n = a.n, d = a.d, dvd = a.dv, nw = worker_count(a);
  const std::size_t dp = kernels::round_up(d, kernels::kBlock), dvp = kernels::round_up(dvd, kernels::kBlock);
  const T beta = static_cast<T>(a.beta);
  const Dropout<T> drop(a);
  check_finite_array(dout, n * dvd, "the output's gradient");
  std::vector<T> L(n), Dlt(n);
  for (std::size_t b = 0; b < n; ++b) {
    L[b] = static_cast<T>(lse[b]);
    double s = 0;
    for (std::size_t j = 0; j < dvd; ++j) s += double(dout[b * dvd + j]) * double(out[b * dvd + j]);
    Dlt[b] = static_cast<T>(s);  // rowsum(dO o O): the softmax Jacobian's diagonal correction
  }
  const std::vector<T> Qp = padded(a.q, n, d, dp), dOp = padded(dout, n, dvd, dvp);
  const std::vector<T> QT = transposed(a.q, n, d), dOT = transposed(dout, n, dvd);  // d x n, dv x n
  const bool shared = dv == dk;  // one buffer receives the sum of the keys' and the values' gradients
  const bool one_norm = values_are_keys(a), fold = shared && one_norm;  // fold: the sum formed in the products
  const bool norms = a.key_norm.on || a.value_norm.on, pair = same_row_stats(a);
  // The norms' parameter gradients, per worker (double): gamma and bias of the keys' norm, then the values'.
  const bool want_norm_grads = dnorm != nullptr && norms;
  std::vector<std::vector<double>> ngrad(want_norm_grads ? nw : 0, std::vector<double>(2 * (d + dvd), 0.0));
  // Row i of the tile without norms: the gradients gk(j) and gv(j) at the keys and values, written to dk
  // and dv (their sum where they share the buffer; gv is already in gk when `folded`).
  const auto write_row = [&](std::size_t t0, std::size_t i, bool folded, auto&& gk, auto&& gv) {
    T* dki = dk + (t0 + i) * d;
    for (std::size_t j = 0; j < d; ++j) dki[j] = gk(j);
    if (folded) return;
    T* dvi = shared ? dki : dv + (t0 + i) * dvd;
    for (std::size_t j = 0; j < dvd; ++j) dvi[j] = shared ? dvi[j] + gv(j) : gv(j);
  };
  // With norms, the tile's gradients at the normalised keys (rows GK, stride ldk) and values (GV, stride
  // ldv; null when folded into GK) taken through the norms into dk and dv (their sum where they share the
  // buffer); the norms' parameter gradients summed over the tile in T (pg), then into the worker's doubles.
  const auto norm_tile = [&](std::size_t w, std::size_t t0, std::size_t nt, const T* Yk, const T* Yv, const T* sk,
                             const T* sv, const T* GK, std::size_t ldk, const T* GV, std::size_t ldv, std::vector<T>& pg) {
    T *kg = nullptr, *vg = nullptr;
    if (want_norm_grads) {
      pg.assign(2 * (d + dvd), T(0));
      kg = pg.data();
      vg = one_norm ? kg : kg + 2 * d;  // one norm: its gradients once
    }
    if (GV && shared && pair) {  // one backward pass of both norms of the same rows into their sum
      pr.norm_backward_pair(a.key_norm, a.value_norm, Yk, nt, d, sk, GK, ldk, GV, ldv, dk + t0 * d, kg,
                            kg ? kg + d : nullptr, vg, vg ? vg + d : nullptr);
    } else {
      pr.norm_backward(a.key_norm, Yk, nt, d, sk, GK, ldk, dk + t0 * d, false, kg, kg ? kg + d : nullptr);
      if (GV)
        pr.norm_backward(a.value_norm, Yv, nt, dvd, sv, GV, ldv, shared ? dk + t0 * d : dv + t0 * dvd, shared, vg,
                         vg ? vg + (one_norm ? d : dvd) : nullptr);
    }
    if (want_norm_grads)
      for (std::size_t j = 0; j < pg.size(); ++j) ngrad[w][j] += double(pg[j]);
  };
  // A tile's key and value gradients, dK_t = beta dS^T Q and dV_t = P^T dO, come out of the products either
  // transposed (d x tile, then written row by row) or, with fewer queries than dimensions, as rows from the
  // transposed weights (tile x n): the smaller side is the one transposed, element by element.
  const bool rows_first = n < d;
  const std::size_t np = kernels::round_up(n, kernels::kBlock);
  std::vector<std::vector<T>> dQ(nw, std::vector<T>(n * dp, T(0)));
  std::vector<double> db(nw, 0.0);
  // stacked: the keys' and values' gradients of a tile summed in one product, (dK_t + dV_t)^T =
  // [beta Q^T | dO^T] [dS; P] (inner dimension 2n; GP holds dS above P, QdOT the left factor, d x 2n).
  const bool stacked = fold && !norms && !rows_first;
  std::vector<T> QdOT;
  if (stacked) {
    QdOT.resize(d * 2 * n);
    for (std::size_t j = 0; j < d; ++j)
      for (std::size_t b = 0; b < n; ++b) {
        QdOT[j * 2 * n + b] = beta * a.q[b * d + j];
        QdOT[j * 2 * n + n + b] = dout[b * dvd + j];
      }
  }
  struct Buffers {
    std::vector<T> S, GP, packK, packV, dKT, dVT, SB, GK, GV, pg;  // GP: dS (n x kTile) above P; GK, GV, pg: norms
  };
  std::vector<Buffers> buf(nw);
  for (auto& B : buf)
    B = {std::vector<T>(n * kTile), std::vector<T>(2 * n * kTile), {}, {},
         // rows_first: dKT holds (beta dS)^T and P^T side by side (tile x np each, zero beyond n), dVT the rows
         rows_first ? std::vector<T>(2 * kTile * np, T(0)) : std::vector<T>(d * kTile),
         rows_first ? std::vector<T>(kTile * (dp + (fold ? 0 : dvp))) : std::vector<T>(stacked ? 0 : dvd * kTile), {}, {},
         {}, {}};
  MemoryScan<T> scan(nw);
  for_each_raw_tile(a, pr, nw, &scan, [&](std::size_t w, std::size_t t0, std::size_t nt, const T* Kt, const T* Vt,
                                   const T* Yk, const T* Yv, const T* sk, const T* sv) {
    Buffers& B = buf[w];
    T* const G = B.GP.data();
    T* const P = G + n * kTile;
    // Recomputed from the log-sum-exp L (FlashAttention): S = Q K_t^T, P = exp(beta S - L) (the softmax
    // weights, eq. 12), dP = dO V_t^T, and dS = P o (dP - rowsum(dO o O)) = d loss / d(beta S).
    pr.pack(Kt, nt, d, B.packK);
    pr.scores(Qp.data(), n, dp, B.packK, Kt, nt, d, B.S.data(), kTile);
    if (Vt != Kt) pr.pack(Vt, nt, dvd, B.packV);
    pr.scores(dOp.data(), n, dvp, Vt != Kt ? B.packV : B.packK, Vt, nt, dvd, G, kTile);
    double dbw = 0;
    for (std::size_t b = 0; b < n; ++b) {
      const T* s = &B.S[b * kTile];  // the raw scores q . k (for dbeta)
      T* p = P + b * kTile;
      T* g = G + b * kTile;
      const T* bias = bias_of(a, b, t0);
      const std::uint8_t* mask = mask_of(a, b, t0);
      if (!bias && !mask && !drop.on) {  // the plain softmax: one pass (the branches below, fused)
        dbw += pr.softmax_backward(s, nt, beta, L[b], Dlt[b], p, g);
        std::fill(p + nt, p + kTile, T(0));
        std::fill(g + nt, g + kTile, T(0));
        continue;
      }
      if (bias) {  // the weights from beta s + bias, as in the forward pass
        B.SB.resize(nt);
        for (std::size_t i = 0; i < nt; ++i) B.SB[i] = s[i] + bias[i] / beta;
        pr.exp_shift(B.SB.data(), nt, beta, L[b], p);
      } else {
        pr.exp_shift(s, nt, beta, L[b], p);
      }
      if (mask)
        for (std::size_t i = 0; i < nt; ++i)
          if (mask[i]) p[i] = T(0);  // absent memories have weight 0
      if (drop.on) {
        // out = (P o Z) V with Z the dropout factors: d loss / dP = Z o dP, and sum_mu P Z dP = rowsum(dO o O)
        // still; dV = (P o Z)^T dO.
        for (std::size_t i = 0; i < nt; ++i) {
          const T z = drop.factor(b, t0 + i);
          g[i] = p[i] * (z * g[i] - Dlt[b]);
          p[i] *= z;
          dbw += double(g[i]) * double(s[i]);
        }
      } else {
        for (std::size_t i = 0; i < nt; ++i) g[i] = p[i] * (g[i] - Dlt[b]);
        dbw += dot_in_double(g, s, nt);  // d loss / d beta = sum dS o S
      }
      if (dbias && bias) {  // d loss / d bias = dS (its rows: one per query, or summed into the shared one)
        T* db = dbias + (a.bias_rows == 1 ? 0 : b * a.K) + t0;
        for (std::size_t i = 0; i < nt; ++i) db[i] = (a.bias_rows == 1 && b > 0 ? db[i] : T(0)) + g[i];
      }
      std::fill(p + nt, p + kTile, T(0));  // the products below read whole rows of the tile
      std::fill(g + nt, g + kTile, T(0));
    }
    db[w] += dbw;
    pr.accumulate(G, n, kTile, Kt, nt, d, dQ[w].data(), dp);  // dQ += dS K_t (times beta below)
    if (rows_first) {
      T* GT = B.dKT.data();
      T* PT = GT + kTile * np;
      for (std::size_t b = 0; b < n; ++b)
        for (std::size_t i = 0; i < nt; ++i) {
          GT[i * np + b] = beta * G[b * kTile + i];
          PT[i * np + b] = P[b * kTile + i];
        }
      T* rk = B.dVT.data();
      T* rv = fold ? rk : rk + kTile * dp;
      const std::size_t ldv = fold ? dp : dvp;
      std::fill(B.dVT.begin(), B.dVT.end(), T(0));
      pr.accumulate(GT, nt, np, a.q, n, d, rk, dp);         // dK_t = (beta dS)^T Q
      pr.accumulate(PT, nt, np, dout, n, dvd, rv, ldv);     // dV_t = P^T dO (added when folded)
      if (norms) return norm_tile(w, t0, nt, Yk, Yv, sk, sv, rk, dp, fold ? nullptr : rv, ldv, B.pg);
      for (std::size_t i = 0; i < nt; ++i)
        write_row(t0, i, fold, [&](std::size_t j) { return rk[i * dp + j]; }, [&](std::size_t j) { return rv[i * ldv + j]; });
      return;
    }
    // dK_t^T = Q^T dS (d x tile) and dV_t^T = dO^T P (dv x tile): the tile's gradients, transposed once.
    std::fill(B.dKT.begin(), B.dKT.end(), T(0));
    if (stacked) {  // their sum in one product
      pr.accumulate(QdOT.data(), d, 2 * n, G, 2 * n, kTile, B.dKT.data(), kTile);
      for (std::size_t i = 0; i < nt; ++i) {
        T* dki = dk + (t0 + i) * d;
        for (std::size_t j = 0; j < d; ++j) dki[j] = B.dKT[j * kTile + i];
      }
      return;
    }
    std::fill(B.dVT.begin(), B.dVT.end(), T(0));
    pr.accumulate(QT.data(), d, n, G, n, kTile, B.dKT.data(), kTile);
    pr.accumulate(dOT.data(), dvd, n, P, n, kTile, B.dVT.data(), kTile);
    if (norms) {  // the tile's gradients as rows, for the norms' backward pass
      B.GK.resize(nt * d);
      B.GV.resize(nt * dvd);
      for (std::size_t i = 0; i < nt; ++i) {
        for (std::size_t j = 0; j < d; ++j) B.GK[i * d + j] = beta * B.dKT[j * kTile + i];
        for (std::size_t j = 0; j < dvd; ++j) B.GV[i * dvd + j] = B.dVT[j * kTile + i];
      }
      return norm_tile(w, t0, nt, Yk, Yv, sk, sv, B.GK.data(), d, B.GV.data(), dvd, B.pg);
    }
    for (std::size_t i = 0; i < nt; ++i)
      write_row(t0, i, false, [&](std::size_t j) { return beta * B.dKT[j * kTile + i]; },
                [&](std::size_t j) { return B.dVT[j * kTile + i]; });
  });
  scan.check(a);
  if (dnorm) {  // the workers' parameter gradients summed; the values' zero when they are the keys
    const auto put = [&](T* out, std::size_t offset, std::size_t c, bool zero) {
      if (!out) return;
      for (std::size_t j = 0; j < c; ++j) {
        double s = 0;
        if (!zero)
          for (const auto& g : ngrad) s += g[offset + j];
        out[j] = static_cast<T>(s);
      }
    };
    put(dnorm->key_gamma, 0, d, !a.key_norm.on || !a.key_norm.gamma);
    put(dnorm->key_bias, d, d, !a.key_norm.on || !a.key_norm.bias);
    put(dnorm->value_gamma, 2 * d, dvd, one_norm || !a.value_norm.on || !a.value_norm.gamma);
    put(dnorm->value_bias, 2 * d + dvd, dvd, one_norm || !a.value_norm.on || !a.value_norm.bias);
  }
  sum_workers(dQ, db, n, d, dp, beta, dq, dbeta);
}

template <class T>
void attention_weights(const AttentionArgs<T>& a, T* P) {
  refuse_norms(a, "attention_weights");
  ASSOCMEM_CHECK_ARG(a.dropout == 0, "attention_weights: the association matrix has no dropout (got ", a.dropout, ")");
  check(a);
  const Products<T> pr(a);
  const std::size_t n = a.n, d = a.d, K = a.K, nw = worker_count(a), dp = kernels::round_up(d, kernels::kBlock);
  const T beta = static_cast<T>(a.beta), inf = std::numeric_limits<T>::infinity();
  const std::vector<T> Qp = padded(a.q, n, d, dp);
  // The scores of every memory (raw units: q . k + bias / beta, -inf where masked) into P, tile by tile;
  // then each row's softmax with the kernels of the fused forward pass (eq. 12: the maximum of beta t,
  // exp(beta t - max) and their sum, scaled by 1 / sum; the forward pass takes the maximum tile by tile, so
  // its weights differ from these by rounding only).
  std::vector<std::vector<T>> S(nw, std::vector<T>(n * kTile)), packed(nw);
  for_each_raw_tile(a, pr, nw, nullptr, [&](std::size_t w, std::size_t t0, std::size_t nt, const T* Kt, const T*,
                                            const T*, const T*, const T*, const T*) {
    pr.pack(Kt, nt, d, packed[w]);
    pr.scores(Qp.data(), n, dp, packed[w], Kt, nt, d, S[w].data(), kTile);
    for (std::size_t b = 0; b < n; ++b) {
      T* row = P + b * K + t0;
      std::copy(&S[w][b * kTile], &S[w][b * kTile] + nt, row);
      if (const T* bias = bias_of(a, b, t0))
        for (std::size_t i = 0; i < nt; ++i) row[i] += bias[i] / beta;
      if (const std::uint8_t* m = mask_of(a, b, t0))
        for (std::size_t i = 0; i < nt; ++i)
          if (m[i]) row[i] = -inf;
    }
  });
  detail::parallel_chunks(n, static_cast<int>(std::min(nw, n)), [&](std::size_t, std::size_t b0, std::size_t b1) {
    for (std::size_t b = b0; b < b1; ++b) {
      T* row = P + b * K;
      const T m = pr.max(row, K, beta);  // finite: check() leaves every query a memory
      const T sum = pr.exp_shift(row, K, beta, m, row);
      pr.scale(row, K, T(1) / sum);
    }
  });
}

template <class T>
void attention_weights_backward(const AttentionArgs<T>& a, const T* P, const T* dP, T* dq, T* dk, double* dbeta,
                                T* dbias) {
  refuse_norms(a, "attention_weights_backward");
  check(a);
  const Products<T> pr(a);
  const std::size_t n = a.n, d = a.d, K = a.K, nw = worker_count(a), dp = kernels::round_up(d, kernels::kBlock);
  const T beta = static_cast<T>(a.beta);
  check_finite_array(dP, checked_mul(n, K, "queries x memories"), "the association matrix's gradient");
  std::vector<T> Dlt(n);  // rowsum(dP o P): the softmax Jacobian's diagonal correction
  for (std::size_t b = 0; b < n; ++b) Dlt[b] = static_cast<T>(dot_in_double(dP + b * K, P + b * K, K));
  const std::vector<T> Qp = padded(a.q, n, d, dp), QT = transposed(a.q, n, d);
  std::vector<std::vector<T>> dQ(nw, std::vector<T>(n * dp, T(0)));
  std::vector<double> db(nw, 0.0);
  struct Buffers {
    std::vector<T> S, G, packK, dKT;
  };
  std::vector<Buffers> buf(nw);
  for (auto& B : buf) B = {std::vector<T>(n * kTile), std::vector<T>(n * kTile, T(0)), {}, std::vector<T>(d * kTile)};
  for_each_raw_tile(a, pr, nw, nullptr, [&](std::size_t w, std::size_t t0, std::size_t nt, const T* Kt, const T*,
                                            const T*, const T*, const T*, const T*) {
    Buffers& B = buf[w];
    pr.pack(Kt, nt, d, B.packK);
    pr.scores(Qp.data(), n, dp, B.packK, Kt, nt, d, B.S.data(), kTile);  // the raw scores q . k (for dbeta)
    double dbw = 0;
    for (std::size_t b = 0; b < n; ++b) {
      const T* p = P + b * K + t0;
      const T* g = dP + b * K + t0;
      T* G = &B.G[b * kTile];
      for (std::size_t i = 0; i < nt; ++i) G[i] = p[i] * (g[i] - Dlt[b]);  // dS = P o (dP - rowsum(dP o P))
      std::fill(G + nt, G + kTile, T(0));
      dbw += dot_in_double(G, &B.S[b * kTile], nt);  // d loss / d beta = sum dS o S
      if (dbias && a.bias_rows) {
        T* out = dbias + (a.bias_rows == 1 ? 0 : b * K) + t0;
        for (std::size_t i = 0; i < nt; ++i) out[i] = (a.bias_rows == 1 && b > 0 ? out[i] : T(0)) + G[i];
      }
    }
    db[w] += dbw;
    pr.accumulate(B.G.data(), n, kTile, Kt, nt, d, dQ[w].data(), dp);  // dQ += dS K_t (times beta below)
    std::fill(B.dKT.begin(), B.dKT.end(), T(0));
    pr.accumulate(QT.data(), d, n, B.G.data(), n, kTile, B.dKT.data(), kTile);  // dK_t^T = Q^T dS
    for (std::size_t i = 0; i < nt; ++i)
      for (std::size_t j = 0; j < d; ++j) dk[(t0 + i) * d + j] = beta * B.dKT[j * kTile + i];
  });
  sum_workers(dQ, db, n, d, dp, beta, dq, dbeta);
}

template void attention_weights<float>(const AttentionArgs<float>&, float*);
template void attention_weights<double>(const AttentionArgs<double>&, double*);
template void attention_weights_backward<float>(const AttentionArgs<float>&, const float*, const float*, float*, float*,
                                                double*, float*);
template void attention_weights_backward<double>(const AttentionArgs<double>&, const double*, const double*, double*,
                                                 double*, double*, double*);

template <class T>
void log_sum_exp_backward(const AttentionArgs<T>& a, const double* lse, const double* dlse, T* dq, T* dk, double* dbeta) {
  refuse_norms(a, "log_sum_exp_backward");
  check(a);
  const std::size_t n = a.n;
  const T beta = static_cast<T>(a.beta);
  const auto N = static_cast<Eigen::Index>(n), D = static_cast<Eigen::Index>(a.d);
  const ConstMap<T> Q(a.q, N, D);
  Eigen::Matrix<T, Eigen::Dynamic, 1> L(N), G(N);
  for (Eigen::Index b = 0; b < N; ++b) {
    L[b] = static_cast<T>(lse[b]);
    G[b] = static_cast<T>(dlse[b]);
    ASSOCMEM_CHECK_ARG(std::isfinite(dlse[b]), "the log-sum-exp's gradient contains NaN or Inf (element ", b, ")");
  }
  const Mat<T> GQ = G.asDiagonal() * Q;  // dlse o q
  backward_tiles(a, L, dq, dbeta, [&](std::size_t t0, Eigen::Index NT, const Mat<T>& S, const Mat<T>& P,
                                      const ConstMap<T>& Kt, const ConstMap<T>&, Mat<T>& dQw, double& dbw) {
    MutMap<T>(dk + t0 * a.d, NT, D).noalias() = beta * (P.transpose() * GQ);
    const Mat<T> GP = G.asDiagonal() * P;
    dQw.noalias() += beta * (GP * Kt);
    dbw += double((GP.array() * S.array()).sum());
  });
}

namespace {
// x -> h(x) elementwise over a tile, with masked entries 0.
template <class T, class H>
Mat<T> elementwise(const AttentionArgs<T>& a, std::size_t t0, const Mat<T>& S, H&& h) {
  Mat<T> out(S.rows(), S.cols());
  for (Eigen::Index b = 0; b < S.rows(); ++b)
    for (Eigen::Index i = 0; i < S.cols(); ++i) out(b, i) = static_cast<T>(h(double(S(b, i))));
  zero_masked(a, t0, out);
  return out;
}
}  // namespace

template <class T>
void spherical_forward(const AttentionArgs<T>& a, const AdditiveLagrangian& F, T* drive, double* energy) {
  refuse_norms(a, "spherical_forward");
  check(a);
  const std::size_t n = a.n, nw = worker_count(a);
  const auto N = static_cast<Eigen::Index>(n), D = static_cast<Eigen::Index>(a.d);
  std::vector<Mat<T>> acc(nw, Mat<T>::Zero(N, D));
  std::vector<std::vector<double>> e(nw, std::vector<double>(n, 0.0));
  for_each_tile(a, nw, [&](std::size_t w, std::size_t t0, [[maybe_unused]] std::size_t nt, const Mat<T>& S,
                           [[maybe_unused]] const ConstMap<T>& Kt, [[maybe_unused]] const ConstMap<T>& Vt) {
    const Mat<T> A = elementwise(a, t0, S, [&](double x) { return F.dG(x); });  // f = F' (eq. 22)
    const Mat<T> G = elementwise(a, t0, S, [&](double x) { return F.G(x); });
    acc[w].noalias() += A * Kt;
    for (Eigen::Index b = 0; b < N; ++b) e[w][std::size_t(b)] -= double(G.row(b).sum());  // eq. (21)
  });
  MutMap<T> out(drive, N, D);
  out.setZero();
  for (std::size_t w = 0; w < nw; ++w) out += acc[w];
  for (std::size_t b = 0; b < n; ++b) {
    energy[b] = 0;
    for (std::size_t w = 0; w < nw; ++w) energy[b] += e[w][b];
    ASSOCMEM_CHECK_ARG(std::isfinite(energy[b]), "model C: F overflowed at query ", b, "; lower beta or the norms");
  }
}

template <class T>
void spherical_backward(const AttentionArgs<T>& a, const AdditiveLagrangian& F, const T* ddrive, const double* denergy,
                        T* dg, T* dk) {
  refuse_norms(a, "spherical_backward");
  check(a);
  const std::size_t n = a.n, nw = worker_count(a);
  const auto N = static_cast<Eigen::Index>(n), D = static_cast<Eigen::Index>(a.d);
  const ConstMap<T> Gq(a.q, N, D);
  Mat<T> dD = Mat<T>::Zero(N, D);
  if (ddrive) dD = ConstMap<T>(ddrive, N, D);
  Eigen::Matrix<T, Eigen::Dynamic, 1> dE = Eigen::Matrix<T, Eigen::Dynamic, 1>::Zero(N);
  if (denergy)
    for (Eigen::Index b = 0; b < N; ++b) dE[b] = static_cast<T>(denergy[b]);
  std::vector<Mat<T>> dG(nw, Mat<T>::Zero(N, D));
  std::vector<double> unused(nw, 0.0);
  for_each_tile(a, nw, [&](std::size_t w, std::size_t t0, [[maybe_unused]] std::size_t nt, const Mat<T>& S,
                           [[maybe_unused]] const ConstMap<T>& Kt, [[maybe_unused]] const ConstMap<T>& Vt) {
    const auto NT = static_cast<Eigen::Index>(nt);
    const Mat<T> A = elementwise(a, t0, S, [&](double x) { return F.dG(x); });
    const Mat<T> A2 = elementwise(a, t0, S, [&](double x) { return F.d2G(x); });
    const Mat<T> dS = (A2.array() * (dD * Kt.transpose()).array()).matrix() - dE.asDiagonal() * A;
    MutMap<T>(dk + t0 * a.d, NT, D).noalias() = A.transpose() * dD + dS.transpose() * Gq;
    dG[w].noalias() += dS * Kt;
  });
  double ignored = 0;
  reduce_workers(dG, unused, dg, &ignored);
}

// ---- model C's step and model B's fixed point (assocmem.torch) ------------------------------------
namespace {

void check_spherical_step(double alpha, double step) {
  ASSOCMEM_CHECK_ARG(std::isfinite(step) && step > 0, "step must be finite and > 0, got ", step);
  ASSOCMEM_CHECK_ARG(std::isfinite(alpha) && alpha >= 0, "alpha must be finite and >= 0, got ", alpha);
}

// Model C's arguments at the unit directions g = v/|v| of eq. (18) of the states a.q (n x d)
// (lagrangians::spherical_direction, the engine's and the Lagrangian's): g, the norms, and a with q = g; a
// zero state (or one whose norm overflows) is refused, as are a step or alpha out of range.
template <class T>
struct AtDirections {
  std::vector<T> g;
  std::vector<double> norm;
  AttentionArgs<T> args;

  AtDirections(const AttentionArgs<T>& a, double alpha, double step) : args(a) {
    check_spherical_step(alpha, step);
    ASSOCMEM_CHECK_ARG(a.q != nullptr && a.n > 0 && a.d > 0, "model C: no states");
    check_finite_array(a.q, checked_mul(a.n, a.d, "states"), "states");
    g.resize(a.n * a.d);
    norm.resize(a.n);
    for (std::size_t b = 0; b < a.n; ++b) {
      norm[b] = lagrangians::spherical_direction(a.q + b * a.d, a.d, &g[b * a.d]);
      ASSOCMEM_CHECK_ARG(norm[b] > 0, "model C: state ", b, " is zero; its direction v/|v| (eq. 18) is undefined");
      ASSOCMEM_CHECK_ARG(std::isfinite(norm[b]), "model C: the norm of state ", b, " overflows");
    }
    args.q = g.data();
  }
  AtDirections(const AtDirections&) = delete;
  AtDirections& operator=(const AtDirections&) = delete;
};
}  // namespace

template <class T>
void spherical_step(const AttentionArgs<T>& a, const AdditiveLagrangian& F, double alpha, double step, T* next,
                    double* energy) {
  const AtDirections<T> at(a, alpha, step);
  std::vector<T> drive(a.n * a.d);
  spherical_forward(at.args, F, drive.data(), energy);  // eqs. (22), (21) at g
  if (next)
    for (std::size_t i = 0; i < a.n * a.d; ++i)
      next[i] = static_cast<T>(detail::spherical_step(a.q[i], drive[i], alpha, step));  // eq. (22)
}

template <class T>
void spherical_step_backward(const AttentionArgs<T>& a, const AdditiveLagrangian& F, double alpha, double step,
                             const T* dnext, const double* denergy, T* dv, T* dk) {
  const AtDirections<T> at(a, alpha, step);
  const std::size_t n = a.n, d = a.d;
  std::vector<T> ddrive;
  if (dnext) {
    check_finite_array(dnext, n * d, "dnext");
    ddrive.resize(n * d);
    for (std::size_t i = 0; i < n * d; ++i) ddrive[i] = static_cast<T>(step * double(dnext[i]));
  }
  std::vector<T> dg(n * d);
  spherical_backward(at.args, F, dnext ? ddrive.data() : nullptr, denergy, dg.data(), dk);
  const double keep = 1.0 - step * alpha;  // d next / d v of the explicit v - step alpha v
  for (std::size_t b = 0; b < n; ++b) {
    const T* gb = &at.g[b * d];
    const T* dgb = &dg[b * d];
    double gd = 0;
    for (std::size_t j = 0; j < d; ++j) gd += double(gb[j]) * double(dgb[j]);
    for (std::size_t j = 0; j < d; ++j) {
      const double through_g = (double(dgb[j]) - double(gb[j]) * gd) / at.norm[b];  // (I - g g^T) / |v|
      dv[b * d + j] = static_cast<T>((dnext ? keep * double(dnext[b * d + j]) : 0.0) + through_g);
    }
  }
}

template <class T>
Retrieval attention_fixed_point(const AttentionArgs<T>& a, long max_updates, double fixed_point_tol, T* states) {
  ASSOCMEM_CHECK_ARG(max_updates >= 0, "max_updates must be >= 0, got ", max_updates);
  ASSOCMEM_CHECK_ARG(std::isfinite(fixed_point_tol) && fixed_point_tol >= 0,
                     "fixed_point_tol must be finite and >= 0, got ", fixed_point_tol);
  ASSOCMEM_CHECK_ARG(same_memory(a) && values_are_keys(a) && !a.key_norm.on,
                     "attention_fixed_point: eq. (16) on the keys: the values must be the keys, without layer norms");
  ASSOCMEM_CHECK_ARG(a.dropout == 0 && a.bias_rows == 0, "attention_fixed_point: no dropout or bias");
  ASSOCMEM_CHECK_ARG(a.q != nullptr && a.n > 0 && a.d > 0, "attention_fixed_point: no states");
  ASSOCMEM_CHECK_ARG(a.mask.rows == 0 || a.mask.rows == 1 || a.mask.rows == a.n, "mask: ", a.mask.rows,
                     " rows for ", a.n, " states (0, 1 or n)");
  check(a);  // once: the keys do not change, and each update's states are checked finite by the driver
  const std::size_t n = a.n, d = a.d;
  std::vector<T> v(a.q, a.q + n * d);
  Retrieval r;
  r.batch = n;
  r.dim = d;
  const Monitor none;
  detail::Poller poller(none);
  std::vector<std::uint8_t> mask_rows;
  std::vector<double> lse;
  detail::iterate_to_fixed_point(
      v, n, d, max_updates, fixed_point_tol, poller, r,
      [&](const std::vector<T>& cur, const std::vector<std::size_t>& rows, std::vector<T>& next) {
        AttentionArgs<T> x = a;
        x.q = cur.data();
        x.n = rows.size();
        if (a.mask.rows > 1) {  // each row its own mask: the rows still iterating
          mask_rows.resize(rows.size() * a.K);
          for (std::size_t i = 0; i < rows.size(); ++i)
            std::copy(a.mask.data + rows[i] * a.K, a.mask.data + (rows[i] + 1) * a.K, &mask_rows[i * a.K]);
          x.mask = {mask_rows.data(), rows.size()};
        }
        lse.resize(rows.size());
        forward_checked(x, next.data(), lse.data(), false);  // eq. (16)
      },
      detail::max_abs_change<T>);
  std::copy(v.begin(), v.end(), states);
  return r;
}

template void spherical_step<float>(const AttentionArgs<float>&, const AdditiveLagrangian&, double, double, float*,
                                    double*);
template void spherical_step<double>(const AttentionArgs<double>&, const AdditiveLagrangian&, double, double, double*,
                                     double*);
template void spherical_step_backward<float>(const AttentionArgs<float>&, const AdditiveLagrangian&, double, double,
                                             const float*, const double*, float*, float*);
template void spherical_step_backward<double>(const AttentionArgs<double>&, const AdditiveLagrangian&, double, double,
                                              const double*, const double*, double*, double*);
template Retrieval attention_fixed_point<float>(const AttentionArgs<float>&, long, double, float*);
template Retrieval attention_fixed_point<double>(const AttentionArgs<double>&, long, double, double*);

template void spherical_forward<float>(const AttentionArgs<float>&, const AdditiveLagrangian&, float*, double*);
template void spherical_forward<double>(const AttentionArgs<double>&, const AdditiveLagrangian&, double*, double*);
// ---- batches of independent attentions (AttentionBatch) ------------------------------------------
namespace {

template <class T>
AttentionArgs<T> batch_element(const AttentionArgs<T>& a, const AttentionBatch& b, std::size_t e, int threads) {
  AttentionArgs<T> x = a;
  x.q = a.q + e * b.q_stride;
  if (a.k) x.k = a.k + e * b.k_stride;
  if (a.v) x.v = a.v + e * b.v_stride;
  if (a.k_bf16) x.k_bf16 = a.k_bf16 + e * b.k_stride;
  if (a.v_bf16) x.v_bf16 = a.v_bf16 + e * b.v_stride;
  if (a.mask.rows) x.mask.data = a.mask.data + e * b.mask_stride;
  if (a.bias_rows) x.bias = a.bias + e * b.bias_stride;
  if (b.betas) x.beta = b.betas[e];
  x.dropout_seed = mix64(a.dropout_seed ^ mix64(0xD1B54A32D192ED03ull * (e + 1)));
  x.threads = threads;
  return x;
}

// Runs fn(e, element's args) for every element, the elements split over the threads (each element's
// tiles on the threads left over when there are fewer elements than threads). The first error, with
// the element named, is raised on the caller.
template <class T, class Fn>
void for_each_element(const AttentionArgs<T>& a, const AttentionBatch& b, Fn&& fn) {
  ASSOCMEM_CHECK_ARG(b.elements > 0, "attention batch: no elements");
  ASSOCMEM_CHECK_ARG(a.threads >= 0 && a.threads <= kMaxThreads, "threads must be in [0, ", kMaxThreads, "], got ",
                     a.threads);
  const bool same = a.k_bf16 ? a.v_bf16 == a.k_bf16 : a.v == a.k;
  ASSOCMEM_CHECK_ARG(b.q_stride >= a.n * a.d && b.k_stride >= a.K * a.d && b.v_stride >= a.K * a.dv &&
                         (!same || b.v_stride == b.k_stride) && (a.mask.rows == 0 || b.mask_stride >= a.mask.rows * a.K) &&
                         (a.bias_rows == 0 || b.bias_stride >= a.bias_rows * a.K),
                     "attention batch: a stride smaller than one element (queries ", b.q_stride, " < ", a.n * a.d,
                     ", keys ", b.k_stride, " < ", a.K * a.d, ", values ", b.v_stride, " < ", a.K * a.dv, ", or mask ",
                     b.mask_stride, " < ", a.mask.rows * a.K, ", or bias ", b.bias_stride, " < ", a.bias_rows * a.K,
                     "; shared memories: one attention call for all queries)");
  const int threads = detail::resolve_threads(a.threads);
  const std::size_t workers = std::min<std::size_t>(static_cast<std::size_t>(threads), b.elements);
  const int inner = std::max(1, threads / static_cast<int>(workers));
  detail::parallel_chunks(b.elements, static_cast<int>(workers), [&](std::size_t, std::size_t eb, std::size_t ee) {
    for (std::size_t e = eb; e < ee; ++e) {
      try {
        fn(e, batch_element(a, b, e, inner));
      } catch (const InvalidArgument& err) {
        throw InvalidArgument(detail::concat("batch element ", e, ": ", err.what()));
      }
    }
  });
}

}  // namespace

template <class T>
void attention_forward_batch(const AttentionArgs<T>& a, const AttentionBatch& batch, T* out, double* lse) {
  for_each_element(a, batch, [&](std::size_t e, const AttentionArgs<T>& x) {
    attention_forward(x, out + e * a.n * a.dv, lse + e * a.n);
  });
}

template <class T>
void attention_backward_batch(const AttentionArgs<T>& a, const AttentionBatch& batch, const T* out, const double* lse,
                              const T* dout, T* dq, T* dk, T* dv, double* dbeta, T* dbias,
                              const RowNormGradients<T>* dnorm) {
  for_each_element(a, batch, [&](std::size_t e, const AttentionArgs<T>& x) {
    RowNormGradients<T> g;
    if (dnorm) {
      const auto at = [&](T* p, std::size_t c) { return p ? p + e * c : nullptr; };
      g = {at(dnorm->key_gamma, a.d), at(dnorm->key_bias, a.d), at(dnorm->value_gamma, a.dv),
           at(dnorm->value_bias, a.dv)};
    }
    attention_backward(x, out + e * a.n * a.dv, lse + e * a.n, dout + e * a.n * a.dv, dq + e * a.n * a.d,
                       dk + e * a.K * a.d, dv + e * a.K * a.dv, dbeta + e, dbias ? dbias + e * a.bias_rows * a.K : nullptr,
                       dnorm ? &g : nullptr);
  });
}

template <class T>
void attention_weights_batch(const AttentionArgs<T>& a, const AttentionBatch& batch, T* P) {
  for_each_element(a, batch, [&](std::size_t e, const AttentionArgs<T>& x) { attention_weights(x, P + e * a.n * a.K); });
}

template <class T>
void attention_weights_backward_batch(const AttentionArgs<T>& a, const AttentionBatch& batch, const T* P, const T* dP,
                                      T* dq, T* dk, double* dbeta, T* dbias) {
  for_each_element(a, batch, [&](std::size_t e, const AttentionArgs<T>& x) {
    attention_weights_backward(x, P + e * a.n * a.K, dP + e * a.n * a.K, dq + e * a.n * a.d, dk + e * a.K * a.d,
                               dbeta + e, dbias ? dbias + e * a.bias_rows * a.K : nullptr);
  });
}

template void attention_weights_batch<float>(const AttentionArgs<float>&, const AttentionBatch&, float*);
template void attention_weights_batch<double>(const AttentionArgs<double>&, const AttentionBatch&, double*);
template void attention_weights_backward_batch<float>(const AttentionArgs<float>&, const AttentionBatch&, const float*,
                                                      const float*, float*, float*, double*, float*);
template void attention_weights_backward_batch<double>(const AttentionArgs<double>&, const AttentionBatch&,
                                                       const double*, const double*, double*, double*, double*,
                                                       double*);
template void attention_forward_batch<float>(const AttentionArgs<float>&, const AttentionBatch&, float*, double*);
template void attention_forward_batch<double>(const AttentionArgs<double>&, const AttentionBatch&, double*, double*);
template void attention_backward_batch<float>(const AttentionArgs<float>&, const AttentionBatch&, const float*,
                                              const double*, const float*, float*, float*, float*, double*, float*,
                                              const RowNormGradients<float>*);
template void attention_backward_batch<double>(const AttentionArgs<double>&, const AttentionBatch&, const double*,
                                               const double*, const double*, double*, double*, double*, double*,
                                               double*, const RowNormGradients<double>*);

template void spherical_backward<float>(const AttentionArgs<float>&, const AdditiveLagrangian&, const float*,
                                        const double*, float*, float*);
template void spherical_backward<double>(const AttentionArgs<double>&, const AdditiveLagrangian&, const double*,
                                         const double*, double*, double*);
template void log_sum_exp_backward<float>(const AttentionArgs<float>&, const double*, const double*, float*, float*,
                                          double*);
template void log_sum_exp_backward<double>(const AttentionArgs<double>&, const double*, const double*, double*,
                                           double*, double*);
template void attention_forward<float>(const AttentionArgs<float>&, float*, double*);
template void attention_forward<double>(const AttentionArgs<double>&, double*, double*);
template void attention_backward<float>(const AttentionArgs<float>&, const float*, const double*, const float*, float*,
                                        float*, float*, double*, float*, const RowNormGradients<float>*);
template void attention_backward<double>(const AttentionArgs<double>&, const double*, const double*, const double*,
                                         double*, double*, double*, double*, double*, const RowNormGradients<double>*);

}  // namespace assocmem
