// Reproductions of published capacity results (../shared/REFERENCES.md), each a measurement with a
// stated tolerance: Krotov & Hopfield 2016 (one-step stability table, K_max trend, Appendix B),
// the classical network (McEliece et al., Amit-Gutfreund-Sompolinsky), Demircigil et al. 2017
// (exponential capacity), the N_h bound (eq. 9), and Ramsauer et al. 2020 (Lemma A4, regimes).
#include <gtest/gtest.h>

#include <cmath>

#include "assocmem/capacity.hpp"
#include "assocmem/models.hpp"
#include "test_util.hpp"

using namespace assocmem;
using assocmem::testing::randn;

namespace {

CapacitySpec power_spec(double n, std::size_t N, std::size_t K) {
  CapacitySpec s;
  s.model = ModelKind::A;
  s.F = {Interaction::Power, n, 1.0};
  s.N = N;
  s.K = K;
  return s;
}

// Krotov & Hopfield 2016, one-step stability at N = 100 (fraction of stored patterns exactly stable).
// The reference is a small re-run with its own sampling error (a few hundred patterns, ~0.02-0.03);
// ours has a standard error below 0.006. Tolerance 0.05.
TEST(Reproduce, KrotovHopfield2016OneStepStabilityTable) {
  struct Row {
    double n;
    std::size_t K;
    double ref;
  };
  for (const Row& r : {Row{2, 5, 1.00}, Row{2, 10, 0.98}, Row{2, 14, 0.77}, Row{2, 20, 0.41}, Row{3, 150, 1.00},
                       Row{3, 360, 0.90}, Row{3, 700, 0.25}}) {
    CapacitySpec s = power_spec(r.n, 100, r.K);
    s.one_step = true;
    s.trials = r.K < 100 ? 300 : 8;
    const CapacityPoint p = measure_capacity(s);
    EXPECT_NEAR(p.recalled, r.ref, 0.05) << "n=" << r.n << " K=" << r.K << " (stderr " << p.recalled_stderr << ")";
  }
}

// Classical network (n = 2), N = 500: every memory is a fixed point up to ~N/(4 ln N) = 20, most up
// to N/(2 ln N) = 40 (McEliece et al.); the per-bit error after convergence rises through the
// critical load 0.138 N, where it is ~1.5% (Amit-Gutfreund-Sompolinsky).
TEST(Reproduce, ClassicalNetwork) {
  const std::size_t N = 500;
  CapacitySpec s = power_spec(2, N, 20);
  s.trials = 20;
  EXPECT_GE(measure_capacity(s).recalled, 0.97);
  s.K = static_cast<std::size_t>(std::lround(N / (2 * std::log(double(N)))));
  s.trials = 10;
  EXPECT_GE(measure_capacity(s).recalled, 0.5);
  double previous = -1;
  for (double load : {0.1, 0.138, 0.2}) {
    s.K = static_cast<std::size_t>(std::lround(load * N));
    s.trials = 6;
    const CapacityPoint p = measure_capacity(s);
    EXPECT_GT(p.bit_error, previous) << "load " << load;
    if (load == 0.138) {
      EXPECT_GT(p.bit_error, 0.005);
      EXPECT_LT(p.bit_error, 0.04);
    }
    previous = p.bit_error;
  }
  EXPECT_GT(previous, 0.1);  // at 0.2 N retrieval has broken down
}

// Appendix B: N = 100, K = 2000, random starts run to convergence: n = 2, 3 never end on a memory,
// n = 5 always does. Rectified n = 4 "also did in a small re-run". Issue 23: with one trial of 100 starts
// the bounds were seed luck (n = 5 ends on a memory from 1999 of 2000 starts in our reruns, 199 of 200 in
// an independent one, so >= 99/100 fails for ~1 seed in 10; rectified n = 4 from 97.5-98.1%, so >= 95/100
// fails for ~1 in 40). Now 20 trials of 100 starts (2000 in all, under a second): the fraction's standard
// error is below 0.005 and each bound sits >= 5 standard errors from the rates measured over seeds 1-3.
TEST(Reproduce, KrotovHopfield2016AppendixB) {
  for (auto [F, expect_all] : {std::pair{InteractionSpec{Interaction::Power, 2, 1}, false},
                               std::pair{InteractionSpec{Interaction::Power, 3, 1}, false},
                               std::pair{InteractionSpec{Interaction::Power, 5, 1}, true},
                               std::pair{InteractionSpec{Interaction::RectifiedPower, 4, 1}, true}}) {
    CapacitySpec s = power_spec(2, 100, 2000);
    s.F = F;
    s.protocol = Protocol::RandomStarts;
    s.trials = 20;
    s.cues = 100;
    const double on = measure_capacity(s).recalled;
    if (expect_all) EXPECT_GE(on, F.kind == Interaction::Power ? 0.99 : 0.95) << to_string(F.kind) << " n=" << F.n;
    else EXPECT_LE(on, 0.05) << to_string(F.kind) << " n=" << F.n;
  }
}

double slope(const std::vector<double>& x, const std::vector<double>& y) {
  const double n = double(x.size());
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    sx += x[i];
    sy += y[i];
    sxx += x[i] * x[i];
    sxy += x[i] * y[i];
  }
  return (n * sxy - sx * sy) / (n * sxx - sx * sx);
}

