// assocmem/layered.hpp - hierarchical associative memories: any number of layers, each defined by its
// Lagrangian, coupled by symmetric synapses (dense matrices or 2-D convolutions). Krotov, "Hierarchical
// Associative Memory" (2021, arXiv 2107.06446); the two-layer network of eq. (1) is the case L = 2.
//
// Layers A = 1..L with currents x^A, time constants tau_A, Lagrangians L^A (activations g^A = dL^A/dx^A,
// eq. 3 layer by layer) and input currents I_A. A synapse s from layer a(s) to layer b(s) is a linear map
// W_s (a dense matrix, or a convolution whose feedback is the transposed convolution):
//
//   E = sum_A [ x^A . g^A - L^A(x^A) ] - sum_s g^b(s) . W_s g^a(s) - sum_A I_A . g^A            (eq. 2, L layers)
//   tau_A dx^A/dt = sum_{s: b(s) = A} W_s g^a(s) + sum_{s: a(s) = A} W_s^T g^b(s) - x^A + I_A   (eq. 1, L layers)
//   dE/dt = - sum_A tau_A (dx^A/dt)^T M^A (dx^A/dt),  M^A = Hess L^A(x^A)                        (eq. 4, L layers)
//
// so the energy never increases where every Hessian is positive semi-definite. With layers v, h and one
// dense synapse xi from v to h this is eqs. (1), (2), (4) (alpha = 1): LayeredNetwork::from_network.
#pragma once

#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "assocmem/dynamics.hpp"
#include "assocmem/lagrangian.hpp"
#include "assocmem/network.hpp"
#include "assocmem/types.hpp"

namespace assocmem {

/// Batches of vectors as the rows of a matrix (B x n; row b is sample b): inputs and outputs of the
/// synapses' batched products, which may be column blocks of a larger batch (one layer's neurons).
using RowsIn = Eigen::Ref<const Matrix>;
using RowsOut = Eigen::Ref<Matrix>;

/// A linear map W from the activations of one layer (in_size numbers) to currents of another
/// (out_size numbers), with its transpose for the feedback. Immutable; thread-safe. The products are
/// batched (rows = samples, as a trained network runs them); the one-vector forms are the batch of one.
class Synapse {
 public:
  virtual ~Synapse() = default;
  /// e.g. "dense 64x4096", "conv2d 1x64x64 -> 16x32x32, kernel 4x4, stride 2, padding 1".
  virtual std::string describe() const = 0;
  virtual Eigen::Index in_size() const = 0;
  virtual Eigen::Index out_size() const = 0;
  /// out += X W^T: row b of out (B x out_size) gains W x_b, x_b row b of X (B x in_size).
  virtual void apply_rows(const RowsIn& X, RowsOut out) const = 0;
  /// out += Y W: row b of out (B x in_size) gains W^T y_b (Y: B x out_size).
  virtual void apply_transpose_rows(const RowsIn& Y, RowsOut out) const = 0;
  /// grad += sum_b d(y_b . W x_b)/d(parameters): Y^T X for a dense W; for a convolution, each kernel
  /// entry's sum of y[out] x[in] over the positions it joins and the rows.
  virtual void add_weight_gradient_rows(const RowsIn& Y, const RowsIn& X, Matrix& grad) const = 0;
  /// An upper bound of the operator norm |W|_2 (valid, not tight), for LayeredNetwork::energy_bound.
  virtual double norm_bound() const = 0;
  /// The parameters' shape: rows x cols of the matrix the weight gradients fill.
  virtual Eigen::Index parameter_rows() const = 0;
  virtual Eigen::Index parameter_cols() const = 0;

