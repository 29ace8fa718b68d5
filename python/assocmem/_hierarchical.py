"""Hierarchical associative memories in PyTorch: layered networks declared HAMUX-style (neurons and
synapses), their energy and dynamics derived, differentiable in the states and every weight, computed
in C++ (assocmem/layered.hpp). Import from assocmem.torch; see LayeredMemory.

The formulas are LayeredNetwork's (one implementation of eqs. 1-4 for L layers): this module only turns
torch parameters into a LayeredNetwork and wraps its batched products (_core._layered_*) in autograd
Functions. The computation runs in float64; results and gradients come back in the parameters' dtype.

Dependencies point one way: assocmem (_core) <- _hierarchical <- torch (the face).
"""
from __future__ import annotations

import math as _math

import numpy as _np
import torch as _torch

from . import _core, _whole

__all__ = ["Neurons", "DenseSynapse", "Conv2dSynapse", "LayeredMemory"]


class Neurons:
    """A layer of a LayeredMemory.

    name        unique, not empty
    shape       an int (a vector of neurons) or (channels, height, width): an image layer, as
                convolutions read it (flattened channel by channel, row by row, as torch's NCHW)
    lagrangian  from assocmem.lagrangians: its gradient is the layer's activation (eq. 3)
    tau         the time constant (> 0)
    bias        whether the layer has a trainable input current I_A (initialised to 0)
    """

    def __init__(self, name, shape, lagrangian, tau=1.0, bias=False):
        if not isinstance(name, str) or not name:
            raise ValueError(f"Neurons: name must be a non-empty string, got {name!r}")
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if len(shape) not in (1, 3) or not all(isinstance(s, int) and s >= 1 for s in shape):
            raise ValueError(f"Neurons '{name}': shape must be a positive int or (channels, height, width) of "
                             f"positive ints, got {shape!r}")
        if not isinstance(lagrangian, _core.lagrangians.Lagrangian):
            raise TypeError(f"Neurons '{name}': lagrangian must come from assocmem.lagrangians, got "
                            f"{type(lagrangian).__name__}")
        if not (isinstance(tau, (int, float)) and _math.isfinite(tau) and tau > 0):
            raise ValueError(f"Neurons '{name}': tau must be finite and > 0, got {tau!r}")
        self.name, self.shape, self.lagrangian, self.tau, self.bias = name, shape, lagrangian, float(tau), bool(bias)

    @property
    def size(self):
        return _math.prod(self.shape)

    def __repr__(self):
        return f"Neurons({self.name!r}, {self.shape}, {self.lagrangian.name}, tau={self.tau:g}, bias={self.bias})"


class DenseSynapse:
    """A dense synapse: W (size of target, size of source) maps the source's activations to currents of
    the target; the feedback is W^T. Initialised N(0, std^2), std = 1 / sqrt(size of source) unless given."""

    def __init__(self, source, target, std=None):
        if std is not None and not (_math.isfinite(std) and std >= 0):
            raise ValueError(f"DenseSynapse '{source}' -> '{target}': std must be finite and >= 0, got {std!r}")
        self.source, self.target, self.std = source, target, std

    def __repr__(self):
        return f"DenseSynapse({self.source!r}, {self.target!r})"


class Conv2dSynapse:
    """A 2-D convolution from an image layer to an image layer (torch.nn.functional.conv2d without bias;
    the feedback is the transposed convolution): kernel (out_channels, in_channels, kernel_size,
    kernel_size), out_channels and the output size read from the target's shape, which must be what
    the convolution gives. Initialised as torch.nn.Conv2d (uniform, bound 1 / sqrt(fan_in))."""

    def __init__(self, source, target, kernel_size, stride=1, padding=0):
        ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        if len(ks) != 2 or not all(isinstance(k, int) and k >= 1 for k in ks):
            raise ValueError(f"Conv2dSynapse '{source}' -> '{target}': kernel_size must be a positive int or a "
                             f"pair of them, got {kernel_size!r}")
        for what, v, lo in (("stride", stride, 1), ("padding", padding, 0)):
            if not isinstance(v, int) or v < lo:
                raise ValueError(f"Conv2dSynapse '{source}' -> '{target}': {what} must be an int >= {lo}, got {v!r}")
        self.source, self.target, self.kernel_size, self.stride, self.padding = source, target, ks, stride, padding

    def __repr__(self):
        return (f"Conv2dSynapse({self.source!r}, {self.target!r}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding})")


