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

:func:`calibrate_grid` is the vectorized core (arrays in, a dict of arrays out, no per-cell
Python work); :func:`calibrate_sparse` wraps it into :class:`SparseCalibration` records and
adds the per-cell fixed-point analysis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
from scipy import special

from sigprop.errors import NumericalError, check_finite, check_variance

from .activations import SPARSE_FAMILIES, get_activation
from .gaussian import normal_mass
from .meanfield import DegenerateFixedPoints, _local_stability, eoc_from_q, fixed_points, variance_map_derivatives

__all__ = ["SparseCalibration", "calibrate_grid", "calibrate_sparse", "tau_for_sparsity"]

_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)
#: bracket for m, in units of sqrt(q*)
M_MIN, M_MAX = 1e-6, 1e3
# 0-d array constants: a ufunc with a 0-d float64 operand gives the same bits as with the
# Python float but skips the scalar conversion (about half the cost of an op on a small array)
_ZERO, _ONE, _TWO, _NEG_HALF, _REL_TOL = np.array(0.0), np.array(1.0), np.array(2.0), np.array(-0.5), np.array(1e-14)
_INV_SQRT2PI_0D = np.array(_INV_SQRT2PI)
for _c in (_ZERO, _ONE, _TWO, _NEG_HALF, _REL_TOL, _INV_SQRT2PI_0D):
    _c.flags.writeable = False
del _c


def _check_kind(kind: str) -> str:
    if kind not in SPARSE_FAMILIES:
        raise ValueError(f"unknown sparse activation {kind!r}; allowed: {', '.join(SPARSE_FAMILIES)}")
    return kind


def _check_sparsity(s) -> np.ndarray:
    s = np.asarray(s, float)
    if np.count_nonzero((s > 0) & (s < 1)) != s.size:  # also catches NaN and inf
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
        # == dataclasses.asdict(self) (every field is a str, int, float, bool or None, so its
        # deep copy is the value itself), without asdict's per-field recursion and deepcopy
        return {name: getattr(self, name) for name in _RECORD_FIELDS}

    def activation(self):
        """The calibrated :class:`~sigprop.theory.activations.Activation`."""
        params = {"tau": self.tau} if self.m is None else {"tau": self.tau, "m": self.m}
        return get_activation(self.kind, **params)


_RECORD_FIELDS = tuple(f.name for f in fields(SparseCalibration))


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


def _check_slope(slope: np.ndarray) -> None:
    if np.count_nonzero((slope > 0) & (slope < 1)) != slope.size:  # also catches NaN
        raise ValueError(f"slope (target V'(q*)) for a clipped family must lie in (0, 1), got {slope.tolist()}")


def solve_m(kind: str, tau, slope, q_star: float = 1.0) -> np.ndarray:
    """Clipping magnitude m with ``V'(q*) = slope`` at the EOC (vectorized over tau, slope).

    V'(q*) increases from 0 (m -> 0) to 1 (m -> inf) (seed 004 Sec. 3.1), so the root is
    unique: safeguarded Newton on the closed form of :func:`_clipped_slope`, bisection
    (in log u) whenever a Newton step leaves the bracket.
    """
    tau, slope = np.broadcast_arrays(np.asarray(tau, float), np.asarray(slope, float))
    _check_slope(slope)
    sq = math.sqrt(q_star)
    u, _ = _solve_u(kind, tau / sq, slope)
    return check_finite(u * sq, f"{kind} clipping magnitude m")