// K_max ~ N^(n-1) / (2 (2n-3)!! ln N): the K at which 99% of the memories are one-step stable grows
// with N with the formula's log-log slope for n = 2, 3, 4. Issue 23: a single bisection per N (6 trials)
// lands anywhere in a wide range (at n = 4, N = 20 between 8 and 48 from seed to seed), so the old
// "slope within 0.3" passed for 3 of 5 seeds. Now: the range each K has (bisect_capacity's K_low..K_high,
// 2 standard errors over 10 trials), the slope fitted to those ranges with its standard error, and the
// tolerance 0.3 + 2 s.e. (0.3: eq. 6 is asymptotic, its ln N and constant move the slope at these N by up
// to ~0.3; measured over seeds 1-6: |slope - eq. 6| <= 0.49 with s.e. 0.04-0.28). Distinct n differ in slope
// by ~1, so a wrong power of N still fails.
TEST(Reproduce, KrotovHopfield2016KmaxTrend) {
  auto dfact = [](int k) {
    double r = 1;
    for (; k > 1; k -= 2) r *= k;
    return r;
  };
  for (int n : {2, 3, 4}) {
    const std::vector<double> Ns = n == 2 ? std::vector<double>{64, 128, 256} : (n == 3 ? std::vector<double>{32, 64, 128}
                                                                                       : std::vector<double>{30, 45, 60});
    std::vector<double> lx, lt;
    std::vector<std::pair<double, double>> ranges;
    for (double N : Ns) {
      const double theory = std::pow(N, n - 1) / (2 * dfact(2 * n - 3) * std::log(N));
      CapacitySpec s = power_spec(n, static_cast<std::size_t>(N), 1);
      s.one_step = true;
      s.trials = 10;
      const Bisection b = bisect_capacity(s, 0.99, 1, static_cast<std::size_t>(4 * theory) + 20);
      ASSERT_GT(b.K, 0u);
      ranges.emplace_back(double(std::max<std::size_t>(b.K_low, 1)), double(std::max<std::size_t>(b.K_high, 1)));
      lx.push_back(std::log(N));
      lt.push_back(std::log(theory));
    }
    const SlopeFit fit = fit_loglog_slope(Ns, ranges);
    EXPECT_NEAR(fit.slope, slope(lx, lt), 0.3 + 2 * fit.stderr_) << "n=" << n << " (s.e. " << fit.stderr_ << ")";
    EXPECT_LT(fit.stderr_, 0.4) << "n=" << n << ": the ranges are too wide for the test to mean anything";
  }
}

