"""Mean-field theory against wide random MLPs built in torch.

A width-N MLP with weights N(0, sigma_w2/N) and biases N(0, sigma_b2), activations from
``act.torch_module()``, is fed a batch of B = 4 inputs: two *pairs*; the inputs of a pair
have the same norm (so both start at the same q^1, as ``correlation_map`` assumes) and a
prescribed cosine. Per layer l = 1..DEPTH we measure, per input, the mean squared
pre-activation q^l, per pair the cosine c^l of the two pre-activation vectors, and per input
the fraction of exact zeros of phi(h^l), and compare with

* q^{l+1} = V(q^l)                           (``variance_map``),
* c^{l+1} = R(c^l; q^l) q^l / q^{l+1}        (``correlation_map`` at the current q^l: it
  returns q_12^{l+1} / q^l, and the new cosine divides by q^{l+1} instead),
* sparsity^l = P(phi(sqrt(q^l) Z) = 0)       (``sparsity``).

Tolerances (no tuned constants)
-------------------------------
Every statistic is a finite-N Monte Carlo estimate; its spread follows from the sample size:

* given layer l, the pre-activations of layer l+1 are *exactly* i.i.d. over the N neurons,
  Gaussian with covariance G = sigma_w2 Phi^T Phi / N + sigma_b2 (Phi: the N x B
  post-activations), so q^{l+1} is a mean of N squared Gaussians: relative std sqrt(2/N)
  (= 3.2% at N = 2000), the cosine of N Gaussian pairs has std ~ (1 - c^2)/sqrt(N), a zero
  fraction is binomial, std sqrt(s(1-s)/N);
* G itself fluctuates: sigma_w2 mean(phi^2) has relative std sqrt(Var phi^2 / N)/E phi^2
  (2.2/sqrt(N) for ReLU), and these fluctuations are carried to later layers with gain
  ~ q V'(q)/V(q) (about 1 at the EOC of an unclipped family, so they add up like a random walk
  over the layers) and mix between q and c.

Rather than linearizing this by hand, the std of each statistic is computed from R replicas
of that exact finite-width Markov chain (sampling N x B Gaussians with covariance G per
layer, no N x N weights), in NumPy with ``act.phi`` only -- nothing from the theory layer
under test enters the error bars. The torch statistic is averaged over K independent
networks (seeds) and must lie within Z standard errors, std / sqrt(K), of the theory:

* Z: Bonferroni over every comparison made in this file at family-wise false-alarm
  probability ALPHA (Gaussian tails; every statistic is an average of many terms);
* the replica std is replaced by its (1 - ALPHA) upper confidence bound for R samples;
* the finite-width bias of the statistics is second order in the same fluctuations, O(1/N)
  against their O(1/sqrt(N)) standard deviation (e.g. E[V(Q)] - V(E Q) = V'' Var(Q) / 2, the
  cosine's bias -c(1 - c^2)/(2N) against its std (1 - c^2)/sqrt(N)): ~1/sqrt(N) = 2% of one
  standard deviation, negligible next to Z of them.

Beyond the layer-by-layer trajectory (whose std grows with depth), two pooled *one-step*
tests evaluate the theory at the measured q^l, averaged over layers, inputs and networks,
so noise does not accumulate over depth: q^{l+1} / V(q^l) - 1 (tolerance 2-4% of V) and
zero fraction - sparsity(q^l) (tolerance about 0.5-0.8% in sparsity).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from scipy import stats

torch = pytest.importorskip("torch")

import sigprop  # noqa: E402
from sigprop.theory.activations import get_activation  # noqa: E402

N = 2000  # width (and input dimension)
DEPTH = 10
K_NETS = 3  # independent torch networks per case
R_REPLICAS = 64  # replicas of the finite-width chain, for the error bars
ALPHA = 1e-3  # family-wise false-alarm probability of this file

# (Q^1 of the pair, input cosine of the pair) for the two pairs; q^1 is set relative to q*
# (or to 1 off the EOC) so the trajectory moves and V is probed over a range of q.
PAIRS = ((2.5, 0.2), (0.5, -0.4))


@functools.cache
def _cases() -> dict:
    tanh = sigprop.eoc("tanh", sigma_b2=0.05)
    erf = sigprop.eoc("erf", q_star=1.0)
    (cal,) = sigprop.calibrate_sparse("crelu", 0.7, 0.7)
    crelu = cal.activation()
    return {
        # at the EOC
        "tanh-eoc": (get_activation("tanh"), tanh.sigma_w2, tanh.sigma_b2, tanh.q_star),
        "crelu-eoc": (crelu, cal.sigma_w2, cal.sigma_b2, cal.q_star),
        "erf-eoc": (get_activation("erf"), erf.sigma_w2, erf.sigma_b2, erf.q_star),
        # off the EOC: chaotic tanh (c^l -> c* < 1) and ordered crelu (q^l shrinks, sparsity grows)
        "tanh-chaotic": (get_activation("tanh"), 3.0, 0.05, 1.0),
        "crelu-ordered": (crelu, 0.5 * cal.sigma_w2, 0.1, 1.0),
    }


CASE_IDS = ["tanh-eoc", "crelu-eoc", "erf-eoc", "tanh-chaotic", "crelu-ordered"]
# per case: q, c and sparsity at every layer for both pairs, plus two pooled tests
N_COMPARISONS = len(CASE_IDS) * (3 * DEPTH * len(PAIRS) + 2)
Z = float(stats.norm.isf(ALPHA / (2 * N_COMPARISONS)))  # ~ 4.66
# upper (1 - ALPHA) confidence factor of a standard deviation estimated from R samples
SD_UP = math.sqrt((R_REPLICAS - 1) / stats.chi2.ppf(ALPHA, R_REPLICAS - 1))  # ~ 1.36


def _inputs(sigma_w2, sigma_b2, q_scale, seed=0):
    """B = 4 inputs of dimension N: pair p has q^1 = PAIRS[p][0] * q_scale and cosine PAIRS[p][1]."""
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(N, 4, generator=gen, dtype=torch.float64))
    cols = []
    for p, (q1, c0) in enumerate(PAIRS):
        r = math.sqrt(N * (q1 * q_scale - sigma_b2) / sigma_w2)  # |x|^2 / N = (q^1 - sigma_b2) / sigma_w2
        a, b = u[:, 2 * p], u[:, 2 * p + 1]
        cols += [r * a, r * (c0 * a + math.sqrt(1 - c0 * c0) * b)]
    return torch.stack(cols, dim=1)


def _statistics(h_layers, phi_layers):
    """Per layer: q (.., B), pair cosines (.., 2), zero fractions (.., B). Works for torch and numpy."""
    qs, cs, zs = [], [], []
    for h, a in zip(h_layers, phi_layers, strict=True):
        h2 = (h * h).mean(axis=-2)
        qs.append(h2)
        cos = []
        for p in range(len(PAIRS)):
            ha, hb = h[..., 2 * p], h[..., 2 * p + 1]
            cos.append((ha * hb).mean(axis=-1) / np.sqrt(h2[..., 2 * p] * h2[..., 2 * p + 1]))
        cs.append(np.stack(cos, axis=-1))
        zs.append((a == 0).mean(axis=-2))
    return np.stack(qs, -2), np.stack(cs, -2), np.stack(zs, -2)  # shapes (..., DEPTH, B|2)


def _torch_network(act, sigma_w2, sigma_b2, x, seed):
    """Forward x (N x B) through a fresh random MLP; returns per-layer pre- and post-activations."""
    gen = torch.Generator().manual_seed(1000 + seed)
    phi = act.torch_module()
    hs, phis = [], []
    a = x
    with torch.no_grad():
        for _ in range(DEPTH):
            n_in = a.shape[0]
            # float32 draws are 5x faster; rounding the N(0, 1) samples to float32 changes their
            # law by ~1e-8, and everything after is float64
            w = torch.randn(N, n_in, generator=gen, dtype=torch.float32).to(torch.float64)
            w *= math.sqrt(sigma_w2 / n_in)
            b = math.sqrt(sigma_b2) * torch.randn(N, 1, generator=gen, dtype=torch.float64)
            h = w @ a + b
            a = phi(h)
            hs.append(h.numpy())
            phis.append(a.numpy())
    return _statistics(hs, phis)


def _replica_chain(act, sigma_w2, sigma_b2, x, seed):
    """R replicas of the exact law of the same network's N x B pre-activations (NumPy, act.phi only)."""
    rng = np.random.default_rng(seed)
    xn = x.numpy()
    g = sigma_w2 * (xn.T @ xn) / N + sigma_b2  # covariance of layer 1 over the B inputs
    g = np.broadcast_to(g, (R_REPLICAS, *g.shape))
    hs, phis = [], []
    for _ in range(DEPTH):
        lam, vec = np.linalg.eigh(g)  # G = L L^T with L = U sqrt(Lambda) (robust when G is near singular)
        root = vec * np.sqrt(np.clip(lam, 0.0, None))[:, None, :]
        h = rng.standard_normal((R_REPLICAS, N, g.shape[-1])) @ np.swapaxes(root, -1, -2)
        a = act.phi(h)
        hs.append(h)
        phis.append(a)
        g = sigma_w2 * (np.swapaxes(a, -1, -2) @ a) / N + sigma_b2
    return _statistics(hs, phis)


