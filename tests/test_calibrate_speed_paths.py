"""The fast paths of ``sigprop.theory.calibrate``: ``calibrate_grid`` (the vectorized core of
``calibrate_sparse``), the buffered Newton solver ``_newton_u`` and ``_clipped_derivs_fast``.

References, written here or taken from the general engine, never a stored output of sigprop:

* a plain safeguarded Newton loop on ``_clipped_slope`` (u0 = 1, bisection in log u when a
  step leaves the bracket, stop when every cell moved by <= 1e-14 relative): the fast solver
  must reproduce it bit for bit, so the calibrated m (and all that follows) cannot change;
* ``_clipped_derivs`` (the closed forms, bit for bit) and the general engine ``_derivs``
  (``eoc_from_q`` + ``variance_map_derivatives`` on truncated moments, to 1e-11 relative).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy import special

from sigprop.theory.calibrate import (
    M_MAX,
    M_MIN,
    _clipped_derivs,
    _clipped_derivs_fast,
    _clipped_slope,
    _derivs,
    _newton_u,
    calibrate_grid,
    calibrate_sparse,
    solve_m,
    tau_for_sparsity,
)

TABLE2 = {"crelu": (0.6, 0.7, 0.8, 0.85), "cst": (0.5, 0.6, 0.7, 0.8, 0.85)}
SLOPES = (0.5, 0.7, 0.9)
KEYS = ("sparsity", "slope", "tau", "m", "sigma_w2", "sigma_b2", "dV", "d2V")


def reference_u(a, slope):
    """u = m / sqrt(q*) with V'(q*) = slope: the plain loop (np.where, fresh arrays)."""
    a, slope = np.broadcast_arrays(np.asarray(a, float), np.asarray(slope, float))
    tail_a = special.ndtr(-a)
    lo, hi, u = np.full(a.shape, M_MIN), np.full(a.shape, M_MAX), np.ones(a.shape)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for _ in range(100):
            v, dv = _clipped_slope(a, u, tail_a)
            f = v - slope
            lo = np.where(f < 0, u, lo)
            hi = np.where(f > 0, u, hi)
            step = u - f / dv
            new = np.where((step >= lo) & (step <= hi), step, np.sqrt(lo * hi))
            done = (np.abs(new - u) <= 1e-14 * u).all()
            u = new
            if done:
                return u
    raise AssertionError("reference Newton did not converge")


def reference_grid(kind, sparsities, slopes, q):
    """Every cell by the reference routes: tau_for_sparsity, reference_u, _clipped_derivs."""
    s = np.repeat(sparsities, len(slopes))
    v = np.tile(slopes, len(sparsities))
    tau = tau_for_sparsity(kind, s, q)
    m = reference_u(tau / math.sqrt(q), v) * math.sqrt(q)
    return s, v, tau, m, _clipped_derivs(kind, tau, m, q)


def random_cells(seed, n=60):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.5, 0.99, n), rng.uniform(0.02, 0.98, n)


# ----------------------------------------------------------------------------------------
# bit-for-bit agreement with the reference loop and the closed forms
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["crelu", "cst"])
@pytest.mark.parametrize("q", [0.3, 1.0, 4.0])
def test_table2_grid_is_bitwise_the_reference(kind, q):
    grid = calibrate_grid(kind, TABLE2[kind], SLOPES, q_star=q)
    s, v, tau, m, (sw, sb, dv, d2v) = reference_grid(kind, TABLE2[kind], SLOPES, q)
    for key, ref in zip(KEYS, (s, v, tau, m, sw, sb, dv, d2v), strict=True):
        np.testing.assert_array_equal(grid[key], ref, err_msg=key)
    assert grid["kind"] == kind and grid["q_star"] == q


@pytest.mark.parametrize("kind", ["crelu", "cst"])
@pytest.mark.parametrize("seed", [0, 1])
def test_random_grids_are_bitwise_the_reference(kind, seed):
    s, v = random_cells(seed, 12)
    s = np.unique(np.round(s, 3))
    for q in (0.05, 1.0, 9.0):
        grid = calibrate_grid(kind, s, v, q_star=q)
        ref = reference_grid(kind, s, v, q)
        np.testing.assert_array_equal(grid["m"], ref[3])
        np.testing.assert_array_equal(np.array([grid[k] for k in KEYS[4:]]), np.array(ref[4]))


def test_newton_matches_the_reference_loop_including_bisection_steps():
    rng = np.random.default_rng(11)
    a = np.concatenate([rng.uniform(0, 3, 200), [0.0, 0.0, 2.5]])
    slope = np.concatenate([rng.uniform(0.001, 0.999, 200), [1e-3, 0.999, 0.999]])
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        u = _newton_u(a, slope, special.ndtr(-a), "crelu")
    np.testing.assert_array_equal(u, reference_u(a, slope))
    # and it solved the equation
    np.testing.assert_allclose(_clipped_slope(a, u)[0], slope, rtol=0, atol=1e-12)


