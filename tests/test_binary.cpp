// Model A on packed bits against the plain ModelA: the same trajectories (same fixed points, sweep
// counts and energies) for every F, update order and kernel, with and without a current.
#include <gtest/gtest.h>

#include "assocmem/binary.hpp"
#include "assocmem/models.hpp"
#include "test_util.hpp"

using namespace assocmem;
using assocmem::testing::flip_bits;
using assocmem::testing::rand_pm1;
using assocmem::testing::randn;

namespace {

// One synchronous sweep.
RetrieveOptions sync_once() {
  RetrieveOptions o;
  o.order = UpdateOrder::Synchronous;
  o.max_steps = 1;
  return o;
}

EngineOptions with_kernel(KernelChoice k, int threads = 0) {
  EngineOptions e;
  e.kernel = k;
  e.threads = threads;
  return e;
}

std::vector<KernelChoice> kernels_here() {
  std::vector<KernelChoice> ks = {KernelChoice::Generic};
  MemoryStore probe(8, DType::Bits);
  probe.append(Matrix::Ones(1, 8));
  try {
    ModelAEngine e(probe, {Interaction::Power, 2}, Vector(), with_kernel(KernelChoice::Avx512));
    ks.push_back(KernelChoice::Avx512);
  } catch (const InvalidArgument&) {
  }
  return ks;
}

TEST(ModelAEngine, FollowsThePlainModelExactly) {
  std::mt19937_64 rng(1);
  const int N = 45, K = 150, B = 12;  // N and K not multiples of 8 or 64
  const Matrix X = rand_pm1(K, N, rng);
  MemoryStore store(N, DType::Bits);
  store.append(X);
  std::vector<std::int8_t> cues(B * N);
  Matrix C(B, N);
  for (int b = 0; b < B; ++b) {
    const Vector cue = b < B / 2 ? flip_bits(X.row(b).transpose(), 12, rng) : Vector(rand_pm1(1, N, rng).row(0).transpose());
    C.row(b) = cue.transpose();
    for (int i = 0; i < N; ++i) cues[static_cast<std::size_t>(b * N + i)] = static_cast<std::int8_t>(cue[i]);
  }
  const Vector I = randn(N, rng, 3.0);
  for (KernelChoice kc : kernels_here()) {
    for (InteractionSpec F : {InteractionSpec{Interaction::Power, 2}, InteractionSpec{Interaction::Power, 3},
                              InteractionSpec{Interaction::RectifiedPower, 4}, InteractionSpec{Interaction::Exp, 2, 0.4}}) {
      for (bool with_current : {false, true}) {
        const Vector cur = with_current ? I : Vector();
        const ModelA plain(X, F, cur);
        const ModelAEngine fast(store, F, cur, with_kernel(kc, 3));
        for (UpdateOrder order : {UpdateOrder::RandomAsync, UpdateOrder::FixedAsync, UpdateOrder::Synchronous}) {
          RetrieveOptions o;
          o.order = order;
          o.seed = 17;
          o.max_steps = 50;
          o.energy = true;
          const Retrieval r = fast.retrieve(cues.data(), B, o);
          for (int b = 0; b < B; ++b) {
            RetrieveOptions po;
            po.order = order;
            po.seed = 17 + static_cast<std::uint64_t>(b);
            po.max_steps = 50;
            po.energy = true;
            const Retrieval p = plain.retrieve(C.row(b).transpose(), po);
            Vector got(N);
            for (int i = 0; i < N; ++i) got[i] = r.states[static_cast<std::size_t>(b * N + i)];
            ASSERT_TRUE(got == p.state()) << fast.kernel() << " " << to_string(F.kind) << " order " << int(order)
                                        << " current " << with_current << " cue " << b;
            EXPECT_EQ(r.steps[static_cast<std::size_t>(b)], p.steps[0]);
            EXPECT_EQ(r.stop[static_cast<std::size_t>(b)], p.stop[0]);
            EXPECT_NEAR(r.energy[static_cast<std::size_t>(b)], p.energy[0], 1e-9 * (1 + std::fabs(p.energy[0])));
          }
        }
      }
    }
  }
}

// Clamped neurons never change, in both implementations, and the trajectories still agree.
TEST(ModelAEngine, ClampedNeuronsStayAndAgreeWithThePlainModel) {
  std::mt19937_64 rng(4);
  const int N = 128, K = 100, B = 6;
  const Matrix X = rand_pm1(K, N, rng);
  MemoryStore store(N, DType::Bits);
  store.append(X);
  std::vector<std::uint8_t> clamp(N, 0);
  for (int i = 0; i < N / 2; ++i) clamp[static_cast<std::size_t>(i)] = 1;  // the first half is visible
  std::vector<std::int8_t> cues(B * N);
  for (int b = 0; b < B; ++b)
    for (int i = 0; i < N; ++i) cues[static_cast<std::size_t>(b * N + i)] = i < N / 2 ? static_cast<std::int8_t>(X(b, i)) : -1;
  for (InteractionSpec F : {InteractionSpec{Interaction::Power, 2}, InteractionSpec{Interaction::Exp, 2, 1.0}}) {
    const ModelAEngine fast(store, F);
    const ModelA plain(X, F);
    RetrieveOptions o;
    o.clamp = clamp;
    o.seed = 3;
    const auto r = fast.retrieve(cues.data(), B, o);
    for (int b = 0; b < B; ++b) {
      RetrieveOptions po;
      po.clamp = clamp;
      po.seed = 3 + static_cast<std::uint64_t>(b);
      Vector cue(N);
      for (int i = 0; i < N; ++i) cue[i] = cues[static_cast<std::size_t>(b * N + i)];
      const auto p = plain.retrieve(cue, po);
      for (int i = 0; i < N; ++i) {
        const double got = r.states[static_cast<std::size_t>(b * N + i)];
        ASSERT_EQ(got, p.state()[i]);
        if (i < N / 2) {
          ASSERT_EQ(got, X(b, i));  // clamped
        }
      }
    }
    if (F.kind == Interaction::Exp) {  // exp recalls every pattern from its visible half here
      for (int b = 0; b < B; ++b)
        for (int i = 0; i < N; ++i) EXPECT_EQ(r.states[static_cast<std::size_t>(b * N + i)], X(b, i));
    }
  }
  RetrieveOptions bad;
  bad.clamp.assign(3, 1);
  EXPECT_THROW_MSG(ModelAEngine(store, {Interaction::Power, 2}).retrieve(cues.data(), 1, bad), InvalidArgument, "clamp");
}

// F = exp far beyond double range (beta N = 2000): still exact decisions, finite fields.
TEST(ModelAEngine, ExpBeyondOverflow) {
  std::mt19937_64 rng(2);
  const int N = 2000, K = 6;
  const Matrix X = rand_pm1(K, N, rng);
  MemoryStore store(N, DType::Bits);
  store.append(X);
  std::vector<std::int8_t> cue(N);
  const Vector noisy = flip_bits(X.row(3).transpose(), 400, rng);
  for (int i = 0; i < N; ++i) cue[static_cast<std::size_t>(i)] = static_cast<std::int8_t>(noisy[i]);
  const ModelAEngine fast(store, {Interaction::Exp, 2, 1.0});
  RetrieveOptions o;
  o.order = UpdateOrder::Synchronous;
  const auto r = fast.retrieve(cue.data(), 1, o);
  EXPECT_TRUE(r.converged(0));
  for (int i = 0; i < N; ++i) ASSERT_EQ(r.states[static_cast<std::size_t>(i)], X(3, i));
}

// Issue 23: with F = exp the field can be below the double range and still decide: one memory xi of
// N = 64 neurons, beta = 12, state -xi: each neuron's exact field is xi_i e^(-756) (e^12 - e^-12) / 12,
// about +-6.4e-325, which underflowed to 0 (a tie: the state stayed at -xi). Its sign is kept
// (the smallest subnormal stands for the magnitude), in the plain model and the engine, for any order.
TEST(ModelAEngine, AFieldBelowTheDoubleRangeKeepsItsSign) {
  std::mt19937_64 rng(12);
  const int N = 64;
  const Matrix X = rand_pm1(1, N, rng);
  const ModelA plain(X, {Interaction::Exp, 2, 12.0});
  const Vector minus = -X.row(0).transpose();
  for (Eigen::Index i = 0; i < N; ++i) {
    const double f = plain.field(minus, i);
    ASSERT_NE(f, 0.0) << "neuron " << i;
    ASSERT_EQ(f > 0, X(0, i) > 0) << "neuron " << i;
  }
  MemoryStore store(N, DType::Bits);
  store.append(X);
  const ModelAEngine fast(store, {Interaction::Exp, 2, 12.0});
  std::vector<std::int8_t> cue(N);
  for (int i = 0; i < N; ++i) cue[static_cast<std::size_t>(i)] = static_cast<std::int8_t>(minus[i]);
  for (UpdateOrder order : {UpdateOrder::Synchronous, UpdateOrder::FixedAsync, UpdateOrder::RandomAsync}) {
    RetrieveOptions o;
    o.order = order;
    const auto r = fast.retrieve(cue.data(), 1, o);
    const auto p = plain.retrieve(minus, o);
    for (int i = 0; i < N; ++i) {
      ASSERT_EQ(r.states[static_cast<std::size_t>(i)], X(0, i)) << "engine, neuron " << i;
      ASSERT_EQ(p.states[static_cast<std::size_t>(i)], X(0, i)) << "plain, neuron " << i;
    }
  }
}

// Issue 9: with F = exp at large beta, two memories whose terms cancel exactly (same overlap,
// opposite xi_mu,0) hid the third, which decides: the exact field of neuron 0 is +1.07e12 at beta = 10.
TEST(ModelAEngine, CancellingMemoriesDoNotHideTheDecidingOne) {
  Matrix X(3, 7);
  X << 1, 1, 1, 1, 1, 1, 1,  //
      -1, 1, 1, 1, 1, 1, 1,  //
      1, 1, 1, 1, -1, -1, 1;
  Vector s(7);
  s << -1, 1, 1, 1, 1, 1, 1;
  MemoryStore store(7, DType::Bits);
  store.append(X);
  const std::int8_t cue[7] = {-1, 1, 1, 1, 1, 1, 1};
  for (double beta : {1.0, 10.0, 50.0, 200.0}) {
    const ModelA plain(X, {Interaction::Exp, 2, beta});
    EXPECT_GT(plain.field(s, 0), 0.0) << "beta " << beta;
    if (beta == 10.0) {
      EXPECT_NEAR(plain.field(s, 0) / 1.0686e12, 1.0, 1e-3);
    }
    const Retrieval p = plain.retrieve(s, sync_once());
    EXPECT_EQ(p.state()[0], 1.0) << "beta " << beta;
    for (KernelChoice k : kernels_here()) {
      const ModelAEngine fast(store, {Interaction::Exp, 2, beta}, Vector(), with_kernel(k));
      RetrieveOptions o;
      o.order = UpdateOrder::Synchronous;
      o.max_steps = 1;
      const auto r = fast.retrieve(cue, 1, o);
      for (int i = 0; i < 7; ++i) EXPECT_EQ(r.states[static_cast<std::size_t>(i)], p.state()[i]) << "beta " << beta;
    }
  }
}

// Memories in pairs that differ only at one neuron make exact ties in every field; at large beta
// the engine's fast sums cancel to rounding noise and must fall back to the exact grouped field.
TEST(ModelAEngine, TiesAtLargeBetaAgreeWithThePlainModel) {
  std::mt19937_64 rng(9);
  const int N = 40, pairs = 30;
  for (double beta : {10.0, 50.0, 200.0}) {
    Matrix X(2 * pairs + 3, N);
    for (int p = 0; p < pairs; ++p) {
      const Matrix row = rand_pm1(1, N, rng);
      X.row(2 * p) = row;
      X.row(2 * p + 1) = row;
      X(2 * p + 1, static_cast<Eigen::Index>(rng() % N)) *= -1;
    }
    X.bottomRows(3) = rand_pm1(3, N, rng);
    MemoryStore store(N, DType::Bits);
    store.append(X);
    const ModelA plain(X, {Interaction::Exp, 2, beta});
    for (int trial = 0; trial < 5; ++trial) {
      const Vector s0 = X.row(static_cast<Eigen::Index>(2 * (rng() % pairs))).transpose();
      const Vector s = flip_bits(s0, 1 + static_cast<int>(rng() % 4), rng);
      std::vector<std::int8_t> cue(N);
      for (int i = 0; i < N; ++i) cue[static_cast<std::size_t>(i)] = static_cast<std::int8_t>(s[i]);
      const Retrieval p = plain.retrieve(s, sync_once());
      for (KernelChoice k : kernels_here()) {
        const ModelAEngine fast(store, {Interaction::Exp, 2, beta}, Vector(), with_kernel(k));
        RetrieveOptions o;
        o.order = UpdateOrder::Synchronous;
        o.max_steps = 1;
        const auto r = fast.retrieve(cue.data(), 1, o);
        for (int i = 0; i < N; ++i)
          ASSERT_EQ(r.states[static_cast<std::size_t>(i)], p.state()[i]) << "beta " << beta << " neuron " << i;
      }
    }
  }
}

// Integer powers whose sums pass 2^53 (N^n K > 9e15): exact 128-bit sums in the plain model, and the
// engine's certified double sums agree with them.
TEST(ModelAEngine, LargeIntegerPowersAgreeWithTheExactSums) {
  std::mt19937_64 rng(10);
  const int N = 64, K = 200;
  const Matrix X = rand_pm1(K, N, rng);
  MemoryStore store(N, DType::Bits);
  store.append(X);
  const ModelA plain(X, {Interaction::Power, 11});
  const ModelAEngine fast(store, {Interaction::Power, 11});
  for (int trial = 0; trial < 5; ++trial) {
    const Vector s = flip_bits(X.row(trial).transpose(), 20, rng);
    std::vector<std::int8_t> cue(N);
    for (int i = 0; i < N; ++i) cue[static_cast<std::size_t>(i)] = static_cast<std::int8_t>(s[i]);
    const Retrieval p = plain.retrieve(s, sync_once());
    RetrieveOptions o;
    o.order = UpdateOrder::Synchronous;
    o.max_steps = 1;
    const auto r = fast.retrieve(cue.data(), 1, o);
    for (int i = 0; i < N; ++i) ASSERT_EQ(r.states[static_cast<std::size_t>(i)], p.state()[i]) << "neuron " << i;
  }
}

TEST(ModelAEngine, BadInput) {
  std::mt19937_64 rng(3);
  MemoryStore f32(8, DType::Float32);
  f32.append(randn(2, 8, rng));
  EXPECT_THROW_MSG(ModelAEngine(f32, {Interaction::Power, 3}), InvalidArgument, "bits");
  MemoryStore bits(8, DType::Bits);
  EXPECT_THROW_MSG(ModelAEngine(bits, {Interaction::Power, 3}), InvalidArgument, "empty");
  bits.append(rand_pm1(4, 8, rng));
  EXPECT_THROW_MSG(ModelAEngine(bits, {Interaction::Power, 3}, Vector::Ones(3)), InvalidArgument, "current I");
  const ModelAEngine e(bits, {Interaction::Power, 3});
  std::vector<std::int8_t> cue(8, 1);
  cue[5] = 0;
  EXPECT_THROW_MSG(e.retrieve(cue.data(), 1), InvalidArgument, "row 0 element 5");
  cue[5] = 1;
  RetrieveOptions o;
  o.max_steps = 0;
  EXPECT_THROW_MSG(e.retrieve(cue.data(), 1, o), InvalidArgument, "max_steps");
}

}  // namespace
