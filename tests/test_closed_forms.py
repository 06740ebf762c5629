"""Closed forms of seed 004 (Price et al.) Table 1 and eqs. 13-18, the ReLU Edge of Chaos, EOC
points of smooth activations and correlation maps, each against an independent route written
here (closed forms derived in the docstrings, ``scipy.integrate.quad``, ``scipy.optimize.brentq``,
Monte Carlo with a standard-error tolerance), never against a stored output of sigprop.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import integrate, optimize, special

from sigprop.theory import (
    calibrate_sparse,
    chi1,
    correlation_map,
    correlation_map_slope,
    eoc,
    eoc_from_q,
    get_activation,
    sparsity,
    tau_for_sparsity,
    variance_map_derivatives,
)
from sigprop.theory.activations import SELU_ALPHA, SELU_SCALE

SQRT2PI = math.sqrt(2.0 * math.pi)


def Phi(x):
    return special.ndtr(x)


def p_q(x, q):
    """N(0, q) density."""
    return np.exp(-np.square(x) / (2.0 * q)) / np.sqrt(2.0 * np.pi * q)


# ----------------------------------------------------------------------------------------
# Independent 1-D Gaussian expectations by adaptive quadrature
# ----------------------------------------------------------------------------------------
def gauss_expect(f, q, breaks=()):
    """E[f(X)], X ~ N(0, q), by quad in z = X / sqrt(q) on the intervals between ``breaks``
    (kinks of f, in x)."""
    sq = math.sqrt(q)
    edges = [-math.inf, *sorted(b / sq for b in breaks), math.inf]
    total = 0.0
    for lo, hi in itertools.pairwise(edges):
        if hi <= lo:
            continue
        val, _ = integrate.quad(
            lambda z: f(sq * z) * math.exp(-0.5 * z * z) / SQRT2PI, lo, hi, epsabs=1e-15, epsrel=1e-12, limit=200
        )
        total += val
    return total


# Piecewise-linear activations written out independently: pieces (lo, hi, slope, intercept)
def pl_pieces(name, **p):
    inf = math.inf
    if name == "relu":
        return [(-inf, 0.0, 0.0, 0.0), (0.0, inf, 1.0, 0.0)]
    if name == "relu_tau":
        t = p["tau"]
        return [(-inf, t, 0.0, 0.0), (t, inf, 1.0, -t)]
    if name == "st_tau":
        t = p["tau"]
        return [(-inf, -t, 1.0, t), (-t, t, 0.0, 0.0), (t, inf, 1.0, -t)]
    if name == "crelu":
        t, m = p["tau"], p["m"]
        return [(-inf, t, 0.0, 0.0), (t, t + m, 1.0, -t), (t + m, inf, 0.0, m)]
    if name == "cst":
        t, m = p["tau"], p["m"]
        return [
            (-inf, -t - m, 0.0, -m),
            (-t - m, -t, 1.0, t),
            (-t, t, 0.0, 0.0),
            (t, t + m, 1.0, -t),
            (t + m, inf, 0.0, m),
        ]
    if name == "hard_tanh":
        return [(-inf, -1.0, 0.0, -1.0), (-1.0, 1.0, 1.0, 0.0), (1.0, inf, 0.0, 1.0)]
    raise AssertionError(name)


def pl_eval(pieces, x, deriv=False):
    x = np.asarray(x, float)
    out = np.zeros_like(x)
    for lo, hi, a, b in pieces:
        inside = (x > lo) & (x <= hi)
        out = np.where(inside, a if deriv else a * x + b, out)
    return out


def pl_kinks(pieces):
    return [p[1] for p in pieces[:-1]]


# ----------------------------------------------------------------------------------------
# Table 1: ReLU_tau and ST_tau
# ----------------------------------------------------------------------------------------
def dv_table1(kind, tau, q, sw):
    """Table 1, column V'(q): sigma_w2 Phi(-tau/sqrt q) (ReLU_tau), 2 sigma_w2 Phi(-tau/sqrt q) (ST_tau)."""
    return (1.0 if kind == "relu_tau" else 2.0) * sw * Phi(-tau / math.sqrt(q))


