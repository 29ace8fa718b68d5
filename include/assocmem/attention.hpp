// assocmem/attention.hpp - differentiable softmax attention, fused: one step of eq. (16) with separate
// keys and values, O = softmax(beta Q K^T) V, and its gradients, computed tile by tile over the
// memories so that the n x K score matrix is never stored (extra memory O(threads x n x tile)).
//
// Forward: one pass with the online softmax (running maximum m, sum_mu exp(beta s_mu - m) and the
// weighted values, rescaled when m grows); the log-sum-exp is kept for the backward pass. Backward
// (FlashAttention's recomputation): per tile, S = Q K^T, P = exp(beta S - lse), dP = dO V^T,
// dS = P o (dP - rowsum(dO o O)), then dV = P^T dO, dK = beta dS^T Q, dQ = beta dS K and
// dbeta = sum(dS o S). Masked memories have P = 0, exactly as if deleted. Layer norms of the key and value
// rows (RowNorm) are applied tile by tile as the rows are read, and taken back per row in the backward pass. float runs the products on the
// retrieval engine's dispatched kernels (AVX-512 where present), double on Eigen (gradient checks); one
// algorithm for both. Used by assocmem.torch.
#pragma once

#include <cstddef>
#include <cstdint>

#include "assocmem/lagrangian.hpp"
#include "assocmem/retrieve.hpp"

