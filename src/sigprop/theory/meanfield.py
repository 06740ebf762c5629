"""Mean-field signal propagation: variance and correlation maps, chi_1, fixed points,
Edge of Chaos (EOC), depth scales and phases.

Conventions (Poole et al. 2016; Schoenholz et al. 2017; seed 004 App. A; seed 001 Sec. 2):
pre-activations of layer l have variance ``q^l``; with weights of variance
``sigma_w2 / N`` and biases of variance ``sigma_b2``

    V(q)   = sigma_w2 E[phi(sqrt(q) Z)^2] + sigma_b2                      (variance map)
    R(c)   = (sigma_w2 E[phi(u1) phi(u2)] + sigma_b2) / q*                (correlation map,
             u1, u2 ~ N(0, q*) with correlation c)
    R'(c)  = sigma_w2 E[phi'(u1) phi'(u2)]                                 (Price's theorem)
    chi_1  = R'(1) = sigma_w2 E[phi'(sqrt(q*) Z)^2]

q-derivatives use the heat-equation identities (no phi'' needed, exact at kinks)

    d/dq   E[g(sqrt(q) Z)] = E[g(sqrt(q) Z) He_2(Z)] / (2 q),   He_2 = z^2 - 1
    d2/dq2 E[g(sqrt(q) Z)] = E[g(sqrt(q) Z) He_4(Z)] / (4 q^2), He_4 = z^4 - 6 z^2 + 3

so ``V'(q) = sigma_w2 E[phi'^2 + phi phi'']`` including the delta terms of phi'' at kinks.
Everything is vectorized over its array arguments.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from sigprop.errors import NoEOCError, NumericalError, check_finite, check_variance

from .activations import Activation, get_activation
from .gaussian import expect, expect_bivariate, expect_many

__all__ = [
    "EOCPoint",
    "FixedPoint",
    "chi1",
    "correlation_fixed_points",
    "correlation_map",
    "correlation_map_slope",
    "depth_scales",
    "eoc",
    "eoc_curve",
    "eoc_from_q",
    "fixed_points",
    "gradient_ratio",
    "phase",
    "second_moment",
    "sparsity",
    "variance_map",
    "variance_map_derivatives",
]

#: |V'(q*) - 1| below this counts as marginal (V' = 1).
MARGINAL_TOL = 1e-7
#: Fixed points of V are searched on q in [Q_MIN, Q_MAX].
Q_MIN, Q_MAX = 1e-8, 1e8
#: Below this a variance is treated as 0 (q-derivative formulas divide by q^2).
Q_TINY = 1e-100


def _act(act, params=None) -> Activation:
    return get_activation(act, **(params or {}))


def _q(q, name="q"):
    return check_variance(q, name, allow_zero=False)


# ----------------------------------------------------------------------------------------
# Maps
# ----------------------------------------------------------------------------------------
def second_moment(act: Activation | str, q) -> np.ndarray:
    """``E[phi(sqrt(q) Z)^2]`` (q > 0, any shape)."""
    act = _act(act)
    return np.maximum(expect(act, "phi2", np.sqrt(_q(q))), 0.0)  # far-tail cancellation can leave -1e-317


def variance_map(act: Activation | str, q, sigma_w2, sigma_b2) -> np.ndarray:
    """``V(q) = sigma_w2 E[phi(sqrt q Z)^2] + sigma_b2`` (seed 004 eq. 3)."""
    return variance_map_derivatives(act, q, sigma_w2, sigma_b2, order=0)[0]


def variance_map_derivatives(act: Activation | str, q, sigma_w2, sigma_b2, order: int = 2):
    """``(V(q), V'(q), V''(q))`` (``order`` = 0, 1 or 2 returns that many derivatives)."""
    act = _act(act)
    q = _q(q)
    sigma_w2 = check_variance(sigma_w2, "sigma_w2")
    sigma_b2 = check_variance(sigma_b2, "sigma_b2")
    if order not in (0, 1, 2):
        raise ValueError(f"order must be 0, 1 or 2, got {order}")
    requests = [("phi2", 0), ("phi2", 2), ("phi2", 4)][: order + 1]
    e0, e2, e4 = [*expect_many(act, requests, np.sqrt(q)), None, None][:3]
    e0 = np.maximum(e0, 0.0)  # a second moment; cancellation in far tails can leave -1e-317
    out = [sigma_w2 * e0 + sigma_b2]
    if order >= 1:
        out.append(sigma_w2 * (e2 - e0) / (2.0 * q))
    if order >= 2:
        out.append(sigma_w2 * (e4 - 6.0 * e2 + 3.0 * e0) / (4.0 * q * q))
    return tuple(check_finite(o, f"variance map of {act.label()}") for o in out)


def chi1(act: Activation | str, q, sigma_w2) -> np.ndarray:
    """``chi_1 = sigma_w2 E[phi'(sqrt(q) Z)^2]`` (seed 004 eq. 11)."""
    act = _act(act)
    return check_finite(check_variance(sigma_w2, "sigma_w2") * expect(act, "dphi2", np.sqrt(_q(q))), "chi_1")


def sparsity(act: Activation | str, q) -> np.ndarray:
    """Expected fraction of exact zeros ``P(phi(sqrt(q) Z) = 0)`` (seed 004 eq. 12)."""
    act = _act(act)
    return expect(act, "zero", np.sqrt(_q(q)))


def correlation_map(act: Activation | str, c, q, sigma_w2, sigma_b2) -> np.ndarray:
    """``R(c) = (sigma_w2 E[phi(u1) phi(u2)] + sigma_b2) / q`` with u1, u2 ~ N(0, q), corr c.

    ``q`` should be the fixed point q* of V for R to map correlations (seed 004 eq. 6).
    """
    act = _act(act)
    c = _check_c(c)
    q = _q(q)
    e = expect_bivariate(act, "phi", q, q, c)
    return check_finite(
        (check_variance(sigma_w2, "sigma_w2") * e + check_variance(sigma_b2, "sigma_b2")) / q, "correlation map"
    )


def correlation_map_slope(act: Activation | str, c, q, sigma_w2) -> np.ndarray:
    """``R'(c) = sigma_w2 E[phi'(u1) phi'(u2)]`` (Price's theorem); ``R'(1) = chi_1``."""
    act = _act(act)
    c = _check_c(c)
    e = expect_bivariate(act, "dphi", _q(q), _q(q), c)
    return check_finite(check_variance(sigma_w2, "sigma_w2") * e, "correlation map slope")


def _check_c(c):
    c = np.asarray(c, float)
    if not np.all(np.isfinite(c)) or np.any(np.abs(c) > 1):
        raise ValueError(f"correlation c must lie in [-1, 1], got {c}")
    return c


# ----------------------------------------------------------------------------------------
# Fixed points of V
# ----------------------------------------------------------------------------------------
@dataclass
class FixedPoint:
    """A fixed point q of the variance map with V'(q) and local stability."""

    q: float
    dV: float | None
    stable: bool

    def to_dict(self) -> dict:
        return asdict(self)


def _bisect(f, lo, hi, iters: int = 100, log: bool = False, rtol: float = 4e-16):
    """Vectorized bracketed root finding (Illinois false position, superlinear).

    ``f(lo)`` and ``f(hi)`` must have opposite signs elementwise (an exact zero at either
    end is returned as is). With ``log=True`` the search runs in ``log x`` (x > 0). Stops
    when every bracket is narrower than ``rtol * max(|x|, 1)`` (in ``log x`` when ``log``),
    or after ``iters`` steps.
    """
    tr = np.log if log else (lambda x: x)
    inv = np.exp if log else (lambda t: t)
    a, b = tr(np.array(lo, float)), tr(np.array(hi, float))
    fa, fb = f(inv(a)), f(inv(b))
    done = (fa == 0) | (fb == 0)
    root = np.where(fa == 0, a, np.where(fb == 0, b, 0.5 * (a + b)))
    side = np.zeros(a.shape)
    for _ in range(iters):
        if np.all(done):
            break
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (a * fb - b * fa) / (fb - fa)
        t = np.where(np.isfinite(t) & (t > np.minimum(a, b)) & (t < np.maximum(a, b)), t, 0.5 * (a + b))
        ft = f(inv(t))
        same_a = np.sign(ft) == np.sign(fa)
        # Illinois: halve the stale end's value when the same end moves twice
        fb = np.where(same_a & (side == 1), 0.5 * fb, fb)
        fa = np.where(~same_a & (side == -1), 0.5 * fa, fa)
        a, fa = np.where(same_a, t, a), np.where(same_a, ft, fa)
        b, fb = np.where(same_a, b, t), np.where(same_a, fb, ft)
        side = np.where(same_a, 1, -1)
        width = np.abs(b - a)
        # absolute in log x (= relative in x), relative in x away from 0
        conv = (ft == 0) | (width <= rtol * np.maximum(np.abs(t), 1.0))
        root = np.where(done, root, t)
        done = done | conv
    return inv(root)


def _local_stability(dv, d2v, q) -> bool:
    if abs(dv) < 1 - MARGINAL_TOL:
        return True
    if abs(dv - 1) <= MARGINAL_TOL and q == 0 and d2v is not None and d2v < 0:
        return True  # attracts from the right, the only side there is
    return False


def fixed_points(
    act: Activation | str, sigma_w2: float, sigma_b2: float, known: float | None = None, grid: int = 801
) -> list[FixedPoint]:
    """All fixed points ``V(q) = q`` for q >= 0, sorted, with V'(q) and local stability.

    Sign changes of ``V(q) - q`` on a log grid over [1e-8, 1e8] are refined by bisection;
    tangential roots (``V - q`` touching zero, as at the EOC of relu_tau) are found as
    near-zero local minima of ``|V - q| / q``. ``known`` adds a root known analytically
    (e.g. the EOC q*). ``q = 0`` is a fixed point when ``sigma_b2 = 0`` and ``phi(0) = 0``.
    Raises :class:`DegenerateFixedPoints` (a ValueError) when V(q) = q on the whole grid,
    as for positively homogeneous activations on their EOC (ReLU at sigma_w2 = 2, sigma_b2 = 0).
    """
    act = _act(act)
    sw = float(check_variance(sigma_w2, "sigma_w2"))
    sb = float(check_variance(sigma_b2, "sigma_b2"))
    qs = np.geomspace(Q_MIN, Q_MAX, grid)
    g = variance_map(act, qs, sw, sb) - qs
    rel = g / qs
    if np.all(np.abs(rel) < 1e-9):
        raise DegenerateFixedPoints(
            f"every q > 0 is a fixed point of the variance map of {act.label()} at sigma_w2={sw:g}, sigma_b2={sb:g}"
        )
    roots: list[float] = []
    # |V - q| within rounding (1e-13 q) carries no sign: a band where V(q) = q to rounding
    # (hard_tanh at sigma_b2 = 0 is linear near 0 up to exp(-1/(2q)) terms) is not a
    # string of roots. Brackets join consecutive signed grid points of opposite sign.
    signed = np.nonzero(np.abs(rel) > 1e-13)[0]
    sg = np.sign(g[signed])
    j = np.nonzero(sg[:-1] * sg[1:] < 0)[0]
    if j.size:

        def f(q):
            return variance_map(act, q, sw, sb) - q

        roots.extend(_bisect(f, qs[signed[j]], qs[signed[j + 1]], log=True).tolist())
    a = np.abs(rel)
    for i in range(1, grid - 1):
        # an isolated touch of the identity, not a band where V(q) = q to rounding (e.g.
        # hard_tanh at sigma_b2 = 0 is linear near 0 up to exp(-1/(2q)) terms)
        isolated = a[i - 1] > 1e-8 and a[i + 1] > 1e-8
        if (
            isolated
            and a[i] <= a[i - 1]
            and a[i] <= a[i + 1]
            and a[i] < 1e-4
            and np.sign(g[i - 1]) == np.sign(g[i + 1])
        ):
            r = _tangent_root(act, sw, sb, qs[i - 1], qs[i + 1])
            if r is not None:
                roots.append(r)
    if known is not None:
        roots.append(float(known))
    if sb == 0 and float(act.phi(np.array(0.0))) == 0.0:
        roots.append(0.0)
    roots = _dedupe(sorted(roots))
    out = []
    for r in roots:
        if r == 0.0:
            d = sw * _dphi2_at_zero(act)
            out.append(FixedPoint(0.0, d, _local_stability(d, _d2v_at_zero(act, sw)[1], 0.0)))
        else:
            _, d, d2 = variance_map_derivatives(act, r, sw, sb)
            out.append(FixedPoint(float(r), float(d), _local_stability(float(d), float(d2), r)))
    return out


class DegenerateFixedPoints(ValueError):
    """V(q) = q for every q (e.g. ReLU on its EOC sigma_w2 = 2, sigma_b2 = 0)."""


def _d2v_at_zero(act, sw) -> tuple[float | None, float]:
    """(lim_{q->0} V''(q), or None when it diverges; the sign deciding stability of q = 0 at V'(0) = 1).

    phi' jumping at 0, or phi'' jumping there (selu, elu for every alpha), makes V''
    grow like q^-1/2: then V''(1e-8) gives the sign. Otherwise V'' is smooth in q near 0 and the
    limit is the Richardson extrapolation (8 V''(h) - 6 V''(2h) + V''(4h)) / 3, exact for a
    quadratic in q, at h = 2e-5, which balances the He4 route's rounding (growing like 1/h^2)
    against the O(h^3) remainder: tanh and erf (both exactly -4) come out within 4e-10, where
    V''(1e-8) itself carries an O(q) bias (-4 + 3.4e-7 for tanh). A limit within 1e-8 of zero (hard_tanh: V(q) = q up to exp(-1/(2q)) terms) carries no
    sign; it is then read off the first grid point where V(q) - q is resolved from rounding.
    """
    _, _, d2a = variance_map_derivatives(act, 1e-6, sw, 0.0)
    _, _, d2b = variance_map_derivatives(act, 1e-8, sw, 0.0)
    d2a, d2b = float(d2a), float(d2b)
    if abs(d2a - d2b) > 1e-3 * max(1.0, abs(d2b)):
        return None, d2b
    h = 2e-5
    f1, f2, f4 = variance_map_derivatives(act, np.array([h, 2 * h, 4 * h]), sw, 0.0)[2]
    limit = float((8.0 * f1 - 6.0 * f2 + f4) / 3.0)
    if abs(limit) > 1e-8:
        return limit, limit
    qs = np.geomspace(Q_MIN, Q_MAX, 801)
    g = variance_map(act, qs, sw, 0.0) - qs
    resolved = np.nonzero(np.abs(g) > 1e-13 * qs)[0]
    return 0.0, float(np.sign(g[resolved[0]])) if resolved.size else 0.0


def _tangent_root(act, sw, sb, lo, hi):
    """Minimize |V(q) - q| on [lo, hi] (golden section in log q); root if it reaches ~0."""
    a, b = math.log(lo), math.log(hi)
    gr = (math.sqrt(5) - 1) / 2

    def h(t):
        q = math.exp(t)
        return abs(float(variance_map(act, q, sw, sb)) - q) / q

    c, d = b - gr * (b - a), a + gr * (b - a)
    for _ in range(80):
        if h(c) < h(d):
            b = d
        else:
            a = c
        c, d = b - gr * (b - a), a + gr * (b - a)
    t = 0.5 * (a + b)
    return math.exp(t) if h(t) < 1e-10 else None


def _dedupe(xs: list[float], rtol: float = 1e-6) -> list[float]:
    out: list[float] = []
    for x in xs:
        if not out or abs(x - out[-1]) > rtol * max(abs(x), 1e-12):
            out.append(x)
    return out


# ----------------------------------------------------------------------------------------
# Edge of Chaos
# ----------------------------------------------------------------------------------------
def eoc_from_q(act: Activation | str, q_star) -> tuple[np.ndarray, np.ndarray]:
    """EOC ``(sigma_w2, sigma_b2)`` making ``q_star`` a fixed point with chi_1 = 1.

    ``sigma_w2 = 1 / E[phi'(sqrt(q*) Z)^2]``, ``sigma_b2 = q* - sigma_w2 E[phi(sqrt(q*) Z)^2]``.
    Vectorized over ``q_star``; entries with ``sigma_b2 < 0`` have no EOC point (returned
    as is: callers that need one check the sign).
    """
    act = _act(act)
    q = _q(q_star, "q_star")
    s = np.sqrt(q)
    d = expect(act, "dphi2", s)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        sw = 1.0 / d
        sb = q - sw * expect(act, "phi2", s)
    return sw, sb


def _b_of_q(act, qs):
    _sw, sb = eoc_from_q(act, qs)
    return sb


def eoc_curve(act: Activation | str, sigma_b2, q_grid: int = 2001) -> tuple[np.ndarray, np.ndarray]:
    """EOC curve: for each ``sigma_b2`` the smallest ``q* > 0`` with chi_1 = 1 and its sigma_w2.

    Returns ``(sigma_w2, q_star)`` arrays shaped like ``sigma_b2``; NaN marks a sigma_b2
    with no EOC point (use :func:`eoc` for a single point with an explanatory error).
    """
    act = _act(act)
    sb = np.atleast_1d(check_variance(sigma_b2, "sigma_b2")).astype(float)
    qs = np.geomspace(Q_MIN, Q_MAX, q_grid)
    bq = _b_of_q(act, qs)
    diff = bq[None, :] - sb[:, None]
    # values within rounding of zero carry no sign (B(q) - sigma_b2 ~ q^3 near q = 0 for
    # odd activations with sigma_b2 = 0, where cancellation leaves only noise), and neither
    # do non-finite ones (E[phi'^2] underflows at small q for thresholded activations,
    # which would fake a sign change from +inf to -inf)
    sgn = np.where(np.isfinite(diff) & (np.abs(diff) > 1e-11 * qs[None, :]), np.sign(diff), 0.0)
    sign_change = sgn[:, :-1] * sgn[:, 1:] < 0
    has = sign_change.any(axis=1)
    first = np.argmax(sign_change, axis=1)
    lo = qs[first]
    hi = qs[np.minimum(first + 1, q_grid - 1)]
    target = sb

    def f(q):
        return _b_of_q(act, q) - target

    q_star = np.where(has, _bisect(f, lo, hi, log=True), np.nan)
    sw = np.where(has, eoc_from_q(act, np.where(has, q_star, 1.0))[0], np.nan)
    shape = np.shape(sigma_b2)
    return sw.reshape(shape), q_star.reshape(shape)


@dataclass
class EOCPoint:
    """An Edge-of-Chaos initialization and the mean-field quantities at it.

    ``to_dict()`` gives the JSON contract of ``sigprop eoc``: ``sigma_w2, sigma_b2, q_star,
    chi1, dV, d2V, xi_q, xi_c, sparsity, stable, other_fixed_points`` (None where undefined
    or infinite) plus ``activation`` and ``note``.
    """

    activation: str
    sigma_w2: float
    sigma_b2: float
    q_star: float | None
    chi1: float
    dV: float | None
    d2V: float | None
    xi_q: float | None
    xi_c: float | None
    sparsity: float | None
    stable: bool
    other_fixed_points: list[FixedPoint] = field(default_factory=list)
    note: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["other_fixed_points"] = [fp.to_dict() for fp in self.other_fixed_points]
        return {k: _clean(v) for k, v in d.items()}


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, list):
        return [{k: _clean(x) for k, x in item.items()} if isinstance(item, dict) else _clean(item) for item in v]
    return v


