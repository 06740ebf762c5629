"""GraSP scores (Wang, Zhang & Grosse, ICLR 2020, "Picking Winning Tickets Before Training by
Preserving Gradient Flow") (imports torch).

GraSP asks which weights can be removed without reducing the gradient flow ``||g||^2``,
``g = dL/dtheta``. Removing weight ``q`` (``delta = -theta_q e_q``) changes it to first order by

    Delta ||g||^2  ~=  2 delta^T H g  =  -2 theta_q (H g)_q,

``H`` the Hessian of the loss. Wang et al. score ``S(-theta) = -theta * (H g)`` and **remove the
weights with the largest** ``S`` (their reference code keeps ``S <= threshold`` of the top
``num_params_to_rm`` scores): those whose removal increases the gradient flow most (or reduces it
least). sigprop's convention is "higher score = kept first" (:func:`sigprop.pruning.make_masks`
keeps the largest), so :func:`grasp_scores` returns the negation of GraSP's ``S``:

    score = theta * (H g)          (kept first: highest;  pruned first: lowest)

so that ``make_masks(grasp_scores(...), s)`` removes exactly the weights GraSP removes. (The
Synaptic-Flow re-implementation of Tanaka et al. 2020 uses the same ``theta * Hg`` and keeps its
top scores.)
"""

from __future__ import annotations

import math
from itertools import islice

import torch
from torch import nn

from sigprop.errors import NumericalError

from ._names import LOSSES
from .scores import Params, _batches, _leaf, _Preserve, named_prunable, surrogate_loss

__all__ = ["grasp_scores"]


def _check_temperature(temperature) -> float:
    if isinstance(temperature, bool):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}") from None
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a positive finite number (GraSP uses 200), got {temperature!r}")
    return t


def _split(batch):
    return (batch, None) if isinstance(batch, torch.Tensor) else (batch[0], batch[1])


def grasp_scores(
    model: nn.Module,
    data,
    loss: str = "supervised",
    batches: int | None = None,
    temperature: float = 200.0,
    params: Params | None = None,
) -> dict:
    """GraSP scores ``theta * (H g)`` (Wang et al. 2020), signed so that the top scores are kept.

    Parameters
    ----------
    model : nn.Module
        Mapping inputs ``(B, ...)`` to logits ``(B, K)``; used in its current training mode (put
        it in ``eval()`` for a deterministic score when it has dropout or batch norm).
    data : iterable of ``(x, y)`` batches, or one ``(x, y)`` pair of tensors, or a tensor ``x``
        As for :func:`sigprop.pruning.snip_scores`; it is read once and held in memory (the
        Hessian-gradient product needs two passes over the same batches).
    loss : {"supervised", "uniform", "pred-raw", "pred-softmax"}
        The loss of the logits divided by ``temperature`` (see
        :func:`sigprop.pruning.surrogate_loss`).
    batches : int or None
        Use only the first ``batches`` batches; None: all of ``data``.
    temperature : float > 0
        The logits are divided by it before the loss (GraSP's ``T = 200``).
    params : list of ``(module, tensor_name)``, optional
        Tensors to score (default :func:`sigprop.pruning.prunable_parameters`).

    Returns
    -------
    dict ``{param_name: tensor}``
        ``theta * (H g)`` of each tensor's shape, where ``g = sum_b dL_b/dtheta`` is the gradient
        of the summed per-batch mean losses (detached) and ``H g = sum_b d(g . dL_b/dtheta)/dtheta``
        is computed by double backward (a Hessian-vector product; ``H`` never formed). GraSP
        removes the weights with the largest ``-theta * Hg``, i.e. the **lowest** score here;
        :func:`sigprop.pruning.make_masks` keeps the highest, so the two agree. Scores are signed
        and are not normalized (GraSP's division by ``|sum S|`` changes no ranking).

        For a module already pruned with ``torch.nn.utils.prune``, ``theta`` is its effective
        (masked) weight, ``g`` and ``H`` live in the space of its kept weights, and a masked
        entry scores ``-inf``: the bottom of GraSP's signed range (as 0 is for SNIP), so
        :func:`~sigprop.pruning.make_masks` ranks it after every kept weight and it stays pruned.

    Raises
    ------
    ValueError
        Unknown loss, ``batches < 1``, non-positive temperature, no data, labels missing for the
        supervised loss.
    NumericalError
        A non-finite score (e.g. an overflowing network).

    Notes
    -----
    Scoring never changes the model: weights, buffers, ``requires_grad``, ``.grad`` and the
    training mode are restored. The model must be twice differentiable almost everywhere
    (ReLU-type kinks are fine: their second derivative is zero a.e.).
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    if batches is not None and (isinstance(batches, bool) or not isinstance(batches, int) or batches < 1):
        raise ValueError(f"batches must be an integer >= 1 or None, got {batches!r}")
    temp = _check_temperature(temperature)
    named = named_prunable(model, params)
    leaves = [_leaf(m, t) for _, m, t in named]
    chosen = [_split(b) for b in islice(_batches(data), batches)]
    if not chosen:
        raise ValueError("grasp_scores got no batch of data")

    grads = [torch.zeros_like(p) for p in leaves]
    hg = [torch.zeros_like(p) for p in leaves]
    with _Preserve(model):
        for p in leaves:
            p.requires_grad_(True)
        # pass 1: g = sum of the per-batch gradients, without a graph (GraSP's "stopped" gradient)
        for x, y in chosen:
            value = surrogate_loss(model(x) / temp, y, loss)
            for acc, g in zip(grads, torch.autograd.grad(value, leaves, allow_unused=True), strict=True):
                if g is not None:
                    acc.add_(g)
        # pass 2: H g = d/dtheta (g_stopped . dL_b/dtheta), summed over the batches
        for x, y in chosen:
            value = surrogate_loss(model(x) / temp, y, loss)
            gs = torch.autograd.grad(value, leaves, create_graph=True, allow_unused=True)
            terms = [(g * stop).sum() for g, stop in zip(gs, grads, strict=True) if g is not None and g.requires_grad]
            if not terms:  # the loss is linear in every scored tensor: H g = 0
                continue
            dot = torch.stack(terms).sum()
            for acc, h in zip(hg, torch.autograd.grad(dot, leaves, allow_unused=True), strict=True):
                if h is not None:
                    acc.add_(h.detach())

    out = {}
    for (name, module, tname), p, h in zip(named, leaves, hg, strict=True):
        score = p.detach() * h
        mask = getattr(module, tname + "_mask", None)
        if isinstance(mask, torch.Tensor) and p is not getattr(module, tname, None):
            score = score * mask  # theta = the effective weight
            score = torch.where(mask != 0, score, torch.full_like(score, -math.inf))
            kept = score[mask != 0]
        else:
            kept = score
        if not torch.isfinite(kept).all():
            raise NumericalError(f"grasp_scores: non-finite score in {name!r} (overflow in the network or its Hessian)")
        out[name] = score
    return out