namespace assocmem {

/// A layer norm applied to every key or value row inside the attention (hopfield-layers' LayerNorm of the
/// stored patterns and of the pattern projections, fused so that the normalised memories are never stored):
/// row y (c entries) -> (y - mean(y)) / sqrt(var(y) + eps) o gamma + bias, with the mean and the biased
/// variance over the row, in double. gamma and bias have c entries each; null means 1 and 0 (no affine map).
/// Off unless `on`; eps finite and > 0.
template <class T>
struct RowNorm {
  bool on = false;
  double eps = 1e-5;
  const T* gamma = nullptr;
  const T* bias = nullptr;
  bool operator==(const RowNorm& o) const {
    return on == o.on && (!on || (eps == o.eps && gamma == o.gamma && bias == o.bias));
  }
};

/// The gradients of a RowNorm's parameters (attention_backward; each c entries, written; null: not wanted).
template <class T>
struct RowNormGradients {
  T* key_gamma = nullptr;
  T* key_bias = nullptr;
  T* value_gamma = nullptr;
  T* value_bias = nullptr;
};

template <class T>
struct AttentionArgs {
  const T* q = nullptr;  ///< n x d queries, row-major
  std::size_t n = 0, d = 0;
  const T* k = nullptr;  ///< K x d keys
  std::size_t K = 0;
  const T* v = nullptr;  ///< K x dv values (the keys themselves for auto-association)
  std::size_t dv = 0;
  /// bfloat16 storage instead (T = float): keys and values read as bfloat16 (uint16) and widened tile by
  /// tile; k and v are then null (v_bf16 may equal k_bf16). Gradients are float.
  const std::uint16_t* k_bf16 = nullptr;
  const std::uint16_t* v_bf16 = nullptr;
  double beta = kDefaultBeta;  ///< inverse temperature, finite and > 0
  MemoryMask mask;       ///< rows 0, 1 or n of K flags; non-zero leaves the memory out
  int threads = 0;       ///< 0: the CPUs this process may run on (affinity mask)
  /// An additive bias of the scores (hopfield-layers' float association mask): the weights are
  /// softmax(beta q k^T + bias); bias_rows (0: none, 1: shared by all queries, or n) rows of K values,
  /// finite or -inf (-inf leaves the memory out). Every query must keep at least one memory.
  const T* bias = nullptr;
  std::size_t bias_rows = 0;
  /// Dropout on the association weights (hopfield-layers' dropout on xi before the values; the
  /// log-sum-exp is not affected): in [0, 1). Each weight P[b][mu] is kept and scaled by 1 / (1 - dropout)
  /// or zeroed, by a counter-based generator of (dropout_seed, b, mu): the same draw in the forward and the
  /// backward pass, for any thread count or tiling, and for the same seed. Used by attention_forward and
  /// attention_backward only.
  double dropout = 0.0;
  std::uint64_t dropout_seed = 0;
  /// Layer norms of the key rows and of the value rows (RowNorm; off by default): the attention then runs
  /// against LN_k(k) and LN_v(v), and attention_backward's dk and dv are the gradients of the raw rows k and
  /// v (through the norms). The values are the keys when a.v == a.k, dv == d and value_norm == key_norm.
  /// Used by attention_forward and attention_backward (and their batches) only; the others refuse it.
  RowNorm<T> key_norm, value_norm;
  /// float: the portable kernels even where the CPU has AVX-512 (the choice is otherwise made once, at
  /// the first call: AVX-512 where the CPU runs it); for tests and comparisons. double always uses Eigen.
  bool portable_kernels = false;
};

/// out (n x dv) = softmax(beta q k^T) v; lse (n) = log sum_mu exp(beta q k_mu) over the memories left.
/// InvalidArgument for bad shapes, non-finite inputs, beta, or a mask that leaves a query no memory. The
/// keys and values are checked (finite; their norms against float's range) in the pass that reads them, so
/// after that error the outputs' contents are unspecified; the other arguments are checked before any is
/// written. The same holds for attention_backward and the batched calls.
template <class T>
void attention_forward(const AttentionArgs<T>& a, T* out, double* lse);

/// Gradients of sum(dout o out) with respect to q (n x d), k (K x d), v (K x dv) and beta, from the
/// forward's out and lse. dk and dv are written (not accumulated); when the values are the same memory
/// as the keys (a.v == a.k, dv == d; with layer norms, whichever they are), dv may be the same buffer as
/// dk, which then receives their sum. dbias (bias_rows x K, written; null: not wanted): the gradient of the
/// bias, d loss / d(beta q k^T + bias), summed over the queries where one row is shared. dnorm (null: not
/// wanted): the gradients of the layer norms' gamma and bias (a.key_norm, a.value_norm); when the values
/// are the keys (one norm), the keys' entries receive the whole gradient and the values' are zero.
template <class T>
void attention_backward(const AttentionArgs<T>& a, const T* out, const double* lse, const T* dout, T* dq, T* dk, T* dv,
                        double* dbeta, T* dbias = nullptr, const RowNormGradients<T>* dnorm = nullptr);

/// A batch of E independent attentions of one shape: the (batch x heads) of a transformer layer, each
/// with its own memories. Element e reads its queries at a.q + e q_stride, its keys and values at
/// a.k (a.k_bf16) + e k_stride and a.v (a.v_bf16) + e v_stride, its mask rows (a.mask.rows of them: 0, 1
/// or n) at a.mask.data + e mask_stride, its bias rows at a.bias + e bias_stride, and its inverse temperature betas[e] (null: a.beta for every
/// element); with dropout, element e draws from its own seed (a.dropout_seed mixed with e). Strides count elements of the arrays' own types and are at least one element's size
/// (every element has its own memories: for memories shared by the batch, give all queries to one
/// attention_forward). Outputs are packed element after element: out E x n x dv, lse E x n, dq E x n x d,
/// dk E x K x d, dv E x K x dv, dbeta E. The threads (a.threads) are split over the elements; elements
/// fewer than threads share the rest over their tiles. Errors name the element ("batch element e: ...").
struct AttentionBatch {
  std::size_t elements = 1;
  std::size_t q_stride = 0, k_stride = 0, v_stride = 0, mask_stride = 0, bias_stride = 0;
  const double* betas = nullptr;
};

template <class T>
void attention_forward_batch(const AttentionArgs<T>& a, const AttentionBatch& batch, T* out, double* lse);

/// attention_backward for every element of a batch (see AttentionBatch); when the values are the same
/// memory as the keys (a.v == a.k, equal strides), dv may be dk, which then receives their sum. The layer
/// norms (a.key_norm, a.value_norm) are shared by the elements; dnorm's gradients are per element, packed
/// E x d (keys) and E x dv (values).
template <class T>
void attention_backward_batch(const AttentionArgs<T>& a, const AttentionBatch& batch, const T* out, const double* lse,
                              const T* dout, T* dq, T* dk, T* dv, double* dbeta, T* dbias = nullptr,
                              const RowNormGradients<T>* dnorm = nullptr);

/// The association matrix itself (hopfield-layers' need_weights), P (n x K) = softmax(beta q k^T + bias) over
/// the memories left, eq. (12)'s weights: masked memories and bias -inf get 0; no dropout. P is a
/// materialised n x K matrix (the fused calls above never form it). Refuses dropout and layer norms.
template <class T>
void attention_weights(const AttentionArgs<T>& a, T* P);

/// Gradients of sum(dP o P), P = attention_weights(a), with respect to q, k, beta and the bias: with
/// dS = P o (dP - rowsum(dP o P)) = d loss / d(beta q k^T + bias), dq = beta dS k, dk = beta dS^T q,
/// dbeta = sum dS o (q k^T), dbias = dS (bias_rows x K, summed over the queries where one row is shared;
/// null: not wanted).
template <class T>
void attention_weights_backward(const AttentionArgs<T>& a, const T* P, const T* dP, T* dq, T* dk, double* dbeta,
                                T* dbias = nullptr);

/// attention_weights and its backward pass for every element of a batch (see AttentionBatch; values and
/// their strides unused): P E x n x K, dq E x n x d, dk E x K x d, dbeta E, dbias E x bias_rows x K.
template <class T>
void attention_weights_batch(const AttentionArgs<T>& a, const AttentionBatch& batch, T* P);
template <class T>
void attention_weights_backward_batch(const AttentionArgs<T>& a, const AttentionBatch& batch, const T* P,
                                      const T* dP, T* dq, T* dk, double* dbeta, T* dbias = nullptr);

/// Gradients of sum_b dlse_b lse_b, lse_b = log sum_mu exp(beta q_b . k_mu) over the memories left,
/// with respect to q (n x d), k (K x d) and beta: with P = exp(beta S - lse), dq = beta (dlse o P) K,
/// dk = beta P^T (dlse o q), dbeta = sum_b dlse_b sum_mu P_b,mu s_b,mu. The energy of model B, eq. (13),
/// is E = |q|^2 / 2 - lse / beta (assocmem.torch.hopfield_energy). a.v is not used.
template <class T>
void log_sum_exp_backward(const AttentionArgs<T>& a, const double* lse, const double* dlse, T* dq, T* dk, double* dbeta);

/// Model C at unit directions g (a.q: n x d rows g_b = v_b/|v_b|, eq. 18; the caller normalises), over
/// the memories a.k with interaction F (a.v, a.dv and a.beta are not used): drive (n x d) =
/// F'(g K^T) K, the xi^T f term of eq. (22), and energy (n) = -sum_mu F(g_b . k_mu), eq. (21).
template <class T>
void spherical_forward(const AttentionArgs<T>& a, const AdditiveLagrangian& F, T* drive, double* energy);

/// Gradients of sum(ddrive o drive) + sum(denergy o energy) with respect to g (n x d) and the memories
/// (K x d); ddrive or denergy may be null (no such term). With S = g K^T, A = F'(S):
/// dS = F''(S) o (ddrive K^T) - denergy o A, dg = dS K, dk = A^T ddrive + dS^T g.
template <class T>
void spherical_backward(const AttentionArgs<T>& a, const AdditiveLagrangian& F, const T* ddrive, const double* denergy,
                        T* dg, T* dk);

/// One Euler step of model C, eq. (22), from the raw states v (a.q: n x d, every row non-zero; a zero row
/// is refused, its direction v/|v| of eq. (18) being undefined), over the memories a.k with interaction F:
/// next (n x d) = v + step (F'(g K^T) K - alpha v) with g = v/|v|, and energy (n) = -sum_mu F(g . k_mu) at
/// v, eq. (21). next may be null (the energy alone). step finite and > 0, alpha finite and >= 0. The step is
/// the engine's (detail::spherical_step); assocmem.torch's spherical_retrieve and spherical_energy.
template <class T>
void spherical_step(const AttentionArgs<T>& a, const AdditiveLagrangian& F, double alpha, double step, T* next,
                    double* energy);

/// Gradients of sum(dnext o next) + sum(denergy o energy) of spherical_step with respect to v (n x d) and
/// the memories (K x d); dnext or denergy may be null (no such term). Through g = v/|v|:
/// dv = (1 - step alpha) dnext + (dg - g (g . dg)) / |v|, dg and dk from spherical_backward with
/// ddrive = step dnext.
template <class T>
void spherical_step_backward(const AttentionArgs<T>& a, const AdditiveLagrangian& F, double alpha, double step,
                             const T* dnext, const double* denergy, T* dv, T* dk);

/// Iterates eq. (16) on the keys, v <- softmax(beta v K^T) K (a.v must be a.k, dv = d), from the states
/// a.q (n x d) for at most max_updates updates, each row until its largest change max_i |v_new - v| is
/// <= fixed_point_tol (the retrievals' stopping rule, detail::max_abs_change): the final states go to `states`
/// (n x d), the returned Retrieval has steps, stop and last_change per row (no states). With a mask of n
/// rows, row b keeps its own. Used by assocmem.torch's hopfield_retrieve(implicit=True).
template <class T>
Retrieval attention_fixed_point(const AttentionArgs<T>& a, long max_updates, double fixed_point_tol, T* states);

}  // namespace assocmem