  /// out += W x (x: in_size, out: out_size).
  void apply(const Vector& x, Vector& out) const;
  /// out += W^T y (y: out_size, out: in_size).
  void apply_transpose(const Vector& y, Vector& out) const;
  /// grad += d(y . W x)/d(parameters).
  void add_weight_gradient(const Vector& y, const Vector& x, Matrix& grad) const;
};
using SynapsePtr = std::shared_ptr<const Synapse>;

/// W: a dense out_size x in_size matrix (finite, not empty). Its products are Eigen's matrix products.
class DenseSynapse final : public Synapse {
 public:
  explicit DenseSynapse(Matrix W);
  std::string describe() const override;
  Eigen::Index in_size() const override { return W_.cols(); }
  Eigen::Index out_size() const override { return W_.rows(); }
  void apply_rows(const RowsIn& X, RowsOut out) const override { out.noalias() += X * W_.transpose(); }
  void apply_transpose_rows(const RowsIn& Y, RowsOut out) const override { out.noalias() += Y * W_; }
  void add_weight_gradient_rows(const RowsIn& Y, const RowsIn& X, Matrix& grad) const override {
    grad.noalias() += Y.transpose() * X;
  }
  /// The Frobenius norm.
  double norm_bound() const override { return W_.norm(); }
  Eigen::Index parameter_rows() const override { return W_.rows(); }
  Eigen::Index parameter_cols() const override { return W_.cols(); }
  const Matrix& weights() const { return W_; }

 private:
  Matrix W_;
};

/// The shape of a layer read as images: channels x height x width, flattened channel by channel, each
/// channel row by row (index (c * height + y) * width + x), as torch's NCHW without the batch.
struct ImageShape {
  Eigen::Index channels = 1, height = 1, width = 1;
  Eigen::Index size() const { return channels * height * width; }
};

/// A 2-D convolution (cross-correlation, as torch.nn.functional.conv2d) with weights shared over
/// positions: out[o, y, x] = sum_{c, i, j} K[o, c, i, j] in[c, y s + i - p, x s + j - p] (zero outside
/// the image). Its transpose (the feedback) is the transposed convolution. Output shape:
/// out_channels x ((H + 2p - kh) / s + 1) x ((W + 2p - kw) / s + 1), which must be at least 1 x 1.
/// Computed as matrix products on the unfolded input (im2col: one column per output position, one row
/// per kernel entry); the products and their transposes walk one table of which input pixel each
/// (kernel entry, position) reads, so W^T is exactly the adjoint of W.
class Conv2dSynapse final : public Synapse {
 public:
  /// kernel: out_channels x (in.channels kh kw), row o holding K[o, c, i, j] at (c kh + i) kw + j.
  Conv2dSynapse(ImageShape in, Matrix kernel, Eigen::Index kh, Eigen::Index kw, Eigen::Index stride = 1,
                Eigen::Index padding = 0);
  std::string describe() const override;
  Eigen::Index in_size() const override { return in_.size(); }
  Eigen::Index out_size() const override { return out_.size(); }
  void apply_rows(const RowsIn& X, RowsOut out) const override;
  void apply_transpose_rows(const RowsIn& Y, RowsOut out) const override;
  void add_weight_gradient_rows(const RowsIn& Y, const RowsIn& X, Matrix& grad) const override;
  /// sqrt(H_out W_out) |K|_F: each kernel entry appears at most once per output position, so this bounds
  /// the Frobenius norm of the convolution's matrix.
  double norm_bound() const override;
  Eigen::Index parameter_rows() const override { return K_.rows(); }
  Eigen::Index parameter_cols() const override { return K_.cols(); }
  const ImageShape& in_shape() const { return in_; }
  const ImageShape& out_shape() const { return out_; }
  const Matrix& kernel() const { return K_; }
  Eigen::Index kernel_height() const { return kh_; }
  Eigen::Index kernel_width() const { return kw_; }
  Eigen::Index stride() const { return s_; }
  Eigen::Index padding() const { return p_; }

