// Capacity measurements over random +-1 memories (see capacity.hpp).
#include "assocmem/capacity.hpp"


#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <random>

#include "assocmem/binary.hpp"
#include "assocmem/engine.hpp"
#include "assocmem/error.hpp"
#include "assocmem/io.hpp"

namespace assocmem {

Protocol parse_protocol(const std::string& name) {
  if (name == "stability") return Protocol::Stability;
  if (name == "basin") return Protocol::Basin;
  if (name == "random") return Protocol::RandomStarts;
  throw InvalidArgument("protocol must be one of stability, basin, random; got '" + name + "'");
}

std::string to_string(Protocol p) {
  switch (p) {
    case Protocol::Stability: return "stability";
    case Protocol::Basin: return "basin";
    case Protocol::RandomStarts: return "random";
  }
  return "?";
}

Criterion parse_criterion(const std::string& name) {
  if (name == "per-cue" || name == "per_cue") return Criterion::PerCue;
  if (name == "all") return Criterion::AllMemories;
  throw InvalidArgument("criterion must be one of per-cue, all; got '" + name + "'");
}

std::string to_string(Criterion c) { return c == Criterion::PerCue ? "per-cue" : "all"; }

void CapacitySpec::validate() const {
  ASSOCMEM_CHECK_ARG(N >= 2, "N must be >= 2, got ", N);
  ASSOCMEM_CHECK_ARG(K >= 1, "K must be >= 1, got ", K);
  ASSOCMEM_CHECK_ARG(std::isfinite(rho) && rho >= 0 && rho <= 0.5, "rho must be in [0, 0.5], got ", rho);
  ASSOCMEM_CHECK_ARG(trials >= 1, "trials must be >= 1, got ", trials);
  ASSOCMEM_CHECK_ARG(max_steps >= 1, "max_steps must be >= 1, got ", max_steps);
  ASSOCMEM_CHECK_ARG(std::isfinite(beta) && beta > 0, "beta must be finite and > 0, got ", beta);
  ASSOCMEM_CHECK_ARG(threads >= 0 && threads <= kMaxThreads, "threads must be in [0, ", kMaxThreads,
                     "] (0 = the CPUs this process may run on), got ", threads);
  make_interaction(F);  // validates n and beta of F
  if (criterion == Criterion::AllMemories) {
    ASSOCMEM_CHECK_ARG(protocol != Protocol::RandomStarts, "criterion 'all' needs protocol stability or basin (a cue "
                       "per stored memory), not random starts");
    ASSOCMEM_CHECK_ARG(cues == 0 || cues == K, "criterion 'all' cues every memory once: cues must be 0 or K = ", K,
                       ", got ", cues);
    ASSOCMEM_CHECK_ARG(hidden == 0 || hidden >= K, "criterion 'all' needs every probed memory stored (hidden = 0)");
  }
  // Sizes: the memories (K x N floats) and the cues of one trial must fit, with room for the engines.
  const std::size_t per_trial = criterion == Criterion::AllMemories
                                   ? K
                                   : (cues != 0 ? cues : (protocol == Protocol::RandomStarts ? 100 : std::min<std::size_t>(K, 1000)));
  const std::size_t cells = checked_add(checked_mul(K, N, "K x N"), checked_mul(per_trial, N, "cues x N"), "K x N + cues x N");
  check_fits_in_memory(checked_mul(cells, 12, "memory for K x N"), "K x N");  // float32 + packed/engine copies
  checked_mul(trials, per_trial, "trials x cues");
}

namespace {

double number(const std::string& name, const std::string& text) {
  std::size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  ASSOCMEM_CHECK_ARG(used == text.size() && used > 0, name, " must be a number, got '", text, "'");
  return v;
}

// A count: a whole number in [lo, 2^40].
std::size_t count(const std::string& name, const std::string& text, double lo = 0) {
  const double v = number(name, text);
  ASSOCMEM_CHECK_ARG(std::isfinite(v) && v == std::floor(v) && v >= lo && v <= 1099511627776.0, name,
                     " must be a whole number in [", lo, ", 2^40], got ", text);
  return static_cast<std::size_t>(v);
}

bool flag(const std::string& name, const std::string& text) {
  if (text == "1" || text == "true" || text == "True") return true;
  if (text == "0" || text == "false" || text == "False") return false;
  throw InvalidArgument(name + " must be true or false, got '" + text + "'");
}

}  // namespace

const std::vector<std::string>& capacity_fields() {
  static const std::vector<std::string> names = {"model", "F", "n", "beta", "N", "K", "hidden", "protocol", "rho",
                                                 "one_step", "order", "max_steps", "step", "trials", "cues",
                                                 "count_negatives", "seed", "threads", "criterion"};
  return names;
}

void set_capacity_field(CapacitySpec& s, const std::string& name, const std::string& v) {
  if (name == "model") s.model = parse_model(v);
  else if (name == "F") s.F.kind = parse_interaction(v);
  else if (name == "n") s.F.n = number(name, v);
  else if (name == "beta") s.beta = s.F.beta = number(name, v);
  else if (name == "N") s.N = count(name, v, 2);
  else if (name == "K") s.K = count(name, v, 1);
  else if (name == "hidden") s.hidden = count(name, v);
  else if (name == "protocol") s.protocol = parse_protocol(v);
  else if (name == "rho") s.rho = number(name, v);
  else if (name == "one_step") s.one_step = flag(name, v);
  else if (name == "order") s.order = parse_update_order(v);
  else if (name == "max_steps") s.max_steps = static_cast<long>(count(name, v, 1));
  else if (name == "step") s.step = number(name, v);
  else if (name == "trials") s.trials = count(name, v, 1);
  else if (name == "cues") s.cues = count(name, v);
  else if (name == "count_negatives") s.count_negatives = flag(name, v);
  else if (name == "seed") {
    std::size_t used = 0;
    try {
      s.seed = std::stoull(v, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    ASSOCMEM_CHECK_ARG(used == v.size() && used > 0 && v[0] != '-', "seed must be a whole number in [0, 2^64), got '", v, "'");
  }
  else if (name == "threads") s.threads = static_cast<int>(std::min<std::size_t>(count(name, v), std::size_t{1} << 30));
  else if (name == "criterion") s.criterion = parse_criterion(v);
  else {
    std::string all;
    for (const auto& f : capacity_fields()) all += (all.empty() ? "" : ", ") + f;
    throw InvalidArgument("unknown capacity parameter '" + name + "' (one of " + all + ")");
  }
}

namespace {

std::vector<float> random_pm1(std::size_t rows, std::size_t cols, std::mt19937_64& rng) {
  std::vector<float> x(rows * cols);
  for (std::size_t i = 0; i < x.size(); i += 64) {
    std::uint64_t bits = rng();
    for (std::size_t j = i; j < std::min(x.size(), i + 64); ++j, bits >>= 1) x[j] = (bits & 1) ? 1.0f : -1.0f;
  }
  return x;
}

// Runs one trial's cues through the model; returns the final states (cues x N, +-1).
std::vector<float> run_model(const CapacitySpec& s, const std::vector<float>& stored, std::size_t n_stored,
                             const std::vector<float>& cues, std::size_t n_cues) {
  const std::size_t N = s.N;
  std::vector<float> out(n_cues * N);
  RetrieveOptions o;
  o.max_steps = s.one_step ? 1 : s.max_steps;
  o.seed = s.seed;
  EngineOptions eo;
  eo.threads = s.threads;
  if (s.model == ModelKind::A) {
    MemoryStore store(N, DType::Bits);
    store.append(stored.data(), n_stored);
    const ModelAEngine eng(store, s.F, Vector(), eo);
    std::vector<std::int8_t> c(cues.size());
    for (std::size_t k = 0; k < c.size(); ++k) c[k] = cues[k] > 0 ? 1 : -1;
    o.order = s.one_step ? UpdateOrder::Synchronous : s.order;
    const Retrieval r = eng.retrieve(c.data(), n_cues, o);
    for (std::size_t k = 0; k < out.size(); ++k) out[k] = static_cast<float>(r.states[k]);
    return out;
  }
  MemoryStore store(N, DType::Float32);
  store.append(stored.data(), n_stored);
  o.step = s.step;
  o.tol = 1e-6;
  const Retrieval r = s.model == ModelKind::B ? ModelBEngine(store, s.beta, eo).retrieve(cues.data(), n_cues, o)
                                              : ModelCEngine(store, s.F, 1.0, eo).retrieve(cues.data(), n_cues, o);
  for (std::size_t k = 0; k < out.size(); ++k) out[k] = r.states[k] > 0 ? 1.0f : (r.states[k] < 0 ? -1.0f : 0.0f);
  return out;
}

}  // namespace

TrialOutcome run_capacity_trial(const CapacitySpec& spec, std::size_t trial) {
  const std::size_t N = spec.N, K = spec.K;
  const std::size_t n_stored = spec.hidden == 0 ? K : std::min(spec.hidden, K);
  const std::size_t per_trial =
      spec.criterion == Criterion::AllMemories
          ? K  // every memory cued once (c % K below)
          : (spec.cues != 0 ? spec.cues : (spec.protocol == Protocol::RandomStarts ? 100 : std::min<std::size_t>(K, 1000)));
  ASSOCMEM_CHECK_ARG(trial < spec.trials, "trial ", trial, " out of range (", spec.trials, " trials)");
  TrialOutcome t;
  std::mt19937_64 rng(spec.seed * 1000003ULL + trial);
  const std::vector<float> X = random_pm1(K, N, rng);
  std::vector<float> cues;
  std::vector<std::size_t> target;  // index of the memory each cue came from
  if (spec.protocol == Protocol::RandomStarts) {
    cues = random_pm1(per_trial, N, rng);
  } else {
    const std::size_t flips = static_cast<std::size_t>(std::lround(spec.rho * static_cast<double>(N)));
    std::vector<std::size_t> idx(N);
    for (std::size_t c = 0; c < per_trial; ++c) {
      const std::size_t mu = per_trial >= K ? c % K : static_cast<std::size_t>(rng() % K);
      target.push_back(mu);
      cues.insert(cues.end(), X.begin() + static_cast<long>(mu * N), X.begin() + static_cast<long>((mu + 1) * N));
      if (flips) {
        for (std::size_t i = 0; i < N; ++i) idx[i] = i;
        for (std::size_t f = 0; f < flips; ++f) {  // partial Fisher-Yates: `flips` distinct neurons
          std::swap(idx[f], idx[f + rng() % (N - f)]);
          cues[c * N + idx[f]] *= -1.0f;
        }
      }
    }
  }
  const std::vector<float> out = run_model(spec, X, n_stored, cues, per_trial);
  for (std::size_t c = 0; c < per_trial; ++c) {
    const float* s = &out[c * N];
    if (spec.protocol == Protocol::RandomStarts) {
      bool on = false;
      for (std::size_t mu = 0; mu < n_stored && !on; ++mu) {
        long m = 0;
        for (std::size_t i = 0; i < N; ++i) m += static_cast<long>(s[i] * X[mu * N + i]);
        on = static_cast<std::size_t>(m) == N || (spec.count_negatives && m == -static_cast<long>(N));
      }
      t.hits += on;
    } else {
      std::size_t wrong = 0;
      for (std::size_t i = 0; i < N; ++i) wrong += s[i] != X[target[c] * N + i];
      t.hits += wrong == 0;
      t.wrong_bits += wrong;
      t.probed_bits += N;
    }
  }
  t.cues = per_trial;
  return t;
}

CapacityPoint measure_capacity(const CapacitySpec& spec, const std::function<void(double)>& progress) {
  spec.validate();
  const auto t0 = std::chrono::steady_clock::now();
  const TrialScheduler* sched = spec.scheduler;
  std::vector<TrialOutcome> outcomes(spec.trials);
  std::exception_ptr failure;
  try {
    for (std::size_t trial = 0; trial < spec.trials; ++trial) {
      if (sched && !sched->mine(trial)) continue;
      outcomes[trial] = run_capacity_trial(spec, trial);
      if (progress) progress(double(trial + 1) / double(spec.trials));
    }
  } catch (...) {
    if (!sched) throw;
    failure = std::current_exception();
  }
  if (sched) sched->share(outcomes, failure);  // every participant now holds every outcome
  CapacityPoint p;
  p.spec = spec;
  p.spec.scheduler = nullptr;  // a result does not keep the participants
  std::uint64_t wrong_bits = 0, probed_bits = 0;
  for (const TrialOutcome& t : outcomes) {  // in trial order: the same sums however the trials were run
    p.cues += t.cues;
    wrong_bits += t.wrong_bits;
    probed_bits += t.probed_bits;
    p.trial_recalled.push_back(spec.criterion == Criterion::AllMemories ? (t.hits == t.cues ? 1.0 : 0.0)
                                                                        : double(t.hits) / double(t.cues));
  }
  const double T = static_cast<double>(spec.trials);
  p.recalled = 0;  // the mean of the trial values (= hits / cues for PerCue: equal cues per trial)
  for (double f : p.trial_recalled) p.recalled += f / T;
  double ss = 0;
  for (double f : p.trial_recalled) ss += (f - p.recalled) * (f - p.recalled);
  p.recalled_stderr = spec.trials > 1 ? std::sqrt(ss / (T - 1) / T) : std::numeric_limits<double>::quiet_NaN();
  p.bit_error = probed_bits ? double(wrong_bits) / double(probed_bits) : 0.0;
  p.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return p;
}

namespace {
// The largest K in [lo, hi] where pred holds, for a predicate that holds below some K and fails above
// it; lo - 1 when it fails at lo.
template <class Pred>
std::size_t largest_true(std::size_t lo, std::size_t hi, Pred&& pred) {
  if (!pred(lo)) return lo - 1;
  if (pred(hi)) return hi;
  while (hi - lo > 1) {  // pred(lo) && !pred(hi)
    const std::size_t mid = lo + (hi - lo) / 2;
    (pred(mid) ? lo : hi) = mid;
  }
  return lo;
}
}  // namespace

Bisection bisect_capacity(CapacitySpec spec, double threshold, std::size_t K_lo, std::size_t K_hi,
                          const std::function<void(double)>& progress, bool with_interval) {
  ASSOCMEM_CHECK_ARG(K_lo >= 1 && K_lo <= K_hi, "need 1 <= K_lo <= K_hi, got ", K_lo, " and ", K_hi);
  ASSOCMEM_CHECK_ARG(threshold > 0 && threshold <= 1, "threshold must be in (0, 1], got ", threshold);
  std::map<std::size_t, CapacityPoint> seen;  // each K is measured once
  const double expected = (with_interval ? 3.0 : 1.0) * std::log2(double(K_hi - K_lo) + 2.0);
  auto point = [&](std::size_t K) -> const CapacityPoint& {
    auto it = seen.find(K);
    if (it == seen.end()) {
      spec.K = K;
      it = seen.emplace(K, measure_capacity(spec)).first;
      if (progress) progress(std::min(1.0, double(seen.size()) / expected));
    }
    return it->second;
  };
  auto se = [](const CapacityPoint& p) { return std::isfinite(p.recalled_stderr) ? p.recalled_stderr : 0.0; };
  Bisection b;
  // The estimate, then the ends of the range the trial-level errors cannot separate from the threshold.
  const std::size_t K = largest_true(K_lo, K_hi, [&](std::size_t k) { return point(k).recalled >= threshold; });
  b.K = K < K_lo ? 0 : K;
  b.K_low = b.K_high = b.K;
  if (!with_interval) {
    for (auto& [k, p] : seen) b.points.push_back(p);
    return b;
  }
  const std::size_t low = largest_true(K_lo, std::max(K, K_lo), [&](std::size_t k) {
    const CapacityPoint& p = point(k);
    return p.recalled - 2 * se(p) >= threshold;
  });
  b.K_low = low < K_lo ? 0 : low;
  const std::size_t high = largest_true(std::max(K, K_lo), K_hi, [&](std::size_t k) {
    const CapacityPoint& p = point(k);
    return p.recalled + 2 * se(p) >= threshold;
  });
  b.K_high = std::max(high < K_lo ? 0 : high, b.K);
  for (auto& [k, p] : seen) b.points.push_back(p);  // sorted by K
  if (progress) progress(1.0);
  return b;
}

SlopeFit fit_loglog_slope(const std::vector<double>& N, const std::vector<std::pair<double, double>>& K_ranges) {
  if (N.size() != K_ranges.size())
    throw InvalidArgument("fit_loglog_slope: N has " + std::to_string(N.size()) + " sizes but K_ranges " +
                                std::to_string(K_ranges.size()) + " ranges");
  if (N.size() < 2) throw InvalidArgument("fit_loglog_slope: needs at least 2 sizes N");
  std::vector<double> x(N.size()), y(N.size()), s(N.size());
  double mean = 0;
  for (std::size_t i = 0; i < N.size(); ++i) {
    const auto [lo, hi] = K_ranges[i];
    if (!(N[i] > 0) || !std::isfinite(N[i])) throw InvalidArgument("fit_loglog_slope: N must be positive and finite");
    if (!(lo >= 1) || !(hi >= lo) || !std::isfinite(hi))
      throw InvalidArgument("fit_loglog_slope: each K range needs 1 <= K_low <= K_high (finite), got [" +
                                  std::to_string(lo) + ", " + std::to_string(hi) + "]");
    x[i] = std::log(N[i]);
    y[i] = 0.5 * (std::log(lo) + std::log(hi));  // the geometric midpoint
    s[i] = 0.5 * (std::log(hi) - std::log(lo));  // half-width in ln K: one standard error
    mean += x[i];
  }
  mean /= double(N.size());
  double sxx = 0;
  for (double xi : x) sxx += (xi - mean) * (xi - mean);
  if (!(sxx > 0)) throw InvalidArgument("fit_loglog_slope: the sizes N must not all be equal");
  SlopeFit f;
  double var = 0;
  for (std::size_t i = 0; i < N.size(); ++i) {
    const double w = (x[i] - mean) / sxx;  // the slope is sum w_i y_i
    f.slope += w * y[i];
    var += w * w * s[i] * s[i];
  }
  f.stderr_ = std::sqrt(var);
  return f;
}

}  // namespace assocmem