def _xi(slope: float | None) -> float | None:
    """Depth scale -1/log|slope| (None = infinite, slope magnitude >= 1)."""
    if slope is None:
        return None
    a = abs(slope)
    if a >= 1 - MARGINAL_TOL:
        return None
    if a == 0:
        return 0.0
    return -1.0 / math.log(a)


def eoc(act: Activation | str, *, sigma_b2: float | None = None, q_star: float | None = None, **params) -> EOCPoint:
    """The EOC point of ``act`` given either ``sigma_b2`` or ``q_star`` (exactly one).

    Raises NoEOCError (a ValueError) when none exists, e.g. ``relu`` with ``sigma_b2 > 0``.
    For positively homogeneous activations (relu, leaky_relu, linear) the EOC has
    sigma_b2 = 0 and *every* q is a fixed point: ``q_star`` is then the value given (or
    None) and ``note`` says so.
    """
    act = _act(act, params)
    if (sigma_b2 is None) == (q_star is None):
        raise ValueError("give exactly one of sigma_b2 or q_star")
    if act.is_batched:
        raise ValueError("eoc() takes scalar activation parameters")
    homogeneous = _is_homogeneous(act)
    if homogeneous:
        return _eoc_homogeneous(act, sigma_b2, q_star)
    if q_star is not None:
        q = float(check_variance(q_star, "q_star", allow_zero=False))
        sw, sb = (float(x) for x in eoc_from_q(act, q))
        if not math.isfinite(sw):
            raise NoEOCError(f"no EOC point for {act.label()} at q_star={q:g}: E[phi'^2] = 0 there")
        if sb < -1e-12 * max(q, 1.0):
            raise NoEOCError(f"no EOC point for {act.label()} at q_star={q:g}: it would need sigma_b2={sb:.6g} < 0")
        sb = max(sb, 0.0)
    else:
        sb = float(check_variance(sigma_b2, "sigma_b2"))
        sw_arr, q_arr = eoc_curve(act, sb)
        sw, q = float(sw_arr), float(q_arr)
        if not math.isfinite(q):
            phi0 = float(act.phi(np.array(0.0)))
            d0 = _dphi2_at_zero(act)
            if sb == 0 and phi0 == 0 and d0 != 0:
                return _eoc_at_zero(act, d0)
            bq = _b_of_q(act, np.geomspace(Q_MIN, Q_MAX, 401))
            ok = bq[np.isfinite(bq) & (bq >= 0)]
            hint = f"; reachable sigma_b2 lie in [{ok.min():.4g}, {ok.max():.4g}]" if ok.size else ""
            raise NoEOCError(
                f"no EOC point exists for {act.label()} with sigma_b2={sb:g}: chi_1 = 1 has no fixed point q* > 0{hint}"
            )
    return _eoc_point(act, sw, sb, q)


