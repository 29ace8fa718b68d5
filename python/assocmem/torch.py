"""assocmem.torch: differentiable Hopfield retrieval for PyTorch (CPU), fused forward and backward.

    out = hopfield_retrieve(queries, keys, values=None, beta=1.0, mask=None, steps=1)

is model B's retrieval (eq. 16) with attention's keys and values: steps - 1 updates of eq. (16) on the
keys, q <- softmax(beta q K^T) K, then out = softmax(beta q K^T) V (values=None: V = K), as
hopfield-layers iterates its state pattern before the association with the values. Gradients flow to
queries, keys, values and beta (a float, or a tensor that requires grad); for steps > 1 they are
backpropagated through every step, or (implicit=True) obtained from the adjoint of the fixed point.

Forward and backward run in C++ (assocmem/attention.hpp) tile by tile over the memories, recomputing the
scores in the backward pass from the saved log-sum-exp (the FlashAttention scheme), so the
(queries x memories) score matrix is never stored: the extra memory is O(queries x d + memories x d) for
the gradients themselves, not O(queries x memories). float32 and float64 tensors (float64: gradient
checks), and bfloat16 memories (keys, values), widened to float32 tile by tile, computed in float32,
their gradients returned in bfloat16; contiguous CPU tensors are used without copies. mask: bool (K,) shared by all queries or
(..., K) per query; True leaves a memory out, exactly as if deleted (torch's key_padding_mask and
hopfield-layers' stored_pattern_padding_mask use the same sense).

    energy = hopfield_energy(states, keys, beta=1.0, mask=None)

is model B's energy, eq. (13): E = |v|^2 / 2 - (1/beta) log sum_mu exp(beta xi_mu . v), differentiable in
the states, the memories and beta, with the log-sum-exp and its gradient fused the same way.

    v = spherical_retrieve(queries, memories, F="rectified", n=3, steps=10, step=0.1, alpha=1.0)
    energy = spherical_energy(states, memories, F="rectified", n=3)

are model C: Euler steps of eq. (22), v <- v + step (xi^T f(xi v/|v|) - alpha v), and its energy, eq.
(21), E = -sum_mu F(xi_mu . v/|v|), differentiable in the states and the memories; each step (the
direction, the sums over the memories F'(S) K and F(S), the step) and its gradient, with F'', run in C++ the
same way (the step is ModelCEngine's).

    empty_cache(), memory_reserved()

free, and count, the large output buffers (the memories' gradients, 32 MB and more) kept for reuse after
they are freed (at most 4 and 1 GiB): a fresh allocation of that size is zero-filled by the kernel on
every call.

    Hopfield, HopfieldPooling, HopfieldLayer, HopfieldCore, HopfieldEncoderLayer, HopfieldDecoderLayer

are hopfield-layers' modules (same arguments, defaults, forward and state_dict names), their association
computed by hopfield_retrieve; see assocmem._layers for what differs.

    net = LayeredMemory([Neurons(...), ...], [DenseSynapse(...), Conv2dSynapse(...), ...])
    x = net(x0, steps=20, dt=0.1)    E = net.energy(x)    g = net.activations(x)

is a hierarchical associative memory (any number of layers, dense and convolutional synapses) declared
from its parts, HAMUX-style: the energy and dynamics (eqs. 1-4 for L layers) are derived, computed in
C++ by assocmem.LayeredNetwork, differentiable in the states and every weight, through each Euler step
or (implicit=True) at the fixed point; see assocmem._hierarchical.
"""
from __future__ import annotations

# The face only: the functions from the functional layer, the modules from the layers built on it
# (_functional <- _layers <- torch; no import circle).
from ._functional import (empty_cache, hopfield_energy, hopfield_retrieve, memory_reserved, spherical_energy,
                          spherical_retrieve)
from ._hierarchical import Conv2dSynapse, DenseSynapse, LayeredMemory, Neurons
from ._layers import (Hopfield, HopfieldCore, HopfieldDecoderLayer, HopfieldEncoderLayer, HopfieldLayer,
                      HopfieldPooling)

for _f in (hopfield_retrieve, hopfield_energy, spherical_retrieve, spherical_energy, empty_cache, memory_reserved,
           Hopfield, HopfieldPooling,
           HopfieldLayer, HopfieldCore, HopfieldEncoderLayer, HopfieldDecoderLayer, LayeredMemory, Neurons, DenseSynapse,
           Conv2dSynapse):
    _f.__module__ = __name__  # help() and reprs name the public module
del _f

__all__ = ["hopfield_retrieve", "hopfield_energy", "spherical_retrieve", "spherical_energy", "empty_cache",
           "memory_reserved", "Hopfield",
           "HopfieldPooling", "HopfieldLayer", "HopfieldCore", "HopfieldEncoderLayer", "HopfieldDecoderLayer",
           "LayeredMemory", "Neurons", "DenseSynapse", "Conv2dSynapse"]
