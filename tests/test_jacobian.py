"""Empirical Jacobians (sigprop.jacobian): the explicit product against autograd, NetSpec
read-back, singular value statistics on known cases, Monte Carlo checks of the closed-form
trace moments of J^T J, seed 000 Fig. 1 (norm vs depth) and Thm 4.1 (pruning rescale).

Statistical tolerances are K = 5 standard errors estimated from the sample itself (a false
failure has probability ~1e-6 per check under a normal approximation), plus, where the
closed form is a large-width limit, an explicit allowance for the finite-width bias.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from sigprop.errors import NumericalError  # noqa: E402
from sigprop.jacobian import (  # noqa: E402
    EmpiricalSpectrum,
    build_network,
    empirical_spectrum,
    input_output_jacobian,
    jacobian_stats,
    netspec_from_module,
    random_input,
    singular_values,
    spectral_norm_vs_depth,
)
from sigprop.nets.init import initialize  # noqa: E402
from sigprop.nets.models import MLP  # noqa: E402
from sigprop.netspec import NetSpec  # noqa: E402
from sigprop.theory.activations import available, get_activation  # noqa: E402

K = 5.0


def _autograd(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Independent route: torch.autograd.functional.jacobian, one example at a time."""
    rows = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1].detach().clone()
        j = torch.autograd.functional.jacobian(lambda z: model(z).reshape(-1), xi)
        rows.append(j.reshape(j.shape[0], -1))
    return torch.stack(rows)


def _se(v: np.ndarray) -> float:
    return float(np.std(v, ddof=1) / math.sqrt(v.size))


