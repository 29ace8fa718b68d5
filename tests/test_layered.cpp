// Hierarchical associative memories (assocmem/layered.hpp): eqs. (1), (2), (4) for L layers.
// - L = 2 is the network of eq. (1): the same right-hand side, energy, rate and trajectory, exactly;
// - dE/dt of eq. (4) against a central difference of E along the flow, and the Jacobian-vector product
//   against a central difference of the right-hand side (L = 3 and 4, dense and convolutional synapses);
// - the convolution against a direct sum, and its transpose as the exact adjoint;
// - along simulated trajectories the energy never increases for convex Lagrangians;
// - bad networks are refused naming the layer or synapse.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "assocmem/error.hpp"
#include "assocmem/layered.hpp"

using namespace assocmem;

namespace {

Matrix randm(Eigen::Index r, Eigen::Index c, std::mt19937_64& rng, double scale = 1.0) {
  std::normal_distribution<double> n(0.0, scale);
  Matrix m(r, c);
  for (Eigen::Index i = 0; i < r; ++i)
    for (Eigen::Index j = 0; j < c; ++j) m(i, j) = n(rng);
  return m;
}
Vector randv(Eigen::Index n, std::mt19937_64& rng, double scale = 1.0) { return randm(n, 1, rng, scale).col(0); }

// Three layers: a 2 x 5 x 5 image, a 3 x 3 x 3 convolutional feature layer (kernel 3 x 3, stride 2,
// padding 1) and 6 memories (dense, softmax Lagrangian); with `fourth`, a 4-neuron layer above them.
LayeredNetwork deep_net(std::mt19937_64& rng, bool fourth) {
  const ImageShape img{2, 5, 5};
  auto conv = std::make_shared<Conv2dSynapse>(img, randm(3, 2 * 3 * 3, rng, 0.3), 3, 3, 2, 1);
  EXPECT_EQ(conv->out_size(), 27);
  std::vector<LayerSpec> layers{
      {"image", img.size(), lagrangians::log_cosh(1.5), 1.0, randv(img.size(), rng, 0.2)},
      {"features", 27, lagrangians::softplus(1.0), 0.5, Vector()},
      {"memories", 6, lagrangians::log_sum_exp(2.0), 0.25, Vector()}};
  std::vector<SynapseSpec> syn{{"image", "features", conv},
                               {"features", "memories", std::make_shared<DenseSynapse>(randm(6, 27, rng, 0.4))}};
  if (fourth) {
    layers.push_back({"top", 4, lagrangians::identity(), 2.0, randv(4, rng, 0.1)});
    syn.push_back({"memories", "top", std::make_shared<DenseSynapse>(randm(4, 6, rng, 0.5))});
    syn.push_back({"image", "top", std::make_shared<DenseSynapse>(randm(4, img.size(), rng, 0.1))});
  }
  return LayeredNetwork(std::move(layers), std::move(syn));
}

// net with synapse s's parameters moved by eps D (and, with a current direction Dc, the stacked
// currents by eps Dc).
LayeredNetwork shifted_network(const LayeredNetwork& net, std::size_t s, const Matrix& D, double eps,
                               const Vector& Dc = Vector()) {
  std::vector<LayerSpec> layers;
  std::vector<SynapseSpec> syn;
  for (std::size_t A = 0; A < net.n_layers(); ++A) {
    layers.push_back(net.layer(A));
    if (Dc.size() > 0) {
      Vector I = layers[A].current.size() ? layers[A].current : Vector::Zero(layers[A].size);
      layers[A].current = I + eps * net.part(Dc, A);
    }
  }
  for (std::size_t t = 0; t < net.n_synapses(); ++t) syn.push_back(net.synapse(t));
  const SynapsePtr op = net.synapse(s).op;
  if (auto d = std::dynamic_pointer_cast<const DenseSynapse>(op)) {
    syn[s].op = std::make_shared<DenseSynapse>(d->weights() + eps * D);
  } else {
    auto c = std::dynamic_pointer_cast<const Conv2dSynapse>(op);
    syn[s].op = std::make_shared<Conv2dSynapse>(c->in_shape(), c->kernel() + eps * D, c->kernel_height(),
                                                c->kernel_width(), c->stride(), c->padding());
  }
  return LayeredNetwork(layers, syn);
}

}  // namespace

