"""Pruning at initialization: ``scores(model, ...) -> {name: scores}``, ``make_masks(scores, s) ->
{name: mask}``, ``apply_masks(model, masks)``, each usable alone (the functions import torch).

Seeds: 002 eq. 1 (connection sensitivity, unsupervised losses of Table 4), 001 Sec. 2.1 (critical
sparsity); SynFlow of Tanaka et al. (2020); GraSP of Wang et al. (2020). Repairs: rescaling
(``rescale``: seed 001 Prop. 1 / Alg. 1, seed 000 Thm 4.1 and eq. 8), EOC subnetworks (seed 001
App. H), orthogonal initialization, approximate isometry and the orthogonality score (seed 002).
The option names (:data:`LOSSES`, :data:`RESCALE_METHODS`, :data:`SCOPES`) load without torch;
the functions load their submodule (and torch) on first use.
SBP-SR (seed 001 Sec. 3) is ``snip_scores`` on a Stable ResNet (``build_model("stable_resnet32")``).
"""

import importlib

from ._names import LOSSES, RESCALE_METHODS, SCOPES

# The functions live in submodules that import torch; they are loaded on first access (PEP 562),
# so that ``from sigprop.pruning._names import ...`` (the command line) stays torch-free.
_EXPORTS = {
    "grasp_scores": "grasp",
    "approximate_isometry": "isometry",
    "orthogonal_init": "isometry",
    "orthogonality_score": "isometry",
    "apply_masks": "masks",
    "collapsed_layers": "masks",
    "critical_sparsity": "masks",
    "global_order": "masks",
    "kept_count": "masks",
    "kept_per_layer": "masks",
    "make_masks": "masks",
    "synflow_masks": "masks",
    "eoc_subnetwork": "repair",
    "rescale": "repair",
    "scale_factor": "repair",
    "magnitude_scores": "scores",
    "named_prunable": "scores",
    "prunable_parameters": "scores",
    "random_scores": "scores",
    "snip_scores": "scores",
    "surrogate_loss": "scores",
    "synflow_scores": "scores",
}
_SUBMODULES = ("grasp", "isometry", "masks", "repair", "scores")


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "LOSSES",
    "RESCALE_METHODS",
    "SCOPES",
    "apply_masks",
    "approximate_isometry",
    "collapsed_layers",
    "critical_sparsity",
    "eoc_subnetwork",
    "global_order",
    "grasp_scores",
    "kept_count",
    "kept_per_layer",
    "magnitude_scores",
    "make_masks",
    "named_prunable",
    "orthogonal_init",
    "orthogonality_score",
    "prunable_parameters",
    "random_scores",
    "rescale",
    "scale_factor",
    "snip_scores",
    "surrogate_loss",
    "synflow_masks",
    "synflow_scores",
]
