// Internal: the retrieval engine's rooms share this. The tiled pass over a store with its kernel table
// (EngineCore: kernels chosen once at construction), the epilogues it runs on every score tile (model
// B's online softmax, model C's elementwise F'), and the passes each room provides:
//   partial.cpp      AttentionPartial, the online softmax's state and exact merge; kernel names
//   passes.cpp       the exact passes of model B (eq. 16) and model C (eq. 22), merged over participants
//   certified.cpp    the screen of codes and the certified passes (issue 14)
//   approximate.cpp  eq. (16) over an index's candidates
//   model_b.cpp, model_c.cpp  the engines: options, steps and results of a retrieval
// The rooms compile as one unity group (CMakeLists.txt): names local to one file must differ between them.
#pragma once

#include "assocmem/engine.hpp"

#include "assocmem/codes.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <queue>

#include "../collective.hpp"
#include "../fixed_point.hpp"
#include "../kernels/kernels.hpp"
#include "../parallel.hpp"

namespace assocmem::detail {

using kernels::kBlock;
using kernels::round_up;

struct EngineCore {
  const MemoryStore* store;
  const MemoryStore* values;  // the store the associations accumulate: *store, or a value store
  const kernels::Ops* ops;
  EngineOptions opt;
  bool bf16_products;

  // Leases (detail::StoreLease): the stores cannot change while this engine exists.
  detail::StoreLease store_lease;
  std::optional<detail::StoreLease> values_lease;

  EngineCore(const MemoryStore& s, EngineOptions o, const MemoryStore* v = nullptr)
      : store(&s), values(v ? v : &s), opt(o), store_lease(s) {
    if (v && v != &s) values_lease.emplace(*v);
    opt.validate();
    ASSOCMEM_CHECK_ARG(s.size() > 0, "store: the memory is empty (no patterns)");
    if (v) {
      ASSOCMEM_CHECK_ARG(v->size() == s.size(), "values: ", v->size(), " memories, but the keys have ", s.size());
      ASSOCMEM_CHECK_ARG(v->dtype() == s.dtype(), "values: dtype ", to_string(v->dtype()), " differs from the keys' ",
                         to_string(s.dtype()));
      ASSOCMEM_CHECK_ARG(v->dim() > 0, "values: dimension 0");
    }
    ops = &kernels::choose(opt.kernel, s.dtype() == DType::BFloat16);
    bf16_products = ops->bf16_products && s.dtype() == DType::BFloat16;
    // The largest memory norm bounds every score |xi_mu . v| <= max_norm |v| (Cauchy-Schwarz), so
    // queries whose scores could overflow float32 are refused up front, the same on every kernel.
    std::vector<float> row(s.dim());
    double m2 = 0;
    norms.resize(s.size());
    for (std::size_t i = 0; i < s.size(); ++i) {
      s.decode_row(i, row.data());
      double r2 = 0;
      for (float x : row) r2 += double(x) * x;
      // Non-finite memories (a store opened without its checksum, or a file edited with the checksums
      // recomputed) would turn every score they touch into NaN.
      ASSOCMEM_CHECK_ARG(std::isfinite(r2), "store: memory ", i, " (id ", s.ids()[i], ") has a NaN or Inf element");
      m2 = std::max(m2, r2);
      const double nrm = std::sqrt(r2) * (1 + 1e-12);
      norms[i] = static_cast<float>(nrm);
      if (double(norms[i]) < nrm) norms[i] = std::nextafter(norms[i], std::numeric_limits<float>::infinity());
    }
    s.check_intact();
    if (v && v != &s) {
      std::vector<float> vrow(v->dim());
      for (std::size_t i = 0; i < v->size(); ++i) {
        v->decode_row(i, vrow.data());
        for (float x : vrow)
          ASSOCMEM_CHECK_ARG(std::isfinite(x), "values: memory ", i, " (id ", v->ids()[i], ") has a NaN or Inf element");
      }
      v->check_intact();
    }
    max_norm = std::sqrt(m2);
    ASSOCMEM_CHECK_ARG(max_norm < kScoreLimit, "store: a memory has norm ", max_norm,
                       ", beyond the float32 range of the scores");
  }