TEST(Layered, TwoLayersAreTheNetworkOfEq1Exactly) {
  std::mt19937_64 rng(1);
  const Matrix xi = randm(7, 5, rng);
  for (const auto& [Lv, Lh] : std::vector<std::pair<LagrangianPtr, LagrangianPtr>>{
           {lagrangians::identity(), lagrangians::log_sum_exp(3.0)},
           {lagrangians::log_cosh(2.0), lagrangians::power(3)},
           {lagrangians::spherical(), lagrangians::exp(1.0)}}) {
    SCOPED_TRACE(Lv->name() + " / " + Lh->name());
    NetworkParams p;
    p.tau_f = 1.3;
    p.tau_h = 0.2;
    p.current = randv(5, rng, 0.3);
    const Network net(xi, Lv, Lh, p);
    const LayeredNetwork lay = LayeredNetwork::from_network(net);
    ASSERT_EQ(lay.size(), 12);
    const Vector v = randv(5, rng), h = randv(7, rng, 0.5);
    Vector x(12);
    x << v, h;
    Vector dv, dh, dx;
    net.rhs(v, h, dv, dh);
    lay.rhs(x, dx);
    EXPECT_EQ(lay.part(dx, 0), dv);
    EXPECT_EQ(lay.part(dx, 1), dh);
    EXPECT_EQ(lay.energy(x), net.energy(v, h));
    EXPECT_EQ(lay.energy_rate(x), net.energy_rate(v, h));
    // The same trajectory, step by step (RK4, fixed step).
    SimulateOptions o;
    o.method = Method::RK4;
    o.dt = 0.01;
    o.t_end = 0.5;
    const Trajectory a = simulate(net, v, h, o);
    const LayeredTrajectory b = simulate(lay, x, o);
    ASSERT_EQ(a.t.size(), b.t.size());
    for (std::size_t k = 0; k < a.t.size(); ++k) {
      EXPECT_EQ(lay.part(b.x[k], 0), a.v[k]) << k;
      EXPECT_EQ(lay.part(b.x[k], 1), a.h[k]) << k;
      EXPECT_EQ(b.energy[k], a.energy[k]) << k;
      EXPECT_EQ(b.energy_rate[k], a.energy_rate[k]) << k;
    }
  }
  NetworkParams p;
  p.alpha = 0.5;
  EXPECT_THROW(LayeredNetwork::from_network(Network(xi, lagrangians::spherical(), lagrangians::exp(1.0), p)),
               InvalidArgument);
}

TEST(Layered, ConvolutionIsTheDirectSumAndItsTransposeTheAdjoint) {
  std::mt19937_64 rng(2);
  for (const auto& sp : std::vector<std::pair<int, int>>{{1, 0}, {2, 1}, {3, 2}, {1, 2}}) {
    const int stride = sp.first, padding = sp.second;  // (a lambda below reads them)
    SCOPED_TRACE(::testing::Message() << "stride " << stride << " padding " << padding);
    const ImageShape in{2, 6, 7};
    const Eigen::Index kh = 3, kw = 2;
    const Matrix K = randm(3, 2 * kh * kw, rng);
    const Conv2dSynapse c(in, K, kh, kw, stride, padding);
    const ImageShape out = c.out_shape();
    EXPECT_EQ(out.height, (6 + 2 * padding - kh) / stride + 1);
    EXPECT_EQ(out.width, (7 + 2 * padding - kw) / stride + 1);
    const Vector x = randv(in.size(), rng), y = randv(out.size(), rng);
    Vector Wx = Vector::Zero(out.size()), Wty = Vector::Zero(in.size());
    c.apply(x, Wx);
    c.apply_transpose(y, Wty);
    // The direct sum, written from the definition with the padded image as a function.
    auto pix = [&](Eigen::Index ch, Eigen::Index r, Eigen::Index col) {
      r -= padding;
      col -= padding;
      return (r < 0 || r >= in.height || col < 0 || col >= in.width) ? 0.0 : x((ch * in.height + r) * in.width + col);
    };
    double mag = 0;
    for (Eigen::Index o = 0; o < out.channels; ++o)
      for (Eigen::Index r = 0; r < out.height; ++r)
        for (Eigen::Index q = 0; q < out.width; ++q) {
          double s = 0, a = 0;
          for (Eigen::Index ch = 0; ch < in.channels; ++ch)
            for (Eigen::Index i = 0; i < kh; ++i)
              for (Eigen::Index j = 0; j < kw; ++j) {
                const double term = K(o, (ch * kh + i) * kw + j) * pix(ch, r * stride + i, q * stride + j);
                s += term;
                a += std::fabs(term);
              }
          // Both sum the same terms in the same order: equal up to the rounding of a sum of 12 terms.
          EXPECT_NEAR(Wx((o * out.height + r) * out.width + q), s, 24 * 0x1p-53 * a);
          mag = std::max(mag, a);
        }
    // <y, W x> = <W^T y, x>: the same products summed in another order (gamma_n bound, n = the terms).
    double abs_sum = 0;
    for (Eigen::Index k = 0; k < out.size(); ++k) abs_sum += std::fabs(y(k)) * mag;
    const double n = double(out.size() * in.channels * kh * kw);
    EXPECT_NEAR(y.dot(Wx), Wty.dot(x), 2 * n * 0x1p-53 * abs_sum);
  }
  EXPECT_THROW(Conv2dSynapse({1, 2, 2}, Matrix::Ones(1, 9), 3, 3), InvalidArgument);       // kernel > image
  EXPECT_THROW(Conv2dSynapse({2, 4, 4}, Matrix::Ones(1, 9), 3, 3), InvalidArgument);       // 9 != 2 x 3 x 3
  EXPECT_THROW(Conv2dSynapse({1, 4, 4}, Matrix::Ones(1, 9), 3, 3, 0), InvalidArgument);    // stride 0
}

