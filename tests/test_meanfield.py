"""Depth scales, phases, gradient ratios, correlation fixed points and EOC curves, each
against an independent route: scipy's adaptive quad (1-D) and a tensor Gauss-Hermite rule
(2-D, used only at q* <~ 1.5 where 120 nodes are accurate to ~1e-9 for tanh; at larger q
tanh(sqrt(q) z) is too steep for Gauss-Hermite, which is why the library uses panels),
plus scipy's brentq."""

import math

import numpy as np
import pytest
from scipy import integrate, optimize, stats

from sigprop.theory.meanfield import (
    correlation_fixed_points,
    depth_scales,
    eoc,
    eoc_curve,
    fixed_points,
    gradient_ratio,
    phase,
)

# Probabilists' Gauss-Hermite: E[f(Z)] = sum w f(x) / sqrt(2 pi); tanh at q ~ 1 is entire
# in a wide strip, so 120 nodes give ~1e-14.
GH_X, GH_W = np.polynomial.hermite_e.hermegauss(120)
GH_W = GH_W / math.sqrt(2 * math.pi)


def gh(f, q):
    """E[f(sqrt(q) Z)] by adaptive quadrature (name kept short: the 1-D reference)."""
    s = math.sqrt(q)
    return integrate.quad(
        lambda z: f(s * z) * stats.norm.pdf(z), -40, 40, points=[0.0], epsabs=1e-15, epsrel=1e-13, limit=400
    )[0]


def gh2(f, q, c):
    z1, z2 = np.meshgrid(GH_X, GH_X, indexing="ij")
    w = np.outer(GH_W, GH_W)
    u1 = math.sqrt(q) * z1
    u2 = math.sqrt(q) * (c * z1 + math.sqrt(max(1 - c * c, 0.0)) * z2)
    return float(np.sum(w * f(u1) * f(u2)))


def dtanh(x):
    return 1 - np.tanh(x) ** 2


def V(q, sw, sb):
    return sw * gh(lambda x: np.tanh(x) ** 2, q) + sb


def q_star_ref(sw, sb):
    return optimize.brentq(lambda q: V(q, sw, sb) - q, 1e-6, 50, xtol=1e-15)


def test_depth_scales_ordered_phase():
    sw, sb = 0.8, 0.1
    qs = q_star_ref(sw, sb)
    h = 1e-5
    dv = (V(qs + h, sw, sb) - V(qs - h, sw, sb)) / (2 * h)
    chi = sw * gh(lambda x: dtanh(x) ** 2, qs)
    xi_q, xi_c = depth_scales("tanh", sw, sb)
    assert xi_q == pytest.approx(-1 / math.log(dv), rel=1e-7)
    assert xi_c == pytest.approx(-1 / math.log(chi), rel=1e-10)
    assert phase("tanh", sw, sb) == "ordered"


def test_depth_scale_and_correlation_fixed_point_chaotic_phase():
    sw, sb = 2.0, 0.05
    qs = q_star_ref(sw, sb)
    assert qs < 1.5  # keeps the Gauss-Hermite reference accurate

    def R(c):
        return (sw * gh2(np.tanh, qs, c) + sb) / qs

    c_star = optimize.brentq(lambda c: R(c) - c, 0.0, 0.999, xtol=1e-14)
    slope = sw * gh2(dtanh, qs, c_star)
    fps = correlation_fixed_points("tanh", sw, sb, qs)
    stable = [fp for fp in fps if fp.stable]
    assert len(stable) == 1 and stable[0].q == pytest.approx(c_star, abs=1e-7)
    assert stable[0].dV == pytest.approx(slope, rel=1e-7)
    # c = 1 is a fixed point too, unstable because chi_1 > 1
    assert fps[-1].q == pytest.approx(1.0) and not fps[-1].stable
    _, xi_c = depth_scales("tanh", sw, sb)
    assert xi_c == pytest.approx(-1 / math.log(slope), rel=1e-6)
    assert phase("tanh", sw, sb) == "chaotic"


def test_phase_around_the_eoc_curve():
    sb = np.array([0.01, 0.05, 0.2])
    sw, qs = eoc_curve("tanh", sb)
    # independent: chi_1(q*) = 1 and V(q*) = q* by Gauss-Hermite
    for w, b, q in zip(sw, sb, qs, strict=True):
        assert w * gh(lambda x: dtanh(x) ** 2, q) == pytest.approx(1.0, abs=1e-10)
        assert V(q, w, b) == pytest.approx(q, rel=1e-10)
    ph = phase("tanh", np.concatenate([sw * 0.9, sw * 1.1]), np.concatenate([sb, sb]))
    assert list(ph) == ["ordered"] * 3 + ["chaotic"] * 3