// fit_loglog_slope: exact on a power law (zero-width ranges), its standard error the propagated
// half-widths, and bad ranges refused.
TEST(Capacity, LogLogSlopeFit) {
  const std::vector<double> Ns = {10, 20, 40, 80};
  std::vector<std::pair<double, double>> exact, wide;
  for (double N : Ns) {
    exact.emplace_back(3 * N * N, 3 * N * N);
    wide.emplace_back(3 * N * N / std::exp(0.1), 3 * N * N * std::exp(0.1));  // half-width 0.1 in ln K
  }
  EXPECT_NEAR(fit_loglog_slope(Ns, exact).slope, 2.0, 1e-12);
  EXPECT_EQ(fit_loglog_slope(Ns, exact).stderr_, 0.0);
  const SlopeFit w = fit_loglog_slope(Ns, wide);
  EXPECT_NEAR(w.slope, 2.0, 1e-12);
  // sd = 0.1 sqrt(sum w_i^2) = 0.1 / sqrt(Sxx), with ln N equally spaced by ln 2: Sxx = 5 (ln 2)^2.
  EXPECT_NEAR(w.stderr_, 0.1 / (std::sqrt(5.0) * std::log(2.0)), 1e-12);
  EXPECT_THROW(fit_loglog_slope({10, 10}, {{1, 2}, {3, 4}}), InvalidArgument);
  EXPECT_THROW(fit_loglog_slope({10, 20}, {{0, 2}, {3, 4}}), InvalidArgument);
  EXPECT_THROW(fit_loglog_slope({10, 20}, {{5, 2}, {3, 4}}), InvalidArgument);
  EXPECT_THROW(fit_loglog_slope({10}, {{1, 2}}), InvalidArgument);
}

// Exponential and power-law growth of K(N) differ in the local log-log slope d ln K / d ln N: constant
// for K ~ N^p, and growing like a N for K ~ exp(a N). The ratio of the last local slope to the first.
double loglog_slope_ratio(const std::vector<double>& Ns, const std::vector<double>& Ks) {
  auto local = [&](std::size_t i) { return std::log(Ks[i + 1] / Ks[i]) / std::log(Ns[i + 1] / Ns[i]); };
  return local(Ns.size() - 2) / local(0);
}

// The largest K (90% of cues recalled, bisection) of model A at each N, basin protocol with rho N
// flipped bits (rho N whole, so that the effective rho is rho). Asserts the search cap was not hit.
std::vector<double> basin_capacities(InteractionSpec F, double rho, const std::vector<double>& Ns, std::size_t cap) {
  std::vector<double> Ks;
  for (double N : Ns) {
    EXPECT_EQ(rho * N, std::round(rho * N)) << "rho N must be whole";
    CapacitySpec s;
    s.model = ModelKind::A;
    s.F = F;
    s.N = static_cast<std::size_t>(N);
    s.protocol = Protocol::Basin;
    s.rho = rho;
    s.one_step = true;
    s.trials = 4;
    s.cues = 200;
    const Bisection b = bisect_capacity(s, 0.9, 1, cap, {}, false);
    EXPECT_GT(b.K, 0u) << "N=" << N;
    EXPECT_LT(b.K, cap) << "N=" << N << ": the search cap was hit, the measurement says nothing";
    Ks.push_back(double(std::max<std::size_t>(b.K, 1)));
  }
  return Ks;
}