 private:
  // The unfolded input of one sample: (in.channels kh kw) x (H_out W_out); entry (k, q) is the input
  // pixel that kernel entry k meets at output position q, or 0 outside the image.
  void unfold(const double* x, Matrix& cols) const;
  ImageShape in_, out_;
  Matrix K_;
  Eigen::Index kh_, kw_, s_, p_;
  std::vector<Eigen::Index> tap_;  // the input index for (k, q) at k * positions + q, or -1 (padding)
};

/// One layer of a LayeredNetwork.
struct LayerSpec {
  LayerSpec() = default;
  LayerSpec(std::string name_, Eigen::Index size_, LagrangianPtr lagrangian_, double tau_ = 1.0, Vector current_ = {})
      : name(std::move(name_)), size(size_), lagrangian(std::move(lagrangian_)), tau(tau_), current(std::move(current_)) {}
  std::string name;          ///< unique, not empty
  Eigen::Index size = 0;     ///< number of neurons, >= 1
  LagrangianPtr lagrangian;  ///< defines the layer's activation (eq. 3)
  double tau = 1.0;          ///< time constant, > 0
  Vector current;            ///< input current I_A (length size), or empty for 0
};

/// A synapse between two different layers, named by their names: W maps g^from to currents of `to`.
struct SynapseSpec {
  std::string from, to;
  SynapsePtr op;
};

/// The network of L layers (see the top of this file). Immutable; thread-safe. The state is one vector
/// x = [x^1; ...; x^L] (layers in the order given).
class LayeredNetwork {
 public:
  /// Throws InvalidArgument naming the layer or synapse that is wrong: no layers, an empty or repeated
  /// name, a size < 1, a null Lagrangian, tau not > 0, a current of the wrong length or not finite, a
  /// synapse naming an unknown layer or a layer to itself, or whose sizes differ from its layers'.
  LayeredNetwork(std::vector<LayerSpec> layers, std::vector<SynapseSpec> synapses);

  /// eq. (1) as layers v (N_f, L_v, tau_f, current I) and h (N_h, L_h, tau_h) with one dense synapse
  /// xi from v to h. Needs alpha = 1 (eq. 19's alpha != 1 is not a layered energy): InvalidArgument else.
  static LayeredNetwork from_network(const Network& net);

  std::size_t n_layers() const { return layers_.size(); }
  const LayerSpec& layer(std::size_t A) const { return layers_.at(A); }
  /// The index of the layer named `name`; InvalidArgument naming the known layers if there is none.
  std::size_t layer_index(const std::string& name) const;
  std::size_t n_synapses() const { return synapses_.size(); }
  const SynapseSpec& synapse(std::size_t s) const { return synapses_.at(s); }
  /// Total number of neurons (the length of a state).
  Eigen::Index size() const { return offsets_.back(); }
  /// Where layer A's currents start in a state.
  Eigen::Index offset(std::size_t A) const { return offsets_.at(A); }
  /// Layer A's part of a state x.
  Vector part(const Vector& x, std::size_t A) const { return x.segment(offsets_[A], layers_[A].size); }

