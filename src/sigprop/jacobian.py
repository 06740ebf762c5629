"""Empirical input-output Jacobians of torch networks: spectra, norms, and NetSpec read-back.

Conventions (the same as :mod:`sigprop.netspec`)
------------------------------------------------
* A network of ``L`` layers ``h^l = W^l x^{l-1} + b^l``, ``x^l = phi_l(h^l)`` has the
  input-output Jacobian ``J = D_L W_L ... D_1 W_1`` with ``D_l = diag(phi_l'(h^l))``, an
  ``N_L x N_0`` matrix per input; a linear readout is a layer whose ``phi`` is the identity.
* For a masked layer (``torch.nn.utils.prune``: ``weight_orig`` + ``weight_mask``) ``W`` is the
  masked weight ``weight_orig * weight_mask``.
* ``J^T J`` has ``N_0`` eigenvalues: the squares of the ``min(N_L, N_0)`` singular values of
  ``J`` and ``N_0 - min(N_L, N_0)`` structural zeros. Rank deficiency (a narrow layer, dead
  ReLU units: for ReLU about half of every ``D_l`` is zero) puts an atom at zero.

Numerical zero
--------------
A singular value ``s`` of ``J`` counts as zero when ``s <= max(N_L, N_0) * eps * s_max`` with
``eps`` the machine epsilon of the dtype ``J`` was computed in: the tolerance of
``numpy.linalg.matrix_rank`` (LAPACK's rank convention). The entries of a computed ``J`` carry
rounding errors of relative size ``~eps``, which perturb every singular value by up to
``~ sqrt(N) eps ||J||``, so smaller singular values cannot be told apart from 0 in that
precision. The atom of the spectrum of ``J^T J`` is the fraction of its ``N_0`` eigenvalues
below the square of this threshold. (A fixed relative threshold such as ``1e-10 * lambda_max``
would be arbitrary: deep nets have genuine eigenvalues of ``J^T J`` far below it, e.g. the
Fuss-Catalan density of a depth-L linear net diverges like ``lambda^{-L/(L+1)}`` at 0.)
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from sigprop.errors import NumericalError
from sigprop.nets.init import haar
from sigprop.netspec import NetSpec
from sigprop.theory.activations import Activation, get_activation

__all__ = [
    "EmpiricalSpectrum",
    "build_network",
    "empirical_spectrum",
    "input_output_jacobian",
    "jacobian_stats",
    "netspec_from_module",
    "random_input",
    "singular_values",
    "spectral_norm_vs_depth",
    "zero_threshold",
]

# ----------------------------------------------------------------------------------------
# Parsing MLP-like models into (Linear, [elementwise modules]) layers
# ----------------------------------------------------------------------------------------
#: torch activation modules that act elementwise (any of them can follow a Linear layer)
_ELEMENTWISE = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Softplus,
    nn.Softsign,
    nn.Tanh,
    nn.Tanhshrink,
    nn.Sigmoid,
    nn.LogSigmoid,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardshrink,
    nn.Softshrink,
    nn.Threshold,
)
#: modules that are the identity in eval mode
_IDENTITY = (nn.Identity, nn.Dropout, nn.AlphaDropout)


def _is_elementwise(m: nn.Module) -> bool:
    from sigprop.nn_activations import TorchActivation

    if isinstance(m, nn.PReLU):
        return m.num_parameters == 1
    return isinstance(m, (TorchActivation, *_ELEMENTWISE, *_IDENTITY))


def _flatten_sequential(seq: nn.Sequential) -> list[nn.Module]:
    out: list[nn.Module] = []
    for m in seq:
        if isinstance(m, nn.Sequential):
            out.extend(_flatten_sequential(m))
        else:
            out.append(m)
    return out


def _mlp_layers(model: nn.Module) -> tuple[list[tuple[nn.Linear, list[nn.Module]]], int] | str:
    """``([(linear, [elementwise modules after it]), ...], in_features)`` for an MLP-like model,
    or a string saying why the model is not one."""
    from sigprop.nets.models import MLP

    if isinstance(model, MLP):
        if type(model).forward is not MLP.forward:
            return f"{type(model).__name__} overrides MLP.forward"
        layers = [(lin, [act]) for lin, act in zip(model.layers[:-1], model.acts, strict=True)]
        layers.append((model.layers[-1], []))
        return layers, int(model.layers[0].in_features)
    if isinstance(model, nn.Linear):
        return [(model, [])], int(model.in_features)
    if not isinstance(model, nn.Sequential):
        return (
            f"{type(model).__name__} is neither a sigprop MLP nor an nn.Sequential of nn.Linear and "
            "elementwise activations"
        )
    mods = _flatten_sequential(model)
    if mods and isinstance(mods[0], nn.Flatten) and mods[0].end_dim == -1:
        mods = mods[1:]
    layers: list[tuple[nn.Linear, list[nn.Module]]] = []
    for i, m in enumerate(mods):
        if isinstance(m, nn.Linear):
            layers.append((m, []))
        elif _is_elementwise(m):
            if not layers:
                return f"module {i} ({type(m).__name__}) comes before the first nn.Linear"
            layers[-1][1].append(m)
        else:
            return f"module {i} is {type(m).__name__}, not nn.Linear or an elementwise activation"
    if not layers:
        return "the nn.Sequential has no nn.Linear layer"
    for (a, _), (b, _) in itertools.pairwise(layers):
        if a.out_features != b.in_features:
            return f"consecutive Linear layers do not chain ({a.out_features} outputs -> {b.in_features} inputs)"
    return layers, int(layers[0][0].in_features)


def _masked_weight(lin: nn.Linear) -> torch.Tensor:
    """The effective weight: ``weight_orig * weight_mask`` for a pruned layer (the value the
    prune hook would compute now), else ``weight``."""
    orig, mask = getattr(lin, "weight_orig", None), getattr(lin, "weight_mask", None)
    if isinstance(orig, torch.Tensor) and isinstance(mask, torch.Tensor):
        return orig * mask
    return lin.weight


def _elementwise_derivative(mods: list[nn.Module], h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(phi(h), phi'(h))`` for the composition ``phi`` of elementwise modules (``None`` for the
    identity). The derivative is that of autograd (so one-sided slopes at kinks agree with it)."""
    real = [m for m in mods if not isinstance(m, _IDENTITY)]
    if not real:
        return h, None
    with torch.enable_grad():
        hh = h.detach().requires_grad_(True)
        y = hh
        for m in real:
            y = m(y)
        (d,) = torch.autograd.grad(y, hh, torch.ones_like(y))
    return y.detach(), d.detach()


