"""Pruning at initialization: ``scores(model, ...) -> {name: scores}``, ``make_masks(scores, s) ->
{name: mask}``, ``apply_masks(model, masks)``, each usable alone (imports torch).

Seeds: 002 eq. 1 (connection sensitivity, unsupervised losses of Table 4), 001 Sec. 2.1 (critical
sparsity); SynFlow of Tanaka et al. (2020); GraSP of Wang et al. (2020). Repairs: rescaling
(``rescale``: seed 001 Prop. 1 / Alg. 1, seed 000 Thm 4.1 and eq. 8), EOC subnetworks (seed 001
App. H), orthogonal initialization, approximate isometry and the orthogonality score (seed 002).
SBP-SR (seed 001 Sec. 3) is ``snip_scores`` on a Stable ResNet (``build_model("stable_resnet32")``).
"""

from .grasp import grasp_scores
from .isometry import approximate_isometry, orthogonal_init, orthogonality_score
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
from .repair import RESCALE_METHODS, eoc_subnetwork, rescale, scale_factor
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
    "RESCALE_METHODS",
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