def _eoc_point(act, sw, sb, q, note=None) -> EOCPoint:
    _v, dv, d2v = (float(x) for x in variance_map_derivatives(act, q, sw, sb))
    c1 = float(chi1(act, q, sw))
    fps = fixed_points(act, sw, sb, known=q)
    others = [fp for fp in fps if abs(fp.q - q) > 1e-6 * q]
    local = _local_stability(dv, d2v, q)
    stable = local and not others
    if note is None and local and others:
        note = "q* is locally stable but V has other fixed points: q^l may converge elsewhere"
    if note is None and not local:
        note = "q* is not attracting: V'(q*) >= 1, depth drives q^l away from q*"
    return EOCPoint(
        activation=act.label(),
        sigma_w2=sw,
        sigma_b2=sb,
        q_star=q,
        chi1=c1,
        dV=dv,
        d2V=d2v,
        xi_q=_xi(dv),
        xi_c=_xi(c1),
        sparsity=float(sparsity(act, q)),
        stable=stable,
        other_fixed_points=others,
        note=note,
    )


def _dphi2_at_zero(act) -> float:
    """lim_{q->0} E[phi'(sqrt(q) Z)^2] = (phi'(0-)^2 + phi'(0+)^2) / 2 (phi' may jump at 0)."""
    left = float(act.dphi(np.array(-1e-300)))
    right = float(act.dphi(np.array(1e-300)))
    return 0.5 * (left * left + right * right)