def _theory(act, sigma_w2, sigma_b2, q1, c1):
    """q^l, c^l (per pair) and sparsity(q^l) from the mean-field maps, l = 1..DEPTH."""
    q, c = [np.asarray(q1, float)], [np.asarray(c1, float)]
    for _ in range(DEPTH - 1):
        qn = sigprop.variance_map(act, q[-1], sigma_w2, sigma_b2)
        c.append(sigprop.correlation_map(act, c[-1], q[-1], sigma_w2, sigma_b2) * q[-1] / qn)
        q.append(qn)
    q, c = np.stack(q), np.stack(c)
    return q, c, sigprop.sparsity(act, q)


def _pair_mean(x):
    """Average the per-input columns of each pair (both inputs of a pair share q and sparsity)."""
    return 0.5 * (x[..., 0::2] + x[..., 1::2])


def _pooled(act, sigma_w2, sigma_b2, qhat, zhat):
    """Pooled residuals at the *measured* q^l, averaged over layers and inputs (no accumulation over depth):
    q^{l+1} / V(q^l) - 1 and zero fraction - sparsity(q^l)."""
    v = sigprop.variance_map(act, qhat[..., :-1, :], sigma_w2, sigma_b2)
    dv = (qhat[..., 1:, :] / v - 1.0).mean(axis=(-1, -2))
    ds = (zhat - sigprop.sparsity(act, qhat)).mean(axis=(-1, -2))
    return dv, ds


