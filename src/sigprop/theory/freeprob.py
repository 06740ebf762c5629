"""Free-probability machinery for the spectrum of ``J^T J``: laws of ``D^2``, S-transforms, the
master equation of the rectangular chaining, and the Newton-lilypads solver (seed 003).

Notation (seed 003 Sec. 2). For a probability measure ``mu`` on ``[0, inf)``

    G(z) = int mu(dv) / (z - v),     M(z) = z G(z) - 1 = sum_k m_k / z^k,
    S(m) = (1 + m) / (m M^{-1}(m)).

Everything here is *normalized*: a network's master equation is rescaled so that the first
moment of ``J^T J`` is 1 (``sigprop.theory.spectrum`` undoes the scaling).

Master equation. With ``T(m) = 1 / S_{J^T J}(m)`` the inverse of ``M`` is
``M^{-1}(m) = (1 + m) T(m) / m``, so ``m = M(z)`` is the root of

    F_z(m) = z m - (1 + m) T(m)                                                     (*)

that tends to 0 as ``|z| -> inf`` (``m ~ m_1 / z``). ``T`` is a product of *linear factors*
``(c + d m)^e`` (integer ``e`` of either sign: the rational laws, Marchenko-Pastur and Haar
factors) and of *numeric factors* ``g(Lambda m)``, one per layer whose ``D^2`` law has two or
more non-zero values (leaky_relu, smooth activations), where ``g(u) = u M_D^{-1}(u) / m_1(D^2)``
solves ``sum_j a_j / (g - u v_j) = 1`` (``a_j`` the size-biased weights ``p_j v_j / m_1``,
``v_j = value_j / m_1``); ``g(0) = 1`` and the equation is regular at ``u = 0``.

Newton lilypads (seed 003 Algorithm 1). Newton's method on ``F_z`` started at ``m0`` converges to
the unique root in ``B(m0, 2 eta)`` when the Kantorovich number ``h = K eta / |F'(m0)| <= 1/2``,
``eta = |F(m0) / F'(m0)|``, ``K >= sup_{B(m0, 2 eta)} |F''|`` (Kantorovich 1948; Gragg & Tapia
1974). For linear factors ``K`` is a *rigorous* bound: the majorant series of a product of
``(b + d delta)^e`` is the product of ``(|b| + |d| t)^e`` (``e > 0``) and ``(|b| - |d| t)^e``
(``e < 0``), whose second derivative at ``t = 2 eta`` bounds ``|F''|`` on the ball. For numeric
factors no majorant is available: ``K`` is estimated with the maximum-modulus principle from
``|F''|`` at the centre and 8 points of the circle ``|m - m0| = 2 eta``, times a safety factor
2 (a numerical, not a rigorous, certificate; the final points are re-checked below).
Starting from ``m = 0`` at ``z = x + i Y`` (``Y >= 4 x_+``, doubled until the test passes), a
point walks a segment to its target: the step is the full remaining distance first, then sized
from the last Kantorovich number (at least halved after a failed test, never shrunk after a
passed one); after an accepted step Newton runs two iterations (the next test holds at any
``m``) and to machine precision at the target. The ``x`` grid is chained (see :func:`lilypads`):
one sequential chain of anchors down a ray below the diagonal (scalar arithmetic for rational
laws), then walks from the nearest anchor and vertical descents, vectorized over the points.

Certificates on every returned point: ``Im M(z) <= 0`` and ``Im G(z) <= 0`` (a Stieltjes transform
of a probability measure maps C+ to C-), ``z m -> 1`` at the starting height (``G ~ 1/z``),
a small residual of (*), and for quadrature laws agreement between the compressed and the fine
``D^2`` law. A point that fails raises :class:`~sigprop.errors.NumericalError`.
"""

from __future__ import annotations

import cmath
import math
from dataclasses import dataclass

import numpy as np

from sigprop.errors import NumericalError

from .activations import Activation
from .gaussian import _panel_rule, expect, normal_mass

__all__ = ["D2Law", "MasterEquation", "d2_law", "lilypads", "real_axis_edge"]

_EPS = np.finfo(float).eps
_NAN = complex(math.nan, math.nan)
#: Kantorovich threshold (theory: 1/2; a margin for rounding)
H_MAX = 0.4
#: Nodes of the compressed Gauss rule of a quadrature D^2 law.
N_GAUSS = 48
#: Slope of the ray of anchors ``w = t (1 + i CONE_SLOPE)`` and of the cone points of :func:`lilypads`.
CONE_SLOPE = 0.1
#: A walk finishes its last (at most this many) points in scalar arithmetic (rational laws).
SCALAR_TAIL = 16
#: Points on the circle where |F''| is sampled for numeric factors (max-modulus estimate).
N_CIRCLE = 8