// Demircigil et al. 2017: with F = exp the capacity grows exponentially in N, with a smaller exponent
// for larger rho. Issue 9: the old version of this test passed for F = x^4 too; this one asserts the
// exponential signature (growing log-log slope) and shows that power laws fail it.
TEST(Reproduce, DemircigilExponentialCapacity) {
  const std::vector<double> Ns = {24, 32, 40, 48};  // rho N whole for rho = 0.125 and 0.25
  // Measured here (K): exp rho 0.25: 4, 12, 30, 110; exp rho 0.125 (N = 16, 24, 32): 13, 139, 2178;
  // x^4: 15, 41, 86, 160 (ratio 0.98); rectified x^6: 101, 454, 1335, 3364 (ratio 0.97).
  const std::vector<double> hi = basin_capacities({Interaction::Exp, 2, 1.0}, 0.25, Ns, 8000);
  EXPECT_GT(loglog_slope_ratio(Ns, hi), 1.3) << "F = exp, rho = 0.25: not exponential";
  const std::vector<double> lo = basin_capacities({Interaction::Exp, 2, 1.0}, 0.125, {16, 24, 32}, 8000);
  // The exponent (d ln K / dN) falls as rho grows: compare over the common range N = 24..32.
  const double a_lo = std::log(lo[2] / lo[1]) / 8.0, a_hi = std::log(hi[1] / hi[0]) / 8.0;
  EXPECT_GT(a_lo, a_hi) << "the exponent must fall as rho grows";
  // Negative controls: power laws keep a constant log-log slope.
  for (InteractionSpec F : {InteractionSpec{Interaction::Power, 4}, InteractionSpec{Interaction::RectifiedPower, 6}}) {
    const std::vector<double> p = basin_capacities(F, 0.125, Ns, 8000);
    EXPECT_LT(loglog_slope_ratio(Ns, p), 1.2) << to_string(F.kind) << " n=" << F.n << ": looks exponential";
  }
}

// eq. (9) remark: N_mem ~ min(N_f^(n-1), N_h). With N_h hidden neurons storing N_h memories, the
// number of memories recalled, N_h * recalled(N_h), grows as N_h while N_h is small and stops growing
// (it collapses) past a crossover that scales as N_f^(n-1) (up to eq. 6's log). Issue 9: the old test
// only checked that unstored patterns are not recalled.
TEST(Reproduce, HiddenNeuronsBoundTheCapacity) {
  const double n = 3;
  std::vector<double> peak_at;
  for (std::size_t Nf : {24u, 48u}) {
    double best = 0, best_Nh = 0;
    std::vector<double> stored;
    for (double Nh = 4; Nh <= 2.0 * double(Nf * Nf); Nh *= 1.25) {
      CapacitySpec s = power_spec(n, Nf, static_cast<std::size_t>(Nh));
      s.one_step = true;
      s.trials = 4;
      const double M = measure_capacity(s).recalled * double(s.K);  // memories stably stored
      if (Nh <= 8) {
        EXPECT_GE(M, 0.9 * double(s.K)) << "N_f=" << Nf << ": few memories are all stored (M = N_h)";
      }
      if (M > best) {
        best = M;
        best_Nh = Nh;
      }
      stored.push_back(M);
    }
    EXPECT_LT(stored.back(), 0.5 * best) << "N_f=" << Nf << ": past the crossover the stored count must fall";
    peak_at.push_back(best_Nh);
  }
  // N_f doubled: the crossover moves by ~2^(n-1) = 4 (eq. 6 with its 1/ln N: 4 ln 24 / ln 48 = 3.3).
  const double ratio = peak_at[1] / peak_at[0];
  EXPECT_GT(ratio, 2.3) << peak_at[0] << " -> " << peak_at[1];
  EXPECT_LT(ratio, 5.5) << peak_at[0] << " -> " << peak_at[1];
}

// Ramsauer et al., Lemma A4: for any query xi, with i its best-matching pattern and c the margin of
// i's score over the best other score, |x_i - f(xi)| <= 2 eps M, eps = (N - 1) exp(-beta c).
TEST(Reproduce, RamsauerLemmaA4HoldsOnRandomQueries) {
  std::mt19937_64 rng(9);
  for (double beta : {0.5, 2.0, 8.0}) {
    const Matrix X = randn(30, 12, rng);
    const ModelB B(X, beta);
    const double M = X.rowwise().norm().maxCoeff();
    for (int t = 0; t < 200; ++t) {
      const Vector q = randn(12, rng, 1.5);
      const Vector s = X * q;
      Eigen::Index i;
      const double best = s.maxCoeff(&i);
      double other = -INFINITY;
      for (Eigen::Index j = 0; j < s.size(); ++j)
        if (j != i) other = std::max(other, s[j]);
      const double eps = double(X.rows() - 1) * std::exp(-beta * (best - other));
      const double err = (X.row(i).transpose() - B.update(q)).norm();
      EXPECT_LE(err, 2 * eps * M * (1 + 1e-12) + 1e-12) << "beta " << beta;
    }
  }
}