def d2v_derived(kind, tau, q, sw):
    """V''(q), derived here: d/dq Phi(-tau/sqrt q) = tau q^{-3/2} phi(tau/sqrt q) / 2, so

    ReLU_tau: V''(q) = sigma_w2 tau exp(-tau^2/(2q)) / (2 sqrt(2 pi) q^{3/2}),
    ST_tau:   V''(q) = twice that (two symmetric thresholds).
    """
    base = sw * tau * math.exp(-tau * tau / (2.0 * q)) / (2.0 * SQRT2PI * q**1.5)
    return base if kind == "relu_tau" else 2.0 * base


def d2v_table1_printed(kind, tau, q):
    """Table 1, column V''(q), as printed (sigma_w2 already eliminated via chi_1 = 1).

    ReLU_tau: Phi(-tau/sqrt q)^{-1} tau e^{-tau^2/2q} / (2 sqrt(2 pi) q^{3/2})   (correct)
    ST_tau:   2 Phi(-tau/sqrt q)^{-1} tau e^{-tau^2/2q} / (2 sqrt(2 pi) q^{3/2}) (twice too big)
    """
    base = tau * math.exp(-tau * tau / (2.0 * q)) / (2.0 * SQRT2PI * q**1.5) / Phi(-tau / math.sqrt(q))
    return base if kind == "relu_tau" else 2.0 * base


TAUS_QS = [(tau, q) for tau in (0.0, 0.3, 1.1) for q in (0.4, 1.0, 2.5)]


@pytest.mark.parametrize("kind", ["relu_tau", "st_tau"])
@pytest.mark.parametrize(("tau", "q"), TAUS_QS)
def test_table1_dv_and_chi1(kind, tau, q):
    sw, sb = 1.7, 0.2
    act = get_activation(kind, tau=tau)
    _v, dv, _d2v = variance_map_derivatives(act, q, sw, sb)
    assert float(dv) == pytest.approx(dv_table1(kind, tau, q, sw), rel=1e-11, abs=1e-14)
    # chi_1 has the same expression at q = q* (Table 1, column 2)
    assert float(chi1(act, q, sw)) == pytest.approx(dv_table1(kind, tau, q, sw), rel=1e-11, abs=1e-14)


@pytest.mark.parametrize("kind", ["relu_tau", "st_tau"])
@pytest.mark.parametrize(("tau", "q"), TAUS_QS)
def test_derived_d2v_against_quadrature_and_sigprop(kind, tau, q):
    sw, sb = 1.7, 0.2
    pieces = pl_pieces(kind, tau=tau)
    # numerical check of the derivation: central differences of quad-based V(q) and of Table 1's V'(q)
    h = 1e-3 * q

    def v(qq):
        return sw * gauss_expect(lambda x: pl_eval(pieces, x) ** 2, qq, pl_kinks(pieces)) + sb

    fd_dv = (v(q + h) - v(q - h)) / (2 * h)
    fd_d2v = (dv_table1(kind, tau, q + h, sw) - dv_table1(kind, tau, q - h, sw)) / (2 * h)
    assert fd_dv == pytest.approx(dv_table1(kind, tau, q, sw), abs=1e-6)
    assert fd_d2v == pytest.approx(d2v_derived(kind, tau, q, sw), abs=1e-6)
    _v, _dv, d2v = variance_map_derivatives(get_activation(kind, tau=tau), q, sw, sb)
    assert float(d2v) == pytest.approx(d2v_derived(kind, tau, q, sw), rel=1e-9, abs=1e-13)