def _f64(t):
    return _np.ascontiguousarray(t.detach().to(_torch.float64).numpy())


class _Energy(_torch.autograd.Function):
    """E(x_b) for each row of x (B, N); gradients to x and every parameter (LayeredNetwork's formulas)."""

    @staticmethod
    def forward(ctx, owner, net, x, *params):
        ctx.owner, ctx.net = owner, net
        ctx.save_for_backward(x)
        return _torch.from_numpy(_core._layered_energies(net, _f64(x), owner.threads)).to(x.dtype)

    @staticmethod
    def backward(ctx, dE):
        (x,) = ctx.saved_tensors
        gx, gw, gi = _core._layered_energies_vjp(ctx.net, _f64(x), _f64(dE), ctx.owner.threads)
        return (None, None, _torch.from_numpy(gx).to(x.dtype)) + ctx.owner._parameter_grads(gw, gi)


class _Activations(_torch.autograd.Function):
    """g(x) = dL/dx layer by layer (eq. 3); its vector-Jacobian product is each layer's Hessian applied."""

    @staticmethod
    def forward(ctx, owner, net, x):
        ctx.owner, ctx.net = owner, net
        ctx.save_for_backward(x)
        return _torch.from_numpy(_core._layered_activations(net, _f64(x), owner.threads)).to(x.dtype)

    @staticmethod
    def backward(ctx, dg):
        (x,) = ctx.saved_tensors
        return None, None, _torch.from_numpy(
            _core._layered_activations_vjp(ctx.net, _f64(x), _f64(dg), ctx.owner.threads)).to(x.dtype)


class _Euler(_torch.autograd.Function):
    """steps Euler steps of eq. (1) for L layers from each row of x0; backward through every step (BPTT),
    or (implicit) from the adjoint at the fixed point reached."""

    @staticmethod
    def forward(ctx, owner, net, opts, x0, *params):
        steps, dt, implicit, tol, max_iterations, keep_all = opts
        ctx.owner, ctx.net, ctx.opts = owner, net, opts
        states = _core._layered_euler(net, _f64(x0), dt, steps, keep_all, owner.threads)
        ctx.states = states  # (steps + 1, B, N), or (2, B, N): the first and the last
        ctx.dtype = x0.dtype
        return _torch.from_numpy(states[-1].copy()).to(x0.dtype)

    @staticmethod
    def backward(ctx, dx):
        steps, dt, implicit, tol, max_iterations, keep_all = ctx.opts
        if implicit:
            gx, gw, gi = _core._layered_fixed_point_vjp(ctx.net, _np.ascontiguousarray(ctx.states[-1]), _f64(dx), dt, tol,
                                                        max_iterations, ctx.owner.threads)
        else:
            gx, gw, gi = _core._layered_euler_vjp(ctx.net, ctx.states, dt, _f64(dx), ctx.owner.threads)
        return (None, None, None, _torch.from_numpy(gx).to(ctx.dtype)) + ctx.owner._parameter_grads(gw, gi)


