// The retrieval engine: tiled passes over a store with fused epilogues (online softmax for model B,
// elementwise F' for model C), multi-threaded over tiles, kernels chosen once at construction.
#include "assocmem/engine.hpp"

#include "assocmem/codes.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <queue>

#include "collective.hpp"
#include "fixed_point.hpp"
#include "kernels/kernels.hpp"
#include "online_softmax.hpp"
#include "parallel.hpp"

namespace assocmem {

using kernels::kBlock;
using kernels::round_up;

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
  if (!(new_max > max[b])) return;
  const double a = rescale_factor(max[b], new_max);
  if (max[b] != -std::numeric_limits<float>::infinity()) {
    scale(acc_b, n, static_cast<float>(a));
    sum[b] *= a;
  }
  max[b] = new_max;
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

// ------------------------------------------------------------------------------------------------
namespace detail {

using assocmem::detail::Poller;

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

}  // namespace detail

namespace {

using detail::Poller;
using detail::collectively;

// The mask row of query b of a pass over `rows` (rows[b] is its index in the caller's batch).
const std::uint8_t* mask_row(const MemoryMask& m, const std::vector<std::size_t>* rows, std::size_t b, std::size_t K) {
  if (m.rows == 0) return nullptr;
  if (m.rows == 1) return m.data;
  return m.data + (rows ? (*rows)[b] : b) * K;
}

// Masked memories score -inf: weight exp(-inf) = 0, as if absent.
void apply_mask(const std::uint8_t* mrow, float* s, std::size_t nt) {
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

// eq. (13): E = v.v/2 - (1/beta) log sum_mu exp(beta xi_mu . v), from the pass's log-sum-exp.
double model_b_energy(const float* v, std::size_t d, double log_sum_exp, double beta) {
  double s = 0;
  for (std::size_t j = 0; j < d; ++j) s += double(v[j]) * v[j];
  return 0.5 * s - log_sum_exp / beta;
}

// One model B pass for queries [n x dim]: the partial over the memories the mask leaves, accumulating
// the rows of `acc_store` (the keys for an update of eq. 16, the values for the association).
AttentionPartial b_partial(const detail::EngineCore& core, const MemoryStore& acc_store, const float* q, std::size_t n,
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
  for (std::size_t b = 0; b < n; ++b)
    ASSOCMEM_CHECK_ARG(std::isfinite(out.max[b]) && std::isfinite(out.sum[b]) && out.sum[b] > 0, "queries: row ",
                       rows ? (*rows)[b] : b, ": the softmax over the scores is not finite (beta = ", beta, ")");
  return out;
}

// b_partial over the engine's memories, merged over all participants' memories when there is a merger.
AttentionPartial merged_b_partial(const detail::EngineCore& core, const MemoryStore& acc_store, const float* q,
                                  std::size_t n, std::size_t top_k, const MemoryMask& mask,
                                  const std::vector<std::size_t>* rows, double beta, Poller& poller) {
  AttentionPartial part;
  collectively(core.opt.merger, [&] { part = b_partial(core, acc_store, q, n, top_k, mask, rows, beta, poller); });
  if (core.opt.merger) core.opt.merger->merge(part);
  return part;
}

// ------------------------------------------------------------------------------------------------
// Certified passes (issue 14; codes.hpp). For query q and memory mu the screen gives a_mu (the codes'
// exact integer dot product with the quantised query, scaled) and a bound b_mu on |q . xi_mu - a_mu|
// (kernels.hpp: coarse_bound from the codes' coarse 4-bit level, screen_bound from the whole int8 code),
// so l_mu = beta (a_mu - b_mu) <= beta q . xi_mu <= u_mu = beta (a_mu + b_mu). Every memory gets the
// coarse bounds (d / 2 bytes read); only those whose coarse u_mu reaches the running cut get the fine
// ones (the low plane of their block), and any valid pair serves below.
// L = max_mu l_mu is a lower bound on the largest score. The memories with u_mu below the cut c(L)
// (CutRule) are discarded, the others (the candidates) rescored exactly with the engine's own kernels.
//   Model B, scores beta q . xi, c = L - tau, tau = ln(K / eps): the discarded carry a softmax weight of
//   at most delta = |D| exp(max_D u - L) <= K e^-tau = eps (exp(L) <= Z); the returned state v (softmax
//   over the candidates) and the exact v* = (1 - w) v + w v_D (w <= delta, v_D the discarded memories'
//   average) differ by w ||v - v_D|| <= delta (||v|| + R), R >= max ||xi||.
//   Model C (eq. 22), scores x = xi . g (times beta for F = exp), F' >= 0 non-decreasing: the discarded
//   drive sum_D xi_mu F'(x_mu) has norm <= R |D| F'(max_D u), and with c such that
//   K F'(c) <= eps F'(L) <= eps sum_C F'(x) (the memory that attains L is a candidate), at most eps of
//   the candidates' F' mass: exp, c = L - tau (as B); rectified power n, F'(x) = n x^(n-1) for x > 0, 0
//   below, c = (eps / K)^(1 / (n - 1)) L for L > 0, else 0 (memories with u <= 0 contribute exactly 0).
// Too many candidates (more than K / 16: the rescoring would cost more than the scan it saves), or (B)
// a top-k list that reaches below a discarded memory's upper bound, fall back to the exact pass for
// that query. With top_k, a memory whose upper bound is below the k-th largest lower bound l_(k)
// cannot be in the top k either (k memories score at least l_(k)), so the candidates are the memories
// with u_mu >= min(c, l_(k)). During the scan the running L and l_(k) only grow: the running rule keeps
// a superset, filtered once the final values are known.
struct CutRule {
  double tau = 0;     // c = L - tau
  double ratio = -1;  // >= 0: c = ratio L for L > 0, else 0
  double operator()(double L) const { return ratio < 0 ? L - tau : (L > 0 ? ratio * L : 0.0); }
};

struct ScreenState {  // one query's screen over one worker's memories
  double L = -std::numeric_limits<double>::infinity();          // max lower bound seen
  double disc = -std::numeric_limits<double>::infinity();       // max upper bound among the discarded
  std::size_t kept = 0;                                         // unmasked memories seen
  std::vector<std::pair<std::size_t, double>> cand;             // (memory, upper bound)
  std::priority_queue<double, std::vector<double>, std::greater<double>> low;  // the top_k largest lower bounds
  double threshold(const CutRule& rule, std::size_t top_k) const {
    const double t = rule(L);
    return top_k == 0 ? t : std::min(t, low.size() < top_k ? -std::numeric_limits<double>::infinity() : low.top());
  }
};

// One query's screen, all workers merged.
struct Screened {
  std::vector<std::size_t> cand;  // the candidates, in store order
  double L = -std::numeric_limits<double>::infinity(), disc = -std::numeric_limits<double>::infinity();
  std::size_t kept = 0;           // memories the mask leaves
  bool exact = false;             // too many candidates (or too few for top_k): the exact pass instead
};

// The screen of n queries (rows of q, dimension d) with scores beta q . xi.
std::vector<Screened> certified_screen(const detail::EngineCore& core, const float* q, std::size_t n, std::size_t top_k,
                                       const MemoryMask& mask, const std::vector<std::size_t>* rows, double beta,
                                       const CutRule& rule, Poller& poller) {
  const CodeIndex& codes = *core.opt.codes;
  const std::size_t K = core.store->size(), d = core.dim(), groups = codes.groups();
  const double R = double(codes.max_norm());
  // Each query quantised like the memories: q = sq q8 + r_q (int8, zero-padded to the planes' groups).
  // Norms in double, rounded up by a margin far above their rounding.
  std::vector<double> qnorm(n), sq(n), rq(n);
  std::vector<std::int8_t> q8(n * groups * 8, 0);
  std::vector<kernels::CoarseQuery> cq(n);
  for (std::size_t i = 0; i < n; ++i) {
    const float* qi = q + i * d;
    float amax = 0;
    for (std::size_t j = 0; j < d; ++j) amax = std::max(amax, std::fabs(qi[j]));
    const double s = double(amax) / 127.0;
    double s2 = 0, r2 = 0;
    std::int32_t qsum = 0;
    for (std::size_t j = 0; j < d; ++j) {
      const double c = s > 0 ? std::clamp(std::nearbyint(double(qi[j]) / s), -127.0, 127.0) : 0.0;
      q8[i * groups * 8 + j] = static_cast<std::int8_t>(c);
      qsum += static_cast<std::int32_t>(c);
      const double rest = double(qi[j]) - s * c;
      s2 += double(qi[j]) * double(qi[j]);
      r2 += rest * rest;
    }
    const double margin = 1.0 + 1e-12;
    sq[i] = s;
    qnorm[i] = std::sqrt(s2) * margin;
    rq[i] = std::sqrt(r2) * margin + 4.0 * 0x1p-52 * s * 127.0 * std::sqrt(double(d));  // s * c rounds too
    cq[i] = {qsum, static_cast<float>(16.0 * s), static_cast<float>(qnorm[i]), static_cast<float>(rq[i]),
             static_cast<float>(R), static_cast<float>(beta)};
  }
  // Screen: the workers split the memories; tiles outermost so that a batch reuses each tile of codes.
  // Per tile and query: the coarse bounds of every memory (a kernel over the high plane), then the fine
  // bounds of the memories the coarse ones could not discard (the low plane of their blocks only).
  constexpr std::size_t tile = 256;
  static_assert(tile % CodeIndex::kBlockRows == 0);
  const std::size_t nw = core.workers(), tiles = (K + tile - 1) / tile;
  const std::size_t block_bytes = groups * 64;
  std::vector<std::vector<ScreenState>> local(nw, std::vector<ScreenState>(n));
  std::vector<std::atomic<double>> best(n);
  for (auto& b : best) b.store(-std::numeric_limits<double>::infinity(), std::memory_order_relaxed);
  detail::parallel_chunks(tiles, static_cast<int>(nw), [&](std::size_t w, std::size_t t0, std::size_t t1) {
    std::vector<std::int32_t> dot(tile), ldot(CodeIndex::kBlockRows);
    std::vector<float> lo(tile);
    std::vector<std::uint32_t> idx(tile + 16);
    std::vector<std::pair<double, double>> fine(tile);  // (lo, up) of the survivors
    constexpr double kNone = -std::numeric_limits<double>::infinity();
    // L is shared by the workers (any memory's lower bound bounds the largest score from below): a
    // worker far from the best memories still cuts as sharply as the one that found them.
    auto raise_L = [&](std::size_t i, ScreenState& st, double l) {
      double shared = best[i].load(std::memory_order_relaxed);
      while (l > shared && !best[i].compare_exchange_weak(shared, l, std::memory_order_relaxed)) {
      }
      st.L = std::max({st.L, l, shared});
    };
    for (std::size_t t = t0; t < t1 && !poller.cancelled(); ++t) {
      const std::size_t m0 = t * tile, nt = std::min(tile, K - m0);
      const std::size_t plane0 = m0 / CodeIndex::kBlockRows * block_bytes;
      if (w == 0) poller.poll(t - t0, t1 - t0);
      for (std::size_t i = 0; i < n; ++i) {
        const std::uint8_t* mrow = mask_row(mask, rows, i, K);
        ScreenState& st = local[w][i];
        const std::int8_t* qi8 = &q8[i * groups * 8];
        // The coarse cut in float, rounded down: the survivors are a superset of the memories at the cut.
        const double cut0 = st.threshold(rule, top_k);
        float cutf = static_cast<float>(cut0);
        if (double(cutf) > cut0) cutf = std::nextafter(cutf, -std::numeric_limits<float>::infinity());
        float stats[2];
        core.ops->nibble_dots(codes.high_plane() + plane0, (nt + CodeIndex::kBlockRows - 1) / CodeIndex::kBlockRows,
                              groups, qi8, dot.data());
        const std::size_t ns = core.ops->screen_coarse(dot.data(), nt, cq[i], codes.scale() + m0,
                                                       codes.coarse_error() + m0, mrow ? mrow + m0 : nullptr, cutf,
                                                       lo.data(), stats, idx.data());
        raise_L(i, st, double(stats[0]));
        st.disc = std::max(st.disc, double(stats[1]));
        st.kept += nt;
        if (mrow)
          for (std::size_t k = 0; k < nt; ++k) st.kept -= mrow[m0 + k] != 0;
        if (top_k > 0)  // the coarse lower bounds: one per memory
          for (std::size_t k = 0; k < nt; ++k)
            if (lo[k] > kNone && (st.low.size() < top_k || lo[k] > st.low.top())) {
              if (st.low.size() == top_k) st.low.pop();
              st.low.push(lo[k]);
            }
        if (ns == 0) continue;
        // The fine bounds of the survivors: q8 . c = 16 q8 . h + q8 . l, from the two planes' sums.
        const std::int64_t shift = 8 * std::int64_t(cq[i].qsum);
        double fine_lo = kNone;
        std::size_t block = std::numeric_limits<std::size_t>::max();
        for (std::size_t k = 0; k < ns; ++k) {
          const std::size_t r = idx[k];
          if (r / CodeIndex::kBlockRows != block) {
            block = r / CodeIndex::kBlockRows;
            core.ops->nibble_dots(codes.low_plane() + plane0 + block * block_bytes, 1, groups, qi8, ldot.data());
          }
          const std::int64_t p = 16 * (std::int64_t(dot[r]) - shift) + (ldot[r % CodeIndex::kBlockRows] - shift);
          kernels::screen_bound(p, codes.scale()[m0 + r], codes.error()[m0 + r], sq[i], qnorm[i], rq[i], R, beta,
                                &fine[k].first, &fine[k].second);
          fine_lo = std::max(fine_lo, fine[k].first);
        }
        raise_L(i, st, fine_lo);
        const double cut = st.threshold(rule, top_k);
        for (std::size_t k = 0; k < ns; ++k) {
          if (fine[k].second >= cut) st.cand.emplace_back(m0 + idx[k], fine[k].second);
          else st.disc = std::max(st.disc, fine[k].second);
        }
      }
    }
  });
  poller.throw_if_cancelled();
  std::vector<Screened> out(n);
  for (std::size_t i = 0; i < n; ++i) {
    ScreenState all;  // the workers' screens merged: L, l_(k), then the final threshold
    Screened& o = out[i];
    for (std::size_t w = 0; w < nw; ++w) {
      ScreenState& st = local[w][i];
      all.L = std::max(all.L, st.L);
      o.disc = std::max(o.disc, st.disc);
      all.kept += st.kept;
      for (; !st.low.empty(); st.low.pop())
        if (all.low.size() < top_k || st.low.top() > all.low.top()) {
          if (all.low.size() == top_k) all.low.pop();
          all.low.push(st.low.top());
        }
    }
    const double cut = all.threshold(rule, top_k);
    o.L = all.L;
    o.kept = all.kept;
    for (std::size_t w = 0; w < nw; ++w)
      for (const auto& [mu, up] : local[w][i].cand) {
        if (up >= cut) o.cand.push_back(mu);
        else o.disc = std::max(o.disc, up);
      }
    std::sort(o.cand.begin(), o.cand.end());
    // Gathering scattered rows costs several times a streamed row: past K / 16 candidates the exact
    // scan is the cheaper pass (measured: 110,000 of 10^6 candidates took 3.5x the exact scan).
    const bool too_many = o.cand.size() > std::max<std::size_t>(o.kept / 16, 64);
    o.exact = o.kept == 0 || too_many || (top_k > 0 && o.cand.size() < std::min(top_k, o.kept));
  }
  return out;
}

// The candidates' rows gathered (the rescoring reads them scattered once), and their exact scores q . xi.
void gather_scores(const detail::EngineCore& core, const float* q, const std::vector<std::size_t>& cand,
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
void gather_accumulate(const detail::EngineCore& core, const std::vector<std::uint8_t>& buf, const float* p,
                       std::size_t nc, float* acc) {
  const std::size_t d = core.store->dim();
  if (core.store->dtype() == DType::BFloat16)
    core.ops->axpy_bf16(p, reinterpret_cast<const std::uint16_t*>(buf.data()), nc, d, acc);
  else
    core.ops->axpy_f32(p, reinterpret_cast<const float*>(buf.data()), nc, d, acc);
}

// eq. (16) over the candidate rows `cand` of query q: out.max, out.sum and out.acc of row i, and with
// top_k the best min(top_k, |cand|) (beta score, id), best first (ties: smaller id).
std::vector<ScoredId> b_over_candidates(const detail::EngineCore& core, const float* q,
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
  out.max[i] = m;
  out.sum[i] = sum;
  std::copy(acc.begin(), acc.end(), &out.acc[i * d]);
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

// Approximate model B pass (RetrieveOptions::approximate): eq. (16) over the best k candidates of the
// engine's CandidateSource for each query, the memories the mask leaves. No bound on what it misses.
AttentionPartial approx_b_partial(const detail::EngineCore& core, const float* q, std::size_t n, std::size_t top_k,
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
    ASSOCMEM_CHECK_ARG(std::isfinite(out.max[i]) && std::isfinite(out.sum[i]) && out.sum[i] > 0, "queries: row ",
                       rows ? (*rows)[i] : i, ": the softmax over the scores is not finite (beta = ", beta, ")");
  }
  return out;
}

// Float32 unit roundoff and Higham's gamma_n = n u / (1 - n u): the rounding bounds of the certificates.
constexpr double kU32 = 0x1p-24;
double gamma32(double n) { return n * kU32 / (1.0 - n * kU32); }

// The float32 rounding of one model B pass (eq. 16) from the float query q (|q| = qnorm) over n memories
// of norms <= R: a bound on ||a~ - a||_2, a the exact softmax average over the same memories and a~ the
// one computed (it is what a certificate adds to the screen's bound: Certificate::state_error). With
// u = 2^-24, g(n) = n u / (1 - n u) and u_op = 2^-8 where the products round their operands to bfloat16:
//  - each score q . xi is within e_s = (g(d + 1) + 1.01 u_op) R |q| (Cauchy-Schwarz on sum |xi| |q|);
//  - beta (rounded to float), the product beta s, the shift by the (common, so cancelling) maximum and
//    exp (within 4 ulp <= 8u, the kernels' polynomials) put each weight within a factor 1 + theta,
//    |theta| <= T = expm1(beta e_s + 4.1 u beta (R |q| + e_s) + 10 u + u_op); weights that underflow are
//    off by at most 2^-126 each (the largest weight is ~1, so S >= 1 - T);
//  - perturbed weights move a by at most 2 R T / (1 - T) (a and every xi lie in the ball of radius R);
//  - the sums (depth: the terms one sum passes through) by g(depth) R / (1 - g(depth)) and their ratio
//    by (g(depth) / (1 - g(depth)) + u) |a~|, |a~| <= R (1 + g) / (1 - g).
// a~ and a both lie in the ball of radius ~R, so 2.01 R caps the bound (large beta |q| R, where T is
// not small).
double b_pass_rounding(double R, double qnorm, double beta, std::size_t d, std::size_t n, double depth, double u_op) {
  constexpr double u = kU32;
  const auto g = gamma32;
  const double h = g(depth), es = (g(double(d) + 1) + 1.01 * u_op) * R * qnorm;
  const double cap = R * (1.0 + 1.01 * (1 + h) / (1 - h));
  const double t = beta * es + 4.1 * u * beta * (R * qnorm + es) + 10 * u + u_op;
  if (!(t < 0.4)) return cap;
  const double T = std::expm1(t);
  const double a_max = R * (1 + h) / (1 - h) * (1 + u);
  const double e = R * (2 * T / (1 - T) + (h + u_op) / (1 - h) + double(n) * 0x1p-125 / (1 - T)) +
                   (h / (1 - h) + u) * a_max;
  return std::min(e * (1 + 1e-12), cap);
}

// Certified model B pass (above): the screen, then eq. (16) over the candidates.
AttentionPartial certified_b_partial(const detail::EngineCore& core, const float* q, std::size_t n, std::size_t top_k,
                                     const MemoryMask& mask, const std::vector<std::size_t>* rows, double beta,
                                     double eps, Poller& poller, std::vector<Certificate>& certs,
                                     std::vector<double>& delta, std::vector<double>& rounding) {
  const MemoryStore& store = *core.store;
  const std::size_t K = store.size(), d = store.dim();
  const std::vector<Screened> scr =
      certified_screen(core, q, n, top_k, mask, rows, beta, CutRule{std::log(double(K) / eps)}, poller);
  AttentionPartial out(n, d, top_k);
  std::vector<std::size_t> exact;  // queries that fall back
  std::vector<std::uint8_t> fell(n, 0);
  // The float rounding of each query's pass (b_pass_rounding): over its candidates, gathered and summed in
  // one chain per component (depth <= candidates + 16), or over all K in the tiled exact pass (a tile's
  // chain, then one rescaling and one addition per later tile of a worker: depth <= tile + 3 K / 32).
  const double R = core.max_norm * (1 + 1e-12);
  rounding.assign(n, 0.0);
  auto pass_rounding = [&](std::size_t i, std::size_t terms, bool tiled) {
    double q2 = 0;
    for (std::size_t j = 0; j < d; ++j) q2 += double(q[i * d + j]) * double(q[i * d + j]);
    const double depth = tiled ? double(core.opt.tile) + 3.0 * std::ceil(double(K) / 32.0) : double(terms) + 16.0;
    rounding[i] = b_pass_rounding(R, std::sqrt(q2) * (1 + 1e-12), beta, d, terms, depth,
                                  tiled && core.bf16_products ? 0x1p-8 : 0.0);
  };
  detail::parallel_chunks(n, static_cast<int>(core.workers()), [&](std::size_t, std::size_t i0, std::size_t i1) {
    std::vector<std::uint8_t> buf;
    std::vector<float> sc, p, acc(d);
    for (std::size_t i = i0; i < i1; ++i) {
      const Screened& s = scr[i];
      if (s.exact) {
        fell[i] = 1;
        continue;
      }
      const std::size_t nc = s.cand.size(), b = rows ? (*rows)[i] : i;
      std::vector<ScoredId> t = b_over_candidates(core, q + i * d, s.cand, beta, top_k, out, i, buf, sc, p, acc);
      if (top_k > 0) {
        // A discarded memory whose upper bound reaches the k-th score might belong in the list.
        if (t.size() < top_k ? s.disc > -std::numeric_limits<double>::infinity() : s.disc >= double(t.back().score)) {
          fell[i] = 1;
          continue;
        }
        out.top[i] = std::move(t);
      }
      const double dlt = std::isfinite(s.disc) ? double(s.kept - nc) * std::exp(s.disc - s.L) : 0.0;
      delta[i] = dlt;
      pass_rounding(i, nc, false);
      certs[b].candidates = nc;
      certs[b].discarded_weight = std::max(certs[b].discarded_weight, dlt);
    }
  });
  for (std::size_t i = 0; i < n; ++i)
    if (fell[i]) exact.push_back(i);
  // The exact pass for the queries that fell back (one batch; masks follow them through `map`).
  if (!exact.empty()) {
    std::vector<float> qe(exact.size() * d);
    std::vector<std::size_t> map(exact.size());
    for (std::size_t k = 0; k < exact.size(); ++k) {
      std::copy(q + exact[k] * d, q + (exact[k] + 1) * d, &qe[k * d]);
      map[k] = rows ? (*rows)[exact[k]] : exact[k];
    }
    const AttentionPartial e = b_partial(core, store, qe.data(), exact.size(), top_k, mask, &map, beta, poller);
    for (std::size_t k = 0; k < exact.size(); ++k) {
      const std::size_t i = exact[k];
      out.max[i] = e.max[k];
      out.sum[i] = e.sum[k];
      std::copy(&e.acc[k * d], &e.acc[(k + 1) * d], &out.acc[i * d]);
      if (top_k) out.top[i] = e.top[k];
      delta[i] = 0;
      pass_rounding(i, K, true);
      certs[map[k]].candidates = K;
      ++certs[map[k]].fallback_steps;
    }
  }
  store.check_intact();
  for (std::size_t i = 0; i < n; ++i)
    ASSOCMEM_CHECK_ARG(std::isfinite(out.max[i]) && std::isfinite(out.sum[i]) && out.sum[i] > 0, "queries: row ",
                       rows ? (*rows)[i] : i, ": the softmax over the scores is not finite (beta = ", beta, ")");
  return out;
}

// The checks at the start of a retrieval, agreed on by every participant.
template <class Fn>
void check_collectively(const detail::EngineCore& core, const RetrieveOptions& options, Fn&& checks) {
  collectively(core.opt.merger, [&] {
    ASSOCMEM_CHECK_ARG(!core.opt.merger || !options.monitor, "monitor: a retrieval over memories spread over several "
                       "participants cannot be cancelled by one of them; give no monitor");
    ASSOCMEM_CHECK_ARG(!core.opt.merger || options.mask.rows == 0, "mask: not supported yet when the memories are "
                       "spread over several participants");
    checks();
  });
}

void check_clamp(const std::vector<std::uint8_t>& clamp, std::size_t d) {
  ASSOCMEM_CHECK_ARG(clamp.empty() || clamp.size() == d, "clamp has length ", clamp.size(), " but the dimension is ", d);
}

void fill_top(Retrieval& r, std::size_t b, const AttentionPartial& part, std::size_t i) {
  if (r.top.empty()) r.top.assign(r.batch, {});
  r.top[b].clear();
  for (const auto& [id, w] : part.top_weights(i)) r.top[b].push_back({id, w});
}

}  // namespace

// ------------------------------------------------------------------------------------------------
ModelBEngine::ModelBEngine(const MemoryStore& store, double beta, EngineOptions options)
    : core_(std::make_unique<detail::EngineCore>(store, options)), beta_(beta) {
  ASSOCMEM_CHECK_ARG(std::isfinite(beta) && beta > 0, "beta must be finite and > 0, got ", beta);
  ASSOCMEM_CHECK_ARG(beta <= std::numeric_limits<float>::max(), "beta too large for float32 scores: ", beta);
  ASSOCMEM_CHECK_ARG(!options.codes || options.codes->matches(store), "codes: they belong to another store (",
                     options.codes ? options.codes->size() : 0, " x ", options.codes ? options.codes->dim() : 0,
                     ", or other rows); build them from this one");
  ASSOCMEM_CHECK_ARG(!options.candidates || options.candidates->size() == store.size(), "candidates: the source indexes ",
                     options.candidates ? options.candidates->size() : 0, " memories, the store has ", store.size());
}
ModelBEngine::ModelBEngine(const MemoryStore& keys, const MemoryStore& values, double beta, EngineOptions options)
    : core_(std::make_unique<detail::EngineCore>(keys, options, &values)), beta_(beta) {
  ASSOCMEM_CHECK_ARG(std::isfinite(beta) && beta > 0, "beta must be finite and > 0, got ", beta);
  ASSOCMEM_CHECK_ARG(beta <= std::numeric_limits<float>::max(), "beta too large for float32 scores: ", beta);
}
ModelBEngine::~ModelBEngine() = default;
ModelBEngine::ModelBEngine(ModelBEngine&&) noexcept = default;
ModelBEngine& ModelBEngine::operator=(ModelBEngine&&) noexcept = default;
std::string ModelBEngine::kernel() const { return core_->ops->name; }
std::size_t ModelBEngine::dim() const { return core_->dim(); }
std::size_t ModelBEngine::value_dim() const { return core_->values->dim(); }
std::size_t ModelBEngine::size() const { return core_->store->size(); }

AttentionPartial ModelBEngine::partial(const float* queries, std::size_t batch, std::size_t top_k, MemoryMask mask,
                                       std::optional<double> beta, const Monitor& monitor) const {
  const double b = call_beta(beta, beta_);
  core_->check_queries(queries, batch, b);
  core_->check_mask(mask, batch);
  Poller poller(monitor);
  poller.begin_step(1, 1, batch);
  AttentionPartial part = b_partial(*core_, *core_->values, queries, batch, top_k, mask, nullptr, b, poller);
  poller.throw_if_cancelled();
  return part;
}

Retrieval ModelBEngine::retrieve(const float* queries, std::size_t batch, const RetrieveOptions& options) const {
  ResolvedOptions o{};
  const double beta = options.beta.value_or(beta_);
  const std::size_t d = core_->dim(), dv = core_->values->dim();
  const bool hetero = core_->values != core_->store;
  check_collectively(*core_, options, [&] {
    o = resolve(options, ModelKind::B);
    check_clamp(options.clamp, d);
    ASSOCMEM_CHECK_ARG(!hetero || options.clamp.empty(), "clamp: with a value store the result is not in the query's "
                                                         "space; clamping applies to auto-association only");
    core_->check_queries(queries, batch, beta);
    core_->check_mask(options.mask, batch);
    if (options.approximate) {
      ASSOCMEM_CHECK_ARG(*options.approximate > 0, "approximate: the number of candidates must be > 0");
      ASSOCMEM_CHECK_ARG(!options.certify, "approximate: not with certify (an ANN index gives no bound)");
      ASSOCMEM_CHECK_ARG(!hetero, "approximate: not supported yet with a value store");
      ASSOCMEM_CHECK_ARG(core_->opt.candidates, "approximate: the engine has no candidate source "
                                                "(EngineOptions::candidates, e.g. an AnnIndex)");
      ASSOCMEM_CHECK_ARG(!core_->opt.merger, "approximate: not supported yet over memories spread over several "
                                             "participants");
    }
    if (options.certify) {
      const double eps = *options.certify;
      ASSOCMEM_CHECK_ARG(eps > 0 && eps <= 0.5, "certify: eps must be in (0, 0.5], got ", eps);
      ASSOCMEM_CHECK_ARG(!hetero, "certify: not supported yet with a value store");
      ASSOCMEM_CHECK_ARG(core_->opt.codes, "certify: the engine has no codes of its store (EngineOptions::codes; "
                                           "CodeIndex::build or assocmem index)");
      ASSOCMEM_CHECK_ARG(!core_->opt.merger, "certify: not supported yet over memories spread over several participants");
    }
  });
  Poller poller(options.monitor);
  std::vector<float> states(queries, queries + batch * d);
  Retrieval r;
  r.batch = batch;
  r.max_weight.assign(batch, 0.0);
  // One pass of model B over the memories: exact (merged over participants), certified (issue 14) or
  // approximate.
  const bool certified = options.certify.has_value();
  if (certified) r.certificates.assign(batch, Certificate{});
  std::vector<double> delta, rounding;
  // acc: the store the association accumulates (the keys for the steps, the values for the last pass).
  auto b_pass = [&](const MemoryStore& acc, const float* qs, std::size_t n, std::size_t top_k,
                    const std::vector<std::size_t>* rows) {
    if (options.approximate) return approx_b_partial(*core_, qs, n, top_k, options.mask, rows, beta, *options.approximate);
    if (!certified) return merged_b_partial(*core_, acc, qs, n, top_k, options.mask, rows, beta, poller);
    delta.assign(n, 0.0);
    return certified_b_partial(*core_, qs, n, top_k, options.mask, rows, beta, *options.certify, poller,
                               r.certificates, delta, rounding);
  };
  // Auto-association: max_steps updates. With values: max_steps - 1 updates on the keys, then the
  // association with the values.
  const long key_steps = hetero ? o.max_steps - 1 : o.max_steps;
  {
    detail::iterate_to_fixed_point(
        states, batch, d, key_steps, o.tol, poller, r,
        [&](const std::vector<float>& cur, const std::vector<std::size_t>& rows, std::vector<float>& next) {
          const std::size_t n = rows.size();
          const AttentionPartial part = b_pass(*core_->store, cur.data(), n, 0, &rows);
          std::vector<float> st(d);
          for (std::size_t i = 0; i < n; ++i) {
            r.max_weight[rows[i]] = 1.0 / part.sum[i];  // exp(m - m) / sum over the memories
            part.state(i, st.data());
            for (std::size_t j = 0; j < d; ++j)
              next[i * d + j] = static_cast<float>(detail::relax(cur[i * d + j], st[j], o.step));  // eq. (15)
            if (certified) {
              // The exact update a* of this state against the computed a~: the discarded memories move a by
              // at most delta (|a| + R) (a = the average over the kept ones, |a| <= |a~| + rounding), the
              // float rounding by `rounding`; eq. (15) scales both by the step, and its relaxation
              // (1 - step) v + step a~ is rounded once to float (exact at step 1: a~ itself).
              double a2 = 0, v2 = 0;
              for (std::size_t j = 0; j < d; ++j) {
                a2 += double(st[j]) * double(st[j]);
                v2 += double(cur[i * d + j]) * double(cur[i * d + j]);
              }
              const double an = std::sqrt(a2), e = rounding[i], R = core_->max_norm * (1 + 1e-12);
              const double relax_err =
                  o.step == 1.0 ? 0.0 : (0x1p-24 + 0x1p-51) * ((1 - o.step) * std::sqrt(v2) + o.step * (an + e));
              r.certificates[rows[i]].state_error = (o.step * (delta[i] * (an + e + R) + e) + relax_err) * (1 + 1e-12);
            }
          }
          detail::apply_clamp(options.clamp, queries, rows, d, next.data());
        },
        detail::max_abs_change<float>);
  }
  std::vector<float> out = std::move(states);
  if (hetero || options.energy || options.top_k) {
    // One more pass: the association with the values (hetero), or the description of the final states.
    // A certificate's `candidates` are those of the last update step (the step its state_error bounds),
    // not of this pass (issue 23: with top_k > 0 they reported the top-k pass); its discarded weight and
    // fallback count do take this pass in (documented on Certificate).
    std::vector<std::size_t> step_candidates(r.certificates.size());
    for (std::size_t b = 0; b < r.certificates.size(); ++b) step_candidates[b] = r.certificates[b].candidates;
    const AttentionPartial part = b_pass(*core_->values, out.data(), batch, options.top_k, nullptr);
    for (std::size_t b = 0; b < r.certificates.size(); ++b) r.certificates[b].candidates = step_candidates[b];
    for (std::size_t b = 0; b < batch; ++b) r.max_weight[b] = 1.0 / part.sum[b];
    if (options.energy) {
      r.energy.resize(batch);
      for (std::size_t b = 0; b < batch; ++b) r.energy[b] = model_b_energy(&out[b * d], d, part.log_sum_exp(b), beta);
    }
    if (options.top_k)
      for (std::size_t b = 0; b < batch; ++b) fill_top(r, b, part, b);
    if (hetero) {
      std::vector<float> y(batch * dv);
      for (std::size_t b = 0; b < batch; ++b) {
        part.state(b, &y[b * dv]);
        for (std::size_t j = 0; j < dv; ++j)
          if (!std::isfinite(y[b * dv + j]))
            throw SolverError(detail::concat("query ", b, ": the association with the values left the float32 range"));
        ++r.steps[b];
      }
      out = std::move(y);
    }
  }
  r.dim = dv;
  r.states.assign(out.begin(), out.end());
  return r;
}

std::vector<double> ModelBEngine::energy(const float* states, std::size_t batch, MemoryMask mask,
                                         std::optional<double> beta, const Monitor& monitor) const {
  const double b = call_beta(beta, beta_);
  const std::size_t d = core_->dim();
  RetrieveOptions checked;
  checked.mask = mask;
  checked.monitor = monitor;
  check_collectively(*core_, checked, [&] {
    core_->check_queries(states, batch, b);
    core_->check_mask(mask, batch);
  });
  Poller poller(monitor);
  poller.begin_step(1, 1, batch);
  const AttentionPartial part = merged_b_partial(*core_, *core_->store, states, batch, 0, mask, nullptr, b, poller);
  poller.throw_if_cancelled();
  std::vector<double> e(batch);
  for (std::size_t i = 0; i < batch; ++i) e[i] = model_b_energy(states + i * d, d, part.log_sum_exp(i), b);
  return e;
}

// ------------------------------------------------------------------------------------------------
ModelCEngine::ModelCEngine(const MemoryStore& store, InteractionSpec F, double alpha, EngineOptions options)
    : core_(std::make_unique<detail::EngineCore>(store, options)), spec_(F), F_(make_interaction(F)), alpha_(alpha) {
  ASSOCMEM_CHECK_ARG(std::isfinite(alpha) && alpha >= 0, "alpha must be finite and >= 0, got ", alpha);
  ASSOCMEM_CHECK_ARG(!options.codes || options.codes->matches(store), "codes: they belong to another store (",
                     options.codes ? options.codes->size() : 0, " x ", options.codes ? options.codes->dim() : 0,
                     ", or other rows); build them from this one");
}
ModelCEngine::~ModelCEngine() = default;
ModelCEngine::ModelCEngine(ModelCEngine&&) noexcept = default;
ModelCEngine& ModelCEngine::operator=(ModelCEngine&&) noexcept = default;
std::string ModelCEngine::kernel() const { return core_->ops->name; }
std::size_t ModelCEngine::dim() const { return core_->dim(); }
std::size_t ModelCEngine::size() const { return core_->store->size(); }

namespace {
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
void model_c_pass(const detail::EngineCore& core, const AdditiveLagrangian* F, const float* v, std::size_t n,
                  const MemoryMask& mask, const std::vector<std::size_t>* rows, Poller& poller,
                  std::vector<float>& drive, std::vector<double>& energy, double score_err = -1,
                  std::vector<double>* perr = nullptr, std::vector<double>* mass = nullptr) {
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
void merged_c_pass(const detail::EngineCore& core, const AdditiveLagrangian* F, const float* v, std::size_t n,
                   const MemoryMask& mask, const std::vector<std::size_t>* rows, Poller& poller,
                   std::vector<float>& drive, std::vector<double>& energy) {
  collectively(core.opt.merger, [&] { model_c_pass(core, F, v, n, mask, rows, poller, drive, energy); });
  if (core.opt.merger) core.opt.merger->merge_sums(drive, energy);
}

// Certified model C pass (certified_screen, above): the drive at g = v/|v| over the candidates, with
// error[i] >= ||drive_i - exact drive_i|| (R |D| F'(max_D u)); queries with too many candidates take the
// exact pass. F is rectified power (n >= 1) or exp: F' >= 0, non-decreasing.
void certified_c_pass(const detail::EngineCore& core, const AdditiveLagrangian* F, const InteractionSpec& spec,
                      const float* v, std::size_t n, const MemoryMask& mask, const std::vector<std::size_t>* rows,
                      double eps, Poller& poller, std::vector<float>& drive, std::vector<double>& error,
                      std::vector<Certificate>& certs) {
  const std::size_t K = core.store->size(), d = core.dim();
  const std::vector<float> g = directions(v, n, d, rows);
  // Scores beta x for F = exp (the cut as model B's), x for rectified power.
  const bool is_exp = spec.kind == Interaction::Exp;
  const double scale = is_exp ? spec.beta : 1.0;
  CutRule rule;
  if (is_exp) rule.tau = std::log(double(K) / eps);
  else rule.ratio = spec.n > 1 ? std::pow(eps / double(K), 1.0 / (spec.n - 1)) : 0.0;
  const std::vector<Screened> scr = certified_screen(core, g.data(), n, 0, mask, rows, scale, rule, poller);
  const double R = core.max_norm * (1 + 1e-12);
  drive.assign(n * d, 0.0f);
  error.assign(n, 0.0);
  std::vector<std::uint8_t> fell(n, 0), overflow(n, 0);
  // Float rounding (in error[i] with the discarded part). g = v / |v| is rounded to float (1.01 u in
  // norm), each score xi . g then carries e_s = (g(d + 1) (1 + 1.01 u) + 1.01 u + 1.01 u_op) |xi|; F' is
  // non-decreasing, so the computed F'(x~) is within F'(x~ + e_s) - F'(x~ - e_s) of F'(x), plus its own
  // rounding to float (u + 1e-13: evaluated in double); the sum over the memories adds g(depth) sum |xi| F'.
  // Each term enters the drive times xi: weighted by |xi|. Depth as model B's (candidates + 16 in one
  // chain; tile + 3 K / 32 in the tiled pass).
  constexpr double u = kU32;
  const auto gam = gamma32;
  auto score_err = [&](double u_op) {  // per unit norm of the memory
    return gam(double(d) + 1) * (1 + 1.01 * u) + 1.01 * u + 1.01 * u_op;
  };
  detail::parallel_chunks(n, static_cast<int>(core.workers()), [&](std::size_t, std::size_t i0, std::size_t i1) {
    std::vector<std::uint8_t> buf;
    std::vector<float> x, p;
    for (std::size_t i = i0; i < i1; ++i) {
      const Screened& s = scr[i];
      if (s.exact) {
        fell[i] = 1;
        continue;
      }
      const std::size_t nc = s.cand.size(), b = rows ? (*rows)[i] : i;
      gather_scores(core, &g[i * d], s.cand, buf, x);
      p.resize(nc);
      double mass = 0;
      for (std::size_t c = 0; c < nc; ++c) {
        p[c] = static_cast<float>(F->dG(x[c]));  // eq. (22)'s F'(xi . g)
        if (!std::isfinite(p[c])) overflow[i] = 1;
        mass += double(p[c]);
      }
      gather_accumulate(core, buf, p.data(), nc, &drive[i * d]);
      // The discarded memories' F' mass, at most |D| F'(their largest upper bound) (F' non-decreasing).
      const double w = std::isfinite(s.disc) ? double(s.kept - nc) * F->dG(s.disc / scale) : 0.0;
      const double h = gam(double(nc) + 16);
      double perr = 0, nmass = 0;  // over the candidates: sum |xi| |computed F' - exact F'|, sum |xi| F'
      for (std::size_t c = 0; c < nc; ++c) {
        const double nm = double(core.norms[s.cand[c]]), es = score_err(0.0) * nm;
        const double up = F->dG(double(x[c]) + es), lo = F->dG(double(x[c]) - es);
        perr += nm * ((up - lo) * (1 + 1e-13) + (u + 1e-13) * double(p[c]));
        nmass += nm * double(p[c]);
      }
      error[i] = (R * w + perr + h * nmass * (1 + u)) * (1 + 1e-12);
      certs[b].candidates = nc;
      certs[b].discarded_weight =
          std::max(certs[b].discarded_weight, mass > 0 ? w / mass : (w > 0 ? std::numeric_limits<double>::infinity() : 0.0));
    }
  });
  for (std::size_t i = 0; i < n; ++i)
    if (overflow[i]) throw SolverError("model C: F'(xi.g) overflowed float32; lower beta or the pattern norms");
  std::vector<std::size_t> exact, map;
  for (std::size_t i = 0; i < n; ++i)
    if (fell[i]) {
      exact.push_back(i);
      map.push_back(rows ? (*rows)[i] : i);
    }
  if (!exact.empty()) {  // the exact pass for the queries that fell back (masks follow them through `map`)
    std::vector<float> ve(exact.size() * d), de;
    std::vector<double> energy, perr, mass;
    for (std::size_t k = 0; k < exact.size(); ++k) std::copy(v + exact[k] * d, v + (exact[k] + 1) * d, &ve[k * d]);
    // The tiled pass (bf16 products round g and F' to bfloat16 where the store is bfloat16 and the CPU
    // has them) sums through tile + 3 K / 32 operations.
    const double u_op = core.bf16_products ? 0x1p-8 : 0.0;
    const double h = gam(double(core.opt.tile) + 3.0 * std::ceil(double(K) / 32.0));
    model_c_pass(core, F, ve.data(), exact.size(), mask, &map, poller, de, energy, score_err(u_op), &perr, &mass);
    for (std::size_t k = 0; k < exact.size(); ++k) {
      std::copy(&de[k * d], &de[(k + 1) * d], &drive[exact[k] * d]);
      error[exact[k]] = (perr[k] + (u_op + h * (1 + u_op)) * mass[k] * (1 + u)) * (1 + 1e-12);
      certs[map[k]].candidates = K;
      ++certs[map[k]].fallback_steps;
    }
  }
  core.store->check_intact();
}
}  // namespace

Retrieval ModelCEngine::retrieve(const float* queries, std::size_t batch, const RetrieveOptions& options) const {
  ResolvedOptions o{};
  const std::size_t d = core_->dim();
  check_collectively(*core_, options, [&] {
    o = resolve(options, ModelKind::C);
    check_clamp(options.clamp, d);
    core_->check_queries(queries, batch, 0.0);  // model C scores xi.(v/|v|): bounded by max_norm
    core_->check_mask(options.mask, batch);
    if (options.certify) {
      const double eps = *options.certify;
      ASSOCMEM_CHECK_ARG(eps > 0 && eps <= 0.5, "certify: eps must be in (0, 0.5], got ", eps);
      ASSOCMEM_CHECK_ARG(spec_.kind == Interaction::Exp || (spec_.kind == Interaction::RectifiedPower && spec_.n >= 1),
                         "certify: model C needs F' >= 0 and non-decreasing (F = rectified with n >= 1, or exp); "
                         "with F = ", to_string(spec_.kind), " every memory's overlap contributes");
      ASSOCMEM_CHECK_ARG(core_->opt.codes, "certify: the engine has no codes of its store (EngineOptions::codes; "
                                           "CodeIndex::build or assocmem index)");
      ASSOCMEM_CHECK_ARG(!core_->opt.merger, "certify: not supported yet over memories spread over several participants");
    }
  });
  Poller poller(options.monitor);
  std::vector<float> states(queries, queries + batch * d);
  Retrieval r;
  r.batch = batch;
  r.dim = d;
  if (options.certify) r.certificates.assign(batch, Certificate{});
  detail::iterate_to_fixed_point(
      states, batch, d, o.max_steps, o.tol, poller, r,
      [&](const std::vector<float>& cur, const std::vector<std::size_t>& rows, std::vector<float>& next) {
        const std::size_t n = rows.size();
        std::vector<float> drive;
        std::vector<double> energy, error;
        if (options.certify) {
          certified_c_pass(*core_, F_.get(), spec_, cur.data(), n, options.mask, &rows, *options.certify, poller, drive,
                           error, r.certificates);
          // The step (eq. 22) scales the drive's error; the update, in double, is rounded once to float.
          for (std::size_t i = 0; i < n; ++i) {
            double v2 = 0, f2 = 0;
            for (std::size_t j = 0; j < d; ++j) {
              v2 += double(cur[i * d + j]) * double(cur[i * d + j]);
              f2 += double(drive[i * d + j]) * double(drive[i * d + j]);
            }
            const double vn = std::sqrt(v2), fn = std::sqrt(f2);
            const double relax_err = (0x1p-24 + 0x1p-50) * (vn + o.step * (fn + error[i] + alpha_ * vn));
            r.certificates[rows[i]].state_error = (o.step * error[i] + relax_err) * (1 + 1e-12);
          }
        } else {
          merged_c_pass(*core_, F_.get(), cur.data(), n, options.mask, &rows, poller, drive, energy);
        }
        for (std::size_t i = 0; i < n * d; ++i)
          next[i] = static_cast<float>(cur[i] + o.step * (drive[i] - alpha_ * cur[i]));  // eq. (22)
        detail::apply_clamp(options.clamp, queries, rows, d, next.data());
      },
      alpha_ == 0.0 ? detail::direction_change<float> : detail::max_abs_change<float>);
  if (options.energy) {
    std::vector<float> drive;
    merged_c_pass(*core_, F_.get(), states.data(), batch, options.mask, nullptr, poller, drive, r.energy);
  }
  r.states.assign(states.begin(), states.end());
  return r;
}

std::vector<double> ModelCEngine::energy(const float* states, std::size_t batch, MemoryMask mask,
                                         const Monitor& monitor) const {
  RetrieveOptions checked;
  checked.mask = mask;
  checked.monitor = monitor;
  check_collectively(*core_, checked, [&] {
    core_->check_queries(states, batch, 0.0);
    core_->check_mask(mask, batch);
  });
  Poller poller(monitor);
  poller.begin_step(1, 1, batch);
  std::vector<float> drive;
  std::vector<double> e;
  merged_c_pass(*core_, F_.get(), states, batch, mask, nullptr, poller, drive, e);
  poller.throw_if_cancelled();
  return e;
}

}  // namespace assocmem
