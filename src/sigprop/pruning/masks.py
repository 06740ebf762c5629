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

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune
from tqdm.auto import tqdm

from . import _outer
from ._names import SCOPES
from .scores import (
    Params,
    _abs_state_,
    _leaf,
    _linearized_copy,
    _params_in_copy,
    _synflow_grads,
    _synflow_leaves,
    named_prunable,
)

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


#: run SynFlow's per-round selection on numpy views when on the CPU (tests switch it off to
#: exercise the torch path used on other devices)
_NUMPY_ON_CPU = True
#: size of SynFlow's fixed random sample for the per-round bracket of the threshold
_SYNFLOW_SAMPLE = 1 << 13
#: chunk of SynFlow's fused per-round sweep on the CPU (its operands stay in the L2 cache)
_SWEEP_CHUNK = 1 << 15
#: on the CPU, score SynFlow's fully connected layers from their rank-one gradients with the
#: compiled scan of :mod:`sigprop.pruning._outer` (False: through their gradients, as elsewhere)
_OUTER_ON_CPU = True
#: a round whose ranked leaves are all scored by the compiled scan runs as three compiled calls
#: (one more per retried bracket; :func:`sigprop.pruning._outer.round_`; False: the same steps
#: called from Python)
_ROUND_ON_CPU = True