def _eoc_at_zero(act, d0) -> EOCPoint:
    sw = 1.0 / d0
    d2, d2_sign = _d2v_at_zero(act, sw)
    fps = fixed_points(act, sw, 0.0)
    others = [fp for fp in fps if fp.q > 0]
    stable = _local_stability(1.0, d2_sign, 0.0) and not others
    return EOCPoint(
        activation=act.label(),
        sigma_w2=sw,
        sigma_b2=0.0,
        q_star=0.0,
        chi1=1.0,
        dV=1.0,
        d2V=d2,
        xi_q=None,
        xi_c=None,
        sparsity=float(expect(act, "zero", 1e-8)),
        stable=stable,
        other_fixed_points=others,
        note="with sigma_b2 = 0 the EOC fixed point is q* = 0 (q^l decays to 0 sub-exponentially)",
    )


def _is_homogeneous(act: Activation) -> bool:
    """phi(lambda x) = lambda phi(x) for lambda > 0: V(q)/q and chi_1 do not depend on q."""
    return act.is_piecewise_linear and all(
        float(p.intercept) == 0.0 and (np.isinf(p.lo) or p.lo == 0) and (np.isinf(p.hi) or p.hi == 0)
        for p in act.pieces
    )


def _eoc_homogeneous(act, sigma_b2, q_star) -> EOCPoint:
    d = float(expect(act, "dphi2", 1.0))
    sw = 1.0 / d
    # phi = a x (x < 0), b x (x > 0): E[phi^2] = q (a^2 + b^2)/2 = q E[phi'^2], so on the EOC
    # V(q) = q exactly and sigma_b2 must be 0
    if sigma_b2 is not None and float(check_variance(sigma_b2, "sigma_b2")) > 0:
        raise NoEOCError(
            f"no EOC point exists for {act.label()} with sigma_b2={sigma_b2:g}: its EOC is sigma_w2={sw:.6g}, sigma_b2=0 only"
        )
    q = None if q_star is None else float(check_variance(q_star, "q_star", allow_zero=False))
    return EOCPoint(
        activation=act.label(),
        sigma_w2=sw,
        sigma_b2=0.0,
        q_star=q,
        chi1=1.0,
        dV=1.0,
        d2V=0.0,
        xi_q=None,
        xi_c=None,
        sparsity=float(expect(act, "zero", 1.0)),
        stable=False,
        other_fixed_points=[],
        note=f"{act.name} is positively homogeneous: on its EOC (sigma_w2={sw:.6g}, sigma_b2=0) every q > 0 is a "
        "fixed point of V (V(q) = q), so q* is not determined and q^l neither grows nor decays",
    )


