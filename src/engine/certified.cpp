// Certified passes (issue 14; codes.hpp): the screen of codes, the cut, the rescoring of the candidates
// and the bounds a certificate carries, for model B (eq. 16) and model C (eq. 22).
#include "internal.hpp"

namespace assocmem {

namespace detail {

namespace {
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
std::vector<Screened> certified_screen(const EngineCore& core, const float* q, std::size_t n, std::size_t top_k,
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

}  // namespace

// Certified model B pass (above): the screen, then eq. (16) over the candidates.
AttentionPartial certified_b_partial(const EngineCore& core, const float* q, std::size_t n, std::size_t top_k,
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
      out.set(i, e, k);
      if (top_k) out.top[i] = e.top[k];
      delta[i] = 0;
      pass_rounding(i, K, true);
      certs[map[k]].candidates = K;
      ++certs[map[k]].fallback_steps;
    }
  }
  store.check_intact();
  out.check_finite(rows, beta);
  return out;
}

// Certified model C pass (certified_screen, above): the drive at g = v/|v| over the candidates, with
// error[i] >= ||drive_i - exact drive_i|| (R |D| F'(max_D u)); queries with too many candidates take the
// exact pass. F is rectified power (n >= 1) or exp: F' >= 0, non-decreasing.
void certified_c_pass(const EngineCore& core, const AdditiveLagrangian* F, const InteractionSpec& spec,
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

}  // namespace detail

}  // namespace assocmem