TEST(Layered, EnergyRateAndJacobianAgreeWithFiniteDifferences) {
  std::mt19937_64 rng(3);
  for (bool fourth : {false, true}) {
    SCOPED_TRACE(fourth ? "L = 4" : "L = 3");
    const LayeredNetwork net = deep_net(rng, fourth);
    for (int trial = 0; trial < 4; ++trial) {
      const Vector x = randv(net.size(), rng, 0.7);
      Vector dx;
      net.rhs(x, dx);
      // dE/dt = d/ds E(x + s dx) at s = 0; central difference with h = 1e-5: truncation ~h^2 |E'''|,
      // rounding ~1e-16 |E| / h; both far below the tolerance.
      const double h = 1e-5;
      const double fd = (net.energy(x + h * dx) - net.energy(x - h * dx)) / (2 * h);
      const double rate = net.energy_rate(x);
      EXPECT_LT(rate, 0.0);  // convex Lagrangians, not at a fixed point
      EXPECT_NEAR(rate, fd, 1e-6 * (std::fabs(rate) + std::fabs(net.energy(x))));
      // J u against (F(x + h u) - F(x - h u)) / 2h.
      const Vector u = randv(net.size(), rng);
      Vector Ju, fp, fm;
      net.jvp(x, u, Ju);
      net.rhs(x + h * u, fp);
      net.rhs(x - h * u, fm);
      const Vector fdj = (fp - fm) / (2 * h);
      EXPECT_LE((Ju - fdj).norm(), 1e-6 * (Ju.norm() + dx.norm()));
    }
  }
}