# ----------------------------------------------------------------------------------------
# Laws of D^2
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class D2Law:
    """Law of ``D^2 = phi'(sqrt(q) Z)^2`` as weighted points.

    Attributes
    ----------
    values, probs : ndarray
        Points ``v_j >= 0`` and probabilities ``p_j`` (summing to 1). For a piecewise-linear
        activation these are the exact atoms (``slope^2`` of each piece, its Gaussian mass);
        for a non-linear piece they are quadrature nodes of the kink-aware Gaussian engine.
    exact : bool
        True when ``values/probs`` is the law itself (not a quadrature of a continuous part).
    p_zero : float
        ``P(D^2 = 0)`` (mass of the pieces with zero slope).
    m1, m2 : float
        ``E[D^2]`` and ``E[D^4]``.
    label : str
        Description, e.g. ``relu(q=1)``.
    """

    values: np.ndarray
    probs: np.ndarray
    exact: bool
    p_zero: float
    m1: float
    m2: float
    label: str = ""

    @property
    def nonzero_values(self) -> np.ndarray:
        return np.unique(self.values[(self.values > 0) & (self.probs > 0)])

    @property
    def is_rational(self) -> bool:
        """At most one non-zero value: S-transform ``(1 + u) / (a (u + p))``, rational."""
        return self.exact and self.nonzero_values.size <= 1

    @classmethod
    def two_point(cls, a: float, p: float, label: str = "") -> D2Law:
        """``(1 - p) delta_0 + p delta_a`` (``p = 1``: the point mass ``delta_a``)."""
        if not (a > 0 and math.isfinite(a)) or not 0 < p <= 1:
            raise ValueError(f"a two-point D^2 law needs a > 0 and p in (0, 1], got a={a}, p={p}")
        return cls(np.array([0.0, a]), np.array([1.0 - p, p]), True, 1.0 - p, p * a, p * a * a, label)

    @classmethod
    def hard_sine(cls) -> D2Law:
        """The "hard sine" of seed 003 (a triangle wave of slopes +-1): ``D^2 = 1`` whatever q, so
        ``S_{D^2} = 1`` and its layer factor is that of a linear layer (seed 003 eq. 3.4, ``c = 1``)."""
        return cls.two_point(1.0, 1.0, "hard_sine")

    def s_transform(self, u) -> np.ndarray:
        """``S_{D^2}(u)`` (complex ``u`` near 0, on the branch with ``S(0) = 1/m1``)."""
        u = np.asarray(u, complex)
        a, v = self._normalized()
        g = np.ones((*u.shape, 1), complex)
        for t in np.linspace(0.0, 1.0, 17)[1:]:  # continuation from g(0) = 1 along the segment [0, u]
            g = _solve_g(a, v, t * u[..., None], g)
        return (1.0 + u) / (self.m1 * g[..., 0])

    def _normalized(self):
        """Size-biased weights ``a_j = p_j v_j / m1`` and values ``v_j / m1`` (zeros dropped)."""
        keep = (self.values > 0) & (self.probs > 0)
        a = self.probs[keep] * self.values[keep] / self.m1
        return a / a.sum(), self.values[keep] / self.m1


def d2_law(act: Activation, q: float, resolution: int = 1) -> D2Law:
    """The law of ``phi'(sqrt(q) Z)^2`` for an activation at pre-activation variance ``q``.

    Linear pieces give exact atoms (``slope^2`` with Gaussian mass ``normal_mass``); non-linear
    pieces give the Gauss-Legendre nodes of the Gaussian engine (panels broken at the kinks and
    at the activation's feature points; ``resolution`` k adds ``32 k`` uniform breakpoints on
    ``|z| <= 12``). ``E[D^2]`` is taken from the engine's ``dphi2``.
    """
    if act.is_batched:
        raise ValueError(f"{act.label()}: a batch of activation parameters has no single D^2 law; pass scalars")
    q = float(q)
    if not (q > 0 and math.isfinite(q)):
        raise ValueError(f"the pre-activation variance q must be finite and > 0, got {q}")
    s = math.sqrt(q)
    vals, probs = [], []
    exact = True
    for piece in act.pieces:
        lo = -np.inf if np.isinf(piece.lo) else float(piece.lo) / s
        hi = np.inf if np.isinf(piece.hi) else float(piece.hi) / s
        if piece.is_linear:
            mass = float(normal_mass(np.array(lo), np.array(hi)))
            if mass > 0:
                vals.append(np.array([float(piece.slope) ** 2]))
                probs.append(np.array([mass]))
            continue
        exact = False
        extra = np.concatenate(
            [np.asarray(act.feature_points, float) / s, np.linspace(-12.0, 12.0, 32 * resolution + 1)]
        )
        z, w = _panel_rule(np.array(lo), np.array(hi), extra)
        z, w = z.ravel(), w.ravel()
        keep = w > 0
        d = act.dphi(s * z[keep])
        vals.append(np.asarray(d, float) ** 2)
        probs.append(w[keep])
    values = np.concatenate(vals)
    p = np.concatenate(probs)
    if not np.all(np.isfinite(values)):
        raise NumericalError(f"{act.label()}: phi' is not finite on the quadrature nodes at q={q:g}")
    # merge equal atoms (piecewise-linear laws)
    if exact:
        uniq, inv = np.unique(values, return_inverse=True)
        p = np.bincount(inv, weights=p)
        values = uniq
    p = p / p.sum()
    p_zero = (
        float(p[values == 0].sum())
        if exact
        else float(
            sum(
                normal_mass(
                    np.array(-np.inf if np.isinf(pc.lo) else float(pc.lo) / s),
                    np.array(np.inf if np.isinf(pc.hi) else float(pc.hi) / s),
                )
                for pc in act.pieces
                if pc.is_linear and float(pc.slope) == 0.0
            )
        )
    )
    m1 = float(expect(act, "dphi2", s))
    m2 = float(np.sum(p * values**2))
    if not m1 > 0:
        raise ValueError(
            f"{act.label()} at q={q:g} has E[phi'^2] = 0: D is zero, the Jacobian vanishes and has no spectrum"
        )
    return D2Law(values, p, exact, p_zero, m1, m2, f"{act.label()}(q={q:.6g})")