def _model_ref(model: nn.Module) -> torch.Tensor | None:
    for p in model.parameters():
        return p
    for b in model.buffers():
        if b.is_floating_point():
            return b
    return None


def _as_batch(x: torch.Tensor, n_in: int | None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor (B, ...) of inputs, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(
            f"x must be a batch (B, ...) of inputs with a leading batch dimension, got shape {tuple(x.shape)}; "
            "use x.unsqueeze(0) for a single input"
        )
    if x.shape[0] < 1:
        raise ValueError("x is an empty batch (B = 0)")
    if n_in is not None and math.prod(x.shape[1:]) != n_in:
        raise ValueError(
            f"the model takes {n_in} input features per example, but x has shape {tuple(x.shape)} "
            f"({math.prod(x.shape[1:])} features per example)"
        )
    return x


#: overhead of one small torch op, in multiply-adds, when choosing the per-example route
_OP_COST = 50_000


def _chain_cost(dims: Sequence[int]) -> tuple[int, bool]:
    """Multiply-adds of the chain ``M_L ... M_1`` (``M_l`` is ``dims[l] x dims[l-1]``) accumulated
    from the input side (``sum_l d_l d_{l-1} d_0``) or the output side (``sum_l d_L d_l d_{l-1}``),
    whichever is cheaper; returns ``(cost, from_input_side)``."""
    pairs = sum(a * b for a, b in itertools.pairwise(dims))
    return pairs * min(dims[0], dims[-1]), dims[0] <= dims[-1]


def _explicit_jacobian(layers, x: torch.Tensor) -> torch.Tensor:
    """``J = D_L W_L ... D_1 W_1`` per example.

    A forward pass stores every ``W_l`` and ``d_l = phi_l'(h^l)``. Then either

    * dense: batched matmuls over the whole batch, accumulated from the input or the output
      side, whichever is cheaper for these widths; or
    * gated (per example): a unit with ``phi'(h) = 0`` (half of the ReLU units) gives a zero row
      of ``D_l W_l`` and makes the matching column of ``W_{l+1}`` irrelevant, so only the
      ``k_l x k_{l-1}`` block of active units is multiplied (a 4x saving for ReLU), and the
      rows of active output units are scattered into ``J``.

    The gated route is taken when its multiply-add count (plus a per-op overhead) is lower.
    Both are exact products; they differ only in which exact zeros are skipped.
    """
    b = x.shape[0]
    ws: list[torch.Tensor] = []
    ds: list[torch.Tensor | None] = []
    with torch.no_grad():
        act = x
        for lin, mods in layers:
            w = _masked_weight(lin).detach()
            h = act @ w.T
            if lin.bias is not None:
                h = h + lin.bias.detach()
            act, d = _elementwise_derivative(mods, h)
            ws.append(w)
            ds.append(d)
        widths = [x.shape[1]] + [w.shape[0] for w in ws]
        dense_cost, forward = _chain_cost(widths)
        dense_cost *= b
        if any(d is not None for d in ds):
            counts = [
                torch.full((b,), w.shape[0]) if d is None else (d != 0).sum(1).cpu()
                for w, d in zip(ws, ds, strict=True)
            ]
            gated_cost = sum(
                _chain_cost([widths[0], *(int(c[i]) for c in counts)])[0] + _OP_COST * 2 * len(ws) for i in range(b)
            )
            if gated_cost < dense_cost:
                return _gated_jacobian(ws, ds, x)
        if forward:
            jac = ws[0].expand(b, *ws[0].shape)
            jac = jac * ds[0].unsqueeze(-1) if ds[0] is not None else jac
            for w, d in zip(ws[1:], ds[1:], strict=True):
                jac = torch.matmul(w, jac)
                jac = jac * d.unsqueeze(-1) if d is not None else jac
            return jac.contiguous()
        jac = ws[-1].expand(b, *ws[-1].shape)
        jac = jac * ds[-1].unsqueeze(-1) if ds[-1] is not None else jac
        for w, d in zip(reversed(ws[:-1]), reversed(ds[:-1]), strict=True):
            jac = torch.matmul(jac * d.unsqueeze(-2), w) if d is not None else torch.matmul(jac, w)
        return jac.contiguous()


def _gated_jacobian(ws: list[torch.Tensor], ds: list[torch.Tensor | None], x: torch.Tensor) -> torch.Tensor:
    """Per-example product over the active units only (see :func:`_explicit_jacobian`)."""
    b, n0 = x.shape
    nL = ws[-1].shape[0]
    out = x.new_zeros(b, nL, n0)
    for i in range(b):
        rows = [None if d is None else torch.nonzero(d[i]).flatten() for d in ds]
        if any(r is not None and r.numel() == 0 for r in rows):
            continue  # a layer with no active unit: J = 0

        def block(layer: int, rows=rows, i=i) -> torch.Tensor:
            m = ws[layer]
            r, c = rows[layer], rows[layer - 1] if layer > 0 else None
            if r is not None:
                m = m.index_select(0, r)
            if c is not None:
                m = m.index_select(1, c)
            return ds[layer][i, r].unsqueeze(-1) * m if r is not None else m

        dims = [n0] + [w.shape[0] if r is None else r.numel() for w, r in zip(ws, rows, strict=True)]
        if _chain_cost(dims)[1]:
            acc = block(0)
            for layer in range(1, len(ws)):
                acc = block(layer) @ acc
        else:
            acc = block(len(ws) - 1)
            for layer in range(len(ws) - 2, -1, -1):
                acc = acc @ block(layer)
        if rows[-1] is None:
            out[i] = acc
        else:
            out[i, rows[-1]] = acc
    return out


def _autograd_jacobian(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``vmap(jacrev)`` over examples (loop with autograd if vmap cannot run the model)."""
    b = x.shape[0]
    n_in = math.prod(x.shape[1:])

    def f(xi: torch.Tensor) -> torch.Tensor:
        return model(xi.unsqueeze(0)).reshape(-1)

    try:
        jac = torch.func.vmap(torch.func.jacrev(f))(x)
    except (RuntimeError, NotImplementedError):  # an op vmap cannot batch: one example at a time
        rows = [torch.autograd.functional.jacobian(f, x[i]) for i in range(b)]
        jac = torch.stack(rows)
    return jac.reshape(b, -1, n_in).detach()


def input_output_jacobian(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Input-output Jacobians ``d model(x_b) / d x_b`` of a batch of inputs.

    For MLP-like models (a sigprop :class:`~sigprop.nets.models.MLP`, an ``nn.Sequential`` of
    ``nn.Linear`` and elementwise activations, masked or not) ``J = D_L W_L ... D_1 W_1`` is
    built as an explicit product with batched matmuls, accumulated from the input side
    (cost ``sum_l N_l N_{l-1} N_0``) or from the output side (``sum_l N_L N_l N_{l-1}``),
    whichever is cheaper; a pruned layer uses ``weight_orig * weight_mask``. Any other model
    (CNNs, ResNets) goes through ``torch.func.vmap(torch.func.jacrev(model))``.

    The model runs in eval mode (its train/eval mode is restored afterwards); its parameters
    and their ``.grad`` are not changed.

    Parameters
    ----------
    model : nn.Module
    x : Tensor of shape ``(B, ...)``
        A batch of inputs; it is cast to the dtype and device of the model's parameters.

    Returns
    -------
    Tensor of shape ``(B, n_out, n_in)``
        ``n_in`` the number of input features per example (inputs are flattened), ``n_out``
        the number of outputs per example (flattened).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch nn.Module, got {type(model).__name__}")
    parsed = _mlp_layers(model)
    if not isinstance(parsed, str):
        n_in = parsed[1]
    else:  # a sigprop Network declares its input shape
        shape = getattr(model, "in_shape", None)
        n_in = math.prod(shape) if isinstance(shape, tuple) and shape else None
    x = _as_batch(x, n_in)
    ref = _model_ref(model)
    if ref is not None and x.is_floating_point():
        x = x.to(device=ref.device, dtype=ref.dtype)
    elif ref is not None:
        x = x.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else torch.get_default_dtype())
    was_training = model.training
    model.eval()
    try:
        if not isinstance(parsed, str):
            jac = _explicit_jacobian(parsed[0], x.detach().reshape(x.shape[0], -1))
        else:
            jac = _autograd_jacobian(model, x.detach())
    finally:
        model.train(was_training)
    return jac


# ----------------------------------------------------------------------------------------
# Singular values and their statistics
# ----------------------------------------------------------------------------------------
def singular_values(J: torch.Tensor) -> torch.Tensor:
    """Singular values of a batch of matrices, in decreasing order.

    Parameters
    ----------
    J : Tensor of shape ``(B, n_out, n_in)`` (or one matrix ``(n_out, n_in)``)

    Returns
    -------
    Tensor of shape ``(B, min(n_out, n_in))`` (resp. ``(min(n_out, n_in),)``), float64 (computed
    with ``torch.linalg.svdvals`` in float64 on devices that support it, else in J's dtype).

    Raises
    ------
    NumericalError
        If ``J`` holds NaN or inf (an overflowing network).
    """
    if not isinstance(J, torch.Tensor) or J.dim() not in (2, 3):
        shape = tuple(J.shape) if isinstance(J, torch.Tensor) else type(J).__name__
        raise ValueError(f"J must be a tensor (B, n_out, n_in) or (n_out, n_in), got {shape}")
    if J.numel() == 0:
        raise ValueError(f"J is empty (shape {tuple(J.shape)})")
    if not torch.isfinite(J).all():
        raise NumericalError(
            "the Jacobian holds NaN/inf (the network overflows: reduce depth or sigma_w2, or use float64)"
        )
    Jd = J.detach()
    if Jd.device.type != "mps":
        Jd = Jd.to(torch.float64)
    single = Jd.dim() == 2
    Jd = Jd.unsqueeze(0) if single else Jd
    # all-zero rows / columns (dead ReLU outputs, unused inputs) add only zero singular values:
    # drop them and pad with exact zeros, which is exact and makes the SVD cheaper
    nz_rows, nz_cols = Jd.abs().amax(-1) > 0, Jd.abs().amax(-2) > 0
    k = min(Jd.shape[-2:])
    if float(nz_rows.float().mean()) < 0.9 or float(nz_cols.float().mean()) < 0.9:
        s = Jd.new_zeros(Jd.shape[0], k)
        for i in range(Jd.shape[0]):
            sub = Jd[i][nz_rows[i]][:, nz_cols[i]]
            if sub.numel():
                si = torch.linalg.svdvals(sub)
                s[i, : si.numel()] = si
    else:
        s = torch.linalg.svdvals(Jd)
    s = s[0] if single else s
    if not torch.isfinite(s).all():  # pragma: no cover - LAPACK failure
        raise NumericalError("the SVD of the Jacobian did not converge")
    return s.to(torch.float64) if s.device.type != "mps" else s


def zero_threshold(s_max: torch.Tensor | float, shape: tuple[int, int], dtype: torch.dtype) -> torch.Tensor | float:
    """Singular values ``<= max(shape) * eps(dtype) * s_max`` are numerically zero (the
    ``numpy.linalg.matrix_rank`` tolerance; see the module docstring)."""
    return max(shape) * torch.finfo(dtype).eps * s_max


def jacobian_stats(model: nn.Module, x: torch.Tensor) -> dict[str, float | None]:
    """Statistics of the input-output Jacobian singular values over a batch (seed 002 Table 1).

    Parameters
    ----------
    model : nn.Module
    x : Tensor ``(B, ...)``
        Inputs; one Jacobian ``J_b`` per example (:func:`input_output_jacobian`).

    Returns
    -------
    dict with Python floats
        ``mean``, ``std``: mean and (population, ddof=0) standard deviation of all
        ``B * min(n_out, n_in)`` singular values together; ``cond``: mean over inputs of the
        condition number ``s_max / s_min`` of ``J_b`` -- ``None`` when it is infinite, i.e. when
        some ``J_b`` has a singular value that is numerically zero (``s_min <= max(n_out, n_in)
        * eps * s_max``, eps of the dtype J was computed in: the ``matrix_rank`` tolerance), so
        the dict is always valid JSON (no Infinity/NaN); ``norm``: mean spectral norm ``s_max``.
    """
    J = input_output_jacobian(model, x)
    s = singular_values(J)
    s_max, s_min = s[:, 0], s[:, -1]
    zero = s_min <= zero_threshold(s_max, tuple(J.shape[1:]), J.dtype)
    cond = None if bool(zero.any()) else float((s_max / s_min).mean())
    out = {
        "mean": float(s.mean()),
        "std": float(s.std(correction=0)),
        "cond": cond,
        "norm": float(s_max.mean()),
    }
    for k, v in out.items():
        if v is not None and not math.isfinite(v):
            raise NumericalError(f"jacobian_stats: {k} is not finite ({v})")
    return out


# ----------------------------------------------------------------------------------------
# Random networks from a NetSpec
# ----------------------------------------------------------------------------------------
def _generator(seed: int | torch.Generator) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int or a torch.Generator, got {seed!r}")
    return torch.Generator().manual_seed(int(seed))


def _check_spec(spec) -> NetSpec:
    if not isinstance(spec, NetSpec):
        raise ValueError(f"spec must be a sigprop NetSpec, got {type(spec).__name__}")
    return spec


def _layer_weight(spec: NetSpec, layer: int, gen: torch.Generator) -> tuple[torch.Tensor, float | None]:
    n_in, n_out = spec.widths[layer], spec.widths[layer + 1]
    sw = spec.sigma_w2[layer]
    std = math.sqrt(sw / n_in)
    if spec.weights == "gaussian":
        return torch.randn(n_out, n_in, generator=gen, dtype=torch.float64) * std, None
    if spec.weights == "orthogonal":
        # every entry of a Haar rows x cols matrix has variance 1 / max(rows, cols); scale to
        # sigma_w2 / n_in, the NetSpec convention (singular values sqrt(sigma_w2 max(1, n_out/n_in)))
        return haar(n_out, n_in, gen, torch.float64) * math.sqrt(sw * max(1.0, n_out / n_in)), None
    ind = torch.randn(n_out, n_in, generator=gen, dtype=torch.float64) * std
    shared = float(torch.randn((), generator=gen, dtype=torch.float64)) * std
    return ind + spec.eta * shared, shared


def _random_mask(shape: tuple[int, int], kept: float, gen: torch.Generator) -> torch.Tensor | None:
    n = shape[0] * shape[1]
    k = round(kept * n)
    if k == n:
        return None
    if k < 1:
        raise ValueError(f"kept={kept} keeps round({kept} * {n}) = 0 weights of a {shape[0]}x{shape[1]} layer")
    mask = torch.zeros(n, dtype=torch.float64)
    mask[torch.randperm(n, generator=gen)[:k]] = 1.0
    return mask.reshape(shape)


def build_network(
    spec: NetSpec,
    seed: int | torch.Generator = 0,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
) -> nn.Sequential:
    """One random draw of the network a NetSpec describes, as an ``nn.Sequential``.

    ``[Linear(N_0, N_1), phi_1, Linear(N_1, N_2), phi_2, ...]``; layers with the ``linear``
    activation get no activation module. Per layer ``l`` (``n = N_{l-1}``):

    * ``gaussian``: ``W_ij ~ N(0, sigma_w2 / n)`` iid;
    * ``orthogonal``: a Haar (semi-)orthogonal matrix scaled so that every entry has variance
      ``sigma_w2 / n`` (the NetSpec convention; note that
      :func:`sigprop.nets.init.initialize` with ``"orthogonal"`` instead keeps every singular
      value at ``sqrt(sigma_w2)``, which differs on widening layers);
    * ``correlated`` (seed 000 Sec. 5): ``W = W_ind + eta * w`` with ``W_ind`` iid
      ``N(0, sigma_w2 / n)`` and ``w ~ N(0, sigma_w2 / n)`` ONE scalar shared by the layer;
    * biases ``b_i ~ N(0, sigma_b2)`` (a bias tensor is present even when ``sigma_b2 = 0``);
    * ``kept < 1``: a uniformly random mask keeping exactly ``round(kept * N_l N_{l-1})``
      entries (as :mod:`sigprop.pruning.masks` does, so the kept fraction is deterministic and
      read back exactly by :func:`netspec_from_module` when ``kept * N_l N_{l-1}`` is an
      integer), attached with ``torch.nn.utils.prune.custom_from_mask`` (a real pruned module:
      ``weight_orig`` + ``weight_mask``). The weights are NOT rescaled: the effective variance
      is ``kept * sigma_w2`` (pass ``sigma_w2 / kept`` for the rescaled net of seed 000 Thm 4.1).

    Everything is drawn on the CPU in float64 from one generator (weight, [mask], bias per
    layer in order), then cast, so a seed gives the same network on every device/dtype.
    The model carries ``model.sigprop_init = {"scheme": spec.weights, "eta": ..., ...}`` (the
    key of :func:`sigprop.nets.init.initialize`) so :func:`netspec_from_module` can read the
    weight law back.

    Parameters
    ----------
    spec : NetSpec
    seed : int or torch.Generator
        A generator is advanced (so consecutive calls draw independent networks).
    dtype, device : parameters' dtype and device.
    """
    spec = _check_spec(spec)
    gen = _generator(seed)
    mods: list[nn.Module] = []
    records = []
    for layer in range(spec.depth):
        n_in, n_out = spec.widths[layer], spec.widths[layer + 1]
        w, shared = _layer_weight(spec, layer, gen)
        mask = _random_mask((n_out, n_in), spec.kept[layer], gen)
        sb = spec.sigma_b2[layer]
        b = torch.randn(n_out, generator=gen, dtype=torch.float64) * math.sqrt(sb)
        # skip_init: no wasted default (Kaiming) draw, the values are overwritten below
        lin = torch.nn.utils.skip_init(nn.Linear, n_in, n_out, bias=True, device=device, dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(w)
            lin.bias.copy_(b)
        if mask is not None:
            prune.custom_from_mask(lin, "weight", mask=mask.to(device=device, dtype=dtype))
        mods.append(lin)
        act = spec.activation[layer]
        if act.name != "linear":
            mods.append(act.torch_module())
        records.append({"sigma_w2": spec.sigma_w2[layer], "sigma_b2": sb, "kept": spec.kept[layer], "w_shared": shared})
    net = nn.Sequential(*mods)
    net.sigprop_init = {
        "scheme": spec.weights,
        "eta": spec.eta,
        "source": "sigprop.jacobian.build_network",
        "layers": records,
    }
    return net


def random_input(
    spec: NetSpec,
    batch: int = 1,
    generator: int | torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """``batch`` inputs of width ``N_0``, uniform on the sphere ``||x||^2 / N_0 = q0`` exactly.

    Drawn as a Gaussian vector normalized to the sphere (float64 on the CPU, then cast).

    Returns
    -------
    Tensor of shape ``(batch, N_0)``.
    """
    spec = _check_spec(spec)
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    gen = _generator(0 if generator is None else generator)
    n0 = spec.widths[0]
    z = torch.randn(int(batch), n0, generator=gen, dtype=torch.float64)
    norm = z.norm(dim=1, keepdim=True)
    z = z / torch.where(norm == 0, torch.ones_like(norm), norm) * math.sqrt(spec.q0 * n0)
    return z.to(device=device, dtype=dtype)


# ----------------------------------------------------------------------------------------
# Ensemble spectra
# ----------------------------------------------------------------------------------------
@dataclass
class EmpiricalSpectrum:
    """Eigenvalues of ``J^T J`` over an ensemble of random networks and inputs.

    Attributes
    ----------
    eigenvalues : ndarray, shape ``(samples * batch * N_0,)``
        All eigenvalues of every ``J^T J`` (``N_0`` per Jacobian, zeros included), grouped by
        Jacobian (``eigenvalues.reshape(-1, N_0)`` gives one row per draw and input), each row
        in decreasing order. Numerically zero eigenvalues are stored as exactly 0.0, so that
        ``cdf(0) == atom_at_zero``.
    spectral_norms : ndarray, shape ``(samples * batch,)``
        ``||J||_2`` per draw and input.
    n_zero : int
        Number of eigenvalues that are numerically zero (per Jacobian: ``lambda <= (max(N_L,
        N_0) eps s_max)^2``, see the module docstring).
    samples, seed, batch : as passed to :func:`empirical_spectrum`.
    spec : NetSpec
    """

    eigenvalues: np.ndarray
    spectral_norms: np.ndarray
    n_zero: int
    samples: int
    seed: int
    batch: int = 1
    spec: NetSpec | None = field(default=None, repr=False)

    @property
    def atom_at_zero(self) -> float:
        """Fraction of eigenvalues that are numerically zero."""
        return self.n_zero / self.eigenvalues.size

    def cdf(self, x: float | Sequence[float]) -> np.ndarray:
        """Empirical CDF ``F(x) = #{lambda <= x} / #lambda`` (the atom at 0 included for x >= 0)."""
        lam = np.sort(self.eigenvalues)
        xs = np.asarray(x, float)
        if not np.all(np.isfinite(xs)):
            raise ValueError(f"cdf points must be finite numbers, got {x!r}")
        return np.searchsorted(lam, xs, side="right") / lam.size

    def quantile(self, p: float | Sequence[float]) -> np.ndarray:
        """Inverse CDF: the smallest eigenvalue ``x`` with ``F(x) >= p`` (``p`` in [0, 1])."""
        ps = np.asarray(p, float)
        if not np.all((ps >= 0) & (ps <= 1)):
            raise ValueError(f"quantile levels must be in [0, 1], got {p!r}")
        return np.quantile(self.eigenvalues, ps, method="inverted_cdf")

    def moments(self) -> tuple[float, float]:
        """``(m1, m2)``: means of ``lambda`` and ``lambda^2`` over the ensemble, i.e. the ensemble
        averages of the normalized trace moments ``tr(J^T J) / N_0`` and ``tr((J^T J)^2) / N_0``."""
        lam = self.eigenvalues
        return float(lam.mean()), float((lam * lam).mean())

    def to_dict(self, cdf_at: Sequence[float] = (), quantiles: Sequence[float] = ()) -> dict[str, Any]:
        """JSON-ready summary ``{samples, seed, atom_at_zero, cdf: {x: F}, quantiles: {p: x},
        moments: {m1, m2}, spectral_norm: {mean, std}}`` (``std`` with ddof=1, 0 for one value).

        Keys of ``cdf`` / ``quantiles`` are the floats given. Raises NumericalError rather
        than return a non-finite number.
        """
        cdf_at = [float(v) for v in cdf_at]
        qs = [float(v) for v in quantiles]
        F = self.cdf(cdf_at) if cdf_at else []
        Q = self.quantile(qs) if qs else []
        m1, m2 = self.moments()
        norms = self.spectral_norms
        out = {
            "samples": int(self.samples),
            "seed": int(self.seed),
            "atom_at_zero": float(self.atom_at_zero),
            "cdf": {x: float(f) for x, f in zip(cdf_at, F, strict=True)},
            "quantiles": {p: float(q) for p, q in zip(qs, Q, strict=True)},
            "moments": {"m1": m1, "m2": m2},
            "spectral_norm": {
                "mean": float(norms.mean()),
                "std": float(norms.std(ddof=1)) if norms.size > 1 else 0.0,
            },
        }
        vals = [m1, m2, out["spectral_norm"]["mean"], out["spectral_norm"]["std"], *out["quantiles"].values()]
        if not all(math.isfinite(v) for v in vals):
            raise NumericalError("the empirical spectrum has non-finite moments or quantiles (overflow)")
        return out


def _check_count(v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{what} must be a positive int, got {v!r}")
    return int(v)


def empirical_spectrum(
    spec: NetSpec,
    samples: int = 20,
    seed: int = 0,
    batch: int = 1,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
    progress: bool = False,
) -> EmpiricalSpectrum:
    """Ensemble of the eigenvalues of ``J^T J`` over ``samples`` random networks and inputs.

    Draw ``s = 1..samples``: a network :func:`build_network` and ``batch`` inputs
    :func:`random_input` (``||x||^2 = q0 N_0``), all from one generator seeded with ``seed``
    (so the first ``k`` draws do not depend on ``samples``). Each Jacobian ``J`` (``N_L x N_0``,
    :func:`input_output_jacobian`) contributes the ``N_0`` eigenvalues of ``J^T J``: the squared
    singular values and ``N_0 - min(N_L, N_0)`` exact zeros.

    Parameters
    ----------
    spec : NetSpec
    samples : int >= 1
        Number of random networks.
    seed : int
    batch : int >= 1
        Inputs per network (each gives one Jacobian).
    device, dtype : where and in which precision the networks run.
    progress : bool
        Show a tqdm progress bar over the draws.

    Returns
    -------
    EmpiricalSpectrum
    """
    spec = _check_spec(spec)
    samples = _check_count(samples, "samples")
    batch = _check_count(batch, "batch")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(int(seed))
    n0, nL = spec.widths[0], spec.widths[-1]
    k = min(n0, nL)
    eigs = np.zeros((samples * batch, n0))
    norms = np.empty(samples * batch)
    n_zero = 0
    for s in tqdm(range(samples), disable=not progress, desc="jacobian spectrum"):
        net = build_network(spec, gen, dtype=dtype, device=device)
        x = random_input(spec, batch, gen, dtype=dtype, device=device)
        J = input_output_jacobian(net, x)
        sv = singular_values(J)
        rows = slice(s * batch, (s + 1) * batch)
        s_max = sv[:, :1]
        thr = zero_threshold(s_max, (nL, n0), J.dtype)
        zero = sv <= thr
        n_zero += int(zero.sum()) + batch * (n0 - k)
        eigs[rows, :k] = torch.where(zero, torch.zeros_like(sv), sv * sv).cpu().numpy()
        norms[rows] = s_max[:, 0].cpu().numpy()
    if not (np.all(np.isfinite(eigs)) and np.all(np.isfinite(norms))):
        raise NumericalError("non-finite eigenvalues of J^T J (overflow)")
    return EmpiricalSpectrum(
        eigenvalues=eigs.reshape(-1),
        spectral_norms=norms,
        n_zero=n_zero,
        samples=samples,
        seed=int(seed),
        batch=batch,
        spec=spec,
    )


def spectral_norm_vs_depth(
    activation: Activation | str,
    depths: Sequence[int],
    width: int,
    sigma_w2: float,
    sigma_b2: float = 0.0,
    samples: int = 3,
    seed: int = 0,
    *,
    batch: int = 1,
    kept: float = 1.0,
    weights: str = "gaussian",
    eta: float = 0.0,
    q0: float = 1.0,
    act_params: dict | None = None,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """Spectral norm ``||J||_2`` of square MLPs vs depth (seed 000 Fig. 1).

    For each of ``samples`` draws, ONE network of depth ``max(depths)`` (``NetSpec.mlp``: every
    layer ``width x width`` with the activation, ``J = D_L W_L ... D_1 W_1``) and ``batch``
    inputs are drawn and the Jacobian is accumulated from the input side; the partial
    product after layer ``l`` is exactly the Jacobian of the depth-``l`` prefix, which is a
    network of depth ``l`` drawn from the same law (layers are drawn independently and a prefix
    does not see later layers). So every depth is sampled without bias at the cost of one
    depth-``max(depths)`` net; norms at different depths of the same draw are correlated, which
    affects only the joint law across depths, not each depth's mean and std.

    Returns
    -------
    dict
        ``depths`` (sorted, unique), ``mean`` and ``std`` (ddof=1; 0 for one value) of
        ``||J||_2`` per depth over ``samples * batch`` values, ``norms`` (per depth, the list of
        values), and the settings.
    """
    try:
        ds = sorted({int(d) for d in depths})
    except TypeError:
        raise ValueError(f"depths must be a list of positive ints, got {depths!r}") from None
    if not ds or ds[0] < 1 or any(isinstance(d, bool) for d in depths):
        raise ValueError(f"depths must be a non-empty list of positive ints, got {depths!r}")
    samples = _check_count(samples, "samples")
    batch = _check_count(batch, "batch")
    width = _check_count(width, "width")
    spec = NetSpec.mlp(
        ds[-1],
        width,
        activation,
        sigma_w2=sigma_w2,
        sigma_b2=sigma_b2,
        kept=kept,
        weights=weights,
        eta=eta,
        q0=q0,
        act_params=act_params or {},
    )
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(int(seed))
    want = set(ds)
    norms: dict[int, list[float]] = {d: [] for d in ds}
    for _ in tqdm(range(samples), disable=not progress, desc="norm vs depth"):
        net = build_network(spec, gen, dtype=dtype, device=device)
        x = random_input(spec, batch, gen, dtype=dtype, device=device)
        layers = _mlp_layers(net)[0]
        with torch.no_grad():
            act, jac = x, None
            for depth, (lin, mods) in enumerate(layers, start=1):
                w = _masked_weight(lin)
                h = act @ w.T + lin.bias
                act, d = _elementwise_derivative(mods, h)
                jac = w.expand(batch, *w.shape) if jac is None else torch.matmul(w, jac)
                if d is not None:
                    jac = jac * d.unsqueeze(-1)
                if depth in want:
                    if not torch.isfinite(jac).all():
                        raise NumericalError(
                            f"the Jacobian overflows at depth {depth} (sigma_w2={sigma_w2}); use smaller depths"
                        )
                    norms[depth].extend(float(v) for v in singular_values(jac)[:, 0])
    mean = [float(np.mean(norms[d])) for d in ds]
    std = [float(np.std(norms[d], ddof=1)) if len(norms[d]) > 1 else 0.0 for d in ds]
    return {
        "activation": spec.activation[0].label(),
        "width": width,
        "sigma_w2": float(sigma_w2),
        "sigma_b2": float(sigma_b2),
        "samples": samples,
        "batch": batch,
        "seed": int(seed),
        "depths": ds,
        "mean": mean,
        "std": std,
        "norms": [norms[d] for d in ds],
    }


# ----------------------------------------------------------------------------------------
# Reading a NetSpec off a torch MLP
# ----------------------------------------------------------------------------------------
def _registry_activation(mods: list[nn.Module], where: str) -> Activation:
    from sigprop.nets.init import activation_from_module

    real = [m for m in mods if not isinstance(m, _IDENTITY)]
    if not real:
        return get_activation("linear")
    if len(real) > 1:
        raise ValueError(
            f"{where} is followed by {len(real)} activation modules ({', '.join(type(m).__name__ for m in real)}); "
            "a NetSpec layer has one activation"
        )
    act = activation_from_module(real[0])
    if act is None:
        raise ValueError(
            f"{where}: cannot read a sigprop activation off {real[0]!r}; use a registry activation "
            "(Activation.torch_module(), sigprop.theory.activations.available())"
        )
    return act


def _is_orthogonal(w: torch.Tensor) -> bool:
    """``W W^T`` (or ``W^T W``) proportional to the identity up to rounding in W's dtype (a
    Gaussian matrix is off by ~1/sqrt(n), far above this tolerance)."""
    tol = max(1e-10, 50 * max(w.shape) * torch.finfo(w.dtype).eps)
    w = w.detach().to(torch.float64)
    g = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    scale = torch.diagonal(g).mean()
    if scale <= 0:
        return False
    return bool((g / scale - torch.eye(g.shape[0], dtype=g.dtype, device=g.device)).abs().max() < tol)


def netspec_from_module(model: nn.Module, q0: float | None = None) -> NetSpec:
    """Read a :class:`~sigprop.netspec.NetSpec` off a torch MLP (masks included).

    Accepted models: a sigprop :class:`~sigprop.nets.models.MLP` (hidden layers with
    ``model.acts``, then a ``"linear"`` readout layer) or an ``nn.Sequential`` of ``nn.Linear``
    each followed by zero or one elementwise registry activation (no activation = ``"linear"``;
    ``nn.Identity``/``nn.Dropout`` are ignored, a leading ``nn.Flatten`` is allowed).

    What is read
    ------------
    widths
        ``N_0 = in_features`` of the first layer, ``N_l = out_features``.
    kept
        ``weight_mask`` nonzeros / entries (1 without a mask).
    sigma_w2
        MEASURED: ``fan_in * mean(W_ij^2)`` over the kept entries of ``weight_orig`` (the
        pre-mask variance; the effective variance is ``kept * sigma_w2``). For ``correlated``
        weights the kept entries are centred first (``W = W_ind + eta w`` with one shared ``w``
        per layer: the mean is ``eta w`` and the centred second moment estimates the iid
        part's variance, which is what NetSpec's ``sigma_w2`` means for that law). The measured
        value wins over ``model.sigprop_init``: it describes the model as it is now (after a
        pruning rescale or training the record is stale), and for iid Gaussian weights it is
        within ``~sqrt(2 / n_kept)`` (relative) of the law's value.
    sigma_b2
        Measured ``mean(b_i^2)``; 0 without a bias.
    weights, eta
        From ``model.sigprop_init`` (written by :func:`sigprop.nets.init.initialize` and
        :func:`build_network`): ``"correlated"`` with its ``eta``; ``"orthogonal"`` if every
        layer is also unmasked and numerically (semi-)orthogonal (else it is read as gaussian,
        with a warning); anything else, or no record, is ``"gaussian"``. A single draw cannot
        reveal the law by itself (a correlated layer's shared ``eta w`` is one number).
    q0
        As given, default 1.

    Raises
    ------
    ValueError
        For models that are not MLPs (convolutions, residual connections, custom forwards).
    """
    parsed = _mlp_layers(model) if isinstance(model, nn.Module) else "not an nn.Module"
    if isinstance(parsed, str):
        raise ValueError(
            f"netspec_from_module reads MLPs only (a sigprop MLP, or an nn.Sequential of nn.Linear layers each "
            f"followed by at most one elementwise activation); {parsed}. Convolutional and residual networks "
            "have no NetSpec."
        )
    layers, n_in = parsed
    record = getattr(model, "sigprop_init", None)
    scheme = record.get("scheme") if isinstance(record, dict) else None
    law = "correlated" if scheme == "correlated" else ("orthogonal" if scheme == "orthogonal" else "gaussian")
    eta = float(record.get("eta") or 0.0) if law == "correlated" else 0.0
    widths = [n_in]
    acts, sws, sbs, kept = [], [], [], []
    for i, (lin, mods) in enumerate(layers):
        widths.append(int(lin.out_features))
        acts.append(_registry_activation(mods, f"layer {i + 1} (Linear {lin.in_features}->{lin.out_features})"))
        orig = getattr(lin, "weight_orig", None)
        mask = getattr(lin, "weight_mask", None)
        w_model = (orig if isinstance(orig, torch.Tensor) and isinstance(mask, torch.Tensor) else lin.weight).detach()
        w = w_model.to(torch.float64)
        keep = (mask != 0) if isinstance(mask, torch.Tensor) else torch.ones_like(w, dtype=torch.bool)
        n_kept = int(keep.sum())
        if n_kept == 0:
            raise ValueError(f"layer {i + 1} is fully pruned (its mask keeps no weight): a NetSpec needs kept > 0")
        kept.append(n_kept / keep.numel())
        vals = w[keep]
        if law == "correlated":
            vals = vals - vals.mean()
        sw = float(lin.in_features * (vals * vals).mean())
        if not math.isfinite(sw):
            raise NumericalError(f"layer {i + 1}: non-finite weights")
        sws.append(sw)
        sbs.append(float((lin.bias.detach().to(torch.float64) ** 2).mean()) if lin.bias is not None else 0.0)
        if law == "orthogonal" and (kept[-1] < 1.0 or not _is_orthogonal(w_model)):
            warnings.warn(
                f"model.sigprop_init says orthogonal but layer {i + 1} is "
                f"{'masked' if kept[-1] < 1.0 else 'no longer orthogonal'}; reading the weights as gaussian",
                stacklevel=2,
            )
            law = "gaussian"
    return NetSpec(
        widths=tuple(widths),
        activation=tuple(acts),
        sigma_w2=tuple(sws),
        sigma_b2=tuple(sbs),
        weights=law,
        eta=eta,
        kept=tuple(kept),
        q0=1.0 if q0 is None else q0,
    )
