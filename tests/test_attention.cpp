// Differentiable attention (attention.hpp): the forward equals the plain model B's update (values =
// keys) and the engine with a value store; the backward equals central finite differences of the
// forward (double), for queries, keys, values and beta, with a mask; masks equal deleting memories.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <set>
#include <thread>
#include <limits>
#include <vector>

#include "assocmem/attention.hpp"
#include "assocmem/engine.hpp"
#include "assocmem/models.hpp"
#include "assocmem/store.hpp"
#include "assocmem/threads.hpp"
#include "error_bounds.hpp"
#include "kernels/kernels.hpp"
#include "parallel.hpp"
#include "test_util.hpp"

using namespace assocmem;
using assocmem::testing::kUnitRoundoffF32;
using assocmem::testing::PassShape;
using assocmem::testing::randn;
using assocmem::testing::to_f32;

namespace {

std::vector<double> flat(const Matrix& m) { return std::vector<double>(m.data(), m.data() + m.size()); }

// Central difference of loss() in the variable x (changed and restored in place).
template <class Loss>
double central(Loss&& loss, double& x, double h = 1e-6) {
  const double x0 = x;
  x = x0 + h;
  const double up = loss();
  x = x0 - h;
  const double down = loss();
  x = x0;
  return (up - down) / (2 * h);
}

TEST(Attention, ForwardIsTheModelBUpdateAndTheEngine) {
  std::mt19937_64 rng(1);
  const Matrix X = randn(700, 12, rng, 0.3), V = randn(700, 5, rng), Q = randn(9, 12, rng);
  const double beta = 3.0;
  AttentionArgs<double> a;
  const auto q = flat(Q), x = flat(X), v = flat(V);
  a.q = q.data(), a.n = 9, a.d = 12, a.k = x.data(), a.K = 700, a.v = x.data(), a.dv = 12, a.beta = beta;
  std::vector<double> out(9 * 12), lse(9);
  attention_forward(a, out.data(), lse.data());
  const ModelB plain(X, beta);
  for (int b = 0; b < 9; ++b) {
    const Vector u = plain.update(Q.row(b).transpose());
    for (int j = 0; j < 12; ++j) EXPECT_NEAR(out[std::size_t(b * 12 + j)], u[j], 1e-12);
    EXPECT_NEAR(0.5 * Q.row(b).squaredNorm() - lse[std::size_t(b)] / beta, plain.energy(Q.row(b).transpose()), 1e-10);
  }
  // With values, against the engine (float32).
  MemoryStore keys(12, DType::Float32), values(5, DType::Float32);
  keys.append(X);
  values.append(V);
  const auto qf = to_f32(Q), xf = to_f32(X), vf = to_f32(V);
  AttentionArgs<float> af;
  af.q = qf.data(), af.n = 9, af.d = 12, af.k = xf.data(), af.K = 700, af.v = vf.data(), af.dv = 5, af.beta = beta;
  std::vector<float> of(9 * 5);
  attention_forward(af, of.data(), lse.data());
  const Retrieval r = ModelBEngine(keys, values, beta).retrieve(qf.data(), 9);
  // Two float32 passes (other tilings and kernels) over the float32 data: each within the forward error
  // bound of the exact attention (error_bounds.hpp), so within twice it of each other.
  const Matrix Xf = X.cast<float>().cast<double>(), Vf = V.cast<float>().cast<double>();
  for (std::size_t b = 0; b < 9; ++b) {
    const Vector qb = Eigen::Map<const Eigen::VectorXf>(&qf[b * 12], 12).cast<double>();
    const auto sb = assocmem::testing::model_b_step_bound(Xf, qb, 0.0, beta, PassShape{700, 12, 256, 0.0}, 1.0, &Vf);
    for (std::size_t j = 0; j < 5; ++j)
      EXPECT_NEAR(of[b * 5 + j], r.states[b * 5 + j], 2 * sb.err[Eigen::Index(j)]) << "query " << b << " component " << j;
  }
}

TEST(Attention, BackwardIsTheDerivativeOfTheForward) {
  std::mt19937_64 rng(2);
  const std::size_t n = 3, K = 530, d = 4, dv = 3;  // 530: three tiles, the last partial
  auto q = flat(randn(n, d, rng)), k = flat(randn(K, d, rng, 0.5)), v = flat(randn(K, dv, rng));
  const auto w = flat(randn(n, dv, rng));  // loss = sum(w o out)
  std::vector<std::uint8_t> mask(n * K, 0);
  for (std::size_t mu = 0; mu < K; mu += 3) mask[mu] = 1;  // query 0 without every third memory
  for (std::size_t b = 0; b < n; ++b) mask[b * K + 5] = 1;  // memory 5 absent for every query
  double beta = 1.7;
  for (double p : {0.0, 0.3}) {  // without and with dropout (one fixed draw: a function of the inputs)
  SCOPED_TRACE(::testing::Message() << "dropout " << p);
  auto loss = [&]() {
    AttentionArgs<double> a;
    a.q = q.data(), a.n = n, a.d = d, a.k = k.data(), a.K = K, a.v = v.data(), a.dv = dv, a.beta = beta;
    a.mask = {mask.data(), n}, a.dropout = p, a.dropout_seed = 42;
    std::vector<double> out(n * dv), lse(n);
    attention_forward(a, out.data(), lse.data());
    double s = 0;
    for (std::size_t i = 0; i < out.size(); ++i) s += w[i] * out[i];
    return s;
  };
  AttentionArgs<double> a;
  a.q = q.data(), a.n = n, a.d = d, a.k = k.data(), a.K = K, a.v = v.data(), a.dv = dv, a.beta = beta, a.threads = 2;
  a.mask = {mask.data(), n}, a.dropout = p, a.dropout_seed = 42;
  std::vector<double> out(n * dv), lse(n), dq(n * d), dk(K * d), dvv(K * dv);
  double dbeta = 0;
  attention_forward(a, out.data(), lse.data());
  attention_backward(a, out.data(), lse.data(), w.data(), dq.data(), dk.data(), dvv.data(), &dbeta);
  for (std::size_t i = 0; i < q.size(); ++i) EXPECT_NEAR(dq[i], central(loss, q[i]), 1e-7) << "dq " << i;
  for (std::size_t i : {0u, 1u, 7u, 100u, 2100u}) EXPECT_NEAR(dk[i], central(loss, k[i]), 1e-7) << "dk " << i;
  for (std::size_t i : {0u, 3u, 50u, 1589u}) EXPECT_NEAR(dvv[i], central(loss, v[i]), 1e-7) << "dv " << i;
  EXPECT_NEAR(dbeta, central(loss, beta), 1e-7);
  for (std::size_t j = 0; j < dv; ++j) EXPECT_EQ(dvv[5 * dv + j], 0.0);  // an absent memory gets no gradient
  for (std::size_t j = 0; j < d; ++j) EXPECT_EQ(dk[5 * d + j], 0.0);
  }
}

// An additive bias of the scores (hopfield-layers' float association mask): softmax(beta q k^T + bias) v
// against the formula written out here; a bias of 0 and -inf is the bool mask (bitwise); every gradient,
// the bias's own included (one row per query, and one shared row: summed over the queries), against
// central differences; a row left without memories, +inf and NaN refused.
TEST(Attention, BiasIsAddedToTheScaledScores) {
  std::mt19937_64 rng(14);
  const std::size_t n = 3, K = 300, d = 4, dv = 2;
  auto q = flat(randn(n, d, rng)), k = flat(randn(K, d, rng, 0.5)), v = flat(randn(K, dv, rng));
  const auto w = flat(randn(n, dv, rng));
  const double inf = std::numeric_limits<double>::infinity();
  for (std::size_t rows : {std::size_t(3), std::size_t(1)}) {
    SCOPED_TRACE(::testing::Message() << rows << " bias rows");
    auto bias = flat(randn(Eigen::Index(rows), K, rng, 2.0));
    for (std::size_t i = 0; i < bias.size(); i += 11) bias[i] = -inf;
    double beta = 1.3;
    AttentionArgs<double> a;
    a.q = q.data(), a.n = n, a.d = d, a.k = k.data(), a.K = K, a.v = v.data(), a.dv = dv, a.threads = 2;
    a.bias = bias.data(), a.bias_rows = rows;
    auto run = [&](std::vector<double>& out, std::vector<double>& lse) {
      a.beta = beta;
      out.assign(n * dv, 0.0);
      lse.assign(n, 0.0);
      attention_forward(a, out.data(), lse.data());
    };
    std::vector<double> out, lse;
    run(out, lse);
    for (std::size_t b = 0; b < n; ++b) {  // the formula, written out
      std::vector<double> z(K);
      double m = -inf, sum = 0;
      for (std::size_t mu = 0; mu < K; ++mu) {
        double s = 0;
        for (std::size_t j = 0; j < d; ++j) s += q[b * d + j] * k[mu * d + j];
        z[mu] = beta * s + bias[(rows == 1 ? 0 : b) * K + mu];
        m = std::max(m, z[mu]);
      }
      std::vector<double> o(dv, 0.0);
      for (std::size_t mu = 0; mu < K; ++mu) {
        const double e = std::exp(z[mu] - m);
        sum += e;
        for (std::size_t j = 0; j < dv; ++j) o[j] += e * v[mu * dv + j];
      }
      for (std::size_t j = 0; j < dv; ++j) EXPECT_NEAR(out[b * dv + j], o[j] / sum, 1e-12);
      EXPECT_NEAR(lse[b], m + std::log(sum), 1e-12);
    }
    auto loss = [&]() {
      std::vector<double> o, l;
      run(o, l);
      double t = 0;
      for (std::size_t i = 0; i < o.size(); ++i) t += w[i] * o[i];
      return t;
    };
    std::vector<double> dq(n * d), dk(K * d), dvv(K * dv), dbias(rows * K);
    double dbeta = 0;
    run(out, lse);
    attention_backward(a, out.data(), lse.data(), w.data(), dq.data(), dk.data(), dvv.data(), &dbeta, dbias.data());
    for (std::size_t i = 0; i < q.size(); ++i) EXPECT_NEAR(dq[i], central(loss, q[i]), 1e-7) << "dq " << i;
    for (std::size_t i : {1u, 9u, 600u}) EXPECT_NEAR(dk[i], central(loss, k[i]), 1e-7) << "dk " << i;
    for (std::size_t i : {0u, 3u, 401u}) EXPECT_NEAR(dvv[i], central(loss, v[i]), 1e-7) << "dv " << i;
    EXPECT_NEAR(dbeta, central(loss, beta), 1e-7);
    for (std::size_t i : {1u, 2u, 50u, 299u}) EXPECT_NEAR(dbias[i], central(loss, bias[i]), 1e-7) << "dbias " << i;
    EXPECT_EQ(dbias[0], 0.0);  // at -inf: no weight, no gradient
  }
  // 0 / -inf is the bool mask.
  std::vector<double> zero_inf(n * K, 0.0);
  std::vector<std::uint8_t> mask(n * K, 0);
  for (std::size_t i = 0; i < n * K; i += 4) zero_inf[i] = -inf, mask[i] = 1;
  AttentionArgs<double> a;
  a.q = q.data(), a.n = n, a.d = d, a.k = k.data(), a.K = K, a.v = v.data(), a.dv = dv, a.beta = 2.0;
  std::vector<double> o1(n * dv), o2(n * dv), l1(n), l2(n);
  a.bias = zero_inf.data(), a.bias_rows = n;
  attention_forward(a, o1.data(), l1.data());
  a.bias = nullptr, a.bias_rows = 0, a.mask = {mask.data(), n};
  attention_forward(a, o2.data(), l2.data());
  EXPECT_EQ(o1, o2);
  EXPECT_EQ(l1, l2);
  // Refusals.
  std::vector<double> row(n * K, 0.0);
  std::fill(row.begin() + K, row.begin() + 2 * K, -inf);
  a.mask = {}, a.bias = row.data(), a.bias_rows = n;
  EXPECT_THROW_MSG(attention_forward(a, o1.data(), l1.data()), InvalidArgument, "row 1 leaves out every memory");
  row[K + 5] = 0.0;
  row[7] = inf;
  EXPECT_THROW_MSG(attention_forward(a, o1.data(), l1.data()), InvalidArgument, "bias: entry 7 is inf");
  row[7] = std::nan("");
  EXPECT_THROW_MSG(attention_forward(a, o1.data(), l1.data()), InvalidArgument, "finite or -inf");
}

// Dropout on the association weights: with the values the identity (out = the weights themselves), each
// weight is the undropped one times 0 or 1 / (1 - p); the zeros are a fraction p of the weights (within
// 5 binomial standard deviations); the draw is a function of (seed, query, memory): the same for any thread
// count and for float and double, another for another seed or batch element; p = 0 is no dropout.
TEST(Attention, DropoutKeepsOrZeroesEachWeight) {
  std::mt19937_64 rng(13);
  const std::size_t n = 6, K = 700, d = 5;
  const auto q = flat(randn(n, d, rng)), k = flat(randn(K, d, rng, 0.3));
  std::vector<double> eye(K * K, 0.0);
  for (std::size_t i = 0; i < K; ++i) eye[i * K + i] = 1.0;
  AttentionArgs<double> a;
  a.q = q.data(), a.n = n, a.d = d, a.k = k.data(), a.K = K, a.v = eye.data(), a.dv = K, a.beta = 2.0;
  std::vector<double> P(n * K), out(n * K), lse(n), lse0(n);
  const double p = 0.25;
  std::size_t zeros = 0;
  for (int threads : {1, 3}) {
    a.threads = threads;
    a.dropout = 0.0;
    attention_forward(a, P.data(), lse0.data());
    a.dropout = p, a.dropout_seed = 7;
    attention_forward(a, out.data(), lse.data());
    EXPECT_EQ(lse, lse0);  // the normaliser is the undropped one
    zeros = 0;
    for (std::size_t i = 0; i < out.size(); ++i) {
      if (out[i] == 0.0) {
        ++zeros;
      } else {
        // The same weight through other roundings: the factor 1/(1-p) and its product (2u), the rescalings
        // when the running maximum rises (<= 3 tiles, on either side: 6u), the divisions (3u): < 16u.
        ASSERT_NEAR(out[i], P[i] / (1 - p), 16 * 0x1p-53 * out[i]) << i;
      }
    }
    const double sd = std::sqrt(p * (1 - p) / double(out.size()));
    EXPECT_NEAR(double(zeros) / double(out.size()), p, 5 * sd) << "threads " << threads;
  }
  std::vector<double> again(n * K);
  attention_forward(a, again.data(), lse.data());
  EXPECT_EQ(again, out);
  a.dropout_seed = 8;
  attention_forward(a, again.data(), lse.data());
  std::size_t same_zeros = 0;
  for (std::size_t i = 0; i < out.size(); ++i) same_zeros += (again[i] == 0.0) && (out[i] == 0.0);
  EXPECT_LT(double(same_zeros), 0.5 * double(zeros));  // independent draws overlap in about p of them
  // float: the same draw (zeros at the same places).
  const auto qf = to_f32(Eigen::Map<const Matrix>(q.data(), long(n), long(d))),
             kf = to_f32(Eigen::Map<const Matrix>(k.data(), long(K), long(d)));
  std::vector<float> eyef(eye.begin(), eye.end()), outf(n * K);
  AttentionArgs<float> af;
  af.q = qf.data(), af.n = n, af.d = d, af.k = kf.data(), af.K = K, af.v = eyef.data(), af.dv = K, af.beta = 2.0;
  af.dropout = p, af.dropout_seed = 7;
  attention_forward(af, outf.data(), lse.data());
  for (std::size_t i = 0; i < out.size(); ++i) ASSERT_EQ(outf[i] == 0.0f, out[i] == 0.0) << i;
  // Batch elements draw their own masks from one seed; p = 0 and p >= 1 are no dropout and an error.
  AttentionBatch bt;
  std::vector<double> q2(q), k2(k);
  q2.insert(q2.end(), q.begin(), q.end());
  k2.insert(k2.end(), k.begin(), k.end());
  std::vector<double> eye2(eye);
  eye2.insert(eye2.end(), eye.begin(), eye.end());
  AttentionArgs<double> b = a;
  b.q = q2.data(), b.k = k2.data(), b.v = eye2.data(), b.threads = 2;
  bt.elements = 2, bt.q_stride = n * d, bt.k_stride = K * d, bt.v_stride = K * K;
  std::vector<double> out2(2 * n * K), lse2(2 * n);
  attention_forward_batch(b, bt, out2.data(), lse2.data());
  EXPECT_FALSE(std::equal(out2.begin(), out2.begin() + long(n * K), out2.begin() + long(n * K)));
  a.dropout = 0.0;
  attention_forward(a, out.data(), lse.data());
  EXPECT_EQ(out, P);
  a.dropout = 1.0;
  EXPECT_THROW_MSG(attention_forward(a, out.data(), lse.data()), InvalidArgument, "dropout must be in [0, 1)");
}

// The float path (the engine's dispatched kernels) against the double path (Eigen) on awkward shapes:
// four tiles with a partial last one, 37 queries (not a multiple of the kernels' 8 rows), d = 70 and
// dv = 33 (not multiples of 32), per-query masks, three workers; separate values and values = keys; the
// portable kernels and the best this CPU has.
// Fewer queries than dimensions and more (the backward pass's two layouts of the memories' gradients), with
// a mask (the general epilogue) and without (the fused softmax_backward kernel; with the values being the
// keys, their gradients summed in one product).
TEST(Attention, FloatKernelsEqualTheDoublePath) {
  std::mt19937_64 rng(11);
  const std::size_t K = 1000, dv = 33;
  // (n = 1: the one-query products, dots_f32 and axpy_f32 on the rows instead of packed tiles.)
  for (const auto& shape_nd : {std::pair<std::size_t, std::size_t>{37, 70}, {45, 20}, {1, 70}})
  for (bool masked : {true, false}) {
  const std::size_t n = shape_nd.first, d = shape_nd.second;
  // float32 data (both paths see the same numbers, so the comparison measures the computation only).
  const auto f32 = [](const Matrix& m) { return Matrix(m.cast<float>().cast<double>()); };
  const Matrix Q = f32(randn(n, d, rng)), X = f32(randn(K, d, rng, 0.15)), V = f32(randn(K, dv, rng)),
               W = f32(randn(n, std::max(d, dv), rng));  // the output gradient: dv or d columns
  std::vector<std::uint8_t> mask(n * K, 0);
  for (std::size_t i = 0; i < mask.size(); i += 7) mask[i] = masked;
  const PassShape shape{K, d, 128, 0.0};  // tiles of at most 128 memories (attention.cpp's kTile)
  for (bool auto_assoc : {false, true}) {
    const std::size_t e = auto_assoc ? d : dv;
    const Matrix We = W.leftCols(Eigen::Index(e));
    // The float32 forward error bounds (tests/error_bounds.hpp), from the exact (double) computation; the
    // double path's own error is the same bound at u = 2^-53, below 1e-8 of it: neglected.
    const auto bound = assocmem::testing::attention_bound(Q, X, auto_assoc ? X : V, We, 2.5, mask, shape);
    const Matrix dk_err = auto_assoc ? bound.dkv_err : bound.dk_err;
    const Matrix dk_exact = auto_assoc ? Matrix(bound.dk + bound.dv) : bound.dk;
  for (bool portable : {false, true}) {
    SCOPED_TRACE(::testing::Message() << "n " << n << ", d " << d << ", masked " << masked << ", portable " << portable
                                      << ", values = keys " << auto_assoc);
    const auto q = flat(Q), x = flat(X), v = auto_assoc ? x : flat(V), w = flat(We);
    const auto qf = to_f32(Q), xf = to_f32(X), wf = to_f32(We);
    const auto vf = auto_assoc ? xf : to_f32(V);
    AttentionArgs<double> a;
    a.q = q.data(), a.n = n, a.d = d, a.k = x.data(), a.K = K, a.v = auto_assoc ? x.data() : v.data(), a.dv = e;
    a.beta = 2.5, a.threads = 3, a.mask = {masked ? mask.data() : nullptr, masked ? n : 0};
    AttentionArgs<float> af;
    af.q = qf.data(), af.n = n, af.d = d, af.k = xf.data(), af.K = K, af.v = auto_assoc ? xf.data() : vf.data();
    af.dv = e, af.beta = 2.5, af.threads = 3, af.mask = a.mask, af.portable_kernels = portable;
    std::vector<double> out(n * e), lse(n), dq(n * d), dk(K * d), dvv(K * e), lsef(n);
    std::vector<float> outf(n * e), dqf(n * d), dkf(K * d), dvf(K * e);
    double db = 0, dbf = 0;
    attention_forward(a, out.data(), lse.data());
    attention_forward(af, outf.data(), lsef.data());
    attention_backward(a, out.data(), lse.data(), w.data(), dq.data(), dk.data(), auto_assoc ? dk.data() : dvv.data(), &db);
    attention_backward(af, outf.data(), lsef.data(), wf.data(), dqf.data(), dkf.data(),
                       auto_assoc ? dkf.data() : dvf.data(), &dbf);
    const auto I = [](std::size_t x) { return Eigen::Index(x); };
    for (std::size_t i = 0; i < out.size(); ++i)
      ASSERT_NEAR(outf[i], out[i], bound.out_err(I(i / e), I(i % e))) << "out " << i;
    for (std::size_t b = 0; b < n; ++b) ASSERT_NEAR(lsef[b], lse[b], bound.lse_err[I(b)]) << "lse " << b;
    for (std::size_t i = 0; i < dq.size(); ++i) ASSERT_NEAR(dqf[i], dq[i], bound.dq_err(I(i / d), I(i % d))) << "dq " << i;
    for (std::size_t i = 0; i < dk.size(); ++i) ASSERT_NEAR(dkf[i], dk[i], dk_err(I(i / d), I(i % d))) << "dk " << i;
    if (!auto_assoc) {
      for (std::size_t i = 0; i < dvv.size(); ++i)
        ASSERT_NEAR(dvf[i], dvv[i], bound.dv_err(I(i / e), I(i % e))) << "dv " << i;
    }
    EXPECT_NEAR(dbf, db, bound.dbeta_err);
    // The double path is the exact computation the bounds were taken around.
    EXPECT_NEAR(db, bound.dbeta, 1e-9 * (1 + std::abs(db)));
    EXPECT_LE((Eigen::Map<const Matrix>(dq.data(), I(n), I(d)) - bound.dq).lpNorm<Eigen::Infinity>(), 1e-9);
    EXPECT_LE((Eigen::Map<const Matrix>(dk.data(), I(K), I(d)) - dk_exact).lpNorm<Eigen::Infinity>(), 1e-9);
  }
  }
  }
}

// The log-sum-exp's gradient (model B's energy, eq. 13) against central differences, with a mask.
TEST(Attention, LogSumExpBackwardIsItsDerivative) {
  std::mt19937_64 rng(3);
  const std::size_t n = 2, K = 300, d = 3;
  auto q = flat(randn(n, d, rng)), k = flat(randn(K, d, rng, 0.7));
  const std::vector<double> g = {0.7, -1.3};  // loss = sum g o lse
  std::vector<std::uint8_t> mask(K, 0);
  mask[4] = mask[200] = 1;
  double beta = 2.2;
  auto args = [&]() {
    AttentionArgs<double> a;
    a.q = q.data(), a.n = n, a.d = d, a.k = k.data(), a.K = K, a.v = k.data(), a.dv = d, a.beta = beta;
    a.mask = {mask.data(), 1};
    return a;
  };
  auto loss = [&]() {
    std::vector<double> out(n * d), lse(n);
    attention_forward(args(), out.data(), lse.data());
    return g[0] * lse[0] + g[1] * lse[1];
  };
  std::vector<double> out(n * d), lse(n), dq(n * d), dk(K * d);
  double dbeta = 0;
  attention_forward(args(), out.data(), lse.data());
  log_sum_exp_backward(args(), lse.data(), g.data(), dq.data(), dk.data(), &dbeta);
  for (std::size_t i = 0; i < q.size(); ++i) EXPECT_NEAR(dq[i], central(loss, q[i]), 1e-7) << "dq " << i;
  for (std::size_t i : {0u, 5u, 299u, 600u, 899u}) EXPECT_NEAR(dk[i], central(loss, k[i]), 1e-7) << "dk " << i;
  for (std::size_t j = 0; j < d; ++j) EXPECT_EQ(dk[4 * d + j], 0.0);  // masked: no gradient
  EXPECT_NEAR(dbeta, central(loss, beta), 1e-7);
}

// Values that are the keys: one buffer receives dk + dv, equal to the two written separately.
// Fewer queries than dimensions and more: the two layouts of the backward pass (with more, the shared
// buffer's sum is formed in one product).
TEST(Attention, SharedKeyValueGradientIsTheSum) {
  std::mt19937_64 rng(4);
  for (std::size_t n : {5u, 9u}) {
  SCOPED_TRACE(::testing::Message() << "queries " << n);
  const std::size_t K = 400, d = 6;
  const auto q = flat(randn(n, d, rng)), k = flat(randn(K, d, rng, 0.5)), w = flat(randn(n, d, rng));
  AttentionArgs<double> a;
  a.q = q.data(), a.n = n, a.d = d, a.k = k.data(), a.K = K, a.v = k.data(), a.dv = d, a.beta = 1.5;
  std::vector<double> out(n * d), lse(n), dq(n * d), dk(K * d), dv(K * d), dq2(n * d), both(K * d);
  double db = 0, db2 = 0;
  attention_forward(a, out.data(), lse.data());
  attention_backward(a, out.data(), lse.data(), w.data(), dq.data(), dk.data(), dv.data(), &db);
  attention_backward(a, out.data(), lse.data(), w.data(), dq2.data(), both.data(), both.data(), &db2);
  for (std::size_t i = 0; i < both.size(); ++i) ASSERT_NEAR(both[i], dk[i] + dv[i], 1e-12);
  EXPECT_NEAR(db, db2, 1e-12);
  std::vector<double> other(K * d);
  a.v = other.data();  // different values may not share the keys' gradient buffer
  EXPECT_THROW_MSG(attention_backward(a, out.data(), lse.data(), w.data(), dq.data(), both.data(), both.data(), &db),
                   InvalidArgument, "share a buffer");
  }
}

// Layer norms of the memories fused into the attention (RowNorm: hopfield-layers' LayerNorm of the stored
// patterns and of the pattern projections). Forward: the attention of the rows normalised here, written
// out (mean, biased variance, eps, gamma, bias); float32: bitwise the unnormed pass over rows normalised in
// double and rounded (the same tiles, kernels and threads). Backward: every gradient (queries, raw keys and
// values, the norms' gamma and bias, beta) against central differences in double, for separate memories,
// one memory under two norms (the layer's (Y, LN_s(Y), LN_p(Y)) case, one gradient buffer) and the values
// being the keys (one norm), with fewer and more queries than dimensions (the two backward layouts).
TEST(Attention, LayerNormedMemoriesAreTheAttentionOfTheNormalisedRows) {
  std::mt19937_64 rng(31);
  const std::size_t K = 530, d = 4, dv = 3;
  const double eps = 1e-3;
  auto y = flat(randn(K, d, rng, 2.0)), z = flat(randn(K, dv, rng, 3.0));
  for (std::size_t mu = 0; mu < K; ++mu) y[mu * d] += 1.5;  // rows with a mean to remove
  auto gk = flat(randn(1, d, rng)), bk = flat(randn(1, d, rng, 0.3));
  auto gv = flat(randn(1, d, rng)), bv = flat(randn(1, d, rng, 0.3));  // d entries: also a norm of the keys
  const auto normalised = [&](const std::vector<double>& x, std::size_t c, const double* g, const double* b) {
    std::vector<double> out(x.size());
    for (std::size_t r = 0; r < x.size() / c; ++r) {
      double m = 0, s2 = 0;
      for (std::size_t j = 0; j < c; ++j) m += x[r * c + j] / double(c);
      for (std::size_t j = 0; j < c; ++j) s2 += (x[r * c + j] - m) * (x[r * c + j] - m) / double(c);
      for (std::size_t j = 0; j < c; ++j) out[r * c + j] = (x[r * c + j] - m) / std::sqrt(s2 + eps) * g[j] + b[j];
    }
    return out;
  };
  enum Case { Separate, OneMemoryTwoNorms, ValuesAreKeys };
  for (std::size_t n : {3u, 6u})
    for (Case c : {Separate, OneMemoryTwoNorms, ValuesAreKeys}) {
      SCOPED_TRACE(::testing::Message() << "queries " << n << ", case " << int(c));
      auto q = flat(randn(n, d, rng));
      const std::size_t e = c == Separate ? dv : d;
      const auto w = flat(randn(n, e, rng));
      double beta = 0.9;
      const auto args = [&]() {
        AttentionArgs<double> a;
        a.q = q.data(), a.n = n, a.d = d, a.k = y.data(), a.K = K, a.beta = beta, a.threads = 2;
        a.v = c == Separate ? z.data() : y.data(), a.dv = e;
        a.key_norm = {true, eps, gk.data(), bk.data()};
        a.value_norm = c == ValuesAreKeys ? a.key_norm : RowNorm<double>{true, eps, gv.data(), bv.data()};
        return a;
      };
      const auto loss = [&]() {
        std::vector<double> out(n * e), lse(n);
        attention_forward(args(), out.data(), lse.data());
        double s = 0;
        for (std::size_t i = 0; i < out.size(); ++i) s += w[i] * out[i];
        return s;
      };
      // The forward against the unnormed attention of the rows normalised above.
      const auto nk = normalised(y, d, gk.data(), bk.data());
      const auto nv = c == Separate ? normalised(z, dv, gv.data(), bv.data())
                                    : c == ValuesAreKeys ? nk : normalised(y, d, gv.data(), bv.data());
      AttentionArgs<double> plain;
      plain.q = q.data(), plain.n = n, plain.d = d, plain.k = nk.data(), plain.K = K, plain.v = nv.data(), plain.dv = e;
      plain.beta = beta;
      std::vector<double> out(n * e), lse(n), out0(n * e), lse0(n);
      const AttentionArgs<double> a = args();
      attention_forward(a, out.data(), lse.data());
      attention_forward(plain, out0.data(), lse0.data());
      for (std::size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(out[i], out0[i], 1e-12) << "out " << i;
      for (std::size_t b = 0; b < n; ++b) EXPECT_NEAR(lse[b], lse0[b], 1e-12) << "lse " << b;
      // The backward against central differences; one gradient buffer where the memory is one array.
      std::vector<double> dq(n * d), dk(K * d), dvs(K * e), dg(4 * d, -7.0);
      double db = 0;
      const RowNormGradients<double> dn{&dg[0], &dg[d], &dg[2 * d], &dg[3 * d]};
      double* dvp = c == Separate ? dvs.data() : dk.data();
      attention_backward(a, out.data(), lse.data(), w.data(), dq.data(), dk.data(), dvp, &db, static_cast<double*>(nullptr), &dn);
      for (std::size_t i = 0; i < q.size(); ++i) EXPECT_NEAR(dq[i], central(loss, q[i]), 1e-7) << "dq " << i;
      for (std::size_t i : {0u, 1u, 7u, 100u, 2100u}) EXPECT_NEAR(dk[i], central(loss, y[i]), 1e-7) << "dk " << i;
      if (c == Separate) {
        for (std::size_t i : {0u, 3u, 50u, 1589u}) EXPECT_NEAR(dvs[i], central(loss, z[i]), 1e-7) << "dv " << i;
      }
      for (std::size_t j = 0; j < d; ++j) {
        EXPECT_NEAR(dg[j], central(loss, gk[j]), 1e-7) << "key gamma " << j;
        EXPECT_NEAR(dg[d + j], central(loss, bk[j]), 1e-7) << "key bias " << j;
        if (j >= e) continue;
        if (c == ValuesAreKeys) {  // one norm: its whole gradient in the keys' entries
          EXPECT_EQ(dg[2 * d + j], 0.0);
          EXPECT_EQ(dg[3 * d + j], 0.0);
        } else {
          EXPECT_NEAR(dg[2 * d + j], central(loss, gv[j]), 1e-7) << "value gamma " << j;
          EXPECT_NEAR(dg[3 * d + j], central(loss, bv[j]), 1e-7) << "value bias " << j;
        }
      }
      EXPECT_NEAR(db, central(loss, beta), 1e-7);
    }
  // float32: the fused norm makes the tiles the table's layer_norm makes of the raw rows (its accuracy:
  // Kernels.LayerNormAndItsBackward), so the forward is bitwise the unnormed pass over the rows that kernel
  // normalised (one thread each: the same order); with two norms of one memory too, whose values' tiles are
  // made from the keys' norm's row statistics (layer_norm_apply), and with one query.
  const auto yf = to_f32(Eigen::Map<const Matrix>(y.data(), Eigen::Index(K), Eigen::Index(d)));
  std::vector<float> gkf(gk.begin(), gk.end()), bkf(bk.begin(), bk.end()), nkf(K * d);
  std::vector<float> gvf(gv.begin(), gv.end()), bvf(bv.begin(), bv.end()), nvf(K * d);
  const std::vector<float> qf(5 * d, 0.7f);
  for (bool portable : {false, true})
    for (bool two_norms : {false, true})
      for (std::size_t n : {5u, 1u}) {
        const kernels::Ops& ops = portable ? kernels::generic_ops() : kernels::choose(KernelChoice::Auto, false);
        SCOPED_TRACE(::testing::Message() << ops.name << (two_norms ? ", two norms" : ", one norm") << ", n " << n);
        ops.layer_norm(yf.data(), K, d, float(eps), gkf.data(), bkf.data(), nkf.data(), nullptr);
        ops.layer_norm(yf.data(), K, d, float(eps), gvf.data(), bvf.data(), nvf.data(), nullptr);
        AttentionArgs<float> f;
        f.q = qf.data(), f.n = n, f.d = d, f.k = yf.data(), f.K = K, f.v = yf.data(), f.dv = d, f.threads = 1;
        f.portable_kernels = portable;
        f.key_norm = f.value_norm = {true, eps, gkf.data(), bkf.data()};
        if (two_norms) f.value_norm = {true, eps, gvf.data(), bvf.data()};
        AttentionArgs<float> g = f;
        g.k = nkf.data(), g.v = two_norms ? nvf.data() : nkf.data(), g.key_norm = g.value_norm = {};
        std::vector<float> o1(n * d), o2(n * d);
        std::vector<double> l1(n), l2(n);
        attention_forward(f, o1.data(), l1.data());
        attention_forward(g, o2.data(), l2.data());
        for (std::size_t i = 0; i < o1.size(); ++i) EXPECT_EQ(o1[i], o2[i]) << "out " << i;
      }
}

// The association matrix (attention_weights, hopfield-layers' need_weights): the softmax of beta q k^T + bias
// written out here, masked memories 0, rows summing to 1; the fused forward's output is P V; the backward
// pass against central differences of sum(W o P) for queries, keys, beta and the bias (a row per query and
// one shared row); dropout and layer norms refused.
TEST(Attention, WeightsAreTheSoftmaxAndTheirBackwardItsDerivative) {
  std::mt19937_64 rng(41);
  const std::size_t n = 3, K = 530, d = 4;
  auto q = flat(randn(n, d, rng)), k = flat(randn(K, d, rng, 0.7)), W = flat(randn(n, K, rng));
  std::vector<std::uint8_t> mask(n * K, 0);
  for (std::size_t mu = 0; mu < K; mu += 5) mask[K + mu] = 1;  // query 1 without every fifth memory
  double beta = 1.3;
  for (std::size_t rows : {0u, 1u, 3u}) {
    SCOPED_TRACE(::testing::Message() << "bias rows " << rows);
    auto bias = flat(randn(std::max<std::size_t>(rows, 1), K, rng, 0.5));
    if (rows) bias[7] = -std::numeric_limits<double>::infinity();
    const auto args = [&]() {
      AttentionArgs<double> a;
      a.q = q.data(), a.n = n, a.d = d, a.k = k.data(), a.K = K, a.v = k.data(), a.dv = d, a.beta = beta, a.threads = 2;
      a.mask = {mask.data(), n};
      if (rows) a.bias = bias.data(), a.bias_rows = rows;
      return a;
    };
    std::vector<double> P(n * K);
    attention_weights(args(), P.data());
    for (std::size_t b = 0; b < n; ++b) {
      double z = 0, sum = 0;
      std::vector<double> x(K);
      for (std::size_t mu = 0; mu < K; ++mu) {
        double s = 0;
        for (std::size_t j = 0; j < d; ++j) s += q[b * d + j] * k[mu * d + j];
        x[mu] = beta * s + (rows ? bias[(rows == 1 ? 0 : b) * K + mu] : 0.0);
        z += mask[b * K + mu] ? 0.0 : std::exp(x[mu]);
      }
      for (std::size_t mu = 0; mu < K; ++mu) {
        const double want = mask[b * K + mu] ? 0.0 : std::exp(x[mu]) / z;
        ASSERT_NEAR(P[b * K + mu], want, 1e-13) << "query " << b << " memory " << mu;
        sum += P[b * K + mu];
      }
      EXPECT_NEAR(sum, 1.0, 1e-12);
    }
    // P K is the fused forward's output with values = keys.
    std::vector<double> out(n * d), lse(n);
    attention_forward(args(), out.data(), lse.data());
    for (std::size_t b = 0; b < n; ++b)
      for (std::size_t j = 0; j < d; ++j) {
        double s = 0;
        for (std::size_t mu = 0; mu < K; ++mu) s += P[b * K + mu] * k[mu * d + j];
        EXPECT_NEAR(out[b * d + j], s, 1e-12);
      }
    const auto loss = [&]() {
      std::vector<double> p(n * K);
      attention_weights(args(), p.data());
      double s = 0;
      for (std::size_t i = 0; i < p.size(); ++i) s += W[i] * p[i];
      return s;
    };
    std::vector<double> dq(n * d), dk(K * d), dbias(std::max<std::size_t>(rows, 1) * K);
    double db = 0;
    attention_weights_backward(args(), P.data(), W.data(), dq.data(), dk.data(), &db, rows ? dbias.data() : nullptr);
    for (std::size_t i = 0; i < q.size(); ++i) EXPECT_NEAR(dq[i], central(loss, q[i]), 1e-7) << "dq " << i;
    for (std::size_t i : {0u, 1u, 7u, 100u, 2100u}) EXPECT_NEAR(dk[i], central(loss, k[i]), 1e-7) << "dk " << i;
    EXPECT_NEAR(db, central(loss, beta), 1e-7);
    if (rows) {
      for (std::size_t i : {std::size_t(0), std::size_t(8), rows * K / 2 + 1, rows * K - 1})
        EXPECT_NEAR(dbias[i], central(loss, bias[i]), 1e-7) << "dbias " << i;
    }
  }
  AttentionArgs<double> a;
  a.q = q.data(), a.n = n, a.d = d, a.k = k.data(), a.K = K, a.v = k.data(), a.dv = d, a.dropout = 0.1;
  std::vector<double> P(n * K);
  EXPECT_THROW_MSG(attention_weights(a, P.data()), InvalidArgument, "no dropout");
  a.dropout = 0, a.key_norm = {true, 1e-5, nullptr, nullptr};
  EXPECT_THROW_MSG(attention_weights(a, P.data()), InvalidArgument, "attention_weights: layer norms");
}

TEST(Attention, LayerNormParametersAreChecked) {
  std::vector<double> q(4, 1.0), k(8, 0.5), out(4), lse(2), g(2, 1.0);
  k[1] = 0.25;
  AttentionArgs<double> a;
  a.q = q.data(), a.n = 2, a.d = 2, a.k = k.data(), a.K = 4, a.v = k.data(), a.dv = 2;
  a.key_norm = {true, 0.0, nullptr, nullptr};
  EXPECT_THROW_MSG(attention_forward(a, out.data(), lse.data()), InvalidArgument, "key_norm: eps must be finite and > 0");
  a.key_norm = {true, 1e-5, g.data(), nullptr};
  g[1] = std::nan("");
  EXPECT_THROW_MSG(attention_forward(a, out.data(), lse.data()), InvalidArgument, "key_norm gamma contains NaN");
  g[1] = 1.0;
  a.value_norm = {true, -1.0, nullptr, nullptr};
  EXPECT_THROW_MSG(attention_forward(a, out.data(), lse.data()), InvalidArgument, "value_norm: eps");
  a.value_norm = {};
  // The overflow guard uses the normalised rows' bound sqrt(d) max|gamma| + |bias| (here sqrt(2) * 1e300).
  g[0] = 1e300;
  a.beta = 1.0;
  EXPECT_THROW_MSG(attention_forward(a, out.data(), lse.data()), InvalidArgument, "exceeds the float64 range");
  g[0] = 1.0;
  std::vector<double> dq(4), dk(8);
  double db = 0;
  EXPECT_THROW_MSG(log_sum_exp_backward(a, lse.data(), lse.data(), dq.data(), dk.data(), &db), InvalidArgument,
                   "log_sum_exp_backward: layer norms");
  // float32 rows whose squares would overflow the norm's variance (|y|^2 = 2e38 > max / 4) are refused, for
  // the keys and for values under their own norm; without a norm the same rows pass this check.
  std::vector<float> qf(4, 1e-20f), kf(8, 0.5f), vf(8, 0.5f), outf(4);
  kf[2] = 1e19f, kf[3] = -1e19f;
  AttentionArgs<float> f;
  f.q = qf.data(), f.n = 2, f.d = 2, f.k = kf.data(), f.K = 4, f.v = vf.data(), f.dv = 2;
  attention_forward(f, outf.data(), lse.data());
  f.key_norm = {true, 1e-5, nullptr, nullptr};
  EXPECT_THROW_MSG(attention_forward(f, outf.data(), lse.data()), InvalidArgument,
                   "keys: a row's squared norm 1.99");
  EXPECT_THROW_MSG(attention_forward(f, outf.data(), lse.data()), InvalidArgument,
                   "exceeds the float32 range of its layer norm's variance");
  f.key_norm = {}, f.k = vf.data(), f.v = kf.data(), f.value_norm = {true, 1e-5, nullptr, nullptr};
  EXPECT_THROW_MSG(attention_forward(f, outf.data(), lse.data()), InvalidArgument, "values: a row's squared norm");
  f.k = f.v = kf.data();  // one array under the values' norm alone
  EXPECT_THROW_MSG(attention_forward(f, outf.data(), lse.data()), InvalidArgument, "values: a row's squared norm");
}

// Model C's drive and energy (eqs. 22, 21) at unit directions, and their gradients, against central
// differences, with a mask; the energy equals the plain ModelC's.
TEST(Attention, SphericalBackwardIsItsDerivative) {
  std::mt19937_64 rng(5);
  const std::size_t n = 2, K = 290, d = 3;
  Matrix G0 = randn(n, d, rng);
  G0.rowwise().normalize();
  auto g = flat(G0), k = flat(randn(K, d, rng));
  const auto wd = flat(randn(n, d, rng));
  const std::vector<double> we = {0.4, -0.9};
  std::vector<std::uint8_t> mask(n * K, 0);
  mask[7] = mask[K + 100] = 1;
  const AdditivePtr F = make_interaction({Interaction::Exp, 2, 1.3});
  auto args = [&]() {
    AttentionArgs<double> a;
    a.q = g.data(), a.n = n, a.d = d, a.k = k.data(), a.K = K, a.v = k.data(), a.dv = d, a.beta = 1.0;
    a.mask = {mask.data(), n};
    return a;
  };
  auto loss = [&]() {
    std::vector<double> drive(n * d), e(n);
    spherical_forward(args(), *F, drive.data(), e.data());
    double s = we[0] * e[0] + we[1] * e[1];
    for (std::size_t i = 0; i < drive.size(); ++i) s += wd[i] * drive[i];
    return s;
  };
  std::vector<double> dg(n * d), dk(K * d);
  spherical_backward(args(), *F, wd.data(), we.data(), dg.data(), dk.data());
  for (std::size_t i = 0; i < g.size(); ++i) EXPECT_NEAR(dg[i], central(loss, g[i]), 1e-6 * (1 + std::fabs(dg[i]))) << i;
  for (std::size_t i : {0u, 4u, 300u, 869u}) EXPECT_NEAR(dk[i], central(loss, k[i]), 1e-6 * (1 + std::fabs(dk[i]))) << i;
  // Without a mask, the energy is the plain model's eq. (21).
  mask.assign(n * K, 0);
  std::vector<double> drive(n * d), e(n);
  spherical_forward(args(), *F, drive.data(), e.data());
  const ModelC plain(Eigen::Map<const Matrix>(k.data(), K, d), {Interaction::Exp, 2, 1.3});
  for (std::size_t b = 0; b < n; ++b) EXPECT_NEAR(e[b], plain.energy(G0.row(Eigen::Index(b)).transpose()), 1e-9);
}

// Model C's Euler step from raw states (assocmem.torch's spherical_retrieve): one step of the plain ModelC
// (eq. 22 through the general network), and its backward pass against central differences, with a mask.
TEST(Attention, SphericalStepIsThePlainModelsStepAndItsBackwardItsDerivative) {
  std::mt19937_64 rng(15);
  const std::size_t n = 3, K = 270, d = 4;
  const double alpha = 0.5, step = 0.3;
  auto v = flat(randn(n, d, rng, 3.0)), k = flat(randn(K, d, rng));
  const auto wn = flat(randn(n, d, rng));
  const std::vector<double> we = {0.4, -0.9, 1.7};
  std::vector<std::uint8_t> mask(n * K, 0);
  const AdditivePtr F = make_interaction({Interaction::RectifiedPower, 3, 1.0});
  auto args = [&]() {
    AttentionArgs<double> a;
    a.q = v.data(), a.n = n, a.d = d, a.k = k.data(), a.K = K, a.v = k.data(), a.dv = d;
    if (mask[5] || mask[K + 9]) a.mask = {mask.data(), n};
    return a;
  };
  std::vector<double> next(n * d), e(n);
  spherical_step(args(), *F, alpha, step, next.data(), e.data());
  const ModelC plain(Eigen::Map<const Matrix>(k.data(), K, d), {Interaction::RectifiedPower, 3, 1.0}, alpha);
  RetrieveOptions one;
  one.max_steps = 1, one.step = step, one.tol = 0.0;
  // Both sides in double, the drive's sums in different orders: per state, twice the forward error bound of
  // sum_mu f_mu xi_mu (f = F'(xi_mu . g), itself off by F''(s) times the dot's error) and of the step, and
  // of the energy's sum of F(s_mu) (error_bounds.hpp's gamma_n with double's unit roundoff).
  const double u = 0x1p-53, g_sum = assocmem::testing::gamma_n(double(K + d) + 8, u);
  for (std::size_t b = 0; b < n; ++b) {
    const Vector vb = Eigen::Map<const Vector>(&v[b * d], Eigen::Index(d));
    const Vector gb = vb / vb.norm();
    double drive_mag = 0, energy_mag = 0;
    for (std::size_t mu = 0; mu < K; ++mu) {
      const Eigen::Map<const Vector> xi(&k[mu * d], Eigen::Index(d));
      const double s = xi.dot(gb), dot_mag = xi.cwiseAbs().dot(gb.cwiseAbs());
      drive_mag += (std::fabs(F->dG(s)) + std::fabs(F->d2G(s)) * dot_mag) * xi.cwiseAbs().maxCoeff();
      energy_mag += std::fabs(F->G(s)) + std::fabs(F->dG(s)) * dot_mag;
    }
    const Retrieval r = plain.retrieve(vb, one);
    const double tol = 2 * (step * g_sum * drive_mag + assocmem::testing::gamma_n(4, u) * (1 + step * alpha) *
                                                           (vb.cwiseAbs().maxCoeff() + step * drive_mag));
    for (std::size_t j = 0; j < d; ++j) EXPECT_NEAR(next[b * d + j], r.states[j], tol) << b << "," << j;
    EXPECT_NEAR(e[b], plain.energy(vb), 2 * g_sum * energy_mag) << b;
  }
  mask[5] = mask[K + 9] = 1;
  auto loss = [&]() {
    std::vector<double> nx(n * d), en(n);
    spherical_step(args(), *F, alpha, step, nx.data(), en.data());
    double s = 0;
    for (std::size_t b = 0; b < n; ++b) s += we[b] * en[b];
    for (std::size_t i = 0; i < nx.size(); ++i) s += wn[i] * nx[i];
    return s;
  };
  std::vector<double> dv(n * d), dk(K * d);
  spherical_step_backward(args(), *F, alpha, step, wn.data(), we.data(), dv.data(), dk.data());
  for (std::size_t i = 0; i < v.size(); ++i) EXPECT_NEAR(dv[i], central(loss, v[i]), 1e-6 * (1 + std::fabs(dv[i]))) << i;
  for (std::size_t i : {0u, 5u, 21u, 600u, 1079u})
    EXPECT_NEAR(dk[i], central(loss, k[i]), 1e-6 * (1 + std::fabs(dk[i]))) << i;
  // The energy term alone (no next): spherical_energy's gradient.
  std::vector<double> dv_e(n * d), dk_e(K * d);
  spherical_step_backward<double>(args(), *F, alpha, step, nullptr, we.data(), dv_e.data(), dk_e.data());
  auto energy_loss = [&]() {
    std::vector<double> en(n);
    spherical_step<double>(args(), *F, alpha, step, nullptr, en.data());
    return we[0] * en[0] + we[1] * en[1] + we[2] * en[2];
  };
  for (std::size_t i = 0; i < v.size(); ++i)
    EXPECT_NEAR(dv_e[i], central(energy_loss, v[i]), 1e-6 * (1 + std::fabs(dv_e[i]))) << i;
  // Refusals name the problem.
  EXPECT_THROW_MSG(spherical_step(args(), *F, -1.0, step, next.data(), e.data()), InvalidArgument, "alpha must be");
  EXPECT_THROW_MSG(spherical_step(args(), *F, alpha, 0.0, next.data(), e.data()), InvalidArgument, "step must be");
  std::fill(v.begin() + d, v.begin() + 2 * d, 0.0);
  EXPECT_THROW_MSG(spherical_step(args(), *F, alpha, step, next.data(), e.data()), InvalidArgument,
                   "state 1 is zero");
  EXPECT_THROW_MSG(spherical_step_backward(args(), *F, alpha, step, wn.data(), nullptr, dv.data(), dk.data()),
                   InvalidArgument, "state 1 is zero");
}

// Eq. (16) iterated on the keys by attention_fixed_point (hopfield_retrieve(implicit=True)): each row stops
// by the retrievals' rule, with its own mask row, as if iterated alone.
TEST(Attention, FixedPointIteratesEachRowAloneWithItsMask) {
  std::mt19937_64 rng(16);
  const std::size_t n = 5, K = 40, d = 6;
  const double tol = 1e-10;
  const Matrix Km = randn(K, d, rng);
  const auto k = flat(Km);
  Matrix Q = Km.topRows(Eigen::Index(n)) + 0.6 * randn(n, d, rng);
  Q.row(3) *= 0.05;  // near the memories' mean: a slower start
  const auto q = flat(Q);
  std::vector<std::uint8_t> mask(n * K, 0);
  for (std::size_t i = 0; i < mask.size(); ++i) mask[i] = (rng() % 3 == 0);
  for (std::size_t b = 0; b < n; ++b) mask[b * K + b] = 0;  // each row keeps the memory it starts near
  AttentionArgs<double> a;
  a.q = q.data(), a.n = n, a.d = d, a.k = k.data(), a.K = K, a.v = k.data(), a.dv = d, a.beta = 2.0;
  a.mask = {mask.data(), n};
  std::vector<double> states(n * d);
  const Retrieval r = attention_fixed_point(a, 200, tol, states.data());
  std::set<long> steps;
  for (std::size_t b = 0; b < n; ++b) {
    std::vector<double> cur(q.begin() + long(b * d), q.begin() + long((b + 1) * d)), next(d);
    double lse = 0, change = 0;
    long t = 0;
    AttentionArgs<double> one = a;
    one.n = 1, one.mask = {mask.data() + b * K, 1};
    do {
      one.q = cur.data();
      attention_forward(one, next.data(), &lse);
      change = 0;
      for (std::size_t j = 0; j < d; ++j) change = std::max(change, std::fabs(next[j] - cur[j]));
      cur = next;
      ++t;
    } while (change > tol && t < 200);
    // The batched passes and the row's own sum in other orders, so a change within rounding of tol could
    // stop one of them an update apart; both are then within about tol of the same fixed point (the
    // updates contract there), where a row given another row's mask lands O(1) away.
    EXPECT_LE(std::labs(r.steps[b] - t), 1) << b;
    EXPECT_TRUE(r.converged(b)) << b;
    steps.insert(r.steps[b]);
    for (std::size_t j = 0; j < d; ++j) EXPECT_NEAR(states[b * d + j], cur[j], 10 * tol) << b << "," << j;
  }
  EXPECT_GE(steps.size(), 2u);  // rows stop at different updates: the later ones run with fewer rows
  const Retrieval capped = attention_fixed_point(a, 2, tol, states.data());
  for (std::size_t b = 0; b < n; ++b) EXPECT_EQ(capped.stop[b], StopReason::MaxSteps) << b;
  EXPECT_THROW_MSG(attention_fixed_point(a, 5, -1.0, states.data()), InvalidArgument, "fixed_point_tol must be");
  std::vector<double> other(K * d, 1.0);
  a.v = other.data();
  EXPECT_THROW_MSG(attention_fixed_point(a, 5, tol, states.data()), InvalidArgument, "the values must be the keys");
}

// bfloat16 memories are widened tile by tile: the same numbers as float memories holding the rounded values.
TEST(Attention, BFloat16MemoriesEqualTheirFloatValues) {
  std::mt19937_64 rng(6);
  const std::size_t n = 4, K = 600, d = 8, dv = 3;
  const auto q = to_f32(randn(n, d, rng));
  auto k = to_f32(randn(K, d, rng, 0.5)), v = to_f32(randn(K, dv, rng));
  std::vector<std::uint16_t> kb(k.size()), vb(v.size());
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = bf16_to_float(kb[i] = float_to_bf16(k[i]));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = bf16_to_float(vb[i] = float_to_bf16(v[i]));
  AttentionArgs<float> f, b;
  f.q = b.q = q.data(), f.n = b.n = n, f.d = b.d = d, f.K = b.K = K, f.dv = b.dv = dv, f.beta = b.beta = 2.0;
  f.k = k.data(), f.v = v.data();
  b.k_bf16 = kb.data(), b.v_bf16 = vb.data();
  std::vector<float> of(n * dv), ob(n * dv), w(n * dv, 1.0f), dqf(n * d), dqb(n * d), dkf(K * d), dkb(K * d), dvf(K * dv),
      dvb(K * dv);
  std::vector<double> lf(n), lb(n);
  double bf = 0, bb = 0;
  attention_forward(f, of.data(), lf.data());
  attention_forward(b, ob.data(), lb.data());
  attention_backward(f, of.data(), lf.data(), w.data(), dqf.data(), dkf.data(), dvf.data(), &bf);
  attention_backward(b, ob.data(), lb.data(), w.data(), dqb.data(), dkb.data(), dvb.data(), &bb);
  EXPECT_EQ(of, ob);
  EXPECT_EQ(dqf, dqb);
  EXPECT_EQ(dkf, dkb);
  EXPECT_EQ(dvf, dvb);
  EXPECT_EQ(bf, bb);
  kb[5] = 0x7FC0;  // a NaN among the bfloat16 keys
  EXPECT_THROW_MSG(attention_forward(b, ob.data(), lb.data()), InvalidArgument, "keys contains NaN");
}

// The inputs' checks run split over the threads, in blocks: the element they name is the first bad one of
// the whole array, whichever thread's part holds it (keys and values, float and bfloat16), and the values
// are checked on their own when they are not the keys. The forward and backward passes check the memories
// tile by tile inside their own pass (MemoryScan), each thread its run of tiles: the same element is named.
TEST(Attention, NonFiniteInputsAreNamedByTheirFirstElement) {
  const std::size_t n = 2, K = 3000, d = 8, dv = 3;
  std::vector<float> q(n * d, 0.1f), k(K * d, 0.2f), v(K * dv, 0.3f), out(n * dv), g(n * d, 0.5f);
  std::vector<float> dq(n * d), dk(K * d), dvv(K * d);
  std::vector<double> lse(n);
  double db = 0;
  AttentionArgs<float> a;
  a.q = q.data(), a.n = n, a.d = d, a.k = k.data(), a.K = K, a.v = v.data(), a.dv = dv, a.beta = 1.0, a.threads = 2;
  attention_forward(a, out.data(), lse.data());
  const std::vector<float> out0 = out;
  const std::vector<double> lse0 = lse;
  // Both passes refuse the inputs naming `what` (the backward from the good inputs' forward results).
  const auto refused = [&](const AttentionArgs<float>& x, float* o, const std::string& what) {
    EXPECT_THROW_MSG(attention_forward(x, o, lse.data()), InvalidArgument, what);
    EXPECT_THROW_MSG(attention_backward(x, out0.data(), lse0.data(), g.data(), dq.data(), dk.data(), dvv.data(), &db),
                     InvalidArgument, what);
  };
  k[20000] = std::numeric_limits<float>::infinity();  // in the second thread's rows
  refused(a, out.data(), "keys contains NaN or Inf (element 20000)");
  k[300] = std::nanf("");  // and an earlier one in the first thread's rows
  refused(a, out.data(), "keys contains NaN or Inf (element 300)");
  k[300] = k[20000] = 0.2f;
  v[K * dv - 1] = -std::numeric_limits<float>::infinity();  // the very last value
  refused(a, out.data(), "values contains NaN or Inf (element " + std::to_string(K * dv - 1) + ")");
  v[5] = std::nanf("");  // and bad keys before bad values
  k[K * d - 1] = std::nanf("");
  refused(a, out.data(), "keys contains NaN or Inf (element " + std::to_string(K * d - 1) + ")");
  k[K * d - 1] = 0.2f, v[5] = v[K * dv - 1] = 0.3f;
  // Finite keys whose scores could overflow float: refused after the pass as before it (no norms: the
  // bound takes the largest key's norm, here the last tile's).
  k[K * d - 1] = 3e37f;  // beta |q| |k| = 100 x 0.28 x 3e37 > 3.4e38 / 4
  AttentionArgs<float> hot = a;
  hot.beta = 100.0;
  refused(hot, out.data(), "queries: row 0: beta * |q| * max|k|");
  k[K * d - 1] = 0.2f;
  std::vector<std::uint16_t> kb(K * d, float_to_bf16(0.2f));
  AttentionArgs<float> b = a;
  b.k = b.v = nullptr, b.k_bf16 = b.v_bf16 = kb.data(), b.dv = d;
  std::vector<float> wide(n * d);
  attention_forward(b, wide.data(), lse.data());
  kb[K * d - 9] = 0x7F80;  // +inf in bfloat16: keys (and values: the same memory, checked once)
  EXPECT_THROW_MSG(attention_forward(b, wide.data(), lse.data()), InvalidArgument,
                   "keys contains NaN or Inf (element " + std::to_string(K * d - 9) + ")");
}

// A batch of independent attentions (AttentionBatch) equals one call per element: each element's queries,
// keys, values, mask rows and beta; values = keys (one gradient buffer); bfloat16 memories; the threads
// split over the elements (elements >= threads: each element on one thread; fewer: the rest over its
// tiles) - bitwise equal to the per-element call with as many threads. A bad element is named.
TEST(Attention, BatchEqualsOneCallPerElement) {
  std::mt19937_64 rng(12);
  const std::size_t n = 5, K = 700, d = 9, dv = 4;
  for (std::size_t E : {1u, 2u, 5u})
    for (bool auto_assoc : {false, true})
      for (bool bf16 : {false, true}) {
        SCOPED_TRACE(::testing::Message() << E << " elements, values = keys " << auto_assoc << ", bf16 " << bf16);
        const std::size_t e_dv = auto_assoc ? d : dv;
        const auto q = to_f32(randn(Eigen::Index(E * n), d, rng));
        auto k = to_f32(randn(Eigen::Index(E * K), d, rng, 0.4)), v = to_f32(randn(Eigen::Index(E * K), dv, rng));
        std::vector<std::uint16_t> kb(k.size()), vb(v.size());
        for (std::size_t i = 0; i < k.size(); ++i) k[i] = bf16_to_float(kb[i] = float_to_bf16(k[i]));
        for (std::size_t i = 0; i < v.size(); ++i) v[i] = bf16_to_float(vb[i] = float_to_bf16(v[i]));
        std::vector<std::uint8_t> mask(E * n * K, 0);
        for (std::size_t i = 0; i < mask.size(); ++i) mask[i] = (i * 7919) % 5 == 0;
        std::vector<double> betas(E);
        for (std::size_t e = 0; e < E; ++e) betas[e] = 0.5 + double(e);
        AttentionArgs<float> a;
        a.q = q.data(), a.n = n, a.d = d, a.K = K, a.dv = e_dv, a.threads = 2, a.mask = {mask.data(), n};
        if (bf16) {
          a.k_bf16 = kb.data();
          a.v_bf16 = auto_assoc ? kb.data() : vb.data();
        } else {
          a.k = k.data();
          a.v = auto_assoc ? k.data() : v.data();
        }
        AttentionBatch b;
        b.elements = E, b.q_stride = n * d, b.k_stride = K * d, b.v_stride = K * e_dv, b.mask_stride = n * K;
        b.betas = betas.data();
        std::vector<float> out(E * n * e_dv), dout(out.size()), dq(E * n * d), dk(E * K * d), dvv(E * K * e_dv);
        for (std::size_t i = 0; i < dout.size(); ++i) dout[i] = float(std::sin(double(i)));
        std::vector<double> lse(E * n), db(E);
        attention_forward_batch(a, b, out.data(), lse.data());
        attention_backward_batch(a, b, out.data(), lse.data(), dout.data(), dq.data(), dk.data(),
                                 auto_assoc ? dk.data() : dvv.data(), db.data());
        const int inner = E >= 2 ? 1 : 2;
        for (std::size_t e = 0; e < E; ++e) {
          AttentionArgs<float> x = a;
          x.q = q.data() + e * n * d, x.beta = betas[e], x.threads = inner, x.mask = {mask.data() + e * n * K, n};
          if (bf16) {
            x.k_bf16 = kb.data() + e * K * d;
            x.v_bf16 = auto_assoc ? x.k_bf16 : vb.data() + e * K * dv;
          } else {
            x.k = k.data() + e * K * d;
            x.v = auto_assoc ? x.k : v.data() + e * K * dv;
          }
          std::vector<float> o(n * e_dv), gq(n * d), gk(K * d), gv(K * e_dv);
          std::vector<double> l(n);
          double gb = 0;
          attention_forward(x, o.data(), l.data());
          attention_backward(x, o.data(), l.data(), dout.data() + e * n * e_dv, gq.data(), gk.data(),
                             auto_assoc ? gk.data() : gv.data(), &gb);
          ASSERT_TRUE(std::equal(o.begin(), o.end(), out.begin() + long(e * n * e_dv))) << "out, element " << e;
          ASSERT_TRUE(std::equal(l.begin(), l.end(), lse.begin() + long(e * n))) << "lse, element " << e;
          ASSERT_TRUE(std::equal(gq.begin(), gq.end(), dq.begin() + long(e * n * d))) << "dq, element " << e;
          ASSERT_TRUE(std::equal(gk.begin(), gk.end(), dk.begin() + long(e * K * d))) << "dk, element " << e;
          if (!auto_assoc) {
            ASSERT_TRUE(std::equal(gv.begin(), gv.end(), dvv.begin() + long(e * K * dv))) << "dv, element " << e;
          }
          ASSERT_EQ(gb, db[e]) << "dbeta, element " << e;
        }
        if (E == 5 && !bf16) {
          betas[3] = -1.0;
          EXPECT_THROW_MSG(attention_forward_batch(a, b, out.data(), lse.data()), InvalidArgument,
                           "batch element 3: beta must be finite and > 0");
          betas[3] = 1.0;
          k[2 * K * d + 5] = std::nanf("");
          EXPECT_THROW_MSG(attention_forward_batch(a, b, out.data(), lse.data()), InvalidArgument,
                           "batch element 2: keys contains NaN");
          b.k_stride = K;
          EXPECT_THROW_MSG(attention_forward_batch(a, b, out.data(), lse.data()), InvalidArgument, "stride");
        }
      }
}

TEST(Attention, BadInputIsRefused) {
  std::vector<double> q(4, 1.0), k(8, 0.5), out(4), lse(2);
  AttentionArgs<double> a;
  a.q = q.data(), a.n = 2, a.d = 2, a.k = k.data(), a.K = 4, a.v = k.data(), a.dv = 2, a.beta = 0.0;
  EXPECT_THROW_MSG(attention_forward(a, out.data(), lse.data()), InvalidArgument, "beta");
  a.beta = 1.0;
  q[1] = std::nan("");
  EXPECT_THROW_MSG(attention_forward(a, out.data(), lse.data()), InvalidArgument, "queries contains NaN");
  q[1] = 1.0;
  std::vector<std::uint8_t> all(4, 1);
  a.mask = {all.data(), 1};
  EXPECT_THROW_MSG(attention_forward(a, out.data(), lse.data()), InvalidArgument, "leaves out every memory");
  a.mask = {};
  // Scores that could overflow (beta |q| max|k| beyond a quarter of the type's range) are refused, as
  // the engines refuse them: at beta = 1e38 float32 scores became inf and the softmax NaN.
  a.beta = 1e308;
  EXPECT_THROW_MSG(attention_forward(a, out.data(), lse.data()), InvalidArgument, "exceeds the float64 range");
  std::vector<float> qf(4, 1.0f), kf(8, 0.5f), outf(4);
  std::vector<double> lsef(2);
  AttentionArgs<float> f;
  f.q = qf.data(), f.n = 2, f.d = 2, f.k = kf.data(), f.K = 4, f.v = kf.data(), f.dv = 2, f.beta = 1e38;
  EXPECT_THROW_MSG(attention_forward(f, outf.data(), lsef.data()), InvalidArgument, "exceeds the float32 range");
  f.beta = 1e37;  // |q| max|k| = 1: 1e37 < 8.5e37 passes, and the result is finite
  attention_forward(f, outf.data(), lsef.data());
  for (float x : outf) EXPECT_TRUE(std::isfinite(x));
}

}  // namespace

// A host's worker runner (assocmem/threads.hpp): it runs every chunk of the parallel calls, in any order,
// and the results are those of assocmem's own threads bit for bit (the work is split the same way); a
// worker's exception reaches the caller through it.
namespace {
std::atomic<int> g_runner_calls{0};
std::atomic<std::size_t> g_runner_most{0};
bool reverse_serial_runner(std::size_t workers, void* job, void (*work)(void*, std::size_t)) {
  ++g_runner_calls;
  if (workers > g_runner_most) g_runner_most = workers;
  for (std::size_t w = workers; w-- > 0;) work(job, w);
  return true;
}
// Declines calls of more than 2 workers: assocmem's own threads run those.
std::atomic<int> g_declined{0};
bool declines_over_two(std::size_t workers, void* job, void (*work)(void*, std::size_t)) {
  if (workers > 2) {
    ++g_declined;
    return false;
  }
  for (std::size_t w = 0; w < workers; ++w) work(job, w);
  return true;
}

TEST(Threads, AHostsRunnerRunsEveryWorkerWithTheSameResults) {
  std::mt19937_64 rng(7);
  const Matrix X = randn(3000, 16, rng, 0.3), Q = randn(5, 16, rng);
  const auto qf = to_f32(Q), xf = to_f32(X);
  MemoryStore keys(16, DType::Float32);
  keys.append(X);
  AttentionArgs<float> a;
  a.q = qf.data(), a.n = 5, a.d = 16, a.k = xf.data(), a.K = 3000, a.v = xf.data(), a.dv = 16, a.beta = 4.0;
  a.threads = 3;
  auto run = [&] {
    std::vector<float> out(5 * 16), dq(5 * 16), dk(3000 * 16);
    std::vector<double> lse(5);
    attention_forward(a, out.data(), lse.data());
    std::vector<float> grad(out.size(), 1.0f);
    double dbeta = 0;
    attention_backward(a, out.data(), lse.data(), grad.data(), dq.data(), dk.data(), dk.data(), &dbeta);
    EngineOptions eo;
    eo.threads = 3;
    const Retrieval r = ModelBEngine(keys, 4.0, eo).retrieve(qf.data(), 5);
    out.insert(out.end(), dq.begin(), dq.end());
    out.insert(out.end(), dk.begin(), dk.end());
    out.insert(out.end(), r.states.begin(), r.states.end());
    return out;
  };
  ASSERT_EQ(worker_runner(), nullptr);
  const auto own = run();
  set_worker_runner(&reverse_serial_runner);
  const auto hosted = run();
  set_worker_runner(nullptr);
  EXPECT_GE(g_runner_calls.load(), 3);  // the forward, the backward and the engine's pass
  EXPECT_EQ(g_runner_most.load(), 3u);
  ASSERT_EQ(own.size(), hosted.size());
  for (std::size_t i = 0; i < own.size(); ++i) ASSERT_EQ(own[i], hosted[i]) << "entry " << i;

  set_worker_runner(&reverse_serial_runner);
  std::vector<int> ran(4, 0);
  EXPECT_THROW_MSG(detail::parallel_chunks(400, 4, [&](std::size_t w, std::size_t, std::size_t) {
                     ran[w] = 1;
                     if (w == 2) throw InvalidArgument("worker 2 failed");
                   }),
                   InvalidArgument, "worker 2 failed");
  set_worker_runner(nullptr);
  EXPECT_EQ(ran, std::vector<int>(4, 1));

  // A runner that declines a call leaves it to assocmem's own threads: every chunk once, all of them on
  // other threads than the caller's but the first.
  set_worker_runner(&declines_over_two);
  std::vector<std::thread::id> who(3);
  detail::parallel_chunks(300, 3, [&](std::size_t w, std::size_t, std::size_t) { who[w] = std::this_thread::get_id(); });
  const auto declined_once = g_declined.load();
  const auto declined = run();
  set_worker_runner(nullptr);
  EXPECT_EQ(declined_once, 1);
  EXPECT_EQ(who[0], std::this_thread::get_id());
  EXPECT_NE(who[1], std::this_thread::get_id());
  EXPECT_NE(who[2], who[1]);
  EXPECT_GE(g_declined.load(), declined_once + 3);
  for (std::size_t i = 0; i < own.size(); ++i) ASSERT_EQ(own[i], declined[i]) << "entry " << i;
}

}  // namespace