@pytest.mark.parametrize("q", [0.3, 1.0, 4.0])
def test_fast_closed_forms_are_bitwise_the_closed_forms(q):
    rng = np.random.default_rng(5)
    tau = np.concatenate([rng.uniform(0, 3, 40), [1e-300, 6.0]])
    m = rng.uniform(0.01, 4, tau.size)
    a = tau / math.sqrt(q)
    for kind, c in (("crelu", 1.0), ("cst", 2.0)):
        fast = _clipped_derivs_fast(c, q, a, special.ndtr(-a), m)
        np.testing.assert_array_equal(np.array(fast), np.array(_clipped_derivs(kind, tau, m, q)))
    # a == 0 somewhere (crelu at s = 1/2): the normal_mass branch
    tau0, m0 = np.array([0.0, 0.4]), np.array([1.2, 0.7])
    a0 = tau0 / math.sqrt(q)
    fast = _clipped_derivs_fast(1.0, q, a0, special.ndtr(-a0), m0)
    np.testing.assert_array_equal(np.array(fast), np.array(_clipped_derivs("crelu", tau0, m0, q)))


# ----------------------------------------------------------------------------------------
# the fast path against the general engine
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["crelu", "cst"])
@pytest.mark.parametrize("q", [0.3, 1.0, 4.0])
def test_fast_path_matches_the_general_engine(kind, q):
    s, v = random_cells(3 if kind == "crelu" else 4, 6)
    s = np.unique(np.round(s, 3))
    grid = calibrate_grid(kind, s, v, q_star=q)
    sw, sb, dv, d2v = _derivs(kind, grid["tau"], grid["m"], q)
    np.testing.assert_allclose(grid["sigma_w2"], sw, rtol=1e-11)
    np.testing.assert_allclose(grid["sigma_b2"], sb, rtol=1e-11, atol=1e-12 * q)
    np.testing.assert_allclose(grid["dV"], dv, rtol=1e-11)
    np.testing.assert_allclose(grid["d2V"], d2v, rtol=1e-11, atol=1e-12 / q)
    # m hits the requested slope
    np.testing.assert_allclose(dv, grid["slope"], rtol=0, atol=1e-11)


@pytest.mark.parametrize("kind", ["relu_tau", "st_tau"])
def test_unclipped_grid(kind):
    grid = calibrate_grid(kind, [0.55, 0.7, 0.9], q_star=2.0)
    assert grid["m"] is None
    np.testing.assert_array_equal(grid["slope"], grid["dV"])
    np.testing.assert_allclose(grid["dV"], 1.0, atol=1e-12)
    np.testing.assert_allclose(grid["sigma_w2"], 1.0 / (1.0 - np.array([0.55, 0.7, 0.9])), rtol=1e-12)
    sw, sb, dv, d2v = _derivs(kind, grid["tau"], None, 2.0)
    for key, ref in (("sigma_w2", sw), ("sigma_b2", sb), ("dV", dv), ("d2V", d2v)):
        np.testing.assert_array_equal(grid[key], np.broadcast_to(ref, (3,)))


# ----------------------------------------------------------------------------------------
# calibrate_sparse is a wrapper of calibrate_grid
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "s", "v"),
    [
        ("crelu", TABLE2["crelu"], SLOPES),
        ("cst", TABLE2["cst"], SLOPES),
        ("crelu", 0.5, 0.7),
        ("relu_tau", [0.5, 0.8], None),
        ("st_tau", 0.3, None),
    ],
)
def test_records_are_the_grid_cells(kind, s, v):
    grid = calibrate_grid(kind, s, v, q_star=1.5)
    recs = calibrate_sparse(kind, s, v, q_star=1.5, fixed_point_analysis=False)
    assert len(recs) == grid["sparsity"].size
    for i, rec in enumerate(recs):
        d = rec.to_dict()
        assert d == dataclasses.asdict(rec)
        assert list(d) == [f.name for f in dataclasses.fields(rec)]
        assert d["kind"] == kind and d["q_star"] == 1.5
        for key in KEYS:
            ref = None if grid[key] is None else grid[key][i]
            assert d[key] == ref and type(d[key]) is type(None if ref is None else float(ref)), key
        assert d["n_fixed_points"] is None and d["stable"] is False


