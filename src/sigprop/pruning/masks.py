"""Masks from scores, applying them, and reading them back (imports torch).

Sparsity means one thing everywhere: the fraction of the prunable weights removed. A mask keeps
exactly ``round((1 - s) * n)`` entries (Python's ``round``), ``n`` the number of scored entries
(``scope="global"``) or of each layer's entries (``scope="layerwise"``). Ties are broken
deterministically: entries are ordered by decreasing score, then by increasing position in the
concatenation of the flattened tensors in the order of the score dict.

Masks are attached with :func:`torch.nn.utils.prune.custom_from_mask` (``weight_orig`` parameter +
``weight_mask`` buffer): they survive ``state_dict()`` / ``load_state_dict()`` (on a model whose
modules carry a mask of the same shape) and :func:`torch.nn.utils.prune.remove` makes them
permanent.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils import prune
from tqdm.auto import tqdm

from .scores import Params, _abs_state_, _linearized_copy, _params_in_copy, _synflow_pass, named_prunable

__all__ = [
    "apply_masks",
    "collapsed_layers",
    "critical_sparsity",
    "global_order",
    "kept_count",
    "kept_per_layer",
    "make_masks",
    "synflow_masks",
]

SCOPES = ("global", "layerwise")


def _check_sparsity(sparsity: float) -> float:
    s = float(sparsity)
    if not (0.0 <= s < 1.0) or math.isnan(s):
        raise ValueError(f"sparsity must be in [0, 1) (the fraction of prunable weights removed), got {sparsity}")
    return s


def kept_count(n: int, sparsity: float) -> int:
    """Number of entries kept out of ``n`` at ``sparsity``: ``round((1 - s) * n)``."""
    return round((1.0 - _check_sparsity(sparsity)) * n)


def _flat(scores: dict) -> torch.Tensor:
    if not scores:
        raise ValueError("empty score dict")
    parts = [torch.as_tensor(v).detach().reshape(-1).to(torch.float64).cpu() for v in scores.values()]
    flat = torch.cat(parts)
    if torch.isnan(flat).any():
        raise ValueError("scores contain NaN")
    return flat


def global_order(scores: dict) -> torch.Tensor:
    """Positions of all entries (in the flattened concatenation), best first, ties by position."""
    return torch.argsort(-_flat(scores), stable=True)


def _keep_top_exact(flat: torch.Tensor, k: int) -> torch.Tensor:
    n = flat.numel()
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool)
    if k >= n:
        return torch.ones(n, dtype=torch.bool)
    v = torch.kthvalue(flat, n - k + 1).values
    keep = flat > v
    ties = torch.nonzero(flat == v).reshape(-1)
    keep[ties[: k - int(keep.sum())]] = True
    return keep


#: below this many entries a k-th value selection over all of them is cheap enough
_BRACKET_MIN = 1 << 16
_BRACKET_SAMPLE = 1 << 14


def _keep_top(flat: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` largest entries, ties at the threshold broken by position (first kept): the
    same set as the first ``k`` of a stable descending sort, in O(n).

    Large inputs: a random sample of 16384 entries brackets the k-th largest value [lo, hi]
    (+-5 binomial standard deviations of the sample rank); the bracket is verified by counting
    (``#{> hi} < k <= #{>= lo}``) and the exact selection runs only on the entries inside it.
    A failed bracket falls back to the selection over everything, so the result never depends
    on the sample. (A full sort per round made SynFlow's 100 rounds cost 150x its passes.)
    """
    n = flat.numel()
    if n < _BRACKET_MIN or k <= 0 or k >= n:
        return _keep_top_exact(flat, k)
    gen = torch.Generator().manual_seed(n ^ k)
    sample, _ = torch.sort(flat[torch.randint(n, (_BRACKET_SAMPLE,), generator=gen)])
    m = _BRACKET_SAMPLE
    p = (n - k) / n  # fraction below the threshold
    pos = p * m
    d = 5.0 * math.sqrt(m * p * (1.0 - p)) + 2.0
    lo = sample[max(int(pos - d), 0)]
    hi = sample[min(int(pos + d), m - 1)]
    above = flat > hi
    n_above = int(above.sum())
    inside = torch.nonzero((flat >= lo) & ~above).reshape(-1)
    if not (n_above < k <= n_above + inside.numel()):
        return _keep_top_exact(flat, k)
    keep = above
    keep[inside[_keep_top_exact(flat[inside], k - n_above)]] = True
    return keep


def make_masks(scores: dict, sparsity: float, scope: str = "global") -> dict:
    """Boolean masks keeping the highest scores.

    Parameters
    ----------
    scores : dict ``{param_name: tensor}``
        From a score function of :mod:`sigprop.pruning.scores`.
    sparsity : float in [0, 1)
        Fraction of the scored entries removed.
    scope : {"global", "layerwise"}
        ``"global"``: keep the ``round((1-s) n)`` best over all tensors together;
        ``"layerwise"``: keep ``round((1-s) n_l)`` in each tensor.

    Returns
    -------
    dict ``{param_name: bool tensor}`` of the scores' shapes (True = kept).
    """
    s = _check_sparsity(sparsity)
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; choose 'global' or 'layerwise'")
    if scope == "layerwise":
        out = {}
        for name, v in scores.items():
            flat = _flat({name: v})
            out[name] = _keep_top(flat, round((1.0 - s) * flat.numel())).reshape(v.shape)
        return out
    flat = _flat(scores)
    keep = _keep_top(flat, round((1.0 - s) * flat.numel()))
    out, start = {}, 0
    for name, v in scores.items():
        out[name] = keep[start : start + v.numel()].reshape(v.shape)
        start += v.numel()
    return out