  // Scores beta * xi.v must stay below this (float32 max / 4: room for the rounding of the products,
  // bfloat16 queries included).
  static constexpr double kScoreLimit = 8.5e37;
  double max_norm = 0;
  std::vector<float> norms;  // ||xi_mu||_2 of each memory, rounded up (the certificates' rounding bounds)

  // Refuses non-finite queries and queries whose scores could overflow: beta |v| max_norm.
  void check_queries(const float* q, std::size_t batch, double beta) const {
    const std::size_t d = dim();
    ASSOCMEM_CHECK_ARG(batch > 0, "queries: the batch is empty");
    ASSOCMEM_CHECK_ARG(q != nullptr, "queries is null");
    checked_mul(batch, d, "queries: batch x dim");
    for (std::size_t b = 0; b < batch; ++b) {
      double n2 = 0;
      for (std::size_t j = 0; j < d; ++j) {
        const float x = q[b * d + j];
        ASSOCMEM_CHECK_ARG(std::isfinite(x), "queries: row ", b, " element ", j, " is NaN or Inf");
        n2 += double(x) * x;
      }
      const double bound = beta * std::sqrt(n2) * max_norm;
      ASSOCMEM_CHECK_ARG(bound < kScoreLimit, "queries: row ", b, ": beta * |v| * max|xi| = ", bound,
                         " exceeds the float32 range of the scores; lower beta or scale the queries down");
    }
  }

  // A mask has 0, 1 or `batch` rows, and leaves every query at least one memory.
  void check_mask(const MemoryMask& m, std::size_t batch) const {
    if (m.rows == 0) return;
    ASSOCMEM_CHECK_ARG(m.data != nullptr, "mask: data is null");
    ASSOCMEM_CHECK_ARG(m.rows == 1 || m.rows == batch, "mask: ", m.rows, " rows for ", batch,
                       " queries (give 1 row shared by all, or one per query)");
    const std::size_t K = store->size();
    for (std::size_t r = 0; r < m.rows; ++r) {
      const std::uint8_t* row = m.data + r * K;
      ASSOCMEM_CHECK_ARG(std::find(row, row + K, std::uint8_t{0}) != row + K, "mask: row ", r,
                         " leaves out every memory; a query needs at least one");
    }
  }

  std::size_t dim() const { return store->dim(); }
  std::size_t dpad() const { return round_up(dim(), kBlock); }
  std::size_t ntiles() const { return (store->size() + opt.tile - 1) / opt.tile; }
  std::size_t workers() const {
    return std::max<std::size_t>(1, std::min<std::size_t>(static_cast<std::size_t>(resolve_threads(opt.threads)), ntiles()));
  }

  // A tile of a store's rows as the kernels read them: f32 rows, bf16 rows, or decoded into `buf`.
  struct TileRows {
    const float* f = nullptr;
    const std::uint16_t* b = nullptr;
  };
  TileRows tile_rows(const MemoryStore& s, std::size_t t0, std::size_t nt, bool raw_bf16, std::vector<float>& buf) const {
    const std::uint8_t* raw = s.row(t0);
    if (s.dtype() == DType::Float32) return {reinterpret_cast<const float*>(raw), nullptr};
    if (s.dtype() == DType::BFloat16 && raw_bf16) return {nullptr, reinterpret_cast<const std::uint16_t*>(raw)};
    buf.resize(nt * s.dim());  // bits, or bf16 on float32 kernels: decode the tile
    if (s.dtype() == DType::BFloat16) {
      ops->from_bf16(reinterpret_cast<const std::uint16_t*>(raw), nt * s.dim(), buf.data());
      return {buf.data(), nullptr};
    }
    for (std::size_t t = 0; t < nt; ++t) s.decode_row(t0 + t, &buf[t * s.dim()]);
    return {buf.data(), nullptr};
  }

