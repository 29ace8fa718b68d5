// ModelCEngine: a retrieval's options, steps and results over the passes (eqs. 17, 18, 21, 22).
#include "internal.hpp"

namespace assocmem {

using namespace detail;

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


Retrieval ModelCEngine::retrieve(const float* queries, std::size_t batch, const RetrieveOptions& options) const {
  ResolvedOptions o{};
  const std::size_t d = core_->dim();
  check_collectively(*core_, options, [&] {
    o = resolve(options, ModelKind::C);
    check_clamp(options.clamp, d);
    core_->check_queries(queries, batch, 0.0);  // model C scores xi.(v/|v|): bounded by max_norm
    core_->check_mask(options.mask, batch);
    if (options.certify) {
      check_certify(*core_, *options.certify, [&] {
        ASSOCMEM_CHECK_ARG(spec_.kind == Interaction::Exp || (spec_.kind == Interaction::RectifiedPower && spec_.n >= 1),
                           "certify: model C needs F' >= 0 and non-decreasing (F = rectified with n >= 1, or exp); "
                           "with F = ", to_string(spec_.kind), " every memory's overlap contributes");
      });
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
          next[i] = static_cast<float>(detail::spherical_step(cur[i], drive[i], alpha_, o.step));  // eq. (22)
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