# ----------------------------------------------------------------------------------------
# explicit product == autograd
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", available())
def test_explicit_product_matches_autograd_every_activation(name):
    # rectangular profile (narrow -> wide -> narrow), biases, masked layers, tiny widths
    spec = NetSpec(widths=(6, 9, 4, 5), activation=name, sigma_w2=1.7, sigma_b2=0.3, kept=(0.5, 0.75, 1.0))
    net = build_network(spec, seed=3)
    x = random_input(spec, 4, 1) * 1.3 + 0.2
    J = input_output_jacobian(net, x)
    assert J.shape == (4, 5, 6)
    torch.testing.assert_close(J, _autograd(net, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("widths", [(20, 5, 7, 3), (3, 8, 16, 30), (10, 10, 10)])
@pytest.mark.parametrize("weights", ["gaussian", "correlated", "orthogonal"])
def test_explicit_product_both_accumulation_orders(widths, weights):
    # (20,5,7,3) accumulates from the output side, (3,8,16,30) from the input side
    kw = {"eta": 0.7} if weights == "correlated" else {}
    kept = 1.0 if weights == "orthogonal" else 0.6
    spec = NetSpec(widths=widths, activation="leaky_relu", act_params={"alpha": 0.2}, weights=weights, kept=kept, **kw)
    net = build_network(spec, seed=0)
    x = random_input(spec, 3, 5)
    torch.testing.assert_close(input_output_jacobian(net, x), _autograd(net, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("op_cost", [0, 10**12])
@pytest.mark.parametrize("name", ["relu", "relu_tau", "crelu", "tanh"])
def test_gated_and_dense_routes_match_autograd(monkeypatch, name, op_cost):
    # op_cost 0 forces the per-example gated route (only active units multiplied) whenever an
    # activation has phi' = 0 somewhere, 1e12 forces the dense batched route
    import sigprop.jacobian as jac_mod

    monkeypatch.setattr(jac_mod, "_OP_COST", op_cost)
    spec = NetSpec(widths=(15, 30, 25, 8), activation=name, sigma_b2=0.2)
    net = build_network(spec, seed=5)
    x = random_input(spec, 4, 6)
    x[0] = -x[0].abs() * 50  # a large negative input: more dead units
    torch.testing.assert_close(input_output_jacobian(net, x), _autograd(net, x), rtol=1e-10, atol=1e-12)


def test_dead_layer_gives_zero_jacobian(monkeypatch):
    import sigprop.jacobian as jac_mod

    monkeypatch.setattr(jac_mod, "_OP_COST", 0)
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double()
    with torch.no_grad():
        net[0].bias.fill_(-100.0)  # every unit of layer 1 dead for small inputs
    x = torch.randn(2, 4, dtype=torch.float64)
    assert torch.equal(input_output_jacobian(net, x), torch.zeros(2, 2, 4, dtype=torch.float64))
    assert jacobian_stats(net, x)["cond"] is None


def test_sigprop_mlp_masked_and_float32():
    torch.manual_seed(0)
    model = MLP(12, 4, [16, 8], "crelu", act_params={"tau": 0.3, "m": 1.5})
    initialize(model, "eoc", seed=1)
    from sigprop.pruning.masks import apply_masks

    masks = {f"layers.{i}.weight": torch.rand(layer.weight.shape) < 0.7 for i, layer in enumerate(model.layers)}
    apply_masks(model, masks)
    x = torch.randn(5, 3, 4)  # (B, ...) inputs are flattened
    J = input_output_jacobian(model, x)
    assert J.dtype == torch.float32 and J.shape == (5, 4, 12)
    torch.testing.assert_close(J, _autograd(model, x.reshape(5, 12)), rtol=1e-5, atol=1e-6)
    # the pruned weights really are zero in the Jacobian: a fully masked input column gives 0
    masks = {"layers.0.weight": torch.ones(16, 12, dtype=torch.bool)}
    masks["layers.0.weight"][:, 2] = False
    apply_masks(model, masks)
    assert float(input_output_jacobian(model, x)[:, :, 2].abs().max()) == 0.0


def test_nn_sequential_with_torch_activations():
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Flatten(),
        nn.Linear(6, 7),
        nn.Tanh(),
        nn.Linear(7, 7),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Sequential(nn.Linear(7, 3), nn.GELU()),
        nn.Linear(3, 2),
    ).double()
    net.train()
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    J = input_output_jacobian(net, x)
    assert net.training  # mode restored
    net.eval()
    torch.testing.assert_close(J, _autograd(net, x.reshape(4, 6)), rtol=1e-10, atol=1e-12)


class _TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 5 * 5, 4)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        h = h + torch.tanh(self.conv2(h))
        return self.fc(h.flatten(1))


def test_fallback_cnn_matches_autograd_and_leaves_model_alone():
    torch.manual_seed(2)
    model = _TinyResNet().double()
    model.bn.running_mean.uniform_(-1, 1)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    J = input_output_jacobian(model, x)
    assert model.training
    for k, v in model.state_dict().items():  # running stats untouched (eval mode inside)
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    assert J.shape == (3, 4, 50)
    torch.testing.assert_close(J, _autograd(model, x), rtol=1e-10, atol=1e-12)


def test_fallback_sigprop_cnn_and_shape_check():
    from sigprop.nets.models import VCNN

    torch.manual_seed(4)
    model = VCNN((1, 6, 6), 3, depth=2, width=4, activation="tanh").double()
    x = torch.randn(2, 1, 6, 6, dtype=torch.float64)
    J = input_output_jacobian(model, x)
    assert J.shape == (2, 3, 36)
    torch.testing.assert_close(J, _autograd(model, x), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(input_output_jacobian(model, x.reshape(2, 36)), J)  # flat inputs too
    with pytest.raises(ValueError, match="36 input features"):
        input_output_jacobian(model, torch.randn(2, 1, 5, 5, dtype=torch.float64))


def test_fallback_sequential_with_batchnorm():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2)).double()
    net[1].running_var.uniform_(0.5, 2.0)
    x = torch.randn(4, 5, dtype=torch.float64)
    J = input_output_jacobian(net, x)
    net.eval()
    torch.testing.assert_close(J, _autograd(net, x), rtol=1e-10, atol=1e-12)


def test_jacobian_bad_input():
    net = build_network(NetSpec(widths=(4, 3)), seed=0)
    with pytest.raises(ValueError, match="4 input features"):
        input_output_jacobian(net, torch.zeros(2, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="batch"):
        input_output_jacobian(net, torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"nn\.Module"):
        input_output_jacobian("net", torch.zeros(1, 4))
    with pytest.raises(NumericalError):
        singular_values(torch.full((1, 2, 2), float("nan")))


# ----------------------------------------------------------------------------------------
# singular values / jacobian_stats on known cases
# ----------------------------------------------------------------------------------------
def test_stats_orthogonal_linear_net_is_isometric():
    # Haar orthogonal square layers with sigma_w2 = 1, linear activation: J is orthogonal
    spec = NetSpec(widths=(30, 30, 30, 30), activation="linear", sigma_w2=1.0, weights="orthogonal")
    net = build_network(spec, seed=4)
    st = jacobian_stats(net, random_input(spec, 3, 0))
    assert st["mean"] == pytest.approx(1.0, abs=1e-12)
    assert st["std"] == pytest.approx(0.0, abs=1e-12)
    assert st["cond"] == pytest.approx(1.0, abs=1e-12)
    assert st["norm"] == pytest.approx(1.0, abs=1e-12)


def test_stats_diagonal_net_closed_form():
    # one linear layer with W = diag(1, 2, 3, 4): singular values 1..4 for every input
    lin = nn.Linear(4, 4, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0])))
    st = jacobian_stats(nn.Sequential(lin), torch.randn(2, 4))
    assert st["mean"] == pytest.approx(2.5)
    assert st["std"] == pytest.approx(math.sqrt(1.25))  # population std of 1,2,3,4
    assert st["cond"] == pytest.approx(4.0)
    assert st["norm"] == pytest.approx(4.0)