// What reverse-mode training needs (issue 25 item 3): the energy's gradient in the state and in every
// synapse's parameters against central differences, and vjp as the exact transpose of jvp.
TEST(Layered, GradientsForTrainingAgreeWithFiniteDifferences) {
  std::mt19937_64 rng(9);
  for (bool fourth : {false, true}) {
    SCOPED_TRACE(fourth ? "L = 4" : "L = 3");
    const LayeredNetwork net = deep_net(rng, fourth);
    const double h = 1e-5;
    for (int trial = 0; trial < 3; ++trial) {
      const Vector x = randv(net.size(), rng, 0.7), u = randv(net.size(), rng), v = randv(net.size(), rng);
      Vector grad;
      net.energy_gradient(x, grad);
      const double fd = (net.energy(x + h * u) - net.energy(x - h * u)) / (2 * h);
      EXPECT_NEAR(grad.dot(u), fd, 1e-6 * (std::fabs(fd) + std::fabs(net.energy(x))));
      // -tau_A M^A dx^A/dt is the same vector (the Legendre form), layer by layer.
      Vector dx;
      net.rhs(x, dx);
      for (std::size_t A = 0; A < net.n_layers(); ++A) {
        const Vector m = -net.layer(A).tau * net.layer(A).lagrangian->hvp(net.part(x, A), net.part(dx, A));
        EXPECT_LE((net.part(grad, A) - m).norm(), 1e-12 * (1 + m.norm())) << net.layer(A).name;
      }
      // u.(J v) = (J^T u).v: the same products in another order.
      Vector Jv, JTu;
      net.jvp(x, v, Jv);
      net.vjp(x, u, JTu);
      EXPECT_NEAR(u.dot(Jv), JTu.dot(v), 1e-12 * (u.norm() * Jv.norm() + JTu.norm() * v.norm()));
      // Every synapse's parameters: perturb them along a random direction D and rebuild the network.
      const std::vector<Matrix> gw = net.energy_weight_gradients(x);
      ASSERT_EQ(gw.size(), net.n_synapses());
      for (std::size_t s = 0; s < net.n_synapses(); ++s) {
        const SynapsePtr op = net.synapse(s).op;
        const Matrix D = randm(op->parameter_rows(), op->parameter_cols(), rng);
        auto shifted = [&](double eps) { return shifted_network(net, s, D, eps).energy(x); };
        const double fdw = (shifted(h) - shifted(-h)) / (2 * h);
        EXPECT_NEAR((gw[s].array() * D.array()).sum(), fdw, 1e-6 * (std::fabs(fdw) + std::fabs(net.energy(x))))
            << "synapse " << s << " (" << op->describe() << ")";
      }
    }
  }
}

// The batched training functions (layered_euler and its reverse mode, the implicit gradient, the
// batched energy's gradients) against central differences of the loss c . X_T, and against each other.
TEST(Layered, EulerStepsAndTheirGradientsAgreeWithFiniteDifferences) {
  std::mt19937_64 rng(21);
  for (bool fourth : {false, true}) {
    SCOPED_TRACE(fourth ? "L = 4" : "L = 3");
    const LayeredNetwork net = deep_net(rng, fourth);
    const Eigen::Index B = 3, N = net.size();
    const int steps = 6;
    const double dt = 0.15, h = 1e-5;
    const Matrix X0 = randm(B, N, rng, 0.5), C = randm(B, N, rng);
    auto loss = [&](const LayeredNetwork& n, const Matrix& X) {
      return (C.array() * layered_euler(n, X, dt, steps, false, 1).back().array()).sum();
    };
    const std::vector<Matrix> states = layered_euler(net, X0, dt, steps, true, 2);
    ASSERT_EQ(states.size(), static_cast<std::size_t>(steps) + 1);
    // Rows are independent; one thread multiplies all three rows at once, two split them, and the matrix
    // products may then sum in another order: equal to rounding over 6 steps.
    EXPECT_LE((states.back() - layered_euler(net, X0, dt, steps, false, 1).back()).norm(), 1e-12 * states.back().norm());
    const LayeredGradients g = layered_euler_vjp(net, states, dt, C, 2);
    const double scale = std::fabs(loss(net, X0)) + C.norm();
    // The initial states, along a random direction.
    const Matrix D0 = randm(B, N, rng);
    const double fd0 = (loss(net, X0 + h * D0) - loss(net, X0 - h * D0)) / (2 * h);
    EXPECT_NEAR((g.states.array() * D0.array()).sum(), fd0, 1e-6 * scale);
    // Every synapse's parameters, and the currents (with the last synapse).
    for (std::size_t s = 0; s < net.n_synapses(); ++s) {
      const SynapsePtr op = net.synapse(s).op;
      const Matrix D = randm(op->parameter_rows(), op->parameter_cols(), rng);
      const Vector Dc = s + 1 == net.n_synapses() ? randv(N, rng) : Vector();
      const double fd = (loss(shifted_network(net, s, D, h, Dc), X0) - loss(shifted_network(net, s, D, -h, Dc), X0)) / (2 * h);
      const double ours = (g.weights[s].array() * D.array()).sum() + (Dc.size() ? g.currents.dot(Dc) : 0.0);
      EXPECT_NEAR(ours, fd, 1e-6 * scale) << "synapse " << s << " (" << op->describe() << ")";
    }
    // One thread or two: the same sums in another order.
    const LayeredGradients g1 = layered_euler_vjp(net, states, dt, C, 1);
    EXPECT_LE((g1.states - g.states).norm(), 1e-12 * g.states.norm());
    for (std::size_t s = 0; s < net.n_synapses(); ++s)
      EXPECT_LE((g1.weights[s] - g.weights[s]).norm(), 1e-12 * g.weights[s].norm());
    // The batched energy's gradients are energy_gradient and energy_weight_gradients, weighted.
    const Vector c = randv(B, rng);
    const LayeredGradients ge = layered_energies_vjp(net, X0, c, 2);
    const Vector e = layered_energies(net, X0, 2);
    for (Eigen::Index b = 0; b < B; ++b) {
      EXPECT_EQ(e(b), net.energy(X0.row(b).transpose()));
      Vector gx;
      net.energy_gradient(X0.row(b).transpose(), gx);
      EXPECT_LE((ge.states.row(b).transpose() - c(b) * gx).norm(), 1e-14 * (1 + gx.norm()));
    }
  }
}

