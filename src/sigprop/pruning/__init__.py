"""Pruning at initialization: ``scores(model, ...) -> {name: scores}``, ``make_masks(scores, s) ->
{name: mask}``, ``apply_masks(model, masks)``, each usable alone (imports torch).

Seeds: 002 eq. 1 (connection sensitivity, unsupervised losses of Table 4), 001 Sec. 2.1 (critical
sparsity); SynFlow of Tanaka et al. (2020).
"""

from .masks import (
    apply_masks,
    collapsed_layers,
    critical_sparsity,
    global_order,
    kept_count,
    kept_per_layer,
    make_masks,
    synflow_masks,
)
from .scores import (
    LOSSES,
    magnitude_scores,
    named_prunable,
    prunable_parameters,
    random_scores,
    snip_scores,
    surrogate_loss,
    synflow_scores,
)

__all__ = [
    "LOSSES",
    "apply_masks",
    "collapsed_layers",
    "critical_sparsity",
    "global_order",
    "kept_count",
    "kept_per_layer",
    "magnitude_scores",
    "make_masks",
    "named_prunable",
    "prunable_parameters",
    "random_scores",
    "snip_scores",
    "surrogate_loss",
    "synflow_masks",
    "synflow_scores",
]
