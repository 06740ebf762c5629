"""Free-probability spectrum of ``J^T J`` for a :class:`~sigprop.netspec.NetSpec` (seed 003).

``J = D_L W_L ... D_1 W_1`` with ``W_l`` of shape ``N_l x N_{l-1}`` and entry variance
``sigma_w2 / N_{l-1}`` (NetSpec convention: fan-in). ``J^T J`` is ``N_0 x N_0`` and every
quantity here (density, atom, CDF, moments) is about its *normalized* spectral measure
``(1/N_0) sum_i delta_{lambda_i}`` in the infinite-width limit with fixed ratios.

Derivation (re-done here; seed 003 Thm 2.3 / Def 2.4 / Thm 3.1). For ``A`` (p x q), ``B``
(q x r), ``S_{(AB)^T AB}(m) = S_{A^T A}((r/q) m) S_{B^T B}(m)``. Peeling ``J_l = (D_l W_l) J_{l-1}``
and ``(D_l W_l)^T (D_l W_l) = W_l^T D_l^2 W_l`` gives, with ``Lambda_l = N_0 / N_l``,

    S_{J^T J}(m) = prod_l S_{D_l^2}(Lambda_l m) S_{W_l^T W_l}(Lambda_{l-1} m)       (seed 003 eq. 3.3)

With ``r_l = N_l / N_{l-1}`` and ``g_l(u) = (1 + u) / S_{D_l^2}(u) = u M_{D_l^2}^{-1}(u)``:

* Gaussian ``W_l`` (Marchenko-Pastur): ``1/S_{W^T W}(v) = sigma_w2 (r_l + v)``, so the layer
  contributes ``T_l(m) = sigma_w2 r_l g_l(Lambda_l m)`` to ``T = 1/S_{J^T J}``.
* Haar orthogonal ``W_l`` scaled to entry variance ``sigma_w2 / N_{l-1}``: ``W^T W = sigma_w2 r_l I``
  when ``r_l >= 1``; when ``r_l < 1`` its law is ``(1 - r_l) delta_0 + r_l delta_{sigma_w2}``.
  ``T_l = sigma_w2 r_l g_l(Lambda_l m) / (1 + Lambda_l m)`` resp. ``/ (1 + Lambda_{l-1} m)``.
* A ``D^2`` law with one non-zero value ``a`` of mass ``p`` (relu, hard_tanh, relu_tau, st_tau,
  crelu, cst, linear, hard sine): ``g(u) = a (u + p)``, rational. Otherwise (leaky_relu, tanh,
  erf, selu, gelu, ...) ``g`` is obtained numerically (:mod:`sigprop.theory.freeprob`).

Seed 003 writes ``W`` with variance ``sigma^2 / N_l`` (fan-out); with the fan-in convention each
layer's factor carries an extra ``r_l``: its eq. (3.4) becomes
``M^{-1}(m) = (1+m)/m prod_l sigma_w2 r_l (c_l + Lambda_l m) / ...``. The Hard Tanh constant of
eq. (3.4), ``c_l = P(0 <= N <= 1/sqrt(q^l))``, is **half** the right value: the factor is
``P(D^2 = 1) = P(|N| <= 1/sqrt(q^l))`` (for ReLU ``c = 1/2 = P(N > 0)`` follows the same rule).
A Monte Carlo of a hard-tanh net (tests/test_spectrum_theory.py) agrees with the latter and
rejects the paper's constant.

Moments (closed form, ``S(m) = 1/m_1 - (m_2 - m_1^2)/m_1^3 m + O(m^2)``):

    m_1 = prod_l sigma_w2 r_l E[D_l^2] = (N_L/N_0) prod_l sigma_w2 E[D_l^2]
    m_2 / m_1^2 = 1 + sum_l Lambda_l E[D_l^4]/E[D_l^2]^2  (Gaussian)
                  - sum_l (Lambda_l if r_l >= 1 else Lambda_{l-1})   (orthogonal only)

Atom at zero: ``rank J = min_l rank(D_l W_l ...)`` generically, so the mass at 0 of the
``N_0``-normalized measure is ``max(0, 1 - min_l P(D_l != 0) N_l / N_0)`` (it is also the limit of
``1 + M(iy)`` as ``y -> 0``; tested).

Masked layers use ``kept * sigma_w2`` (NetSpec.effective_sigma_w2: the bulk of an iid matrix
times Bernoulli(kept) is Marchenko-Pastur with that variance). Correlated weights
(``W = W_ind + eta w``) are given the bulk of their iid part only: the rank-one correlated part
can add an outlier that this theory does not describe (see NetSpec.effective_sigma_w2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from sigprop.errors import NumericalError

from .freeprob import (
    N_GAUSS,
    D2Law,
    MasterEquation,
    _certified,
    _certify,
    _newton,
    d2_law,
    gauss_compress,
    lilypads,
    real_axis_edge,
)

__all__ = [
    "D2Law",
    "SpectrumResult",
    "closed_form_moments",
    "d2_law",
    "jacobian_spectrum",
    "layer_laws",
    "master_equation",
    "orthogonal_atom",
    "spectrum_from_laws",
    "stieltjes",
]

#: Default Im z at which the density is read (seed 003: "works for up to y = 1e-9").
DEFAULT_Y = 1e-9


@dataclass(frozen=True)
class _Model:
    """A network reduced to what the spectrum needs."""

    laws: tuple[D2Law, ...]
    widths: tuple[int, ...]
    sigma_w2: tuple[float, ...]
    weights: str


def layer_laws(spec) -> list[D2Law]:
    """The ``D_l^2`` laws of a NetSpec: ``phi_l'(sqrt(q^l) Z)^2`` with ``q^l`` from
    ``spec.layer_variances()``."""
    q = spec.layer_variances()
    return [d2_law(act, float(ql)) for act, ql in zip(spec.activation, q, strict=True)]


def _model(spec) -> _Model:
    if spec.weights not in ("gaussian", "orthogonal", "correlated"):
        raise ValueError(f"unknown weight law {spec.weights!r}; allowed: gaussian, orthogonal, correlated")
    weights = "gaussian" if spec.weights == "correlated" else spec.weights
    if any(s == 0.0 for s in spec.sigma_w2):
        raise ValueError(f"sigma_w2 must be > 0 for a Jacobian spectrum (0 makes J = 0), got {list(spec.sigma_w2)}")
    return _Model(tuple(layer_laws(spec)), tuple(spec.widths), tuple(spec.effective_sigma_w2), weights)


def _check_model(laws, widths, sigma_w2, weights) -> _Model:
    widths = tuple(int(n) for n in widths)
    if len(widths) < 2 or any(n < 1 for n in widths):
        raise ValueError(f"widths must list N_0..N_L (L >= 1) positive ints, got {list(widths)}")
    L = len(widths) - 1
    laws = tuple(laws)
    if len(laws) != L:
        raise ValueError(f"got {len(laws)} D^2 laws for {L} layers")
    sw = (float(sigma_w2),) * L if np.ndim(sigma_w2) == 0 else tuple(float(s) for s in sigma_w2)
    if len(sw) != L or any(not (s > 0 and math.isfinite(s)) for s in sw):
        raise ValueError(f"sigma_w2 must be one positive number or one per layer ({L}), got {sigma_w2}")
    if weights not in ("gaussian", "orthogonal"):
        raise ValueError(f"weights must be 'gaussian' or 'orthogonal', got {weights!r}")
    return _Model(laws, widths, sw, weights)


def master_equation(model: _Model, n_gauss: int = N_GAUSS) -> tuple[MasterEquation, float, list]:
    """The normalized master equation (``T(0) = 1``), the first moment ``m_1`` and, for each
    quadrature law, ``(layer, fine (a, v), Lambda)`` for the final certification."""
    N = model.widths
    linear, numeric, fine = [], [], []
    m1 = 1.0
    for ell, (law, sw) in enumerate(zip(model.laws, model.sigma_w2, strict=True), start=1):
        r = N[ell] / N[ell - 1]
        lam, lam_prev = N[0] / N[ell], N[0] / N[ell - 1]
        m1 *= sw * r * law.m1
        if law.is_rational:
            nz = law.nonzero_values
            p = float(law.probs[law.values == nz[0]].sum())
            linear.append((1.0, lam / p, 1))
        else:
            a, v = law._normalized()
            if law.exact:
                numeric.append((a, v, lam))
            else:
                ac, vc = gauss_compress(a, v, n_gauss)
                numeric.append((ac, vc, lam))
                fine.append((len(numeric) - 1, a, v, lam))
        if model.weights == "orthogonal":
            linear.append((1.0, lam if r >= 1 else lam_prev, -1))
    if not (m1 > 0 and math.isfinite(m1)):
        raise NumericalError(f"the first moment of J^T J is {m1:g}: outside the floating-point range")
    return MasterEquation(1.0, linear, numeric), m1, fine


def closed_form_moments(model_or_spec) -> dict[str, float]:
    """``{"m1", "m2"}`` of the normalized spectral measure of ``J^T J`` from the S-transform
    (formulas in the module docstring)."""
    model = model_or_spec if isinstance(model_or_spec, _Model) else _model(model_or_spec)
    N = model.widths
    m1, ratio = 1.0, 1.0
    for ell, (law, sw) in enumerate(zip(model.laws, model.sigma_w2, strict=True), start=1):
        r = N[ell] / N[ell - 1]
        lam, lam_prev = N[0] / N[ell], N[0] / N[ell - 1]
        m1 *= sw * r * law.m1
        ratio += lam * law.m2 / law.m1**2
        if model.weights == "orthogonal":
            ratio -= lam if r >= 1 else lam_prev
    return {"m1": m1, "m2": m1 * m1 * ratio}


def atom_at_zero(model: _Model) -> float:
    """Mass at 0 of the spectral measure of ``J^T J``: ``max(0, 1 - min_l P(D_l != 0) N_l / N_0)``."""
    N = model.widths
    rank = min((1.0 - law.p_zero) * N[ell] / N[0] for ell, law in enumerate(model.laws, start=1))
    return max(0.0, 1.0 - min(1.0, rank))


def orthogonal_atom(model: _Model) -> tuple[float, float] | None:
    """``(x, mass)`` of a point mass of ``J^T J`` away from 0 that orthogonal weights produce, or
    None when there is none (Gaussian weights, a ``D^2`` law with a continuous part, mass <= 0).

    With ``W_l`` (semi-)orthogonal, ``|W_l u|^2 = sigma_w2 max(r_l, 1) |u|^2`` on a subspace of
    codimension ``max(0, N_{l-1} - N_l)`` and ``|D_l v|^2 = a_l |v|^2`` on the ``P(D_l^2 = a_l) N_l``
    coordinates where ``D_l^2 = a_l``. The inputs on which every layer acts as such a scaling are
    an eigenspace of ``J^T J`` for ``x = prod_l sigma_w2 max(r_l, 1) a_l``; for subspaces in general
    position (Haar weights) its dimension is
    ``N_0 - sum_l (max(0, N_{l-1} - N_l) + (1 - P(D_l^2 = a_l)) N_l)`` (free projections: the
    mass of ``P ^ Q`` is ``max(0, p + q - 1)``). The largest such mass takes the likeliest
    non-zero ``a_l`` in every layer. Examples: one square layer (``W^T D^2 W ~ sigma_w2 D^2``), a
    square linear net (``sigma_w2^L I``), hard_tanh nets whose layers are mostly linear."""
    if model.weights != "orthogonal" or not all(law.exact for law in model.laws):
        return None
    N = model.widths
    x, codim = 1.0, 0.0
    for ell, (law, sw) in enumerate(zip(model.laws, model.sigma_w2, strict=True), start=1):
        keep = (law.values > 0) & (law.probs > 0)
        if not keep.any():
            return None
        j = int(np.argmax(np.where(keep, law.probs, -1.0)))
        x *= sw * max(N[ell] / N[ell - 1], 1.0) * float(law.values[j])
        codim += max(0, N[ell - 1] - N[ell]) + (1.0 - float(law.probs[j])) * N[ell]
    mass = 1.0 - codim / N[0]
    return (x, mass) if mass > 1e-12 else None


def _check_representable(model: _Model) -> None:
    """Orthogonal weights: refuse up front the cases whose spectrum the density solver cannot
    represent (point masses away from 0, or one non-widening layer whose spectrum is the law of
    ``sigma_w2 phi'^2`` itself)."""
    if model.weights != "orthogonal":
        return
    hint = "use weights='gaussian' (--weights gaussian) or an empirical spectrum (--empirical)"
    atom = orthogonal_atom(model)
    if atom is not None:
        raise ValueError(
            f"J^T J has a point mass {atom[1]:.4g} at x = {atom[0]:.6g} (orthogonal weights and a phi'^2 with "
            f"point masses: every layer acts as one scaling on a common subspace of inputs): the density "
            f"solver represents only an atom at 0; {hint}"
        )
    N = model.widths
    if len(model.laws) == 1 and N[1] <= N[0]:
        raise ValueError(
            "one orthogonal layer with N_1 <= N_0: J^T J = W^T D^2 W has exactly the eigenvalues "
            f"sigma_w2 phi'(h_i)^2 (and N_0 - N_1 zeros), the law of phi'^2 itself, which the "
            f"free-probability density solver does not handle; {hint}"
        )


_ORTHO_STALL = (
    "the free-probability solver stalled for orthogonal weights ({exc}): the spectrum of J^T J likely "
    "has point masses away from 0 (or a density too singular to resolve), which this result cannot "
    "represent; use weights='gaussian' (--weights gaussian) or an empirical spectrum (--empirical)"
)


def stieltjes(spec, z) -> np.ndarray:
    """``G(z) = int mu(dv) / (z - v)`` of the spectral measure of ``J^T J`` at complex ``z``
    (``Im z > 0``), by Newton lilypads."""
    model = _model(spec)
    _check_representable(model)
    eq, m1, fine = master_equation(model)
    z = np.asarray(z, complex)
    zs = z.ravel() / m1
    with _explain_stall(model):
        m, info = lilypads(eq, zs, real_axis_edge(eq))
    m, ok = _certify_fine(eq, zs, m, info, fine)
    if not ok.all():
        raise NumericalError(_FINE_MSG.format(n=int((~ok).sum())))
    return ((1.0 + m) / z.ravel()).reshape(z.shape)


def _agree(z, m_a, m_b, tol):
    G_a, G_b = (1.0 + m_a) / z, (1.0 + m_b) / z
    finite = np.isfinite(G_a) & np.isfinite(G_b)
    scale = np.abs(G_b) + (np.max(np.abs(G_b[finite].imag)) if finite.any() else 0.0)
    with np.errstate(invalid="ignore"):
        return finite & (np.abs(G_a - G_b) <= tol * scale)


def _certify_fine(eq: MasterEquation, z, m, info, fine, tol: float = 1e-4):
    """Smooth ``D^2`` laws: the walk uses a compressed Gauss rule (fast); every point is then
    re-solved (Newton from the compressed solution) with the fine z-quadrature of the law, and
    certified when the two ``G`` agree within ``tol`` (relative to ``|G|`` plus the largest
    ``|Im G|``). Returns ``(M(z) from the fine rule, ok)``.

    Where the subordinated variable comes close to the support of a ``D^2`` law (small x when a
    layer with tiny ``phi'`` values is the rank bottleneck, e.g. tanh with a narrow layer) no
    discrete rule is accurate: such points are flagged ``ok = False``, never returned."""
    if not fine:
        return m, np.ones(m.shape, bool)
    numeric = list(eq.numeric)
    for k, a, v, lam in fine:
        numeric[k] = (a, v, lam)
    eq_f = eq.with_numeric(numeric)
    eq_f.strict = False
    m_f, A_f, _, _, _ = _newton(eq_f, z, m, info["g"])
    ok = _agree(z, m, m_f, tol)
    # a fine re-solve that leaves the branch (e.g. far below the bulk, where Im G is ~0 and the
    # discrete rule is poor) is flagged like a disagreement: not certified, never returned
    ok &= _certified(z, m_f, A_f)
    if ok.any():
        _certify(eq_f, z[ok], m_f[ok], A_f[ok])
    return np.where(ok, m_f, np.nan), ok


@dataclass
class SpectrumResult:
    """Spectrum of ``J^T J`` (normalized by ``N_0``).

    Attributes
    ----------
    x : ndarray (K,)
        Grid of eigenvalues (log-spaced over the support unless given).
    density : ndarray (K,)
        Density of the continuous part, ``-Im G(x + iy)/pi`` minus the Cauchy-smoothed atom.
    atom_at_zero : float
        Mass at 0 (rank deficiency).
    cdf : dict float -> float
        ``F(x) = atom + int_0^x density`` (computed as ``1 - int_x^inf density``).
    quantiles : dict float -> float
    moments : dict
        ``m1``, ``m2`` from the S-transform (closed form).
    moments_numeric : dict
        ``m1``, ``m2`` by integrating the density on the internal grid (cross-check).
    mass : float
        ``atom + int density`` on the internal grid (1 up to the mass below its lowest point).
    support : tuple
        ``(lowest grid point, right edge x_+)``.
    y : float
        Imaginary part used.
    stieltjes : ndarray (K,) complex
        ``G(x + iy)``.
    """

    x: np.ndarray
    density: np.ndarray
    atom_at_zero: float
    cdf: dict
    quantiles: dict
    moments: dict
    moments_numeric: dict = field(default_factory=dict)
    mass: float = float("nan")
    support: tuple = ()
    y: float = DEFAULT_Y
    stieltjes: np.ndarray | None = None

    def to_dict(self) -> dict:
        """``{x, density, atom_at_zero, cdf: {x: F}, quantiles: {p: x}, moments: {m1, m2}}`` (JSON-ready;
        cdf/quantile keys as ``str(float)``)."""
        return {
            "x": [float(v) for v in self.x],
            "density": [float(v) for v in self.density],
            "atom_at_zero": float(self.atom_at_zero),
            "cdf": {str(float(k)): float(v) for k, v in self.cdf.items()},
            "quantiles": {str(float(k)): float(v) for k, v in self.quantiles.items()},
            "moments": {"m1": float(self.moments["m1"]), "m2": float(self.moments["m2"])},
        }


_FINE_MSG = (
    "{n} point(s) could not be certified: no discrete rule of a smooth D^2 law is accurate there"
    " (small x, where the spectrum is set by the far Gaussian tail of phi'^2 in a narrow layer);"
    " use larger x or a larger y"
)


def _density(eq, m1, fine, x, y, atom, edge, strict: bool = True):
    """Continuous density at ``x`` (unnormalized units), ``G`` and the steps; ``edge`` normalized.
    ``strict=False``: uncertified points (smooth laws) come back as NaN plus a mask."""
    zs = (np.asarray(x, float) + 1j * y) / m1
    m, info = lilypads(eq, zs, edge)
    m, ok = _certify_fine(eq, zs, m, info, fine)
    if strict and not ok.all():
        raise NumericalError(_FINE_MSG.format(n=int((~ok).sum())))
    Gs = (1.0 + m) / zs
    ys = y / m1
    rho_s = -Gs.imag / np.pi - atom * ys / (np.pi * (zs.real**2 + ys**2))
    rho = rho_s / m1
    floor = 1e-9 * (np.max(np.abs(rho[ok])) + 1.0 / m1) if ok.any() else 0.0
    if np.any(rho[ok] < -floor):
        raise NumericalError("negative density after removing the atom: the point is not certified")
    rho = np.where(ok, np.maximum(rho, 0.0), np.nan)
    if strict:
        return rho, Gs / m1, int(info["steps"].sum())
    return rho, Gs / m1, ok


def _grid(x_lo: float, x_hi: float, edge: float, n: int) -> np.ndarray:
    """Log-spaced from ``x_lo`` to ``x_hi`` (two thirds of the points) merged with a linear grid
    on ``[edge / 10, x_hi]`` (one third), which resolves the square-root edge of the support."""
    n_lin = n // 3
    lin = np.linspace(max(x_lo, 0.1 * edge), x_hi, n_lin + 1)
    log = np.geomspace(x_lo, x_hi, n - n_lin)
    g = np.unique(np.concatenate([log, lin]))
    while g.size < n:  # merged duplicates: top up with midpoints
        mid = np.sqrt(g[:-1] * g[1:])[: n - g.size]
        g = np.unique(np.concatenate([g, mid]))
    return g[:n] if g.size == n else np.unique(np.concatenate([g[: n - 1], [x_hi]]))


def _cum_from_top(x, rho):
    """``C_i = int_{x_i}^{x_K} rho dx`` by the trapezoid rule in ``log x``."""
    f = rho * x
    lx = np.log(x)
    seg = 0.5 * (f[1:] + f[:-1]) * np.diff(lx)
    return np.concatenate([np.cumsum(seg[::-1])[::-1], [0.0]])


def _validate_points(values, what: str, bounds: tuple[float, float] | None = None) -> list[float]:
    """``values`` as a list of finite floats, each in the open interval ``bounds`` when given."""
    out = []
    for v in np.atleast_1d(values if values is not None else []):
        v = float(v)
        if not math.isfinite(v):
            raise ValueError(f"{what} must be finite numbers, got {v:g}")
        if bounds is not None and not bounds[0] < v < bounds[1]:
            raise ValueError(f"{what} must lie in ({bounds[0]:g}, {bounds[1]:g}), got {v:g}")
        out.append(v)
    return out


def jacobian_spectrum(
    spec,
    points: int = 400,
    x: Sequence[float] | np.ndarray | None = None,
    y: float = DEFAULT_Y,
    cdf_at: Sequence[float] | None = None,
    quantiles: Sequence[float] | None = None,
) -> SpectrumResult:
    """Free-probability spectrum of ``J^T J`` for a NetSpec (seed 003 Thm 3.1 + Algorithm 1).

    Parameters
    ----------
    spec : NetSpec
        Widths, activations, variances and weight law (gaussian, orthogonal, correlated).
    points : int
        Size of the default grid: log-spaced from where the continuous CDF reaches ~1e-6
        (at most 12 decades below the edge, and above ``100 y``) to just past the right edge
        ``x_+`` of the support, one third of the points spaced linearly on ``[x_+/10, x_+]``.
    x : array_like, optional
        Evaluate the density here instead (CDF, quantiles and moments still use the default grid).
    y : float
        ``Im z`` at which ``-Im G / pi`` is read (default 1e-9; larger values give the density
        convolved with a Cauchy law of scale ``y``, seed 003 Fig. A.1).
    cdf_at : sequence of float, optional
        Points at which to report ``F(x)`` (atom included). Negative x give 0.
    quantiles : sequence of float, optional
        Probabilities in (0, 1); quantile ``p <= atom`` is 0.

    Returns
    -------
    SpectrumResult

    Raises
    ------
    ValueError
        Bad input, or orthogonal weights whose ``J^T J`` has a point mass away from 0
        (:func:`orthogonal_atom`) that this result cannot represent.
    NumericalError
        A point that cannot be certified (nothing uncertified is returned).
    """
    return spectrum_from_laws(_model(spec), points=points, x=x, y=y, cdf_at=cdf_at, quantiles=quantiles)


def spectrum_from_laws(
    model_or_laws,
    widths: Sequence[int] | None = None,
    sigma_w2: float | Sequence[float] | None = None,
    weights: str = "gaussian",
    *,
    points: int = 400,
    x=None,
    y: float = DEFAULT_Y,
    cdf_at=None,
    quantiles=None,
) -> SpectrumResult:
    """As :func:`jacobian_spectrum` but from explicit ``D^2`` laws (e.g. ``D2Law.hard_sine()``),
    ``widths`` ``N_0..N_L``, ``sigma_w2`` (effective, per layer or one value) and ``weights``."""
    if isinstance(model_or_laws, _Model):
        model = model_or_laws
    else:
        if widths is None or sigma_w2 is None:
            raise ValueError("give widths and sigma_w2 with a list of D^2 laws")
        model = _check_model(model_or_laws, widths, sigma_w2, weights)
    if isinstance(points, bool) or not isinstance(points, (int, np.integer)) or points < 8:
        raise ValueError(f"points must be an int >= 8, got {points!r}")
    y = float(y)
    if not (y > 0 and math.isfinite(y)):
        raise ValueError(f"y must be a finite number > 0, got {y}")
    cdf_pts = _validate_points(cdf_at, "cdf_at")
    qs = _validate_points(quantiles, "quantiles", (0.0, 1.0))
    xu = None
    if x is not None:
        xu = np.asarray(x, float).ravel()
        if xu.size == 0 or not np.all(np.isfinite(xu)) or np.any(xu <= 0):
            raise ValueError("x must be a non-empty list of finite numbers > 0")

    _check_representable(model)
    with _explain_stall(model):
        return _spectrum(model, points, xu, y, cdf_pts, qs)


@contextmanager
def _explain_stall(model: _Model):
    """Orthogonal weights: turn a lilypad stall into a message that says the likely cause."""
    try:
        yield
    except NumericalError as exc:
        if model.weights != "orthogonal" or "stalled" not in str(exc):
            raise
        raise NumericalError(_ORTHO_STALL.format(exc=exc)) from exc


def _spectrum(model: _Model, points: int, x, y: float, cdf_pts: list, qs: list) -> SpectrumResult:
    """The body of :func:`spectrum_from_laws` on validated input (``x``: None or a 1-d array > 0)."""
    eq, m1, fine = master_equation(model)
    atom = atom_at_zero(model)
    moments = closed_form_moments(model)
    edge = real_axis_edge(eq) * m1
    x_hi = 1.02 * edge
    # CDF, quantiles and moments describe the measure itself: always read at y <= DEFAULT_Y
    y_int = min(y, DEFAULT_Y)
    floor = max(edge * 1e-12, 100.0 * y_int)
    # coarse pass: where does the continuous part start?
    xc = np.geomspace(floor, x_hi, 80)
    rc, _, okc = _density(eq, m1, fine, xc, y_int, atom, edge / m1, strict=False)
    first = 0
    if not okc.all():
        # smooth laws: points far below the bulk may not be certifiable; start the grid above them
        bad = np.flatnonzero(~okc)
        first = int(bad[-1]) + 2
        if first >= xc.size - 8:
            raise NumericalError(_FINE_MSG.format(n=bad.size))
    xc, rc = xc[first:], rc[first:]
    below = (1.0 - atom) - _cum_from_top(xc, rc)
    small = np.flatnonzero(below <= 1e-6 + 1e-4 * (1.0 - atom))
    x_lo = xc[max(int(small[-1]) - 1, 0)] if small.size else xc[0]
    n_grid = points if (x is None and y == y_int) else max(points, 400)
    for _ in range(4):
        grid = _grid(x_lo, x_hi, edge, n_grid)
        rho, G, ok = _density(eq, m1, fine, grid, y_int, atom, edge / m1, strict=False)
        if ok.all():
            break
        # smooth laws: start the grid above the uncertified points
        cut = int(np.flatnonzero(~ok)[-1]) + 2
        if cut >= n_grid // 2:
            raise NumericalError(_FINE_MSG.format(n=int((~ok).sum())))
        x_lo = grid[cut]
    else:
        raise NumericalError(_FINE_MSG.format(n=int((~ok).sum())))
    cum = _cum_from_top(grid, rho)
    F = np.maximum.accumulate(np.clip(1.0 - cum, 0.0, 1.0))
    cont = cum[0]
    mass = atom + cont
    f1 = rho * grid
    lx = np.log(grid)
    mom_num = {
        "m1": float(np.sum(0.5 * (f1[1:] * grid[1:] + f1[:-1] * grid[:-1]) * np.diff(lx))),
        "m2": float(np.sum(0.5 * (f1[1:] * grid[1:] ** 2 + f1[:-1] * grid[:-1] ** 2) * np.diff(lx))),
    }

    def cdf(t: float) -> float:
        if t < 0:
            return 0.0
        if t >= grid[-1]:
            return 1.0
        if t < grid[0]:
            return atom + (F[0] - atom) * t / grid[0]
        return float(np.interp(math.log(t), lx, F))

    def quantile(p: float) -> float:
        if p <= atom:
            return 0.0
        if p <= F[0]:
            return float(grid[0] * (p - atom) / max(F[0] - atom, 1e-300))
        return float(np.exp(np.interp(p, F, lx)))

    if x is None and y == y_int:
        out_x, out_rho, out_G = grid, rho, G
    else:
        out_x = grid if x is None else x
        out_rho, out_G, _ = _density(eq, m1, fine, out_x, y, atom, edge / m1)
    return SpectrumResult(
        x=out_x,
        density=out_rho,
        atom_at_zero=atom,
        cdf={t: cdf(t) for t in cdf_pts},
        quantiles={p: quantile(p) for p in qs},
        moments=moments,
        moments_numeric=mom_num,
        mass=float(mass),
        support=(float(grid[0]), float(edge)),
        y=y,
        stieltjes=out_G,
    )