TEST(Layered, ImplicitGradientIsTheLimitOfBackpropagationThroughALongRun) {
  std::mt19937_64 rng(23);
  const LayeredNetwork net = deep_net(rng, false);
  const Eigen::Index B = 2, N = net.size();
  const double dt = 0.2;
  const int steps = 2000;
  const Matrix X0 = randm(B, N, rng, 0.3), C = randm(B, N, rng);
  const std::vector<Matrix> states = layered_euler(net, X0, dt, steps, true, 2);
  Vector dx;
  for (Eigen::Index b = 0; b < B; ++b) {  // the run has settled
    net.rhs(states.back().row(b).transpose(), dx);
    ASSERT_LT(dx.norm(), 1e-10);
  }
  const LayeredGradients bptt = layered_euler_vjp(net, states, dt, C, 2);
  const LayeredGradients imp = layered_fixed_point_vjp(net, states.back(), C, dt, 1e-12, 100000, 2);
  EXPECT_EQ(imp.states.norm(), 0.0);
  // BPTT adds the terms from before the run settled, damped by the contracting steps since.
  for (std::size_t s = 0; s < net.n_synapses(); ++s)
    EXPECT_LE((imp.weights[s] - bptt.weights[s]).norm(), 1e-8 * bptt.weights[s].norm()) << "synapse " << s;
  EXPECT_LE((imp.currents - bptt.currents).norm(), 1e-8 * bptt.currents.norm());
  // Too few iterations is an error naming the residual, not a silent wrong gradient.
  try {
    layered_fixed_point_vjp(net, states.back(), C, dt, 1e-12, 2, 1);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("did not converge in 2 iterations"), std::string::npos) << e.what();
  }
}

// Training from C++ alone: gradient descent on every synapse and current of a student network, through
// layered_euler_vjp, towards where a teacher network (the same layers, other weights) takes the same
// initial states. The teacher's loss is 0, so the student can reach it; descent with a small step must
// lower the loss at every iteration and by far overall.
TEST(Layered, GradientDescentThroughTheDynamicsTrainsANetwork) {
  std::mt19937_64 rng(27);
  const LayeredNetwork teacher = deep_net(rng, false);
  LayeredNetwork student = deep_net(rng, false);
  const Eigen::Index B = 4;
  const int steps = 8;
  const double dt = 0.2, lr = 0.01;
  const Matrix X0 = randm(B, teacher.size(), rng, 0.5);
  const Matrix Y = layered_euler(teacher, X0, dt, steps, false, 1).back();
  auto loss_of = [&](const Matrix& XT) { return 0.5 * (XT - Y).squaredNorm() / B; };
  double first = 0, last = 0, prev = INFINITY;
  for (int it = 0; it < 60; ++it) {
    const std::vector<Matrix> states = layered_euler(student, X0, dt, steps, true, 2);
    const double loss = loss_of(states.back());
    if (it == 0) first = loss;
    last = loss;
    EXPECT_LT(loss, prev) << "iteration " << it;
    prev = loss;
    const LayeredGradients g = layered_euler_vjp(student, states, dt, (states.back() - Y) / double(B), 2);
    std::vector<LayerSpec> layers;
    std::vector<SynapseSpec> syn;
    for (std::size_t A = 0; A < student.n_layers(); ++A) {
      layers.push_back(student.layer(A));
      layers[A].current -= lr * student.part(g.currents, A);
    }
    for (std::size_t s = 0; s < student.n_synapses(); ++s)
      syn.push_back(student.synapse(s));
    for (std::size_t s = 0; s < student.n_synapses(); ++s)
      syn[s] = SynapseSpec{syn[s].from, syn[s].to, shifted_network(student, s, g.weights[s], -lr).synapse(s).op};
    student = LayeredNetwork(layers, syn);
  }
  EXPECT_LT(last, 0.2 * first);
}

