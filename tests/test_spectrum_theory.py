"""Free-probability spectrum of J^T J (sigprop.theory.spectrum / freeprob).

Every quantity is checked against an independent route: closed forms (Marchenko-Pastur,
Fuss-Catalan), numerical integration of the density, the Cauchy convolution of the density, a
rigorous-vs-sampled bound, and Monte Carlo on random networks built here with plain NumPy.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import special

from sigprop.errors import NumericalError
from sigprop.netspec import NetSpec
from sigprop.theory import freeprob as fp
from sigprop.theory.meanfield import eoc
from sigprop.theory.spectrum import (
    D2Law,
    _grid,
    _model,
    closed_form_moments,
    jacobian_spectrum,
    layer_laws,
    master_equation,
    orthogonal_atom,
    spectrum_from_laws,
    stieltjes,
)


# ----------------------------------------------------------------------------------------
# Monte Carlo with plain NumPy (an independent route: no sigprop code but phi/phi')
# ----------------------------------------------------------------------------------------
def mc_eigs(spec: NetSpec, samples: int, seed: int) -> np.ndarray:
    """Eigenvalues of J^T J (shape samples x N_0) of random nets drawn as the NetSpec says:
    W_l iid N(0, sigma_w2/N_{l-1}) or Haar (semi-)orthogonal with that entry variance, biases
    N(0, sigma_b2), D_l = phi'(h_l) from propagating an input with ||x||^2 / N_0 = q0."""
    rng = np.random.default_rng(seed)
    N = spec.widths
    out = []
    for _ in range(samples):
        x = rng.standard_normal(N[0])
        x *= math.sqrt(spec.q0 * N[0]) / np.linalg.norm(x)
        J = np.eye(N[0])
        for layer in range(1, len(N)):
            sw, sb, act = spec.sigma_w2[layer - 1], spec.sigma_b2[layer - 1], spec.activation[layer - 1]
            if spec.weights == "orthogonal":
                big, small = max(N[layer], N[layer - 1]), min(N[layer], N[layer - 1])
                Q, R = np.linalg.qr(rng.standard_normal((big, small)))
                Q = Q * np.sign(np.diag(R))
                # entry variance sw / N_{l-1} (NetSpec convention)
                W = math.sqrt(sw) * Q.T if N[layer] <= N[layer - 1] else math.sqrt(sw * N[layer] / N[layer - 1]) * Q
            else:
                W = rng.standard_normal((N[layer], N[layer - 1])) * math.sqrt(sw / N[layer - 1])
                W = W * (rng.random(W.shape) < spec.kept[layer - 1])  # random mask, no rescaling
            h = W @ x + rng.standard_normal(N[layer]) * math.sqrt(sb)
            J = act.dphi(h)[:, None] * (W @ J)
            x = act.phi(h)
        s = np.linalg.svd(J, compute_uv=False) ** 2
        out.append(np.concatenate([s, np.zeros(N[0] - s.size)]))
    return np.array(out)


def dkw(n: int, alpha: float = 1e-3) -> float:
    """Dvoretzky-Kiefer-Wolfowitz: sup |F_n - F| <= eps with probability 1 - alpha for n iid draws.
    The pooled eigenvalues are not iid, but eigenvalues of one matrix repel (their empirical CDF
    fluctuates by O(1/N), less than iid draws), so using n = samples * N_0 is conservative."""
    return math.sqrt(math.log(2.0 / alpha) / (2.0 * n))


def check_against_mc(spec, samples, seed, xs, finite_width, points=160, m2_rtol=None):
    """CDF at xs, the 0.9 quantile, the atom, m1, m2 versus Monte Carlo."""
    e = mc_eigs(spec, samples, seed)
    flat = e.ravel()
    q_emp = float(np.quantile(flat, 0.9))
    th = jacobian_spectrum(spec, points=points, cdf_at=[*xs, q_emp], quantiles=[0.9])
    tol = dkw(flat.size) + finite_width
    for x in xs:
        assert abs(th.cdf[x] - np.mean(flat <= x)) < tol, (x, th.cdf[x], np.mean(flat <= x), tol)
    # 0.9 quantile: the theory CDF at the empirical quantile must be 0.9 within the CDF tolerance
    assert abs(th.cdf[q_emp] - 0.9) < tol
    assert abs(th.quantiles[0.9] - q_emp) / q_emp < 0.15
    # atom: numerically zero eigenvalues (singular values below max(N) eps s_max, the usual
    # numerical-rank threshold); deep nets have genuine eigenvalues far below 1e-9 * max
    thr = (max(spec.widths) * np.finfo(float).eps) ** 2 * e.max(axis=1, keepdims=True)
    atom_mc = np.mean(e <= thr)
    assert abs(th.atom_at_zero - atom_mc) < tol
    # moments: per-sample normalized traces; 4 standard errors + the finite-width allowance
    for k, key in ((1, "m1"), (2, "m2")):
        per = (e**k).mean(axis=1)
        se = per.std(ddof=1) / math.sqrt(samples)
        rtol = finite_width * k if (m2_rtol is None or k == 1) else m2_rtol
        assert abs(th.moments[key] - per.mean()) < 4 * se + rtol * th.moments[key], (key, th.moments[key], per.mean())
    return th