  /// The activations g^A of every layer, stacked as the state is.
  Vector activations(const Vector& x) const;
  /// dx/dt (eq. 1 for L layers).
  void rhs(const Vector& x, Vector& dx) const;
  /// The energy (eq. 2 for L layers).
  double energy(const Vector& x) const;
  /// dE/dt along the trajectory through x, from the Hessian-vector products (eq. 4 for L layers).
  double energy_rate(const Vector& x) const;
  /// The same sum over the layers A with skip[A] false (the slow layers of the adiabatic limit, whose
  /// fast layers sit where dE/dx^A = 0).
  double energy_rate(const Vector& x, const std::vector<bool>& skip) const;
  /// The Jacobian of rhs at x applied to u: (sum W M u_other - u_A) / tau_A for each layer A.
  void jvp(const Vector& x, const Vector& u, Vector& out) const;
  /// The currents every synapse sends into each layer, sum_s W g^a + sum_s W^T g^b, stacked as the
  /// state, at activations g (from activations()).
  Vector fields(const Vector& g) const;
  /// The gradient of the energy in the state: dE/dx^A = M^A (x^A - sum W g - I_A) = -tau_A M^A dx^A/dt
  /// (the Legendre form makes every layer's gradient its Hessian times the residual of eq. 1).
  void energy_gradient(const Vector& x, Vector& out) const;
  /// The gradients of the energy in each synapse's parameters (shaped as Synapse::add_weight_gradient
  /// fills them): dE/dW_s = -d(g^b . W_s g^a)/dW_s.
  std::vector<Matrix> energy_weight_gradients(const Vector& x) const;
  /// u^T J at x, the transpose of jvp: for each layer A, M^A (sum of the synapses' maps applied to
  /// u_B / tau_B of the layers B they join A to) - u_A / tau_A (M^A is symmetric). For reverse-mode
  /// gradients through the dynamics.
  void vjp(const Vector& x, const Vector& u, Vector& out) const;
  /// Adds d(u . rhs(x))/d(parameters) to `weights` (one matrix per synapse, shaped as
  /// energy_weight_gradients) and to `currents` (stacked as a state): for a synapse from a to b,
  /// (u^b / tau_b) . W g^a + (u^a / tau_a) . W^T g^b; for the currents, u^A / tau_A. With vjp this is the
  /// whole reverse-mode step through eq. (1).
  void add_rhs_parameter_vjp(const Vector& x, const Vector& u, std::vector<Matrix>& weights, Vector& currents) const;
  /// The batched forms (rows = samples, each matrix B x size()), which the one-vector methods above are
  /// with B = 1: activations, the fields of activations G, dx/dt, U^T J, add_rhs_parameter_vjp summed
  /// over the rows, and the energy with its gradients. They do not check their inputs (the callers do, once per batch).
  void activations_rows(const Matrix& X, Matrix& G) const;
  void fields_rows(const Matrix& G, Matrix& field) const;
  void rhs_rows(const Matrix& X, Matrix& dX) const;
  void vjp_rows(const Matrix& X, const Matrix& U, Matrix& out) const;
  void add_rhs_parameter_vjp_rows(const Matrix& X, const Matrix& U, std::vector<Matrix>& weights, Vector& currents) const;
  /// The energy of each row, dE/dx of each row, and sum_b c_b dE(x_b)/d(parameters) added to `weights`
  /// (per synapse) and `currents` (dE/dI_A = -g^A).
  void energy_rows(const Matrix& X, Vector& e) const;
  /// Each layer's Hessian M^A at row b of X applied to row b of U (the activations' Jacobian, symmetric).
  void hessians_rows(const Matrix& X, const Matrix& U, Matrix& out) const;
  /// U with each layer's columns divided by its tau.
  Matrix over_tau_rows(const Matrix& U) const;
  void energy_gradient_rows(const Matrix& X, Matrix& out) const;
  void add_energy_parameter_gradients_rows(const Matrix& X, const Vector& c, std::vector<Matrix>& weights,
                                           Vector& currents) const;
  /// Whether synapse s joins layers A and B (in either direction).
  bool joins(std::size_t s, std::size_t A, std::size_t B) const {
    return (from_[s] == A && to_[s] == B) || (from_[s] == B && to_[s] == A);
  }
  /// Whether every layer's Hessian is positive semi-definite at x (eq. 4 then gives dE/dt <= 0).
  bool hessian_psd_at(const Vector& x) const;
  /// Whether every Lagrangian is convex everywhere (then the energy never increases on any trajectory).
  bool convex() const;

  /// Whether the energy is bounded below (Section 2: with descent, a bounded energy makes the dynamics
  /// settle). With convex Lagrangians the Legendre term of each layer is the conjugate L*(g) >= -L(0)
  /// (Fenchel-Young at x = 0), so with |g^A| <= G_A:
  ///  - every activation bounded: E >= -sum_A L^A(0) - sum_s |W_s| G_a G_b - sum_A |I_A| G_A;
  ///  - identity layers (L* = |g|^2 / 2) whose neighbours all have bounded activations: each adds
  ///    -(sum_s |W_s| G_neighbour + |I_A|)^2 / 2 instead of its synapses' and current's terms;
  ///  - anything else (a non-convex Lagrangian, two unbounded layers joined, another unbounded one): Unknown.
  /// |W_s| is Synapse::norm_bound, so `lower` is valid, not tight.
  Network::EnergyBound energy_bound() const;

