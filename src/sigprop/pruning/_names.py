"""Names of the pruning options, defined once and importable without torch (the command line of
``sigprop prune`` is built from them before torch is loaded)."""

from __future__ import annotations

__all__ = ["LOSSES", "RESCALE_METHODS", "SCOPES"]

#: Losses of SNIP / GraSP (seed 002 Table 4): supervised cross-entropy and three unsupervised ones.
LOSSES: tuple[str, ...] = ("supervised", "uniform", "pred-raw", "pred-softmax")
#: Repairs of :func:`sigprop.pruning.rescale`.
RESCALE_METHODS: tuple[str, ...] = ("none", "eoc", "random", "magnitude", "magnitude-exact")
#: Mask scopes of :func:`sigprop.pruning.make_masks`: one global threshold, or per tensor.
SCOPES: tuple[str, ...] = ("global", "layerwise")
