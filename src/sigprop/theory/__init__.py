"""Theory layer (NumPy/SciPy only, never imports torch): activations, the Gaussian engine,
mean-field maps and Edge of Chaos, calibration of sparse activations."""

from .activations import Activation, available, get_activation
from .calibrate import SparseCalibration, calibrate_grid, calibrate_sparse, solve_m, tau_for_sparsity
from .gaussian import bvn_cdf, expect, expect_bivariate
from .meanfield import (
    EOCPoint,
    FixedPoint,
    chi1,
    correlation_fixed_points,
    correlation_map,
    correlation_map_slope,
    depth_scales,
    eoc,
    eoc_curve,
    eoc_from_q,
    fixed_points,
    gradient_ratio,
    phase,
    sparsity,
    variance_map,
    variance_map_derivatives,
)

__all__ = [
    "Activation",
    "EOCPoint",
    "FixedPoint",
    "SparseCalibration",
    "available",
    "bvn_cdf",
    "calibrate_grid",
    "calibrate_sparse",
    "chi1",
    "correlation_fixed_points",
    "correlation_map",
    "correlation_map_slope",
    "depth_scales",
    "eoc",
    "eoc_curve",
    "eoc_from_q",
    "expect",
    "expect_bivariate",
    "fixed_points",
    "get_activation",
    "gradient_ratio",
    "phase",
    "solve_m",
    "sparsity",
    "tau_for_sparsity",
    "variance_map",
    "variance_map_derivatives",
]