def critical_sparsity(scores: dict) -> float:
    """Critical sparsity ``s_cr`` of global pruning by ``scores`` (seed 001 Sec. 2.1).

    The smallest sparsity, among the achievable ones ``m / n`` (``m`` entries removed out of
    ``n``), at which :func:`make_masks` (global scope) fully prunes some tensor. With ``r_l`` the
    number of entries ranked before the best entry of tensor ``l`` in the global order (ties
    broken as in :func:`make_masks`), tensor ``l`` is fully pruned iff at most ``r_l`` entries
    are kept, so ``s_cr = 1 - max_l r_l / n``: at ``s_cr`` some tensor collapses, at
    ``s_cr - 1/n`` none does. Returns 1.0 for a single tensor.
    """
    flat = _flat(scores)
    n = flat.numel()
    rank = torch.empty(n, dtype=torch.long)
    rank[torch.argsort(-flat, stable=True)] = torch.arange(n)
    best, start = [], 0
    for v in scores.values():
        if v.numel() == 0:
            continue
        best.append(int(rank[start : start + v.numel()].min()))
        start += v.numel()
    return 1.0 - max(best) / n


def apply_masks(model: nn.Module, masks: dict) -> nn.Module:
    """Attach ``masks`` (``{param_name: tensor}``, nonzero = kept) with ``prune.custom_from_mask``.

    ``param_name`` is ``"<module path>.<tensor name>"`` as in the score dicts. A module that is
    already pruned keeps the product of its old and new masks. Returns ``model`` (changed in place).
    """
    for name, mask in masks.items():
        prefix, _, tname = name.rpartition(".")
        module = model.get_submodule(prefix) if prefix else model
        current = getattr(module, tname, None)
        if current is None:
            raise ValueError(f"model has no tensor {name!r}")
        if tuple(mask.shape) != tuple(current.shape):
            raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}, tensor has {tuple(current.shape)}")
        prune.custom_from_mask(module, tname, mask=(torch.as_tensor(mask) != 0).to(current.dtype).to(current.device))
    return model


def _layer_fractions(model: nn.Module, params: Params | None) -> list[tuple[str, float]]:
    out = []
    for name, module, tname in named_prunable(model, params):
        mask = getattr(module, tname + "_mask", None)
        frac = 1.0 if mask is None else float((mask != 0).sum()) / mask.numel()
        out.append((name, frac))
    return out


def kept_per_layer(model: nn.Module, params: Params | None = None) -> list[float]:
    """Kept fraction of each prunable tensor (default: every Linear/Conv weight), in layer order.

    Read from the ``weight_mask`` buffers; an unmasked tensor counts as fully kept (1.0).
    """
    return [f for _, f in _layer_fractions(model, params)]


def collapsed_layers(model: nn.Module, params: Params | None = None) -> list[str]:
    """Names (``"<module path>.weight"``) of the prunable tensors whose mask keeps nothing."""
    return [name for name, f in _layer_fractions(model, params) if f == 0.0]


def synflow_masks(
    model: nn.Module,
    in_shape: Sequence[int],
    sparsity: float,
    rounds: int = 100,
    scope: str = "global",
    params: Params | None = None,
    progress: bool = False,
) -> dict:
    """Iterative SynFlow (Tanaka et al. 2020, Algorithm 1): masks after ``rounds`` rounds.

    Round ``k = 1..rounds`` scores the masked, linearized, absolute-valued float64 copy (as in
    :func:`sigprop.pruning.scores.synflow_scores`) and masks to sparsity
    ``s_k = 1 - (1 - s)^(k / rounds)`` (exponential schedule); pruned entries stay pruned. The
    final mask keeps exactly ``round((1 - s) n)`` entries. The model is never touched.
    ``progress`` shows a tqdm bar over the rounds (on stderr).
    """
    s = _check_sparsity(sparsity)
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    in_shape = tuple(int(d) for d in in_shape)
    named = named_prunable(model, params)
    net = _linearized_copy(model)
    _abs_state_(net)
    named_copy = named_prunable(net, _params_in_copy(model, net, named))
    originals = {}
    with torch.no_grad():
        for name, m, t in named_copy:
            originals[name] = getattr(m, t + "_orig", getattr(m, t)).detach().clone()
    masks = {name: torch.ones_like(w, dtype=torch.bool) for name, w in originals.items()}
    for k in tqdm(range(1, rounds + 1), desc="synflow", disable=not progress, file=sys.stderr):
        with torch.no_grad():
            for name, m, t in named_copy:
                leaf = getattr(m, t + "_orig", None)
                leaf = leaf if isinstance(leaf, nn.Parameter) else getattr(m, t)
                leaf.copy_(originals[name] * masks[name])
        scores = _synflow_pass(net, named_copy, in_shape)
        scores = {n: torch.where(masks[n], v, torch.full_like(v, -math.inf)) for n, v in scores.items()}
        s_k = s if k == rounds else 1.0 - (1.0 - s) ** (k / rounds)
        masks = make_masks(scores, s_k, scope=scope)
    return masks
