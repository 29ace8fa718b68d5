// Internal: the one iterate-to-fixed-point driver of every retrieval (plain models, engines, the
// packed-bit engine), and the Poller that gives a Monitor progress and cancellation.
#pragma once

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <thread>
#include <vector>

#include "assocmem/retrieve.hpp"

namespace assocmem::detail {

/// Calls RetrieveOptions::monitor from the calling thread at most every 50 ms. Worker threads read
/// cancelled() between tiles and stop early; the call then throws Cancelled (throw_if_cancelled).
class Poller {
 public:
  explicit Poller(const Monitor& monitor)
      : monitor_(monitor ? &monitor : nullptr), owner_(std::this_thread::get_id()), last_(Clock::now()) {}
  void begin_step(long step, long max_steps, std::size_t active) {
    if (std::this_thread::get_id() != owner_) return;
    progress_.step = step;
    progress_.max_steps = max_steps;
    progress_.active = active;
    progress_.fraction = 0.0;
    poll(0, 0);
  }
  /// Polls when called from the thread that made the Poller (others return at once), with `done` of
  /// `total` units of this step's work finished. force: poll even if the last poll was under 50 ms ago.
  void poll(std::size_t done, std::size_t total, bool force = false) {
    if (!monitor_ || cancelled() || std::this_thread::get_id() != owner_) return;
    const auto now = Clock::now();
    if (!force && now - last_ < std::chrono::milliseconds(50)) return;
    last_ = now;
    progress_.fraction = total ? double(done) / double(total) : 0.0;
    if (!(*monitor_)(progress_)) cancelled_.store(true, std::memory_order_relaxed);
  }
  bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }
  void throw_if_cancelled() const {
    if (cancelled()) throw Cancelled("retrieval cancelled by its monitor");
  }

 private:
  using Clock = std::chrono::steady_clock;
  const Monitor* monitor_;
  std::thread::id owner_;
  Clock::time_point last_;
  Progress progress_;
  std::atomic<bool> cancelled_{false};
};

/// Fills r.steps, r.stop, r.last_change for `batch` states of length `dim` (states, row-major,
/// updated in place) by applying update(cur, rows, next) to the rows still iterating: cur holds
/// their states (row i is query rows[i]), next receives the updated states. change(a, b, dim) is the
/// size of one update. A row stops when change <= tol (Converged), after max_steps (MaxSteps), or
/// when its update is not finite (BlewUp; it keeps its last finite state).
template <class T, class Update, class Change>
void iterate_to_fixed_point(std::vector<T>& states, std::size_t batch, std::size_t dim, long max_steps, double tol,
                            Poller& poller, Retrieval& r, Update&& update, Change&& change) {
  r.steps.assign(batch, 0);
  r.stop.assign(batch, StopReason::MaxSteps);
  r.last_change.assign(batch, std::nan(""));
  std::vector<std::size_t> active(batch);
  for (std::size_t b = 0; b < batch; ++b) active[b] = b;
  std::vector<T> cur, next;
  for (long step = 1; step <= max_steps && !active.empty(); ++step) {
    poller.begin_step(step, max_steps, active.size());
    poller.throw_if_cancelled();
    cur.resize(active.size() * dim);
    for (std::size_t i = 0; i < active.size(); ++i)
      std::copy(&states[active[i] * dim], &states[active[i] * dim] + dim, &cur[i * dim]);
    next.resize(cur.size());
    update(static_cast<const std::vector<T>&>(cur), static_cast<const std::vector<std::size_t>&>(active), next);
    poller.throw_if_cancelled();
    std::vector<std::size_t> still;
    for (std::size_t i = 0; i < active.size(); ++i) {
      const std::size_t b = active[i];
      const T* nb = &next[i * dim];
      bool finite = true;
      for (std::size_t j = 0; j < dim && finite; ++j) finite = std::isfinite(static_cast<double>(nb[j]));
      if (!finite) {
        r.stop[b] = StopReason::BlewUp;
        continue;
      }
      const double delta = change(&cur[i * dim], nb, dim);
      std::copy(nb, nb + dim, &states[b * dim]);
      r.steps[b] = step;
      r.last_change[b] = delta;
      if (delta <= tol) r.stop[b] = StopReason::Converged;
      else still.push_back(b);
    }
    active = std::move(still);
  }
}

/// Eq. (15)'s relaxation v + step (a - v) of one component, written (1 - step) v + step a and
/// evaluated in double: at step = 1 the target a itself (eq. 16), and accurate to double rounding for any
/// |v| (a - v in float32 lost a where |v| >> |a|: at |v| = 1e8 the state was 0 instead of a).
inline double relax(double v, double a, double step) { return step == 1.0 ? a : (1.0 - step) * v + step * a; }

/// Eq. (22)'s Euler step of one component of model C: v + step (drive - alpha v), drive = (xi^T f)_i at
/// v/|v| (tau_f = 1), evaluated in double. Used by ModelCEngine and by assocmem.torch's spherical_retrieve
/// (spherical_step, attention.hpp); the plain ModelC takes the same step with eq. (22)'s right-hand side
/// from the general network (Network::effective_rhs), the reference the tests compare both with.
inline double spherical_step(double v, double drive, double alpha, double step) { return v + step * (drive - alpha * v); }

/// max_i |b_i - a_i|: the change of models B and C.
template <class T>
double max_abs_change(const T* a, const T* b, std::size_t d) {
  double delta = 0;
  for (std::size_t j = 0; j < d; ++j) delta = std::max(delta, std::fabs(double(b[j]) - double(a[j])));
  return delta;
}

/// max_i |b_i/|b| - a_i/|a||: model C's change when alpha = 0 (|v| grows without bound).
template <class T>
double direction_change(const T* a, const T* b, std::size_t d) {
  double na = 0, nb = 0;
  for (std::size_t j = 0; j < d; ++j) {
    na += double(a[j]) * double(a[j]);
    nb += double(b[j]) * double(b[j]);
  }
  na = std::sqrt(na);
  nb = std::sqrt(nb);
  double delta = 0;
  for (std::size_t j = 0; j < d; ++j) delta = std::max(delta, std::fabs(double(b[j]) / nb - double(a[j]) / na));
  return delta;
}

/// Number of entries that differ: model A's change (flips of one sweep).
template <class T>
double flips(const T* a, const T* b, std::size_t d) {
  double n = 0;
  for (std::size_t j = 0; j < d; ++j) n += a[j] != b[j];
  return n;
}

/// Resets clamped features of n states to the cue's values (models B and C).
template <class T>
void apply_clamp(const std::vector<std::uint8_t>& clamp, const T* cue_rows, const std::vector<std::size_t>& rows,
                 std::size_t dim, T* states) {
  if (clamp.empty()) return;
  for (std::size_t i = 0; i < rows.size(); ++i)
    for (std::size_t j = 0; j < dim; ++j)
      if (clamp[j]) states[i * dim + j] = cue_rows[rows[i] * dim + j];
}

}  // namespace assocmem::detail