# ----------------------------------------------------------------------------------------
# Structure
# ----------------------------------------------------------------------------------------
def test_theory_modules_do_not_import_torch():
    code = (
        "import sys; import sigprop.theory.spectrum, sigprop.theory.freeprob; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_d2_laws_of_piecewise_linear_activations():
    # hard tanh: D^2 = 1 on |h| < 1, P = P(|N| < 1/sqrt(q)) = erf(1/sqrt(2 q))
    for q in (0.3, 1.0, 4.0):
        law = layer_laws(NetSpec(widths=(5, 5), activation="hard_tanh", sigma_w2=q, sigma_b2=0.0))[0]
        assert law.is_rational
        p = float(special.erf(1.0 / math.sqrt(2.0 * q)))
        assert law.m1 == pytest.approx(p, rel=1e-12)
        assert law.p_zero == pytest.approx(1.0 - p, rel=1e-12)
    leaky = layer_laws(NetSpec(widths=(5, 5), activation="leaky_relu", act_params={"alpha": 0.2}))[0]
    assert not leaky.is_rational and leaky.exact
    assert leaky.m2 == pytest.approx(0.5 * (0.2**4 + 1.0))
    tanh = layer_laws(NetSpec(widths=(5, 5), activation="tanh", sigma_w2=1.0))[0]
    assert not tanh.exact and tanh.p_zero == 0.0
    # E[sech^4] by an independent quadrature (scipy)
    from scipy import integrate

    m1 = integrate.quad(lambda z: np.cosh(z) ** -4 * np.exp(-z * z / 2) / math.sqrt(2 * math.pi), -40, 40)[0]
    m2 = integrate.quad(lambda z: np.cosh(z) ** -8 * np.exp(-z * z / 2) / math.sqrt(2 * math.pi), -40, 40)[0]
    assert tanh.m1 == pytest.approx(m1, rel=1e-10)
    assert tanh.m2 == pytest.approx(m2, rel=1e-8)


def test_s_transform_of_d2_law_matches_its_moment_series():
    # S(u) = 1/m1 - (m2 - m1^2)/m1^3 u + O(u^2)
    law = layer_laws(NetSpec(widths=(5, 5), activation="tanh", sigma_w2=1.7, sigma_b2=0.1))[0]
    u = np.array([1e-4, -1e-4, 1e-4j])
    S = law.s_transform(u)
    series = 1 / law.m1 - (law.m2 - law.m1**2) / law.m1**3 * u
    np.testing.assert_allclose(S, series, rtol=1e-6)
    # two-point law: S(u) = (1 + u) / (a (u + p)) exactly
    two = D2Law.two_point(2.0, 0.3)
    u = np.array([0.2 + 0.1j, -0.1 + 0.3j])
    np.testing.assert_allclose(two.s_transform(u), (1 + u) / (2.0 * (u + 0.3)), rtol=1e-12)


def test_gauss_compression_matches_fine_stieltjes_transform():
    law = layer_laws(NetSpec(widths=(5, 5), activation="gelu", sigma_w2=1.5))[0]
    a, v = law._normalized()
    ac, vc = fp.gauss_compress(a, v, 40)
    w = np.array([2.0 + 1j, -1.0 + 0.5j, 5.0])
    fine = (a[None, :] / (w[:, None] - v[None, :])).sum(1)
    comp = (ac[None, :] / (w[:, None] - vc[None, :])).sum(1)
    np.testing.assert_allclose(comp, fine, rtol=1e-10)


def test_kantorovich_majorant_bounds_second_derivative():
    """The rigorous majorant K must dominate |A''| sampled on (and inside) the ball."""
    spec = NetSpec(widths=(100, 300, 60, 200), activation="relu", sigma_w2=2.0, weights="orthogonal")
    eq, _, _ = master_equation(_model(spec))
    rng = np.random.default_rng(3)
    m0 = rng.normal(size=20) * 0.4 + 1j * rng.normal(size=20) * 0.4
    r = np.abs(rng.normal(size=20)) * 0.1
    _, _, App, _ = eq.F_parts(m0)
    K = eq.kantorovich_K(m0, r, App, None)
    for t in np.linspace(0, 1, 5):
        for th in np.linspace(0, 2 * np.pi, 16, endpoint=False):
            _, _, App_w, _ = eq.F_parts(m0 + t * r * np.exp(1j * th))
            assert np.all(np.abs(App_w) <= K * (1 + 1e-12))


def test_scalar_twin_matches_vectorized_master_equation():
    """The scalar arithmetic of the anchor chain (rational laws) uses the same formulas as the
    vectorized code: F_parts and the rigorous majorant K agree, and K dominates |A''| on the ball."""
    spec = NetSpec(widths=(100, 300, 60, 200), activation="relu", sigma_w2=2.0, weights="orthogonal")
    eq, _, _ = master_equation(_model(spec))
    assert (eq.e < 0).any() and (eq.e > 0).any()
    sc = eq.scalar
    assert sc is not None
    rng = np.random.default_rng(5)
    m0 = rng.normal(size=30) * 0.4 + 1j * rng.normal(size=30) * 0.4
    r = np.abs(rng.normal(size=30)) * 0.1
    A, Ap, App, _ = eq.F_parts(m0)
    K = eq.kantorovich_K(m0, r, App, None)
    for i in range(m0.size):
        a_s, ap_s, app_s = sc.parts(complex(m0[i]))
        np.testing.assert_allclose([a_s, ap_s, app_s], [A[i], Ap[i], App[i]], rtol=1e-12)
        k_s = sc.K(complex(m0[i]), float(r[i]))
        assert k_s == pytest.approx(K[i], rel=1e-12) or (math.isinf(k_s) and math.isinf(K[i]))
        for th in np.linspace(0, 2 * np.pi, 12, endpoint=False):
            app_w = sc.parts(complex(m0[i] + r[i] * np.exp(1j * th)))[2]
            assert abs(app_w) <= k_s * (1 + 1e-12)
    z = 0.7 + 0.2j
    h = fp._basin(eq, np.full(m0.size, z), m0, A, Ap, App, None)
    for i in range(m0.size):
        h_s = sc.h(z, complex(m0[i]), complex(A[i]), complex(Ap[i]))
        assert h_s == pytest.approx(h[i], rel=1e-10) or (math.isinf(h_s) and math.isinf(h[i]))
    assert fp.MasterEquation(1.0, [], [(np.array([0.5, 0.5]), np.array([0.5, 1.5]), 1.0)]).scalar is None


@pytest.mark.parametrize(
    "spec",
    [
        NetSpec.mlp(4, 100, "relu", sigma_w2=2.0),
        NetSpec.mlp(30, 100, "relu", sigma_w2=2.0),
        NetSpec(widths=(100, 300, 60, 200), activation="relu", sigma_w2=2.0, weights="orthogonal"),
        NetSpec.mlp(3, 100, "leaky_relu", sigma_w2=2.0),
    ],
    ids=["relu4", "relu30", "orthogonal", "leaky"],
)
def test_anchor_chain_matches_independent_vertical_descents(spec):
    """The chained solver (anchors on a ray, scalar chain for rational laws) returns the same
    certified M(z) as an independent doubling start + vertical descent at every point, on a density
    grid down to 1e-10 x_+ (and 100 y) at y = 1e-9 and on points off the grid (left of the support, above the
    diagonal, a single point near the axis)."""
    eq, m1, _ = master_equation(_model(spec))
    edge = fp.real_axis_edge(eq)
    x = _grid(max(edge * 1e-10, 1e-7), 1.02 * edge, edge, 300)  # the default grid's floor: >= 100 y
    grid = x + 1j * 1e-9 / m1
    rng = np.random.default_rng(7)
    other = np.concatenate(
        [
            rng.normal(size=20) * 2 * edge + 1j * np.abs(rng.normal(size=20)) * edge,
            [-3.0 + 1e-9j, 1e-3j, 1e3 + 1.0j, 0.5 * edge + 1e-12j, 1e-6 * edge + 1e-9j],
        ]
    )
    for z in (grid, np.concatenate([grid[::7], other]), other[-1:]):
        m_chain, info = fp.lilypads(eq, z, edge)
        m_vert, _ = fp.lilypads(eq, z, edge, chain=False)
        np.testing.assert_allclose(m_chain, m_vert, rtol=1e-10, atol=1e-12)
        assert np.all(((1 + m_chain) / z).imag <= 1e-11 * np.abs((1 + m_chain) / z))
    # the chain's serial work is logarithmic: few basin tests per point on average
    m_chain, info = fp.lilypads(eq, grid, edge)
    assert info["tests"].mean() < 6


def test_inner_solve_converges_on_a_fine_rule():
    """A fine quadrature rule (hundreds of nodes) stagnates a little above 8 eps: the inner Newton
    stops at the rounding level (warm start: within a few iterations), at the root."""
    law = fp.d2_law(NetSpec.mlp(2, 100, "tanh", sigma_w2=1.0).activation[0], 1.0)
    a, v = law._normalized()
    assert a.size > 200
    u = (np.linspace(-0.5, 0.5, 50) + 0.05j)[:, None]
    g_ref = fp._solve_g(a, v, u, np.ones_like(u))
    g5 = fp._solve_g(a, v, u, g_ref * (1 + 1e-6), iters=6)  # converges (no error) within 6 iterations
    np.testing.assert_allclose(g5, g_ref, rtol=1e-13)
    np.testing.assert_allclose((a / (g_ref - u * v)).sum(-1), 1.0, rtol=1e-12)


# ----------------------------------------------------------------------------------------
# Closed forms
# ----------------------------------------------------------------------------------------
def test_single_gaussian_layer_is_marchenko_pastur():
    """Linear layer N_1 x N_0, variance 1/N_0: J^T J = W^T W is MP with ratio c = N_0/N_1 and
    scale N_1/N_0 (closed-form density and G)."""
    for n0, n1 in ((100, 100), (100, 250), (300, 100)):
        spec = NetSpec(widths=(n0, n1), activation="linear", sigma_w2=1.0)
        c, s = n0 / n1, n1 / n0  # eigenvalues of W^T W = s * MP(ratio c, mean 1)
        lo, hi = s * (1 - math.sqrt(c)) ** 2, s * (1 + math.sqrt(c)) ** 2
        x = np.linspace(lo, hi, 9)[1:-1]
        res = jacobian_spectrum(spec, x=x, points=60)
        u = x / s
        mp = np.sqrt(np.maximum(((1 + math.sqrt(c)) ** 2 - u) * (u - (1 - math.sqrt(c)) ** 2), 0)) / (2 * np.pi * c * u)
        np.testing.assert_allclose(res.density, mp / s, rtol=1e-6)
        assert res.atom_at_zero == pytest.approx(max(0.0, 1 - n1 / n0))
        # G at a complex point against the closed form of MP's Stieltjes transform
        z = np.array([0.7 * s + 0.3j * s])
        G = stieltjes(spec, z)
        w = z / s
        root = np.sqrt(w - (1 - math.sqrt(c)) ** 2) * np.sqrt(w - (1 + math.sqrt(c)) ** 2)
        Gmp = (w + c - 1 - root) / (2 * c * w)  # MP(ratio c, mean 1); for c > 1 it includes the atom
        np.testing.assert_allclose(G, Gmp / s, rtol=1e-9)


@pytest.mark.parametrize("L", [1, 2, 3])
def test_linear_nets_fuss_catalan(L):
    """Square linear Gaussian nets with sigma_w2 = 1: moments of J^T J are the Fuss-Catalan numbers
    FC_L(k) = binom((L+1)k, k) / (Lk + 1). Closed form (m1, m2) and numerical integration of the
    density (m1, m2, m3) must agree with them."""
    spec = NetSpec.mlp(L, 100, "linear", sigma_w2=1.0)
    fc = [math.comb((L + 1) * k, k) / (L * k + 1) for k in (1, 2, 3)]
    cf = closed_form_moments(spec)
    assert cf["m1"] == pytest.approx(fc[0], rel=1e-12)
    assert cf["m2"] == pytest.approx(fc[1], rel=1e-12)
    # hard-edge density ~ x^{-L/(L+1)}: integrate on a wide log grid (y smaller than the lowest x)
    res = jacobian_spectrum(spec, points=600, y=1e-14)
    x, rho = res.x, res.density
    lx = np.log(x)
    for k, target in zip((1, 2, 3), fc, strict=True):
        f = rho * x ** (k + 1)
        val = np.sum(0.5 * (f[1:] + f[:-1]) * np.diff(lx))
        assert val == pytest.approx(target, rel=2e-3)


def test_hard_sine_law_is_a_linear_layer():
    """Seed 003's hard sine has phi'^2 = 1: its spectrum is the linear net's (c_l = 1 in eq. 3.4)."""
    widths = (100, 100, 100, 100)
    a = spectrum_from_laws([D2Law.hard_sine()] * 3, widths, 1.0, points=80, cdf_at=[0.5, 2.0])
    b = jacobian_spectrum(NetSpec(widths=widths, activation="linear", sigma_w2=1.0), points=80, cdf_at=[0.5, 2.0])
    np.testing.assert_allclose(a.density, b.density, rtol=1e-10)
    assert a.cdf == pytest.approx(b.cdf, rel=1e-10)


@pytest.mark.parametrize("L", [1, 3, 6])
def test_relu_eoc_moments(L):
    """ReLU, sigma_w2 = 2, square: (N_0-normalized) trace moments m1 = 1, m2 = 1 + 2L."""
    spec = NetSpec.mlp(L, 100, "relu", sigma_w2=2.0)
    cf = closed_form_moments(spec)
    assert cf == pytest.approx({"m1": 1.0, "m2": 1.0 + 2 * L}, rel=1e-12)
    res = jacobian_spectrum(spec, points=500)
    assert res.moments == pytest.approx(cf)
    # numerical integration of the density (the atom at 0 adds nothing to m1, m2)
    assert res.moments_numeric["m1"] == pytest.approx(1.0, rel=3e-3)
    assert res.moments_numeric["m2"] == pytest.approx(1.0 + 2 * L, rel=3e-3)
    assert res.atom_at_zero == pytest.approx(0.5)


def test_closed_form_moments_match_density_integration_general():
    """Rectangular, orthogonal and smooth cases: S-transform moments == integral of x^k density."""
    for spec in (
        NetSpec(widths=(100, 300, 60, 200), activation="relu", sigma_w2=2.0, weights="orthogonal"),
        NetSpec(widths=(100, 50, 150), activation="hard_tanh", sigma_w2=1.5, sigma_b2=0.2),
        NetSpec(widths=(100, 200, 150), activation="tanh", sigma_w2=1.8, sigma_b2=0.1),
    ):
        res = jacobian_spectrum(spec, points=300)
        assert res.moments_numeric["m1"] == pytest.approx(res.moments["m1"], rel=5e-3)
        assert res.moments_numeric["m2"] == pytest.approx(res.moments["m2"], rel=5e-3)


# ----------------------------------------------------------------------------------------
# Never a wrong branch; total mass; the atom
# ----------------------------------------------------------------------------------------
def test_stieltjes_branch_density_and_total_mass():
    for spec in (
        NetSpec(widths=(100, 300, 300), activation="relu", sigma_w2=2.0),  # no hard edge at 0
        NetSpec(widths=(100, 200, 50, 200), activation="relu", sigma_w2=2.0),  # bottleneck: atom 0.75
        NetSpec(widths=(100, 200, 200), activation="tanh", sigma_w2=1.5, sigma_b2=0.05),
    ):
        res = jacobian_spectrum(spec, points=300)
        assert np.all(res.stieltjes.imag <= 0)
        assert np.all(res.density >= 0)
        assert res.mass == pytest.approx(1.0, abs=2e-3)
        F = [res.cdf[x] for x in (1e-3, 0.1, 1.0, 10.0)] if res.cdf else []
        assert F == sorted(F)


def test_atom_matches_limit_of_stieltjes_transform():
    """mu({0}) = lim_{y->0} iy G(iy) (independent of the rank formula); shallow nets converge fast."""
    for widths, atom in (((100, 200, 50), 0.75), ((200, 100, 300), 0.75), ((100, 300, 300), 0.0)):
        spec = NetSpec(widths=widths, activation="relu", sigma_w2=2.0)
        res = jacobian_spectrum(spec, points=40)
        assert res.atom_at_zero == pytest.approx(atom)
        y = 1e-10
        G = stieltjes(spec, np.array([1j * y]))
        assert (1j * y * G[0]).real == pytest.approx(atom, abs=2e-3)


def test_certificate_rejects_a_wrong_branch():
    """numpy.roots gives every root of the polynomial master equation; feeding a wrong one to the
    certificate must raise (the Stieltjes transform of a probability measure has Im G < 0)."""
    spec = NetSpec.mlp(3, 100, "relu", sigma_w2=2.0)
    eq, _m1, _ = master_equation(_model(spec))
    z = 0.5 + 1e-3j
    # F_z(m) = z m - (1 + m)(1 + 2m)^3
    poly = np.polysub(np.array([z, 0]), np.polymul([1, 1], np.polymul([2, 1], np.polymul([2, 1], [2, 1]))))
    roots = np.roots(poly)
    good, _ = fp.lilypads(eq, np.array([z]), fp.real_axis_edge(eq))
    wrong = [r for r in roots if abs(r - good[0]) > 1e-6]
    assert len(wrong) == 3
    n_rejected = 0
    for r in wrong:
        A = eq.F_parts(np.array([r]))[0]
        try:
            fp._certify(eq, np.array([z]), np.array([r]), A)
        except NumericalError:
            n_rejected += 1
    assert n_rejected >= 2  # a root on the real axis can look like a valid point; Im G > 0 cannot
    assert min(abs(roots - good[0])) < 1e-10


# ----------------------------------------------------------------------------------------
# Seed 003 Fig. A.1: the Cauchy-smoothed densities
# ----------------------------------------------------------------------------------------
def test_smoothed_density_is_cauchy_convolution_and_converges():
    spec = NetSpec(widths=(100, 200, 200), activation="relu", sigma_w2=2.0)
    ref = jacobian_spectrum(spec, points=800)
    xs = np.array([0.3, 1.0, 2.5, 5.0])
    errs = []
    for y in (1.0, 0.1, 1e-4):
        res = jacobian_spectrum(spec, x=xs, y=y, points=60)
        # independent route: convolve the y -> 0 density (and the atom) with a Cauchy kernel of scale y
        v, rho = ref.x, ref.density
        lv = np.log(v)
        kern = y / np.pi / ((xs[:, None] - v[None, :]) ** 2 + y * y)
        f = kern * rho * v
        conv = np.sum(0.5 * (f[:, 1:] + f[:, :-1]) * np.diff(lv), axis=1)
        # continuous mass below the reference grid (x < 1e-7): put it at 0
        conv += (1.0 - ref.mass) * y / np.pi / (xs**2 + y * y)
        # res.density already has the smoothed atom removed; the grid resolves kernels of
        # width >= 0.1 only (for y = 1e-4 the comparison with y -> 0 below is the check)
        if y >= 0.1:
            np.testing.assert_allclose(res.density, conv, rtol=2e-3, atol=1e-4)
        base = jacobian_spectrum(spec, x=xs, points=60).density
        errs.append(np.max(np.abs(res.density - base)))
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 1e-3


# ----------------------------------------------------------------------------------------
# Seed 003 eq. 3.4: the Hard Tanh constant
# ----------------------------------------------------------------------------------------
def test_hard_tanh_constant_follows_simulation_not_seed_003():
    """Seed 003 eq. (3.4) uses c = P(0 <= N <= 1/sqrt(q)) for Hard Tanh; the D^2 law has
    P(D^2 = 1) = P(|N| <= 1/sqrt(q)), twice that. Simulation agrees with the latter."""
    spec = NetSpec.mlp(2, 200, "hard_tanh", sigma_w2=2.0, sigma_b2=0.5)
    xs = [0.05, 0.5, 2.0]
    e = mc_eigs(spec, 6, 11).ravel()
    ours = jacobian_spectrum(spec, points=120, cdf_at=xs)
    q = spec.layer_variances()
    paper = [D2Law.two_point(1.0, float(special.ndtr(1 / math.sqrt(ql)) - 0.5)) for ql in q]
    theirs = spectrum_from_laws(paper, spec.widths, spec.sigma_w2, points=120, cdf_at=xs)
    tol = dkw(e.size) + 0.03  # finite-width allowance: see test_monte_carlo_* below
    emp = [np.mean(e <= x) for x in xs]
    assert all(abs(ours.cdf[x] - f) < tol for x, f in zip(xs, emp, strict=True))
    assert max(abs(theirs.cdf[x] - f) for x, f in zip(xs, emp, strict=True)) > 2 * tol


# ----------------------------------------------------------------------------------------
# Seed 004 App. A, Table 3: m2 of J J^T grows linearly in depth at the EOC
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,params",
    [
        ("relu_tau", {"tau": 0.5}),
        ("st_tau", {"tau": 0.5}),
        ("crelu", {"tau": 0.5, "m": 1.0}),
        ("cst", {"tau": 0.5, "m": 1.0}),
    ],
)
def test_sparse_activations_variance_linear_in_depth(name, params):
    """At the EOC (q^l = q* for every layer, m1 = chi_1^L = 1) phi' takes values 0/1 with
    P(phi' = 1) = mu, so m2 - m1^2 = L / mu (Gaussian weights; seed 004 eq. 30 with its garbled
    mu_1/mu_2^2 read as mu_2/mu_1^2 = 1/mu). Checked by integrating the density for L = 1, 2, 4."""
    point = eoc(name, q_star=1.0, **params)
    mu = 1.0 / point.sigma_w2  # chi_1 = sigma_w2 * mu = 1
    var = []
    for L in (1, 2, 4):
        spec = NetSpec.mlp(
            L,
            100,
            name,
            sigma_w2=point.sigma_w2,
            sigma_b2=point.sigma_b2,
            q0=(1.0 - point.sigma_b2) / point.sigma_w2,
            act_params=params,
        )
        np.testing.assert_allclose(spec.layer_variances(), 1.0, rtol=1e-9)
        res = jacobian_spectrum(spec, points=400)
        assert res.moments["m1"] == pytest.approx(1.0, rel=1e-9)
        assert res.moments["m2"] - 1.0 == pytest.approx(L / mu, rel=1e-9)
        var.append(res.moments_numeric["m2"] - res.moments_numeric["m1"] ** 2)
    np.testing.assert_allclose(var, np.array([1, 2, 4]) / mu, rtol=1e-2)