def gauss_compress(a: np.ndarray, v: np.ndarray, n: int = N_GAUSS) -> tuple[np.ndarray, np.ndarray]:
    """An ``n``-point Gauss rule for the discrete measure ``sum_j a_j delta_{v_j}`` (Lanczos with
    full reorthogonalization on ``diag(v)``); exact for polynomials of degree ``2n - 1``, so its
    Stieltjes transform matches the fine rule's to high order away from the support."""
    a = np.asarray(a, float)
    v = np.asarray(v, float)
    if v.size <= n:
        return a, v
    q = np.sqrt(a / a.sum())
    Q = np.zeros((n, v.size))
    alpha, beta = [], []
    Q[0] = q
    for k in range(n):
        w = v * Q[k]
        al = float(Q[k] @ w)
        w = w - Q[: k + 1].T @ (Q[: k + 1] @ w)
        w = w - Q[: k + 1].T @ (Q[: k + 1] @ w)
        alpha.append(al)
        b = float(np.linalg.norm(w))
        if k == n - 1 or b < 1e-13 * max(1.0, abs(al)):
            break
        beta.append(b)
        Q[k + 1] = w / b
    J = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
    nodes, vecs = np.linalg.eigh(J)
    weights = a.sum() * vecs[0] ** 2
    keep = weights > 0
    return weights[keep], np.maximum(nodes[keep], 0.0)


def _solve_g(a, v, u, g0, iters: int = 60, strict: bool = True):
    """Solve ``sum_j a_j / (g - u v_j) = 1`` by Newton from ``g0``. Shapes: ``a, v (..., n)``,
    ``u, g0 (..., 1)`` broadcastable. Raises NumericalError if it does not converge
    (``strict=False``: those entries are NaN instead)."""
    g = np.array(np.broadcast_to(np.asarray(g0, complex), np.broadcast_shapes(np.shape(g0), np.shape(u))))
    done = np.zeros(g.shape, bool)
    prev = np.full(g.shape, np.inf)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for _ in range(iters):
            # Newton on 1/S(g) - 1 with S = sum a/(g - u v): exactly linear for a one-point law
            # and close to linear in general (S ~ 1/(g - u <v>)), so far better behaved than S - 1
            inv = 1.0 / (g - u * v)
            r = a * inv
            S = np.sum(r, axis=-1, keepdims=True)
            step = np.where(done, 0.0, (S - S * S) / np.sum(r * inv, axis=-1, keepdims=True))
            g = g - step
            rel = np.abs(step) / np.abs(g)
            # converged: at machine precision, or stagnating at the rounding level (no longer
            # shrinking quadratically; e.g. a fine rule of 500 nodes sums to ~1e-15)
            done |= (rel <= 8 * _EPS) | ((rel <= 1e-12) & (rel >= 0.5 * prev)) | ~np.isfinite(g)
            prev = rel
            if np.all(done):
                break
        else:
            bad = ~(done | (rel <= 1e-10))
            if np.any(bad):
                if strict:
                    raise NumericalError("inverting the M-transform of a D^2 law did not converge")
                g = np.where(bad, np.nan, g)
    if strict and not np.all(np.isfinite(g)):
        raise NumericalError("inverting the M-transform of a D^2 law gave a non-finite value")
    return g


