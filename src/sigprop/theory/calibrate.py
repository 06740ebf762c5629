"""Calibration of sparsity-inducing activations (seed 004 Sec. 3.1, App. F).

* ``relu_tau`` / ``crelu``: ``P(phi(X) = 0) = P(X < tau) = s``  ->  ``tau = sqrt(q*) Phi^-1(s)``
  (needs s >= 1/2 since tau >= 0).
* ``st_tau`` / ``cst``: ``P(|X| < tau) = s``  ->  ``tau = sqrt(2 q*) erfinv(s)``.
* the EOC at q*: ``sigma_w2 = 1/E[phi'^2]``, ``sigma_b2 = q* - sigma_w2 E[phi^2]``; for the
  unclipped families this gives ``sigma_w2 = 1/(1-s)`` (Table 1) and ``V'(q*) = 1``.
* clipped families: ``m`` solves ``V'(q*; m) = slope`` at the EOC; V'(q*) increases from 0
  to 1 with m (Sec. 3.1); in closed form ``V'(q*) = 1 - u phi(a+u)/(Phi(a+u) - Phi(a))``
  (u = m/sqrt q*, a = tau/sqrt q*), solved by safeguarded Newton over every cell at once.

Every cell also reports ``V''(q*)``, the number of fixed points of V and whether q* is
globally stable (the bifurcation of seed 004 Fig. 4).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from itertools import product

import numpy as np
from scipy import special

from sigprop.errors import NumericalError, check_finite, check_variance

from .activations import SPARSE_FAMILIES, get_activation
from .gaussian import normal_mass
from .meanfield import DegenerateFixedPoints, _local_stability, eoc_from_q, fixed_points, variance_map_derivatives

__all__ = ["SparseCalibration", "calibrate_sparse", "tau_for_sparsity"]

_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)
#: bracket for m, in units of sqrt(q*)
M_MIN, M_MAX = 1e-6, 1e3


def _check_kind(kind: str) -> str:
    if kind not in SPARSE_FAMILIES:
        raise ValueError(f"unknown sparse activation {kind!r}; allowed: {', '.join(SPARSE_FAMILIES)}")
    return kind


def _check_sparsity(s) -> np.ndarray:
    s = np.asarray(s, float)
    if not np.all(np.isfinite(s)) or np.any((s <= 0) | (s >= 1)):
        raise ValueError(f"sparsity must lie strictly between 0 and 1, got {s.tolist()}")
    return s


def tau_for_sparsity(kind: str, sparsity, q_star=1.0) -> np.ndarray:
    """Threshold tau giving expected activation sparsity ``s`` at variance ``q*`` (Table 1).

    relu_tau/crelu: ``sqrt(q*) Phi^-1(s)`` (s >= 0.5 because tau >= 0);
    st_tau/cst: ``sqrt(2 q*) erfinv(s)``.
    """
    kind = _check_kind(kind)
    s = _check_sparsity(sparsity)
    q = check_variance(q_star, "q_star", allow_zero=False)
    if kind in ("relu_tau", "crelu"):
        if np.any(s < 0.5):
            raise ValueError(
                f"{kind} has sparsity >= 0.5 for every tau >= 0; got sparsity {s.tolist()} (use st_tau/cst below 0.5)"
            )
        return np.sqrt(q) * special.ndtri(s)
    return np.sqrt(2.0 * q) * special.erfinv(s)


@dataclass
class SparseCalibration:
    """One calibrated sparse activation; ``to_dict()`` is the JSON contract of
    ``sigprop sparse-activation``: kind, sparsity, slope, tau, m, sigma_w2, sigma_b2, q_star,
    dV, d2V, n_fixed_points, stable."""

    kind: str
    sparsity: float
    slope: float
    tau: float
    m: float | None
    sigma_w2: float
    sigma_b2: float
    q_star: float
    dV: float
    d2V: float
    n_fixed_points: int | None
    stable: bool

    def to_dict(self) -> dict:
        return asdict(self)

    def activation(self):
        """The calibrated :class:`~sigprop.theory.activations.Activation`."""
        params = {"tau": self.tau} if self.m is None else {"tau": self.tau, "m": self.m}
        return get_activation(self.kind, **params)


def _derivs(kind, tau, m, q):
    """sigma_w2, sigma_b2, V'(q), V''(q) at the EOC for a batch of activations (general engine)."""
    act = get_activation(kind, tau=tau) if m is None else get_activation(kind, tau=tau, m=m)
    sw, sb = eoc_from_q(act, q)
    _, dv, d2v = variance_map_derivatives(act, q, sw, 0.0)  # V', V'' do not depend on sigma_b2
    return sw, sb, dv, d2v


