// Model A on packed bits: incremental overlaps, masked sums (see binary.hpp).
#include "assocmem/binary.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>

#include "assocmem/io.hpp"
#include "collective.hpp"
#include "fixed_point.hpp"
#include "kernels/kernels.hpp"
#include "parallel.hpp"

namespace assocmem {

namespace {
// Model A runs on the packed-bit kernels of the same tables (the bf16 products play no part).
const kernels::Ops* choose(KernelChoice k) { return &kernels::choose(k, false); }
}  // namespace

std::vector<std::int8_t> to_spins(const float* x, std::size_t rows, std::size_t cols, const std::string& what) {
  const std::size_t n = checked_mul(rows, cols, (what + ": rows x cols").c_str());
  std::vector<std::int8_t> s(n);
  for (std::size_t k = 0; k < n; ++k) {
    ASSOCMEM_CHECK_ARG(x[k] == 1.0f || x[k] == -1.0f, what, ": row ", k / cols, " element ", k % cols, " is ", x[k],
                       "; model A states must be +1 or -1");
    s[k] = x[k] > 0 ? 1 : -1;
  }
  return s;
}

MemoryStore pack_bits(const MemoryStore& store) {
  ASSOCMEM_CHECK_ARG(store.dtype() != DType::Bits, "pack_bits: the store already holds bits");
  MemoryStore bits(store.dim(), DType::Bits);
  std::vector<float> row(store.dim());
  for (std::size_t i = 0; i < store.size(); ++i) {
    store.decode_row(i, row.data());
    for (std::size_t j = 0; j < row.size(); ++j)
      ASSOCMEM_CHECK_ARG(row[j] == 1.0f || row[j] == -1.0f, "memory ", i, " (id ", store.ids()[i], ") element ", j, " is ", row[j],
                         "; model A needs +1/-1 memories (store them with dtype bits)");
    bits.append(row.data(), 1, store.ids() + i);
  }
  store.check_intact();
  return bits;
}

// Per-cue working state.
struct ModelAEngine::Cue {
  std::vector<std::int8_t> sigma;
  std::vector<std::int32_t> m;  // overlaps xi_mu . sigma
  std::vector<double> A, B;     // F(m) - F(m-2), F(m+2) - F(m) (scaled for exp)
  std::vector<double> table;    // exp only: the table scaled by exp(-beta S)
  std::int32_t S = 0;           // exp only: the shift of `table` (0: not built yet)
  bool has_table = false;
  double current_scale = 1.0;   // exp(-beta S) for the current term (exp), else 1
  mutable std::vector<std::int64_t> hist;  // the exact fallback's c_r (grouped_binary_field)
};

ModelAEngine::ModelAEngine(const MemoryStore& store, InteractionSpec F, Vector current, EngineOptions options)
    : store_(&store), lease_(store), N_(store.dim()), K_(store.size()), spec_(F), F_(make_interaction(F)), ops_(choose(options.kernel)),
      threads_(options.threads), merger_(options.merger) {
  options.validate();
  ASSOCMEM_CHECK_ARG(store.dtype() == DType::Bits, "model A engine: the store must hold bits (+-1 patterns), got ",
                     to_string(store.dtype()));
  ASSOCMEM_CHECK_ARG(K_ > 0, "store: the memory is empty (no patterns)");
  ASSOCMEM_CHECK_ARG(N_ < (std::size_t{1} << 30), "model A engine: N = ", N_, " is too large");
  if (current.size() == 0) {
    I_.assign(N_, 0.0);
  } else {
    ASSOCMEM_CHECK_ARG(static_cast<std::size_t>(current.size()) == N_, "current I has length ", current.size(),
                       " but N_f = ", N_);
    check_finite(current, "current I");
    I_.assign(current.data(), current.data() + current.size());
  }
  // Transpose the patterns into columns of bits.
  col_bytes_ = (K_ + 7) / 8;
  cols_.assign(N_ * col_bytes_, 0);
  for (std::size_t mu = 0; mu < K_; ++mu) {
    const std::uint8_t* row = store.row(mu);
    for (std::size_t i = 0; i < N_; ++i)
      if ((row[i / 8] >> (i % 8)) & 1) cols_[i * col_bytes_ + mu / 8] |= static_cast<std::uint8_t>(1u << (mu % 8));
  }
  if (spec_.kind != Interaction::Exp) {
    // table_[m + N + 2] = F(m) - F(m - 2), m in [-N-2, N+4]: A = table(m), B = table(m + 2).
    table_.resize(2 * N_ + 7);
    for (std::size_t k = 0; k < table_.size(); ++k) {
      const double m = static_cast<double>(k) - static_cast<double>(N_) - 2.0;
      table_[k] = F_->G(m) - F_->G(m - 2.0);
      table_max_ = std::max(table_max_, std::fabs(table_[k]));
    }
    power_error_ = power_error(static_cast<double>(K_));
  }
}

double ModelAEngine::power_error(double K) const {
  if (spec_.kind == Interaction::Exp) return 0.0;
  // Integer entries whose sums over K memories stay below 2^53 are added exactly; otherwise the
  // sums carry at most (K - 1) u sum |terms| <= K^2 u max|entry| of rounding each.
  const bool integral = spec_.n == std::floor(spec_.n);
  return integral && K * table_max_ < 9007199254740992.0 ? 0.0 : 2.0 * K * K * table_max_ * 0x1p-53;
}

std::string ModelAEngine::kernel() const { return ops_->name; }

double ModelAEngine::energy(const std::int8_t* sigma) const {
  // eq. (8): E = -sum_i I_i sigma_i - sum_mu F(xi_mu . sigma)
  detail::collectively(merger_, [&] {
    ASSOCMEM_CHECK_ARG(sigma != nullptr, "state is null");
    for (std::size_t i = 0; i < N_; ++i)
      ASSOCMEM_CHECK_ARG(sigma[i] == 1 || sigma[i] == -1, "state: element ", i, " is ", static_cast<int>(sigma[i]),
                         "; model A states must be +1 or -1");
  });
  double e = 0;  // this engine's memories' term, then summed over every participant
  for (std::size_t mu = 0; mu < K_; ++mu) {
    const std::uint8_t* row = store_->row(mu);
    long m = 0;
    for (std::size_t i = 0; i < N_; ++i) m += (((row[i / 8] >> (i % 8)) & 1) ? 1 : -1) * sigma[i];
    e -= F_->G(static_cast<double>(m));
  }
  if (merger_) merger_->sum(&e, 1);
  for (std::size_t i = 0; i < N_; ++i) e -= I_[i] * sigma[i];
  return e;
}

void ModelAEngine::refresh(Cue& c) const {
  const auto& ops = *ops_;
  const std::int32_t offset = static_cast<std::int32_t>(N_) + 2;
  if (spec_.kind != Interaction::Exp) {
    ops.lookup_pairs(c.m.data(), K_, table_.data(), offset, c.A.data(), c.B.data());
    return;
  }
  // Scale by exp(-beta S), S = max m + 2: every exponent beta (m - S) is <= 0.
  const auto& E = static_cast<const ExpLagrangian&>(*F_);
  // (over every participant's memories: a collective with a merger)
  std::int64_t top = *std::max_element(c.m.begin(), c.m.end());
  if (merger_) top = merger_->max(top);
  const std::int32_t S = static_cast<std::int32_t>(top) + 2;
  // Rebase only when exp(beta (S - S0)) leaves [e^-200, e^200]: A and B stay finite and non-zero for
  // the leading memories, and the table is not rebuilt at every flip.
  if (!c.has_table || std::fabs(E.beta() * (S - c.S)) > 200.0) {
    c.table.resize(2 * N_ + 7);
    for (std::size_t k = 0; k < c.table.size(); ++k) {
      const double m = static_cast<double>(k) - static_cast<double>(offset);
      c.table[k] = E.G(m - S) - E.G(m - 2.0 - S);
    }
    c.current_scale = std::exp(-E.beta() * S);
    c.S = S;
    c.has_table = true;
  }
  ops.lookup_pairs(c.m.data(), K_, c.table.data(), offset, c.A.data(), c.B.data());
}

void ModelAEngine::local_sums(const Cue& c, std::size_t i, double* sa, double* sb) const {
  *sa = *sb = 0.0;
  ops_->masked_sums(c.A.data(), c.B.data(), &cols_[i * col_bytes_], K_, c.sigma[i] < 0, sa, sb);
}

double ModelAEngine::certified_field(const Cue& c, std::size_t i, double sa, double sb, double K, double perr) const {
  const double s = c.sigma[i] < 0 ? -1.0 : 1.0;
  const double f = 2.0 * I_[i] * c.current_scale + s * (sa - sb);
  // The fast sums are certified: when rounding (or terms of the scaled exp table that underflowed)
  // could have flipped the sign, the caller recomputes the field exactly, grouped by overlap (issue 9:
  // with F = exp at large beta, leading memories that cancel hid the one that decides).
  const double error = spec_.kind == Interaction::Exp
                           ? 2.0 * K * 0x1p-53 * (sa + sb) + K * 1e-290 + 0x1p-52 * std::fabs(2.0 * I_[i] * c.current_scale)
                           : perr + (perr > 0 ? 0x1p-52 * std::fabs(2.0 * I_[i]) : 0.0);
  if (std::fabs(f) > error || (error == 0.0 && spec_.kind != Interaction::Exp)) return f;
  return std::nan("");
}

void ModelAEngine::overlap_counts(const Cue& c, std::size_t i, std::int64_t* hist) const {
  // c_r = sum of xi_mu,i over memories with r_mu = m_mu - xi_mu,i sigma_i = r.
  const long N = static_cast<long>(N_);
  std::fill(hist, hist + 2 * N_ + 1, 0);
  const std::uint8_t* col = &cols_[i * col_bytes_];
  for (std::size_t mu = 0; mu < K_; ++mu) {
    const int x = ((col[mu / 8] >> (mu % 8)) & 1) ? 1 : -1;
    hist[static_cast<std::size_t>(c.m[mu] - x * c.sigma[i] + N)] += x;
  }
}

double ModelAEngine::field(const Cue& c, std::size_t i) const {
  double sa, sb;
  local_sums(c, i, &sa, &sb);
  const double f = certified_field(c, i, sa, sb, static_cast<double>(K_), power_error_);
  if (!std::isnan(f)) return f;
  c.hist.resize(2 * N_ + 1);
  overlap_counts(c, i, c.hist.data());
  return grouped_binary_field(spec_, c.hist, static_cast<long>(N_), 2.0 * I_[i]);
}

void ModelAEngine::sync_fields(const Cue& c, const std::vector<std::uint8_t>& clamp, int threads, double K,
                               double perr, detail::Poller& poller, std::vector<double>& f) const {
  auto free = [&](std::size_t i) { return clamp.empty() || !clamp[i]; };
  std::vector<double> s(2 * N_, 0.0);  // (sa, sb) of every neuron
  detail::parallel_chunks(N_, threads, [&](std::size_t, std::size_t i0, std::size_t i1) {
    for (std::size_t i = i0; i < i1 && !poller.cancelled(); ++i) {
      if (i % 64 == 0) poller.poll(i, N_);
      if (free(i)) local_sums(c, i, &s[2 * i], &s[2 * i + 1]);
    }
  });
  if (merger_) merger_->sum(s.data(), s.size());  // the fields over every participant's memories
  f.assign(N_, 0.0);
  std::vector<std::size_t> unsure;  // the same on every participant: they hold the same sums
  for (std::size_t i = 0; i < N_; ++i)
    if (free(i) && std::isnan(f[i] = certified_field(c, i, s[2 * i], s[2 * i + 1], K, perr))) unsure.push_back(i);
  // The exact fallback, its counts summed over every participant, 64 neurons at a time.
  const std::size_t width = 2 * N_ + 1, group = 64;
  std::vector<std::int64_t> h;
  for (std::size_t g = 0; g < unsure.size(); g += group) {
    const std::size_t n = std::min(group, unsure.size() - g);
    h.resize(n * width);
    for (std::size_t k = 0; k < n; ++k) overlap_counts(c, unsure[g + k], &h[k * width]);
    if (merger_) merger_->sum(h.data(), h.size());
    for (std::size_t k = 0; k < n; ++k) {
      const std::size_t i = unsure[g + k];
      c.hist.assign(&h[k * width], &h[k * width] + width);
      f[i] = grouped_binary_field(spec_, c.hist, static_cast<long>(N_), 2.0 * I_[i]);
    }
  }
}

Retrieval ModelAEngine::retrieve(const std::int8_t* cues, std::size_t batch, const RetrieveOptions& options) const {
  ResolvedOptions o{};
  const std::vector<std::uint8_t>& clamp = options.clamp;
  auto clamped = [&](std::size_t i) { return !clamp.empty() && clamp[i]; };
  std::size_t cells = 0;
  detail::collectively(merger_, [&] {
    o = resolve(options, ModelKind::A);
    ASSOCMEM_CHECK_ARG(!merger_ || o.order == UpdateOrder::Synchronous,
                       "order: model A over memories spread over several participants runs the synchronous order "
                       "only (the random and fixed orders visit one neuron at a time, a collective per visit)");
    ASSOCMEM_CHECK_ARG(!merger_ || !options.monitor, "monitor: a retrieval over memories spread over several "
                       "participants cannot be cancelled by one of them; give no monitor");
    ASSOCMEM_CHECK_ARG(batch > 0, "cues: the batch is empty");
    ASSOCMEM_CHECK_ARG(clamp.empty() || clamp.size() == N_, "clamp has length ", clamp.size(), " but N = ", N_);
    ASSOCMEM_CHECK_ARG(cues != nullptr, "cues is null");
    cells = checked_mul(batch, N_, "cues: batch x N");
    for (std::size_t k = 0; k < cells; ++k)
      ASSOCMEM_CHECK_ARG(cues[k] == 1 || cues[k] == -1, "cues: row ", k / N_, " element ", k % N_, " is ",
                         static_cast<int>(cues[k]), "; model A states must be +1 or -1");
  });
  // Over every participant's memories: K for the rounding bounds; with a merger the cues run one after
  // another (their collectives in the same order everywhere) and the threads share each sweep.
  double K = static_cast<double>(K_), perr = power_error_;
  if (merger_) {
    std::int64_t k = static_cast<std::int64_t>(K_);
    merger_->sum(&k, 1);
    K = static_cast<double>(k);
    perr = power_error(K);
  }
  const int threads = detail::resolve_threads(threads_);
  const int cue_threads = merger_ ? 1 : threads, sweep_threads = merger_ ? threads : 1;
  Retrieval r;
  r.batch = batch;
  r.dim = N_;
  r.states.assign(cues, cues + cells);
  r.steps.assign(batch, 0);
  r.stop.assign(batch, StopReason::MaxSteps);
  r.last_change.assign(batch, 0.0);
  if (options.energy) r.energy.assign(batch, 0.0);
  const auto& ops = *ops_;
  detail::Poller poller(options.monitor);

  detail::parallel_chunks(batch, cue_threads, [&](std::size_t, std::size_t b0, std::size_t b1) {
    Cue c;
    c.m.resize(K_);
    c.A.resize(K_);
    c.B.resize(K_);
    std::vector<std::size_t> order(N_);
    std::vector<std::int8_t> next;
    std::vector<double> fields;
    const std::size_t words = (N_ + 63) / 64;  // padding bits are 0 in the store and in `packed`
    std::vector<std::uint64_t> packed(words);
    // Between neuron visits: the calling thread polls the monitor; every worker stops once cancelled.
    auto visit = [&](std::size_t k) {
      if (k % 64 == 0) poller.poll(k, N_);
      return !poller.cancelled();
    };
    for (std::size_t b = b0; b < b1 && !poller.cancelled(); ++b) {
      std::vector<std::int8_t> state(cues + b * N_, cues + (b + 1) * N_);
      c.sigma = state;
      c.has_table = false;
      // Overlaps from scratch by popcount: m_mu = N - 2 popcount(xi_mu XOR sigma) on packed rows.
      std::fill(packed.begin(), packed.end(), 0);
      for (std::size_t i = 0; i < N_; ++i)
        if (c.sigma[i] > 0) packed[i / 64] |= std::uint64_t{1} << (i % 64);
      for (std::size_t mu = 0; mu < K_; ++mu) {
        const std::uint8_t* row = store_->row(mu);
        long differ = 0;
        for (std::size_t w = 0; w < words; ++w) {
          std::uint64_t x;
          std::memcpy(&x, row + 8 * w, 8);
          differ += std::popcount(x ^ packed[w]);
        }
        c.m[mu] = static_cast<std::int32_t>(static_cast<long>(N_) - 2 * differ);
      }
      refresh(c);
      std::iota(order.begin(), order.end(), std::size_t{0});
      std::mt19937_64 rng(options.seed + b);
      Retrieval one;  // this cue, through the shared driver (one sweep per update, change = flips)
      detail::iterate_to_fixed_point(
          state, 1, N_, o.max_steps, o.tol, poller, one,
          [&](const std::vector<std::int8_t>&, const std::vector<std::size_t>&, std::vector<std::int8_t>& out) {
            if (o.order == UpdateOrder::Synchronous) {
              next = c.sigma;
              sync_fields(c, clamp, sweep_threads, K, perr, poller, fields);
              for (std::size_t i = 0; i < N_; ++i)
                if (!clamped(i) && fields[i] != 0.0) next[i] = fields[i] > 0 ? 1 : -1;
              bool flipped = false;
              for (std::size_t i = 0; i < N_; ++i)
                if (next[i] != c.sigma[i]) {
                  ops.add_signed(c.m.data(), &cols_[i * col_bytes_], K_, 2 * next[i]);
                  flipped = true;
                }
              c.sigma.swap(next);
              if (flipped) refresh(c);
            } else {
              if (o.order == UpdateOrder::RandomAsync) std::shuffle(order.begin(), order.end(), rng);
              for (std::size_t k = 0; k < N_ && visit(k); ++k) {
                const std::size_t i = order[k];
                if (clamped(i)) continue;
                const double f = field(c, i);
                const std::int8_t s = f > 0 ? 1 : (f < 0 ? -1 : c.sigma[i]);
                if (s != c.sigma[i]) {
                  c.sigma[i] = s;
                  ops.add_signed(c.m.data(), &cols_[i * col_bytes_], K_, 2 * s);  // m_mu += 2 xi_mu,i s
                  refresh(c);
                }
              }
            }
            out = c.sigma;
          },
          detail::flips<std::int8_t>);
      std::copy(state.begin(), state.end(), &r.states[b * N_]);
      r.steps[b] = one.steps[0];
      r.stop[b] = one.stop[0];
      r.last_change[b] = one.last_change[0];
      if (options.energy) {
        double e = 0;  // eq. (8) from the overlaps (over every participant's memories)
        for (std::size_t mu = 0; mu < K_; ++mu) e -= F_->G(static_cast<double>(c.m[mu]));
        if (merger_) merger_->sum(&e, 1);
        for (std::size_t i = 0; i < N_; ++i) e -= I_[i] * c.sigma[i];
        r.energy[b] = e;
      }
    }
  });
  poller.throw_if_cancelled();
  return r;
}

}  // namespace assocmem