# ----------------------------------------------------------------------------------------
# Correlation fixed points, depth scales, phase, gradients
# ----------------------------------------------------------------------------------------
def correlation_fixed_points(act: Activation | str, sigma_w2, sigma_b2, q_star, grid: int = 101) -> list[FixedPoint]:
    """Fixed points c* of the correlation map R (at q = q_star) in [-1, 1], with R'(c*) and
    stability (|R'(c*)| < 1). ``c = 1`` is one when q_star is a fixed point of V. The
    ``q`` field of each returned FixedPoint holds c*.
    """
    act = _act(act)
    cs = np.linspace(-1.0, 1.0, grid)
    g = correlation_map(act, cs, q_star, sigma_w2, sigma_b2) - cs
    roots: list[float] = []
    idx = np.nonzero(np.sign(g[:-1]) * np.sign(g[1:]) < 0)[0]
    if idx.size:

        def f(c):
            return correlation_map(act, c, q_star, sigma_w2, sigma_b2) - c

        roots.extend(_bisect(f, cs[idx], cs[idx + 1]).tolist())
    roots.extend(cs[np.abs(g) < 1e-12].tolist())
    # a bracket next to c = 1 converges to 1 - 1e-12 at best: snap it (c = 1 is exact)
    roots = _dedupe(sorted(1.0 if r > 1 - 1e-9 else r for r in roots), rtol=1e-7)
    out = []
    for c in roots:
        d = float(correlation_map_slope(act, c, q_star, sigma_w2))
        out.append(FixedPoint(float(c), d, abs(d) < 1 - MARGINAL_TOL))
    return out


