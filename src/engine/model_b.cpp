// ModelBEngine: a retrieval's options, steps and results over the passes (eqs. 13, 15, 16).
#include "internal.hpp"

namespace assocmem {

using namespace detail;

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
      check_certify(*core_, *options.certify,
                    [&] { ASSOCMEM_CHECK_ARG(!hetero, "certify: not supported yet with a value store"); });
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


}  // namespace assocmem