# ----------------------------------------------------------------------------------------
# The master equation
# ----------------------------------------------------------------------------------------
class MasterEquation:
    """``T(m) = scale * prod_j (c_j + d_j m)^{e_j} * prod_k g_k(Lambda_k m)`` (see module doc).

    Parameters
    ----------
    scale : float
        Positive constant (1 after normalization to ``m_1 = 1``).
    linear : list of (c, d, e)
        Linear factors with real ``c, d`` and integer exponents ``e``; equal ``(c, d)`` merged.
    numeric : list of (a, v, Lambda)
        Numeric factors: normalized size-biased law ``(a_j, v_j)`` of a ``D^2`` law and the
        argument scale ``Lambda``.
    """

    def __init__(self, scale: float, linear, numeric=()):
        merged: dict[tuple[float, float], int] = {}
        for c, d, e in linear:
            key = (float(c), float(d))
            merged[key] = merged.get(key, 0) + int(e)
        items = [(c, d, e) for (c, d), e in merged.items() if e != 0]
        self.c = np.array([t[0] for t in items], float)
        self.d = np.array([t[1] for t in items], float)
        self.e = np.array([t[2] for t in items], float)
        self.scale = float(scale)
        self.numeric = list(numeric)
        #: raise on a failed inner inversion (False: NaN, used by the a-posteriori checks)
        self.strict = True
        if self.numeric:
            n = max(len(a) for a, _, _ in self.numeric)
            self.na = np.zeros((len(self.numeric), n))
            self.nv = np.zeros((len(self.numeric), n))
            for k, (a, v, _) in enumerate(self.numeric):
                self.na[k, : len(a)] = a
                self.nv[k, : len(v)] = v
            self.nlam = np.array([lam for _, _, lam in self.numeric], float)

    @property
    def rational(self) -> bool:
        return not self.numeric

    @property
    def scalar(self) -> _Scalar | None:
        """The scalar twin (rational equations only, else None)."""
        if not self.rational:
            return None
        if getattr(self, "_scalar", None) is None:
            self._scalar = _Scalar(self)
        return self._scalar

    def with_numeric(self, numeric) -> MasterEquation:
        lin = [(c, d, int(e)) for c, d, e in zip(self.c, self.d, self.e, strict=True)]
        return MasterEquation(self.scale, lin, numeric)

    # -------------------------------------------------------------- T and its log-derivatives
    def log_terms(self, m: np.ndarray, g0: np.ndarray | None = None):
        """``(T, (log T)', (log T)'', g)`` at complex ``m`` (shape P); ``g`` (P, K) the numeric
        factors' values (warm start ``g0``)."""
        m = np.asarray(m, complex)
        b = self.c + self.d * m[..., None]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            T = self.scale * np.prod(b**self.e, axis=-1) if self.e.size else np.full(m.shape, self.scale, complex)
            r = self.d / b
            l1 = np.sum(self.e * r, axis=-1)
            l2 = -np.sum(self.e * r * r, axis=-1)
            g = None
            if self.numeric:
                u = (self.nlam * m[..., None])[..., None]
                start = np.ones(u.shape, complex) if g0 is None else g0[..., None]
                g = _solve_g(self.na, self.nv, u, start, strict=self.strict)
                e = g - u * self.nv
                s2 = np.sum(self.na / e**2, axis=-1, keepdims=True)
                gp = np.sum(self.na * self.nv / e**2, axis=-1, keepdims=True) / s2
                gpp = 2.0 * np.sum(self.na * (gp - self.nv) ** 2 / e**3, axis=-1, keepdims=True) / s2
                g, gp, gpp = g[..., 0], gp[..., 0], gpp[..., 0]
                T = T * np.prod(g, axis=-1)
                q1 = gp / g
                l1 = l1 + np.sum(self.nlam * q1, axis=-1)
                l2 = l2 + np.sum(self.nlam**2 * (gpp / g - q1 * q1), axis=-1)
        return T, l1, l2, g

    def F_parts(self, m, g0=None):
        """``(A, A', A'', g)`` for ``A(m) = (1 + m) T(m)``, so ``F_z = z m - A``."""
        T, l1, l2, g = self.log_terms(m, g0)
        m = np.asarray(m, complex)
        with np.errstate(invalid="ignore", over="ignore"):
            Tp = T * l1
            Tpp = T * (l1 * l1 + l2)
            A = (1.0 + m) * T
            Ap = T + (1.0 + m) * Tp
            App = 2.0 * Tp + (1.0 + m) * Tpp
        return A, Ap, App, g

    def kantorovich_K(self, m, r, App, g):
        """A bound (rational: rigorous majorant; numeric: max-modulus estimate) of
        ``sup_{|delta| <= r} |A''(m + delta)|``."""
        m = np.asarray(m, complex)
        r = np.asarray(r, float)
        if self.rational:
            b = np.abs(self.c + self.d * m[..., None])
            ad = np.abs(self.d)
            t = r[..., None]
            pos = self.e > 0
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                den = np.where(pos, b + ad * t, b - ad * t)
                valid = np.all(pos | (den > 0), axis=-1)
                l1 = np.abs(self.e) * ad / den
                l2 = np.where(pos, -1.0, 1.0) * np.abs(self.e) * ad * ad / den**2
                logP = np.sum(np.abs(self.e) * np.where(pos, 1.0, -1.0) * np.log(np.abs(den)), axis=-1)
                b1 = np.abs(1.0 + m) + r
                L1 = np.sum(l1, axis=-1) + 1.0 / b1
                L2 = np.sum(l2, axis=-1) - 1.0 / b1**2
                Phat = abs(self.scale) * np.exp(logP) * b1
                K = Phat * (L1 * L1 + L2)
            return np.where(valid & np.isfinite(K), K, np.inf)
        K = np.abs(App)
        thetas = np.exp(2j * np.pi * np.arange(N_CIRCLE) / N_CIRCLE)
        pts = (m[None, :] + r[None, :] * thetas[:, None]).ravel()
        gw = None if g is None else np.broadcast_to(g, (N_CIRCLE, *g.shape)).reshape(-1, g.shape[-1])
        try:
            _, _, App_w, _ = self.F_parts(pts, gw)
        except NumericalError:
            return np.full(m.shape, np.inf)
        K = np.maximum(K, np.abs(App_w).reshape(N_CIRCLE, -1).max(axis=0))
        return np.where(np.isfinite(K), 2.0 * K, np.inf)


def _newton(eq: MasterEquation, z, m, g, iters: int | None = 80):
    """Newton on ``F_z(m) = z m - A(m)`` to machine precision (after a passed basin test).
    With ``eq.strict`` False, points that fail come back as NaN instead of raising.
    ``iters`` None: 80; a small number: exactly that many iterations, no convergence check."""
    if iters is not None and iters < 5:
        m = np.array(m, complex)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            for _ in range(iters):
                A, Ap, _, g = eq.F_parts(m, g)
                m = m - (z * m - A) / (z - Ap)
            A, Ap, App, g = eq.F_parts(m, g)
        if eq.strict and not np.all(np.isfinite(m)):
            raise NumericalError("Newton iteration on the master equation produced a non-finite value")
        return m, A, Ap, App, g
    iters = 80 if iters is None else iters
    m = np.array(m, complex)
    z = np.broadcast_to(np.asarray(z, complex), m.shape)
    g = None if g is None else np.array(g, complex)
    prev = np.full(m.shape, np.inf)
    act = np.flatnonzero(np.ones(m.shape, bool))  # iterate on the points not yet converged only
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for _ in range(iters):
            full = act.size == m.size  # (no fancy-indexing copies until a point converges)
            mi = m.ravel() if full else m.flat[act]
            zi = z.ravel() if full else z.flat[act]
            gsel = None if g is None else (g.reshape(-1, g.shape[-1]) if full else g.reshape(-1, g.shape[-1])[act])
            A, Ap, _, gi = eq.F_parts(mi, gsel)
            step = (zi * mi - A) / (zi - Ap)
            mi = mi - step
            if eq.strict and not np.all(np.isfinite(mi)):
                raise NumericalError("Newton iteration on the master equation produced a non-finite value")
            size = np.abs(step)
            scale = np.abs(mi) + 1e-300
            # converged: at machine precision, or stagnating at the rounding level of an
            # ill-conditioned point (deep nets: F is a high-degree polynomial)
            p_act = prev.flat[act]
            done = (size <= 16 * _EPS * scale) | ((size <= 1e-7 * scale) & (size >= 0.5 * p_act)) | ~np.isfinite(mi)
            m.flat[act] = mi
            if g is not None:
                g.reshape(-1, g.shape[-1])[act] = gi
            prev.flat[act] = size
            if done.any():
                act = act[~done]
                step = step[~done]
                if act.size == 0:
                    break
        else:
            bad = ~(np.abs(step) <= 1e-7 * (np.abs(m.flat[act]) + 1e-300))
            if np.any(bad):
                if eq.strict:
                    raise NumericalError("Newton iteration on the master equation did not converge")
                m.flat[act[bad]] = np.nan
        A, Ap, App, g = eq.F_parts(m, g)
    return m, A, Ap, App, g


