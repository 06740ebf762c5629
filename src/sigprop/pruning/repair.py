"""Repairs of a pruned network's signal propagation by rescaling its kept weights, and subnetworks
on the Edge of Chaos (imports torch).

All functions act in place on a model pruned with :func:`sigprop.pruning.apply_masks`
(``weight_orig`` parameter + ``weight_mask`` buffer): they scale ``weight_orig``, so the effective
weight ``weight_orig * weight_mask`` changes and the mask is kept. Each returns a JSON-able record.

Rescaling methods (:data:`RESCALE_METHODS`, :func:`rescale`)
------------------------------------------------------------
``none``
    Nothing changes (a record with factor 1 everywhere, for uniform pipelines).
``eoc``
    Seed 001 Prop. 1 / Algorithm 1 (App. I), the rescaling trick: each unit's kept incoming
    weights (a row of a Linear weight, an output channel of a conv kernel) are scaled by
    ``rho_i = sqrt(sigma_w2 / sum_j W_ij^2 delta_ij)`` so that every row's squared norm is back to
    ``sigma_w2``, the dense layer's expected squared row norm ``fan_in * Var(W_ij)``. Then
    ``q^l = sigma_w2 E[phi(h^{l-1})^2] + sigma_b2`` and ``chi_1 = sigma_w2 E[phi'(h)^2]`` are the
    dense EOC values: the pruned layer is back on the EOC.

    Discrepancy with the paper: Algorithm 1 as printed sets ``rho_ij = 1 / sqrt(alpha_i)``,
    ``alpha_i = sum_j (W_ij)^2 delta_ij``, i.e. it normalizes each kept row to **unit** norm.
    That is the EOC only when ``sigma_w2_EOC = 1``; for ReLU (``sigma_w2 = 2``) it gives
    ``chi_1 = 1/2`` and for tanh it lands in the ordered phase. Prop. 1's proof ("the new variance
    after re-scaling is sigma_w2") needs ``rho^2 alpha = 1`` with ``alpha`` the kept fraction of
    the *normalized* row variance, i.e. ``rho^2 sum_j W_ij^2 delta_ij = sigma_w2`` -- what we
    implement (checked by Monte Carlo in ``tests/test_pruning_papers.py``, where the literal
    Algorithm 1 on a ReLU net measures ``chi_1 = 0.5``).

    The target ``sigma_w2`` of each layer is, in this order: the ``sigma_w2`` argument (every
    pruned layer); the EOC value of ``activation`` at ``q_star`` (default 1) or ``sigma_b2``
    (every pruned layer); else the layer's own dense value ``fan_in * weight_var`` from the record
    :func:`sigprop.nets.initialize` left in ``model.sigprop_init`` (which covers a first layer
    initialized differently). A row with no kept weight stays zero.
``random``
    Seed 000 Thm 4.1: every kept weight times ``(1 - s)^(-1/2)``, which restores the per-entry
    second moment ``E[(B W)^2] = Var(W)`` of a randomly pruned layer.
``magnitude``
    Seed 000 eq. (8) (Thm 4.2): for magnitude pruning of Gaussian weights with threshold ``t``,
    every kept weight times ``a`` with ``a^2 = sqrt(pi / (n t^2)) exp(n t^2 / 4)`` for weights
    ``N(0, 2/n)``. Written with ``tau = t / std(W)`` (so ``n t^2 = 2 tau^2``) this is
    ``a^2 = sqrt(pi / 2) exp(tau^2 / 2) / tau = 1 / (2 tau phi(tau))``, valid for any weight
    variance. It is the leading term of the exact factor below as ``tau -> infinity`` and
    overestimates the variance by the factor ``1 + Q(tau) / (tau phi(tau)) ~ 1 + 1/tau^2``
    (1.295 at s = 0.9, 1.134 at 0.99, 1.085 at 0.999) and diverges as ``s -> 0``.
``magnitude-exact``
    The exact variance-matching factor of seed 000's proof of Thm 4.2:
    ``a^2 = Var(W) / E[W^2 1{|W| > t}]``. For ``W ~ N(0, sigma^2)``,
    ``E[W^2 1{|W| > t}] = sigma^2 (2 tau phi(tau) + 2 Q(tau))`` (integrate ``z^2 phi(z)`` by
    parts), so ``a^2 = 1 / (2 tau phi(tau) + p)`` with ``p = 2 Q(tau)`` the kept fraction.

For ``random``/``magnitude``/``magnitude-exact`` the threshold is not read off the weights: for
magnitude pruning of Gaussian weights ``P(|W| > t) = p`` gives ``tau = Q^{-1}(p / 2)`` from the
kept fraction ``p = 1 - s`` alone (the "random threshold" form of seed 000's Thm 4.2). ``s`` is
each layer's **actual** pruned fraction, read from its mask, unless ``sparsity`` is given: with
global or data-driven masks the layers' fractions differ from the nominal sparsity, and the
variance argument is per layer. A layer with no mask (or nothing pruned) is left alone, and a
fully pruned layer too (no kept weight to scale).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.special import ndtri
from torch import nn

from sigprop.errors import NumericalError, check_variance

from ._names import RESCALE_METHODS
from .masks import _check_sparsity, apply_masks, make_masks
from .scores import WEIGHT_LAYER_TYPES, Params, named_prunable, prunable_parameters, random_scores

__all__ = ["RESCALE_METHODS", "eoc_subnetwork", "rescale", "scale_factor"]

_UNIFORM = ("random", "magnitude", "magnitude-exact")


def scale_factor(method: str, kept_fraction: float) -> float:
    """The factor every kept weight of a layer is multiplied by, for a uniform rescaling method.

    Parameters
    ----------
    method : {"none", "random", "magnitude", "magnitude-exact"}
        See the module docstring.
    kept_fraction : float in (0, 1]
        ``p = 1 - s``, the layer's kept fraction.

    Returns
    -------
    float
        ``1`` (none, or ``p = 1``: nothing pruned); ``p^(-1/2)`` (random);
        ``(1 / (2 tau phi(tau)))^(1/2)`` (magnitude, seed 000 eq. 8) or
        ``(1 / (2 tau phi(tau) + p))^(1/2)`` (magnitude-exact), ``tau = Q^{-1}(p/2)``.
    """
    if method not in ("none", *_UNIFORM):
        raise ValueError(
            f"scale_factor knows the uniform methods none, {', '.join(_UNIFORM)}; got {method!r} "
            "('eoc' scales each row by its own factor: use rescale)"
        )
    p = float(kept_fraction)
    if not (0.0 < p <= 1.0) or math.isnan(p):
        raise ValueError(f"kept_fraction must be in (0, 1] (1 - sparsity), got {kept_fraction!r}")
    if method == "none" or p == 1.0:
        return 1.0
    if method == "random":
        return p**-0.5
    tau = float(-ndtri(p / 2.0))  # P(|Z| > tau) = p, accurate for tiny p
    two_tau_phi = 2.0 * tau * math.exp(-0.5 * tau * tau) / math.sqrt(2.0 * math.pi)  # 2 tau phi(tau)
    denom = two_tau_phi if method == "magnitude" else two_tau_phi + p
    a2 = 1.0 / denom if denom > 0 else math.inf
    if not math.isfinite(a2):
        raise NumericalError(f"{method} factor overflows at kept fraction {p:g} (tau = {tau:g})")
    return math.sqrt(a2)


# ----------------------------------------------------------------------------- helpers


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYER_TYPES)]


def _pruned(module: nn.Module) -> bool:
    return isinstance(getattr(module, "weight_mask", None), torch.Tensor) and isinstance(
        getattr(module, "weight_orig", None), torch.Tensor
    )


def _refresh(module: nn.Module) -> None:
    module.weight = module.weight_orig * module.weight_mask  # what torch.nn.utils.prune's hook computes


def _record_targets(model: nn.Module) -> dict[str, float]:
    """Dense ``fan_in * weight_var`` of each layer from ``model.sigprop_init`` (may be empty)."""
    rec = getattr(model, "sigprop_init", None)
    out: dict[str, float] = {}
    if isinstance(rec, dict):
        for layer in rec.get("layers", []) or []:
            var, fan = layer.get("weight_var"), layer.get("fan_in")
            if var is not None and fan is not None:
                out[str(layer.get("name"))] = float(var) * float(fan)
    return out


def _eoc_targets(model, layers, activation, sigma_w2, sigma_b2, q_star) -> tuple[dict[str, float], str]:
    if sigma_w2 is not None:
        sw = float(check_variance(sigma_w2, "sigma_w2", allow_zero=False))
        return {n: sw for n, _ in layers}, "sigma_w2 argument"
    if activation is not None:
        from sigprop.nets.init import model_activation
        from sigprop.theory.meanfield import eoc

        act = model_activation(activation, None, model)
        if sigma_b2 is not None and q_star is not None:
            raise ValueError("give sigma_b2 or q_star to pick the EOC point, not both")
        if sigma_b2 is not None:
            pt = eoc(act, sigma_b2=float(check_variance(sigma_b2, "sigma_b2")))
        else:
            q = 1.0 if q_star is None else float(check_variance(q_star, "q_star", allow_zero=False))
            pt = eoc(act, q_star=q)
        return {n: float(pt.sigma_w2) for n, _ in layers}, f"EOC of {act.label()}"
    recorded = _record_targets(model)
    missing = [n for n, m in layers if _pruned(m) and n not in recorded]
    if not recorded or missing:
        raise ValueError(
            "rescale(method='eoc') needs the dense EOC weight variance of each pruned layer: pass "
            "sigma_w2=..., or activation=... (with q_star or sigma_b2), or initialize the model with "
            "sigprop.nets.initialize so that model.sigprop_init records it"
            + (f" (no record for layers {missing})" if recorded and missing else "")
        )
    return recorded, "model.sigprop_init"


# ----------------------------------------------------------------------------- rescale


def rescale(
    model: nn.Module,
    method: str,
    *,
    sparsity: float | None = None,
    activation=None,
    sigma_w2: float | None = None,
    sigma_b2: float | None = None,
    q_star: float | None = None,
) -> dict[str, Any]:
    """Rescale the kept weights of a pruned model in place (see the module docstring).

    Parameters
    ----------
    model : nn.Module
        Pruned with :func:`sigprop.pruning.apply_masks` (``weight_orig`` + ``weight_mask``).
    method : {"none", "eoc", "random", "magnitude", "magnitude-exact"}
    sparsity : float in [0, 1), optional
        random / magnitude / magnitude-exact: use this ``s`` in every pruned layer instead of
        each layer's actual pruned fraction (the default). Ignored by none / eoc.
    activation : str, Activation or nn.Module, optional
        eoc: the activation whose EOC gives the target ``sigma_w2`` (with ``q_star``, default 1,
        or ``sigma_b2``).
    sigma_w2 : float > 0, optional
        eoc: the target squared row norm (the dense EOC ``sigma_w2``) of every pruned layer.
    sigma_b2, q_star : float, optional
        eoc with ``activation``: which EOC point.

    Returns
    -------
    dict
        ``{"method", "sparsity", "target_source", "layers": [...]}``, one entry per Linear/Conv
        layer in module order: ``name, pruned, kept_fraction, factor`` (the uniform factor; for
        eoc the mean row factor), and for eoc ``target_sigma_w2, factor_min, factor_max,
        dead_rows`` (rows with no kept weight). A layer whose mask keeps everything (or
        nothing) is left alone (factor 1) by every method.

    Raises
    ------
    ValueError
        Unknown method, a model with no pruned layer (for a method other than none), bad
        sparsity, or eoc without a known target variance.
    NumericalError
        A non-finite factor.
    """
    if method not in RESCALE_METHODS:
        raise ValueError(f"unknown rescale method {method!r}; choose one of {', '.join(RESCALE_METHODS)}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model)}")
    s_given = None if sparsity is None else _check_sparsity(sparsity)
    layers = _layers(model)
    if method != "none" and not any(_pruned(m) for _, m in layers):
        raise ValueError(
            f"rescale(method={method!r}) needs a pruned model (weight_orig + weight_mask); "
            "prune it first with sigprop.pruning.apply_masks"
        )
    targets, source = ({}, None)
    if method == "eoc":
        targets, source = _eoc_targets(model, layers, activation, sigma_w2, sigma_b2, q_star)

    records = []
    for name, m in layers:
        rec: dict[str, Any] = {"name": name, "pruned": _pruned(m)}
        if not _pruned(m):
            rec.update(kept_fraction=1.0, factor=1.0)
            records.append(rec)
            continue
        mask = m.weight_mask
        kept = float((mask != 0).sum()) / mask.numel()
        rec["kept_fraction"] = kept
        if method == "eoc" and kept == 1.0:  # nothing pruned: the dense layer is left alone
            rec.update(target_sigma_w2=float(targets[name]), factor=1.0, factor_min=1.0, factor_max=1.0, dead_rows=0)
        elif method == "none" or kept in (0.0, 1.0):
            rec["factor"] = 1.0
        elif method == "eoc":
            rec.update(_rescale_rows(m, targets[name]))
        else:
            p = kept if s_given is None else 1.0 - s_given
            factor = scale_factor(method, p) if p > 0 else 1.0
            with torch.no_grad():
                m.weight_orig.mul_(factor)
            _refresh(m)
            rec["factor"] = factor
        records.append(rec)
    return {"method": method, "sparsity": s_given, "target_source": source, "layers": records}


def _rescale_rows(m: nn.Module, target: float) -> dict[str, Any]:
    """Scale each row (output unit) of ``m``'s kept weights to squared norm ``target``."""
    w, mask = m.weight_orig, m.weight_mask
    with torch.no_grad():
        eff = (w.detach() * mask).reshape(w.shape[0], -1).double()
        norm2 = (eff * eff).sum(1)
        alive = norm2 > 0
        factors = torch.ones_like(norm2)
        factors[alive] = torch.sqrt(target / norm2[alive])
        if not torch.isfinite(factors).all():
            raise NumericalError("eoc rescaling: non-finite row factor")
        shape = (w.shape[0],) + (1,) * (w.dim() - 1)
        w.mul_(factors.to(w.dtype).reshape(shape))
    _refresh(m)
    live = factors[alive]
    return {
        "target_sigma_w2": float(target),
        "factor": float(live.mean()) if live.numel() else 1.0,
        "factor_min": float(live.min()) if live.numel() else 1.0,
        "factor_max": float(live.max()) if live.numel() else 1.0,
        "dead_rows": int((~alive).sum()),
    }