  /// Throws InvalidArgument unless x has length size() and is finite.
  void check_state(const Vector& x, const char* what = "x") const;

 private:
  std::vector<LayerSpec> layers_;
  std::vector<SynapseSpec> synapses_;
  std::vector<std::size_t> from_, to_;  // layer indices of each synapse
  std::vector<Eigen::Index> offsets_;   // L + 1 entries
};

/// A LayeredNetwork as an OdeSystem on its stacked state, with the exact Jacobian-vector product.
class LayeredSystem final : public OdeSystem {
 public:
  explicit LayeredSystem(const LayeredNetwork& net) : net_(net) {}
  Eigen::Index size() const override { return net_.size(); }
  void rhs(double, const Vector& y, Vector& dydt) const override { net_.rhs(y, dydt); }
  bool jvp(double, const Vector& y, const Vector& u, Vector& out) const override {
    net_.jvp(y, u, out);
    return true;
  }

 private:
  const LayeredNetwork& net_;
};

/// The adiabatic limit (Section 3 for two layers; the layers of a hierarchy alike): layers whose tau -> 0
/// sit at their steady state x^A = sum_s W g + I_A (the first eq. 1 with dx^A/dt = 0) given the others.
/// No synapse may join two fast layers (each steady state is then explicit in the slow layers). The
/// system's state is the slow layers' currents, stacked in the network's order; at the steady state
/// dE/dx^A = M^A (x^A - sum W g - I_A) = 0, so the effective energy E(full(y)) obeys eq. (4) over the
/// slow layers alone and never increases for convex Lagrangians. With layers v, h and h fast this is
/// Network::effective_energy (eqs. 8, 13, 21) and its dynamics (eqs. 14, 22).
class AdiabaticLayeredSystem final : public OdeSystem {
 public:
  /// fast: the names of the layers integrated out (at least one, not all). InvalidArgument naming the
  /// layer: an unknown or repeated name, all layers fast, or a synapse between two fast layers.
  AdiabaticLayeredSystem(const LayeredNetwork& net, const std::vector<std::string>& fast);
  Eigen::Index size() const override { return n_slow_; }
  void rhs(double t, const Vector& y, Vector& dydt) const override;
  /// The full state: y's slow layers, the fast ones at their steady state.
  Vector full(const Vector& y) const;
  /// The slow layers' part of a full state x.
  Vector slow(const Vector& x) const;
  /// The effective energy E(full(y)).
  double energy(const Vector& y) const { return net_.energy(full(y)); }
  /// Its rate along the effective dynamics: eq. (4) over the slow layers.
  double energy_rate(const Vector& y) const;
  bool is_fast(std::size_t A) const { return fast_[A]; }
  const LayeredNetwork& network() const { return net_; }