class LayeredMemory(_torch.nn.Module):
    """A hierarchical associative memory (Krotov, Hierarchical Associative Memory, 2021) built from its
    parts, as HAMUX builds one: layers of neurons and synapses between them are declared; the energy

        E = sum_A [x^A . g^A - L^A(x^A)] - sum_s g^b(s) . W_s g^a(s) - sum_A I_A . g^A   (eq. 2, L layers)

    and the dynamics tau_A dx^A/dt = sum W g + sum W^T g - x^A + I_A (eq. 1, L layers) follow, with
    dE/dt <= 0 for convex Lagrangians (eq. 4). Synapse weights (and biases I_A) are nn.Parameters
    ("synapses.<i>" and "bias.<layer name>" in state_dict).

        net = LayeredMemory([Neurons("image", (1, 16, 16), L.identity()),
                             Neurons("features", (4, 8, 8), L.rectified_power(2)),
                             Neurons("memories", 32, L.log_sum_exp(4.0))],
                            [Conv2dSynapse("image", "features", 4, stride=2, padding=1),
                             DenseSynapse("features", "memories")])
        x = net.join({"image": cues})            # (B, N): the other layers start at 0
        x = net(x, steps=20, dt=0.1)             # Euler steps; differentiable (BPTT, or implicit=True)
        recalled = net.split(net.activations(x))["image"]
        E = net.energy(x)                        # (B,)

    States are (B, N) tensors (N = every layer's neurons, in the order declared); the products run in
    C++ in float64 (threads: 0 = every CPU this process may use), results come back in the dtype of the
    states. network() gives the assocmem.LayeredNetwork of the current weights (simulate, energy_bound).
    """

    def __init__(self, neurons, synapses, threads=0, dtype=_torch.float32):
        super().__init__()
        neurons, synapses = list(neurons), list(synapses)
        if not neurons:
            raise ValueError("LayeredMemory: no neurons declared")
        for n in neurons:
            if not isinstance(n, Neurons):
                raise TypeError(f"LayeredMemory: neurons must be Neurons, got {type(n).__name__}")
        names = [n.name for n in neurons]
        for n in names:
            if names.count(n) > 1:
                raise ValueError(f"LayeredMemory: the layer name '{n}' is used twice")
        self.neurons = neurons
        self.threads = _whole(threads, "threads", lo=0) if threads else 0
        self._index = {n.name: i for i, n in enumerate(neurons)}
        self.offsets = [0]
        for n in neurons:
            self.offsets.append(self.offsets[-1] + n.size)
        self.specs = []
        weights = []
        for i, s in enumerate(synapses):
            if not isinstance(s, (DenseSynapse, Conv2dSynapse)):
                raise TypeError(f"LayeredMemory: synapse {i} must be a DenseSynapse or Conv2dSynapse, got "
                                f"{type(s).__name__}")
            for end in (s.source, s.target):
                if end not in self._index:
                    raise ValueError(f"LayeredMemory: synapse {i} names the unknown layer '{end}' (layers: "
                                     f"{', '.join(names)})")
            if s.source == s.target:
                raise ValueError(f"LayeredMemory: synapse {i} joins the layer '{s.source}' to itself")
            src, tgt = neurons[self._index[s.source]], neurons[self._index[s.target]]
            if isinstance(s, DenseSynapse):
                std = s.std if s.std is not None else 1.0 / _math.sqrt(src.size)
                weights.append(_torch.randn(tgt.size, src.size, dtype=dtype) * std)
            else:
                if len(src.shape) != 3 or len(tgt.shape) != 3:
                    raise ValueError(f"LayeredMemory: synapse {i} ({s!r}) needs image layers (channels, height, width) "
                                     f"at both ends, got {src.shape} and {tgt.shape}")
                c, h, w = src.shape
                kh, kw = s.kernel_size
                out = (tgt.shape[0], (h + 2 * s.padding - kh) // s.stride + 1, (w + 2 * s.padding - kw) // s.stride + 1)
                if h + 2 * s.padding < kh or w + 2 * s.padding < kw or out != tgt.shape:
                    raise ValueError(f"LayeredMemory: synapse {i} ({s!r}) maps {src.shape} to {out}, but the layer "
                                     f"'{s.target}' has shape {tgt.shape}")
                bound = 1.0 / _math.sqrt(c * kh * kw)
                weights.append((_torch.rand(tgt.shape[0], c, kh, kw, dtype=dtype) * 2 - 1) * bound)
            self.specs.append(s)
        self.synapses = _torch.nn.ParameterList([_torch.nn.Parameter(w) for w in weights])
        self.bias = _torch.nn.ParameterDict({n.name: _torch.nn.Parameter(_torch.zeros(n.size, dtype=dtype))
                                             for n in neurons if n.bias})

    # -- shapes ---------------------------------------------------------------------------------------
    @property
    def size(self):
        """Neurons in all layers (the length of a state)."""
        return self.offsets[-1]

    def split(self, x):
        """Each layer's part of states x (B, N), by name, shaped (B, *layer shape) (views)."""
        self._check_states(x, "x")
        return {n.name: x[:, self.offsets[i]:self.offsets[i + 1]].reshape(x.shape[0], *n.shape)
                for i, n in enumerate(self.neurons)}

    def join(self, parts, batch=None):
        """States (B, N) from layer parts by name ((B, *shape) or (B, size)); layers not named are 0."""
        if not isinstance(parts, dict) or not parts:
            raise ValueError("join: parts must be a non-empty dict of layer name -> tensor")
        for name in parts:
            if name not in self._index:
                raise ValueError(f"join: no layer named '{name}' (layers: {', '.join(self._index)})")
        first = next(iter(parts.values()))
        B = first.shape[0] if batch is None else batch
        x = first.new_zeros(B, self.size)
        for name, t in parts.items():
            i = self._index[name]
            if t.shape[0] != B or t[0].numel() != self.neurons[i].size:
                raise ValueError(f"join: layer '{name}' needs ({B}, {self.neurons[i].size}) numbers, got "
                                 f"{tuple(t.shape)}")
            x[:, self.offsets[i]:self.offsets[i + 1]] = t.reshape(B, -1)
        return x

    # -- the network of the current weights -------------------------------------------------------------
    def network(self):
        """The assocmem.LayeredNetwork of the current weights and biases (a float64 copy)."""
        layers = []
        for n in self.neurons:
            current = _f64(self.bias[n.name]) if n.bias else None
            layers.append(_core.Layer(n.name, n.size, n.lagrangian, n.tau, current))
        syn = []
        for s, w in zip(self.specs, self.synapses):
            if isinstance(s, DenseSynapse):
                syn.append(_core.dense(s.source, s.target, _f64(w)))
            else:
                src = self.neurons[self._index[s.source]]
                syn.append(_core.conv2d(s.source, s.target, _f64(w), src.shape, s.stride, s.padding))
        return _core.LayeredNetwork(layers, syn)

    def save(self, directory, x0=None, **options):
        """Writes the network of the current weights as a description `assocmem simulate` runs:
        directory/network.json, with each synapse's weights and each bias as .npy files beside it
        (float64, exact). x0: a starting state (N,) (default 0); options: simulate's keys (t_end, method,
        rtol, atol, dt, max_steps, fixed_point_tol, record_every) copied into the description. Each file
        is written atomically (assocmem.write_file); returns the description's path."""
        import io
        import json
        import os
        import re
        allowed = {"t_end", "method", "rtol", "atol", "dt", "max_steps", "fixed_point_tol", "record_every"}
        for k in options:
            if k not in allowed:
                raise ValueError(f"save: unknown option '{k}' (options: {', '.join(sorted(allowed))})")
        if x0 is not None:
            x0 = _np.asarray(x0.detach().numpy() if isinstance(x0, _torch.Tensor) else x0, dtype=_np.float64)
            if x0.shape != (self.size,) or not _np.all(_np.isfinite(x0)):
                raise ValueError(f"save: x0 must be {self.size} finite numbers, got shape {x0.shape}")
        os.makedirs(directory, exist_ok=True)

        def npy(name, array):
            buf = io.BytesIO()
            _np.save(buf, _np.ascontiguousarray(array, dtype=_np.float64))
            _core.write_file(os.path.join(directory, name), buf.getvalue())
            return name

        layers = []
        for i, n in enumerate(self.neurons):
            # The Lagrangian's name holds its parameters at 17 significant digits: read back exactly.
            m = re.fullmatch(r"(\w+)(?:\((.*)\))?", n.lagrangian.name)
            lag = {"name": m.group(1)}
            for item in filter(None, (m.group(2) or "").split(", ")):
                if "=" not in item:
                    raise ValueError(f"save: layer '{n.name}': {n.lagrangian.name} has a parameter ('{item}') that a "
                                     "description cannot hold")
                key, value = item.split("=")
                lag[key] = float(value)
            layer = {"name": n.name, "size": n.size, "lagrangian": lag, "tau": n.tau}
            if n.bias:
                layer["current"] = npy(f"bias_{i}.npy", _f64(self.bias[n.name]))
            if x0 is not None:
                layer["x0"] = npy(f"x0_{i}.npy", x0[self.offsets[i]:self.offsets[i + 1]])
            layers.append(layer)
        synapses = []
        for i, (s, w) in enumerate(zip(self.specs, self.synapses)):
            entry = {"from": s.source, "to": s.target}
            if isinstance(s, DenseSynapse):
                entry["dense"] = npy(f"synapse_{i}.npy", _f64(w))
            else:
                entry["conv2d"] = {"kernel": npy(f"synapse_{i}.npy", _f64(w).reshape(w.shape[0], -1)),
                                   "kernel_size": list(s.kernel_size),
                                   "in_shape": list(self.neurons[self._index[s.source]].shape),
                                   "stride": s.stride, "padding": s.padding}
            synapses.append(entry)
        path = os.path.join(directory, "network.json")
        _core.write_file(path, json.dumps({"layers": layers, "synapses": synapses, **options}, indent=1).encode())
        return path

    def _params(self):
        return list(self.synapses) + [self.bias[n.name] for n in self.neurons if n.bias]

    def _parameter_grads(self, gw, gi):
        """The C++ gradients (per synapse, and stacked currents) as one tuple in _params() order."""
        out = [_torch.from_numpy(g).to(p.dtype) for g, p in zip(gw, self.synapses)]
        for i, n in enumerate(self.neurons):
            if n.bias:
                out.append(_torch.from_numpy(gi[self.offsets[i]:self.offsets[i + 1]].copy()).to(self.bias[n.name].dtype))
        return tuple(out)

    def _check_states(self, x, what):
        if not isinstance(x, _torch.Tensor):
            raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != self.size:
            raise ValueError(f"{what} must have shape (B, {self.size}) (B states of every layer's neurons), got "
                             f"{tuple(x.shape)}")
        if not x.dtype.is_floating_point:
            raise TypeError(f"{what} must be floating point, got {x.dtype}")
        if x.device.type != "cpu":
            raise ValueError(f"{what} is on {x.device}: assocmem computes on the CPU (move it with .cpu())")
        for p in self._params():
            if p.device.type != "cpu":
                raise ValueError(f"the parameters are on {p.device}: assocmem computes on the CPU (net.cpu())")

    # -- energy and dynamics ----------------------------------------------------------------------------
    def energy(self, x):
        """The energy (eq. 2 for L layers) of each state: (B,), differentiable in x and every parameter."""
        self._check_states(x, "x")
        return _Energy.apply(self, self.network(), x, *self._params())

    def activations(self, x):
        """g = dL/dx of every layer (eq. 3), (B, N), differentiable in x."""
        self._check_states(x, "x")
        return _Activations.apply(self, self.network(), x)

    def forward(self, x0, steps=10, dt=0.1, implicit=False, tol=1e-6, max_iterations=1000):
        """The state after `steps` explicit Euler steps x <- x + dt dx/dt (eq. 1 for L layers) from x0 (B, N).

        Gradients flow to x0 and every parameter through each step (implicit=False), or, implicit=True,
        from the fixed point the steps reached (deep-equilibrium style: J^T w = -dL/dx solved by the
        adjoint iteration to |J^T w + dL/dx| <= tol |dL/dx| within max_iterations, else a RuntimeError
        saying so; x0 gets no gradient). A state that stops being finite raises RuntimeError (dt too
        large)."""
        self._check_states(x0, "x0")
        steps = _whole(steps, "steps", lo=0)
        if not (isinstance(dt, (int, float)) and _math.isfinite(dt) and dt > 0):
            raise ValueError(f"dt must be finite and > 0, got {dt!r}")
        if not (isinstance(tol, (int, float)) and _math.isfinite(tol) and tol > 0):
            raise ValueError(f"tol must be finite and > 0, got {tol!r}")
        params = self._params()
        # BPTT keeps every step's states; without a graph (or implicit), the first and last only.
        keep_all = (not implicit and _torch.is_grad_enabled()
                    and (x0.requires_grad or any(p.requires_grad for p in params)))
        opts = (steps, float(dt), bool(implicit), float(tol), _whole(max_iterations, "max_iterations"), keep_all)
        return _Euler.apply(self, self.network(), opts, x0, *params)

    @_torch.no_grad()
    def trajectory(self, x0, steps=10, dt=0.1):
        """The states after every step (steps + 1, B, N) and their energies (steps + 1, B), without gradients:
        for energy curves."""
        self._check_states(x0, "x0")
        net = self.network()
        states = _core._layered_euler(net, _f64(x0), float(dt), _whole(steps, "steps", lo=0), True, self.threads)
        energies = _np.stack([_core._layered_energies(net, s, self.threads) for s in states])
        return _torch.from_numpy(states).to(x0.dtype), _torch.from_numpy(energies).to(x0.dtype)

    def extra_repr(self):
        layers = ", ".join(f"{n.name} {n.shape} {n.lagrangian.name}" for n in self.neurons)
        return f"layers: {layers}; synapses: {self.specs}"