def attracting_q(act: Activation | str, sigma_w2, sigma_b2, q0=1.0, depth: int = 2000) -> np.ndarray:
    """The variance reached from ``q0`` after ``depth`` layers (vectorized; inf if it diverges)."""
    act = _act(act)
    sw = np.asarray(check_variance(sigma_w2, "sigma_w2"), float)
    sb = np.asarray(check_variance(sigma_b2, "sigma_b2"), float)
    q = np.broadcast_to(np.asarray(q0, float), np.broadcast_shapes(np.shape(q0), sw.shape, sb.shape)).copy()
    for _ in range(depth):
        alive = np.isfinite(q) & (q > 0) & (q < 1e12)
        if not alive.any():
            break
        qn = np.where(alive, sw * expect(act, "phi2", np.sqrt(np.where(alive, q, 1.0))) + sb, q)
        qn = np.where(q >= 1e12, np.inf, qn)
        if np.allclose(qn, q, rtol=1e-14, atol=0):
            q = qn
            break
        q = qn
    return q


def phase(act: Activation | str, sigma_w2, sigma_b2, q0=1.0, tol: float = 1e-3) -> np.ndarray:
    """Phase at the variance reached from q0: ``"ordered"`` (chi_1 < 1), ``"chaotic"``
    (chi_1 > 1) or ``"eoc"`` (|chi_1 - 1| <= tol). Vectorized; returns a string array."""
    act = _act(act)
    q = attracting_q(act, sigma_w2, sigma_b2, q0)
    sw = np.asarray(sigma_w2, float)
    collapsed, diverged = q < Q_TINY, np.isinf(q)  # same q -> 0 limit as depth_scales
    c1 = sw * expect(act, "dphi2", np.sqrt(np.where(collapsed | diverged, 1.0, q)))
    c1 = np.where(collapsed, sw * _dphi2_at_zero(act), np.where(diverged, np.inf, c1))
    return np.where(c1 < 1 - tol, "ordered", np.where(c1 > 1 + tol, "chaotic", "eoc"))


