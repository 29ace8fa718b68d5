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
}

std::string Conv2dSynapse::describe() const {
  return detail::concat("conv2d ", in_.channels, "x", in_.height, "x", in_.width, " -> ", out_.channels, "x",
                        out_.height, "x", out_.width, ", kernel ", kh_, "x", kw_, ", stride ", s_, ", padding ", p_);
}

namespace {
// Every product of the convolution once: f(out index, kernel column, in index) for each output position,
// kernel tap and channel whose input pixel lies inside the image. apply and apply_transpose both walk
// this one index set, so W^T is exactly the adjoint of W.
template <class F>
void for_each_tap(const ImageShape& in, const ImageShape& out, Eigen::Index kh, Eigen::Index kw, Eigen::Index s,
                  Eigen::Index p, const F& f) {
  for (Eigen::Index o = 0; o < out.channels; ++o)
    for (Eigen::Index y = 0; y < out.height; ++y)
      for (Eigen::Index xo = 0; xo < out.width; ++xo) {
        const Eigen::Index oi = (o * out.height + y) * out.width + xo;
        for (Eigen::Index c = 0; c < in.channels; ++c)
          for (Eigen::Index i = 0; i < kh; ++i) {
            const Eigen::Index yi = y * s + i - p;
            if (yi < 0 || yi >= in.height) continue;
            for (Eigen::Index j = 0; j < kw; ++j) {
              const Eigen::Index xi = xo * s + j - p;
              if (xi < 0 || xi >= in.width) continue;
              f(o, oi, (c * kh + i) * kw + j, (c * in.height + yi) * in.width + xi);
            }
          }
      }
}
}  // namespace

// out[o, y, x] += sum_{c, i, j} K[o, (c kh + i) kw + j] in[c, y s + i - p, x s + j - p] (each output summed
// in the order of its taps); the transpose scatters the same products back.
void Conv2dSynapse::apply(const Vector& x, Vector& out) const {
  for_each_tap(in_, out_, kh_, kw_, s_, p_, [&](Eigen::Index o, Eigen::Index oi, Eigen::Index k, Eigen::Index ii) {
    out(oi) += K_(o, k) * x(ii);
  });
}

void Conv2dSynapse::add_weight_gradient(const Vector& y, const Vector& x, Matrix& grad) const {
  for_each_tap(in_, out_, kh_, kw_, s_, p_, [&](Eigen::Index o, Eigen::Index oi, Eigen::Index k, Eigen::Index ii) {
    grad(o, k) += y(oi) * x(ii);
  });
}

double Conv2dSynapse::norm_bound() const { return std::sqrt(double(out_.height * out_.width)) * K_.norm(); }