# ----------------------------------------------------------------------------- EOC subnetworks


def eoc_subnetwork(
    model: nn.Module, sigma_w2: float, sigma_w2_eoc: float, seed: int = 0, *, params: Params | None = None
) -> dict[str, Any]:
    """Prune a network initialized above the EOC to a subnetwork on it (seed 001 App. H, Thm 4).

    A Bernoulli(p) mask on weights of variance ``sigma_w2 / fan_in`` gives the next layer
    ``q = sigma_w2 p E[phi^2] + sigma_b2``: the dynamics of a dense network with
    ``sigma_w2 p``. Keeping ``p = sigma_w2_eoc / sigma_w2`` of every layer's weights therefore
    puts the subnetwork on the EOC point ``(sigma_w2_eoc, sigma_b2)``. We keep exactly
    ``round(p n_l)`` uniformly random entries of each tensor (layerwise random pruning, drawn
    from a generator seeded by a hash of ``seed``, so that it is independent of weights drawn
    with the same seed) and attach the masks with :func:`sigprop.pruning.apply_masks`.

    Parameters
    ----------
    model : nn.Module
        Not yet pruned, with weights of variance ``sigma_w2 / fan_in``.
    sigma_w2 : float > 0
        The weight variance the model was initialized with.
    sigma_w2_eoc : float > 0, <= sigma_w2
        The EOC value at the model's ``sigma_b2`` (e.g. ``sigprop.theory.meanfield.eoc(act,
        sigma_b2=...).sigma_w2``).
    seed : int
        Seed of the random masks.
    params : list of ``(module, tensor_name)``, optional
        Tensors to prune (default: every Linear/Conv weight, first and last included, as in the
        theorem where every layer is pruned).

    Returns
    -------
    dict
        ``{"sigma_w2", "sigma_w2_eoc", "keep_probability", "sparsity", "effective_sigma_w2",
        "seed", "layers": [{"name", "kept_fraction"}]}``.
    """
    sw = float(check_variance(sigma_w2, "sigma_w2", allow_zero=False))
    se = float(check_variance(sigma_w2_eoc, "sigma_w2_eoc", allow_zero=False))
    if se > sw:
        raise ValueError(
            f"sigma_w2={sw:g} is below the EOC value sigma_w2_eoc={se:g}: pruning can only lower the "
            "effective weight variance, so only a network initialized above the EOC (sigma_w2 >= "
            "sigma_w2_eoc) has a subnetwork on it"
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if params is None:
        params = prunable_parameters(model)
    named = named_prunable(model, params)
    already = [n for n, m, t in named if isinstance(getattr(m, t + "_mask", None), torch.Tensor)]
    if already:
        raise ValueError(f"eoc_subnetwork needs an unpruned model; already pruned: {already}")
    keep = se / sw
    sparsity = 1.0 - keep
    masks = make_masks(random_scores(model, int(seed), params), sparsity, scope="layerwise")
    apply_masks(model, masks)
    layers = [{"name": n, "kept_fraction": float(v.float().mean())} for n, v in masks.items()]
    return {
        "sigma_w2": sw,
        "sigma_w2_eoc": se,
        "keep_probability": keep,
        "sparsity": sparsity,
        "effective_sigma_w2": sw * keep,
        "seed": int(seed),
        "layers": layers,
    }