def _basin(eq: MasterEquation, z, m, A, Ap, App, g):
    """Kantorovich test for ``F_z`` at ``m`` (``A`` parts at ``m`` precomputed)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        fp = np.abs(z - Ap)
        eta = np.abs(z * m - A) / fp
        K = eq.kantorovich_K(m, 2.0 * eta, App, g)
        h = K * eta / fp
    return np.where(np.isfinite(h), h, np.inf)


def _start(eq: MasterEquation, z: np.ndarray, edge: float):
    """Doubling phase of Algorithm 1: ``m = 0`` at ``x + iY``, ``Y`` doubled until in the basin."""
    P = z.size
    x = z.real
    Y = np.maximum(z.imag, 4.0 * edge + np.abs(x))
    zero = np.zeros(P, complex)
    A0, Ap0, App0, g0 = eq.F_parts(zero)
    for _ in range(200):
        ok = _basin(eq, x + 1j * Y, zero, A0, Ap0, App0, g0) <= H_MAX
        if ok.all():
            break
        Y = np.where(ok, Y, 2.0 * Y)
    else:
        raise NumericalError("no starting point in a Newton basin was found by doubling Im z")
    zc = x + 1j * Y
    m, A, Ap, App, g = _newton(eq, zc, zero, g0)
    # certificate of the branch at the start: M(z) ~ m1 / z = 1 / z (normalized)
    if np.any(np.abs(zc * m - 1.0) > 0.5):
        raise NumericalError("the starting point is not on the branch M(z) ~ m1/z")
    return [zc, m, A, Ap, App, g]


def _walk(eq: MasterEquation, z: np.ndarray, state: list, max_tests: int):
    """Chain basins along the segments from ``state[0]`` to ``z`` (Algorithm 1, second loop).

    The step is the full remaining distance first, then sized from the Kantorovich number of the
    last test (at least halved after a failure, never shrunk after a success). Returns
    ``(state, reached, steps, tests)``; points that use more than ``max_tests`` tests stop
    (``reached`` False) where they are."""
    zc, m, A, Ap, App, g = state
    P = z.size
    steps = np.zeros(P, int)
    tests = np.zeros(P, int)
    trial = np.abs(z - zc)
    active = trial > 0
    sc = eq.scalar
    while True:
        active &= tests < max_tests
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        if sc is not None and idx.size <= SCALAR_TAIL:
            # the last few points (rational laws): scalar walks, then one vectorized Newton
            for i in idx:
                zc_i, m_i, s_i, t_i = _chain_scalar(
                    sc, complex(zc[i]), complex(m[i]), complex(z[i]), int(max_tests - tests[i]), float(trial[i])
                )
                zc[i], m[i] = zc_i, m_i
                steps[i] += s_i
                tests[i] += t_i
            m[idx], A[idx], Ap[idx], App[idx], _ = _newton(eq, zc[idx], m[idx], None)
            break
        rem = z[idx] - zc[idx]
        dist = np.abs(rem)
        length = np.minimum(trial[idx], dist)
        cand = np.where(length >= dist, z[idx], zc[idx] + rem * (length / dist))
        h = _basin(eq, cand, m[idx], A[idx], Ap[idx], App[idx], None if g is None else g[idx])
        tests[idx] += 1
        ok = h <= H_MAX
        # h grows about linearly with the step: aim the next trial at h ~ H_MAX / 2
        factor = np.clip(0.5 * H_MAX / np.maximum(h, 1e-300), 0.1, 4.0)
        acc, rej = idx[ok], idx[~ok]
        trial[rej] = length[~ok] * np.minimum(factor[~ok], 0.5)
        stalled = rej[trial[rej] < 1e-15 * np.abs(zc[rej])]
        tests[stalled] = max_tests
        if acc.size:
            zc[acc] = cand[ok]
            trial[acc] = length[ok] * np.maximum(factor[ok], 1.0)
            steps[acc] += 1
            # intermediate points need no machine precision (the next Kantorovich test holds at
            # any m): two Newton iterations there, full convergence at the targets
            fin = zc[acc] == z[acc]
            for sel, it in ((fin, None), (~fin, 2)):
                ii = acc[sel]
                if ii.size:
                    m_a, A_a, Ap_a, App_a, g_a = _newton(eq, zc[ii], m[ii], None if g is None else g[ii], iters=it)
                    m[ii], A[ii], Ap[ii], App[ii] = m_a, A_a, Ap_a, App_a
                    if g is not None:
                        g[ii] = g_a
            active[acc] = ~fin
    return [zc, m, A, Ap, App, g], zc == z, steps, tests


class _Scalar:
    """Scalar (Python ``complex``) twin of a *rational* :class:`MasterEquation`: ``F_parts`` and the
    rigorous majorant ``kantorovich_K`` with the same formulas, for the long sequential anchor chain
    of :func:`lilypads`, where NumPy's per-call overhead on one-element arrays dominates."""

    def __init__(self, eq: MasterEquation):
        self.fac = [(float(c), float(d), int(e)) for c, d, e in zip(eq.c, eq.d, eq.e, strict=True)]
        self.scale = eq.scale

    def parts(self, m: complex):
        T = self.scale
        l1 = 0.0
        l2 = 0.0
        try:
            for c, d, e in self.fac:
                b = c + d * m
                T *= b**e
                r = d / b
                l1 += e * r
                l2 -= e * r * r
        except (ZeroDivisionError, OverflowError):
            return _NAN, _NAN, _NAN
        Tp = T * l1
        Tpp = T * (l1 * l1 + l2)
        return (1.0 + m) * T, T + (1.0 + m) * Tp, 2.0 * Tp + (1.0 + m) * Tpp

    def K(self, m: complex, r: float) -> float:
        L1 = 0.0
        L2 = 0.0
        logP = 0.0
        for c, d, e in self.fac:
            b = abs(c + d * m)
            ad = abs(d)
            ae = abs(e)
            den = b + ad * r if e > 0 else b - ad * r
            if not den > 0:  # a pole of T within the ball (or a degenerate ball): no bound
                return math.inf
            if e > 0:
                L2 -= ae * ad * ad / (den * den)
                logP += ae * math.log(den)
            else:
                L2 += ae * ad * ad / (den * den)
                logP -= ae * math.log(den)
            L1 += ae * ad / den
        b1 = abs(1.0 + m) + r
        L1 += 1.0 / b1
        L2 -= 1.0 / (b1 * b1)
        if logP > 700.0:
            return math.inf
        K = abs(self.scale) * math.exp(logP) * b1 * (L1 * L1 + L2)
        return K if math.isfinite(K) else math.inf

    def h(self, z: complex, m: complex, A: complex, Ap: complex) -> float:
        """Kantorovich number of ``F_z`` at ``m`` (as :func:`_basin`)."""
        fp = abs(z - Ap)
        if not fp > 0:
            return math.inf
        eta = abs(z * m - A) / fp
        h = self.K(m, 2.0 * eta) * eta / fp
        return h if math.isfinite(h) else math.inf

    def newton(self, z: complex, m: complex, iters: int):
        for _ in range(iters):
            A, Ap, _ = self.parts(m)
            den = z - Ap
            if not (den != 0 and cmath.isfinite(den)):
                return _NAN
            m = m - (z * m - A) / den
        return m