def _clipped_derivs(kind, tau, m, q):
    """Closed forms of :func:`_derivs` for crelu/cst (c = 1 / 2 symmetric halves).

    With ``a = tau/sqrt q``, ``u = m/sqrt q``, ``b = a + u``, ``D = Phi(b) - Phi(a)`` and the
    truncated moments ``M_k`` of N(0, 1) on (a, b):
    ``E[phi'^2] = c D``, ``E[phi^2] = c q (M2 - 2a M1 + a^2 M0 + u^2 Phi(-b))``, on the EOC
    ``V'(q) = 1 - u phi(b)/D`` and ``V''(q) = (a phi(a) - b phi(b) - u phi(b)(b^2 - 1))/(2 q D)``
    (V'' from the He4 identity; tests check all four against the general engine).
    """
    c = 1.0 if kind == "crelu" else 2.0
    sq = math.sqrt(q)
    a = np.asarray(tau, float) / sq
    u = np.asarray(m, float) / sq
    b = a + u
    pa = np.exp(-0.5 * a * a) * _INV_SQRT2PI
    pb = np.exp(-0.5 * b * b) * _INV_SQRT2PI
    mass = normal_mass(a, b)
    m2 = mass + a * pa - b * pb
    e2 = c * q * (m2 - 2.0 * a * (pa - pb) + a * a * mass + u * u * special.ndtr(-b))
    sw = 1.0 / (c * mass)
    return sw, q - sw * e2, 1.0 - u * pb / mass, (a * pa - b * pb - u * pb * (b * b - 1.0)) / (2.0 * q * mass)


def _clipped_slope(a, u, tail_a=None):
    """``V'(q*)`` at the EOC of crelu/cst and its derivative in u, in closed form.

    With ``a = tau/sqrt(q*)``, ``u = m/sqrt(q*)``, ``b = a + u`` and ``D = Phi(b) - Phi(a)``:
    ``E[phi'^2] = c D`` and the kink at tau+m (phi = m, phi' jumps by -1) adds
    ``-c m p_q(tau+m)`` to ``E[phi'^2 + phi phi'']`` (c = 1 for crelu, 2 for cst), so on the
    EOC (sigma_w2 = 1/(c D)) ``V'(q*) = 1 - u phi(b) / D`` for both families (seed 004
    eqs 13-18; the tests check it against the general engine). ``a >= 0`` (tau >= 0), so
    ``D = Phi(-a) - Phi(-b)`` has no cancellation; ``tail_a`` = Phi(-a) may be passed in when
    ``a`` is fixed over many calls.
    """
    b = a + u
    dens = np.exp(-0.5 * b * b) * _INV_SQRT2PI
    mass = (special.ndtr(-a) if tail_a is None else tail_a) - special.ndtr(-b)
    g = u * dens / mass
    return 1.0 - g, g * (g + u * b - 1.0) / u  # d/du (1 - g), g = u phi(b)/D


def solve_m(kind: str, tau, slope, q_star: float = 1.0) -> np.ndarray:
    """Clipping magnitude m with ``V'(q*) = slope`` at the EOC (vectorized over tau, slope).

    V'(q*) increases from 0 (m -> 0) to 1 (m -> inf) (seed 004 Sec. 3.1), so the root is
    unique: safeguarded Newton on the closed form of :func:`_clipped_slope`, bisection
    (in log u) whenever a Newton step leaves the bracket.
    """
    tau, slope = np.broadcast_arrays(np.asarray(tau, float), np.asarray(slope, float))
    if np.any((slope <= 0) | (slope >= 1)):
        raise ValueError(f"slope (target V'(q*)) for a clipped family must lie in (0, 1), got {slope.tolist()}")
    sq = math.sqrt(q_star)
    a = tau / sq
    lo = np.full(tau.shape, M_MIN)
    hi = np.full(tau.shape, M_MAX)
    if np.any(_clipped_slope(a, hi)[0] <= slope):
        raise ValueError(
            f"{kind}: V'(q*) stays below {slope.tolist()} for every m <= {M_MAX:g} sqrt(q*); choose a smaller slope"
        )
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        u = _newton_u(a, slope, lo, hi, kind)
    return check_finite(u * sq, f"{kind} clipping magnitude m")