@pytest.mark.parametrize("kind", ["relu_tau", "st_tau"])
@pytest.mark.parametrize("s", [0.6, 0.75, 0.9])
@pytest.mark.parametrize("q_star", [0.5, 1.0, 2.0])
def test_table1_eoc(kind, s, q_star):
    """On the EOC: tau_hat(s, q*) as in Table 1, sigma_w2 = 1/(1-s), V'(q*) = chi_1 = 1, and
    V''(q*) equals Table 1's ReLU_tau expression for *both* families.

    Erratum: Table 1 prints V''(q) for ST_tau as 2 Phi(-tau/sqrt q)^{-1} tau e^{-tau^2/2q} /
    (2 sqrt(2 pi) q^{3/2}). With sigma_w2 free, V''_ST = 2 V''_ReLU_tau (d2v_derived), but on
    the EOC sigma_w2 = 1 / (2 Phi(-tau/sqrt q*)) for ST_tau versus 1 / Phi(-tau/sqrt q*) for
    ReLU_tau, so the factor 2 cancels: the ReLU_tau row's expression holds for both, and the
    printed ST_tau entry is twice the true EOC value (Table 2's ST_tau V'' column, e.g. 0.43
    at s = 0.5, uses the correct value; see test_tables.py).
    """
    tau = float(tau_for_sparsity(kind, s, q_star))
    # Table 1 column tau_hat: sqrt(q*) Phi^-1(s) / sqrt(2 q*) erfinv(s), checked through its defining
    # property (12): P(phi(X) = 0) = s for X ~ N(0, q*)
    x = tau / math.sqrt(q_star)
    zero_mass = Phi(x) if kind == "relu_tau" else Phi(x) - Phi(-x)
    assert zero_mass == pytest.approx(s, abs=1e-13)
    act = get_activation(kind, tau=tau)
    assert float(sparsity(act, q_star)) == pytest.approx(s, abs=1e-12)

    sw, sb = (float(v) for v in eoc_from_q(act, q_star))
    assert sw == pytest.approx(1.0 / (1.0 - s), rel=1e-12)
    (rec,) = calibrate_sparse(kind, s, q_star=q_star, fixed_point_analysis=False)
    assert rec.sigma_w2 == pytest.approx(1.0 / (1.0 - s), rel=1e-12)
    # sigma_b2 makes q* a fixed point: q* = sigma_w2 E[phi^2] + sigma_b2 (E by quadrature)
    pieces = pl_pieces(kind, tau=tau)
    e_phi2 = gauss_expect(lambda x: pl_eval(pieces, x) ** 2, q_star, pl_kinks(pieces))
    assert sb == pytest.approx(q_star - sw * e_phi2, abs=1e-10)

    _v, dv, d2v = variance_map_derivatives(act, q_star, sw, sb)
    assert float(dv) == pytest.approx(1.0, abs=1e-12)
    assert float(chi1(act, q_star, sw)) == pytest.approx(1.0, abs=1e-12)
    true_d2v = d2v_derived(kind, tau, q_star, sw)
    assert float(d2v) == pytest.approx(true_d2v, rel=1e-9)
    assert true_d2v == pytest.approx(d2v_table1_printed("relu_tau", tau, q_star), rel=1e-12)
    if kind == "st_tau":
        assert d2v_table1_printed("st_tau", tau, q_star) == pytest.approx(2.0 * true_d2v, rel=1e-12)
        assert float(d2v) < 0.75 * d2v_table1_printed("st_tau", tau, q_star)


# ----------------------------------------------------------------------------------------
# Eqs. 13-18: CReLU / CST
# ----------------------------------------------------------------------------------------
def dv_crelu_eq13(tau, m, q, sw):
    """Eq. 13: sigma_w2 (-m/sqrt(2 pi q) e^{-(m+tau)^2/2q} + (erf((m+tau)/sqrt(2q)) - erf(tau/sqrt(2q)))/2)."""
    r = math.sqrt(2.0 * q)
    return sw * (
        -m / math.sqrt(2.0 * math.pi * q) * math.exp(-((m + tau) ** 2) / (2.0 * q))
        + 0.5 * (math.erf((m + tau) / r) - math.erf(tau / r))
    )