# ----------------------------------------------------------------------------------------
# Monte Carlo (CI-sized; heavier versions marked slow)
# ----------------------------------------------------------------------------------------
def test_monte_carlo_relu_deep_square():
    """N = 200, L = 4. Finite-width allowance 0.05: the rank is min_l (#active units of layer l);
    for square layers the minimum of L Binomial(N, 1/2)/N lies ~0.035 * E[max of 4 normals] ~ 0.036
    below 1/2, which shifts the atom (and the CDF near 0) by that much."""
    spec = NetSpec.mlp(4, 200, "relu", sigma_w2=2.0)
    check_against_mc(spec, 6, 1, [1e-3, 0.05, 0.5, 2.0], finite_width=0.05, m2_rtol=0.15)


def test_monte_carlo_relu_bottleneck():
    """The atom 0.75 is set by the 50-wide layer: active units Binomial(50, 1/2) give a per-sample
    std 0.035 of the atom; allowance 0.04 (pooled over samples it averages down further)."""
    spec = NetSpec(widths=(100, 200, 50, 150, 100), activation="relu", sigma_w2=2.0)
    check_against_mc(spec, 10, 2, [1e-3, 0.1, 1.0, 3.0], finite_width=0.04, m2_rtol=0.15)


def test_monte_carlo_hard_tanh_with_bias():
    spec = NetSpec(widths=(100, 300, 300, 300), activation="hard_tanh", sigma_w2=2.0, sigma_b2=0.5)
    check_against_mc(spec, 6, 3, [1e-3, 0.05, 0.5, 2.0], finite_width=0.03, m2_rtol=0.15)


