// The retrieval engine: tiled passes over a store with fused epilogues (online softmax for model B,
// elementwise F' for model C), multi-threaded over tiles, kernels chosen once at construction.
#include "assocmem/engine.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/kernels.hpp"
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
  throw InvalidArgument("kernel must be one of auto, generic, avx512, avx512_bf16, amx_bf16; got '" + name + "'");
}

void EngineOptions::validate() const {
  ASSOCMEM_CHECK_ARG(threads >= 0 && threads <= kMaxThreads, "threads must be in [0, ", kMaxThreads,
                     "] (0 = all hardware threads), got ", threads);
  ASSOCMEM_CHECK_ARG(tile >= 32 && tile <= 65536 && tile % 32 == 0, "tile must be a multiple of 32 in [32, 65536], got ",
                     tile);
}

void BatchOptions::validate(bool model_b) const {
  if (model_b)
    ASSOCMEM_CHECK_ARG(std::isfinite(step) && step > 0 && step <= 1, "step (dt/tau_f) must be in (0, 1], got ", step);
  else
    ASSOCMEM_CHECK_ARG(std::isfinite(step) && step > 0, "step (dt/tau_f) must be finite and > 0, got ", step);
  ASSOCMEM_CHECK_ARG(max_steps > 0, "max_steps must be > 0, got ", max_steps);
  ASSOCMEM_CHECK_ARG(std::isfinite(tol) && tol >= 0, "tol must be finite and >= 0, got ", tol);
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

void AttentionPartial::merge(const AttentionPartial& o) {
  ASSOCMEM_CHECK_ARG(o.batch == batch && o.dim == dim && o.top_k == top_k, "merge: partials differ in batch, dim or top_k (",
                     batch, ", ", dim, ", ", top_k, ") vs (", o.batch, ", ", o.dim, ", ", o.top_k, ")");
  for (std::size_t b = 0; b < batch; ++b) {
    if (top_k) merge_top(top[b], o.top[b], top_k);
    if (o.max[b] == -std::numeric_limits<float>::infinity()) continue;
    float* a = acc.data() + b * dim;
    const float* oa = o.acc.data() + b * dim;
    if (max[b] == -std::numeric_limits<float>::infinity()) {
      max[b] = o.max[b];
      sum[b] = o.sum[b];
      std::copy(oa, oa + dim, a);
      continue;
    }
    const float m = std::max(max[b], o.max[b]);
    const double s1 = std::exp(double(max[b]) - m), s2 = std::exp(double(o.max[b]) - m);
    sum[b] = sum[b] * s1 + o.sum[b] * s2;
    for (std::size_t j = 0; j < dim; ++j) a[j] = static_cast<float>(a[j] * s1 + oa[j] * s2);
    max[b] = m;
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

struct EngineCore {
  const MemoryStore* store;
  const kernels::Ops* ops;
  EngineOptions opt;
  bool bf16_products;

  EngineCore(const MemoryStore& s, EngineOptions o) : store(&s), opt(o) {
    opt.validate();
    ASSOCMEM_CHECK_ARG(s.size() > 0, "store: the memory is empty (no patterns)");
    switch (opt.kernel) {
      case KernelChoice::Generic: ops = &kernels::generic_ops(); break;
      case KernelChoice::Avx512:
        ops = kernels::avx512_ops();
        ASSOCMEM_CHECK_ARG(ops != nullptr, "kernel 'avx512' is not available on this CPU or build");
        break;
      case KernelChoice::Avx512Bf16:
        ops = kernels::avx512_bf16_ops();
        ASSOCMEM_CHECK_ARG(ops != nullptr, "kernel 'avx512_bf16' is not available on this CPU or build");
        break;
      case KernelChoice::AmxBf16:
        ops = kernels::amx_bf16_ops();
        ASSOCMEM_CHECK_ARG(ops != nullptr, "kernel 'amx_bf16' is not available on this CPU, kernel or build");
        break;
      case KernelChoice::Auto:
        ops = s.dtype() == DType::BFloat16 ? kernels::amx_bf16_ops() : nullptr;
        if (!ops && s.dtype() == DType::BFloat16) ops = kernels::avx512_bf16_ops();
        if (!ops) ops = kernels::avx512_ops();
        if (!ops) ops = &kernels::generic_ops();
        break;
    }
    bf16_products = ops->bf16_products && s.dtype() == DType::BFloat16;
    // The largest memory norm bounds every score |xi_mu . v| <= max_norm |v| (Cauchy-Schwarz), so
    // queries whose scores could overflow float32 are refused up front, the same on every kernel.
    std::vector<float> row(s.dim());
    double m2 = 0;
    for (std::size_t i = 0; i < s.size(); ++i) {
      s.decode_row(i, row.data());
      double r2 = 0;
      for (float x : row) r2 += double(x) * x;
      m2 = std::max(m2, r2);
    }
    s.check_intact();
    max_norm = std::sqrt(m2);
    ASSOCMEM_CHECK_ARG(max_norm < kScoreLimit, "store: a memory has norm ", max_norm,
                       ", beyond the float32 range of the scores");
  }

  // Scores beta * xi.v must stay below this (float32 max / 4: room for the rounding of the products,
  // bfloat16 queries included).
  static constexpr double kScoreLimit = 8.5e37;
  double max_norm = 0;

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

  std::size_t dim() const { return store->dim(); }
  std::size_t dpad() const { return round_up(dim(), kBlock); }
  std::size_t ntiles() const { return (store->size() + opt.tile - 1) / opt.tile; }
  std::size_t workers() const {
    return std::max<std::size_t>(1, std::min<std::size_t>(static_cast<std::size_t>(resolve_threads(opt.threads)), ntiles()));
  }

  // One pass over all memories for queries Q (nq x d). For each worker w, epi[w] sees every score
  // row (raw dot products) of its tiles and writes the weights P; acc[w] (nq x dpad) accumulates
  // sum_t P[t] xi_t.
  template <class Epi>
  void pass(const float* Q, std::size_t nq, std::vector<Epi>& epi, std::vector<std::vector<float>>& acc) const {
    const std::size_t d = dim(), dp = dpad(), T = opt.tile, K = store->size();
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
      A.assign(nq_pad * dp, 0.0f);
      std::vector<float> tilef, xt, S(QB * T), P(QB * T);
      std::vector<std::uint16_t> xp1, xp2, Pbf;
      for (std::size_t ti = tb; ti < te; ++ti) {
        const std::size_t t0 = ti * T, nt = std::min(T, K - t0);
        const std::uint8_t* raw = store->row(t0);
        const float* rowsf = nullptr;
        const std::uint16_t* rowsb = nullptr;
        if (store->dtype() == DType::Float32) {
          rowsf = reinterpret_cast<const float*>(raw);
        } else if (store->dtype() == DType::BFloat16 && (bf16_products || matvec)) {
          rowsb = reinterpret_cast<const std::uint16_t*>(raw);
        } else {  // bits, or bf16 on float32 kernels: decode the tile
          tilef.resize(nt * d);
          for (std::size_t t = 0; t < nt; ++t) store->decode_row(t0 + t, &tilef[t * d]);
          rowsf = tilef.data();
        }
        if (!matvec) {
          if (bf16_products) {
            xp1.resize(round_up(nt, kBlock) * dp);
            xp2.resize(round_up(nt, kBlock) * dp);
            ops->pack_xp1(rowsb, nt, d, xp1.data());
            ops->pack_xp2(rowsb, nt, d, xp2.data());
            Pbf.resize(QB * T);
          } else {
            xt.resize(round_up(nt, kBlock) * d);
            ops->pack_xt(rowsf, nt, d, xt.data());
          }
        }
        for (std::size_t r0 = 0; r0 < nq; r0 += QB) {
          const std::size_t nb = std::min(QB, nq - r0);
          if (matvec) {
            for (std::size_t r = 0; r < nb; ++r) {
              if (rowsf) ops->dots_f32(&Qp[(r0 + r) * dp], rowsf, nt, d, &S[r * T]);
              else ops->dots_bf16(&Qp[(r0 + r) * dp], rowsb, nt, d, &S[r * T]);
            }
          } else if (bf16_products) {
            ops->gemm1_bf16(&Qbf[r0 * dp], ops->full_row_blocks ? QB : nb, dp, xp1.data(), nt, d, S.data(), T);
          } else {
            ops->gemm1_f32(&Qp[r0 * dp], nb, dp, xt.data(), nt, d, S.data(), T);
          }
          for (std::size_t r = 0; r < nb; ++r) {
            float* Pr = &P[r * T];
            epi[w].apply(r0 + r, &S[r * T], nt, Pr, &A[(r0 + r) * dp], dp, t0);
            std::fill(Pr + nt, Pr + round_up(nt, kBlock), 0.0f);
          }
          if (nb < QB) std::fill(P.begin() + static_cast<long>(nb * T), P.end(), 0.0f);  // padding rows
          if (matvec) {
            for (std::size_t r = 0; r < nb; ++r) {
              if (rowsf) ops->axpy_f32(&P[r * T], rowsf, nt, d, &A[(r0 + r) * dp]);
              else ops->axpy_bf16(&P[r * T], rowsb, nt, d, &A[(r0 + r) * dp]);
            }
          } else if (bf16_products) {
            const std::size_t rows = ops->full_row_blocks ? QB : nb;
            ops->to_bf16(P.data(), rows * T, Pbf.data());
            ops->gemm2_bf16(Pbf.data(), rows, T, xp2.data(), nt, d, &A[r0 * dp], dp);
          } else {
            ops->gemm2_f32(P.data(), nb, T, rowsf, nt, d, &A[r0 * dp], dp);
          }
        }
      }
    });
    store->check_intact();  // a mapped store whose file shrank during the pass: refuse the result
  }
};

}  // namespace detail