def chi1_crelu_eq15(tau, m, q, sw):
    """Eq. 15: sigma_w2/2 (erf((m+tau)/sqrt(2q*)) - erf(tau/sqrt(2q*)))."""
    r = math.sqrt(2.0 * q)
    return 0.5 * sw * (math.erf((m + tau) / r) - math.erf(tau / r))


@pytest.mark.parametrize(("tau", "m", "q"), [(0.25, 1.22, 1.0), (0.84, 0.89, 0.6), (0.0, 2.0, 3.0), (1.44, 0.67, 1.4)])
def test_eqs_13_to_18(tau, m, q):
    sw, sb = 2.3, 0.4
    crelu = get_activation("crelu", tau=tau, m=m)
    cst = get_activation("cst", tau=tau, m=m)
    _, dv_r, _ = variance_map_derivatives(crelu, q, sw, sb)
    _, dv_c, _ = variance_map_derivatives(cst, q, sw, sb)
    c_r, c_c = float(chi1(crelu, q, sw)), float(chi1(cst, q, sw))
    dv13 = dv_crelu_eq13(tau, m, q, sw)
    chi15 = chi1_crelu_eq15(tau, m, q, sw)
    assert float(dv_r) == pytest.approx(dv13, rel=1e-10)  # eq. 13
    # eq. 14 is garbled in the paper ("V'_CST = 2 V'_CST"); it should read V'_CST = 2 V'_CReLU
    # at equal sigma_w2 (E[cst(X)^2] = 2 E[crelu(X)^2] by symmetry)
    assert float(dv_c) == pytest.approx(2.0 * dv13, rel=1e-10)
    assert c_r == pytest.approx(chi15, rel=1e-11)  # eq. 15
    assert c_c == pytest.approx(2.0 * chi15, rel=1e-11)  # eq. 16
    gap = sw * m / math.sqrt(2.0 * math.pi * q) * math.exp(-((m + tau) ** 2) / (2.0 * q))
    assert c_r - float(dv_r) == pytest.approx(gap, rel=1e-9)  # eq. 17
    assert c_c - float(dv_c) == pytest.approx(
        math.sqrt(2.0) * sw * m / math.sqrt(math.pi * q) * math.exp(-((m + tau) ** 2) / (2.0 * q)), rel=1e-9
    )  # eq. 18
    # eq. 13 itself against quadrature (finite difference of quad-based V)
    pieces = pl_pieces("crelu", tau=tau, m=m)
    h = 1e-3 * q

    def v(qq):
        return sw * gauss_expect(lambda x: pl_eval(pieces, x) ** 2, qq, pl_kinks(pieces))

    assert (v(q + h) - v(q - h)) / (2 * h) == pytest.approx(dv13, abs=1e-6)


# ----------------------------------------------------------------------------------------
# ReLU: a line of EOC points
# ----------------------------------------------------------------------------------------
def test_relu_eoc_is_degenerate():
    p = eoc("relu", sigma_b2=0.0)
    # chi_1 = sigma_w2 E[1{X > 0}] = sigma_w2 / 2 = 1
    assert p.sigma_w2 == pytest.approx(2.0, abs=1e-12)
    assert p.sigma_b2 == 0.0
    assert p.q_star is None
    assert p.note is not None and "every q" in p.note
    # every q is indeed a fixed point: V(q) = 2 E[relu(X)^2] = q (quadrature)
    for q in (0.1, 1.0, 7.0):
        v = p.sigma_w2 * gauss_expect(lambda x: max(x, 0.0) ** 2, q, (0.0,))
        assert v == pytest.approx(q, rel=1e-10)


def test_relu_no_eoc_with_bias():
    with pytest.raises(ValueError):
        eoc("relu", sigma_b2=0.1)


# ----------------------------------------------------------------------------------------
# Smooth activations: EOC against an independent quad + brentq solver
# ----------------------------------------------------------------------------------------
def _selu(x):
    return SELU_SCALE * (x if x > 0 else SELU_ALPHA * math.expm1(x))