def _chain_scalar(
    sc: _Scalar,
    zc: complex,
    m: complex,
    z_to: complex,
    max_tests: int,
    trial: float | None = None,
    anchors: list | None = None,
):
    """One sequential walk of Algorithm 1 from ``(zc, m)`` (a solved point) to ``z_to``, with the
    step control of :func:`_walk`, in scalar arithmetic. Returns ``(zc, m, steps, tests)``:
    ``zc == z_to`` unless more than ``max_tests`` tests were needed or the step fell to rounding
    level; ``m`` there after two Newton iterations. Every accepted ``(zc, m)`` is appended to
    ``anchors`` when given."""
    A, Ap, _ = sc.parts(m)
    if trial is None:
        trial = abs(z_to - zc)
    steps = tests = 0
    while zc != z_to and tests < max_tests:
        rem = z_to - zc
        dist = abs(rem)
        length = min(trial, dist)
        cand = z_to if length >= dist else zc + rem * (length / dist)
        h = sc.h(cand, m, A, Ap)
        tests += 1
        factor = min(max(0.5 * H_MAX / max(h, 1e-300), 0.1), 4.0)
        if h <= H_MAX:
            m_new = sc.newton(cand, m, 2)
            A_new, Ap_new, _ = sc.parts(m_new)
            if not (cmath.isfinite(A_new) and cmath.isfinite(Ap_new)):
                break
            zc, m, A, Ap = cand, m_new, A_new, Ap_new
            trial = length * max(factor, 1.0)
            steps += 1
            if anchors is not None:
                anchors.append((zc, m, None))
        else:
            trial = length * min(factor, 0.5)
            if trial < 1e-15 * abs(zc):
                break
    return zc, m, steps, tests


def _chain_vec(eq: MasterEquation, z_to: complex, state: list, max_tests: int):
    """:func:`_chain_scalar` for any master equation (NumPy on one-element arrays); the anchors
    carry the numeric factors ``g``."""
    zc, m, A, Ap, App, g = (None if s_ is None else s_.copy() for s_ in state)
    anchors = []
    trial = abs(z_to - zc[0])
    tests = 0
    while zc[0] != z_to and tests < max_tests:
        rem = z_to - zc[0]
        dist = abs(rem)
        length = min(trial, dist)
        cand = np.array([z_to if length >= dist else zc[0] + rem * (length / dist)])
        h = float(_basin(eq, cand, m, A, Ap, App, g)[0])
        tests += 1
        factor = min(max(0.5 * H_MAX / max(h, 1e-300), 0.1), 4.0)
        if h <= H_MAX:
            try:
                m2, A2, Ap2, App2, g2 = _newton(eq, cand, m, g, iters=2)
            except NumericalError:
                break
            if not (np.all(np.isfinite(m2)) and np.all(np.isfinite(A2)) and np.all(np.isfinite(Ap2))):
                break
            zc, m, A, Ap, App, g = cand, m2, A2, Ap2, App2, g2
            trial = length * max(factor, 1.0)
            anchors.append((complex(zc[0]), complex(m[0]), None if g is None else g[0].copy()))
        else:
            trial = length * min(factor, 0.5)
            if trial < 1e-15 * abs(zc[0]):
                break
    return anchors, tests