def test_monte_carlo_tanh_at_eoc():
    p = eoc("tanh", sigma_b2=0.05)
    spec = NetSpec(widths=(100, 200, 200, 200), activation="tanh", sigma_w2=p.sigma_w2, sigma_b2=0.05, q0=p.q_star)
    check_against_mc(spec, 6, 4, [0.01, 0.2, 1.0, 3.0], finite_width=0.02, points=80, m2_rtol=0.1)


def test_monte_carlo_tanh_rectangular_bottleneck():
    spec = NetSpec(widths=(200, 400, 100, 300), activation="tanh", sigma_w2=1.5, sigma_b2=0.05)
    check_against_mc(spec, 4, 5, [0.01, 0.1, 0.5, 2.0], finite_width=0.03, points=60, m2_rtol=0.1)


def test_monte_carlo_orthogonal():
    spec = NetSpec(widths=(100, 200, 80, 150), activation="relu", sigma_w2=2.0, weights="orthogonal")
    check_against_mc(spec, 8, 6, [1e-3, 0.1, 1.0, 3.0], finite_width=0.04, m2_rtol=0.15)


def test_monte_carlo_masked_layers():
    """A random mask keeping half the weights (no rescaling) at sigma_w2 = 4: the theory uses
    kept * sigma_w2 = 2 (NetSpec.effective_sigma_w2), Monte Carlo masks the matrices."""
    spec = NetSpec(widths=(100, 300, 300, 300), activation="relu", sigma_w2=4.0, kept=0.5)
    th = check_against_mc(spec, 6, 8, [1e-3, 0.1, 1.0, 3.0], finite_width=0.03, m2_rtol=0.15)
    ref = jacobian_spectrum(NetSpec(widths=(100, 300, 300, 300), activation="relu", sigma_w2=2.0), points=160)
    np.testing.assert_allclose(th.density, ref.density, rtol=1e-12)