def test_stats_cond_none_for_rank_deficient_and_json_safe():
    # ReLU square layer: rows of dead units are zero -> a zero singular value -> cond None
    spec = NetSpec(widths=(20, 20), activation="relu")
    net = build_network(spec, seed=0)
    st = jacobian_stats(net, random_input(spec, 2, 0))
    assert st["cond"] is None
    json.dumps(st, allow_nan=False)
    assert set(st) == {"mean", "std", "cond", "norm"}
    assert all(isinstance(v, float) for k, v in st.items() if k != "cond")


def test_singular_values_shape_and_dtype():
    J = torch.randn(3, 4, 7, dtype=torch.float32)
    s = singular_values(J)
    assert s.shape == (3, 4) and s.dtype == torch.float64
    ref = np.linalg.svd(J.double().numpy(), compute_uv=False)
    np.testing.assert_allclose(s.numpy(), ref, rtol=1e-12)
    assert singular_values(J[0]).shape == (4,)


def test_singular_values_with_zero_rows_and_columns():
    # zero rows/columns are dropped before the SVD and padded back as exact zeros
    J = torch.randn(2, 9, 6, dtype=torch.float64)
    J[0, [1, 4, 5, 7], :] = 0.0
    J[1, :, [0, 2, 3]] = 0.0
    J[1, 8, :] = 0.0
    s = singular_values(J)
    ref = np.linalg.svd(J.numpy(), compute_uv=False)
    np.testing.assert_allclose(s.numpy(), ref, rtol=1e-10, atol=1e-13)
    assert torch.all(s[1, 3:] == 0.0)


# ----------------------------------------------------------------------------------------
# build_network / random_input / netspec_from_module
# ----------------------------------------------------------------------------------------
def test_random_input_on_the_sphere():
    spec = NetSpec(widths=(50, 10), q0=2.5)
    x = random_input(spec, 6, torch.Generator().manual_seed(0))
    np.testing.assert_allclose((x * x).sum(1).numpy() / 50, 2.5, rtol=1e-13)


def test_build_network_is_a_real_pruned_module():
    spec = NetSpec(widths=(10, 20, 5), activation="tanh", kept=(0.5, 0.3))
    net = build_network(spec, seed=0)
    lin = net[0]
    assert hasattr(lin, "weight_orig") and hasattr(lin, "weight_mask")
    assert int(lin.weight_mask.sum()) == round(0.5 * 200) and int(net[2].weight_mask.sum()) == round(0.3 * 100)
    assert torch.equal(lin.weight, lin.weight_orig * lin.weight_mask)
    again = build_network(spec, seed=0)
    assert torch.equal(again[0].weight, lin.weight)  # reproducible
    assert not torch.equal(build_network(spec, seed=1)[0].weight, lin.weight)