void Conv2dSynapse::apply_transpose(const Vector& y, Vector& out) const {
  for_each_tap(in_, out_, kh_, kw_, s_, p_, [&](Eigen::Index o, Eigen::Index oi, Eigen::Index k, Eigen::Index ii) {
    out(ii) += K_(o, k) * y(oi);
  });
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

Vector LayeredNetwork::activations(const Vector& x) const {
  check_state(x);
  Vector g(size());
  for (std::size_t A = 0; A < layers_.size(); ++A)
    g.segment(offsets_[A], layers_[A].size) = layers_[A].lagrangian->gradient(part(x, A));  // eq. (3)
  return g;
}

Vector LayeredNetwork::fields(const Vector& g) const {
  Vector field = Vector::Zero(size());  // sum of W g from below and W^T g from above, per layer
  for (std::size_t s = 0; s < synapses_.size(); ++s) {
    const std::size_t a = from_[s], b = to_[s];
    Vector down = Vector::Zero(layers_[b].size), up = Vector::Zero(layers_[a].size);
    synapses_[s].op->apply(g.segment(offsets_[a], layers_[a].size), down);
    synapses_[s].op->apply_transpose(g.segment(offsets_[b], layers_[b].size), up);
    field.segment(offsets_[b], layers_[b].size) += down;
    field.segment(offsets_[a], layers_[a].size) += up;
  }
  return field;
}

void LayeredNetwork::rhs(const Vector& x, Vector& dx) const {
  const Vector field = fields(activations(x));
  dx.resize(size());
  for (std::size_t A = 0; A < layers_.size(); ++A) {
    const LayerSpec& l = layers_[A];
    dx.segment(offsets_[A], l.size) = (field.segment(offsets_[A], l.size) - part(x, A) + l.current) / l.tau;
  }
}

double LayeredNetwork::energy(const Vector& x) const {
  const Vector g = activations(x);
  double e = 0;
  for (std::size_t A = 0; A < layers_.size(); ++A) {
    const LayerSpec& l = layers_[A];
    const Vector xa = part(x, A);
    const auto ga = g.segment(offsets_[A], l.size);
    e += (xa - l.current).dot(ga) - l.lagrangian->value(xa);  // Legendre term and the input current
  }
  for (std::size_t s = 0; s < synapses_.size(); ++s) {
    const std::size_t a = from_[s], b = to_[s];
    Vector down = Vector::Zero(layers_[b].size);
    synapses_[s].op->apply(g.segment(offsets_[a], layers_[a].size), down);
    e -= g.segment(offsets_[b], layers_[b].size).dot(down);  // the two-body term of synapse s
  }
  return e;
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
  Vector Mu(size());
  for (std::size_t A = 0; A < layers_.size(); ++A)
    Mu.segment(offsets_[A], layers_[A].size) = layers_[A].lagrangian->hvp(part(x, A), part(u, A));
  const Vector field = fields(Mu);  // the same linear maps applied to M u
  out.resize(size());
  for (std::size_t A = 0; A < layers_.size(); ++A)
    out.segment(offsets_[A], layers_[A].size) = (field.segment(offsets_[A], layers_[A].size) - part(u, A)) / layers_[A].tau;
}

void LayeredNetwork::energy_gradient(const Vector& x, Vector& out) const {
  const Vector field = fields(activations(x));
  out.resize(size());
  for (std::size_t A = 0; A < layers_.size(); ++A) {
    const LayerSpec& l = layers_[A];
    const Vector r = part(x, A) - field.segment(offsets_[A], l.size) - l.current;  // residual of eq. (1)
    out.segment(offsets_[A], l.size) = l.lagrangian->hvp(part(x, A), r);
  }
}

std::vector<Matrix> LayeredNetwork::energy_weight_gradients(const Vector& x) const {
  const Vector g = activations(x);
  std::vector<Matrix> out;
  for (std::size_t s = 0; s < synapses_.size(); ++s) {
    const Synapse& op = *synapses_[s].op;
    Matrix grad = Matrix::Zero(op.parameter_rows(), op.parameter_cols());
    op.add_weight_gradient(g.segment(offsets_[to_[s]], layers_[to_[s]].size),
                           g.segment(offsets_[from_[s]], layers_[from_[s]].size), grad);
    out.push_back(-grad);  // E holds -g^b . W g^a
  }
  return out;
}

void LayeredNetwork::vjp(const Vector& x, const Vector& u, Vector& out) const {
  check_state(x);
  check_state(u, "u");
  Vector w(size());
  for (std::size_t A = 0; A < layers_.size(); ++A) w.segment(offsets_[A], layers_[A].size) = part(u, A) / layers_[A].tau;
  const Vector field = fields(w);  // the synapses' maps, each direction the transpose of jvp's
  out.resize(size());
  for (std::size_t A = 0; A < layers_.size(); ++A)
    out.segment(offsets_[A], layers_[A].size) =
        layers_[A].lagrangian->hvp(part(x, A), field.segment(offsets_[A], layers_[A].size)) - part(w, A);
}

void LayeredNetwork::add_rhs_parameter_vjp(const Vector& x, const Vector& u, std::vector<Matrix>& weights,
                                           Vector& currents) const {
  check_state(u, "u");
  ASSOCMEM_CHECK_ARG(weights.size() == synapses_.size(), "add_rhs_parameter_vjp: ", weights.size(),
                     " weight gradients for ", synapses_.size(), " synapses");
  ASSOCMEM_CHECK_ARG(currents.size() == size(), "add_rhs_parameter_vjp: currents has length ", currents.size());
  const Vector g = activations(x);
  Vector w(size());
  for (std::size_t A = 0; A < layers_.size(); ++A) w.segment(offsets_[A], layers_[A].size) = part(u, A) / layers_[A].tau;
  for (std::size_t s = 0; s < synapses_.size(); ++s) {
    const std::size_t a = from_[s], b = to_[s];
    const Synapse& op = *synapses_[s].op;
    // (u^b / tau_b) . W g^a  and  (u^a / tau_a) . W^T g^b = g^b . W (u^a / tau_a): the two directions of eq. (1).
    op.add_weight_gradient(w.segment(offsets_[b], layers_[b].size), g.segment(offsets_[a], layers_[a].size), weights[s]);
    op.add_weight_gradient(g.segment(offsets_[b], layers_[b].size), w.segment(offsets_[a], layers_[a].size), weights[s]);
  }
  currents += w;
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
