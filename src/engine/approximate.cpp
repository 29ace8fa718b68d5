// Approximate model B pass (RetrieveOptions::approximate).
#include "internal.hpp"

namespace assocmem {

namespace detail {

// Approximate model B pass (RetrieveOptions::approximate): eq. (16) over the best k candidates of the
// engine's CandidateSource for each query, the memories the mask leaves. No bound on what it misses.
AttentionPartial approx_b_partial(const EngineCore& core, const float* q, std::size_t n, std::size_t top_k,
                                  const MemoryMask& mask, const std::vector<std::size_t>* rows, double beta,
                                  std::size_t k) {
  const std::size_t K = core.store->size(), d = core.store->dim();
  std::vector<std::int64_t> ids(checked_mul(n, k, "approximate: queries x candidates"));
  core.opt.candidates->search(q, n, k, ids.data());
  AttentionPartial out(n, d, top_k);
  std::vector<std::uint8_t> none(n, 0);
  detail::parallel_chunks(n, static_cast<int>(core.workers()), [&](std::size_t, std::size_t i0, std::size_t i1) {
    std::vector<std::uint8_t> buf;
    std::vector<float> sc, p, acc;
    for (std::size_t i = i0; i < i1; ++i) {
      const std::uint8_t* mrow = mask_row(mask, rows, i, K);
      std::vector<std::size_t> cand;
      for (std::size_t c = 0; c < k; ++c) {
        const std::int64_t r = ids[i * k + c];
        if (r >= 0 && std::size_t(r) < K && !(mrow && mrow[r])) cand.push_back(std::size_t(r));
      }
      std::sort(cand.begin(), cand.end());
      cand.erase(std::unique(cand.begin(), cand.end()), cand.end());
      if (cand.empty()) {
        none[i] = 1;
        continue;
      }
      out.top[i] = b_over_candidates(core, q + i * d, cand, beta, top_k, out, i, buf, sc, p, acc);
    }
  });
  core.store->check_intact();
  for (std::size_t i = 0; i < n; ++i) {
    ASSOCMEM_CHECK_ARG(!none[i], "approximate: the candidate source found no memory the mask leaves for query row ",
                       rows ? (*rows)[i] : i, "; ask for more candidates");
  }
  out.check_finite(rows, beta);
  return out;
}

}  // namespace detail

}  // namespace assocmem