@functools.cache
def _simulate(case: str):
    act, sw, sb, q_scale = _cases()[case]
    x = _inputs(sw, sb, q_scale)
    xn = x.numpy()
    q1 = np.array([sw * xn[:, 2 * p] @ xn[:, 2 * p] / N + sb for p in range(len(PAIRS))])
    c1 = np.array([(sw * xn[:, 2 * p] @ xn[:, 2 * p + 1] / N + sb) / q1[p] for p in range(len(PAIRS))])
    np.testing.assert_allclose(q1, [q * q_scale for q, _ in PAIRS], rtol=1e-12)  # inputs built as intended
    nets = [_torch_network(act, sw, sb, x, seed) for seed in range(K_NETS)]
    net = tuple(np.stack([n[i] for n in nets]) for i in range(3))  # (K, DEPTH, B|2)
    rep = _replica_chain(act, sw, sb, x, seed=12345)  # (R, DEPTH, B|2)
    return {
        "theory": _theory(act, sw, sb, q1, c1),
        "net": (_pair_mean(net[0]), net[1], _pair_mean(net[2])),
        "rep": (_pair_mean(rep[0]), rep[1], _pair_mean(rep[2])),
        "pooled": (_pooled(act, sw, sb, net[0], net[2]), _pooled(act, sw, sb, rep[0], rep[2])),
    }


def _check(name, case, measured_k, replicas, theory):
    """mean over the K networks within Z standard errors (replica std / sqrt(K)) of theory."""
    mean = measured_k.mean(axis=0)
    tol = Z * SD_UP * replicas.std(axis=0, ddof=1) / math.sqrt(K_NETS)
    err = np.abs(mean - theory)
    bad = err > tol
    assert not bad.any(), (
        f"{case}: measured {name} deviates from theory by more than {Z:.2f} standard errors at "
        f"(layer-1, pair) {np.argwhere(bad).tolist()}:\nmeasured {mean[bad]}\ntheory {theory[bad]}\ntol {tol[bad]}"
    )
    return err, tol


@pytest.mark.parametrize("case", CASE_IDS)
def test_variance_trajectory(case):
    sim = _simulate(case)
    _, tol = _check("q^l", case, sim["net"][0], sim["rep"][0], sim["theory"][0])
    # the error bars are meaningful (below 10% of q^1 in the first layer), not a blanket pass
    assert (tol[0] / sim["theory"][0][0]).max() < 0.1


@pytest.mark.parametrize("case", CASE_IDS)
def test_correlation_trajectory(case):
    sim = _simulate(case)
    _check("c^l", case, sim["net"][1], sim["rep"][1], sim["theory"][1])


@pytest.mark.parametrize("case", CASE_IDS)
def test_sparsity_trajectory(case):
    sim = _simulate(case)
    _check("fraction of zeros", case, sim["net"][2], sim["rep"][2], sim["theory"][2])
    if case.startswith("crelu"):
        assert sim["theory"][2].min() > 0.5  # the sparse cases really are sparse


@pytest.mark.parametrize("case", CASE_IDS)
@pytest.mark.parametrize("what", ["variance_map", "sparsity"])
def test_pooled_one_step(case, what):
    sim = _simulate(case)
    i = ["variance_map", "sparsity"].index(what)
    net, rep = sim["pooled"][0][i], sim["pooled"][1][i]
    tol = Z * SD_UP * rep.std(ddof=1) / math.sqrt(K_NETS)
    assert abs(net.mean()) <= tol, f"{case}: pooled {what} residual {net.mean():.4g}, tolerance {tol:.3g}"
