// Hierarchical associative memories: eqs. (1), (2), (4) for L layers (assocmem/layered.hpp).
#include "assocmem/layered.hpp"

#include <algorithm>
#include <cmath>
#include <set>

#include "assocmem/error.hpp"
#include "simulate_core.hpp"

namespace assocmem {

// ---------------------------------------------------------------------------------------------
// Synapses.

DenseSynapse::DenseSynapse(Matrix W) : W_(std::move(W)) {
  ASSOCMEM_CHECK_ARG(W_.rows() > 0 && W_.cols() > 0, "dense synapse: the weight matrix is empty (", W_.rows(), " x ",
                     W_.cols(), ")");
  check_finite(W_, "dense synapse weights");
}

std::string DenseSynapse::describe() const { return detail::concat("dense ", W_.rows(), "x", W_.cols()); }

Conv2dSynapse::Conv2dSynapse(ImageShape in, Matrix kernel, Eigen::Index kh, Eigen::Index kw, Eigen::Index stride,
                             Eigen::Index padding)
    : in_(in), K_(std::move(kernel)), kh_(kh), kw_(kw), s_(stride), p_(padding) {
  ASSOCMEM_CHECK_ARG(in_.channels >= 1 && in_.height >= 1 && in_.width >= 1,
                     "conv2d synapse: the input shape must be at least 1 x 1 x 1, got ", in_.channels, " x ",
                     in_.height, " x ", in_.width);
  ASSOCMEM_CHECK_ARG(kh_ >= 1 && kw_ >= 1, "conv2d synapse: the kernel must be at least 1 x 1, got ", kh_, " x ", kw_);
  ASSOCMEM_CHECK_ARG(s_ >= 1, "conv2d synapse: stride must be >= 1, got ", s_);
  ASSOCMEM_CHECK_ARG(p_ >= 0, "conv2d synapse: padding must be >= 0, got ", p_);
  ASSOCMEM_CHECK_ARG(K_.rows() >= 1, "conv2d synapse: the kernel has no output channels");
  ASSOCMEM_CHECK_ARG(K_.cols() == in_.channels * kh_ * kw_, "conv2d synapse: the kernel has ", K_.cols(),
                     " columns per output channel but in_channels x kh x kw = ", in_.channels * kh_ * kw_);
  check_finite(K_, "conv2d synapse kernel");
  const Eigen::Index H = in_.height + 2 * p_ - kh_, W = in_.width + 2 * p_ - kw_;
  ASSOCMEM_CHECK_ARG(H >= 0 && W >= 0, "conv2d synapse: the kernel ", kh_, " x ", kw_, " is larger than the padded input ",
                     in_.height + 2 * p_, " x ", in_.width + 2 * p_);
  out_ = {K_.rows(), H / s_ + 1, W / s_ + 1};
  // Kernel entry k = (c kh + i) kw + j meets input pixel (c, y s + i - p, x s + j - p) at position q = y W_out + x.
  const Eigen::Index positions = out_.height * out_.width;
  tap_.assign(static_cast<std::size_t>(K_.cols() * positions), -1);
  for (Eigen::Index c = 0; c < in_.channels; ++c)
    for (Eigen::Index i = 0; i < kh_; ++i)
      for (Eigen::Index j = 0; j < kw_; ++j) {
        const Eigen::Index k = (c * kh_ + i) * kw_ + j;
        for (Eigen::Index y = 0; y < out_.height; ++y) {
          const Eigen::Index yi = y * s_ + i - p_;
          if (yi < 0 || yi >= in_.height) continue;
          for (Eigen::Index x = 0; x < out_.width; ++x) {
            const Eigen::Index xi = x * s_ + j - p_;
            if (xi >= 0 && xi < in_.width)
              tap_[static_cast<std::size_t>(k * positions + y * out_.width + x)] = (c * in_.height + yi) * in_.width + xi;
          }
        }
      }
}

std::string Conv2dSynapse::describe() const {
  return detail::concat("conv2d ", in_.channels, "x", in_.height, "x", in_.width, " -> ", out_.channels, "x",
                        out_.height, "x", out_.width, ", kernel ", kh_, "x", kw_, ", stride ", s_, ", padding ", p_);
}

// One sample's unfolded input: cols(k, q) = x[tap(k, q)], 0 where the kernel entry meets the padding.
void Conv2dSynapse::unfold(const double* x, Matrix& cols) const {
  const Eigen::Index positions = out_.height * out_.width;
  cols.resize(K_.cols(), positions);
  double* c = cols.data();
  for (std::size_t i = 0; i < tap_.size(); ++i) c[i] = tap_[i] >= 0 ? x[tap_[i]] : 0.0;
}

// out[o, q] += sum_k K[o, k] cols[k, q]: one matrix product per sample.
void Conv2dSynapse::apply_rows(const RowsIn& X, RowsOut out) const {
  Matrix cols;
  const Eigen::Index positions = out_.height * out_.width;
  for (Eigen::Index b = 0; b < X.rows(); ++b) {
    unfold(X.data() + b * X.outerStride(), cols);
    Eigen::Map<Matrix>(out.data() + b * out.outerStride(), out_.channels, positions).noalias() += K_ * cols;
  }
}

// The transpose scatters K^T y back through the same table (col2im).
void Conv2dSynapse::apply_transpose_rows(const RowsIn& Y, RowsOut out) const {
  Matrix cols;
  const Eigen::Index positions = out_.height * out_.width;
  for (Eigen::Index b = 0; b < Y.rows(); ++b) {
    cols.noalias() = K_.transpose() * Eigen::Map<const Matrix>(Y.data() + b * Y.outerStride(), out_.channels, positions);
    double* o = out.data() + b * out.outerStride();
    const double* c = cols.data();
    for (std::size_t i = 0; i < tap_.size(); ++i)
      if (tap_[i] >= 0) o[tap_[i]] += c[i];
  }
}

void Conv2dSynapse::add_weight_gradient_rows(const RowsIn& Y, const RowsIn& X, Matrix& grad) const {
  Matrix cols;
  const Eigen::Index positions = out_.height * out_.width;
  for (Eigen::Index b = 0; b < X.rows(); ++b) {
    unfold(X.data() + b * X.outerStride(), cols);
    grad.noalias() += Eigen::Map<const Matrix>(Y.data() + b * Y.outerStride(), out_.channels, positions) * cols.transpose();
  }
}

double Conv2dSynapse::norm_bound() const { return std::sqrt(double(out_.height * out_.width)) * K_.norm(); }

void Synapse::apply(const Vector& x, Vector& out) const {
  apply_rows(Eigen::Map<const Matrix>(x.data(), 1, x.size()), Eigen::Map<Matrix>(out.data(), 1, out.size()));
}

void Synapse::apply_transpose(const Vector& y, Vector& out) const {
  apply_transpose_rows(Eigen::Map<const Matrix>(y.data(), 1, y.size()), Eigen::Map<Matrix>(out.data(), 1, out.size()));
}

void Synapse::add_weight_gradient(const Vector& y, const Vector& x, Matrix& grad) const {
  add_weight_gradient_rows(Eigen::Map<const Matrix>(y.data(), 1, y.size()), Eigen::Map<const Matrix>(x.data(), 1, x.size()),
                           grad);
}

// ---------------------------------------------------------------------------------------------
// The network.

LayeredNetwork::LayeredNetwork(std::vector<LayerSpec> layers, std::vector<SynapseSpec> synapses)
    : layers_(std::move(layers)), synapses_(std::move(synapses)) {
  ASSOCMEM_CHECK_ARG(!layers_.empty(), "layered network: no layers");
  std::set<std::string> names;
  offsets_.push_back(0);
  for (std::size_t A = 0; A < layers_.size(); ++A) {
    LayerSpec& l = layers_[A];
    ASSOCMEM_CHECK_ARG(!l.name.empty(), "layer ", A, ": the name is empty");
    ASSOCMEM_CHECK_ARG(names.insert(l.name).second, "layer '", l.name, "': the name is used twice");
    ASSOCMEM_CHECK_ARG(l.size >= 1, "layer '", l.name, "': size must be >= 1, got ", l.size);
    ASSOCMEM_CHECK_ARG(l.lagrangian != nullptr, "layer '", l.name, "': the Lagrangian is null");
    ASSOCMEM_CHECK_ARG(std::isfinite(l.tau) && l.tau > 0, "layer '", l.name, "': tau must be finite and > 0, got ",
                       l.tau);
    if (l.current.size() == 0) {
      l.current = Vector::Zero(l.size);
    } else {
      ASSOCMEM_CHECK_ARG(l.current.size() == l.size, "layer '", l.name, "': the current has length ", l.current.size(),
                         " but the layer has ", l.size, " neurons");
      ASSOCMEM_CHECK_ARG(l.current.allFinite(), "layer '", l.name, "': the current contains NaN or Inf");
    }
    offsets_.push_back(offsets_.back() + l.size);
  }
  for (std::size_t s = 0; s < synapses_.size(); ++s) {
    const SynapseSpec& sp = synapses_[s];
    const std::string which = detail::concat("synapse ", s, " ('", sp.from, "' -> '", sp.to, "')");
    ASSOCMEM_CHECK_ARG(sp.op != nullptr, which, ": the operator is null");
    const std::size_t a = layer_index(sp.from), b = layer_index(sp.to);
    ASSOCMEM_CHECK_ARG(a != b, which, ": a synapse joins two different layers (a layer's own recurrent weights are "
                       "not part of this energy)");
    ASSOCMEM_CHECK_ARG(sp.op->in_size() == layers_[a].size, which, ": ", sp.op->describe(), " reads ",
                       sp.op->in_size(), " neurons but layer '", sp.from, "' has ", layers_[a].size);
    ASSOCMEM_CHECK_ARG(sp.op->out_size() == layers_[b].size, which, ": ", sp.op->describe(), " writes ",
                       sp.op->out_size(), " neurons but layer '", sp.to, "' has ", layers_[b].size);
    from_.push_back(a);
    to_.push_back(b);
  }
}

LayeredNetwork LayeredNetwork::from_network(const Network& net) {
  ASSOCMEM_CHECK_ARG(net.params().alpha == 1.0, "from_network: alpha = ", net.params().alpha,
                     " (eq. 19) has no layered form; the layered network has alpha = 1");
  std::vector<LayerSpec> layers{
      {"v", net.n_features(), net.feature_lagrangian_ptr(), net.params().tau_f, net.current()},
      {"h", net.n_hidden(), net.hidden_lagrangian_ptr(), net.params().tau_h, Vector()}};
  return LayeredNetwork(std::move(layers), {{"v", "h", std::make_shared<DenseSynapse>(net.xi())}});
}

std::size_t LayeredNetwork::layer_index(const std::string& name) const {
  for (std::size_t A = 0; A < layers_.size(); ++A)
    if (layers_[A].name == name) return A;
  std::string known;
  for (const LayerSpec& l : layers_) known += (known.empty() ? "'" : ", '") + l.name + "'";
  throw InvalidArgument(detail::concat("no layer named '", name, "' (layers: ", known, ")"));
}

void LayeredNetwork::check_state(const Vector& x, const char* what) const {
  ASSOCMEM_CHECK_ARG(x.size() == size(), what, " has length ", x.size(), " but the layers have ", size(), " neurons");
  check_finite(x, what);
}

namespace {
Eigen::Map<const Matrix> as_row(const Vector& v) { return Eigen::Map<const Matrix>(v.data(), 1, v.size()); }
}  // namespace

void LayeredNetwork::activations_rows(const Matrix& X, Matrix& G) const {
  G.resize(X.rows(), X.cols());
  Vector xa, ga;
  for (Eigen::Index b = 0; b < X.rows(); ++b)
    for (std::size_t A = 0; A < layers_.size(); ++A) {
      xa = X.row(b).segment(offsets_[A], layers_[A].size).transpose();
      layers_[A].lagrangian->gradient(xa, ga);  // eq. (3)
      G.row(b).segment(offsets_[A], layers_[A].size) = ga.transpose();
    }
}

void LayeredNetwork::fields_rows(const Matrix& G, Matrix& field) const {
  field.setZero(G.rows(), size());  // sum of W g from below and W^T g from above, per layer
  for (std::size_t s = 0; s < synapses_.size(); ++s) {
    const std::size_t a = from_[s], b = to_[s];
    synapses_[s].op->apply_rows(G.middleCols(offsets_[a], layers_[a].size), field.middleCols(offsets_[b], layers_[b].size));
    synapses_[s].op->apply_transpose_rows(G.middleCols(offsets_[b], layers_[b].size),
                                          field.middleCols(offsets_[a], layers_[a].size));
  }
}

void LayeredNetwork::rhs_rows(const Matrix& X, Matrix& dX) const {
  Matrix G;
  activations_rows(X, G);
  fields_rows(G, dX);
  for (std::size_t A = 0; A < layers_.size(); ++A) {  // eq. (1): (fields - x + I) / tau, layer by layer
    const LayerSpec& l = layers_[A];
    auto d = dX.middleCols(offsets_[A], l.size);
    d -= X.middleCols(offsets_[A], l.size);
    d.rowwise() += l.current.transpose();
    d /= l.tau;
  }
}

Vector LayeredNetwork::activations(const Vector& x) const {
  check_state(x);
  Matrix G;
  activations_rows(as_row(x), G);
  return G.row(0).transpose();
}

Vector LayeredNetwork::fields(const Vector& g) const {
  Matrix field;
  fields_rows(as_row(g), field);
  return field.row(0).transpose();
}

void LayeredNetwork::rhs(const Vector& x, Vector& dx) const {
  check_state(x);
  Matrix dX;
  rhs_rows(as_row(x), dX);
  dx = dX.row(0).transpose();
}

void LayeredNetwork::energy_rows(const Matrix& X, Vector& e) const {
  Matrix G;
  activations_rows(X, G);
  e = Vector::Zero(X.rows());
  Vector xa;
  for (Eigen::Index b = 0; b < X.rows(); ++b)
    for (std::size_t A = 0; A < layers_.size(); ++A) {
      const LayerSpec& l = layers_[A];
      xa = X.row(b).segment(offsets_[A], l.size).transpose();
      // The Legendre term and the input current.
      e(b) += (xa - l.current).dot(G.row(b).segment(offsets_[A], l.size).transpose()) - l.lagrangian->value(xa);
    }
  for (std::size_t s = 0; s < synapses_.size(); ++s) {
    const std::size_t a = from_[s], b = to_[s];
    Matrix down = Matrix::Zero(X.rows(), layers_[b].size);
    synapses_[s].op->apply_rows(G.middleCols(offsets_[a], layers_[a].size), down);
    e -= (G.middleCols(offsets_[b], layers_[b].size).array() * down.array()).rowwise().sum().matrix();  // two-body term
  }
}

double LayeredNetwork::energy(const Vector& x) const {
  check_state(x);
  Vector e;
  energy_rows(as_row(x), e);
  return e(0);
}

double LayeredNetwork::energy_rate(const Vector& x) const { return energy_rate(x, std::vector<bool>(n_layers(), false)); }

double LayeredNetwork::energy_rate(const Vector& x, const std::vector<bool>& skip) const {
  ASSOCMEM_CHECK_ARG(skip.size() == n_layers(), "energy_rate: ", skip.size(), " flags for ", n_layers(), " layers");
  Vector dx;
  rhs(x, dx);
  double rate = 0;
  for (std::size_t A = 0; A < layers_.size(); ++A) {
    if (skip[A]) continue;
    const Vector d = part(dx, A);
    rate -= layers_[A].tau * d.dot(layers_[A].lagrangian->hvp(part(x, A), d));  // eq. (4), layer by layer
  }
  return rate;
}

void LayeredNetwork::jvp(const Vector& x, const Vector& u, Vector& out) const {
  check_state(x);
  check_state(u, "u");
  Matrix Mu;
  hessians_rows(as_row(x), as_row(u), Mu);
  const Vector field = fields(Mu.row(0).transpose());  // the same linear maps applied to M u
  out.resize(size());
  for (std::size_t A = 0; A < layers_.size(); ++A)
    out.segment(offsets_[A], layers_[A].size) = (field.segment(offsets_[A], layers_[A].size) - part(u, A)) / layers_[A].tau;
}

void LayeredNetwork::energy_gradient_rows(const Matrix& X, Matrix& out) const {
  Matrix G, field;
  activations_rows(X, G);
  fields_rows(G, field);
  Matrix R = X - field;  // the residual of eq. (1), layer by layer
  for (std::size_t A = 0; A < layers_.size(); ++A)
    R.middleCols(offsets_[A], layers_[A].size).rowwise() -= layers_[A].current.transpose();
  hessians_rows(X, R, out);
}

void LayeredNetwork::hessians_rows(const Matrix& X, const Matrix& U, Matrix& out) const {
  out.resize(U.rows(), U.cols());
  Vector xa, ua, m;
  for (Eigen::Index b = 0; b < X.rows(); ++b)
    for (std::size_t A = 0; A < layers_.size(); ++A) {
      xa = X.row(b).segment(offsets_[A], layers_[A].size).transpose();
      ua = U.row(b).segment(offsets_[A], layers_[A].size).transpose();
      layers_[A].lagrangian->hvp(xa, ua, m);
      out.row(b).segment(offsets_[A], layers_[A].size) = m.transpose();
    }
}

Matrix LayeredNetwork::over_tau_rows(const Matrix& U) const {
  Matrix W(U.rows(), U.cols());
  for (std::size_t A = 0; A < layers_.size(); ++A)
    W.middleCols(offsets_[A], layers_[A].size) = U.middleCols(offsets_[A], layers_[A].size) / layers_[A].tau;
  return W;
}

void LayeredNetwork::add_energy_parameter_gradients_rows(const Matrix& X, const Vector& c, std::vector<Matrix>& weights,
                                                         Vector& currents) const {
  Matrix G;
  activations_rows(X, G);
  const Matrix cG = c.asDiagonal() * G;  // row b weighted by c_b
  for (std::size_t s = 0; s < synapses_.size(); ++s) {
    const std::size_t a = from_[s], b = to_[s];
    Matrix grad = Matrix::Zero(weights[s].rows(), weights[s].cols());
    synapses_[s].op->add_weight_gradient_rows(cG.middleCols(offsets_[b], layers_[b].size),
                                              G.middleCols(offsets_[a], layers_[a].size), grad);
    weights[s] -= grad;  // E holds -g^b . W g^a
  }
  currents -= cG.colwise().sum().transpose();  // E holds -I_A . g^A
}

void LayeredNetwork::energy_gradient(const Vector& x, Vector& out) const {
  check_state(x);
  Matrix o;
  energy_gradient_rows(as_row(x), o);
  out = o.row(0).transpose();
}

std::vector<Matrix> LayeredNetwork::energy_weight_gradients(const Vector& x) const {
  check_state(x);
  std::vector<Matrix> out;
  for (std::size_t s = 0; s < synapses_.size(); ++s)
    out.push_back(Matrix::Zero(synapses_[s].op->parameter_rows(), synapses_[s].op->parameter_cols()));
  Vector currents = Vector::Zero(size());
  add_energy_parameter_gradients_rows(as_row(x), Vector::Ones(1), out, currents);
  return out;
}

void LayeredNetwork::vjp_rows(const Matrix& X, const Matrix& U, Matrix& out) const {
  const Matrix W = over_tau_rows(U);
  Matrix field;
  fields_rows(W, field);  // the synapses' maps, each direction the transpose of jvp's
  hessians_rows(X, field, out);  // M^A is symmetric
  out -= W;
}

void LayeredNetwork::vjp(const Vector& x, const Vector& u, Vector& out) const {
  check_state(x);
  check_state(u, "u");
  Matrix o;
  vjp_rows(as_row(x), as_row(u), o);
  out = o.row(0).transpose();
}

void LayeredNetwork::add_rhs_parameter_vjp_rows(const Matrix& X, const Matrix& U, std::vector<Matrix>& weights,
                                                Vector& currents) const {
  Matrix G;
  activations_rows(X, G);
  const Matrix W = over_tau_rows(U);
  for (std::size_t s = 0; s < synapses_.size(); ++s) {
    const std::size_t a = from_[s], b = to_[s];
    const Synapse& op = *synapses_[s].op;
    // (u^b / tau_b) . W g^a  and  (u^a / tau_a) . W^T g^b = g^b . W (u^a / tau_a): the two directions of eq. (1).
    op.add_weight_gradient_rows(W.middleCols(offsets_[b], layers_[b].size), G.middleCols(offsets_[a], layers_[a].size),
                                weights[s]);
    op.add_weight_gradient_rows(G.middleCols(offsets_[b], layers_[b].size), W.middleCols(offsets_[a], layers_[a].size),
                                weights[s]);
  }
  currents += W.colwise().sum().transpose();
}

void LayeredNetwork::add_rhs_parameter_vjp(const Vector& x, const Vector& u, std::vector<Matrix>& weights,
                                           Vector& currents) const {
  check_state(x);
  check_state(u, "u");
  ASSOCMEM_CHECK_ARG(weights.size() == synapses_.size(), "add_rhs_parameter_vjp: ", weights.size(),
                     " weight gradients for ", synapses_.size(), " synapses");
  for (std::size_t s = 0; s < synapses_.size(); ++s)
    ASSOCMEM_CHECK_ARG(weights[s].rows() == synapses_[s].op->parameter_rows() &&
                           weights[s].cols() == synapses_[s].op->parameter_cols(),
                       "add_rhs_parameter_vjp: weight gradient ", s, " has the wrong shape");
  ASSOCMEM_CHECK_ARG(currents.size() == size(), "add_rhs_parameter_vjp: currents has length ", currents.size());
  add_rhs_parameter_vjp_rows(as_row(x), as_row(u), weights, currents);
}

bool LayeredNetwork::hessian_psd_at(const Vector& x) const {
  for (std::size_t A = 0; A < layers_.size(); ++A)
    if (!layers_[A].lagrangian->hessian_psd_at(part(x, A))) return false;
  return true;
}

bool LayeredNetwork::convex() const {
  return std::all_of(layers_.begin(), layers_.end(),
                     [](const LayerSpec& l) { return l.lagrangian->convex_everywhere(); });
}

Network::EnergyBound LayeredNetwork::energy_bound() const {
  Network::EnergyBound b;
  for (const LayerSpec& l : layers_)
    if (!l.lagrangian->convex_everywhere()) {
      b.why = "layer '" + l.name + "': " + l.lagrangian->name() + " is not convex everywhere (" +
              l.lagrangian->psd_region() + "): the Legendre form of the energy gives no bound";
      return b;
    }
  const std::size_t n = layers_.size();
  std::vector<double> G(n);
  std::vector<bool> identity(n);
  for (std::size_t A = 0; A < n; ++A) {
    G[A] = layers_[A].lagrangian->activation_bound(layers_[A].size);
    identity[A] = !std::isfinite(G[A]) && layers_[A].lagrangian->name() == "identity";
    if (!std::isfinite(G[A]) && !identity[A]) {
      b.why = "layer '" + layers_[A].name + "': the activation of " + layers_[A].lagrangian->name() +
              " is unbounded and not the identity: no bound is known";
      return b;
    }
  }
  double lower = 0;
  std::vector<double> c(n, 0.0);  // identity layers: |sum_s W g_neighbour + I_A| <= c_A
  for (std::size_t s = 0; s < synapses_.size(); ++s) {
    const std::size_t a = from_[s], bb = to_[s];
    const double w = synapses_[s].op->norm_bound();
    if (identity[a] && identity[bb]) {
      b.why = "synapse " + std::to_string(s) + " joins the identity layers '" + layers_[a].name + "' and '" +
              layers_[bb].name + "': no bound is known";
      return b;
    }
    if (identity[a]) c[a] += w * G[bb];
    else if (identity[bb]) c[bb] += w * G[a];
    else lower -= w * G[a] * G[bb];
  }
  for (std::size_t A = 0; A < n; ++A) {
    const double I = layers_[A].current.norm();
    if (identity[A]) {
      lower -= 0.5 * (c[A] + I) * (c[A] + I);  // |g|^2/2 - g.c >= -|c|^2/2
    } else {
      lower -= layers_[A].lagrangian->value(Vector::Zero(layers_[A].size)) + I * G[A];
    }
  }
  b.verdict = Network::EnergyBound::Verdict::Bounded;
  b.lower = lower;
  b.why = "convex Lagrangians, bounded activations (identity layers only beside bounded ones)";
  return b;
}

// ---------------------------------------------------------------------------------------------
// The adiabatic limit.

AdiabaticLayeredSystem::AdiabaticLayeredSystem(const LayeredNetwork& net, const std::vector<std::string>& fast)
    : net_(net), fast_(net.n_layers(), false) {
  ASSOCMEM_CHECK_ARG(!fast.empty(), "adiabatic limit: no fast layer named");
  for (const std::string& name : fast) {
    const std::size_t A = net.layer_index(name);
    ASSOCMEM_CHECK_ARG(!fast_[A], "adiabatic limit: layer '", name, "' is named twice");
    fast_[A] = true;
  }
  for (std::size_t s = 0; s < net.n_synapses(); ++s) {
    const SynapseSpec& sp = net.synapse(s);
    ASSOCMEM_CHECK_ARG(!(fast_[net.layer_index(sp.from)] && fast_[net.layer_index(sp.to)]), "adiabatic limit: synapse ",
                       s, " joins the fast layers '", sp.from, "' and '", sp.to,
                       "' (their steady states would depend on each other)");
  }
  for (std::size_t A = 0; A < net.n_layers(); ++A)
    if (!fast_[A]) n_slow_ += net.layer(A).size;
  ASSOCMEM_CHECK_ARG(n_slow_ > 0, "adiabatic limit: every layer is fast; at least one must stay");
}

Vector AdiabaticLayeredSystem::slow(const Vector& x) const {
  net_.check_state(x);
  Vector y(n_slow_);
  Eigen::Index at = 0;
  for (std::size_t A = 0; A < net_.n_layers(); ++A)
    if (!fast_[A]) {
      y.segment(at, net_.layer(A).size) = net_.part(x, A);
      at += net_.layer(A).size;
    }
  return y;
}

Vector AdiabaticLayeredSystem::full(const Vector& y) const {
  ASSOCMEM_CHECK_ARG(y.size() == n_slow_, "the slow layers have ", n_slow_, " neurons but the state has ", y.size());
  check_finite(y, "the slow layers' state");
  Vector x = Vector::Zero(net_.size());
  Eigen::Index at = 0;
  for (std::size_t A = 0; A < net_.n_layers(); ++A)
    if (!fast_[A]) {
      x.segment(net_.offset(A), net_.layer(A).size) = y.segment(at, net_.layer(A).size);
      at += net_.layer(A).size;
    }
  // No synapse joins two fast layers, so the fields into a fast layer come from slow ones only: the
  // fast layers' activations are left 0 (their currents are not known yet).
  Vector g = Vector::Zero(net_.size());
  for (std::size_t A = 0; A < net_.n_layers(); ++A)
    if (!fast_[A])
      g.segment(net_.offset(A), net_.layer(A).size) = net_.layer(A).lagrangian->gradient(net_.part(x, A));
  const Vector field = net_.fields(g);
  for (std::size_t A = 0; A < net_.n_layers(); ++A)
    if (fast_[A])
      x.segment(net_.offset(A), net_.layer(A).size) =
          field.segment(net_.offset(A), net_.layer(A).size) + net_.layer(A).current;  // eq. (1), dx^A/dt = 0
  return x;
}

void AdiabaticLayeredSystem::rhs(double, const Vector& y, Vector& dydt) const {
  Vector dx;
  net_.rhs(full(y), dx);
  dydt = slow(dx);
}

double AdiabaticLayeredSystem::energy_rate(const Vector& y) const { return net_.energy_rate(full(y), fast_); }

namespace {
// The one recording of a layered run: full(y) gives the stacked state a record keeps.
template <class Energy, class Rate, class Full>
LayeredTrajectory simulate_layered(const OdeSystem& sys, const LayeredNetwork& net, const Vector& y0,
                                   const SimulateOptions& options, const Energy& energy, const Rate& rate,
                                   const Full& full) {
  LayeredTrajectory tr;
  const detail::SimulateCounts c = detail::simulate_core(
      sys, y0, options, net.convex(), energy, rate, [&](const Vector& y) { return net.hessian_psd_at(full(y)); },
      [&](double t, const Vector& y, double e, double r) {
        tr.t.push_back(t);
        tr.x.push_back(full(y));
        tr.energy.push_back(e);
        tr.energy_rate.push_back(r);
      });
  tr.non_psd_steps = c.non_psd_steps;
  tr.first_non_psd_t = c.first_non_psd_t;
  tr.result = c.result;
  return tr;
}
}  // namespace

LayeredTrajectory simulate(const LayeredNetwork& net, const Vector& x0, const SimulateOptions& options) {
  net.check_state(x0, "x0");
  return simulate_layered(
      LayeredSystem(net), net, x0, options, [&](const Vector& y) { return net.energy(y); },
      [&](const Vector& y) { return net.energy_rate(y); }, [](const Vector& y) -> const Vector& { return y; });
}

LayeredTrajectory simulate(const AdiabaticLayeredSystem& sys, const Vector& y0, const SimulateOptions& options) {
  ASSOCMEM_CHECK_ARG(y0.size() == sys.size(), "y0 has length ", y0.size(), " but the slow layers have ", sys.size(),
                     " neurons");
  check_finite(y0, "y0");
  return simulate_layered(
      sys, sys.network(), y0, options, [&](const Vector& y) { return sys.energy(y); },
      [&](const Vector& y) { return sys.energy_rate(y); }, [&](const Vector& y) { return sys.full(y); });
}

}  // namespace assocmem