def _solve_u(kind: str, a: np.ndarray, slope: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``u = m / sqrt(q*)`` with ``V'(q*) = slope`` for ``a = tau / sqrt(q*)`` (any shape),
    and ``Phi(-a)`` (flat), which the closed-form derivatives reuse."""
    shape = a.shape
    a, flat_slope = a.ravel(), slope.ravel()
    tail_a = special.ndtr(-a)  # Phi(-a), constant over the iterations
    n = a.size
    if np.count_nonzero(tail_a > _ZERO) != n:  # NaN tau, or Phi(-a) underflowing (a > ~37)
        bad = a[~(tail_a > _ZERO)]
        raise ValueError(
            f"{kind}: tau / sqrt(q*) must be finite and below ~37 (beyond, P(pre-activation > tau) "
            f"underflows to 0 and no clipping magnitude m is defined), got {bad[:3].tolist()}"
        )
    # Bracket check. For a >= 0 with Phi(-a) > 0, V'(q*) at u = M_MAX is exactly 1 (phi(b)
    # and Phi(-b) underflow to 0 for b >= 1e3), which exceeds every valid slope: the general
    # evaluation is needed only for other a (tau < 0, huge or NaN), where it also warns as before.
    if np.count_nonzero(a >= _ZERO) != n:
        if np.any(_clipped_slope(a, np.full(n, M_MAX))[0] <= flat_slope):
            raise ValueError(
                f"{kind}: V'(q*) stays below {slope.tolist()} for every m <= {M_MAX:g} sqrt(q*); choose a smaller slope"
            )
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        u = _newton_u(a, flat_slope, tail_a, kind)
    return u.reshape(shape), tail_a


def _newton_u(a, slope, tail_a, kind):
    """Safeguarded Newton for ``_clipped_slope(a, u)[0] = slope`` over flat arrays, from u = 1.

    The same arithmetic, operation by operation, as evaluating :func:`_clipped_slope` and
    stepping ``u - f / f'`` (bisection in log u when the step leaves the bracket) until every
    cell has converged, written with preallocated buffers and 0-d constants to cut the
    per-operation overhead on small arrays; the tests check it bit for bit against that loop.
    """
    n = a.size
    u = np.ones(n)
    lo = np.full(n, M_MIN)
    hi = np.full(n, M_MAX)
    neg_a = -a
    nb, t, g, f, w, step = (np.empty(n) for _ in range(6))
    mask, ok = np.empty(n, bool), np.empty(n, bool)
    for _ in range(100):
        # nb = -b = -a - u (exactly -(a + u): rounding to nearest is symmetric), so
        # (-0.5 nb) nb and g - u nb carry the bits of (-0.5 b) b and g + u b
        np.subtract(neg_a, u, nb)
        np.multiply(nb, _NEG_HALF, t)
        t *= nb
        np.exp(t, t)
        t *= _INV_SQRT2PI_0D  # phi(b)
        np.multiply(u, t, g)  # u phi(b)
        special.ndtr(nb, t)  # Phi(-b)
        np.subtract(tail_a, t, t)  # D = Phi(-a) - Phi(-b)
        g /= t  # g = u phi(b) / D
        np.subtract(_ONE, g, f)
        f -= slope  # f = V'(q*) - slope, increasing in u
        np.multiply(u, nb, w)
        np.subtract(g, w, w)  # g + u b
        w -= _ONE
        w *= g
        w /= u  # f' = g (g + u b - 1) / u
        np.less(f, _ZERO, mask)
        np.copyto(lo, u, "same_kind", mask)
        np.greater(f, _ZERO, mask)
        np.copyto(hi, u, "same_kind", mask)
        np.divide(f, w, step)
        np.subtract(u, step, step)  # Newton step
        np.greater_equal(step, lo, ok)
        np.less_equal(step, hi, mask)
        ok &= mask  # inside the bracket (False for NaN)
        new = step if np.count_nonzero(ok) == n else np.where(ok, step, np.sqrt(lo * hi))
        np.subtract(new, u, t)
        np.abs(t, t)
        np.multiply(u, _REL_TOL, w)
        done = np.count_nonzero(np.less_equal(t, w, mask)) == n
        if new is step:
            u, step = step, u
        else:
            u = new
        if done:
            return u
    raise NumericalError(f"{kind}: solving V'(q*) = slope for m did not converge")  # pragma: no cover


def _clipped_derivs_fast(c, q, a, tail_a, m):
    """:func:`_clipped_derivs` (bit for bit) for ``a = tau / sqrt(q)`` and ``tail_a = Phi(-a)``
    from :func:`_solve_u`; ``c`` = 1 (crelu) or 2 (cst)."""
    u = m / np.array(math.sqrt(q))
    b = a + u
    pa = a * _NEG_HALF
    pa *= a
    np.exp(pa, pa)
    pa *= _INV_SQRT2PI_0D
    pb = b * _NEG_HALF
    pb *= b
    np.exp(pb, pb)
    pb *= _INV_SQRT2PI_0D
    tail_b = np.negative(b)
    special.ndtr(tail_b, tail_b)
    # normal_mass(a, b): Phi(-a) - Phi(-b) where a > 0, Phi(b) - Phi(a) elsewhere
    mass = tail_a - tail_b if np.count_nonzero(a > _ZERO) == a.size else normal_mass(a, b)
    apa, bpb, upb = a * pa, b * pb, u * pb
    # E[phi^2] / (c q) = M2 - 2a M1 + a^2 M0 + u^2 Phi(-b), associated as in _clipped_derivs
    e2 = mass + apa
    e2 -= bpb
    pa -= pb
    pa *= a * _TWO
    e2 -= pa
    pa = a * a
    pa *= mass
    e2 += pa
    u *= u
    u *= tail_b
    e2 += u
    e2 *= np.array(c * q)
    sw = mass * np.array(c)
    np.divide(_ONE, sw, sw)
    sb = sw * e2
    np.subtract(np.array(q), sb, sb)
    dv = upb / mass
    np.subtract(_ONE, dv, dv)
    num = apa - bpb
    b *= b
    b -= _ONE
    b *= upb
    num -= b
    mass *= np.array(2.0 * q)
    num /= mass
    return sw, sb, dv, num


def calibrate_grid(kind: str, sparsity, slope=None, q_star: float = 1.0) -> dict:
    """Vectorized calibration of every (sparsity, slope) combination, sparsity-major.

    Arguments and validation as :func:`calibrate_sparse` (``sparsity`` and ``slope``: scalars
    or 1-D sequences), without the fixed-point analysis. Returns a dict with ``kind``,
    ``q_star`` (float) and the arrays ``sparsity``, ``slope``, ``tau``, ``m`` (None for the
    unclipped families), ``sigma_w2``, ``sigma_b2``, ``dV``, ``d2V``, cell ``i`` of which are
    the fields of the ``i``-th :func:`calibrate_sparse` record (bit for bit).
    """
    kind = _check_kind(kind)
    if type(q_star) is float and 0.0 < q_star < math.inf:  # the common case, valid as it is
        q = q_star
    else:
        q = float(check_variance(q_star, "q_star", allow_zero=False))
    s = np.atleast_1d(_check_sparsity(sparsity))
    clipped = kind in ("crelu", "cst")
    if clipped:
        if slope is None:
            raise ValueError(f"{kind} needs a target slope V'(q*) in (0, 1) (--slope) to choose m")
        v = np.atleast_1d(np.asarray(slope, float))
    else:
        if slope is not None:
            raise ValueError(f"{kind} is unclipped: V'(q*) = 1 at its EOC, so --slope does not apply (use crelu/cst)")
        v = np.ones(1)
    if s.ndim > 1 or v.ndim > 1:
        raise ValueError("sparsity and slope must be numbers or 1-D sequences")
    s_arr = np.repeat(s, v.size)
    v_arr = np.repeat(v[None, :], s.size, axis=0).ravel()
    # tau_for_sparsity, with the inputs already validated
    if kind in ("relu_tau", "crelu"):
        if np.count_nonzero(s_arr < 0.5):
            raise ValueError(
                f"{kind} has sparsity >= 0.5 for every tau >= 0; got sparsity {s_arr.tolist()} (use st_tau/cst below 0.5)"
            )
        tau = math.sqrt(q) * special.ndtri(s_arr)
    else:
        tau = math.sqrt(2.0 * q) * special.erfinv(s_arr)
    if clipped:
        _check_slope(v_arr)
        sq = math.sqrt(q)
        a = tau / sq
        u, tail_a = _solve_u(kind, a, v_arr)
        m = u * sq
        if np.count_nonzero(np.isfinite(m)) != m.size:
            check_finite(m, f"{kind} clipping magnitude m")  # raises
        sw, sb, dv, d2v = _clipped_derivs_fast(1.0 if kind == "crelu" else 2.0, q, a, tail_a, m)
    else:
        m = None
        sw, sb, dv, d2v = (np.broadcast_to(x, s_arr.shape) for x in _derivs(kind, tau, None, q))
    return {
        "kind": kind,
        "q_star": q,
        "sparsity": s_arr,
        "slope": v_arr if clipped else dv,
        "tau": tau,
        "m": m,
        "sigma_w2": sw,
        "sigma_b2": sb,
        "dV": dv,
        "d2V": d2v,
    }


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

    Returns one record per combination, sparsity-major (the cells of :func:`calibrate_grid`).
    """
    grid = calibrate_grid(kind, sparsity, slope, q_star)
    kind, q = grid["kind"], grid["q_star"]
    s_l, v_l, tau_l, sw_l, sb_l, dv_l, d2v_l = (
        grid[k].tolist() for k in ("sparsity", "slope", "tau", "sigma_w2", "sigma_b2", "dV", "d2V")
    )
    m_l = [None] * len(s_l) if grid["m"] is None else grid["m"].tolist()
    out = []
    for s, v, tau, m, sw, sb, dv, d2v in zip(s_l, v_l, tau_l, m_l, sw_l, sb_l, dv_l, d2v_l, strict=True):
        n_fp, stable = None, False
        local = _local_stability(dv, d2v, q)
        if fixed_point_analysis:
            act = get_activation(kind, tau=tau) if m is None else get_activation(kind, tau=tau, m=m)
            try:
                n_fp = len(fixed_points(act, sw, max(sb, 0.0), known=q))
                stable = local and n_fp == 1
            except DegenerateFixedPoints:  # s = 1/2 for relu_tau: plain ReLU, V(q) = q
                n_fp, stable = None, False
        out.append(
            SparseCalibration(
                kind=kind,
                sparsity=s,
                slope=v,
                tau=tau,
                m=m,
                sigma_w2=sw,
                sigma_b2=sb,
                q_star=q,
                dV=dv,
                d2V=d2v,
                n_fixed_points=n_fp,
                stable=stable,
            )
        )
    return out