TEST(Layered, TrainingFunctionsRefuseBadInput) {
  std::mt19937_64 rng(25);
  const LayeredNetwork net = deep_net(rng, false);
  const Matrix X = randm(2, net.size(), rng);
  EXPECT_THROW(layered_euler(net, randm(2, net.size() + 1, rng), 0.1, 3, false), InvalidArgument);
  EXPECT_THROW(layered_euler(net, X, 0.0, 3, false), InvalidArgument);
  EXPECT_THROW(layered_euler(net, X, std::nan(""), 3, false), InvalidArgument);
  EXPECT_THROW(layered_euler(net, X, 0.1, -1, false), InvalidArgument);
  EXPECT_THROW(layered_euler(net, X, 1e8, 50, false), Error);  // blows up: not finite after some step
  EXPECT_THROW(layered_energies_vjp(net, X, Vector::Ones(3)), InvalidArgument);
  EXPECT_THROW(layered_euler_vjp(net, {}, 0.1, X), InvalidArgument);
  EXPECT_THROW(layered_fixed_point_vjp(net, X, X, 0.1, 0.0, 10), InvalidArgument);
  EXPECT_EQ(layered_euler(net, X, 0.1, 0, false).back(), X);
}

TEST(Layered, EnergyNeverIncreasesAlongTheDynamics) {
  std::mt19937_64 rng(4);
  for (bool fourth : {false, true})
    for (Method m : {Method::DormandPrince, Method::RK4}) {
      SCOPED_TRACE(::testing::Message() << (fourth ? "L = 4 " : "L = 3 ") << to_string(m));
      const LayeredNetwork net = deep_net(rng, fourth);
      SimulateOptions o;
      o.method = m;
      o.dt = 0.01;
      o.t_end = 8.0;
      o.rtol = 1e-9;
      o.atol = 1e-12;
      const LayeredTrajectory tr = simulate(net, randv(net.size(), rng, 1.0), o);
      ASSERT_GT(tr.t.size(), 10u);
      EXPECT_EQ(tr.non_psd_steps, 0);
      for (std::size_t k = 0; k < tr.t.size(); ++k) {
        EXPECT_LE(tr.energy_rate[k], 1e-12 * (1 + std::fabs(tr.energy[k]))) << "t = " << tr.t[k];
        if (k > 0) {
          EXPECT_LE(tr.energy[k], tr.energy[k - 1] + 1e-10 * (1 + std::fabs(tr.energy[k]))) << "t = " << tr.t[k];
        }
      }
      // The energy fell, and near the end the state barely moves (it settles, Section 2).
      EXPECT_LT(tr.energy.back(), tr.energy.front());
      Vector d;
      net.rhs(tr.x.back(), d);
      Vector d0;
      net.rhs(tr.x.front(), d0);
      EXPECT_LT(d.norm(), 0.1 * d0.norm());
    }
}

// The adiabatic limit. Two layers with h fast: the effective energy and dynamics of Section 3
// (Network::effective_energy, effective_rhs: eqs. 8, 13, 21 and 14, 22).
TEST(Layered, AFastHiddenLayerGivesTheEffectiveModelsOfSection3) {
  std::mt19937_64 rng(5);
  const Matrix xi = randm(6, 4, rng);
  for (const auto& [Lv, Lh] : std::vector<std::pair<LagrangianPtr, LagrangianPtr>>{
           {lagrangians::identity(), lagrangians::log_sum_exp(2.0)},     // model B
           {lagrangians::spherical(), lagrangians::exp(1.0)},           // model C
           {lagrangians::log_cosh(3.0), lagrangians::rectified_power(3)}}) {  // model A's smooth form
    SCOPED_TRACE(Lv->name() + " / " + Lh->name());
    NetworkParams p;
    p.current = randv(4, rng, 0.2);
    const Network net(xi, Lv, Lh, p);
    const LayeredNetwork lay = LayeredNetwork::from_network(net);
    const AdiabaticLayeredSystem sys(lay, {"h"});
    ASSERT_EQ(sys.size(), 4);
    const Vector v = randv(4, rng);
    // The same terms: E = [(v - I).g - L_v] + [h.f - L_h] - f.(xi g) with h = xi g, where h.f and f.(xi g)
    // are the same products (they cancel exactly here, as eq. 8's derivation cancels them).
    EXPECT_NEAR(sys.energy(v), net.effective_energy(v), 1e-13 * (1 + std::fabs(net.effective_energy(v))));
    Vector a, b;
    sys.rhs(0, v, a);
    net.effective_rhs(v, b);
    EXPECT_LE((a - b).norm(), 1e-13 * (1 + b.norm()));
    EXPECT_LE((lay.part(sys.full(v), 1) - net.hidden_steady_state(v)).norm(), 1e-13 * (1 + net.hidden_steady_state(v).norm()));
  }
}

