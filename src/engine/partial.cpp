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
    : OnlineSoftmax<float>(b, d), top_k(k), top(b) {}

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

void AttentionPartial::merge(const AttentionPartial& o) {
  ASSOCMEM_CHECK_ARG(o.batch == batch && o.dim == dim && o.top_k == top_k, "merge: partials differ in batch, dim or top_k (",
                     batch, ", ", dim, ", ", top_k, ") vs (", o.batch, ", ", o.dim, ", ", o.top_k, ")");
  if (top_k)
    for (std::size_t b = 0; b < batch; ++b) merge_top(top[b], o.top[b], top_k);
  OnlineSoftmax<float>::merge(o);
}

void AttentionPartial::check_finite(const std::vector<std::size_t>* rows, double beta) const {
  for (std::size_t b = 0; b < batch; ++b)
    ASSOCMEM_CHECK_ARG(finite(b), "queries: row ", rows ? (*rows)[b] : b,
                       ": the softmax over the scores is not finite (beta = ", beta, ")");
}

double AttentionPartial::log_sum_exp(std::size_t b) const {
  ASSOCMEM_CHECK_ARG(b < batch, "query index ", b, " out of range (batch ", batch, ")");
  return OnlineSoftmax<float>::log_sum_exp(b);
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