def depth_scales(
    act: Activation | str, sigma_w2: float, sigma_b2: float, q0: float = 1.0
) -> tuple[float | None, float | None]:
    """``(xi_q, xi_c)`` (Schoenholz et al. 2017) at the fixed point reached from q0.

    ``xi_q = -1/log V'(q*)``; ``xi_c = -1/log R'(c*)`` with c* = 1 in the ordered phase and
    the stable c* < 1 in the chaotic one. None means infinite (at the EOC) or undefined.
    """
    act = _act(act)
    q = float(attracting_q(act, sigma_w2, sigma_b2, q0))
    if not math.isfinite(q):
        return None, None
    if q < Q_TINY:  # q^l -> 0 (sigma_b2 = 0, ordered): the q -> 0 limits V'(0) = chi_1(0)
        slope = float(sigma_w2) * _dphi2_at_zero(act)
        return _xi(slope), _xi(slope)
    _, dv, _ = variance_map_derivatives(act, q, sigma_w2, sigma_b2)
    c1 = float(chi1(act, q, sigma_w2))
    if c1 <= 1 - MARGINAL_TOL:
        return _xi(float(dv)), _xi(c1)
    if c1 < 1 + MARGINAL_TOL:
        return _xi(float(dv)), None
    stable_c = [fp for fp in correlation_fixed_points(act, sigma_w2, sigma_b2, q) if fp.stable and fp.q < 1]
    return _xi(float(dv)), (_xi(stable_c[0].dV) if stable_c else None)


