// The online softmax's state (AttentionPartial: running maximum, rescaled sums, top-k) and its exact
// merge; the kernel names and the engine options' checks.
#include "internal.hpp"

namespace assocmem {

KernelChoice parse_kernel(const std::string& name) {
  if (name == "auto") return KernelChoice::Auto;
  if (name == "generic") return KernelChoice::Generic;
  if (name == "avx512") return KernelChoice::Avx512;
  if (name == "avx512_bf16") return KernelChoice::Avx512Bf16;
  if (name == "amx_bf16") return KernelChoice::AmxBf16;
  if (name == "sse4") return KernelChoice::Sse4;
  if (name == "avx2") return KernelChoice::Avx2;
  if (name == "neon") return KernelChoice::Neon;
  if (name == "sve") return KernelChoice::Sve;
  if (name == "sve2") return KernelChoice::Sve2;
  throw InvalidArgument(
      "kernel must be one of auto, generic, sse4, avx2, avx512, avx512_bf16, amx_bf16, neon, sve, sve2; got '" + name +
      "'");
}

void EngineOptions::validate() const {
  ASSOCMEM_CHECK_ARG(threads >= 0 && threads <= kMaxThreads, "threads must be in [0, ", kMaxThreads,
                     "] (0 = the CPUs this process may run on), got ", threads);
  ASSOCMEM_CHECK_ARG(tile >= 32 && tile <= 65536 && tile % 32 == 0, "tile must be a multiple of 32 in [32, 65536], got ",
                     tile);
}

// ------------------------------------------------------------------------------------------------
// AttentionPartial: the online softmax state and its exact merge.

AttentionPartial::AttentionPartial(std::size_t b, std::size_t d, std::size_t k)
    : batch(b), dim(d), top_k(k), max(b, -std::numeric_limits<float>::infinity()), sum(b, 0.0), acc(b * d, 0.0f), top(b) {}

namespace {
void merge_top(std::vector<ScoredId>& into, const std::vector<ScoredId>& other, std::size_t k) {
  std::vector<ScoredId> all;
  all.reserve(into.size() + other.size());
  all.insert(all.end(), into.begin(), into.end());
  all.insert(all.end(), other.begin(), other.end());
  std::sort(all.begin(), all.end(), [](const ScoredId& a, const ScoredId& b) {
    return a.score != b.score ? a.score > b.score : a.id < b.id;
  });
  if (all.size() > k) all.resize(k);
  into = std::move(all);
}
}  // namespace

namespace {
using detail::rescale_factor;
void scale_plain(float* x, std::size_t n, float a) {
  for (std::size_t i = 0; i < n; ++i) x[i] *= a;
}
}  // namespace

void AttentionPartial::raise_max(std::size_t b, float new_max, float* acc_b, std::size_t n,
                                 void (*scale)(float*, std::size_t, float)) {
  detail::raise_max(max[b], sum[b], acc_b, n, new_max, scale);
}

void AttentionPartial::merge(const AttentionPartial& o) {
  ASSOCMEM_CHECK_ARG(o.batch == batch && o.dim == dim && o.top_k == top_k, "merge: partials differ in batch, dim or top_k (",
                     batch, ", ", dim, ", ", top_k, ") vs (", o.batch, ", ", o.dim, ", ", o.top_k, ")");
  for (std::size_t b = 0; b < batch; ++b) {
    if (top_k) merge_top(top[b], o.top[b], top_k);
    if (o.max[b] == -std::numeric_limits<float>::infinity()) continue;
    float* a = acc.data() + b * dim;
    const float* oa = o.acc.data() + b * dim;
    raise_max(b, o.max[b], a, dim, scale_plain);
    const double s2 = rescale_factor(o.max[b], max[b]);
    sum[b] += o.sum[b] * s2;
    for (std::size_t j = 0; j < dim; ++j) a[j] = static_cast<float>(a[j] + oa[j] * s2);
  }
}

double AttentionPartial::log_sum_exp(std::size_t b) const {
  ASSOCMEM_CHECK_ARG(b < batch, "query index ", b, " out of range (batch ", batch, ")");
  if (sum[b] == 0.0) return -std::numeric_limits<double>::infinity();
  return double(max[b]) + std::log(sum[b]);
}

void AttentionPartial::state(std::size_t b, float* out) const {
  ASSOCMEM_CHECK_ARG(b < batch, "query index ", b, " out of range (batch ", batch, ")");
  ASSOCMEM_CHECK_ARG(sum[b] > 0.0, "state: no memory was seen for query ", b);
  const double inv = 1.0 / sum[b];
  for (std::size_t j = 0; j < dim; ++j) out[j] = static_cast<float>(acc[b * dim + j] * inv);
}

std::vector<std::pair<std::uint64_t, double>> AttentionPartial::top_weights(std::size_t b) const {
  const double lse = log_sum_exp(b);
  std::vector<std::pair<std::uint64_t, double>> out;
  for (const auto& s : top[b]) out.emplace_back(s.id, std::exp(double(s.score) - lse));
  return out;
}

}  // namespace assocmem