def test_correlated_weights_use_the_iid_bulk():
    a = jacobian_spectrum(NetSpec.mlp(2, 100, "relu", sigma_w2=2.0, weights="correlated", eta=0.1), points=40)
    b = jacobian_spectrum(NetSpec.mlp(2, 100, "relu", sigma_w2=2.0), points=40)
    np.testing.assert_allclose(a.density, b.density, rtol=1e-12)


@pytest.mark.slow
def test_monte_carlo_wide_slow():
    """Wider nets and more samples: tighter allowances (finite-width effects ~ 1/sqrt(N))."""
    for spec, xs in (
        (NetSpec.mlp(6, 500, "relu", sigma_w2=2.0), [1e-3, 0.05, 0.5, 2.0, 10.0]),
        (NetSpec(widths=(300, 600, 150, 450, 300), activation="tanh", sigma_w2=1.5, sigma_b2=0.05), [0.01, 0.2, 1.0]),
        (NetSpec.mlp(4, 400, "leaky_relu", sigma_w2=1.8, act_params={"alpha": 0.3}), [1e-3, 0.1, 1.0, 3.0]),
    ):
        check_against_mc(spec, 10, 7, xs, finite_width=0.03, points=120, m2_rtol=0.1)


# ----------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------
def test_bad_input():
    spec = NetSpec.mlp(2, 50, "relu", sigma_w2=2.0)
    with pytest.raises(ValueError, match="quantiles"):
        jacobian_spectrum(spec, quantiles=[1.5])
    with pytest.raises(ValueError, match="quantiles"):
        jacobian_spectrum(spec, quantiles=[0.0])
    with pytest.raises(ValueError, match="points"):
        jacobian_spectrum(spec, points=3)
    with pytest.raises(ValueError, match="y must"):
        jacobian_spectrum(spec, y=0.0)
    with pytest.raises(ValueError, match="x must"):
        jacobian_spectrum(spec, x=[-1.0, 1.0])
    with pytest.raises(ValueError, match="cdf_at"):
        jacobian_spectrum(spec, cdf_at=[float("nan")])
    with pytest.raises(ValueError, match="widths"):
        spectrum_from_laws([D2Law.hard_sine()], (10,), 1.0)
    with pytest.raises(ValueError):
        D2Law.two_point(1.0, 0.0)