// Three and four layers with the memory layer fast: the full network with tau_mem = eps follows the
// effective dynamics to O(eps) (halving eps halves the distance at t = 2), and the effective energy never
// increases.
TEST(Layered, AFastLayerConvergesToTheEffectiveDynamicsAtOrderTau) {
  for (bool fourth : {false, true}) {
    SCOPED_TRACE(fourth ? "L = 4" : "L = 3");
    std::mt19937_64 rng(6);
    const LayeredNetwork base = deep_net(rng, fourth);
    const std::size_t mem = base.layer_index("memories");
    auto with_tau = [&](double tau) {
      std::vector<LayerSpec> layers;
      std::vector<SynapseSpec> syn;
      for (std::size_t A = 0; A < base.n_layers(); ++A) layers.push_back(base.layer(A));
      for (std::size_t s = 0; s < base.n_synapses(); ++s) syn.push_back(base.synapse(s));
      layers[mem].tau = tau;
      return LayeredNetwork(layers, syn);
    };
    const AdiabaticLayeredSystem eff(base, {"memories"});
    const Vector y0 = randv(eff.size(), rng, 1.0);
    SimulateOptions o;
    o.method = Method::DormandPrince;
    o.t_end = 2.0;
    o.rtol = 1e-11;
    o.atol = 1e-13;
    const LayeredTrajectory et = simulate(eff, y0, o);
    for (std::size_t k = 1; k < et.t.size(); ++k)
      EXPECT_LE(et.energy[k], et.energy[k - 1] + 1e-10 * (1 + std::fabs(et.energy[k]))) << "t = " << et.t[k];
    EXPECT_EQ(et.non_psd_steps, 0);
    std::vector<double> err;
    for (double tau : {0.02, 0.01, 0.005}) {
      const LayeredNetwork net = with_tau(tau);
      const LayeredTrajectory ft = simulate(net, eff.full(y0), o);  // the fast layer starts at its steady state
      err.push_back((eff.slow(ft.x.back()) - eff.slow(et.x.back())).norm());
    }
    // O(tau): each halving divides the error by ~2 (the next order adds O(tau^2)).
    EXPECT_GT(err[0] / err[1], 1.7) << err[0] << " " << err[1];
    EXPECT_LT(err[0] / err[1], 2.3) << err[0] << " " << err[1];
    EXPECT_GT(err[1] / err[2], 1.7) << err[1] << " " << err[2];
    EXPECT_LT(err[1] / err[2], 2.3) << err[1] << " " << err[2];
  }
  std::mt19937_64 rng(7);
  const LayeredNetwork net = deep_net(rng, true);
  EXPECT_THROW(AdiabaticLayeredSystem(net, {}), InvalidArgument);
  EXPECT_THROW(AdiabaticLayeredSystem(net, {"features", "memories"}), InvalidArgument);  // joined by a synapse
  EXPECT_THROW(AdiabaticLayeredSystem(net, {"memories", "memories"}), InvalidArgument);
  EXPECT_THROW(AdiabaticLayeredSystem(net, {"nope"}), InvalidArgument);
  EXPECT_NO_THROW(AdiabaticLayeredSystem(net, {"features", "top"}));  // not joined
}