  // One pass over all memories for queries Q (nq x d). For each worker w, epi[w] sees every score
  // row (raw dot products, writable: a mask may set entries to -inf) of its tiles and writes the
  // weights P; acc[w] (nq x round_up(rows.dim(), 32)) accumulates sum_t P[t] y_t over the rows y of
  // `rows`: the keys themselves, or the value store. The calling thread polls the poller between its
  // tiles; every worker stops at its next tile once the call is cancelled.
  template <class Epi>
  void pass(const float* Q, std::size_t nq, std::vector<Epi>& epi, std::vector<std::vector<float>>& acc,
            Poller& poller, const MemoryStore& rows) const {
    const std::size_t d = dim(), dp = dpad(), dv = rows.dim(), dvp = round_up(dv, kBlock), T = opt.tile,
                      K = store->size();
    const bool matvec = nq < 4;
    const std::size_t QB = ops->row_block;
    const std::size_t nq_pad = round_up(nq, QB);
    std::vector<float> Qp(nq_pad * dp, 0.0f);
    for (std::size_t b = 0; b < nq; ++b) std::memcpy(&Qp[b * dp], Q + b * d, d * sizeof(float));
    std::vector<std::uint16_t> Qbf;
    if (bf16_products && !matvec) {
      Qbf.resize(Qp.size());
      ops->to_bf16(Qp.data(), Qp.size(), Qbf.data());
    }
    const std::size_t nw = workers();
    acc.assign(nw, {});
    parallel_chunks(ntiles(), static_cast<int>(nw), [&](std::size_t w, std::size_t tb, std::size_t te) {
      std::vector<float>& A = acc[w];
      A.assign(nq_pad * dvp, 0.0f);
      std::vector<float> keybuf, valbuf, xt, S(QB * T), P(QB * T);
      std::vector<std::uint16_t> xp1, xp2, Pbf;
      for (std::size_t ti = tb; ti < te; ++ti) {
        if (w == 0) poller.poll(ti - tb, te - tb);
        if (poller.cancelled()) return;
        const std::size_t t0 = ti * T, nt = std::min(T, K - t0);
        const bool raw_bf16 = bf16_products || matvec;
        const TileRows keys = tile_rows(*store, t0, nt, raw_bf16, keybuf);
        const TileRows vals = &rows == store ? keys : tile_rows(rows, t0, nt, raw_bf16, valbuf);
        if (!matvec) {
          if (bf16_products) {
            xp1.resize(round_up(nt, kBlock) * dp);
            xp2.resize(round_up(nt, kBlock) * dvp);
            ops->pack_xp1(keys.b, nt, d, xp1.data());
            ops->pack_xp2(vals.b, nt, dv, xp2.data());
            Pbf.resize(QB * T);
          } else {
            xt.resize(round_up(nt, kBlock) * d);
            ops->pack_xt(keys.f, nt, d, xt.data());
          }
        }
        for (std::size_t r0 = 0; r0 < nq; r0 += QB) {
          const std::size_t nb = std::min(QB, nq - r0);
          if (matvec) {
            for (std::size_t r = 0; r < nb; ++r) {
              if (keys.f) ops->dots_f32(&Qp[(r0 + r) * dp], keys.f, nt, d, &S[r * T]);
              else ops->dots_bf16(&Qp[(r0 + r) * dp], keys.b, nt, d, &S[r * T]);
            }
          } else if (bf16_products) {
            ops->gemm1_bf16(&Qbf[r0 * dp], ops->full_row_blocks ? QB : nb, dp, xp1.data(), nt, d, S.data(), T);
          } else {
            ops->gemm1_f32(&Qp[r0 * dp], nb, dp, xt.data(), nt, d, S.data(), T);
          }
          for (std::size_t r = 0; r < nb; ++r) {
            float* Pr = &P[r * T];
            epi[w].apply(r0 + r, &S[r * T], nt, Pr, &A[(r0 + r) * dvp], dvp, t0);
            std::fill(Pr + nt, Pr + round_up(nt, kBlock), 0.0f);
          }
          // Padding rows: read only by the bf16 products that always take QB rows (AMX).
          if (nb < QB && bf16_products && !matvec && ops->full_row_blocks)
            std::fill(P.begin() + static_cast<long>(nb * T), P.end(), 0.0f);
          if (matvec) {
            for (std::size_t r = 0; r < nb; ++r) {
              if (vals.f) ops->axpy_f32(&P[r * T], vals.f, nt, dv, &A[(r0 + r) * dvp]);
              else ops->axpy_bf16(&P[r * T], vals.b, nt, dv, &A[(r0 + r) * dvp]);
            }
          } else if (bf16_products) {
            const std::size_t rows = ops->full_row_blocks ? QB : nb;
            ops->to_bf16(P.data(), rows * T, Pbf.data());
            ops->gemm2_bf16(Pbf.data(), rows, T, xp2.data(), nt, dv, &A[r0 * dvp], dvp);
          } else {
            ops->gemm2_f32(P.data(), nb, T, vals.f, nt, dv, &A[r0 * dvp], dvp);
          }
        }
      }
    });
    poller.throw_if_cancelled();
    store->check_intact();  // a mapped store whose file shrank during the pass: refuse the result
    rows.check_intact();
  }
};

// The mask row of query b of a pass over `rows` (rows[b] is its index in the caller's batch).
inline const std::uint8_t* mask_row(const MemoryMask& m, const std::vector<std::size_t>* rows, std::size_t b, std::size_t K) {
  if (m.rows == 0) return nullptr;
  if (m.rows == 1) return m.data;
  return m.data + (rows ? (*rows)[b] : b) * K;
}

// Masked memories score -inf: weight exp(-inf) = 0, as if absent.
inline void apply_mask(const std::uint8_t* mrow, float* s, std::size_t nt) {
  if (!mrow) return;
  for (std::size_t i = 0; i < nt; ++i)
    if (mrow[i]) s[i] = -std::numeric_limits<float>::infinity();
}

// Online softmax (eq. 12 tile by tile): running max, rescaled sums, top-k.
struct SoftmaxEpilogue {
  const kernels::Ops* ops;
  float beta;
  const std::uint64_t* ids;
  MemoryMask mask;
  const std::vector<std::size_t>* rows;
  std::size_t K;
  AttentionPartial part;  // acc unused here (the pass accumulates into its own buffer)