def _dselu(x):
    return SELU_SCALE * (1.0 if x > 0 else SELU_ALPHA * math.exp(x))


def _d2selu(x):
    return 0.0 if x > 0 else SELU_SCALE * SELU_ALPHA * math.exp(x)


def _tanh(x):
    return math.tanh(x)


def _dtanh(x):
    return 1.0 - math.tanh(x) ** 2


def _d2tanh(x):
    t = math.tanh(x)
    return -2.0 * t * (1.0 - t * t)


def _derf(x):
    return 2.0 / math.sqrt(math.pi) * math.exp(-x * x)


def _d2erf(x):
    return -4.0 / math.sqrt(math.pi) * x * math.exp(-x * x)


# name -> (phi, phi', phi'', breakpoints). selu's phi' jumps at 0 where phi(0) = 0, so
# phi phi'' has no delta term there.
SMOOTH = {
    "tanh": (_tanh, _dtanh, _d2tanh, ()),
    "erf": (math.erf, _derf, _d2erf, ()),
    "selu": (_selu, _dselu, _d2selu, (0.0,)),
}


def ref_smooth_eoc_from_q(name, q):
    """(sigma_w2, sigma_b2, V'(q*)) with chi_1 = 1 and V(q*) = q* at q* = q.

    V'(q) = sigma_w2 E[phi'^2 + phi phi''] (d/dq E[g] = E[g'']/2 with g = phi^2)."""
    f, df, d2f, br = SMOOTH[name]
    e_d2 = gauss_expect(lambda x: df(x) ** 2, q, br)
    sw = 1.0 / e_d2
    sb = q - sw * gauss_expect(lambda x: f(x) ** 2, q, br)
    dv = sw * (e_d2 + gauss_expect(lambda x: f(x) * d2f(x), q, br))
    return sw, sb, dv


def ref_smooth_eoc_from_b(name, sb):
    """Smallest q* > 0 with q* - E[phi^2]/E[phi'^2] = sigma_b2: scan a log grid, then brentq."""

    def g(q):
        return ref_smooth_eoc_from_q(name, q)[1] - sb

    qs = np.geomspace(1e-3, 1e2, 41)
    vals = [g(q) for q in qs]
    i = next(i for i in range(len(qs) - 1) if vals[i] * vals[i + 1] < 0)
    q = optimize.brentq(g, qs[i], qs[i + 1], xtol=1e-14, rtol=1e-13)
    return q, ref_smooth_eoc_from_q(name, q)[0]


@pytest.mark.parametrize("name", ["tanh", "erf", "selu"])
@pytest.mark.parametrize("sb", [0.01, 0.05, 0.3])
def test_smooth_eoc_from_sigma_b2(name, sb):
    q_ref, sw_ref = ref_smooth_eoc_from_b(name, sb)
    p = eoc(name, sigma_b2=sb)
    assert p.q_star == pytest.approx(q_ref, rel=1e-8)
    assert p.sigma_w2 == pytest.approx(sw_ref, rel=1e-8)
    assert p.sigma_b2 == sb
    assert p.chi1 == pytest.approx(1.0, abs=1e-9)
    assert p.dV == pytest.approx(ref_smooth_eoc_from_q(name, q_ref)[2], rel=1e-7)


@pytest.mark.parametrize("name", ["tanh", "erf", "selu"])
@pytest.mark.parametrize("q_star", [0.1, 1.0, 3.0])
def test_smooth_eoc_from_q_star(name, q_star):
    sw_ref, sb_ref, dv_ref = ref_smooth_eoc_from_q(name, q_star)
    p = eoc(name, q_star=q_star)
    assert p.q_star == q_star
    assert p.sigma_w2 == pytest.approx(sw_ref, rel=1e-10)
    assert p.sigma_b2 == pytest.approx(sb_ref, rel=1e-8, abs=1e-12)
    assert p.dV == pytest.approx(dv_ref, rel=1e-9)
    assert p.chi1 == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("q_star", [0.05, 0.5, 1.0, 4.0])