def _newton_u(a, slope, lo, hi, kind):
    tail_a = special.ndtr(-a)  # Phi(-a), constant over the iterations
    u = np.ones(a.shape)
    for _ in range(100):
        v, dv = _clipped_slope(a, u, tail_a)
        f = v - slope  # increasing in u
        lo = np.where(f < 0, u, lo)
        hi = np.where(f > 0, u, hi)
        step = u - f / dv
        bad = ~((step >= lo) & (step <= hi))  # also catches NaN
        new = np.where(bad, np.sqrt(lo * hi), step)
        if (np.abs(new - u) <= 1e-14 * u).all():
            u = new
            break
        u = new
    else:  # pragma: no cover - Newton with bisection fallback converges long before
        raise NumericalError(f"{kind}: solving V'(q*) = slope for m did not converge")
    return u


def calibrate_sparse(
    kind: str, sparsity, slope=None, q_star: float = 1.0, fixed_point_analysis: bool = True
) -> list[SparseCalibration]:
    """Calibrate a sparse family to each (sparsity, slope) combination (seed 004 Sec. 3.1).

    Parameters
    ----------
    kind : {"relu_tau", "st_tau", "crelu", "cst"}
    sparsity : float or sequence of float in (0, 1)
    slope : float or sequence in (0, 1), required for crelu/cst, not allowed otherwise
        Target ``V'(q*)`` at the EOC.
    q_star : float
        The EOC fixed point variance (default 1).
    fixed_point_analysis : bool
        Count the fixed points of V and test global stability (slower; True by default).

    Returns one record per combination, sparsity-major.
    """
    kind = _check_kind(kind)
    q = float(check_variance(q_star, "q_star", allow_zero=False))
    s_list = np.atleast_1d(_check_sparsity(sparsity)).tolist()
    clipped = kind in ("crelu", "cst")
    if clipped:
        if slope is None:
            raise ValueError(f"{kind} needs a target slope V'(q*) in (0, 1) (--slope) to choose m")
        v_list = np.atleast_1d(np.asarray(slope, float)).tolist()
    else:
        if slope is not None:
            raise ValueError(f"{kind} is unclipped: V'(q*) = 1 at its EOC, so --slope does not apply (use crelu/cst)")
        v_list = [1.0]
    combos = list(product(s_list, v_list))
    s_arr = np.array([c[0] for c in combos])
    v_arr = np.array([c[1] for c in combos])
    tau = tau_for_sparsity(kind, s_arr, q)
    m = solve_m(kind, tau, v_arr, q) if clipped else None
    derivs = _clipped_derivs(kind, tau, m, q) if clipped else _derivs(kind, tau, m, q)
    sw, sb, dv, d2v = (np.broadcast_to(x, s_arr.shape) for x in derivs)
    out = []
    for i in range(len(combos)):
        mi = None if m is None else float(m[i])
        n_fp, stable = None, False
        local = _local_stability(float(dv[i]), float(d2v[i]), q)
        if fixed_point_analysis:
            act = (
                get_activation(kind, tau=float(tau[i])) if mi is None else get_activation(kind, tau=float(tau[i]), m=mi)
            )
            try:
                n_fp = len(fixed_points(act, float(sw[i]), max(float(sb[i]), 0.0), known=q))
                stable = local and n_fp == 1
            except DegenerateFixedPoints:  # s = 1/2 for relu_tau: plain ReLU, V(q) = q
                n_fp, stable = None, False
        out.append(
            SparseCalibration(
                kind=kind,
                sparsity=float(s_arr[i]),
                slope=float(dv[i]) if not clipped else float(v_arr[i]),
                tau=float(tau[i]),
                m=mi,
                sigma_w2=float(sw[i]),
                sigma_b2=float(sb[i]),
                q_star=q,
                dV=float(dv[i]),
                d2V=float(d2v[i]),
                n_fixed_points=n_fp,
                stable=stable,
            )
        )
    return out
