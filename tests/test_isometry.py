"""Tests of sigprop.pruning.isometry: orthogonal init, approximate isometry, orthogonality score."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from sigprop.errors import NumericalError
from sigprop.nets.models import MLP, VCNN
from sigprop.pruning import (
    apply_masks,
    approximate_isometry,
    make_masks,
    orthogonal_init,
    orthogonality_score,
    random_scores,
)
from sigprop.pruning.isometry import _objective_grad
from sigprop.theory.meanfield import eoc

pytestmark = pytest.mark.usefixtures("single_thread")


def gram_dev_numpy(w: np.ndarray, gain: float = 1.0) -> float:
    """||G - gain^2 I||_F with G the smaller-side Gram, in numpy (independent of the torch code)."""
    w = w.reshape(w.shape[0], -1)
    g = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
    return float(np.linalg.norm(g - gain**2 * np.eye(g.shape[0]), "fro"))


def test_orthogonal_init_gain_gives_exact_isometry_per_layer():
    m = MLP(30, 10, [50, 50, 20], activation="tanh").double()
    rec = orthogonal_init(m, gain=1.5, seed=3)
    for layer in m.layers:
        w = layer.weight.detach().numpy()
        assert gram_dev_numpy(w, 1.5) < 1e-12  # every singular value is the gain
        np.testing.assert_allclose(np.linalg.svd(w, compute_uv=False), 1.5, rtol=1e-12)
        assert torch.all(layer.bias == 0)
    assert rec["scheme"] == "orthogonal" and m.sigprop_init is rec
    assert orthogonality_score(m, gain=1.5) < 1e-12
    # conv: delta-orthogonal kernels, out >= in channels -> exactly orthogonal centre tap
    c = VCNN((4, 6, 6), 10, depth=2, width=8, activation="tanh").double()
    orthogonal_init(c, gain=1.0, seed=0)
    convs = [mod for mod in c.modules() if isinstance(mod, nn.Conv2d)]
    centre = convs[1].weight.detach()[:, :, 1, 1].numpy()
    np.testing.assert_allclose(centre.T @ centre, np.eye(8), atol=1e-12)
    assert float(convs[1].weight.detach().abs().sum()) == pytest.approx(float(np.abs(centre).sum()))


def test_orthogonal_init_default_is_the_mean_field_gain():
    m = MLP(30, 10, [50, 50], activation="tanh").double()
    rec = orthogonal_init(m, seed=0)
    sw = eoc("tanh", q_star=1.0).sigma_w2
    assert rec["sigma_w2"] == pytest.approx(sw)
    s = np.linalg.svd(m.layers[1].weight.detach().numpy(), compute_uv=False)
    np.testing.assert_allclose(s, np.sqrt(sw), rtol=1e-12)
    with pytest.raises(ValueError, match="gain"):
        orthogonal_init(m, gain=-1.0)


def test_orthogonality_score_matches_definition_on_pruned_net():
    m = MLP(30, 10, [50, 40], activation="tanh").double()
    orthogonal_init(m, gain=1.0, seed=0)
    assert orthogonality_score(m) < 1e-12
    apply_masks(m, make_masks(random_scores(m, 11), 0.7))
    expected = np.mean([gram_dev_numpy(layer.weight.detach().numpy()) for layer in m.layers])
    assert orthogonality_score(m) == pytest.approx(expected, rel=1e-12)
    assert expected > 1.0
    # conv kernels are reshaped to (out, in * kh * kw)
    c = VCNN((4, 6, 6), 10, depth=2, width=8, activation="tanh").double()
    layers = [mod for mod in c.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    expected = np.mean([gram_dev_numpy(mod.weight.detach().numpy(), 0.5) for mod in layers])
    assert orthogonality_score(c, gain=0.5) == pytest.approx(expected, rel=1e-12)


def test_descent_gradient_is_the_gradient_of_eq8():
    # independent route: autograd of ||Gram(W) - gain^2 I||_F, both Gram orientations
    g = torch.Generator().manual_seed(0)
    for rows, cols in [(7, 4), (4, 7), (5, 5)]:
        w = torch.randn(3, rows, cols, generator=g, dtype=torch.float64).requires_grad_(True)
        gram = w.transpose(-1, -2) @ w if rows >= cols else w @ w.transpose(-1, -2)
        eye = torch.eye(min(rows, cols), dtype=torch.float64)
        torch.linalg.matrix_norm(gram - 1.3 * eye).sum().backward()
        torch.testing.assert_close(_objective_grad(w.detach(), 1.3, eye), w.grad, rtol=1e-12, atol=1e-14)


def test_approximate_isometry_dense_converges_to_orthogonal():
    # feasible problem: dense Gaussian layers (both orientations) -> all singular values ~ 1
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 20), nn.Tanh(), nn.Linear(20, 8)).double()
    rec = approximate_isometry(net, max_steps=5000)
    for layer in (net[0], net[2]):
        s = np.linalg.svd(layer.weight.detach().numpy(), compute_uv=False)
        np.testing.assert_allclose(s, 1.0, atol=0.02)
    assert [r["gram"] for r in rec["layers"]] == ["WtW", "WWt"]
    assert rec["os_after"] < 0.05 * rec["os_before"]
    json.dumps(rec)


def test_approximate_isometry_only_moves_kept_weights_and_never_worsens():
    m = MLP(30, 10, [50, 50, 50], activation="tanh").double()
    orthogonal_init(m, gain=1.0, seed=0)
    apply_masks(m, make_masks(random_scores(m, 5), 0.8))
    masks = [layer.weight_mask.clone() for layer in m.layers]
    origs = [layer.weight_orig.detach().clone() for layer in m.layers]
    os_before = orthogonality_score(m)
    rec = approximate_isometry(m, max_steps=3000)
    assert rec["os_before"] == pytest.approx(os_before, rel=1e-12)
    assert rec["os_after"] == pytest.approx(orthogonality_score(m), rel=1e-6)
    assert rec["os_after"] < 0.5 * os_before
    for layer, mask, orig, r in zip(m.layers, masks, origs, rec["layers"], strict=True):
        assert torch.equal(layer.weight_mask, mask)
        assert torch.equal(layer.weight_orig.detach()[mask == 0], orig[mask == 0])
        assert torch.all(layer.weight[mask == 0] == 0)
        assert r["loss_after"] <= r["loss_before"]
    # forward still works with the (refreshed) masked weights
    assert torch.isfinite(m(torch.randn(4, 30, dtype=torch.float64))).all()


def test_approximate_isometry_leaves_an_orthogonal_layer_alone():
    # the objective is a norm, not its square: at the exact minimum (0) a fixed step would
    # overshoot, so the best iterate (the start) is kept
    m = MLP(20, 20, [20], activation="tanh").double()
    orthogonal_init(m, gain=1.0, seed=0)
    w = m.layers[0].weight.detach().clone()
    rec = approximate_isometry(m, max_steps=50)
    torch.testing.assert_close(m.layers[0].weight, w)
    assert rec["os_after"] < 1e-12


def test_approximate_isometry_conv_and_progress():
    c = VCNN((4, 6, 6), 10, depth=2, width=8, activation="tanh").double()
    orthogonal_init(c, gain=1.0, seed=0)
    apply_masks(c, make_masks(random_scores(c, 2), 0.5, scope="layerwise"))
    rec = approximate_isometry(c, max_steps=300, progress=True)
    assert rec["os_after"] < rec["os_before"]
    convs = [mod for mod in c.modules() if isinstance(mod, nn.Conv2d)]
    assert all(torch.all(mod.weight[mod.weight_mask == 0] == 0) for mod in convs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lr": 0.0}, "lr"),
        ({"max_steps": -1}, "max_steps"),
        ({"tol": -1e-3}, "tol"),
        ({"patience": 0}, "patience"),
        ({"gain": 0.0}, "gain"),
    ],
)
def test_approximate_isometry_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        approximate_isometry(MLP(4, 3, [5]), **kwargs)


def test_approximate_isometry_divergence_raises():
    net = nn.Sequential(nn.Linear(3, 3)).double()
    with torch.no_grad():
        net[0].weight.fill_(1e200)
    with pytest.raises(NumericalError):
        approximate_isometry(net, lr=1e300, max_steps=3)