def test_netspec_round_trip_gaussian_masked():
    spec = NetSpec(
        widths=(200, 300, 250, 10),
        activation=("tanh", get_activation("crelu", tau=0.2, m=1.1), "linear"),
        sigma_w2=(1.5, 2.0, 1.0),
        sigma_b2=(0.1, 0.0, 0.05),
        kept=(0.5, 0.8, 1.0),
    )
    net = build_network(spec, seed=7)
    got = NetSpec.from_module(net, q0=2.0)
    assert got.widths == spec.widths and got.kept == spec.kept  # kept * n is an integer here: exact
    assert [a.label() for a in got.activation] == [a.label() for a in spec.activation]
    assert got.weights == "gaussian" and got.q0 == 2.0
    n_kept = [200 * 300 * 0.5, 300 * 250 * 0.8, 250 * 10]
    for sw_hat, sw, n in zip(got.sigma_w2, spec.sigma_w2, n_kept, strict=True):
        # fan_in * mean(W^2) over n iid N(0, sw/fan_in): relative sd sqrt(2/n)
        assert abs(sw_hat / sw - 1) < K * math.sqrt(2 / n), (sw_hat, sw)
    for sb_hat, sb, n in zip(got.sigma_b2, spec.sigma_b2, spec.widths[1:], strict=True):
        assert abs(sb_hat - sb) <= K * sb * math.sqrt(2 / n)  # exact 0 when sigma_b2 = 0


def test_netspec_round_trip_orthogonal_and_correlated():
    spec = NetSpec(widths=(40, 60, 30), activation="tanh", sigma_w2=1.3, weights="orthogonal")
    got = netspec_from_module(build_network(spec, seed=1))
    assert got.weights == "orthogonal"
    # the sum of squares of a scaled (semi-)orthogonal matrix is deterministic: exact read-back
    np.testing.assert_allclose(got.sigma_w2, spec.sigma_w2, rtol=1e-12)

    spec = NetSpec(widths=(300, 300, 300), activation="relu", weights="correlated", eta=2.0, kept=0.5)
    got = netspec_from_module(build_network(spec, seed=2))
    assert got.weights == "correlated" and got.eta == 2.0 and got.kept == (0.5, 0.5)
    for sw_hat in got.sigma_w2:  # centred second moment of the iid part, 45000 kept entries
        assert abs(sw_hat / 2.0 - 1) < K * math.sqrt(2 / 45000)


def test_netspec_from_sigprop_mlp():
    model = MLP(30, 10, [400, 300], "tanh").double()
    initialize(model, "gaussian", sigma_w2=1.7, sigma_b2=0.2, seed=0)
    got = NetSpec.from_module(model)
    assert got.widths == (30, 400, 300, 10)
    assert [a.name for a in got.activation] == ["tanh", "tanh", "linear"]
    assert got.weights == "gaussian" and got.q0 == 1.0
    for sw_hat, n in zip(got.sigma_w2, [12000, 120000, 3000], strict=True):
        assert abs(sw_hat / 1.7 - 1) < K * math.sqrt(2 / n)
    # an orthogonal init that is then pruned is read as gaussian (NetSpec has no masked-orthogonal law)
    initialize(model, "orthogonal", seed=0)
    assert NetSpec.from_module(model).weights == "orthogonal"
    from sigprop.pruning.masks import apply_masks

    apply_masks(model, {"layers.1.weight": torch.rand(300, 400) < 0.5})
    with pytest.warns(UserWarning, match="orthogonal"):
        assert NetSpec.from_module(model).weights == "gaussian"


def test_netspec_from_module_rejects_non_mlps():
    with pytest.raises(ValueError, match="MLPs only"):
        netspec_from_module(_TinyResNet())
    with pytest.raises(ValueError, match="Conv2d"):
        netspec_from_module(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2, 1)))
    with pytest.raises(ValueError, match="one activation"):
        netspec_from_module(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Tanh()))
    with pytest.raises(ValueError, match="cannot read a sigprop activation"):
        netspec_from_module(nn.Sequential(nn.Linear(2, 2), nn.Mish()))
    with pytest.raises(ValueError, match="MLPs only"):
        netspec_from_module("mlp")