 private:
  const LayeredNetwork& net_;
  std::vector<bool> fast_;
  Eigen::Index n_slow_ = 0;
};

/// What simulate() returns for a layered network: the recorded stacked states (LayeredNetwork::part
/// splits them), their energies and rates, and how the run ended (the same fields as Trajectory).
struct LayeredTrajectory {
  std::vector<double> t;
  std::vector<Vector> x;
  std::vector<double> energy, energy_rate;
  long non_psd_steps = 0;
  double first_non_psd_t = std::numeric_limits<double>::quiet_NaN();
  IntegrateResult result;
};

/// Integrates the effective dynamics of the adiabatic limit from the slow layers' state y0; the
/// records hold full states (fast layers at their steady state) and the effective energy and rate.
LayeredTrajectory simulate(const AdiabaticLayeredSystem& sys, const Vector& y0, const SimulateOptions& options);

/// Integrates the layered network from x0 with the same integrators, options, energy recording, PSD
/// accounting and blow-up check as simulate() of the two-layer network.
LayeredTrajectory simulate(const LayeredNetwork& net, const Vector& x0, const SimulateOptions& options);

// ---------------------------------------------------------------------------------------------
// Training (assocmem.torch's layered functions): a batch of states is a matrix with one row per sample
// (B x N, as numpy's (B, N)). Every product is the network's own (rhs, vjp, energy_gradient, add_weight_gradient), so the
// dynamics, the energy and their gradients share one formula; the rows are split over `threads`
// (0: every CPU this process may use).

/// Gradients of a scalar loss in the inputs of a batched function below: in its input states (B x N), in
/// each synapse's parameters (shaped as LayeredNetwork::energy_weight_gradients) and in the layers' input
/// currents (stacked as a state, N); the parameters' gradients are summed over the batch.
struct LayeredGradients {
  Matrix states;
  std::vector<Matrix> weights;
  Vector currents;
};

/// The energy (eq. 2 for L layers) of each row of X (B x N).
Vector layered_energies(const LayeredNetwork& net, const Matrix& X, int threads = 0);
/// The gradients of sum_b c_b E(x_b): states M^A (x^A - sum W g - I_A) c_b, weights -sum_b c_b
/// d(g^b . W g^a)/dW, currents -sum_b c_b g_b.
LayeredGradients layered_energies_vjp(const LayeredNetwork& net, const Matrix& X, const Vector& c, int threads = 0);
/// The activations g = dL/dx (eq. 3 per layer) of each row of X, and the vector-Jacobian product
/// U^T dg/dX = the Hessians applied to U row by row (each Hessian is symmetric).
Matrix layered_activations(const LayeredNetwork& net, const Matrix& X, int threads = 0);
Matrix layered_activations_vjp(const LayeredNetwork& net, const Matrix& X, const Matrix& U, int threads = 0);

/// `steps` explicit Euler steps x <- x + dt dx/dt (eq. 1 for L layers) from each row of X0, as a
/// trained network unrolls its dynamics. Returns the states after every step (steps + 1 matrices B x N,
/// X0 first) when keep_all, else {X0, X_steps}. dt > 0, steps >= 0; a state that stops being finite
/// throws Error naming the step and the sample (dt too large for the network's time constants).
std::vector<Matrix> layered_euler(const LayeredNetwork& net, const Matrix& X0, double dt, int steps, bool keep_all,
                                  int threads = 0);
/// Reverse mode through layered_euler: states is its keep_all result, grad_last dL/dX_steps (B x N).
/// The adjoint a_t = a_{t+1} + dt J(x_t)^T a_{t+1} (LayeredNetwork::vjp), the parameters' gradients
/// dt sum_t d(a_{t+1} . rhs(x_t))/d(parameters) (add_rhs_parameter_vjp); states: dL/dX0.
LayeredGradients layered_euler_vjp(const LayeredNetwork& net, const std::vector<Matrix>& states, double dt,
                                   const Matrix& grad_last, int threads = 0);
/// The implicit gradient at fixed points X* (rhs(x*) = 0, deep-equilibrium style): for each sample, w
/// solving J(x*)^T w = -dL/dx* by the adjoint iteration w <- w + dt (J^T w + dL/dx*) (which converges
/// wherever Euler steps of size dt converge to x*: I + dt J^T has the spectrum of I + dt J), then the
/// parameters' gradients d(w . rhs(x*))/d(parameters) (the limit of layered_euler_vjp over infinitely
/// many steps at x*); states: 0 (x* does not depend on where the run began inside its basin). Stops when
/// |J^T w + dL/dx*| <= tol |dL/dx*|; after max_iterations without it, throws Error naming the sample
/// and the residual (x* is not a stable fixed point: run more steps, or a smaller dt).
LayeredGradients layered_fixed_point_vjp(const LayeredNetwork& net, const Matrix& Xstar, const Matrix& grad,
                                         double dt, double tol, int max_iterations, int threads = 0);

}  // namespace assocmem