namespace {

// Online softmax (eq. 12 tile by tile): running max, rescaled sums, top-k.
struct SoftmaxEpilogue {
  const kernels::Ops* ops;
  float beta;
  const std::uint64_t* ids;
  AttentionPartial part;  // acc unused here (the pass accumulates into its own buffer)

  void apply(std::size_t b, const float* s, std::size_t nt, float* p, float* acc, std::size_t dp, std::size_t t0) {
    const float m_tile = ops->scaled_max(s, nt, beta);
    float& m = part.max[b];
    if (m_tile > m) {
      if (m != -std::numeric_limits<float>::infinity()) {
        const float a = std::exp(m - m_tile);
        ops->scale(acc, dp, a);
        part.sum[b] *= a;
      }
      m = m_tile;
    }
    part.sum[b] += ops->exp_shift_sum(s, nt, beta, m, p);
    if (part.top_k) {
      auto& heap = part.top[b];  // min-heap on score
      auto cmp = [](const ScoredId& x, const ScoredId& y) { return x.score > y.score; };
      for (std::size_t i = 0; i < nt; ++i) {
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
  std::vector<double> energy_sum;
  bool overflow = false;
  void apply(std::size_t b, const float* s, std::size_t nt, float* p, float*, std::size_t, std::size_t) {
    double e = 0;
    for (std::size_t i = 0; i < nt; ++i) {
      const double h = s[i];
      const double f = F->dG(h);
      p[i] = static_cast<float>(f);
      e += F->G(h);
      if (!std::isfinite(p[i])) overflow = true;
    }
    energy_sum[b] += e;
  }
};

}  // namespace

// ------------------------------------------------------------------------------------------------
ModelBEngine::ModelBEngine(const MemoryStore& store, double beta, EngineOptions options)
    : core_(std::make_unique<detail::EngineCore>(store, options)), beta_(beta) {
  ASSOCMEM_CHECK_ARG(std::isfinite(beta) && beta > 0, "beta must be finite and > 0, got ", beta);
  ASSOCMEM_CHECK_ARG(beta <= std::numeric_limits<float>::max(), "beta too large for float32 scores: ", beta);
}
ModelBEngine::~ModelBEngine() = default;
ModelBEngine::ModelBEngine(ModelBEngine&&) noexcept = default;
ModelBEngine& ModelBEngine::operator=(ModelBEngine&&) noexcept = default;
std::string ModelBEngine::kernel() const { return core_->ops->name; }

AttentionPartial ModelBEngine::partial(const float* queries, std::size_t batch, std::size_t top_k) const {
  const std::size_t d = core_->dim(), dp = core_->dpad();
  core_->check_queries(queries, batch, beta_);
  const std::size_t nw = core_->workers();
  std::vector<SoftmaxEpilogue> epi;
  for (std::size_t w = 0; w < nw; ++w)
    epi.push_back({core_->ops, static_cast<float>(beta_), core_->store->ids(), AttentionPartial(batch, 0, top_k)});
  std::vector<std::vector<float>> acc;
  core_->pass(queries, batch, epi, acc);
  AttentionPartial out(batch, d, top_k);
  for (std::size_t w = 0; w < nw; ++w) {
    AttentionPartial p(batch, d, top_k);
    p.max = std::move(epi[w].part.max);
    p.sum = std::move(epi[w].part.sum);
    p.top = std::move(epi[w].part.top);
    for (auto& t : p.top)
      std::sort(t.begin(), t.end(), [](const ScoredId& a, const ScoredId& b) { return a.score > b.score; });
    for (std::size_t b = 0; b < batch; ++b) std::copy(&acc[w][b * dp], &acc[w][b * dp] + d, &p.acc[b * d]);
    out.merge(p);
  }
  for (std::size_t b = 0; b < batch; ++b)
    ASSOCMEM_CHECK_ARG(std::isfinite(out.max[b]) && std::isfinite(out.sum[b]) && out.sum[b] > 0, "queries: row ", b,
                       ": the softmax over the scores is not finite (beta = ", beta_, ")");
  return out;
}

namespace {
double half_square(const float* v, std::size_t d) {
  double s = 0;
  for (std::size_t j = 0; j < d; ++j) s += double(v[j]) * v[j];
  return 0.5 * s;
}

BatchRetrieval make_result(std::size_t batch, std::size_t d, const float* queries) {
  BatchRetrieval r;
  r.batch = batch;
  r.dim = d;
  r.states.assign(queries, queries + batch * d);
  r.steps.assign(batch, 0);
  r.converged.assign(batch, 0);
  r.final_delta.assign(batch, 0.0);
  r.energy.assign(batch, 0.0);
  r.top.assign(batch, {});
  return r;
}

double max_abs_change(const float* a, const float* b, std::size_t d) {
  double delta = 0;
  for (std::size_t j = 0; j < d; ++j) delta = std::max(delta, double(std::fabs(b[j] - a[j])));
  return delta;
}

// Model C with alpha = 0: |v| grows without bound, so convergence is judged on v/|v|
// (ModelC::retrieve's rule).
double direction_change(const float* a, const float* b, std::size_t d) {
  double na = 0, nb = 0;
  for (std::size_t j = 0; j < d; ++j) {
    na += double(a[j]) * a[j];
    nb += double(b[j]) * b[j];
  }
  na = std::sqrt(na);
  nb = std::sqrt(nb);
  double delta = 0;
  for (std::size_t j = 0; j < d; ++j) delta = std::max(delta, std::fabs(b[j] / nb - a[j] / na));
  return delta;
}

// Runs `update(active states, rows, next)` on the not-yet-converged rows until tol or max_steps.
template <class Update>
void iterate(BatchRetrieval& r, const BatchOptions& o, Update&& update,
             double (*change)(const float*, const float*, std::size_t) = max_abs_change) {
  const std::size_t d = r.dim;
  std::vector<std::size_t> active(r.batch);
  for (std::size_t b = 0; b < r.batch; ++b) active[b] = b;
  std::vector<float> cur, next;
  for (long step = 1; step <= o.max_steps && !active.empty(); ++step) {
    cur.resize(active.size() * d);
    for (std::size_t i = 0; i < active.size(); ++i)
      std::copy(&r.states[active[i] * d], &r.states[active[i] * d] + d, &cur[i * d]);
    update(cur, active, next);
    std::vector<std::size_t> still;
    for (std::size_t i = 0; i < active.size(); ++i) {
      const std::size_t b = active[i];
      for (std::size_t j = 0; j < d; ++j)
        if (!std::isfinite(next[i * d + j]))
          throw SolverError(detail::concat("query ", b, " diverged at update ", step,
                                           " (the state left the float32 range); lower step or beta"));
      const double delta = change(&cur[i * d], &next[i * d], d);
      std::copy(&next[i * d], &next[i * d] + d, &r.states[b * d]);
      r.steps[b] = step;
      r.final_delta[b] = delta;
      if (delta <= o.tol) r.converged[b] = 1;
      else still.push_back(b);
    }
    active = std::move(still);
  }
}
}  // namespace

BatchRetrieval ModelBEngine::retrieve(const float* queries, std::size_t batch, const BatchOptions& o) const {
  o.validate(true);
  const std::size_t d = core_->dim();
  core_->check_queries(queries, batch, beta_);
  BatchRetrieval r = make_result(batch, d, queries);
  const std::size_t k_during = o.final_pass ? 0 : o.top_k;
  iterate(r, o, [&](const std::vector<float>& cur, const std::vector<std::size_t>& rows, std::vector<float>& next) {
    const std::size_t n = rows.size();
    const AttentionPartial part = partial(cur.data(), n, k_during);
    next.resize(n * d);
    std::vector<float> st(d);
    for (std::size_t i = 0; i < n; ++i) {
      part.state(i, st.data());
      for (std::size_t j = 0; j < d; ++j) next[i * d + j] = static_cast<float>(cur[i * d + j] + o.step * (st[j] - cur[i * d + j]));  // eq. (15)
      if (!o.final_pass) {  // describe the input of this update
        r.energy[rows[i]] = half_square(&cur[i * d], d) - part.log_sum_exp(i) / beta_;  // eq. (13)
        r.top[rows[i]] = part.top_weights(i);
      }
    }
  });
  if (o.final_pass) {
    const AttentionPartial part = partial(r.states.data(), batch, o.top_k);
    for (std::size_t b = 0; b < batch; ++b) {
      r.energy[b] = half_square(&r.states[b * d], d) - part.log_sum_exp(b) / beta_;  // eq. (13)
      r.top[b] = part.top_weights(b);
    }
  }
  return r;
}

std::vector<double> ModelBEngine::energy(const float* states, std::size_t batch) const {
  const std::size_t d = core_->dim();
  const AttentionPartial part = partial(states, batch, 0);
  std::vector<double> e(batch);
  for (std::size_t b = 0; b < batch; ++b) e[b] = half_square(states + b * d, d) - part.log_sum_exp(b) / beta_;  // eq. (13)
  return e;
}

// ------------------------------------------------------------------------------------------------
ModelCEngine::ModelCEngine(const MemoryStore& store, InteractionSpec F, double alpha, EngineOptions options)
    : core_(std::make_unique<detail::EngineCore>(store, options)), F_(make_interaction(F)), alpha_(alpha) {
  ASSOCMEM_CHECK_ARG(std::isfinite(alpha) && alpha >= 0, "alpha must be finite and >= 0, got ", alpha);
}
ModelCEngine::~ModelCEngine() = default;
ModelCEngine::ModelCEngine(ModelCEngine&&) noexcept = default;
ModelCEngine& ModelCEngine::operator=(ModelCEngine&&) noexcept = default;
std::string ModelCEngine::kernel() const { return core_->ops->name; }

namespace {
// One pass of model C at the directions g = v/|v| (eq. 18): drive = xi^T F'(xi g) per row, and
// energy = -sum_mu F(xi_mu . g) (eq. 21).
void model_c_pass(const detail::EngineCore& core, const AdditiveLagrangian* F, const float* v, std::size_t n,
                  std::vector<float>& drive, std::vector<double>& energy) {
  const std::size_t d = core.dim(), dp = core.dpad();
  std::vector<float> g(n * d);
  for (std::size_t i = 0; i < n; ++i) {
    double norm = 0;
    for (std::size_t j = 0; j < d; ++j) norm += double(v[i * d + j]) * v[i * d + j];
    norm = std::sqrt(norm);
    ASSOCMEM_CHECK_ARG(norm > 0 && std::isfinite(norm), "queries: row ", i,
                       norm > 0 ? " has an infinite norm" : " is zero; model C's output v/|v| is undefined at 0");
    for (std::size_t j = 0; j < d; ++j) g[i * d + j] = static_cast<float>(v[i * d + j] / norm);
  }
  const std::size_t nw = core.workers();
  std::vector<AdditiveEpilogue> epi(nw, AdditiveEpilogue{F, std::vector<double>(n, 0.0)});
  std::vector<std::vector<float>> acc;
  core.pass(g.data(), n, epi, acc);
  drive.assign(n * d, 0.0f);
  energy.assign(n, 0.0);
  for (std::size_t w = 0; w < nw; ++w) {
    if (epi[w].overflow) throw SolverError("model C: F'(xi.g) overflowed float32; lower beta or the pattern norms");
    for (std::size_t i = 0; i < n; ++i) {
      energy[i] -= epi[w].energy_sum[i];  // eq. (21)
      for (std::size_t j = 0; j < d; ++j) drive[i * d + j] += acc[w][i * dp + j];
    }
  }
}
}  // namespace

BatchRetrieval ModelCEngine::retrieve(const float* queries, std::size_t batch, const BatchOptions& o) const {
  o.validate(false);
  const std::size_t d = core_->dim();
  core_->check_queries(queries, batch, 0.0);  // model C scores xi.(v/|v|): bounded by max_norm
  BatchRetrieval r = make_result(batch, d, queries);
  auto pass = [&](const float* v, std::size_t n, std::vector<float>& drive, std::vector<double>& energy) {
    model_c_pass(*core_, F_.get(), v, n, drive, energy);
  };
  iterate(r, o, [&](const std::vector<float>& cur, const std::vector<std::size_t>& rows, std::vector<float>& next) {
    const std::size_t n = rows.size();
    std::vector<float> drive;
    std::vector<double> energy;
    pass(cur.data(), n, drive, energy);
    next.resize(n * d);
    for (std::size_t i = 0; i < n; ++i) {
      for (std::size_t j = 0; j < d; ++j)
        next[i * d + j] = static_cast<float>(cur[i * d + j] + o.step * (drive[i * d + j] - alpha_ * cur[i * d + j]));  // eq. (22)
      if (!o.final_pass) r.energy[rows[i]] = energy[i];
    }
  }, alpha_ == 0.0 ? direction_change : max_abs_change);
  if (o.final_pass) {
    std::vector<float> drive;
    std::vector<double> energy;
    pass(r.states.data(), batch, drive, energy);
    r.energy = energy;
  }
  return r;
}

std::vector<double> ModelCEngine::energy(const float* states, std::size_t batch) const {
  core_->check_queries(states, batch, 0.0);
  std::vector<float> drive;
  std::vector<double> e;
  model_c_pass(*core_, F_.get(), states, batch, drive, e);
  return e;
}

}  // namespace assocmem