def test_erf_eoc_closed_form(q_star):
    """erf: E[erf'(X)^2] = 4 / (pi sqrt(1 + 4q)), E[erf(X)^2] = (2/pi) arcsin(2q / (1 + 2q))."""
    sw = math.pi * math.sqrt(1.0 + 4.0 * q_star) / 4.0
    sb = q_star - sw * 2.0 / math.pi * math.asin(2.0 * q_star / (1.0 + 2.0 * q_star))
    got_sw, got_sb = eoc_from_q("erf", q_star)
    assert float(got_sw) == pytest.approx(sw, rel=1e-12)
    assert float(got_sb) == pytest.approx(sb, rel=1e-10)


@pytest.mark.parametrize(("name", "sw0"), [("tanh", 1.0), ("erf", math.pi / 4.0)])
def test_smooth_eoc_zero_bias(name, sw0):
    """sigma_b2 = 0: q* = 0 and sigma_w2 = 1/phi'(0)^2 (the limit of 1/E[phi'(sqrt q Z)^2])."""
    p = eoc(name, sigma_b2=0.0)
    assert p.q_star == 0.0
    assert p.sigma_w2 == pytest.approx(sw0, rel=1e-12)
    assert ref_smooth_eoc_from_q(name, 1e-8)[0] == pytest.approx(sw0, rel=1e-6)


def test_selu_eoc_zero_bias():
    p = eoc("selu", sigma_b2=0.0)
    sw0 = 2.0 / (SELU_SCALE**2 * (1.0 + SELU_ALPHA**2))
    assert ref_smooth_eoc_from_q("selu", 1e-8)[0] == pytest.approx(sw0, rel=1e-3)
    assert p.sigma_w2 == pytest.approx(sw0, rel=1e-6)
    # chi_1 at q -> 0 must be 1 on the EOC
    assert float(chi1("selu", 1e-8, p.sigma_w2)) == pytest.approx(1.0, abs=1e-3)


# ----------------------------------------------------------------------------------------
# Correlation maps
# ----------------------------------------------------------------------------------------
CS = [-1.0, -0.7, -0.2, 0.0, 0.3, 0.8, 0.99, 1.0]