// Ramsauer et al.: as beta grows, the fixed point goes from the global average of all patterns, to a
// metastable average of one cluster, to a single pattern. Measured by the effective number of
// patterns 1 / sum_mu p_mu^2 of the softmax weights at the fixed point.
TEST(Reproduce, RamsauerRegimesOnClusteredPatterns) {
  std::mt19937_64 rng(10);
  const int clusters = 4, per = 5, d = 32;
  Matrix X(clusters * per, d);
  for (int c = 0; c < clusters; ++c) {
    Vector center = randn(d, rng);
    center.normalize();
    for (int k = 0; k < per; ++k) {
      Vector x = center + randn(d, rng, 0.15 / std::sqrt(double(d)));
      X.row(c * per + k) = x.normalized().transpose();
    }
  }
  auto effective = [&](double beta) {
    const ModelB B(X, beta);
    RetrieveOptions o;
    o.max_steps = 2000;
    o.tol = 1e-12;
    const auto r = B.retrieve(X.row(0).transpose(), o);
    const Vector p = B.weights(r.state());
    return 1.0 / p.squaredNorm();
  };
  EXPECT_GT(effective(0.01), 0.9 * clusters * per);  // global average
  const double meta = effective(8.0);
  EXPECT_GT(meta, 0.7 * per);  // one cluster
  EXPECT_LT(meta, 1.3 * per);
  EXPECT_LT(effective(2000.0), 1.1);  // a single pattern
}

// Models B and C: the number of patterns recalled from cues with 25% of the bits flipped grows
// exponentially with N_f (as model A with F = exp).
TEST(Reproduce, ModelsBAndCCapacityGrowsWithNf) {
  for (ModelKind model : {ModelKind::B, ModelKind::C}) {
    std::vector<std::size_t> Ks;
    for (std::size_t N : {16u, 24u, 32u, 40u}) {  // rho N = 4, 6, 8, 10: whole
      CapacitySpec s;
      s.model = model;
      s.beta = 1.0;
      s.F = {Interaction::Exp, 2, std::sqrt(double(N))};
      s.N = N;
      s.protocol = Protocol::Basin;
      s.rho = 0.25;
      s.max_steps = 10;
      s.step = model == ModelKind::B ? 1.0 : 0.5;
      s.trials = 3;
      s.cues = 200;
      const Bisection b = bisect_capacity(s, 0.9, 1, 20000, {}, false);
      EXPECT_LT(b.K, 20000u) << to_string(model) << " N=" << N << ": the search cap was hit";
      Ks.push_back(std::max<std::size_t>(b.K, 1));
    }
    // The claim (docs/results.md): exponential growth, as model A with F = exp; the log-log slope grows
    // (a power law keeps it constant, see DemircigilExponentialCapacity's controls).
    const std::vector<double> Ns = {16, 24, 32, 40}, K(Ks.begin(), Ks.end());
    EXPECT_GT(loglog_slope_ratio(Ns, K), 1.3) << to_string(model) << ": " << Ks[0] << ", " << Ks[1] << ", " << Ks[2] << ", " << Ks[3];
  }
}

