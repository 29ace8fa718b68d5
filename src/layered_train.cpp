// Batched energies, Euler unrolls and their reverse-mode gradients for training layered networks
// (assocmem/layered.hpp, "Training"). Every product is LayeredNetwork's own; this file only walks the
// batch (one row per sample, split over threads) and the steps.
#include <cmath>
#include <limits>
#include <string>

#include "assocmem/error.hpp"
#include "assocmem/layered.hpp"
#include "parallel.hpp"

namespace assocmem {

namespace {

void check_batch(const LayeredNetwork& net, const Matrix& X, const char* what) {
  ASSOCMEM_CHECK_ARG(X.cols() == net.size(), what, " has ", X.cols(), " columns but the layers have ", net.size(),
                     " neurons");
  check_finite(X, what);
}

LayeredGradients zero_gradients(const LayeredNetwork& net, Eigen::Index batch) {
  LayeredGradients g;
  g.states = Matrix::Zero(batch, net.size());
  for (std::size_t s = 0; s < net.n_synapses(); ++s) {
    const Synapse& op = *net.synapse(s).op;
    g.weights.push_back(Matrix::Zero(op.parameter_rows(), op.parameter_cols()));
  }
  g.currents = Vector::Zero(net.size());
  return g;
}

// fn(first row, rows, its gradients' accumulator, the states' gradients) for blocks of rows, one per
// thread; each worker sums the parameters' gradients of its rows, and the workers' sums are added at the
// end (states' gradients are written block by block, by one worker each).
template <class Fn>
LayeredGradients over_blocks(const LayeredNetwork& net, Eigen::Index batch, int threads, const Fn& fn) {
  const int workers = static_cast<int>(std::max<Eigen::Index>(1, std::min<Eigen::Index>(detail::resolve_threads(threads), batch)));
  LayeredGradients total = zero_gradients(net, batch);
  std::vector<LayeredGradients> part(static_cast<std::size_t>(workers));
  detail::parallel_chunks(static_cast<std::size_t>(batch), workers, [&](std::size_t w, std::size_t begin, std::size_t end) {
    LayeredGradients& mine = part[w];
    mine = zero_gradients(net, 0);
    if (end > begin)
      fn(static_cast<Eigen::Index>(begin), static_cast<Eigen::Index>(end - begin), mine, total.states);
  });
  for (const LayeredGradients& p : part) {
    if (p.weights.empty()) continue;  // a worker that had no rows
    for (std::size_t s = 0; s < total.weights.size(); ++s) total.weights[s] += p.weights[s];
    total.currents += p.currents;
  }
  return total;
}

// fn(first row, rows) for blocks of rows, one per thread.
template <class Fn>
void each_block(Eigen::Index batch, int threads, const Fn& fn) {
  detail::parallel_chunks(static_cast<std::size_t>(batch), detail::resolve_threads(threads),
                          [&](std::size_t, std::size_t begin, std::size_t end) {
                            if (end > begin) fn(static_cast<Eigen::Index>(begin), static_cast<Eigen::Index>(end - begin));
                          });
}

}  // namespace

Vector layered_energies(const LayeredNetwork& net, const Matrix& X, int threads) {
  check_batch(net, X, "states");
  Vector e(X.rows());
  each_block(X.rows(), threads, [&](Eigen::Index r0, Eigen::Index n) {
    Vector part;
    net.energy_rows(X.middleRows(r0, n), part);
    e.segment(r0, n) = part;
  });
  return e;
}

LayeredGradients layered_energies_vjp(const LayeredNetwork& net, const Matrix& X, const Vector& c, int threads) {
  check_batch(net, X, "states");
  ASSOCMEM_CHECK_ARG(c.size() == X.rows(), "energy gradient: ", c.size(), " weights for ", X.rows(), " states");
  check_finite(c, "energy gradient weights");
  return over_blocks(net, X.rows(), threads, [&](Eigen::Index r0, Eigen::Index n, LayeredGradients& acc, Matrix& states) {
    const Matrix x = X.middleRows(r0, n);
    const Vector cb = c.segment(r0, n);
    Matrix dx;
    net.energy_gradient_rows(x, dx);
    states.middleRows(r0, n) = cb.asDiagonal() * dx;
    net.add_energy_parameter_gradients_rows(x, cb, acc.weights, acc.currents);
  });
}

Matrix layered_activations(const LayeredNetwork& net, const Matrix& X, int threads) {
  check_batch(net, X, "states");
  Matrix G(X.rows(), X.cols());
  each_block(X.rows(), threads, [&](Eigen::Index r0, Eigen::Index n) {
    Matrix g;
    net.activations_rows(X.middleRows(r0, n), g);
    G.middleRows(r0, n) = g;
  });
  return G;
}

Matrix layered_activations_vjp(const LayeredNetwork& net, const Matrix& X, const Matrix& U, int threads) {
  check_batch(net, X, "states");
  check_batch(net, U, "activation gradient");
  ASSOCMEM_CHECK_ARG(U.rows() == X.rows(), "activation gradient: ", U.rows(), " rows for ", X.rows(), " states");
  Matrix out(X.rows(), X.cols());
  each_block(X.rows(), threads, [&](Eigen::Index r0, Eigen::Index n) {
    Matrix m;
    net.hessians_rows(X.middleRows(r0, n), U.middleRows(r0, n), m);
    out.middleRows(r0, n) = m;
  });
  return out;
}

std::vector<Matrix> layered_euler(const LayeredNetwork& net, const Matrix& X0, double dt, int steps, bool keep_all,
                                  int threads) {
  check_batch(net, X0, "initial states");
  ASSOCMEM_CHECK_ARG(std::isfinite(dt) && dt > 0, "dt must be finite and > 0, got ", dt);
  ASSOCMEM_CHECK_ARG(steps >= 0, "steps must be >= 0, got ", steps);
  std::vector<Matrix> out(keep_all ? static_cast<std::size_t>(steps) + 1 : 2, Matrix(X0.rows(), X0.cols()));
  out[0] = X0;
  each_block(X0.rows(), threads, [&](Eigen::Index r0, Eigen::Index n) {
    Matrix x = X0.middleRows(r0, n), dx;
    for (int t = 0; t < steps; ++t) {
      net.rhs_rows(x, dx);
      x += dt * dx;
      if (!x.allFinite()) {
        Eigen::Index bad = 0;
        while (x.row(bad).allFinite()) ++bad;
        throw Error(detail::concat("layered Euler steps: sample ", r0 + bad, " is not finite after step ", t + 1,
                                   " (dt = ", dt, "): use a smaller dt"));
      }
      if (keep_all) out[static_cast<std::size_t>(t) + 1].middleRows(r0, n) = x;
    }
    out.back().middleRows(r0, n) = x;
  });
  return out;
}

LayeredGradients layered_euler_vjp(const LayeredNetwork& net, const std::vector<Matrix>& states, double dt,
                                   const Matrix& grad_last, int threads) {
  ASSOCMEM_CHECK_ARG(!states.empty(), "layered Euler gradient: no states");
  ASSOCMEM_CHECK_ARG(std::isfinite(dt) && dt > 0, "dt must be finite and > 0, got ", dt);
  for (const Matrix& X : states)
    ASSOCMEM_CHECK_ARG(X.cols() == net.size() && X.rows() == states[0].rows(),
                       "layered Euler gradient: the states differ in shape");
  check_batch(net, grad_last, "gradient of the last state");
  ASSOCMEM_CHECK_ARG(grad_last.rows() == states[0].rows(), "gradient of the last state: ", grad_last.rows(),
                     " rows for ", states[0].rows(), " samples");
  return over_blocks(net, grad_last.rows(), threads, [&](Eigen::Index r0, Eigen::Index n, LayeredGradients& acc, Matrix& out) {
    Matrix a = grad_last.middleRows(r0, n), Ja, x;
    for (std::size_t t = states.size() - 1; t-- > 0;) {
      x = states[t].middleRows(r0, n);
      // x_{t+1} = x_t + dt rhs(x_t): the parameters see dt a_{t+1}, the state a_{t+1} + dt J^T a_{t+1}.
      net.add_rhs_parameter_vjp_rows(x, dt * a, acc.weights, acc.currents);
      net.vjp_rows(x, a, Ja);
      a += dt * Ja;
    }
    out.middleRows(r0, n) = a;
  });
}

LayeredGradients layered_fixed_point_vjp(const LayeredNetwork& net, const Matrix& Xstar, const Matrix& grad, double dt,
                                         double tol, int max_iterations, int threads) {
  check_batch(net, Xstar, "fixed points");
  check_batch(net, grad, "gradient at the fixed points");
  ASSOCMEM_CHECK_ARG(grad.rows() == Xstar.rows(), "gradient at the fixed points: ", grad.rows(), " rows for ",
                     Xstar.rows(), " samples");
  ASSOCMEM_CHECK_ARG(std::isfinite(dt) && dt > 0, "dt must be finite and > 0, got ", dt);
  ASSOCMEM_CHECK_ARG(std::isfinite(tol) && tol > 0, "tol must be finite and > 0, got ", tol);
  ASSOCMEM_CHECK_ARG(max_iterations >= 1, "max_iterations must be >= 1, got ", max_iterations);
  LayeredGradients g = over_blocks(net, Xstar.rows(), threads, [&](Eigen::Index r0, Eigen::Index n, LayeredGradients& acc, Matrix&) {
    const Matrix x = Xstar.middleRows(r0, n), dL = grad.middleRows(r0, n);
    const Vector target = tol * dL.rowwise().norm();
    Matrix w = Matrix::Zero(n, net.size()), r;
    for (int k = 0;; ++k) {
      net.vjp_rows(x, w, r);
      r += dL;  // J^T w + dL/dx*, row by row
      const Vector res = r.rowwise().norm();
      Eigen::Index worst = 0;
      double excess = 0;  // the largest res - target
      for (Eigen::Index b = 0; b < n; ++b)
        if (!(res(b) <= target(b)) && (excess == 0 || res(b) - target(b) > excess || !std::isfinite(res(b)))) {
          worst = b;
          excess = std::isfinite(res(b)) ? res(b) - target(b) : std::numeric_limits<double>::infinity();
        }
      if (excess == 0) break;  // every row converged (a row with dL = 0 stays at w = 0)
      if (!std::isfinite(excess) || k == max_iterations)
        throw Error(detail::concat("implicit gradient: sample ", r0 + worst, ": the adjoint iteration did not converge in ",
                                   max_iterations, " iterations (|J^T w + dL/dx| = ", res(worst), " > tol |dL/dx| = ",
                                   target(worst), "): the state is not a stable fixed point of the dynamics; run more "
                                   "steps or use a smaller dt"));
      w += dt * r;
    }
    net.add_rhs_parameter_vjp_rows(x, w, acc.weights, acc.currents);
  });
  return g;  // states stay 0: x* does not depend on the initial state
}

}  // namespace assocmem