def test_fixed_point_analysis_on_the_grid_records():
    recs = calibrate_sparse("cst", [0.5, 0.85], [0.5, 0.9])
    assert all(r.n_fixed_points is not None and r.n_fixed_points >= 1 for r in recs)
    assert all(r.stable == (r.n_fixed_points == 1) for r in recs)  # |V'(q*)| < 1 on every cell


def test_q_star_types_give_the_same_cells():
    ref = calibrate_grid("cst", [0.6, 0.7], [0.5, 0.9], q_star=2.0)
    for q in (2, np.float64(2.0), np.array(2.0)):
        grid = calibrate_grid("cst", [0.6, 0.7], [0.5, 0.9], q_star=q)
        assert type(grid["q_star"]) is float
        for key in KEYS:
            np.testing.assert_array_equal(grid[key], ref[key])


def test_empty_and_scalar_inputs():
    assert calibrate_grid("crelu", [], [0.5])["m"].shape == (0,)
    assert calibrate_grid("crelu", [0.7], [])["m"].shape == (0,)
    grid = calibrate_grid("crelu", 0.7, 0.5)
    assert grid["m"].shape == (1,)


def test_solve_m_shapes_and_types():
    m = solve_m("cst", 0.5, 0.7)
    assert type(m) is np.float64
    assert m == reference_u(0.5, 0.7)
    m2 = solve_m("crelu", [[0.5, 0.2]], [[0.7], [0.3]], q_star=2.0)
    assert m2.shape == (2, 2)
    ref = reference_u(np.array([[0.5, 0.2]]) / math.sqrt(2.0), np.array([[0.7], [0.3]])) * math.sqrt(2.0)
    np.testing.assert_array_equal(m2, ref)


# ----------------------------------------------------------------------------------------
# errors: the same checks, in the same order, as before the vectorized core
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "exc", "match"),
    [
        (("tanh", 0.7), ValueError, r"unknown sparse activation 'tanh'"),
        (("cst", 0.7, 0.5, 0.0), ValueError, r"q_star is a variance and must be > 0"),
        (("cst", 0.7, 0.5, math.inf), ValueError, r"q_star must be a finite number"),
        (("cst", 0.7, 0.5, math.nan), ValueError, r"q_star must be a finite number"),
        (("cst", 0.7, 0.5, -1.0), ValueError, r"q_star is a variance and must be > 0"),
        (("cst", [0.7, math.nan], 0.5), ValueError, r"sparsity must lie strictly between 0 and 1"),
        (("cst", [0.7, math.inf], 0.5), ValueError, r"sparsity must lie strictly between 0 and 1"),
        (("crelu", 0.7), ValueError, r"crelu needs a target slope"),
        (("st_tau", 0.7, 0.5), ValueError, r"slope does not apply"),
        (("crelu", [0.3, 0.7], [0.5, 0.6]), ValueError, r"got sparsity \[0.3, 0.3, 0.7, 0.7\]"),
        (("cst", 0.7, [0.5, 1.0]), ValueError, r"must lie in \(0, 1\), got \[0.5, 1.0\]"),
        (("cst", 0.7, -0.1), ValueError, r"must lie in \(0, 1\)"),
        (("cst", [[0.6, 0.7]], 0.5), ValueError, r"1-D"),
        (("cst", 0.6, [[0.5, 0.7]]), ValueError, r"1-D"),
    ],
)
def test_errors(args, exc, match):
    with pytest.raises(exc, match=match):
        calibrate_grid(*args)
    with pytest.raises(exc, match=match):
        calibrate_sparse(*args, fixed_point_analysis=False)


def test_bracket_check_still_fires_for_negative_tau():
    with pytest.raises(ValueError, match=r"stays below \[0.7\] for every m <= 1000"):
        solve_m("crelu", [-1000.5], [0.7])
    # tau >= 0: V'(q*) at m = M_MAX sqrt(q*) is exactly 1, no check is needed
    a = np.array([0.0, 1.0, 3.0])
    np.testing.assert_array_equal(_clipped_slope(a, np.full(3, M_MAX))[0], 1.0)


def test_degenerate_relu_records():
    (rec,) = calibrate_sparse("relu_tau", 0.5)  # plain ReLU: V(q) = q, every q is a fixed point
    assert rec.n_fixed_points is None and rec.stable is False


@pytest.mark.parametrize("kind", ["crelu", "cst"])
def test_solve_m_rejects_nan_slope_and_underflowing_tau(kind):
    from sigprop.theory.calibrate import solve_m

    with pytest.raises(ValueError, match="must lie in \\(0, 1\\)"):
        solve_m(kind, 0.5, float("nan"))
    with pytest.raises(ValueError, match="below ~37"):
        solve_m(kind, 40.0, 0.5)
    with pytest.raises(ValueError, match="below ~37"):
        solve_m(kind, float("nan"), 0.5)