// criterion 'all' is the event "every memory of the trial recalled": with the same seeds and every
// memory cued once, each trial's all-memories value is 1 exactly when its per-cue fraction is 1.
TEST(Capacity, AllMemoriesCriterionIsTheIntersectionOfThePerCueEvents) {
  CapacitySpec s;
  s.model = ModelKind::A;
  s.F = {Interaction::Exp, 2, 1.0};
  s.N = 20;
  s.K = 40;
  s.protocol = Protocol::Basin;
  s.rho = 0.1;
  s.one_step = true;
  s.trials = 30;
  s.cues = 40;
  const CapacityPoint per = measure_capacity(s);
  s.criterion = Criterion::AllMemories;
  const CapacityPoint all = measure_capacity(s);
  ASSERT_EQ(all.trial_recalled.size(), per.trial_recalled.size());
  int mixed = 0;
  for (std::size_t t = 0; t < all.trial_recalled.size(); ++t) {
    EXPECT_EQ(all.trial_recalled[t], per.trial_recalled[t] == 1.0 ? 1.0 : 0.0) << "trial " << t;
    mixed += per.trial_recalled[t] > 0 && per.trial_recalled[t] < 1;
  }
  EXPECT_GT(mixed, 0);  // trials with some but not all memories recalled exist here
  EXPECT_LT(all.recalled, per.recalled);
  // The same identity for models B and C (the criterion is applied after any model).
  for (ModelKind model : {ModelKind::B, ModelKind::C}) {
    CapacitySpec t = s;
    t.model = model;
    t.protocol = Protocol::Basin;
    t.F = {Interaction::Exp, 2, std::sqrt(20.0)};
    t.max_steps = 10;
    t.step = model == ModelKind::B ? 1.0 : 0.5;
    t.K = 200;
    t.cues = 200;
    t.criterion = Criterion::PerCue;
    const CapacityPoint p = measure_capacity(t);
    t.criterion = Criterion::AllMemories;
    const CapacityPoint q = measure_capacity(t);
    for (std::size_t k = 0; k < q.trial_recalled.size(); ++k)
      EXPECT_EQ(q.trial_recalled[k], p.trial_recalled[k] == 1.0 ? 1.0 : 0.0) << to_string(model) << " trial " << k;
  }
  s.protocol = Protocol::RandomStarts;
  EXPECT_THROW_MSG(measure_capacity(s), InvalidArgument, "criterion");
}

// The field names the command line and Python share: every name sets its field, bad text is refused
// naming the field.
TEST(Capacity, FieldsByName) {
  CapacitySpec s;
  const std::vector<std::pair<std::string, std::string>> set = {
      {"model", "C"}, {"F", "exp"}, {"n", "4.5"}, {"beta", "2.5"}, {"N", "1e3"}, {"K", "70"}, {"hidden", "5"},
      {"protocol", "basin"}, {"rho", "0.125"}, {"one_step", "true"}, {"order", "sync"}, {"max_steps", "7"},
      {"step", "0.25"}, {"trials", "3"}, {"cues", "9"}, {"count_negatives", "False"},
      {"seed", "18446744073709551615"}, {"threads", "2"}, {"criterion", "all"}};
  ASSERT_EQ(set.size(), capacity_fields().size());
  for (const auto& [k, v] : set) set_capacity_field(s, k, v);
  EXPECT_EQ(s.model, ModelKind::C);
  EXPECT_EQ(s.F.kind, Interaction::Exp);
  EXPECT_EQ(s.F.n, 4.5);
  EXPECT_EQ(s.beta, 2.5);
  EXPECT_EQ(s.F.beta, 2.5);
  EXPECT_EQ(s.N, 1000u);
  EXPECT_EQ(s.K, 70u);
  EXPECT_EQ(s.hidden, 5u);
  EXPECT_EQ(s.protocol, Protocol::Basin);
  EXPECT_EQ(s.rho, 0.125);
  EXPECT_TRUE(s.one_step);
  EXPECT_EQ(s.order, UpdateOrder::Synchronous);
  EXPECT_EQ(s.max_steps, 7);
  EXPECT_EQ(s.step, 0.25);
  EXPECT_EQ(s.trials, 3u);
  EXPECT_EQ(s.cues, 9u);
  EXPECT_FALSE(s.count_negatives);
  EXPECT_EQ(s.seed, 18446744073709551615ull);
  EXPECT_EQ(s.threads, 2);
  EXPECT_EQ(s.criterion, Criterion::AllMemories);
  EXPECT_THROW_MSG(set_capacity_field(s, "K", "2.7"), InvalidArgument, "K must be a whole number");
  EXPECT_THROW_MSG(set_capacity_field(s, "N", "1"), InvalidArgument, "N must be a whole number in [2");
  EXPECT_THROW_MSG(set_capacity_field(s, "rho", "a lot"), InvalidArgument, "rho must be a number");
  EXPECT_THROW_MSG(set_capacity_field(s, "one_step", "maybe"), InvalidArgument, "one_step must be true or false");
  EXPECT_THROW_MSG(set_capacity_field(s, "seed", "-1"), InvalidArgument, "seed");
  EXPECT_THROW_MSG(set_capacity_field(s, "gamma", "1"), InvalidArgument, "unknown capacity parameter 'gamma'");
}