class _SynflowState:
    """SynFlow's prunable leaves in one flat float64 buffer ``w`` (each leaf a view into it when
    contiguous, so that the net computes with it) and the flat alive mask.

    On the CPU the per-round work runs on numpy views of them (numpy's comparisons, selection and
    ``flatnonzero`` are several times faster than torch's on one thread); elsewhere on torch.
    """

    def __init__(self, sources: list[torch.Tensor]):
        """``sources``: the model's own prunable leaves; the buffer holds their absolute values in
        float64 (:func:`_linearized_copy` then makes the copy compute with it, see :meth:`bind`)."""
        self.sizes = [p.numel() for p in sources]
        self.offsets = [sum(self.sizes[:i]) for i in range(len(sources))]
        self.n = sum(self.sizes)
        dev = sources[0].device
        self.cpu = dev.type == "cpu" and _NUMPY_ON_CPU
        self.w = torch.empty(self.n, dtype=torch.float64, device=dev)
        self.alive = torch.ones(self.n, dtype=torch.bool, device=dev)
        self.w_views, self.copied = [], []
        with torch.no_grad():
            for p, start in zip(sources, self.offsets, strict=True):
                w = self.w[start : start + p.numel()].view(p.shape)
                w.copy_(p.detach())
                w.abs_()
                self.w_views.append(w)
        alive = self.alive.numpy() if self.cpu else self.alive
        self.alive_views = [alive[a : a + n] for a, n in zip(self.offsets, self.sizes, strict=True)]
        self.cand, self.sample_out, self.sample_rc, self.sel = None, None, {}, None
        self.outer, self.tracked = set(), np.zeros((0, 2), dtype=np.int64)
        self.round_meta = {}
        # the compiled kernels of sigprop.pruning._outer (numba) run the CPU rounds
        self.compiled = self.cpu and _OUTER_ON_CPU and _outer.kernels() is not None
        if self.cpu:
            self.w_np = self.w.numpy()
            self.scratch = np.empty(max(self.sizes), dtype=bool)

    def scores(self, grads) -> list:
        """Flat per-leaf score buffers, the gradient buffers themselves where possible: ``|w g|``
        off the CPU; on the CPU still the raw ``g`` (numpy), made ``w g`` in place by
        :meth:`score_leaf` or by the fused sweep of :func:`_lowest_alive_np` (``|w g|`` is taken
        where needed)."""
        out, spans = [], []
        for g, w in zip(grads, self.w_views, strict=True):
            if isinstance(g, tuple):  # a fully connected layer's (delta, a): see outer_scan
                out.append(g)
                continue
            if g is None:
                sc = torch.zeros_like(w)
            else:
                lo = g.data_ptr()
                span = (lo, lo + g.numel() * g.element_size())
                own = g.is_contiguous() and g.shape == w.shape and all(b <= span[0] or span[1] <= a for a, b in spans)
                spans.append(span)
                if self.cpu:
                    sc = g if own else g.clone(memory_format=torch.contiguous_format)
                else:
                    sc = g.mul_(w) if own else g * w  # (in a gradient buffer no other one overlaps)
            sc = sc.reshape(-1)
            out.append(sc.numpy() if self.cpu else sc.abs_())
        self.pending = [self.cpu and not isinstance(sc, tuple) for sc in out]
        return out

    def shared(self, sources: list[torch.Tensor]) -> dict:
        """``{id(source): view}`` for the contiguous sources, for :func:`_linearized_copy`."""
        return {id(p): w for p, w in zip(sources, self.w_views, strict=True) if p.is_contiguous()}

    def bind(self, leaves: list[torch.Tensor]) -> None:
        """The copy's leaves: each computes with its view of the buffer where it can; the others
        (not contiguous) get the buffer copied back after each prune."""
        with torch.no_grad():
            for p, w in zip(leaves, self.w_views, strict=True):
                if p.data_ptr() == w.data_ptr() and p.dtype == w.dtype and p.shape == w.shape and p.is_contiguous():
                    continue
                if p.is_contiguous() and p.dtype == torch.float64 and p.shape == w.shape:
                    p.data = w
                else:
                    p.copy_(w)
                    self.copied.append((p, w))

    def leaf_w(self, i: int) -> np.ndarray:
        """Leaf ``i``'s flat weights (numpy view of the buffer; CPU)."""
        return self.w_np[self.offsets[i] : self.offsets[i] + self.sizes[i]]

    def candidates(self) -> tuple[np.ndarray, np.ndarray]:
        """Scratch for the candidates of a round: flat positions (int64) and scores (float64),
        room for every entry (allocated on first use; only the used part is ever touched)."""
        if self.cand is None:
            self.cand = (np.empty(self.n, dtype=np.int64), np.empty(self.n, dtype=np.float64))
        return self.cand

    def selected(self) -> np.ndarray:
        """Scratch for the positions a round prunes."""
        if self.sel is None:
            self.sel = np.empty(self.n, dtype=np.int64)
        return self.sel

    def outer_scan(self, i: int, sc: tuple, hi: float, n: int) -> int:
        """Leaf ``i`` a fully connected layer scored as ``sc = (delta, a)``: append its alive
        entries with score not above ``hi`` to :meth:`candidates` after the first ``n``; returns
        the new count."""
        pos, val = self.candidates()
        return _outer.scan(self.leaf_w(i), sc[0], sc[1], hi, self.offsets[i], pos, val, n)

    def outer_sample(self, i: int, sc: tuple, smp: np.ndarray) -> np.ndarray:
        """Scores of the alive entries at the sample positions ``smp`` of leaf ``i`` (a fully
        connected layer scored as ``sc = (delta, a)``)."""
        delta, a = sc
        key = (i, smp.ctypes.data, len(smp))
        if key not in self.sample_rc:
            self.sample_rc[key] = (smp // a.size, smp % a.size)
        if self.sample_out is None or len(self.sample_out) < len(smp):
            self.sample_out = np.empty(max(len(smp), _SYNFLOW_SAMPLE), dtype=np.float64)
        rows, cols = self.sample_rc[key]
        return _outer.sample(self.leaf_w(i), delta, a, rows, cols, smp, self.sample_out)

    def score_leaf(self, i: int, sc) -> None:
        """On the CPU: make leaf ``i``'s raw gradient ``sc`` its signed score ``w g`` (once)."""
        if self.pending[i]:  # (never for a (delta, a) pair: see scores)
            np.multiply(sc, self.w_np[self.offsets[i] : self.offsets[i] + self.sizes[i]], out=sc)
            self.pending[i] = False

    def prune(self, pos) -> None:
        """Prune the flat positions ``pos``: zero their weights, mark them dead."""
        if len(pos) == 0:
            return
        if self.compiled:
            _outer.prune(self.w_np, self.alive.numpy(), pos, self.tracked)
        elif self.cpu:
            self.w_np[pos] = -0.0  # zero, and dead to the compiled scan (alive weights are >= +0)
            self.alive.numpy()[pos] = False
        else:
            self.w[pos] = 0.0
            self.alive[pos] = False
        self._copy_back()

    def _copy_back(self) -> None:
        """The leaves that do not compute with the buffer get it copied back (see :meth:`bind`)."""
        if self.copied:
            with torch.no_grad():
                for p, w in self.copied:
                    p.copy_(w)

    def set_outer(self, outer) -> None:
        """The leaves scored by the compiled scan: their alive mask is their weights' sign bit
        during the rounds (see :meth:`finish`); the others keep the mask array up to date."""
        self.outer = set(outer)
        self.tracked = np.array(
            [[a, a + n] for i, (a, n) in enumerate(zip(self.offsets, self.sizes, strict=True)) if i not in self.outer],
            dtype=np.int64,
        ).reshape(-1, 2)

    def finish(self) -> None:
        """The alive mask of the compiled scan's leaves, from their weights' sign bits."""
        for i in self.outer:
            np.logical_not(np.signbit(self.leaf_w(i)), out=self.alive_views[i])

    def compiled_round(self, seg: list[int], scores: list) -> bool:
        """Whether the round of the leaves ``seg`` can run as compiled calls (:meth:`run_round`):
        all of them fully connected layers scored as ``(delta, a)``."""
        return self.compiled and _ROUND_ON_CPU and all(isinstance(scores[i], tuple) for i in seg)

    def run_round(self, seg: list[int], scores: list, n_alive: int, m: int, sample) -> None:
        """Prune the ``m`` lowest-scored alive entries of the leaves ``seg`` in three compiled
        calls (:func:`sigprop.pruning._outer.round_`; see :meth:`compiled_round`): the entries
        :func:`_lowest_alive` gives, pruned as :meth:`prune` does."""
        key = tuple(seg)
        if key not in self.round_meta:
            layers = np.array(
                [[self.offsets[i], len(scores[i][0]), len(scores[i][1]), 0, 0] for i in seg],
                dtype=np.int64,
            ).reshape(-1, 5)
            layers[:, 3] = np.concatenate([[0], np.cumsum(layers[:-1, 1])])
            layers[:, 4] = np.concatenate([[0], np.cumsum(layers[:-1, 2])])
            # the sample's flat positions, with their leaf (index into seg), row and column
            local = [sample[i] if sample is not None else np.zeros(0, np.int64) for i in seg]
            q = np.repeat(np.arange(len(seg)), [len(p) for p in local])
            local = np.concatenate(local).astype(np.int64)
            cols = layers[q, 2]
            self.round_meta[key] = (layers, layers[q, 0] + local, q, local // cols, local % cols)
        layers, smp, smp_layer, smp_row, smp_col = self.round_meta[key]
        if n_alive < _BRACKET_MIN:  # (as _lowest_alive: every alive entry is a candidate)
            smp = smp[:0]
        deltas = np.concatenate([scores[i][0] for i in seg])
        acts = np.concatenate([scores[i][1] for i in seg])
        pos, val = self.candidates()
        _outer.round_(
            self.w_np, self.alive.numpy(), self.tracked, layers, deltas, acts, smp, smp_layer, smp_row, smp_col,
            m, lambda ms, z: _bracket_rank(ms, m, n_alive, z), _BRACKETS_CPU, pos, val, self.selected(),
        )  # fmt: skip
        self._copy_back()

    def has_nan(self, i: int, sc) -> bool:
        """Whether an alive entry of leaf ``i`` has a NaN score."""
        a = self.alive_views[i]
        if isinstance(sc, tuple):
            return self.outer_scan(i, sc, -math.inf, 0) > 0  # not (score > -inf): NaN
        if self.cpu:
            self.score_leaf(i, sc)
            return bool(np.isnan(sc[a]).any())
        return bool(torch.isnan(sc[a]).any())


def _sample_positions(sizes: list[int]) -> list[torch.Tensor]:
    """A fixed random sample of ``_SYNFLOW_SAMPLE`` positions of the concatenation of tensors of
    ``sizes``, as sorted local positions in each."""
    n = sum(sizes)
    gen = torch.Generator().manual_seed(n)
    pos = torch.sort(torch.randint(n, (_SYNFLOW_SAMPLE,), generator=gen)).values
    out, start = [], 0
    for size in sizes:
        lo, hi = torch.searchsorted(pos, torch.tensor([start, start + size])).tolist()
        out.append(pos[lo:hi] - start)
        start += size
    return out


#: the CPU rounds' brackets: +2 binomial standard deviations first (fewer candidates to gather
#: and select; too few in about 2% of the rounds), then +6 (from the same sample), then every
#: alive entry
_BRACKETS_CPU = (2.0, 6.0)


def _bracket_rank(ms: int, m: int, n_alive: int, z: float = 5.0) -> int:
    """Sample rank above the m-th lowest of ``n_alive``: +``z`` binomial standard deviations."""
    p = m / n_alive
    return int(p * ms + z * math.sqrt(ms * p * (1.0 - p)) + 2.0)


def _lowest_np(vals: np.ndarray, m: int) -> np.ndarray:
    """Indices of the ``m`` smallest of ``vals`` (no NaN), ties: the later index first."""
    v = np.partition(vals, m - 1)[m - 1]
    below = np.flatnonzero(vals < v)
    ties = np.flatnonzero(vals == v)
    return np.concatenate([below, ties[len(ties) - (m - len(below)) :]])


def _lowest_alive_np(st: _SynflowState, layers: list[int], scores: list, n_alive: int, m: int, sample):
    """CPU version of :func:`_lowest_alive` on numpy views; ``scores`` are raw gradients (see
    :meth:`_SynflowState.scores`) or, for fully connected layers, ``(delta, a)`` pairs scanned by
    :meth:`_SynflowState.outer_scan`. One sweep over each leaf, chunk by chunk, makes the scores
    and finds the candidates; they are gathered in :meth:`_SynflowState.candidates`."""
    pos, val = st.candidates()
    n = -1  # the number of candidates; -1: none bracketed
    if sample is not None and n_alive >= _BRACKET_MIN:
        parts, signed = [], []
        for i in layers:
            smp, g = sample[i], scores[i]
            if isinstance(g, tuple):
                signed.append(False)
                parts.append(st.outer_sample(i, g, smp))
                continue
            w = st.leaf_w(i)
            v = (g[smp] * w[smp]) if st.pending[i] else g[smp]
            v = v[st.alive_views[i][smp]]
            signed.append(bool((v < 0).any()))  # negative gradients seen: take |w g| of the leaf
            parts.append(np.abs(v))
        vals = np.concatenate(parts)
        loose = any(not neg and not isinstance(scores[i], tuple) for i, neg in zip(layers, signed, strict=True))
        for z in _BRACKETS_CPU:
            r = _bracket_rank(len(vals), m, n_alive, z)
            if len(vals) < 256 or r >= len(vals):
                break
            hi = np.partition(vals, r)[r]
            n = 0
            for i, neg in zip(layers, signed, strict=True):
                if isinstance(scores[i], tuple):
                    n = st.outer_scan(i, scores[i], hi, n)
                    continue
                # alive and not (score > hi): the entries <= hi, the NaN ones and (for a leaf
                # left signed) the negative ones; a superset of the alive entries <= hi
                g, alive, size = scores[i], st.alive_views[i], st.sizes[i]
                w = st.leaf_w(i)
                buf, pending = st.scratch[:size], st.pending[i]
                for c0 in range(0, size, _SWEEP_CHUNK):
                    c1 = min(c0 + _SWEEP_CHUNK, size)
                    gc, bc = g[c0:c1], buf[c0:c1]
                    if pending:
                        np.multiply(gc, w[c0:c1], out=gc)
                    if neg:
                        np.abs(gc, out=gc)
                    np.greater(gc, hi, out=bc)
                    np.greater(alive[c0:c1], bc, out=bc)
                st.pending[i] = False
                n = _append(pos, val, n, np.flatnonzero(buf), g, st.offsets[i])
            # the bracket holds when at least m alive entries score |s| <= hi (or NaN): then every
            # entry left out scores above the m-th lowest. A leaf left signed (loose) gave
            # negative entries of any size as well: count without them.
            if n >= m and (not loose or np.count_nonzero(~(np.abs(val[:n]) > hi)) >= m):
                break
            n = -1
    if n < 0:
        n = 0
        for i in layers:
            if isinstance(scores[i], tuple):
                n = st.outer_scan(i, scores[i], math.inf, n)
            else:
                st.score_leaf(i, scores[i])
                n = _append(pos, val, n, np.flatnonzero(st.alive_views[i]), scores[i], st.offsets[i])
    if st.compiled:
        return _outer.select(pos, val, n, m, st.selected())
    vals = val[:n]
    np.abs(vals, out=vals)
    if np.isnan(vals).any():
        raise ValueError("scores contain NaN")
    return pos[:n][_lowest_np(vals, m)]


def _append(pos: np.ndarray, val: np.ndarray, n: int, local: np.ndarray, scores: np.ndarray, offset: int) -> int:
    """Append the positions ``local`` of a leaf (flat offset ``offset``) and their ``scores``."""
    k = n + len(local)
    np.add(local, offset, out=pos[n:k])
    np.take(scores, local, out=val[n:k])
    return k


def _lowest_alive(st: _SynflowState, layers: list[int], scores: list, n_alive: int, m: int, sample):
    """Flat positions of the ``m`` lowest-scored alive entries of the leaves ``layers`` (ranked
    together), ties: the later position goes first; raises ValueError if an alive score is NaN.

    These are the entries that :func:`make_masks` drops from ``where(alive, |w g|, -inf)`` when
    it keeps ``n_alive - m``. Large inputs: the alive entries of a fixed random sample bracket the
    m-th lowest alive score from above (``hi``, +5 binomial standard deviations of its sample
    rank; on the CPU +2 first, then +6, see ``_BRACKETS_CPU``: gathering and selecting the
    candidates costs more than the ~2% of rounds that take a second sweep); the alive entries not
    above ``hi`` (NaN included) are the candidates and the exact selection runs on those only.
    Too few candidates fall back to all alive entries, so the result never depends on the
    sample.
    """
    if st.cpu:
        return _lowest_alive_np(st, layers, scores, n_alive, m, sample)
    cand = None
    if sample is not None and n_alive >= _BRACKET_MIN:
        vals = torch.cat([scores[i][sample[i]][st.alive_views[i][sample[i]]] for i in layers])
        r = _bracket_rank(vals.numel(), m, n_alive)
        if vals.numel() >= 256 and r < vals.numel():
            hi = torch.kthvalue(vals.cpu(), r + 1).values.item()
            cand = [torch.nonzero(st.alive_views[i] & ~(scores[i] > hi)).reshape(-1) for i in layers]
            if sum(c.numel() for c in cand) < m:
                cand = None
    if cand is None:
        cand = [torch.nonzero(st.alive_views[i]).reshape(-1) for i in layers]
    vals = torch.cat([scores[i][c] for i, c in zip(layers, cand, strict=True)]).cpu()
    if torch.isnan(vals).any():
        raise ValueError("scores contain NaN")
    pos = torch.cat([c + st.offsets[i] for i, c in zip(layers, cand, strict=True)])
    keep = _keep_top_exact(vals, vals.numel() - m).to(pos.device)
    return pos[~keep]


def _outer_layers(net: nn.Module, named_copy, leaves, st: _SynflowState, in_shape) -> dict[int, nn.Linear]:
    """The leaves scored by the compiled scan (:mod:`sigprop.pruning._outer`): on the CPU, the
    weight of a plain ``nn.Linear`` without hooks of its own (they could change its weight, its
    output or the gradient reaching it) whose leaf is the weight itself (not a pruned
    ``weight_orig``) and a view of the flat buffer. A probe pass checks the rest of what makes
    its gradient the outer product ``delta a^T``: the layer is called exactly once, on a single
    input row, its input and output are not changed in place afterwards, and the weight reaches
    the output only through that call (not tied to another layer, not used again directly).
    ``{leaf index: module}``."""
    if not st.compiled:
        return {}
    copied = {id(p) for p, _ in st.copied}
    found = {
        i: m
        for i, ((_, m, t), p) in enumerate(zip(named_copy, leaves, strict=True))
        if type(m) is nn.Linear
        and t == "weight"
        and m.weight is p
        and id(p) not in copied
        and not (m._forward_pre_hooks or m._forward_hooks or m._backward_hooks or m._backward_pre_hooks)
    }
    if not found:
        return {}
    calls = {id(m): [] for m in found.values()}

    def probe(mod, inp, out):
        single = len(inp) == 1 and inp[0].numel() == mod.in_features and out.numel() == mod.out_features
        calls[id(mod)].append((single, inp[0], inp[0]._version, out, out._version))

    handles = [m.register_forward_hook(probe) for m in found.values()]
    try:
        with torch.enable_grad():  # (the graph tells how often each weight is used)
            y = net(torch.ones((1, *in_shape), dtype=torch.float64, device=st.w.device))
    finally:
        for h in handles:
            h.remove()
    uses = _leaf_uses(y)

    def ok(m: nn.Linear) -> bool:
        if len(calls[id(m)]) != 1:
            return False
        single, x, xv, out, ov = calls[id(m)][0]
        return single and x._version == xv and out._version == ov and uses.get(id(m.weight), 0) == 1

    return {i: m for i, m in found.items() if ok(m)}


def _leaf_uses(y) -> dict[int, int]:
    """``{id(leaf): number of edges into its gradient accumulator}`` in the autograd graph of
    the tensors ``y`` (a tensor or a structure of them): how many times each leaf enters it."""
    roots = [t.grad_fn for t in _tensors(y) if t.grad_fn is not None]
    uses, seen = {}, set()
    while roots:
        node = roots.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        for nxt, _ in node.next_functions:
            if nxt is None:
                continue
            var = getattr(nxt, "variable", None)
            if var is not None:  # AccumulateGrad: a leaf
                uses[id(var)] = uses.get(id(var), 0) + 1
            else:
                roots.append(nxt)
    return uses


def _tensors(y) -> list[torch.Tensor]:
    """The tensors in ``y``: a tensor, or lists, tuples and dicts of them."""
    if isinstance(y, torch.Tensor):
        return [y]
    if isinstance(y, dict):
        y = list(y.values())
    if isinstance(y, (list, tuple)):
        return [t for v in y for t in _tensors(v)]
    return []


#: record the outer layers' inputs and outputs by replacing their forward on the copy (False:
#: with forward hooks, which send every call of the module through torch's slower hook path)
_OUTER_FORWARD = True


class _OuterHooks:
    """The fully connected layers scored by the compiled scan record their input and output in
    the forward pass and make the output require grad (a leaf when nothing before it does), so
    that one backward pass gives ``delta`` at each layer without building the weight gradients.
    On SynFlow's copy, each such layer's ``forward`` is replaced by one that does the same
    ``F.linear`` and records (these layers have no hooks of their own, see
    :func:`_outer_layers`); :meth:`remove` puts the class's back."""

    def __init__(self, outer: dict[int, nn.Linear]):
        self.outer, self.seen = outer, {}
        self.handles, self.patched = [], []
        for m in outer.values():
            if _OUTER_FORWARD:
                m.forward = self._forward(m)
                self.patched.append(m)
            else:
                self.handles.append(m.register_forward_hook(self._hook))

    def _forward(self, mod: nn.Linear):
        weight, bias, key, seen = mod.weight, mod.bias, id(mod), self.seen

        def forward(x):
            out = nn.functional.linear(x, weight, bias)  # (nn.Linear.forward, bit for bit)
            if not out.requires_grad:
                out.requires_grad_()
            seen[key] = (x, out)
            return out

        return forward

    def _hook(self, mod, inp, out):
        if not out.requires_grad:
            out.requires_grad_()
        self.seen[id(mod)] = (inp[0], out)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        for m in self.patched:
            del m.forward

    def grads(self, net: nn.Module, leaves, in_shape: tuple[int, ...]) -> list:
        """Per leaf: its gradient (None where unused), or ``(delta, a)`` (flat float64 numpy
        arrays) for a layer of ``outer``."""
        self.seen.clear()
        x = torch.ones((1, *in_shape), dtype=torch.float64, device=leaves[0].device)
        total = net(x).sum()
        rest = [i for i in range(len(leaves)) if i not in self.outer]
        outs = [self.seen[id(m)][1] for m in self.outer.values()]
        gs = torch.autograd.grad(total, [leaves[i] for i in rest] + outs, allow_unused=True)
        out = [None] * len(leaves)
        for i, g in zip(rest, gs, strict=False):
            out[i] = g
        for (i, m), g in zip(self.outer.items(), gs[len(rest) :], strict=True):
            a = self.seen[id(m)][0].detach().reshape(-1)
            delta = g.detach().reshape(-1) if g is not None else torch.zeros(m.out_features, dtype=a.dtype)
            out[i] = (np.ascontiguousarray(delta.numpy()), np.ascontiguousarray(a.numpy()))
        self.seen.clear()
        return out


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

    The masks are those of :func:`make_masks` applied each round to the scores with the pruned
    entries at ``-inf`` (ties by position). Since the kept count never grows, a round only
    removes the lowest-scored alive entries: the prunable weights of the copy live in one flat
    buffer, and a round is its forward + backward pass, ``|w g|`` computed in the gradient buffers
    and the exact selection among the alive entries near the threshold (see
    :func:`_lowest_alive`); no sort, no per-round copies of the weights. A round that removes
    nothing is skipped (the last round always runs, so NaN scores are always reported).

    On the CPU (with numba) the fully connected layers that the forward pass calls once on a
    single row are scored without their gradient matrices: their forward, replaced on the copy,
    records each such layer's input ``a`` and output, the backward pass gives ``delta`` there,
    and a compiled scan computes ``|w (delta_i a_j)|``, which is autograd's ``|w g|`` bit for
    bit (see :mod:`sigprop.pruning._outer` and :func:`_outer_layers`). Same masks, about 2-3x
    faster on MLPs.
    """
    s = _check_sparsity(sparsity)
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; choose 'global' or 'layerwise'")
    in_shape = tuple(int(d) for d in in_shape)
    named = named_prunable(model, params)
    if not named:
        raise ValueError("no prunable tensor to score")
    sources = [_leaf(m, t) for _, m, t in named]
    st = _SynflowState(sources)
    net = _linearized_copy(model, st.shared(sources))  # its prunable leaves: views of st.w
    _abs_state_(net)
    named_copy = named_prunable(net, _params_in_copy(model, net, named))
    leaves = _synflow_leaves(net, named_copy)
    st.bind(leaves)
    outer = _outer_layers(net, named_copy, leaves, st, in_shape)
    st.set_outer(outer)
    for i in outer:
        leaves[i].requires_grad_(False)  # scored from (delta, a): no weight gradient to build
    # the leaves ranked together: all (global) or each alone (layerwise)
    segs = [list(range(len(leaves)))] if scope == "global" else [[i] for i in range(len(leaves))]
    n_alive = [sum(st.sizes[i] for i in seg) for seg in segs]
    samples = []
    for seg, size in zip(segs, n_alive, strict=True):
        smp = [None] * len(leaves)
        if size >= _BRACKET_MIN:
            for i, pos in zip(seg, _sample_positions([st.sizes[i] for i in seg]), strict=True):
                smp[i] = pos.numpy() if st.cpu else pos.to(st.w.device)
        samples.append(smp if size >= _BRACKET_MIN else None)
    seg_sizes = [sum(st.sizes[i] for i in seg) for seg in segs]
    steps = range(1, rounds + 1)
    if progress:
        steps = tqdm(steps, desc="synflow", file=sys.stderr)
    hooks = None
    try:
        hooks = _OuterHooks(outer) if outer else None
        # (entered once for all rounds; inf * 0 = NaN (overflow) is reported below, not warned)
        with torch.enable_grad(), np.errstate(all="ignore"):
            for k in steps:
                s_k = s if k == rounds else 1.0 - (1.0 - s) ** (k / rounds)
                kept = [round((1.0 - s_k) * n) for n in seg_sizes]
                if k < rounds and kept == n_alive:
                    continue
                grads = hooks.grads(net, leaves, in_shape) if hooks else _synflow_grads(net, leaves, in_shape)
                scores = st.scores(grads)
                del grads
                for j, seg in enumerate(segs):
                    m = n_alive[j] - kept[j]
                    if m > 0:
                        if st.compiled_round(seg, scores):
                            st.run_round(seg, scores, n_alive[j], m, samples[j])
                        else:
                            st.prune(_lowest_alive(st, seg, scores, n_alive[j], m, samples[j]))
                        n_alive[j] = kept[j]
                    elif any(st.has_nan(i, scores[i]) for i in seg):
                        raise ValueError("scores contain NaN")
                del scores  # free the gradient buffers before the next pass allocates its own
    finally:
        if hooks:
            hooks.remove()
    st.finish()
    return {
        name: mask.view(w.shape)
        for (name, _, _), w, mask in zip(named_copy, st.w_views, st.alive.split(st.sizes), strict=True)
    }
