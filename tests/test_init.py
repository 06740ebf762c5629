"""Initializers (sigprop.nets.init): reproducibility, the variances each scheme promises,
orthogonal / delta-orthogonal structure, the covariance of correlated weights (seed 000
Sec. 5), and the measured signal propagation of a wide EOC-initialized MLP."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from sigprop.errors import NoEOCError  # noqa: E402
from sigprop.nets.init import INIT_SCHEMES, fans, initialize  # noqa: E402
from sigprop.theory.activations import get_activation  # noqa: E402
from sigprop.theory.meanfield import eoc, fixed_points  # noqa: E402

#: z-score of every statistical check: a false failure has probability ~1e-6 per check
K = 5.0


def _var_tol(var: float, n: int) -> float:
    """K standard deviations of the sample variance of n Gaussians: Var(s^2) = 2 sigma^4/(n-1)."""
    return K * var * math.sqrt(2.0 / (n - 1))


def _check_var(t: torch.Tensor, var: float, mean_zero: bool = True):
    x = t.detach().double().flatten()
    n = x.numel()
    # the mean is known (0): the second moment about 0 has the same spread, 2 sigma^4 / n
    est = float((x * x).mean()) if mean_zero else float(x.var())
    assert abs(est - var) <= _var_tol(var, n), (est, var, n)


def _small():
    return nn.ModuleList([nn.Linear(16, 32), nn.Linear(32, 64), nn.Conv2d(4, 8, 3), nn.Conv1d(8, 4, 5)])


def _toy():
    return nn.ModuleList([nn.Linear(64, 256), nn.Linear(256, 2048), nn.Conv2d(16, 32, 3), nn.Conv1d(8, 4, 5)])


# ----------------------------------------------------------------------------------------
# Reproducibility and the record
# ----------------------------------------------------------------------------------------
def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("scheme", INIT_SCHEMES)
def test_reproducible_from_seed(scheme):
    kw = {"gaussian": {"sigma_w2": 1.5, "sigma_b2": 0.1}, "correlated": {"eta": 0.1}}.get(scheme, {})
    a, b, c = _small(), _small(), _small()
    ra = initialize(a, scheme, activation="tanh", seed=7, **kw)
    initialize(b, scheme, activation="tanh", generator=torch.Generator().manual_seed(7), **kw)
    initialize(c, scheme, activation="tanh", seed=8, **kw)
    sa, sb, sc = _state(a), _state(b), _state(c)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if k.endswith("weight"))
    # the record is JSON and is left on the model
    assert json.loads(json.dumps(ra)) == ra
    assert a.sigprop_init is ra
    assert ra["scheme"] == scheme and ra["seed"] == 7
    assert [lay["name"] for lay in ra["layers"]] == ["0", "1", "2", "3"]
    assert ra["layers"][0]["first"] and not ra["layers"][1]["first"]


def test_fans_of_conv():
    assert fans(nn.Conv2d(16, 32, 3)) == (16 * 9, 32 * 9)
    assert fans(nn.Conv2d(16, 32, (3, 5), groups=4)) == (4 * 15, 32 * 15)
    assert fans(nn.Conv1d(8, 4, 5)) == (40, 20)
    assert fans(nn.Linear(7, 3)) == (7, 3)


def test_same_values_for_low_precision_model():
    a, b = _toy(), _toy().to(torch.bfloat16)
    initialize(a, "eoc", activation="erf", seed=3)
    initialize(b, "eoc", activation="erf", seed=3)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert vb.dtype == torch.bfloat16
        assert torch.equal(va.to(torch.bfloat16), vb), k


# ----------------------------------------------------------------------------------------
# Variances
# ----------------------------------------------------------------------------------------
def test_eoc_variances_and_first_layer():
    m = _toy()
    rec = initialize(m, "eoc", activation="tanh", q_star=1.0, seed=0)
    p = eoc("tanh", q_star=1.0)
    assert rec["sigma_w2"] == pytest.approx(p.sigma_w2) and rec["sigma_b2"] == pytest.approx(p.sigma_b2)
    # first layer (seed 004 App. D): variance q*/input_q per unit of input second moment, no bias
    _check_var(m[0].weight, 1.0 / 64)
    assert torch.count_nonzero(m[0].bias) == 0
    for layer in m[1:]:
        fan_in = fans(layer)[0]
        _check_var(layer.weight, p.sigma_w2 / fan_in)
    _check_var(m[1].bias, p.sigma_b2)  # 2048 biases
    # first layer at another q* and input scale
    rec = initialize(m, "eoc", activation="tanh", q_star=2.0, input_q=4.0, seed=0)
    _check_var(m[0].weight, 2.0 / 4.0 / 64)
    assert rec["layers"][0]["sigma_w2"] == pytest.approx(0.5)
    # first_layer="same": EOC values everywhere
    initialize(m, "eoc", activation="tanh", first_layer="same", seed=0)
    _check_var(m[0].weight, p.sigma_w2 / 64)


def test_eoc_from_sigma_b2_sets_q_star():
    rec = initialize(_toy(), "eoc", activation="tanh", sigma_b2=0.05, seed=0)
    p = eoc("tanh", sigma_b2=0.05)
    assert rec["q_star"] == pytest.approx(p.q_star) and rec["sigma_w2"] == pytest.approx(p.sigma_w2)


def test_relu_eoc_is_he_without_bias():
    m = _toy()
    rec = initialize(m, "eoc", seed=1)  # relu by default
    assert rec["activation"] == "relu"
    assert rec["sigma_w2"] == pytest.approx(2.0) and rec["sigma_b2"] == 0.0
    assert all(torch.count_nonzero(layer.bias) == 0 for layer in m)
    _check_var(m[1].weight, 2.0 / 256)
    with pytest.raises(NoEOCError):
        initialize(m, "eoc", sigma_b2=0.1, seed=1)


def test_gaussian_explicit():
    m = _toy()
    initialize(m, "gaussian", sigma_w2=3.0, sigma_b2=0.25, seed=0)
    for layer in m:  # every layer, the first included
        _check_var(layer.weight, 3.0 / fans(layer)[0])
    _check_var(m[1].bias, 0.25)
    initialize(m, "gaussian", sigma_w2=1.0, sigma_b2=0.0, seed=0)
    assert torch.count_nonzero(m[1].bias) == 0


@pytest.mark.parametrize(
    ("scheme", "var"),
    [
        ("lecun", lambda fi, fo: 1.0 / fi),
        ("glorot", lambda fi, fo: 2.0 / (fi + fo)),
        ("he", lambda fi, fo: 2.0 / fi),
    ],
)
def test_variance_scaling(scheme, var):
    m = _toy()
    rec = initialize(m, scheme, seed=0)
    for layer, lrec in zip(m, rec["layers"], strict=True):
        fi, fo = fans(layer)
        _check_var(layer.weight, var(fi, fo))
        assert lrec["weight_var"] == pytest.approx(var(fi, fo))
        assert torch.count_nonzero(layer.bias) == 0


# ----------------------------------------------------------------------------------------
# Orthogonal
# ----------------------------------------------------------------------------------------
def _eye_close(a: torch.Tensor, gain2: float):
    a = a.double()
    torch.testing.assert_close(a, gain2 * torch.eye(a.shape[0], dtype=torch.float64), atol=1e-5 * gain2, rtol=0)


def test_orthogonal_linear():
    m = nn.Sequential(nn.Linear(50, 40), nn.Linear(40, 40), nn.Linear(40, 100), nn.Linear(100, 30))
    rec = initialize(m, "orthogonal", activation="tanh", seed=0)
    g2 = eoc("tanh", q_star=1.0).sigma_w2
    assert rec["sigma_w2"] == pytest.approx(g2)
    w0, w1, w2, w3 = (layer.weight.detach() for layer in m)
    _eye_close(w0 @ w0.T, 1.0)  # first layer: maps unit-variance inputs to q* = 1, 40 <= 50 rows orthonormal
    _eye_close(w1 @ w1.T, g2)  # square: W W^T = W^T W = gain^2 I
    _eye_close(w1.T @ w1, g2)
    _eye_close(w2.T @ w2, g2)  # tall (100 x 40): orthonormal columns
    _eye_close(w3 @ w3.T, g2)  # wide (30 x 100): orthonormal rows
    assert rec["layers"][1]["gain"] == pytest.approx(math.sqrt(g2))
    # a widening first layer gets gain^2 = q*/input_q * out/in so its outputs still have variance q*
    m = nn.Sequential(nn.Linear(20, 80))
    rec = initialize(m, "orthogonal", activation="tanh", seed=0)
    _eye_close(m[0].weight.detach().T @ m[0].weight.detach(), 4.0)
    x = torch.randn(4000, 20, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        h = x @ m[0].weight.T  # exact isometry up to the factor: mean h^2 = (80/20 ||x||^2) / 80 = mean x^2
    assert float(h.pow(2).mean()) == pytest.approx(float(x.pow(2).mean()), rel=1e-5)


def test_orthogonal_biases_follow_eoc():
    m = nn.Sequential(nn.Linear(64, 256), nn.Linear(256, 4096))
    rec = initialize(m, "orthogonal", activation="erf", seed=0)
    _check_var(m[1].bias, rec["sigma_b2"])
    assert torch.count_nonzero(m[0].bias) == 0


def test_delta_orthogonal_conv():
    m = nn.ModuleList(
        [
            nn.Conv2d(3, 8, 3),
            nn.Conv2d(16, 32, 3),
            nn.Conv2d(32, 16, 3),
            nn.Conv1d(8, 8, 5),
            nn.Conv2d(8, 16, 3, groups=2),
        ]
    )
    rec = initialize(m, "orthogonal", activation="tanh", seed=0)
    g2 = rec["sigma_w2"]
    for layer, lrec in zip(m, rec["layers"], strict=True):
        w = layer.weight.detach()
        c = tuple(k // 2 for k in w.shape[2:])
        centre = w[(slice(None), slice(None), *c)]
        assert torch.linalg.matrix_rank(centre.double()) == min(centre.shape)
        off = w.clone()
        off[(slice(None), slice(None), *c)] = 0
        assert torch.count_nonzero(off) == 0  # only the centre tap is non-zero
        assert lrec["law"] == "delta_orthogonal"
    _eye_close(m[0].weight[:, :, 1, 1].T @ m[0].weight[:, :, 1, 1], 1.0 * 8 / 3)  # first layer, out > in
    h = m[1].weight.detach()[:, :, 1, 1]
    _eye_close(h.T @ h, g2)  # out >= in: orthogonal (columns)
    h = m[2].weight.detach()[:, :, 1, 1]
    _eye_close(h @ h.T, g2)  # out < in: semi-orthogonal (rows)
    h = m[3].weight.detach()[:, :, 2]
    _eye_close(h @ h.T, g2)
    # groups=2: the centre tap is block diagonal, each 8 x 4 block has orthonormal columns
    h = m[4].weight.detach()[:, :, 1, 1]  # (16, 4): rows 0-7 act on group 0, 8-15 on group 1
    _eye_close(h[:8].T @ h[:8], g2)
    _eye_close(h[8:].T @ h[8:], g2)


def test_delta_orthogonal_is_an_isometry():
    """A delta-orthogonal conv with circular padding maps ||x|| to gain ||x|| exactly (out >= in)."""
    conv = nn.Conv2d(16, 32, 3, padding=1, padding_mode="circular", bias=False)
    net = nn.Sequential(nn.Linear(1, 1), conv)  # a first layer, so conv gets the EOC gain
    rec = initialize(net, "orthogonal", activation="tanh", seed=0)
    x = torch.randn(2, 16, 10, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = conv.double()(x)
    ratio = y.flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)
    torch.testing.assert_close(ratio, torch.full((2,), math.sqrt(rec["sigma_w2"]), dtype=torch.float64))


# ----------------------------------------------------------------------------------------
# Correlated weights (seed 000 Sec. 5)
# ----------------------------------------------------------------------------------------
def test_correlated_covariance_structure():
    """W_k^{ij} = W_ind^{ij} + eta w^k with W_ind, w^k ~ N(0, sigma_w2/fan_in) and one w^k per
    layer: Var = (1 + eta^2) s2, Cov(W^{ij}, W^{ml}) = eta^2 s2, s2 = sigma_w2/fan_in."""
    n_layers, eta = 4000, 1.0
    m = nn.Sequential(*[nn.Linear(2, 3, bias=False) for _ in range(n_layers)])
    rec = initialize(m, "correlated", eta=eta, seed=0)  # relu: sigma_w2 = 2, so s2 = 2/2 = 1
    s2 = 1.0
    samples = torch.stack([layer.weight.detach().flatten() for layer in m]).double().numpy()  # (4000, 6)
    cov = samples.T @ samples / n_layers  # mean is 0 by construction
    want = s2 * (eta**2 * np.ones((6, 6)) + np.eye(6))
    # sd of an empirical covariance of zero-mean Gaussians: sqrt((C_ij^2 + C_ii C_jj) / n)
    sd = np.sqrt((want**2 + np.outer(np.diag(want), np.diag(want))) / n_layers)
    assert np.all(np.abs(cov - want) <= K * sd), (cov, want)
    assert rec["layers"][5]["weight_var"] == pytest.approx((1 + eta**2) * s2)
    # the recorded shared draw is the one in the weights: W - eta w^k is the iid part
    shared = np.array([r["w_shared"] for r in rec["layers"]])[:, None]
    ind = samples - eta * shared
    c_ind = ind.T @ ind / n_layers
    assert np.all(np.abs(c_ind - s2 * np.eye(6)) <= K * np.sqrt((np.eye(6) + 1) * s2**2 / n_layers))


def test_correlated_single_wide_layer():
    """In one big layer the entries share eta w: their mean is eta w, their spread sigma_w2/fan_in."""
    m = nn.Sequential(nn.Linear(500, 400), nn.Linear(500, 400))
    rec = initialize(m, "correlated", activation="tanh", eta=2.0, seed=3)
    s2 = eoc("tanh", q_star=1.0).sigma_w2 / 500
    for layer, r in zip(m, rec["layers"], strict=True):
        w = layer.weight.detach().double()
        assert float(w.mean()) == pytest.approx(2.0 * r["w_shared"], abs=K * math.sqrt(s2 / w.numel()))
        _check_var(w - w.mean(), s2)


# ----------------------------------------------------------------------------------------
# Bad input, activations, pruned layers
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("scheme", "kw", "match"),
    [
        ("xavier", {}, "known schemes: eoc, gaussian, lecun, glorot, he, orthogonal, correlated"),
        ("gaussian", {"sigma_w2": 1.0}, "needs both sigma_w2 and sigma_b2"),
        ("gaussian", {"sigma_w2": -1.0, "sigma_b2": 0.0}, "sigma_w2 is a variance"),
        ("gaussian", {"sigma_w2": 1.0, "sigma_b2": -0.1}, "sigma_b2 is a variance"),
        ("eoc", {"q_star": 0.0}, "q_star"),
        ("eoc", {"sigma_w2": 2.0}, "scheme='gaussian'"),
        ("correlated", {}, "needs eta"),
        ("correlated", {"eta": float("nan")}, "eta must be a finite number"),
        ("eoc", {"eta": 0.1}, "only used by scheme='correlated'"),
        ("he", {"sigma_w2": 2.0}, "sets its own variances"),
        ("lecun", {"first_layer": "q_star"}, "first_layer"),
        ("eoc", {"first_layer": "input"}, "allowed: q_star, same"),
        ("eoc", {"seed": 1, "generator": torch.Generator()}, "seed or generator"),
        ("eoc", {"activation": "swish"}, "unknown activation"),
    ],
)
def test_bad_input(scheme, kw, match):
    with pytest.raises(ValueError, match=match):
        initialize(_toy(), scheme, **kw)


def test_no_layer():
    with pytest.raises(ValueError, match=r"no nn\.Linear"):
        initialize(nn.Sequential(nn.ReLU()), "he")


def test_activation_from_model_and_torch_modules():
    class Net(nn.Module):
        def __init__(self, activation):
            super().__init__()
            self.activation = activation
            self.fc = nn.Linear(4, 4)

    assert initialize(Net("tanh"), "eoc", seed=0)["activation"] == "tanh"
    act = get_activation("crelu", tau=0.3, m=1.2)
    assert initialize(Net(act), "eoc", seed=0)["activation"] == act.label()
    assert initialize(Net(act.torch_module()), "eoc", seed=0)["activation"] == act.label()
    assert initialize(Net(nn.Tanh()), "eoc", seed=0)["activation"] == "tanh"
    rec = initialize(Net(nn.LeakyReLU(0.2)), "eoc", seed=0)
    assert rec["sigma_w2"] == pytest.approx(2.0 / (1 + 0.2**2))
    rec = initialize(nn.Linear(3, 3), "eoc", activation="crelu", act_params={"tau": 0.3, "m": 1.2}, seed=0)
    assert rec["activation"] == act.label()


def test_pruned_layer_keeps_mask():
    from torch.nn.utils import prune

    m = nn.Sequential(nn.Linear(30, 30), nn.Linear(30, 30))
    prune.random_unstructured(m[1], "weight", amount=0.5)
    mask = m[1].weight_mask.clone()
    before = m[1].weight_orig.detach().clone()
    initialize(m, "eoc", activation="tanh", seed=0)
    assert not torch.equal(before, m[1].weight_orig)
    assert torch.equal(m[1].weight_mask, mask)
    assert torch.equal(m[1].weight, m[1].weight_orig * mask)
    assert torch.count_nonzero(m(torch.randn(2, 30)).isnan()) == 0


# ----------------------------------------------------------------------------------------
# The measurement: q^l stays at q* in a wide EOC MLP, drifts when sigma_w2 is 1.5x
# ----------------------------------------------------------------------------------------
WIDTH, DEPTH, BATCH = 2000, 20, 64
_Z, _W = np.polynomial.hermite_e.hermegauss(201)
_W = _W / _W.sum()


def _tolerances(act, sigma_w2: float, q: float, width: int, depth: int) -> np.ndarray:
    """K standard deviations of the relative deviation q^l/q - 1 at each layer of a width-N MLP
    whose mean-field variance sits at the fixed point q.

    Given layer l, the N pre-activations of layer l+1 for one input are iid
    N(0, sigma_w2 m_l + sigma_b2) with m_l = (1/N) sum_j phi(h_j^l)^2, so the empirical
    q^{l+1} = (1/N) sum_i h_i^2 is off its conditional mean by a relative variance 2/N. The
    conditional mean moves with m_l; regressing phi(h)^2 on h^2 splits that into V'(q) (q^l - q)
    (the slope of the variance map) plus a residual of variance sigma_w2^2 r / N,
    r = Var(phi^2) - Cov(phi^2, h^2)^2 / Var(h^2). Linearized, the relative deviation d_l obeys
    d_{l+1} = V'(q) d_l + e_l with Var(e_l) = (2 + sigma_w2^2 r / q^2) / N, and the first
    layer has Var(d_1) = 4/N (2/N from the input's ||x||^2/N, 2/N from the weights). Averaging
    q^l over a batch of inputs cannot increase a variance (Cauchy-Schwarz), so these bounds
    hold for the batch mean too; the mean-field bias is O(1/N), negligible against O(1/sqrt N).
    For N = 2000 this gives about 0.035 per layer, a tolerance K sd ~ 0.18-0.22.
    """
    h = math.sqrt(q) * _Z
    p2 = act.phi(h) ** 2
    mean = _W @ p2
    cov = _W @ ((p2 - mean) * (h * h - q))
    r = _W @ ((p2 - mean) ** 2) - cov**2 / (2 * q * q)
    slope = sigma_w2 * cov / (2 * q * q)  # = V'(q)
    innov = (2.0 + sigma_w2**2 * r / q**2) / width
    v = [4.0 / width]
    for _ in range(depth - 1):
        v.append(slope**2 * v[-1] + innov)
    return K * np.sqrt(np.array(v))


def _layer_variances(act, net: nn.ModuleList, seed: int = 123) -> np.ndarray:
    f = act.torch_module()
    x = torch.randn(BATCH, WIDTH, generator=torch.Generator().manual_seed(seed))  # standardized: input_q = 1
    qs = []
    with torch.no_grad():
        h = x
        for i, lin in enumerate(net):
            h = lin(h if i == 0 else f(h))
            qs.append(float(h.pow(2).mean()))
    return np.array(qs)


@pytest.mark.parametrize(("name", "kw"), [("tanh", {"sigma_b2": 0.05}), ("erf", {"q_star": 1.0})])
def test_eoc_mlp_keeps_q_star_and_off_eoc_drifts(name, kw):
    act = get_activation(name)
    p = eoc(act, **kw)
    # skip_init: no default draw, initialize() sets every entry
    net = nn.ModuleList([torch.nn.utils.skip_init(nn.Linear, WIDTH, WIDTH) for _ in range(DEPTH)])

    rec = initialize(net, "eoc", activation=act, seed=0, **kw)
    assert rec["q_star"] == pytest.approx(p.q_star)
    dev = _layer_variances(act, net) / p.q_star - 1.0
    tol = _tolerances(act, p.sigma_w2, p.q_star, WIDTH, DEPTH)
    assert np.all(np.abs(dev) <= tol), (dev.round(3), tol.round(3))

    # the same net with sigma_w2 1.5x larger (every layer): q^l leaves q* for the larger fixed
    # point q** of V (2.0 q* for tanh, 1.65 q* for erf), far outside the tolerance
    sw = 1.5 * p.sigma_w2
    initialize(net, "gaussian", sigma_w2=sw, sigma_b2=p.sigma_b2, seed=0)
    q_off = _layer_variances(act, net)
    dev_off = q_off / p.q_star - 1.0
    assert np.all(np.abs(dev_off[1:]) > 2 * tol[1:]), dev_off.round(3)
    q2 = max(fp.q for fp in fixed_points(act, sw, p.sigma_b2))
    tol2 = _tolerances(act, sw, q2, WIDTH, DEPTH)
    assert np.all(np.abs(q_off[10:] / q2 - 1.0) <= tol2[10:]), (q_off[10:] / q2).round(3)


def test_models_of_the_zoo():
    """sigprop's own models carry ``.activation``; every weight layer is initialized."""
    models = pytest.importorskip("sigprop.nets.models")
    mlp = models.MLP(32, 10, [64, 64], activation="tanh")
    rec = initialize(mlp, "eoc", seed=0)
    assert rec["activation"] == "tanh"
    assert [r["name"] for r in rec["layers"]] == [n for n, m in mlp.named_modules() if isinstance(m, nn.Linear)]
    assert rec["layers"][0]["sigma_w2"] == pytest.approx(1.0)
    assert mlp(torch.randn(3, 32)).shape == (3, 10)