def _take(state, idx):
    return [None if s is None else s[idx].copy() for s in state]


def _put(state, idx, part):
    for s, p in zip(state, part, strict=True):
        if s is not None:
            s[idx] = p


def lilypads(
    eq: MasterEquation, z: np.ndarray, edge: float, chain: bool = True, max_tests: int = 200
) -> tuple[np.ndarray, dict]:
    """``M(z)`` for the normalized master equation ``eq`` at every ``z`` (complex, ``Im z > 0``).

    ``edge`` is the right edge ``x_+`` of the support (:func:`real_axis_edge`): walks start at
    ``|z| >= 4 x_+`` where ``|z M(z) - 1| <= sum_k (x_+/|z|)^k <= 1/3`` (``m_k <= x_+^{k-1}``), which
    certifies the branch of the starting point.

    ``chain=True`` (seed 003 Algorithm 1 with proxies): the points below the diagonal
    (``0 < Im z < Re z``, the grids of a density) get *cone points* ``w = x + i max(s x, y)`` with
    ``s = CONE_SLOPE``. One sequential chain (doubling at the largest ``|w|``, a vertical walk to
    the ray ``t (1 + i s)``, then down that ray to the smallest ``|w|``) keeps every accepted step
    as an *anchor* ``(w_k, M(w_k))``; along the ray the basins have radius ~``|w|`` (the nearest
    singularity of ``M`` is 0 or ``x_+``), so the chain costs ~log(x_max/x_min) steps. For rational
    laws the chain runs in scalar Python arithmetic (:class:`_Scalar`: the same formulas and the
    same rigorous majorant, without NumPy's per-call overhead). Then every cone point walks from its
    nearest anchor (in ``log|w|``; a walk that needs more than ``max_tests`` tests falls back to
    doubling + vertical descent), and every point descends vertically to its target, both
    vectorized over the points; the last few points of a vectorized walk (at most
    ``SCALAR_TAIL``) finish in scalar arithmetic (rational laws). The other points (left of the
    support, or ``Im z >= Re z``), and all points with ``chain=False``, descend vertically from a
    doubling start. Every step, whatever the route, passes the Kantorovich test.

    Returns ``(m, info)`` with ``info = {"steps": accepted steps per point, "tests": basin tests
    per point, "g": numeric factors}``. Raises NumericalError when a point cannot be certified.
    """
    z = np.asarray(z, complex).ravel()
    if np.any(~(z.imag > 0)):
        raise ValueError("lilypads needs points in the upper half-plane (Im z > 0)")
    P = z.size
    state: list = [np.zeros(P, complex) for _ in range(5)]
    state.append(np.ones((P, len(eq.numeric)), complex) if eq.numeric else None)
    steps = np.zeros(P, int)
    tests = np.zeros(P, int)
    solved = np.zeros(P, bool)

    def vertical(idx):
        st = _start(eq, z[idx], edge)
        st, reached, s, t = _walk(eq, z[idx], st, max_tests=50 * max_tests)
        if not reached.all():
            raise NumericalError("Newton lilypads stalled: the basin radius shrank to rounding level")
        _put(state, idx, st)
        steps[idx] += s
        tests[idx] += t
        solved[idx] = True

    # points below the diagonal (Im z < Re z) go through the anchors; the others (far from the
    # support, or left of it) descend vertically from a doubling start
    is_near = (z.imag < z.real) if chain else np.zeros(P, bool)
    near = np.flatnonzero(is_near)
    if near.size < 4:
        vertical(np.arange(P))
    else:
        if near.size < P:
            vertical(np.flatnonzero(~is_near))
        zn = z[near]
        ray = 1.0 + 1j * CONE_SLOPE
        cone = zn.real + 1j * np.maximum(CONE_SLOPE * zn.real, zn.imag)
        t_cone = np.abs(cone) / abs(ray)
        t_hi, t_lo = float(t_cone.max()), float(t_cone.min())
        w_top = np.array([t_hi * ray])
        st = _start(eq, w_top, edge)
        w_lo = t_lo * ray
        anchors: list = []
        if eq.rational:
            sc = eq.scalar
            zc, m_c = complex(st[0][0]), complex(st[1][0])
            anchors.append((zc, m_c, None))
            for target in (complex(w_top[0]), w_lo):
                zc, m_c, _, _ = _chain_scalar(sc, zc, m_c, target, 50 * max_tests, anchors=anchors)
        else:
            st, reached, _, _ = _walk(eq, w_top, st, max_tests=50 * max_tests)
            if not reached.all():
                raise NumericalError("Newton lilypads stalled: the basin radius shrank to rounding level")
            anchors.append((complex(st[0][0]), complex(st[1][0]), st[5][0].copy()))
            anchors += _chain_vec(eq, w_lo, st, max_tests=50 * max_tests)[0]
        az = np.array([a[0] for a in anchors])
        am = np.array([a[1] for a in anchors])
        ag = None if eq.rational else np.array([a[2] for a in anchors])
        aA, aAp, aApp, ag = eq.F_parts(am, ag)
        # nearest anchor in log|w| (anchors run down the ray: |w| decreasing)
        la = -np.log(np.abs(az))
        lc = -np.log(np.abs(cone))
        pos = np.clip(np.searchsorted(la, lc), 1, la.size - 1) if la.size > 1 else np.zeros(near.size, int)
        if la.size > 1:
            pos = np.where(np.abs(la[pos - 1] - lc) <= np.abs(la[pos] - lc), pos - 1, pos)
        anchor_state = [az, am, aA, aAp, aApp, ag]
        st, reached, s_, t_ = _walk(eq, cone, _take(anchor_state, pos), max_tests=max_tests)
        steps[near] += s_
        tests[near] += t_
        if not reached.all():  # fall back: doubling + vertical descent to the cone point
            bad = np.flatnonzero(~reached)
            st2 = _start(eq, cone[bad], edge)
            st2, ok2, _, _ = _walk(eq, cone[bad], st2, max_tests=50 * max_tests)
            if not ok2.all():
                raise NumericalError("Newton lilypads stalled: the basin radius shrank to rounding level")
            _put(st, bad, st2)
        st, reached, s_, t_ = _walk(eq, zn, st, max_tests=50 * max_tests)
        steps[near] += s_
        tests[near] += t_
        if not reached.all():
            raise NumericalError("Newton lilypads stalled: the basin radius shrank to rounding level")
        _put(state, near, st)
        solved[near] = True
    rest = np.flatnonzero(~solved)
    if rest.size:
        vertical(rest)
    _zc, m, A = state[0], state[1], state[2]
    _certify(eq, z, m, A)
    return m, {"steps": steps, "tests": tests, "g": state[5]}