TEST(Capacity, BadSpecsThrow) {
  CapacitySpec s;
  EXPECT_THROW_MSG(parse_model("D"), InvalidArgument, "model");
  s = {};
  s.rho = 0.7;
  EXPECT_THROW_MSG(measure_capacity(s), InvalidArgument, "rho");
  s = {};
  s.N = 1;
  EXPECT_THROW_MSG(measure_capacity(s), InvalidArgument, "N must");
  EXPECT_THROW_MSG(bisect_capacity(CapacitySpec{}, 0.5, 10, 5), InvalidArgument, "K_lo");
  EXPECT_THROW_MSG(parse_protocol("walk"), InvalidArgument, "protocol");
}

}  // namespace

// Issue 9: the error bar of `recalled` must describe how much it varies between repeated
// measurements. Cues of one trial share its memories, so the binomial error over cues is far too
// small at n = 3, K = 700 (trial-to-trial sd ~0.045); the trial-level standard error is right.
TEST(Capacity, ErrorBarsMatchTheSpreadOfRepeatedMeasurements) {
  CapacitySpec s;
  s.F = {Interaction::Power, 3};
  s.N = 100;
  s.K = 700;
  s.one_step = true;
  s.trials = 4;
  std::vector<double> means, reported;
  double binomial = 0;
  for (std::uint64_t seed = 1; seed <= 12; ++seed) {
    s.seed = seed;
    const CapacityPoint p = measure_capacity(s);
    ASSERT_EQ(p.trial_recalled.size(), 4u);
    means.push_back(p.recalled);
    reported.push_back(p.recalled_stderr);
    binomial += std::sqrt(p.recalled * (1 - p.recalled) / double(p.cues)) / 12;
  }
  double m = 0, ss = 0, se = 0;
  for (double x : means) m += x / 12;
  for (double x : means) ss += (x - m) * (x - m);
  for (double x : reported) se += x / 12;
  const double spread = std::sqrt(ss / 11);  // sd of 12 repeated measurements
  EXPECT_GT(spread, 1.5 * binomial) << "the binomial error over cues understates the spread";
  EXPECT_GT(se, 0.5 * spread) << "reported " << se << " vs observed " << spread;
  EXPECT_LT(se, 2.0 * spread) << "reported " << se << " vs observed " << spread;
  s.trials = 1;
  EXPECT_TRUE(std::isnan(measure_capacity(s).recalled_stderr));  // no error from one trial
}

TEST(Capacity, BisectionReportsTheIntervalItCannotResolve) {
  CapacitySpec s;
  s.F = {Interaction::Power, 3};
  s.N = 64;
  s.one_step = true;
  std::size_t width[2];
  for (int pass = 0; pass < 2; ++pass) {
    s.trials = pass == 0 ? 4 : 32;
    const Bisection b = bisect_capacity(s, 0.99, 10, 400);
    EXPECT_LE(b.K_low, b.K);
    EXPECT_GE(b.K_high, b.K);
    for (const CapacityPoint& p : b.points) {  // the ends are backed by measurements
      if (p.spec.K == b.K_low) {
        EXPECT_GE(p.recalled - 2 * p.recalled_stderr, 0.99);
      }
      if (p.spec.K == b.K_high + 1) {
        EXPECT_LT(p.recalled + 2 * p.recalled_stderr, 0.99);
      }
    }
    width[pass] = b.K_high - b.K_low;
  }
  EXPECT_LT(width[1], width[0]) << "more trials must narrow the interval";
}