  void apply(std::size_t b, float* s, std::size_t nt, float* p, float* acc, std::size_t dp, std::size_t t0) {
    const std::uint8_t* mrow = mask_row(mask, rows, b, K);
    if (mrow) apply_mask(mrow + t0, s, nt);
    const float m_tile = ops->scaled_max(s, nt, beta);
    if (m_tile == -std::numeric_limits<float>::infinity()) {  // every memory of the tile masked
      std::fill(p, p + nt, 0.0f);
      return;
    }
    part.raise_max(b, m_tile, acc, dp, ops->scale);
    part.sum[b] += ops->exp_shift_sum(s, nt, beta, part.max[b], p);
    if (part.top_k) {
      auto& heap = part.top[b];  // min-heap on score
      auto cmp = [](const ScoredId& x, const ScoredId& y) { return x.score > y.score; };
      for (std::size_t i = 0; i < nt; ++i) {
        if (mrow && mrow[t0 + i]) continue;
        const float sc = beta * s[i];
        if (heap.size() < part.top_k) {
          heap.push_back({sc, ids[t0 + i]});
          std::push_heap(heap.begin(), heap.end(), cmp);
        } else if (sc > heap.front().score) {
          std::pop_heap(heap.begin(), heap.end(), cmp);
          heap.back() = {sc, ids[t0 + i]};
          std::push_heap(heap.begin(), heap.end(), cmp);
        }
      }
    }
  }
};

// Model C: f = F'(h) elementwise (eq. 18/22), and sum_mu F(h_mu) for the energy (eq. 21).
struct AdditiveEpilogue {
  const AdditiveLagrangian* F;
  MemoryMask mask;
  const std::vector<std::size_t>* rows;
  std::size_t K;
  std::vector<double> energy_sum;
  bool overflow = false;
  // Certified fallbacks (score_err >= 0): per query, sum ||xi_mu|| |computed F' - exact F'| over the
  // memories, each score within e = score_err ||xi_mu|| of the exact one (F' non-decreasing:
  // F'(h + e) - F'(h - e), plus the float rounding of F'), and sum ||xi_mu|| F' (certified_c_pass).
  double score_err = -1;  // relative to the memory's norm: |x~ - x| <= score_err ||xi_mu||
  const float* norms = nullptr;
  std::vector<double> perr_sum, mass_sum;
  void apply(std::size_t b, float* s, std::size_t nt, float* p, float*, std::size_t, std::size_t t0) {
    const std::uint8_t* mrow = mask_row(mask, rows, b, K);
    double e = 0, perr = 0, mass = 0;
    for (std::size_t i = 0; i < nt; ++i) {
      if (mrow && mrow[t0 + i]) {
        p[i] = 0.0f;
        continue;
      }
      const double h = s[i];
      const double f = F->dG(h);
      p[i] = static_cast<float>(f);
      e += F->G(h);
      if (!std::isfinite(p[i])) overflow = true;
      if (score_err >= 0) {
        const double nm = double(norms[t0 + i]), es = score_err * nm;
        perr += nm * ((F->dG(h + es) - F->dG(h - es)) * (1 + 1e-13) + (0x1p-24 + 1e-13) * f);
        mass += nm * f;
      }
    }
    energy_sum[b] += e;
    if (score_err >= 0) {
      perr_sum[b] += perr;
      mass_sum[b] += mass;
    }
  }
};


// ---- the passes (passes.cpp) --------------------------------------------------------------------
// eq. (13): E = v.v/2 - (1/beta) log sum_mu exp(beta xi_mu . v), from the pass's log-sum-exp.
double model_b_energy(const float* v, std::size_t d, double log_sum_exp, double beta);
// One model B pass for queries [n x dim]: the partial over the memories the mask leaves, accumulating
// the rows of `acc_store` (the keys for an update of eq. 16, the values for the association).
AttentionPartial b_partial(const EngineCore& core, const MemoryStore& acc_store, const float* q, std::size_t n,
                           std::size_t top_k, const MemoryMask& mask, const std::vector<std::size_t>* rows,
                           double beta, Poller& poller);
// b_partial over the engine's memories, merged over all participants' memories when there is a merger.
AttentionPartial merged_b_partial(const EngineCore& core, const MemoryStore& acc_store, const float* q,
                                  std::size_t n, std::size_t top_k, const MemoryMask& mask,
                                  const std::vector<std::size_t>* rows, double beta, Poller& poller);
// eq. (16) over the candidate rows `cand` of query q into row i of `out`; with top_k the best
// min(top_k, |cand|) (beta score, id), best first (ties: smaller id). buf, sc, p, acc: scratch.
std::vector<ScoredId> b_over_candidates(const EngineCore& core, const float* q, const std::vector<std::size_t>& cand,
                                        double beta, std::size_t top_k, AttentionPartial& out, std::size_t i,
                                        std::vector<std::uint8_t>& buf, std::vector<float>& sc, std::vector<float>& p,
                                        std::vector<float>& acc);
// The candidates' rows gathered into buf and their exact scores q . xi into sc.
void gather_scores(const EngineCore& core, const float* q, const std::vector<std::size_t>& cand,
                   std::vector<std::uint8_t>& buf, std::vector<float>& sc);
// acc += sum_c p[c] row_c over the gathered rows.
void gather_accumulate(const EngineCore& core, const std::vector<std::uint8_t>& buf, const float* p, std::size_t nc,
                       float* acc);
// The directions g = v/|v| of n states (eq. 17), each non-zero and finite.
std::vector<float> directions(const float* v, std::size_t n, std::size_t d, const std::vector<std::size_t>* rows);
// One pass of model C at the directions g = v/|v| (eq. 18): drive = xi^T F'(xi g) per row, and
// energy = -sum_mu F(xi_mu . g) (eq. 21). With score_err >= 0 also, per query, perr = sum |xi| |computed
// F' - exact F'| and mass = sum |xi| F' (AdditiveEpilogue; score_err relative to each memory's norm).
void model_c_pass(const EngineCore& core, const AdditiveLagrangian* F, const float* v, std::size_t n,
                  const MemoryMask& mask, const std::vector<std::size_t>* rows, Poller& poller,
                  std::vector<float>& drive, std::vector<double>& energy, double score_err = -1,
                  std::vector<double>* perr = nullptr, std::vector<double>* mass = nullptr);
// model_c_pass over the engine's memories, summed over all participants' memories with a merger.
void merged_c_pass(const EngineCore& core, const AdditiveLagrangian* F, const float* v, std::size_t n,
                   const MemoryMask& mask, const std::vector<std::size_t>* rows, Poller& poller,
                   std::vector<float>& drive, std::vector<double>& energy);

// ---- approximate.cpp ----------------------------------------------------------------------------
// eq. (16) over the best k candidates of the engine's CandidateSource for each query (no bound).
AttentionPartial approx_b_partial(const EngineCore& core, const float* q, std::size_t n, std::size_t top_k,
                                  const MemoryMask& mask, const std::vector<std::size_t>* rows, double beta,
                                  std::size_t k);

// ---- certified.cpp ------------------------------------------------------------------------------
// Certified model B pass: the screen of codes, then eq. (16) over the candidates; per query its
// certificate, the discarded weight bound delta and the pass's rounding bound.
AttentionPartial certified_b_partial(const EngineCore& core, const float* q, std::size_t n, std::size_t top_k,
                                     const MemoryMask& mask, const std::vector<std::size_t>* rows, double beta,
                                     double eps, Poller& poller, std::vector<Certificate>& certs,
                                     std::vector<double>& delta, std::vector<double>& rounding);
// Certified model C pass: the drive at g = v/|v| over the screen's candidates, with error[i] >= the
// distance to the exact drive; queries with too many candidates take the exact pass.
void certified_c_pass(const EngineCore& core, const AdditiveLagrangian* F, const InteractionSpec& spec,
                      const float* v, std::size_t n, const MemoryMask& mask, const std::vector<std::size_t>* rows,
                      double eps, Poller& poller, std::vector<float>& drive, std::vector<double>& error,
                      std::vector<Certificate>& certs);

// ---- the engines' shared checks -------------------------------------------------------------------
// The checks at the start of a retrieval, agreed on by every participant.
template <class Fn>
void check_collectively(const EngineCore& core, const RetrieveOptions& options, Fn&& checks) {
  collectively(core.opt.merger, [&] {
    ASSOCMEM_CHECK_ARG(!core.opt.merger || !options.monitor, "monitor: a retrieval over memories spread over several "
                       "participants cannot be cancelled by one of them; give no monitor");
    ASSOCMEM_CHECK_ARG(!core.opt.merger || options.mask.rows == 0, "mask: not supported yet when the memories are "
                       "spread over several participants");
    checks();
  });
}

// What certify needs: eps in (0, 0.5], then what the model needs (model_checks), the codes of the store
// and the memories in one place.
template <class ModelChecks>
void check_certify(const EngineCore& core, double eps, ModelChecks&& model_checks) {
  ASSOCMEM_CHECK_ARG(eps > 0 && eps <= 0.5, "certify: eps must be in (0, 0.5], got ", eps);
  model_checks();
  ASSOCMEM_CHECK_ARG(core.opt.codes, "certify: the engine has no codes of its store (EngineOptions::codes; "
                                     "CodeIndex::build or assocmem index)");
  ASSOCMEM_CHECK_ARG(!core.opt.merger, "certify: not supported yet over memories spread over several participants");
}

inline void check_clamp(const std::vector<std::uint8_t>& clamp, std::size_t d) {
  ASSOCMEM_CHECK_ARG(clamp.empty() || clamp.size() == d, "clamp has length ", clamp.size(), " but the dimension is ", d);
}

inline void fill_top(Retrieval& r, std::size_t b, const AttentionPartial& part, std::size_t i) {
  if (r.top.empty()) r.top.assign(r.batch, {});
  r.top[b].clear();
  for (const auto& [id, w] : part.top_weights(i)) r.top[b].push_back({id, w});
}

}  // namespace assocmem::detail