def _certified(z, m, A) -> np.ndarray:
    """Per point: the tests of :func:`_certify` (finite, residual, Im M <= 0, Im G <= 0) pass."""
    with np.errstate(invalid="ignore", over="ignore"):
        scale = np.abs(z * m) + np.abs(A) + 1e-300
        res = np.abs(z * m - A) / scale
        G = (1.0 + m) / z
        tolG = 1e-11 * (np.abs(G) + 1.0 / np.abs(z))
        tolM = 1e-11 * (np.abs(m) + 1.0)
        return np.isfinite(m) & (res <= 1e-8) & (G.imag <= tolG) & (m.imag <= tolM)


def _certify(eq: MasterEquation, z, m, A):
    """Never return a point on a wrong branch: residual, Im M <= 0, Im G <= 0 (to rounding)."""
    if not np.all(np.isfinite(m)):
        raise NumericalError("the solver produced non-finite values of M(z)")
    scale = np.abs(z * m) + np.abs(A) + 1e-300
    res = np.abs(z * m - A) / scale
    if np.any(res > 1e-8):
        raise NumericalError(f"master-equation residual {res.max():.2e} too large: point not certified")
    G = (1.0 + m) / z
    tolG = 1e-11 * (np.abs(G) + 1.0 / np.abs(z))
    tolM = 1e-11 * (np.abs(m) + 1.0)
    if np.any(G.imag > tolG) or np.any(m.imag > tolM):
        raise NumericalError("a point left the branch of a Stieltjes transform (Im G > 0): not certified")


# ----------------------------------------------------------------------------------------
# Real axis: the right edge of the support
# ----------------------------------------------------------------------------------------
def _g_real(a, v, u):
    """Real root ``g > u max(v)`` of ``sum a / (g - u v) = 1`` for real ``u >= 0`` (bisection in
    ``log(g - u vmax)``: the left side decreases from +inf to -1 on that half-line)."""
    vmax = float(np.max(v[a > 0]))
    lo = np.full(u.shape, -745.0)
    hi = np.zeros(u.shape)  # g - u vmax <= 1 at the root
    for _ in range(70):
        mid = 0.5 * (lo + hi)
        gm = u * vmax + np.exp(mid)
        with np.errstate(divide="ignore"):
            f = np.sum(a / (gm[..., None] - u[..., None] * v), axis=-1) - 1.0
        lo = np.where(f > 0, mid, lo)
        hi = np.where(f > 0, hi, mid)
    return u * vmax + np.exp(0.5 * (lo + hi))


def real_axis_edge(eq: MasterEquation) -> float:
    """Right edge ``x_+`` of the support of the normalized measure: ``M^{-1}(m) = (1 + m) T(m) / m``
    decreases from +inf on ``m in (0, m_c)`` to ``x_+`` at its first critical point; taken as the
    minimum over a log grid of ``m`` (an upper bound within ~1e-4, used to choose the x grid)."""
    m = np.geomspace(1e-9, 1e9, 3000)
    # in logs: deep nets overflow T(m) = prod (1 + d m)^e at large m
    logT = np.log(eq.scale) + (np.sum(eq.e * np.log(eq.c + eq.d * m[:, None]), axis=-1) if eq.e.size else 0.0)
    if eq.numeric:
        for a, v, lam in eq.numeric:
            logT = logT + np.log(_g_real(np.asarray(a), np.asarray(v), lam * m))
    R = np.exp(np.minimum(np.log1p(m) + logT - np.log(m), 700.0))
    R = R[np.isfinite(R) & (R > 0)]
    if R.size == 0:
        raise NumericalError("could not locate the edge of the spectrum on the real axis")
    return float(R.min())