# ----------------------------------------------------------------------------------------
# empirical_spectrum
# ----------------------------------------------------------------------------------------
def _linear_m2_exact(widths, sigma_w2):
    """E[tr((J^T J)^2)] / N_0 for J = W_L ... W_1, W_l iid N(0, sigma_w2 / N_{l-1}), exactly at
    finite width (derived by Wick's theorem, independent of the code under test): with
    K = J_{l-1} J_{l-1}^T, a = tr K^2, b = (tr K)^2 and W (m x n) of entry variance s,
        E tr((W^T W K)^2) = s^2 [(m^2 + m) a + m b],  E (tr W^T W K)^2 = s^2 [m^2 b + 2 m a],
    starting from K = I_{N_0} (a = N_0, b = N_0^2)."""
    a, b = float(widths[0]), float(widths[0]) ** 2
    for n_in, m in itertools.pairwise(widths):
        s = sigma_w2 / n_in
        a, b = s * s * ((m * m + m) * a + m * b), s * s * (m * m * b + 2 * m * a)
    return a / widths[0]


def test_linear_m2_recursion_limits():
    # a single square Ginibre: E tr((W^T W)^2)/n = 2 + 1/n; the square chain tends to the
    # Fuss-Catalan value L + 1
    assert _linear_m2_exact([7, 7], 1.0) == pytest.approx(2 + 1 / 7)
    for L in (1, 3, 6):
        assert _linear_m2_exact([10**6] * (L + 1), 1.0) == pytest.approx(L + 1, rel=1e-4)


def test_linear_spectrum_moments_monte_carlo():
    widths = (60, 80, 50, 70)
    spec = NetSpec(widths=widths, activation="linear", sigma_w2=1.0)
    es = empirical_spectrum(spec, samples=40, seed=0)
    per = es.eigenvalues.reshape(-1, 60)
    m1s, m2s = per.mean(1), (per * per).mean(1)
    # E m1 = prod sigma_w2 * N_l / N_{l-1} ... = N_L / N_0 (tr is exact in expectation)
    assert abs(m1s.mean() - 70 / 60) < K * _se(m1s)
    assert abs(m2s.mean() - _linear_m2_exact(widths, 1.0)) < K * _se(m2s)
    m1, m2 = es.moments()
    assert m1 == pytest.approx(m1s.mean()) and m2 == pytest.approx(m2s.mean())
    # rank <= min width 50 of N_0 = 60 eigenvalues: the atom is exactly 1/6
    assert es.atom_at_zero == pytest.approx(1 / 6)


def test_relu_eoc_moments_monte_carlo():
    # ReLU, sigma_w2 = 2, no bias: E[m1] = 1 EXACTLY at any width (for each row w of W,
    # w -> -w flips 1{w.x > 0} and keeps (w.u)^2, so E 1{w.x>0} (w.u)^2 = |u|^2 sigma_w2/(2n)).
    # m2 -> 1 + 2L: free multiplicative convolution of L layers W^T D^2 W, each with moments
    # (1, 3) (D^2 a Bernoulli(1/2) projection: MP moments of a ratio-1/2 Wishart, times 2),
    # and m2/m1^2 - 1 is additive under free products. Finite width n: relative O(L/n) bias.
    L, n = 3, 128
    es = empirical_spectrum(NetSpec.mlp(L, n, "relu", sigma_w2=2.0), samples=30, seed=1)
    per = es.eigenvalues.reshape(-1, n)
    m1s, m2s = per.mean(1), (per * per).mean(1)
    assert abs(m1s.mean() - 1.0) < K * _se(m1s)
    assert abs(m2s.mean() - (1 + 2 * L)) < K * _se(m2s) + (1 + 2 * L) * L / n
    # not the linear-net value L + 1 nor the iid-without-gates value: the test can fail
    assert abs(m2s.mean() - (1 + L)) > K * _se(m2s)


