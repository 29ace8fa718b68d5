// The exact passes: model B's online softmax over every memory (eq. 16; eq. 13 from its log-sum-exp) and
// model C's drive (eqs. 18, 21, 22), each merged over the participants when the memories are spread;
// eq. (16) over gathered candidate rows (the certified and approximate passes).
#include "internal.hpp"

namespace assocmem {

namespace detail {

// eq. (13): E = v.v/2 - (1/beta) log sum_mu exp(beta xi_mu . v), from the pass's log-sum-exp.
double model_b_energy(const float* v, std::size_t d, double log_sum_exp, double beta) {
  double s = 0;
  for (std::size_t j = 0; j < d; ++j) s += double(v[j]) * v[j];
  return 0.5 * s - log_sum_exp / beta;
}

// One model B pass for queries [n x dim]: the partial over the memories the mask leaves, accumulating
// the rows of `acc_store` (the keys for an update of eq. 16, the values for the association).
AttentionPartial b_partial(const EngineCore& core, const MemoryStore& acc_store, const float* q, std::size_t n,
                           std::size_t top_k, const MemoryMask& mask, const std::vector<std::size_t>* rows,
                           double beta, Poller& poller) {
  const std::size_t dv = acc_store.dim(), dvp = round_up(dv, kBlock);
  const std::size_t nw = core.workers();
  std::vector<SoftmaxEpilogue> epi;
  for (std::size_t w = 0; w < nw; ++w)
    epi.push_back({core.ops, static_cast<float>(beta), core.store->ids(), mask, rows, core.store->size(),
                   AttentionPartial(n, 0, top_k)});
  std::vector<std::vector<float>> acc;
  core.pass(q, n, epi, acc, poller, acc_store);
  AttentionPartial out(n, dv, top_k);
  for (std::size_t w = 0; w < nw; ++w) {
    AttentionPartial p(n, dv, top_k);
    p.max = std::move(epi[w].part.max);
    p.sum = std::move(epi[w].part.sum);
    p.top = std::move(epi[w].part.top);
    for (auto& t : p.top)
      std::sort(t.begin(), t.end(), [](const ScoredId& a, const ScoredId& b) { return a.score > b.score; });
    for (std::size_t b = 0; b < n; ++b) std::copy(&acc[w][b * dvp], &acc[w][b * dvp] + dv, &p.acc[b * dv]);
    out.merge(p);
  }
  out.check_finite(rows, beta);
  return out;
}

// b_partial over the engine's memories, merged over all participants' memories when there is a merger.
AttentionPartial merged_b_partial(const EngineCore& core, const MemoryStore& acc_store, const float* q,
                                  std::size_t n, std::size_t top_k, const MemoryMask& mask,
                                  const std::vector<std::size_t>* rows, double beta, Poller& poller) {
  AttentionPartial part;
  collectively(core.opt.merger, [&] { part = b_partial(core, acc_store, q, n, top_k, mask, rows, beta, poller); });
  if (core.opt.merger) core.opt.merger->merge(part);
  return part;
}

// The candidates' rows gathered (the rescoring reads them scattered once), and their exact scores q . xi.
void gather_scores(const EngineCore& core, const float* q, const std::vector<std::size_t>& cand,
                   std::vector<std::uint8_t>& buf, std::vector<float>& sc) {
  const MemoryStore& store = *core.store;
  const std::size_t nc = cand.size(), rb = store.row_bytes(), d = store.dim();
  buf.resize(nc * rb);
  for (std::size_t c = 0; c < nc; ++c) std::memcpy(&buf[c * rb], store.row(cand[c]), rb);
  sc.resize(nc);
  if (store.dtype() == DType::BFloat16)
    core.ops->dots_bf16(q, reinterpret_cast<const std::uint16_t*>(buf.data()), nc, d, sc.data());
  else
    core.ops->dots_f32(q, reinterpret_cast<const float*>(buf.data()), nc, d, sc.data());
}

// acc += sum_c p[c] row_c over the gathered rows.
void gather_accumulate(const EngineCore& core, const std::vector<std::uint8_t>& buf, const float* p,
                       std::size_t nc, float* acc) {
  const std::size_t d = core.store->dim();
  if (core.store->dtype() == DType::BFloat16)
    core.ops->axpy_bf16(p, reinterpret_cast<const std::uint16_t*>(buf.data()), nc, d, acc);
  else
    core.ops->axpy_f32(p, reinterpret_cast<const float*>(buf.data()), nc, d, acc);
}

// eq. (16) over the candidate rows `cand` of query q: out.max, out.sum and out.acc of row i, and with
// top_k the best min(top_k, |cand|) (beta score, id), best first (ties: smaller id).
std::vector<ScoredId> b_over_candidates(const EngineCore& core, const float* q,
                                        const std::vector<std::size_t>& cand, double beta, std::size_t top_k,
                                        AttentionPartial& out, std::size_t i, std::vector<std::uint8_t>& buf,
                                        std::vector<float>& sc, std::vector<float>& p, std::vector<float>& acc) {
  const std::size_t nc = cand.size(), d = core.store->dim();
  gather_scores(core, q, cand, buf, sc);
  p.resize(nc);
  const float m = core.ops->scaled_max(sc.data(), nc, static_cast<float>(beta));
  core.ops->exp_shift_sum(sc.data(), nc, static_cast<float>(beta), m, p.data());
  double sum = 0;
  for (float x : p) sum += double(x);
  acc.assign(d, 0.0f);
  gather_accumulate(core, buf, p.data(), nc, acc.data());
  out.set(i, m, sum, acc.data());
  std::vector<ScoredId> t;
  if (top_k > 0) {
    t.resize(nc);
    for (std::size_t c = 0; c < nc; ++c) t[c] = {static_cast<float>(beta) * sc[c], core.store->ids()[cand[c]]};
    std::sort(t.begin(), t.end(), [](const ScoredId& x, const ScoredId& y) {
      return x.score != y.score ? x.score > y.score : x.id < y.id;
    });
    t.resize(std::min(top_k, nc));
  }
  return t;
}

// The directions g = v/|v| of n states (eq. 17), each non-zero and finite.
std::vector<float> directions(const float* v, std::size_t n, std::size_t d, const std::vector<std::size_t>* rows) {
  std::vector<float> g(n * d);
  for (std::size_t i = 0; i < n; ++i) {
    const double norm = lagrangians::spherical_direction(v + i * d, d, &g[i * d]);  // eq. (17)
    ASSOCMEM_CHECK_ARG(norm > 0 && std::isfinite(norm), "queries: row ", rows ? (*rows)[i] : i,
                       norm > 0 ? " has an infinite norm" : " is zero; model C's output v/|v| is undefined at 0");
  }
  return g;
}

// One pass of model C at the directions g = v/|v| (eq. 18): drive = xi^T F'(xi g) per row, and
// energy = -sum_mu F(xi_mu . g) (eq. 21).
// With score_err >= 0 also, per query, perr = sum |xi| |computed F' - exact F'| and mass = sum |xi| F'
// (AdditiveEpilogue; score_err relative to each memory's norm).
void model_c_pass(const EngineCore& core, const AdditiveLagrangian* F, const float* v, std::size_t n,
                  const MemoryMask& mask, const std::vector<std::size_t>* rows, Poller& poller,
                  std::vector<float>& drive, std::vector<double>& energy, double score_err,
                  std::vector<double>* perr, std::vector<double>* mass) {
  const std::size_t d = core.dim(), dp = core.dpad();
  const std::vector<float> g = directions(v, n, d, rows);
  const std::size_t nw = core.workers();
  AdditiveEpilogue proto{F, mask, rows, core.store->size(), std::vector<double>(n, 0.0), false, -1.0, nullptr, {}, {}};
  if (score_err >= 0) {
    proto.score_err = score_err;
    proto.norms = core.norms.data();
    proto.perr_sum.assign(n, 0.0);
    proto.mass_sum.assign(n, 0.0);
    perr->assign(n, 0.0);
    mass->assign(n, 0.0);
  }
  std::vector<AdditiveEpilogue> epi(nw, proto);
  std::vector<std::vector<float>> acc;
  core.pass(g.data(), n, epi, acc, poller, *core.store);
  drive.assign(n * d, 0.0f);
  energy.assign(n, 0.0);
  for (std::size_t w = 0; w < nw; ++w) {
    if (epi[w].overflow) throw SolverError("model C: F'(xi.g) overflowed float32; lower beta or the pattern norms");
    for (std::size_t i = 0; i < n; ++i) {
      energy[i] -= epi[w].energy_sum[i];  // eq. (21)
      for (std::size_t j = 0; j < d; ++j) drive[i * d + j] += acc[w][i * dp + j];
      if (score_err >= 0) {
        (*perr)[i] += epi[w].perr_sum[i];
        (*mass)[i] += epi[w].mass_sum[i];
      }
    }
  }
}

// model_c_pass over the engine's memories, summed over all participants' memories with a merger.
void merged_c_pass(const EngineCore& core, const AdditiveLagrangian* F, const float* v, std::size_t n,
                   const MemoryMask& mask, const std::vector<std::size_t>* rows, Poller& poller,
                   std::vector<float>& drive, std::vector<double>& energy) {
  collectively(core.opt.merger, [&] { model_c_pass(core, F, v, n, mask, rows, poller, drive, energy); });
  if (core.opt.merger) core.opt.merger->merge_sums(drive, energy);
}

}  // namespace detail

}  // namespace assocmem