@pytest.mark.parametrize("q", [0.5, 2.0])
def test_relu_arccos_kernel(q):
    """Cho & Saul: E[relu(u1) relu(u2)] = q/(2 pi) (sqrt(1-c^2) + (pi - arccos c) c) and
    E[1{u1>0} 1{u2>0}] = (pi - arccos c) / (2 pi)."""
    sw, sb = 2.0, 0.1
    c = np.linspace(-1.0, 1.0, 21)
    k = q / (2.0 * np.pi) * (np.sqrt(1.0 - c**2) + (np.pi - np.arccos(c)) * c)
    np.testing.assert_allclose(correlation_map("relu", c, q, sw, sb), (sw * k + sb) / q, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(
        correlation_map_slope("relu", c, q, sw), sw * (np.pi - np.arccos(c)) / (2.0 * np.pi), rtol=1e-11, atol=1e-13
    )


def cond_expect(pieces, mu, s, deriv):
    """E[F(Y)] for Y ~ N(mu, s^2), F = phi (or phi') of a piecewise-linear function:
    sum over pieces of (a mu + b) P(piece) + a s (pdf(alpha) - pdf(beta))  (or a P(piece))."""
    total = 0.0
    for lo, hi, a, b in pieces:
        al = -math.inf if math.isinf(lo) else (lo - mu) / s
        be = math.inf if math.isinf(hi) else (hi - mu) / s
        mass = Phi(be) - Phi(al)
        if deriv:
            total += a * mass
        else:
            dens = (0.0 if math.isinf(al) else math.exp(-al * al / 2)) - (
                0.0 if math.isinf(be) else math.exp(-be * be / 2)
            )
            total += (a * mu + b) * mass + a * s * dens / SQRT2PI
    return total


def pl_bivariate(pieces, q, c, deriv=False):
    """E[F(u1) F(u2)], u_i ~ N(0, q), corr c: quad over u1 of F(u1) E[F(u2) | u1] (conditional
    closed form); c = +-1 reduces to a 1-D quad."""
    kinks = pl_kinks(pieces)

    def F(x):
        return float(pl_eval(pieces, x, deriv))

    if abs(c) == 1.0:
        return gauss_expect(lambda x: F(x) * F(c * x), q, kinks + [-k for k in kinks])
    s = math.sqrt(q * (1.0 - c * c))
    return gauss_expect(lambda x: F(x) * cond_expect(pieces, c * x, s, deriv), q, kinks)


PL_CASES = [
    ("crelu", {"tau": 0.5, "m": 1.2}),
    ("cst", {"tau": 0.6, "m": 0.9}),
    ("hard_tanh", {}),
    ("st_tau", {"tau": 0.7}),
]


@pytest.mark.parametrize(("name", "params"), PL_CASES, ids=[c[0] for c in PL_CASES])
@pytest.mark.parametrize("q", [0.6, 1.7])
def test_piecewise_linear_correlation_map(name, params, q):
    sw, sb = 1.9, 0.15
    act = get_activation(name, **params)
    pieces = pl_pieces(name, **params)
    got = correlation_map(act, np.array(CS), q, sw, sb)
    got_slope = correlation_map_slope(act, np.array(CS), q, sw)
    for i, c in enumerate(CS):
        ref = (sw * pl_bivariate(pieces, q, c) + sb) / q
        ref_slope = sw * pl_bivariate(pieces, q, c, deriv=True)
        assert got[i] == pytest.approx(ref, abs=1e-9), c
        assert got_slope[i] == pytest.approx(ref_slope, abs=1e-9), c


@pytest.mark.parametrize("name", ["tanh", "erf"])
def test_smooth_correlation_map_monte_carlo(name):
    """Monte Carlo with a tolerance of 5 standard errors estimated from the sample."""
    if name == "tanh":
        fv, dfv = np.tanh, lambda x: 1.0 - np.tanh(x) ** 2
    else:
        fv, dfv = special.erf, lambda x: 2.0 / np.sqrt(np.pi) * np.exp(-(x**2))
    q, sw, sb, n = 1.3, 1.8, 0.1, 200_000
    rng = np.random.default_rng(20240611)
    z1, z2 = rng.standard_normal(n), rng.standard_normal(n)
    for c in (-0.6, 0.2, 0.9, 1.0):
        u1 = math.sqrt(q) * z1
        u2 = math.sqrt(q) * (c * z1 + math.sqrt(max(1.0 - c * c, 0.0)) * z2)
        for vals, got, scale, shift in (
            (fv(u1) * fv(u2), correlation_map(name, c, q, sw, sb), sw / q, sb / q),
            (dfv(u1) * dfv(u2), correlation_map_slope(name, c, q, sw), sw, 0.0),
        ):
            mean = scale * vals.mean() + shift
            se = scale * vals.std(ddof=1) / math.sqrt(n)
            assert abs(float(got) - mean) <= 5.0 * se, (c, float(got), mean, se)


@pytest.mark.parametrize("q", [0.05, 1.3, 10.0])
def test_erf_correlation_map_closed_form(q):
    """Williams (1997): E[erf(u1) erf(u2)] = (2/pi) arcsin(2 c q / (1 + 2 q))."""
    c = np.array(CS)
    ref = 2.0 / np.pi * np.arcsin(2.0 * c * q / (1.0 + 2.0 * q))
    np.testing.assert_allclose(correlation_map("erf", c, q, 1.0, 0.0) * q, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["tanh", "erf"])
def test_smooth_edge_correlation_at_large_q(name):
    q, sw = 1e3, 1.0
    f, df, _, br = SMOOTH[name]
    chi_ref = sw * gauss_expect(lambda x: df(x) ** 2, q, br)
    v_ref = sw * gauss_expect(lambda x: f(x) ** 2, q, br)
    assert float(chi1(name, q, sw)) == pytest.approx(chi_ref, rel=1e-6)  # the univariate engine is fine
    assert float(correlation_map(name, 1.0, q, sw, 0.0)) * q == pytest.approx(v_ref, rel=1e-6)
    assert float(correlation_map_slope(name, 1.0, q, sw)) == pytest.approx(chi_ref, rel=1e-6)


ALL_ACTS = [
    ("tanh", {}),
    ("erf", {}),
    ("selu", {}),
    ("crelu", {"tau": 0.5, "m": 1.2}),
    ("cst", {"tau": 0.6, "m": 0.9}),
    ("relu_tau", {"tau": 0.4}),
    ("hard_tanh", {}),
]


@pytest.mark.parametrize(("name", "params"), ALL_ACTS, ids=[a[0] for a in ALL_ACTS])
@pytest.mark.parametrize("q", [0.3, 2.0])
def test_slope_at_one_is_chi1_and_price(name, params, q):
    sw = 1.6
    act = get_activation(name, **params)
    c1 = float(chi1(act, q, sw))
    assert float(correlation_map_slope(act, 1.0, q, sw)) == pytest.approx(c1, rel=1e-9)
    # chi_1 by quadrature of phi'^2 (independent of the bivariate engine)
    if name in SMOOTH:
        _, df, _, br = SMOOTH[name]
        ref = sw * gauss_expect(lambda x: df(x) ** 2, q, br)
    else:
        pieces = pl_pieces(name, **params)
        ref = sw * gauss_expect(lambda x: float(pl_eval(pieces, x, True)) ** 2, q, pl_kinks(pieces))
    assert c1 == pytest.approx(ref, rel=1e-9)
    # Price's theorem: R'(c) is the c-derivative of R(c) (central differences at interior c)
    h = 1e-5
    for c in (-0.5, 0.1, 0.7):
        fd = (correlation_map(act, c + h, q, sw, 0.0) - correlation_map(act, c - h, q, sw, 0.0)) / (2 * h)
        assert float(correlation_map_slope(act, c, q, sw)) == pytest.approx(float(fd), abs=1e-6)


@pytest.mark.parametrize(
    ("name", "params", "sb"),
    [("tanh", {}, 0.05), ("erf", {}, 0.3), ("selu", {}, 0.05), ("crelu", {"tau": 0.5, "m": 1.2}, None)],
)
def test_correlation_map_at_one_is_variance_map(name, params, sb):
    """R(1) = V(q)/q for every q; at the EOC fixed point q* it is 1."""
    act = get_activation(name, **params)
    if sb is None:
        q_star = 1.0
        sw, sb = (float(v) for v in eoc_from_q(act, q_star))
    else:
        p = eoc(name, sigma_b2=sb)
        q_star, sw = p.q_star, p.sigma_w2
    if name in SMOOTH:
        f, _, _, br = SMOOTH[name]
    else:
        pieces = pl_pieces(name, **params)
        br = pl_kinks(pieces)

        def f(x):
            return float(pl_eval(pieces, x))

    for q in (q_star, 0.4 * q_star, 3.0 * q_star):
        v_ref = sw * gauss_expect(lambda x: f(x) ** 2, q, br) + sb
        assert float(correlation_map(act, 1.0, q, sw, sb)) == pytest.approx(v_ref / q, rel=1e-9)
        v_sigprop = variance_map_derivatives(act, q, sw, sb, order=0)[0]
        assert float(correlation_map(act, 1.0, q, sw, sb)) == pytest.approx(float(v_sigprop) / q, rel=1e-12)
    assert float(correlation_map(act, 1.0, q_star, sw, sb)) == pytest.approx(1.0, abs=1e-8)