// Section 2's lower bound for L layers: random states (of every scale, up to 1e3) never go below it;
// networks it cannot decide are Unknown, with the reason.
TEST(Layered, EnergyBoundHoldsWhereItIsClaimed) {
  std::mt19937_64 rng(8);
  const LayeredNetwork bounded = deep_net(rng, false);  // log_cosh, softplus, log_sum_exp: all bounded
  const LayeredNetwork with_identity = deep_net(rng, true);  // + an identity layer beside bounded ones
  for (const LayeredNetwork* net : {&bounded, &with_identity}) {
    const Network::EnergyBound b = net->energy_bound();
    ASSERT_EQ(b.verdict, Network::EnergyBound::Verdict::Bounded) << b.why;
    ASSERT_TRUE(std::isfinite(b.lower));
    double lowest = INFINITY;
    for (int k = 0; k < 2000; ++k) {
      const double scale = std::pow(10.0, -2.0 + 5.0 * (k % 100) / 100.0);
      const double e = net->energy(randv(net->size(), rng, scale));
      EXPECT_GE(e, b.lower) << "scale " << scale;
      lowest = std::min(lowest, e);
    }
    EXPECT_GT(lowest, b.lower);  // (valid, not tight: ~-20 against a bound of ~-300 here)
    // The minimum reached by the dynamics too (from a large start).
    SimulateOptions o;
    o.t_end = 20;
    const LayeredTrajectory tr = simulate(*net, randv(net->size(), rng, 3.0), o);
    EXPECT_GE(tr.energy.back(), b.lower);
  }
  // Two joined identity layers, and a non-convex Lagrangian: Unknown, saying why.
  auto id = lagrangians::identity();
  const LayeredNetwork ii({{"a", 2, id}, {"b", 2, id}}, {{"a", "b", std::make_shared<DenseSynapse>(Matrix::Identity(2, 2))}});
  EXPECT_EQ(ii.energy_bound().verdict, Network::EnergyBound::Verdict::Unknown);
  EXPECT_NE(ii.energy_bound().why.find("joins the identity layers"), std::string::npos);
  const LayeredNetwork odd({{"a", 2, lagrangians::power(3)}}, {});
  EXPECT_EQ(odd.energy_bound().verdict, Network::EnergyBound::Verdict::Unknown);
  EXPECT_NE(odd.energy_bound().why.find("not convex"), std::string::npos);
}

TEST(Layered, BadNetworksAreRefusedNamingWhatIsWrong) {
  auto id = lagrangians::identity();
  auto dense = [](Eigen::Index r, Eigen::Index c) { return std::make_shared<DenseSynapse>(Matrix::Ones(r, c)); };
  auto expect_msg = [](auto&& make, const std::string& part) {
    try {
      make();
      ADD_FAILURE() << "no error; expected one naming " << part;
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  expect_msg([&] { LayeredNetwork({}, {}); }, "no layers");
  expect_msg([&] { LayeredNetwork({{"a", 2, id}, {"a", 3, id}}, {}); }, "'a': the name is used twice");
  expect_msg([&] { LayeredNetwork({{"a", 0, id}}, {}); }, "'a': size must be >= 1");
  expect_msg([&] { LayeredNetwork({{"a", 2, nullptr}}, {}); }, "'a': the Lagrangian is null");
  expect_msg([&] { LayeredNetwork({{"a", 2, id, -1.0}}, {}); }, "'a': tau must be finite and > 0");
  expect_msg([&] { LayeredNetwork({{"a", 2, id, 1.0, Vector::Ones(3)}}, {}); }, "'a': the current has length 3");
  expect_msg([&] { LayeredNetwork({{"a", 2, id}, {"b", 3, id}}, {{"a", "c", dense(3, 2)}}); }, "no layer named 'c'");
  expect_msg([&] { LayeredNetwork({{"a", 2, id}, {"b", 3, id}}, {{"a", "a", dense(2, 2)}}); }, "two different layers");
  expect_msg([&] { LayeredNetwork({{"a", 2, id}, {"b", 3, id}}, {{"a", "b", dense(3, 4)}}); },
             "reads 4 neurons but layer 'a' has 2");
  expect_msg([&] { LayeredNetwork({{"a", 2, id}, {"b", 3, id}}, {{"a", "b", dense(4, 2)}}); },
             "writes 4 neurons but layer 'b' has 3");
  const LayeredNetwork ok({{"a", 2, id}, {"b", 3, id}}, {{"a", "b", dense(3, 2)}});
  expect_msg([&] { ok.energy(Vector::Zero(4)); }, "x has length 4 but the layers have 5 neurons");
  expect_msg([&] { ok.energy(Vector::Constant(5, NAN)); }, "x contains NaN or Inf");
}