# ----------------------------------------------------------------------------------------
# Orthogonal weights: point masses away from 0
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "widths,act,sw",
    [
        ((200, 200), "relu", 2.0),
        ((200, 100), "relu", 2.0),
        ((200, 200, 200, 200), "hard_tanh", 1.0),
        ((100, 100, 100), "linear", 1.5),
    ],
    ids=["relu1", "relu1-narrow", "hard_tanh3", "linear2"],
)
def test_orthogonal_atoms_away_from_zero_are_refused_and_real(widths, act, sw):
    """The predicted point mass (x, mass) is present in a NumPy Monte Carlo (eigenvalues equal to
    x to 1e-9), and the solver refuses the case with a message that says so."""
    spec = NetSpec(widths=widths, activation=act, sigma_w2=sw, weights="orthogonal")
    x, mass = orthogonal_atom(_model(spec))
    e = mc_eigs(spec, 6, 11)
    mass_mc = np.mean(np.abs(e - x) <= 1e-9 * x)
    # the mass is 1 - (sum of zero counts) / N_0: Binomial fluctuations ~0.04 per sample at N = 200
    assert abs(mass_mc - mass) < 0.04, (mass_mc, mass)
    with pytest.raises(ValueError, match=r"point mass .* at x = .*only an atom at 0"):
        jacobian_spectrum(spec, points=40)
    with pytest.raises(ValueError, match="point mass"):
        stieltjes(spec, [1.0 + 0.1j])