@pytest.mark.slow
def test_relu_eoc_m2_wide_slow():
    L, n = 4, 400
    es = empirical_spectrum(NetSpec.mlp(L, n, "relu", sigma_w2=2.0), samples=120, seed=3)
    per = es.eigenvalues.reshape(-1, n)
    m2s = (per * per).mean(1)
    assert abs(m2s.mean() - (1 + 2 * L)) < K * _se(m2s) + (1 + 2 * L) * L / n


def test_relu_single_layer_atom_equals_dead_units():
    # J = D W (square, generic W): rank = number of active units, so the atom of J^T J is the
    # fraction of inactive units, counted here on an identical draw (documented seeding)
    n, samples, seed = 40, 5, 11
    spec = NetSpec(widths=(n, n), activation="relu", sigma_b2=0.5)
    es = empirical_spectrum(spec, samples=samples, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    dead = 0
    for _ in range(samples):
        net = build_network(spec, gen)
        x = random_input(spec, 1, gen)
        dead += int((net[0](x) <= 0).sum())
    assert es.n_zero == dead
    assert es.to_dict(cdf_at=[0.0])["cdf"][0.0] == pytest.approx(dead / (n * samples))


def test_spectrum_to_dict_json_and_cdf_quantiles():
    spec = NetSpec(widths=(30, 20, 40), activation="tanh", sigma_w2=1.5, sigma_b2=0.1)
    es = empirical_spectrum(spec, samples=4, seed=5, batch=2)
    assert isinstance(es, EmpiricalSpectrum)
    assert es.eigenvalues.shape == (4 * 2 * 30,) and es.spectral_norms.shape == (8,)
    d = es.to_dict(cdf_at=(0.0, 0.5, 100.0), quantiles=(0.0, 0.5, 1.0))
    json.dumps(d, allow_nan=False)
    assert set(d) == {"samples", "seed", "atom_at_zero", "cdf", "quantiles", "moments", "spectral_norm"}
    lam = np.sort(es.eigenvalues)
    assert d["cdf"][0.5] == pytest.approx(np.mean(lam <= 0.5))
    assert d["cdf"][100.0] == 1.0
    assert d["quantiles"][1.0] == pytest.approx(lam[-1]) and d["quantiles"][0.0] == lam[0]
    assert d["atom_at_zero"] == pytest.approx(1 / 3)  # rank <= 20 of N_0 = 30
    # the largest eigenvalue of each J^T J is the squared spectral norm
    np.testing.assert_allclose(es.eigenvalues.reshape(-1, 30)[:, 0], es.spectral_norms**2, rtol=1e-12)
    # the first draws do not depend on the number of samples (nor on the progress bar)
    es2 = empirical_spectrum(spec, samples=2, seed=5, batch=2, progress=True)
    np.testing.assert_array_equal(es2.eigenvalues, es.eigenvalues[: 2 * 2 * 30])


def test_spectrum_bad_input():
    spec = NetSpec(widths=(5, 5))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="samples"):
            empirical_spectrum(spec, samples=bad)
    with pytest.raises(ValueError, match="batch"):
        empirical_spectrum(spec, batch=0)
    with pytest.raises(ValueError, match="NetSpec"):
        empirical_spectrum((5, 5))
    with pytest.raises(ValueError, match="seed"):
        build_network(spec, seed=-1)
    es = empirical_spectrum(spec, samples=1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        es.to_dict(quantiles=(1.5,))


# ----------------------------------------------------------------------------------------
# seed 000: norm vs depth (Fig. 1) and pruning (Thm 4.1)
# ----------------------------------------------------------------------------------------
def _slope(res) -> float:
    d = np.repeat(res["depths"], len(res["norms"][0]))
    return float(np.polyfit(d, np.log(np.concatenate(res["norms"])), 1)[0])


def test_fig1_norm_vs_depth_slopes():
    # E||J x||^2 = (sigma_w2 / 2)^L |x|^2 exactly (see the m1 argument above), so log ||J||
    # grows like (L/2) log(sigma_w2 / 2) plus a sub-exponential term (~ (1/2) log L: the top
    # of the spectrum of J^T J at EOC grows linearly in L), whose least-squares slope over
    # depths 5..40 is about 0.5 (log 40 - log 5) / 35 ~ 0.03; the per-draw sd of log||J|| is
    # <~ 0.3 (measured), giving a slope sd ~ 0.3 / (35 sqrt(3)) ~ 0.005. Tolerance 0.06.
    depths = list(range(5, 41, 5))
    for sw, seed in ((0.5, 1), (2.0, 2), (4.0, 3)):
        res = spectral_norm_vs_depth("relu", depths, 128, sw, samples=3, seed=seed)
        assert res["depths"] == depths and len(res["mean"]) == len(depths)
        assert abs(_slope(res) - 0.5 * math.log(sw / 2)) < 0.06, (sw, _slope(res))


def test_norm_vs_depth_prefix_equals_fresh_net():
    # reading off a prefix gives exactly the Jacobian of the shallower net (same first layers)
    res = spectral_norm_vs_depth("tanh", [2, 4], 20, 1.5, sigma_b2=0.1, samples=1, seed=9)
    gen = torch.Generator().manual_seed(9)
    spec4 = NetSpec.mlp(4, 20, "tanh", sigma_w2=1.5, sigma_b2=0.1)
    net = build_network(spec4, gen)
    x = random_input(spec4, 1, gen)
    for depth, norm in zip([2, 4], res["norms"], strict=True):
        J = input_output_jacobian(net[: 2 * depth], x)
        assert norm[0] == pytest.approx(float(torch.linalg.matrix_norm(J[0], ord=2)), rel=1e-12)
    with pytest.raises(ValueError, match="depths"):
        spectral_norm_vs_depth("relu", [], 10, 2.0)
    with pytest.raises(ValueError, match="samples"):
        spectral_norm_vs_depth("relu", [1], 10, 2.0, samples=0)


def test_random_pruning_rescale_thm41():
    # Seed 000 Thm 4.1: keep p at random; unscaled, ||J|| ~ p^{L/2} ||J_dense||; with the
    # weights scaled by p^{-1/2} (sigma_w2 = 2/p) it matches the dense EOC net. Different seeds
    # for the three nets (same seeds would make this a consequence of homogeneity). The per-draw
    # sd of log||J|| at n = 128, L = 8 is <~0.2 (measured over 15 nets): with 6 draws per net
    # the SE of a difference of means is ~0.12; tolerance 0.5 in log (vs the predicted gap
    # 4 log 2 = 2.8) is ~4 SE, and the finite-width bias (sparse entries have a larger fourth
    # moment, O(1/(p n))) was measured at ~+0.1.
    L, n, p = 8, 128, 0.5
    logs = {}
    for name, sw, kept, seed in (("dense", 2.0, 1.0, 0), ("unscaled", 2.0, p, 1), ("scaled", 2.0 / p, p, 2)):
        res = spectral_norm_vs_depth("relu", [L], n, sw, samples=6, seed=seed, kept=kept)
        logs[name] = float(np.mean(np.log(res["norms"][0])))
    assert abs((logs["unscaled"] - logs["dense"]) - 0.5 * L * math.log(p)) < 0.5
    assert abs(logs["scaled"] - logs["dense"]) < 0.5


@pytest.mark.slow
def test_correlated_weights_match_iid_at_small_eta_slow():
    # seed 000 Thm 5.1: with a small correlation (eta^2 / (1 + eta^2) = 1e-4 here, n = 256) the
    # Jacobian norm is that of the iid net; with a large one it is not: the shared eta * w adds
    # eta * w * sum_j x_j to every pre-activation, O(eta sqrt(n)) times the iid part, so ReLU
    # units die together (J = 0) or the norm blows up. Measured at eta = 0.5: all 6 draws J = 0.
    L, n = 10, 256
    base = spectral_norm_vs_depth("relu", [L], n, 2.0, samples=6, seed=0)
    small = spectral_norm_vs_depth("relu", [L], n, 2.0, samples=6, seed=1, weights="correlated", eta=0.01)
    big = spectral_norm_vs_depth("relu", [L], n, 2.0, samples=6, seed=2, weights="correlated", eta=0.5)
    mb, ms, mg = (float(np.mean(r["norms"][0])) for r in (base, small, big))
    assert abs(math.log(ms / mb)) < 0.3
    assert not (0.5 < mg / mb < 2.0)