def test_eoc_curve_marks_missing_points_and_matches_eoc():
    sw, qs = eoc_curve("tanh", [0.05])
    p = eoc("tanh", sigma_b2=0.05)
    assert sw[0] == pytest.approx(p.sigma_w2, rel=1e-12) and qs[0] == pytest.approx(p.q_star, rel=1e-12)
    sw, qs = eoc_curve("relu_tau", [0.0, 0.1])
    # relu_tau(tau=0) is ReLU: no EOC with sigma_b2 > 0 -> NaN, never an arbitrary value
    assert np.isnan(sw[1]) and np.isnan(qs[1])


def test_gradient_ratio_follows_the_variance_trajectory():
    sw, sb, q0, depth = 1.5, 0.02, 2.0, 12
    q = sw * q0 + sb
    ref = 1.0
    for _ in range(depth):
        ref *= sw * gh(lambda x: dtanh(x) ** 2, q)
        q = V(q, sw, sb)
    assert gradient_ratio("tanh", sw, sb, depth, q0=q0) == pytest.approx(ref, rel=1e-10)
    qs = q_star_ref(sw, sb)
    chi = sw * gh(lambda x: dtanh(x) ** 2, qs)
    assert gradient_ratio("tanh", sw, sb, depth) == pytest.approx(chi**depth, rel=1e-9)
    with pytest.raises(ValueError, match="depth"):
        gradient_ratio("tanh", sw, sb, -1)


def test_fixed_points_bifurcation_cst():
    # seed 004 Fig. 4(b): CST at s = 0.85 with m chosen for V'(q*) = 0.9 has two more
    # fixed points (an unstable one near q* and a stable one further out).
    from sigprop.theory.calibrate import calibrate_sparse

    cal = calibrate_sparse("cst", 0.85, 0.9)[0]
    act = cal.activation()
    fps = fixed_points(act, cal.sigma_w2, cal.sigma_b2)
    assert len(fps) == 3 and cal.n_fixed_points == 3 and not cal.stable
    assert [fp.stable for fp in fps] == [True, False, True]

    # independently: V(q) - q changes sign at each root (piecewise-linear V by scipy quad)
    def v(q):
        s = math.sqrt(q)
        pts = [k / s for k in act.kinks]
        e = integrate.quad(lambda z: act.phi(s * z) ** 2 * stats.norm.pdf(z), -20, 20, points=pts, limit=200)[0]
        return cal.sigma_w2 * e + cal.sigma_b2

    for fp in fps:
        lo, hi = fp.q * (1 - 1e-4), fp.q * (1 + 1e-4)
        assert (v(lo) - lo) * (v(hi) - hi) < 0


def test_eoc_given_bias_for_thresholded_activation():
    # E[phi'^2] underflows at tiny q for relu_tau, which once faked a root; the EOC point
    # must satisfy Table 1's chi_1 = sigma_w2 Phi(-tau/sqrt(q*)) = 1 and V(q*) = q*.
    tau, sb = 0.5, 0.1
    p = eoc("relu_tau", sigma_b2=sb, tau=tau)
    assert p.sigma_w2 * stats.norm.cdf(-tau / math.sqrt(p.q_star)) == pytest.approx(1.0, rel=1e-12)
    e2 = integrate.quad(
        lambda x: (x - tau) ** 2 * stats.norm.pdf(x, scale=math.sqrt(p.q_star)), tau, np.inf, epsabs=1e-14
    )[0]
    assert p.sigma_w2 * e2 + sb == pytest.approx(p.q_star, rel=1e-9)


def test_no_spurious_fixed_points_where_v_is_linear_to_rounding():
    # hard_tanh with sigma_w2 = 1, sigma_b2 = 0: V(q) = q - O(exp(-1/(2q))) < q for q > 0
    # (strictly: E[hard_tanh(X)^2] < E[X^2]), so q = 0 is the only fixed point.
    fps = fixed_points("hard_tanh", 1.0, 0.0)
    assert [fp.q for fp in fps] == [0.0]


def test_bivariate_rejects_unknown_integrand():
    from sigprop.theory.activations import get_activation
    from sigprop.theory.gaussian import expect_bivariate

    with pytest.raises(ValueError, match="'phi' or 'dphi'"):
        expect_bivariate(get_activation("relu"), "phi2", 1.0, 1.0, 0.5)


@pytest.mark.parametrize(
    "name, sw, expected",
    [
        # V(q) = sw E[phi(sqrt q Z)^2] with phi = a x + b x^3 / 6 + ...: V''(0) = 2 b / a at sw = 1 / a^2
        ("tanh", 1.0, -4.0),  # a = 1, b = -2
        ("erf", math.pi / 4, -4.0),  # a = 2 / sqrt(pi), b = -4 / sqrt(pi)
        ("hard_tanh", 1.0, 0.0),  # linear near 0: V(q) = q up to exp(-1/(2q)) terms
    ],
)
def test_eoc_at_zero_second_derivative_is_the_limit(name, sw, expected):
    p = eoc(name, sigma_b2=0.0)
    assert p.q_star == 0.0 and p.sigma_w2 == pytest.approx(sw, rel=1e-12)
    assert p.d2V == pytest.approx(expected, abs=2e-9)
    # q = 0 attracts: V(q) < q just right of it for all three
    assert p.stable is True