def test_orthogonal_single_smooth_layer_refused():
    spec = NetSpec.mlp(1, 100, "tanh", sigma_w2=1.0, weights="orthogonal")
    with pytest.raises(ValueError, match="law of phi'\\^2 itself"):
        jacobian_spectrum(spec, points=40)


def test_orthogonal_without_atoms_matches_monte_carlo():
    """relu depth 3 (1/2 + 1/2 + 1/2 - 2 < 0: no mass away from 0) is solved and agrees with MC."""
    spec = NetSpec.mlp(3, 200, "relu", sigma_w2=2.0, weights="orthogonal")
    assert orthogonal_atom(_model(spec)) is None
    check_against_mc(spec, 6, 12, [1e-3, 0.1, 1.0, 3.0], finite_width=0.05, m2_rtol=0.15)


def test_orthogonal_stall_is_explained(monkeypatch):
    import sigprop.theory.spectrum as sp

    def stall(*a, **k):
        raise NumericalError("Newton lilypads stalled: the basin radius shrank to rounding level")

    monkeypatch.setattr(sp, "lilypads", stall)
    spec = NetSpec(widths=(100, 200, 80, 150), activation="relu", sigma_w2=2.0, weights="orthogonal")
    with pytest.raises(NumericalError, match="point masses away from 0"):
        sp.jacobian_spectrum(spec, points=40)
    with pytest.raises(NumericalError, match=r"^Newton lilypads stalled"):
        sp.jacobian_spectrum(NetSpec.mlp(2, 50, "relu", sigma_w2=2.0), points=40)


def test_tanh_narrowing_last_layer_far_tail_points_are_dropped_not_fatal():
    """tanh (100, 100, 50) at sigma_w2 = 1: far below the bulk the fine re-solve of a coarse-grid
    point left the branch and used to abort the whole spectrum; such points are now uncertified
    (skipped like disagreeing ones) and the result agrees with Monte Carlo."""
    spec = NetSpec(widths=(100, 100, 50), activation="tanh", sigma_w2=1.0)
    th = check_against_mc(spec, 10, 13, [0.01, 0.1, 0.5], finite_width=0.04, points=80, m2_rtol=0.1)
    assert np.all(np.isfinite(th.density))
