// The options and result types shared by every retrieval, and the one table of defaults.
#include "assocmem/retrieve.hpp"

#include <cmath>
#include <limits>

namespace assocmem {

ModelKind parse_model(const std::string& name) {
  if (name == "A" || name == "a") return ModelKind::A;
  if (name == "B" || name == "b") return ModelKind::B;
  if (name == "C" || name == "c") return ModelKind::C;
  throw InvalidArgument("model must be one of A, B, C; got '" + name + "'");
}

std::string to_string(ModelKind model) {
  switch (model) {
    case ModelKind::A: return "A";
    case ModelKind::B: return "B";
    case ModelKind::C: return "C";
  }
  return "?";
}

UpdateOrder parse_update_order(const std::string& name) {
  if (name == "random") return UpdateOrder::RandomAsync;
  if (name == "fixed") return UpdateOrder::FixedAsync;
  if (name == "sync" || name == "synchronous") return UpdateOrder::Synchronous;
  throw InvalidArgument("order must be one of random, fixed, sync; got '" + name + "'");
}

std::string to_string(UpdateOrder order) {
  switch (order) {
    case UpdateOrder::RandomAsync: return "random";
    case UpdateOrder::FixedAsync: return "fixed";
    case UpdateOrder::Synchronous: return "sync";
  }
  return "?";
}

std::string to_string(StopReason reason) {
  switch (reason) {
    case StopReason::Converged: return "converged";
    case StopReason::MaxSteps: return "max_steps";
    case StopReason::BlewUp: return "blew_up";
  }
  return "?";
}

// The one table of defaults (C++, CLI and Python read it).
//   A: asynchronous sweeps in a random order until a sweep flips nothing (Krotov & Hopfield 2016).
//   B: one step of eq. (16), the attention update: it retrieves a memory in one step when the
//      memories are well separated (Ramsauer et al. 2020); ask for more steps to iterate.
//   C: Euler steps of eq. (22) with dt/tau_f = 0.1.
RetrieveDefaults retrieve_defaults(ModelKind model) {
  switch (model) {
    case ModelKind::A: return {1000, 0.0, std::numeric_limits<double>::quiet_NaN(), UpdateOrder::RandomAsync};
    case ModelKind::B: return {1, 0.0, 1.0, UpdateOrder::RandomAsync};
    case ModelKind::C: return {100, 0.0, 0.1, UpdateOrder::RandomAsync};
  }
  throw InvalidArgument("unknown model");
}

double call_beta(std::optional<double> beta, double model_beta) {
  if (!beta) return model_beta;
  ASSOCMEM_CHECK_ARG(std::isfinite(*beta) && *beta > 0 && *beta <= std::numeric_limits<float>::max(),
                     "beta must be finite, > 0 and within the float32 range, got ", *beta);
  return *beta;
}

// The one table of what each model takes (Capability), with the reason a model does not.
bool supports(ModelKind model, Capability what) {
  switch (what) {
    case Capability::Step:
    case Capability::Mask:
    case Capability::Certify: return model != ModelKind::A;
    case Capability::Order: return model == ModelKind::A;
    case Capability::CallBeta:
    case Capability::TopK:
    case Capability::Values:
    case Capability::Approximate: return model == ModelKind::B;
  }
  return false;
}

void require(ModelKind model, Capability what, const std::string& option) {
  if (supports(model, what)) return;
  const std::string m = "model " + to_string(model);
  std::string why;
  switch (what) {
    case Capability::Step: why = "does not apply to model A (its updates are sweeps of sign flips)"; break;
    case Capability::Order: why = "applies to model A only (" + m + " updates every feature at once)"; break;
    case Capability::CallBeta:
      why = model == ModelKind::A ? "model A's inverse temperature belongs to F = exp and is set at construction"
                                  : "model C's gain belongs to its F and is set at construction";
      break;
    case Capability::TopK: why = m + " has no softmax weights to rank memories by"; break;
    case Capability::Mask: why = m + " takes no memory mask"; break;
    case Capability::Certify: why = "certified retrieval is for models B and C (this is " + m + ")"; break;
    case Capability::Values: why = "only model B associates keys with values (this is " + m + ")"; break;
    case Capability::Approximate: why = "approximate retrieval is for model B (this is " + m + ")"; break;
  }
  throw InvalidArgument(option + ": " + why);
}

ResolvedOptions resolve(const RetrieveOptions& o, ModelKind model) {
  const RetrieveDefaults d = retrieve_defaults(model);
  ResolvedOptions r{o.max_steps.value_or(d.max_steps), o.tol.value_or(d.tol), o.step.value_or(d.step),
                    o.order.value_or(d.order)};
  ASSOCMEM_CHECK_ARG(r.max_steps > 0 && r.max_steps <= kMaxRetrieveSteps, "max_steps must be in [1, ", kMaxRetrieveSteps,
                     "] (each step is a pass over every memory), got ", r.max_steps);
  ASSOCMEM_CHECK_ARG(std::isfinite(r.tol) && r.tol >= 0, "tol must be finite and >= 0, got ", r.tol);
  ASSOCMEM_CHECK_ARG(o.mask.rows == 0 || o.mask.data != nullptr, "mask: rows = ", o.mask.rows, " but data is null");
  if (o.step) require(model, Capability::Step, "step");
  if (o.order) require(model, Capability::Order, "order");
  if (o.beta) require(model, Capability::CallBeta, "beta");
  if (o.top_k) require(model, Capability::TopK, "top_k");
  if (o.mask.rows) require(model, Capability::Mask, "mask");
  if (o.certify) require(model, Capability::Certify, "certify");
  if (o.approximate) require(model, Capability::Approximate, "approximate");
  if (model == ModelKind::B) {
    ASSOCMEM_CHECK_ARG(std::isfinite(r.step) && r.step > 0 && r.step <= 1, "step (dt/tau_f) must be in (0, 1], got ",
                       r.step);
    if (o.beta) call_beta(o.beta, 1.0);
  } else if (model == ModelKind::C) {
    ASSOCMEM_CHECK_ARG(std::isfinite(r.step) && r.step > 0, "step (dt/tau_f) must be finite and > 0, got ", r.step);
  }
  return r;
}

Vector Retrieval::state(std::size_t b) const {
  ASSOCMEM_CHECK_ARG(b < batch, "state index ", b, " out of range (batch ", batch, ")");
  Vector v(static_cast<Eigen::Index>(dim));
  for (std::size_t j = 0; j < dim; ++j) v[static_cast<Eigen::Index>(j)] = states[b * dim + j];
  return v;
}

}  // namespace assocmem