def gradient_ratio(
    act: Activation | str, sigma_w2: float, sigma_b2: float, depth: int, q0: float | None = None
) -> float:
    """Ratio of gradient second moments across ``depth`` layers, ``prod_l chi_1(q^l)``.

    With ``q0=None`` this is ``chi_1(q*)^depth`` at the attracting fixed point; with an
    input second moment ``q0`` it follows the variance trajectory ``q^1 = sigma_w2 q0 +
    sigma_b2``, ``q^{l+1} = V(q^l)`` (Schoenholz et al. eq. for E[delta_l^2]).
    """
    act = _act(act)
    if int(depth) != depth or depth < 0:
        raise ValueError(f"depth must be a non-negative integer, got {depth}")
    if q0 is None:
        q = float(attracting_q(act, sigma_w2, sigma_b2))
        if not math.isfinite(q):
            raise NumericalError(f"the variance map of {act.label()} diverges: no finite attracting q*")
        c1 = float(sigma_w2) * _dphi2_at_zero(act) if q < Q_TINY else float(chi1(act, q, sigma_w2))
        return c1 ** int(depth)
    q = float(sigma_w2) * float(check_variance(q0, "q0")) + float(sigma_b2)
    total = 1.0
    for _ in range(int(depth)):
        if q < Q_TINY:  # the variance has collapsed to 0: chi_1 takes its q -> 0 limit
            total *= float(sigma_w2) * _dphi2_at_zero(act)
            q = float(sigma_w2) * float(act.phi(np.array(0.0))) ** 2 + float(sigma_b2)
            continue
        total *= float(chi1(act, q, sigma_w2))
        q = float(variance_map(act, q, sigma_w2, sigma_b2))
    return check_finite(total, "gradient ratio")
