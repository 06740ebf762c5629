"""Layerwise dynamical isometry (seed 002, Lee et al. ICLR 2020): orthogonal initialization,
the approximate-isometry repair of a pruned network (eq. 8) and the orthogonality score
(Sec. 5.1) (imports torch).

Orientation of the Gram matrix
------------------------------
Seed 002 writes ``(C * W)^T (C * W) - I`` with ``W`` of shape ``N_l x N_{l-1}`` (out x in), an
``in x in`` Gram matrix. For a layer with ``out < in`` that matrix has rank ``<= out`` and can
never be the identity, so the objective would be bounded below by ``sqrt(in - out)`` whatever
the weights. We use the Gram matrix of the **smaller** side: ``W^T W`` (in x in) when
``out >= in`` and ``W W^T`` (out x out) when ``out < in``; both are the identity exactly when all
``min(out, in)`` singular values are 1, and they coincide for square layers. (The authors' code,
namhoonlee/spp-public, always uses the out x out Gram of the TF kernel, which agrees with ours
whenever ``out <= in``.) A conv kernel ``(out, in/groups, *k)`` is reshaped to
``(out, in/groups * prod(k))`` first, as in that code.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from sigprop.errors import NumericalError

from .scores import Params, named_prunable

__all__ = ["approximate_isometry", "orthogonal_init", "orthogonality_score"]


def orthogonal_init(
    model: nn.Module,
    gain: float | None = None,
    seed: int = 0,
    *,
    activation=None,
    q_star: float = 1.0,
) -> dict[str, Any]:
    """Layerwise dynamical isometry initialization (seed 002 Sec. 3.3): orthogonal weights.

    Delegates to :func:`sigprop.nets.initialize` with scheme ``"orthogonal"``: Linear weights are
    Haar (semi-)orthogonal times ``gain``; conv kernels are delta-orthogonal (Xiao et al. 2018:
    zero except the centre tap, which is the (semi-)orthogonal ``out x in`` matrix). Seed 002
    says only "the initialization method in Xiao et al. (2018)"; its authors' code uses Xiao et
    al.'s other construction (a full ``k x k`` orthogonal kernel built from symmetric
    projections); both are norm-preserving convolutions.

    Parameters
    ----------
    model : nn.Module
    gain : float > 0 or None
        None: the mean-field rescaling of seed 002 ("(DW)^T(DW) = W^T W / sigma_w^2 = I"):
        ``gain^2 = sigma_w2`` of the EOC of the model's activation (``activation``, default
        ``model.activation``) at ``q_star``, biases ``N(0, sigma_b2)`` at that point and the first
        layer scaled to put its outputs at ``q_star`` (see ``initialize``). A number: every
        layer (first included) gets ``W^T W = gain^2 I`` (or ``W W^T``) and zero biases -- the
        plain orthogonal initialization of the paper's experiments (``gain = 1``).
    seed : int
        Seed of the draw.

    Returns
    -------
    dict
        The record of :func:`sigprop.nets.initialize` (also stored as ``model.sigprop_init``).
    """
    from sigprop.nets.init import initialize

    if gain is None:
        return initialize(model, "orthogonal", activation=activation, q_star=q_star, seed=seed)
    return initialize(
        model,
        "orthogonal",
        activation=activation,
        sigma_w2=_check_gain(gain, none_ok=True),
        sigma_b2=0.0,
        first_layer="same",
        seed=seed,
    )


# ----------------------------------------------------------------------------- shared pieces


def _layer_mats(model: nn.Module, params: Params | None):
    """``(name, module, tensor_name, leaf, mask or None)`` for each scored weight tensor.

    ``leaf`` is ``<tensor_name>_orig`` of a pruned tensor (with its ``_mask``), else the tensor
    itself (mask None).
    """
    out = []
    for name, module, tname in named_prunable(model, params):
        orig = getattr(module, tname + "_orig", None)
        mask = getattr(module, tname + "_mask", None)
        if isinstance(orig, nn.Parameter) and isinstance(mask, torch.Tensor):
            out.append((name, module, tname, orig, mask))
        else:
            out.append((name, module, tname, getattr(module, tname), None))
    return out


def _gram_side(rows: int, cols: int) -> str:
    return "WtW" if rows >= cols else "WWt"


def _deviation(w: torch.Tensor, gain2: float) -> torch.Tensor:
    """``||G - gain^2 I||_F`` of a batch ``(..., rows, cols)`` with the smaller-side Gram ``G``."""
    rows, cols = w.shape[-2], w.shape[-1]
    if rows >= cols:
        g = w.transpose(-1, -2) @ w
    else:
        g = w @ w.transpose(-1, -2)
    eye = torch.eye(g.shape[-1], dtype=w.dtype, device=w.device)
    return torch.linalg.matrix_norm(g - gain2 * eye)


def _effective_2d(leaf: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    w = leaf.detach()
    if mask is not None:
        w = w * mask
    return w.reshape(w.shape[0], -1)


def _check_gain(gain, *, none_ok: bool = False) -> float:
    """``gain^2`` of a positive finite ``gain`` (ValueError otherwise)."""
    if isinstance(gain, bool) or not isinstance(gain, (int, float)) or not math.isfinite(gain) or gain <= 0:
        alt = " or None (mean-field gain)" if none_ok else ""
        raise ValueError(f"gain must be a positive finite number{alt}, got {gain!r}")
    return float(gain) ** 2


def orthogonality_score(model: nn.Module, params: Params | None = None, *, gain: float = 1.0) -> float:
    """Orthogonality score OS (seed 002 Sec. 5.1): ``(1/T) sum_l ||(C^l*W^l)^T (C^l*W^l) - I||_F``.

    ``T`` is the number of scored layers (default every Linear/Conv weight), ``C^l * W^l`` the
    effective (masked) weight, conv kernels reshaped to ``(out, in * prod(kernel))``, and the
    Gram matrix taken on the smaller side (module docstring). ``gain`` replaces ``I`` by
    ``gain^2 I``. 0 for a network of exactly orthogonal layers.
    """
    gain2 = _check_gain(gain)
    mats = _layer_mats(model, params)
    total = 0.0
    for _name, _m, _t, leaf, mask in mats:
        w = _effective_2d(leaf, mask)
        w = w.double() if w.device.type == "cpu" else w.float()
        total += float(_deviation(w, gain2))
    score = total / len(mats)
    if not math.isfinite(score):
        raise NumericalError("orthogonality_score: non-finite value (overflowing weights)")
    return score


def approximate_isometry(
    model: nn.Module,
    lr: float = 0.1,
    max_steps: int = 10000,
    tol: float = 1e-4,
    progress: bool = False,
    *,
    gain: float = 1.0,
    patience: int = 1000,
    params: Params | None = None,
) -> dict[str, Any]:
    """Enforce approximate dynamical isometry on a (pruned) network, in place (seed 002 eq. 8).

    For every layer, gradient descent with step ``lr`` on

        f(W) = ||(C * W)^T (C * W) - gain^2 I||_F          (eq. 8, smaller-side Gram)

    over the kept entries only (the gradient is multiplied by the mask ``C``, so pruned entries
    of ``weight_orig`` never move and the effective weight stays 0 there). Conv kernels are
    reshaped to ``(out, in * prod(kernel))``. Data-free. Layers of the same shape are optimized
    together as one batched tensor.

    ``f`` is the Frobenius norm itself, not its square (as in eq. 8 and the authors' code), so
    its gradient ``2 (C * W) A / ||A||`` (``A`` the Gram minus identity, ``W A`` or ``A W`` by
    side) has a size that does not vanish at the minimum: a fixed step ends up oscillating around
    it at a distance of order ``lr``. We therefore return, per layer, the **best** iterate seen
    (never worse than the start), and stop a layer when its best value has not improved by a
    relative ``tol`` within ``patience`` steps, when it is below ``tol * sqrt(dim)``, or after
    ``max_steps`` (seed 002 App. B: lr 0.1, 10k steps, "usually reaches convergence far before").

    Parameters
    ----------
    model : nn.Module
        Typically pruned with :func:`sigprop.pruning.apply_masks`; unpruned layers are treated
        as fully kept.
    lr : float > 0
    max_steps : int >= 0
    tol : float > 0
    progress : bool
        Show a tqdm progress bar over the steps.
    gain : float > 0
        Target ``gain^2 I`` (1: eq. 8).
    patience : int >= 1
    params : list of ``(module, tensor_name)``, optional
        Layers to repair (default: every Linear/Conv weight, readout included, as in the
        authors' code).

    Returns
    -------
    dict
        ``{"lr", "max_steps", "tol", "gain", "steps", "os_before", "os_after", "layers": [...]}``
        with per layer ``name, shape, gram ("WtW" or "WWt"), loss_before, loss_after`` (eq. 8 at
        the start and at the returned best iterate), ``steps`` (gradient steps taken) and
        ``converged`` (stopped before ``max_steps``: below ``tol * sqrt(dim)`` or no relative
        improvement by ``tol`` within ``patience`` steps); ``os_*`` are the orthogonality scores
        (the mean of the layer losses, :func:`orthogonality_score`).

    Raises
    ------
    ValueError
        Bad ``lr``, ``max_steps``, ``tol``, ``patience`` or ``gain``.
    NumericalError
        The iteration produced non-finite weights.
    """
    for value, what in ((lr, "lr"), (tol, "tol")):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{what} must be a positive finite number, got {value!r}")
    for value, what, low in ((max_steps, "max_steps", 0), (patience, "patience", 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{what} must be an integer >= {low}, got {value!r}")
    gain2 = _check_gain(gain)
    mats = _layer_mats(model, params)

    # group layers by 2-D shape, device and dtype
    groups: dict[tuple, list[int]] = {}
    flat = []
    for i, (_name, _m, _t, leaf, mask) in enumerate(mats):
        w2 = _effective_2d(leaf, mask)
        dtype = torch.float64 if w2.device.type == "cpu" else torch.promote_types(w2.dtype, torch.float32)
        c2 = (torch.ones_like(w2) if mask is None else (mask != 0).reshape(w2.shape).to(w2.dtype)).to(dtype)
        flat.append((w2.to(dtype), c2))
        groups.setdefault((tuple(w2.shape), w2.device, dtype), []).append(i)

    results: dict[int, dict[str, Any]] = {}
    new_w: dict[int, torch.Tensor] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_steps * len(groups), desc="approximate isometry", unit="step")
    try:
        for (shape, _dev, _dt), idx in groups.items():
            w = torch.stack([flat[i][0] for i in idx])
            c = torch.stack([flat[i][1] for i in idx])
            best_w, best_f, steps, done = _descend(w, c, gain2, lr, max_steps, tol, patience, bar)
            f0 = _deviation(w, gain2)
            for k, i in enumerate(idx):
                new_w[i] = best_w[k]
                results[i] = {
                    "shape": list(mats[i][3].shape),
                    "gram": _gram_side(*shape),
                    "loss_before": float(f0[k]),
                    "loss_after": float(best_f[k]),
                    "steps": int(steps[k]),
                    "converged": bool(done[k]),
                }
    finally:
        if bar is not None:
            bar.close()

    # write back: only the kept entries of the leaf change
    with torch.no_grad():
        for i, (_name, module, tname, leaf, mask) in enumerate(mats):
            w = new_w[i].reshape(leaf.shape).to(leaf.dtype)
            if mask is not None:
                keep = mask != 0
                leaf.copy_(torch.where(keep, w, leaf))
                setattr(module, tname, leaf * mask)
            else:
                leaf.copy_(w)
    layers = [{"name": mats[i][0], **results[i]} for i in range(len(mats))]
    return {
        "lr": float(lr),
        "max_steps": int(max_steps),
        "tol": float(tol),
        "gain": float(gain),
        "steps": max((r["steps"] for r in layers), default=0),
        "os_before": sum(r["loss_before"] for r in layers) / len(layers),
        "os_after": sum(r["loss_after"] for r in layers) / len(layers),
        "layers": layers,
    }


def _objective_grad(w: torch.Tensor, gain2: float, eye: torch.Tensor) -> torch.Tensor:
    """Gradient of ``||Gram(W) - gain2 I||_F`` for a batch ``(n, rows, cols)`` of effective weights.

    With ``A = W^T W - gain2 I``: ``d||A|| = <A, dW^T W + W^T dW> / ||A|| = 2 <W A, dW> / ||A||``;
    with ``A = W W^T - gain2 I`` it is ``2 A W / ||A||`` (``A`` symmetric).
    """
    return _value_grad(w, gain2, eye)[1]


def _value_grad(w: torch.Tensor, gain2: float, eye: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(||A||_F, d||A||_F / dW)`` per batch entry (see :func:`_objective_grad`)."""
    if w.shape[-2] >= w.shape[-1]:
        a = w.transpose(-1, -2) @ w - gain2 * eye
        grad = w @ a
    else:
        a = w @ w.transpose(-1, -2) - gain2 * eye
        grad = a @ w
    norm = torch.linalg.matrix_norm(a)
    return norm, grad.mul_((2.0 / norm.clamp_min(torch.finfo(w.dtype).tiny))[:, None, None])


def _descend(w, c, gain2, lr, max_steps, tol, patience, bar):
    """Masked gradient descent on ``||Gram(C*W) - gain2 I||_F`` for a batch ``(n, rows, cols)``.

    Returns ``(best_w, best_f, steps, stopped_early)``; ``best_*`` is the best iterate seen.
    """
    rows, cols = w.shape[-2], w.shape[-1]
    floor = tol * math.sqrt(min(rows, cols))
    eye = torch.eye(min(rows, cols), dtype=w.dtype, device=w.device)
    n = w.shape[0]
    w = w * c
    best_w = w.clone()
    best_f = torch.full((n,), math.inf, dtype=w.dtype, device=w.device)
    ref_f = best_f.clone()  # best value at the last relative improvement by tol
    last_improved = torch.zeros(n, dtype=torch.long, device=w.device)
    steps = torch.zeros(n, dtype=torch.long, device=w.device)
    active = torch.ones(n, dtype=torch.bool, device=w.device)
    for step in range(max_steps + 1):
        f, grad = _value_grad(w, gain2, eye)  # f at the current point (after `step` updates)
        if not torch.isfinite(f).all():
            raise NumericalError("approximate_isometry: non-finite weights (lower lr)")
        better = active & (f < best_f)
        best_f = torch.where(better, f, best_f)
        best_w = torch.where(better[:, None, None], w, best_w)
        moved = active & (f < ref_f * (1.0 - tol))
        ref_f = torch.where(moved, f, ref_f)
        last_improved = torch.where(moved, step, last_improved)
        steps = torch.where(active, step, steps)
        active = active & (best_f > floor) & (step - last_improved < patience)
        if step == max_steps or not bool(active.any()):
            break
        w = w - (lr * active.to(w.dtype))[:, None, None] * c * grad
        if bar is not None:
            bar.update(1)
    stopped_early = ~active | (best_f <= floor)
    return best_w, best_f, steps.cpu(), stopped_early.cpu()
