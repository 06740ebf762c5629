"""One engine for Gaussian expectations.

Everything mean-field theory needs reduces to two kinds of integral:

* univariate ``E[F(mu + sigma Z) Z^k]`` with ``Z ~ N(0, 1)`` and ``F`` one of
  ``phi``, ``phi**2``, ``phi'``, ``phi'**2`` or the indicator ``phi == 0``;
* bivariate ``E[F(u1) G(u2)]`` with ``(u1, u2)`` centred Gaussian of variances
  ``q1, q2`` and correlation ``c``.

An activation is a list of *pieces* (see :mod:`sigprop.theory.activations`) separated by
its declared kinks. On a linear piece ``phi(x) = a x + b`` every integrand is a polynomial
times the Gaussian density, integrated **exactly** with truncated normal moments (1-D) or
truncated bivariate normal moments built on Owen's T function (2-D). Non-linear pieces are
integrated by composite Gauss-Legendre on panels whose breakpoints include the kinks, a
uniform grid in ``z`` and the activation's own feature points mapped to ``z`` (so a
``tanh`` evaluated at huge variance, whose transition is very narrow in ``z``, is still
resolved). Nothing in this module imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import special

if TYPE_CHECKING:  # pragma: no cover
    from .activations import Activation, Piece

__all__ = [
    "bvn_cdf",
    "expect",
    "expect_bivariate",
    "expect_many",
    "normal_mass",
    "trunc_moments",
]

#: Beyond |z| = CLIP the standard normal density underflows (phi(40) == 0.0 in double), so
#: clipping infinite limits here is exact in floating point.
CLIP = 40.0
#: Non-linear pieces are integrated on [-L_QUAD, L_QUAD] in z; the omitted tail mass is
#: below 2e-32 times polynomial factors.
L_QUAD = 12.0
_INV_SQRT2PI = 1.0 / np.sqrt(2.0 * np.pi)

# Composite Gauss-Legendre rule used on every panel.
_GL_N = 12
_GL_X, _GL_W = np.polynomial.legendre.leggauss(_GL_N)
_UNIFORM_Z = np.linspace(-L_QUAD, L_QUAD, 33)
# A lighter rule for the two nested levels of bivariate quadrature (panels of width 2.4
# with 12 nodes still integrate the Gaussian weight to ~1e-13).
_UNIFORM_Z_COARSE = np.linspace(-L_QUAD, L_QUAD, 11)


def _pdf(z: np.ndarray) -> np.ndarray:
    return _INV_SQRT2PI * np.exp(-0.5 * z * z)


def normal_mass(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """P(lo < Z < hi) for a standard normal, without cancellation in either tail."""
    lo, hi = np.broadcast_arrays(np.asarray(lo, float), np.asarray(hi, float))
    upper = lo > 0
    return np.where(upper, special.ndtr(-lo) - special.ndtr(-hi), special.ndtr(hi) - special.ndtr(lo))


def trunc_moments(lo: np.ndarray, hi: np.ndarray, jmax: int) -> list[np.ndarray]:
    """Truncated standard normal moments ``M_j = int_lo^hi z^j phi(z) dz`` for j = 0..jmax.

    Uses ``M_j = (j-1) M_{j-2} + lo^{j-1} phi(lo) - hi^{j-1} phi(hi)``; infinite limits are
    clipped to +-40 where the density is exactly zero in double precision.
    """
    lo = np.clip(np.asarray(lo, float), -CLIP, CLIP)
    hi = np.clip(np.asarray(hi, float), -CLIP, CLIP)
    pl, ph = _pdf(lo), _pdf(hi)
    out = [normal_mass(lo, hi), pl - ph]
    lo_pow, hi_pow = np.ones_like(lo), np.ones_like(hi)
    for j in range(2, jmax + 1):
        lo_pow = lo_pow * lo
        hi_pow = hi_pow * hi
        out.append((j - 1) * out[j - 2] + lo_pow * pl - hi_pow * ph)
    return out[: jmax + 1]


# ----------------------------------------------------------------------------------------
# Integrands on a linear piece: F(x) = c0 + c1 x + c2 x^2 for x = a x + b.
# ----------------------------------------------------------------------------------------
FUNCTIONALS = ("phi", "phi2", "dphi", "dphi2", "zero")


def _linear_coeffs(slope, intercept, what: str):
    a, b = slope, intercept
    if what == "phi":
        return b, a, 0.0
    if what == "phi2":
        return b * b, 2.0 * a * b, a * a
    if what == "dphi":
        return a, 0.0, 0.0
    if what == "dphi2":
        return a * a, 0.0, 0.0
    if what == "zero":
        return np.where((a == 0) & (b == 0), 1.0, 0.0), 0.0, 0.0
    raise ValueError(f"unknown integrand {what!r}; allowed: {', '.join(FUNCTIONALS)}")


def _nonlinear_values(act: Activation, x: np.ndarray, what: str) -> np.ndarray:
    if what == "phi":
        return act.phi(x)
    if what == "phi2":
        v = act.phi(x)
        return v * v
    if what == "dphi":
        return act.dphi(x)
    if what == "dphi2":
        v = act.dphi(x)
        return v * v
    if what == "zero":
        # a non-linear piece vanishes on a null set only; counting phi(x) == 0 would count
        # underflow (gelu's x Phi(x) is -0.0 below x = -38) as sparsity
        return np.zeros_like(x)
    raise ValueError(f"unknown integrand {what!r}; allowed: {', '.join(FUNCTIONALS)}")


def _panel_rule(lo_z: np.ndarray, hi_z: np.ndarray, extra_z: np.ndarray | None, coarse: bool = False):
    """Composite Gauss-Legendre nodes/weights (standard-normal weighted) on [lo_z, hi_z].

    ``lo_z``/``hi_z`` have a common shape S; returns arrays of shape S + (n,). Panel
    breakpoints: a uniform grid on [-L, L], ``extra_z`` (shape S + (e,), e.g. the
    activation's feature points mapped to z) and the two ends; everything is clipped to
    the piece, so breakpoints outside it collapse into zero-width panels.
    """
    a = np.maximum(lo_z, -L_QUAD)
    b = np.minimum(hi_z, L_QUAD)
    b = np.maximum(a, b)
    shape = a.shape
    grid = _UNIFORM_Z_COARSE if coarse else _UNIFORM_Z
    parts = [np.broadcast_to(grid, shape + grid.shape), a[..., None], b[..., None]]
    if extra_z is not None:
        parts.append(np.broadcast_to(extra_z, shape + extra_z.shape[-1:]))
    br = np.sort(np.clip(np.concatenate(parts, axis=-1), a[..., None], b[..., None]), axis=-1)
    left, right = br[..., :-1], br[..., 1:]
    half = 0.5 * (right - left)
    mid = 0.5 * (right + left)
    z = mid[..., None] + half[..., None] * _GL_X
    w = half[..., None] * _GL_W * _pdf(z)
    return z.reshape((*shape, -1)), w.reshape((*shape, -1))


def _piece_expect(act, piece: Piece, requests, mu, sigma, feature_x, coarse=False) -> list:
    """[E[F(mu + sigma Z) Z^k 1{mu + sigma Z in piece}] for (F, k) in requests], one piece.

    On a linear piece the truncated moments are computed once for every request.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        lo_z = np.where(np.isinf(piece.lo), np.sign(piece.lo) * np.inf, (piece.lo - mu) / sigma)
        hi_z = np.where(np.isinf(piece.hi), np.sign(piece.hi) * np.inf, (piece.hi - mu) / sigma)
    lo_z, hi_z = np.broadcast_arrays(lo_z, hi_z)
    if piece.is_linear:
        m = trunc_moments(lo_z, hi_z, max(k for _, k in requests) + 2)
        out = []
        for what, k in requests:
            c0, c1, c2 = _linear_coeffs(piece.slope, piece.intercept, what)
            # F(mu + sigma z) = d0 + d1 z + d2 z^2
            d0 = c0 + c1 * mu + c2 * mu * mu
            d1 = (c1 + 2.0 * c2 * mu) * sigma
            d2 = c2 * sigma * sigma
            out.append(d0 * m[k] + d1 * m[k + 1] + d2 * m[k + 2])
        return out
    extra = None
    if feature_x is not None:
        extra = (feature_x - np.asarray(mu)[..., None]) / np.asarray(sigma)[..., None]
        extra = np.broadcast_to(extra, lo_z.shape + extra.shape[-1:])
    z, w = _panel_rule(lo_z, hi_z, extra, coarse)
    x = np.asarray(mu)[..., None] + np.asarray(sigma)[..., None] * z
    cache: dict[str, np.ndarray] = {}
    out = []
    for what, k in requests:
        if what not in cache:
            cache[what] = _nonlinear_values(act, x, what) * w
        out.append(np.sum(cache[what] * z**k if k else cache[what], axis=-1))
    return out


def expect_many(act: Activation, requests, sigma, mu=0.0, coarse: bool = False) -> list[np.ndarray]:
    """Several expectations ``E[F(mu + sigma Z) Z^k]`` in one pass (shared moments/nodes).

    ``requests`` is a sequence of ``(what, k)`` pairs as in :func:`expect`.
    """
    sigma = np.asarray(sigma, float)
    mu = np.asarray(mu, float)
    requests = [(w, int(k)) for w, k in requests]
    for w, k in requests:
        if w not in FUNCTIONALS or not 0 <= k <= 4:
            raise ValueError(f"bad request ({w!r}, {k}): integrand one of {', '.join(FUNCTIONALS)}, k in 0..4")
    totals: list = [0.0] * len(requests)
    for piece in act.pieces:
        for i, v in enumerate(_piece_expect(act, piece, requests, mu, sigma, act.feature_points, coarse)):
            totals[i] = totals[i] + v
    return [np.asarray(t, float) for t in totals]


def expect(act: Activation, what: str, sigma, k: int = 0, mu=0.0, coarse: bool = False) -> np.ndarray:
    """``E[F(mu + sigma Z) Z^k]`` for ``Z ~ N(0, 1)``, vectorized over ``sigma`` and ``mu``.

    Parameters
    ----------
    act : Activation
        Supplies the pieces (and, for non-linear pieces, ``phi``/``dphi``).
    what : {"phi", "phi2", "dphi", "dphi2", "zero"}
        The integrand ``F``: ``phi``, ``phi**2``, ``phi'``, ``phi'**2`` or ``1{phi == 0}``.
    sigma : array_like
        Standard deviation (``sqrt(q)``), > 0. Any shape; broadcast with ``mu`` and with
        array-valued activation parameters.
    k : int
        Power of ``Z`` (0..4) multiplying the integrand; used for the Hermite-weight
        formulas of the q-derivatives.
    """
    return expect_many(act, [(what, k)], sigma, mu, coarse)[0]


# ----------------------------------------------------------------------------------------
# Bivariate normal CDF and truncated bivariate moments (exact, via Owen's T)
# ----------------------------------------------------------------------------------------
def bvn_cdf(h, k, rho) -> np.ndarray:
    """P(X < h, Y < k) for standard bivariate normal with correlation ``rho``, |rho| < 1.

    Owen (1956): ``Phi2 = (Phi(h) + Phi(k))/2 - T(h, a_h) - T(k, a_k) - delta/2`` with
    ``a_h = (k - rho h)/(h r)``, ``a_k = (h - rho k)/(k r)``, ``r = sqrt(1 - rho^2)``; the
    limits h = 0 and/or k = 0 are taken explicitly. Infinite limits are allowed.
    """
    h, k, rho = np.broadcast_arrays(np.asarray(h, float), np.asarray(k, float), np.asarray(rho, float))
    if np.any(np.isnan(h)) or np.any(np.isnan(k)):
        raise ValueError("bvn_cdf limits h, k must not be NaN")
    if not np.all(np.abs(rho) < 1):
        raise ValueError(f"bvn_cdf needs a correlation |rho| < 1, got {rho[~(np.abs(rho) < 1)].ravel()[:3].tolist()}")
    h = np.clip(h, -CLIP, CLIP)
    k = np.clip(k, -CLIP, CLIP)
    # |h| < 1e-150 is 0 to double precision for every term (Phi, T); avoids h*r underflow
    h = np.where(np.abs(h) < 1e-150, 0.0, h)
    k = np.where(np.abs(k) < 1e-150, 0.0, k)
    r = np.sqrt((1.0 - rho) * (1.0 + rho))
    with np.errstate(divide="ignore", invalid="ignore"):
        ah = (k - rho * h) / (h * r)
        ak = (h - rho * k) / (k * r)
    hz, kz = h == 0, k == 0
    th = special.owens_t(h, np.where(hz, 0.0, ah))
    tk = special.owens_t(k, np.where(kz, 0.0, ak))
    # h -> 0+ : a_h -> sign(k) inf, T(0, +-inf) = +-1/4.
    th = np.where(hz & ~kz, 0.25 * np.sign(k), th)
    tk = np.where(kz & ~hz, 0.25 * np.sign(h), tk)
    both = hz & kz
    half = 0.5 * (0.25 - np.arcsin(rho) / (2.0 * np.pi))
    th = np.where(both, half, th)
    tk = np.where(both, half, tk)
    opposite = ((h < 0) & (k > 0)) | ((h > 0) & (k < 0))  # not h*k < 0: the product underflows
    delta = np.where(opposite | ((hz | kz) & (h + k < 0)), 1.0, 0.0)
    out = 0.5 * (special.ndtr(h) + special.ndtr(k)) - th - tk - 0.5 * delta
    return np.clip(out, 0.0, 1.0)


def _orthant_moments(h, k, rho):
    """E[1, X, Y, XY ; X < h, Y < k] for the standard bivariate normal, corr rho."""
    h = np.clip(h, -CLIP, CLIP)
    k = np.clip(k, -CLIP, CLIP)
    r = np.sqrt((1.0 - rho) * (1.0 + rho))
    p = bvn_cdf(h, k, rho)
    ph, pk = _pdf(h), _pdf(k)
    A = special.ndtr((k - rho * h) / r)  # P(Y < k | X = h)
    B = special.ndtr((h - rho * k) / r)  # P(X < h | Y = k)
    ex = -ph * A - rho * pk * B
    ey = -pk * B - rho * ph * A
    # joint density at (h, k) times r^... : phi(h) phi((k - rho h)/r) = r * 2pi * phi2 / (2pi)
    joint = ph * _pdf((k - rho * h) / r)
    exy = rho * p - rho * h * ph * A - rho * k * pk * B + r * joint
    return p, ex, ey, exy


def _rect_moments(a1, b1, a2, b2, rho):
    """E[1, X, Y, XY ; a1 < X < b1, a2 < Y < b2] by inclusion-exclusion of orthants."""
    m_bb = _orthant_moments(b1, b2, rho)
    m_ab = _orthant_moments(a1, b2, rho)
    m_ba = _orthant_moments(b1, a2, rho)
    m_aa = _orthant_moments(a1, a2, rho)
    return [bb - ab - ba + aa for bb, ab, ba, aa in zip(m_bb, m_ab, m_ba, m_aa, strict=True)]


def _pl_bivariate(act_f, what_f, act_g, what_g, s1, s2, rho):
    total = 0.0
    for pf in act_f.pieces:
        f0, f1, _ = _linear_coeffs(pf.slope, pf.intercept, what_f)
        a1, b1 = pf.lo / s1, pf.hi / s1
        for pg in act_g.pieces:
            g0, g1, _ = _linear_coeffs(pg.slope, pg.intercept, what_g)
            a2, b2 = pg.lo / s2, pg.hi / s2
            p, ex, ey, exy = _rect_moments(a1, b1, a2, b2, rho)
            # F = f0 + f1 s1 X, G = g0 + g1 s2 Y
            total = total + (f0 * g0 * p + f0 * g1 * s2 * ey + f1 * s1 * g0 * ex + f1 * g1 * s1 * s2 * exy)
    return total


def _quad_bivariate(act_f, what_f, act_g, what_g, s1, s2, rho):
    """Outer composite-GL over z1 (per piece of f), inner exact/quadrature over z2."""
    r = np.sqrt((1.0 - rho) * (1.0 + rho))
    total = 0.0
    gk = np.asarray(act_g.kinks_array(), float)
    for pf in act_f.pieces:
        lo_z = np.asarray(pf.lo / s1, float)
        hi_z = np.asarray(pf.hi / s1, float)
        lo_z, hi_z, rho_b, s1b, s2b, rb = np.broadcast_arrays(lo_z, hi_z, rho, s1, s2, r)
        # extra breakpoints: where the conditional mean of u2 crosses a kink of g, and f's
        # own feature points.
        feats = [np.asarray(act_f.feature_points, float) / s1b[..., None]]
        if gk.size:
            with np.errstate(divide="ignore", invalid="ignore"):
                zk = gk / (s2b[..., None] * rho_b[..., None]) + 0.0 * lo_z[..., None]
            feats.append(np.where(np.isfinite(zk), zk, 0.0))
        extra = np.concatenate([np.broadcast_to(f, lo_z.shape + f.shape[-1:]) for f in feats], axis=-1)
        z1, w1 = _panel_rule(lo_z, hi_z, extra, coarse=True)
        x1 = s1b[..., None] * z1
        fv = _nonlinear_values(act_f, x1, what_f) if not pf.is_linear else _linear_value(pf, what_f, x1)
        mu = (s2b * rho_b)[..., None] * z1
        sig = (s2b * rb)[..., None]
        inner = expect(act_g, what_g, sig, 0, mu, coarse=True)
        total = total + np.sum(w1 * fv * inner, axis=-1)
    return total


def _linear_value(piece: Piece, what: str, x):
    c0, c1, c2 = _linear_coeffs(piece.slope, piece.intercept, what)
    return c0 + c1 * x + c2 * x * x


def expect_bivariate(act: Activation, what: str, q1, q2, c, act2: Activation | None = None) -> np.ndarray:
    """``E[F(u1) F2(u2)]`` for centred Gaussian (u1, u2), Var u_i = q_i, Corr = c.

    ``what`` is ``"phi"`` (E[phi(u1) phi(u2)], the correlation map) or ``"dphi"``
    (E[phi'(u1) phi'(u2)], its slope by Price's theorem). Vectorized over ``q1, q2, c``.
    Exact for piecewise-linear activations (truncated bivariate moments via Owen's T);
    quadrature otherwise. ``|c| = 1`` is handled by the univariate engine.
    """
    act2 = act if act2 is None else act2
    if what not in ("phi", "dphi"):
        raise ValueError(f"expect_bivariate integrand must be 'phi' or 'dphi', got {what!r}")
    if act.is_batched or act2.is_batched:
        raise ValueError("expect_bivariate takes activations with scalar parameters")
    q1, q2, c = np.broadcast_arrays(np.asarray(q1, float), np.asarray(q2, float), np.asarray(c, float))
    if not (np.all(q1 > 0) and np.all(q2 > 0) and np.all(np.isfinite(q1)) and np.all(np.isfinite(q2))):
        raise ValueError("expect_bivariate variances q1, q2 must be finite and > 0")
    if not np.all(np.abs(c) <= 1):
        raise ValueError(
            f"expect_bivariate correlation c must lie in [-1, 1], got {c[~(np.abs(c) <= 1)].ravel()[:3].tolist()}"
        )
    s1, s2 = np.sqrt(q1), np.sqrt(q2)
    # Within 1e-12 of |c| = 1, E[phi phi] is taken at c = +-1: its slope in c is the bounded
    # E[phi' phi'], so that is within ~1e-12, while the rectangle moments carry
    # ~1e-11 of cancellation there. E[phi' phi'] of a kinked phi has an infinite slope at c = +-1
    # (relu: 1/2 - acos(c)/(2 pi)), so snapping would cost up to ~1e-6; for piecewise-linear
    # activations the rectangle moments are used up to |c| < 1 instead (error <= 5e-9 at the
    # last double below 1, ~1e-11 at 1 - 1e-12, against 40-digit references).
    pl = act.is_piecewise_linear and act2.is_piecewise_linear
    edge = np.abs(c) >= (1.0 if pl and what == "dphi" else 1.0 - 1e-12)
    rho = np.where(edge, 0.0, c)
    if pl:
        out = _pl_bivariate(act, what, act2, what, s1, s2, rho)
    else:
        out = _quad_bivariate(act, what, act2, what, s1, s2, rho)
    out = np.asarray(out, float) * np.ones(c.shape)
    if np.any(edge):
        out = np.array(out, float, ndmin=1).reshape(-1).copy()
        e = edge.reshape(-1)
        out[e] = _edge_value(act, act2, what, s1.reshape(-1)[e], s2.reshape(-1)[e], c.reshape(-1)[e])
        out = out.reshape(c.shape)
    return out


def _edge_value(act, act2, what, s1, s2, c):
    """|c| = 1: u2 = sign(c) sqrt(q2/q1) u1, a univariate expectation on a grid of z."""
    z, w = _panel_rule(
        np.full(np.shape(s1), -np.inf), np.full(np.shape(s1), np.inf), _kink_points(act, act2, s1, s2, c)
    )
    x1 = np.asarray(s1)[..., None] * z
    x2 = (np.sign(c) * s2)[..., None] * z
    f = _eval_any(act, what, x1)
    g = _eval_any(act2, what, x2)
    return np.sum(w * f * g, axis=-1)


def _kink_points(act, act2, s1, s2, c):
    """Breakpoints in z for u1 = s1 z, u2 = sign(c) s2 z: both activations' kinks and
    feature points (a smooth phi' at large q is a narrow bump that needs them)."""
    p1 = np.concatenate([act.kinks_array(), act.feature_points])
    p2 = np.concatenate([act2.kinks_array(), act2.feature_points])
    s1 = np.asarray(s1, float).reshape(-1, 1)
    s2c = (np.sign(np.asarray(c, float)) * np.asarray(s2, float)).reshape(-1, 1)
    pts = np.concatenate([p1[None, :] / s1, p2[None, :] / s2c], axis=-1)
    return pts.reshape((*np.shape(s1.reshape(-1)), -1))


def _eval_any(act, what, x):
    """Evaluate an integrand pointwise (piecewise formula, valid for every piece)."""
    out = np.zeros_like(x)
    for piece in act.pieces:
        inside = (x > piece.lo) & (x <= piece.hi)
        if piece.is_linear:
            val = _linear_value(piece, what, x)
        else:
            val = _nonlinear_values(act, x, what)
        out = np.where(inside, val, out)
    return out
