"""Tests of sigprop.pruning.repair: rescaling factors, rescale(), eoc_subnetwork()."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from torch import nn

from sigprop.errors import NumericalError
from sigprop.nets import initialize
from sigprop.nets.models import MLP, VCNN
from sigprop.pruning import (
    RESCALE_METHODS,
    apply_masks,
    eoc_subnetwork,
    kept_per_layer,
    magnitude_scores,
    make_masks,
    random_scores,
    rescale,
    scale_factor,
)
from sigprop.theory.meanfield import eoc

pytestmark = pytest.mark.usefixtures("single_thread")


def pruned_mlp(sparsity=0.8, scope="global", seed=0, widths=(40, 30), act="tanh", init=True) -> MLP:
    m = MLP(20, 10, list(widths), activation=act).double()
    if init:
        initialize(m, "eoc", seed=seed)
    apply_masks(m, make_masks(random_scores(m, 1000 + seed), sparsity, scope=scope))
    return m


# ----------------------------------------------------------------------------- factors


@pytest.mark.parametrize("p", [0.5, 0.1, 0.01, 1e-4])
def test_magnitude_exact_factor_matches_quadrature(p):
    # independent route: tau from scipy.stats, E[Z^2 1{|Z|>tau}] by numerical quadrature
    tau = stats.norm.isf(p / 2)
    tail, _ = integrate.quad(lambda z: z * z * stats.norm.pdf(z), tau, np.inf, epsabs=0, epsrel=1e-12)
    assert scale_factor("magnitude-exact", p) ** 2 == pytest.approx(1.0 / (2 * tail), rel=1e-9)


@pytest.mark.parametrize("n", [256, 1024])
@pytest.mark.parametrize("p", [0.1, 0.01])
def test_magnitude_factor_is_seed000_eq8_in_its_own_variables(n, p):
    # seed 000 eq. (8): weights N(0, 2/n), threshold t with P(|w| > t) = p,
    # b = (sqrt(pi / (n t^2)) exp(n t^2 / 4))^(1/2)
    t = stats.norm.isf(p / 2) * math.sqrt(2 / n)
    eq8 = math.sqrt(math.sqrt(math.pi / (n * t * t)) * math.exp(n * t * t / 4))
    assert scale_factor("magnitude", p) == pytest.approx(eq8, rel=1e-10)


def test_eq8_overestimates_exact_by_mills_ratio():
    # (eq 8 / exact)^2 = 1 + Q(tau) / (tau phi(tau)) -> 1 as s -> 1 (1.295, 1.134, 1.086 at
    # s = 0.9, 0.99, 0.999): eq. (8) overestimates the kept variance, less so at high sparsity
    ratios = []
    for p in (0.5, 0.1, 0.01, 0.001, 1e-6):
        tau = stats.norm.isf(p / 2)
        mills = 1 + stats.norm.sf(tau) / (tau * stats.norm.pdf(tau))
        ratio = (scale_factor("magnitude", p) / scale_factor("magnitude-exact", p)) ** 2
        assert ratio == pytest.approx(mills, rel=1e-10)
        ratios.append(ratio)
    assert all(a > b > 1 for a, b in itertools.pairwise(ratios))
    assert ratios[-1] == pytest.approx(1 + 1 / stats.norm.isf(0.5e-6) ** 2, rel=0.02)  # ~ 1 + 1/tau^2


def test_scale_factor_random_and_edges():
    assert scale_factor("random", 0.25) == pytest.approx(2.0)
    for method in ("none", "random", "magnitude", "magnitude-exact"):
        assert scale_factor(method, 1.0) == 1.0
    # the exact magnitude factor is below the random one: kept weights are the large ones
    assert scale_factor("magnitude-exact", 0.3) < scale_factor("random", 0.3)
    with pytest.raises(ValueError, match="kept_fraction"):
        scale_factor("random", 0.0)
    with pytest.raises(ValueError, match="kept_fraction"):
        scale_factor("random", 1.5)
    with pytest.raises(ValueError, match="rescale"):
        scale_factor("eoc", 0.5)
    with pytest.raises(NumericalError):
        scale_factor("magnitude", 1e-320)


# ----------------------------------------------------------------------------- rescale


def test_rescale_random_uses_each_layers_actual_fraction():
    m = pruned_mlp(scope="global")
    before = [layer.weight.detach().clone() for layer in m.layers]
    masks = [layer.weight_mask.clone() for layer in m.layers]
    rec = rescale(m, "random")
    fracs = kept_per_layer(m)
    assert len(set(round(f, 6) for f in fracs)) > 1  # global masks: fractions differ
    for layer, b, mask, f, r in zip(m.layers, before, masks, fracs, rec["layers"], strict=True):
        torch.testing.assert_close(layer.weight, b * f**-0.5)
        assert torch.equal(layer.weight_mask, mask)
        assert r["factor"] == pytest.approx(f**-0.5) and r["kept_fraction"] == pytest.approx(f)
    json.dumps(rec)
    # a nominal sparsity overrides the per-layer fractions
    m2 = pruned_mlp(scope="global")
    b2 = [layer.weight.detach().clone() for layer in m2.layers]
    rescale(m2, "random", sparsity=0.75)
    for layer, b in zip(m2.layers, b2, strict=True):
        torch.testing.assert_close(layer.weight, b * 2.0)


def test_rescale_none_and_magnitude_methods():
    m = pruned_mlp(scope="layerwise")
    before = [layer.weight.detach().clone() for layer in m.layers]
    rec = rescale(m, "none")
    for layer, b in zip(m.layers, before, strict=True):
        assert torch.equal(layer.weight, b)
    assert all(r["factor"] == 1.0 for r in rec["layers"])
    for method in ("magnitude", "magnitude-exact"):
        m = pruned_mlp(scope="layerwise")
        b = m.layers[1].weight.detach().clone()
        rescale(m, method)
        torch.testing.assert_close(m.layers[1].weight, b * scale_factor(method, kept_per_layer(m)[1]))


@pytest.mark.parametrize("how", ["record", "sigma_w2", "activation"])
def test_rescale_eoc_sets_every_kept_row_to_the_target_norm(how):
    m = pruned_mlp(scope="layerwise", sparsity=0.7)
    kwargs = {"record": {}, "sigma_w2": {"sigma_w2": 1.7}, "activation": {"activation": "tanh", "q_star": 1.0}}[how]
    rec = rescale(m, "eoc", **kwargs)
    init = m.sigprop_init["layers"]
    sw_eoc = eoc("tanh", q_star=1.0).sigma_w2
    for i, (layer, r) in enumerate(zip(m.layers, rec["layers"], strict=True)):
        if how == "record":  # the layer's own dense fan_in * Var(W): first layer differs
            target = init[i]["weight_var"] * init[i]["fan_in"]
        else:
            target = 1.7 if how == "sigma_w2" else sw_eoc
        rows = (layer.weight.detach() ** 2).sum(1)
        alive = (layer.weight_mask.sum(1) > 0) & (rows > 0)
        torch.testing.assert_close(rows[alive], torch.full_like(rows[alive], target), rtol=1e-12, atol=0)
        assert r["target_sigma_w2"] == pytest.approx(target)
    if how == "record":  # eoc init puts the first layer at q* from unit inputs: its own target
        assert rec["layers"][0]["target_sigma_w2"] != pytest.approx(rec["layers"][1]["target_sigma_w2"])
    # idempotent: the rows are already at the target
    w = m.layers[1].weight.detach().clone()
    rescale(m, "eoc", **kwargs)
    torch.testing.assert_close(m.layers[1].weight, w)
    json.dumps(rec)


def test_rescale_eoc_dead_rows_and_conv_channels():
    m = pruned_mlp(scope="layerwise", sparsity=0.5)
    with torch.no_grad():
        m.layers[1].weight_mask[3].zero_()
    rec = rescale(m, "eoc", sigma_w2=2.0)
    assert rec["layers"][1]["dead_rows"] == 1
    assert torch.all(m.layers[1].weight[3] == 0)
    # conv: one factor per output channel over (in, kh, kw)
    c = VCNN((3, 8, 8), 10, depth=2, width=6, activation="relu").double()
    initialize(c, "eoc", seed=0)
    apply_masks(c, make_masks(random_scores(c, 7), 0.6, scope="layerwise"))
    rescale(c, "eoc")
    convs = [mod for mod in c.modules() if isinstance(mod, nn.Conv2d)]
    w = convs[1].weight.detach()
    norms = (w.reshape(w.shape[0], -1) ** 2).sum(1)
    torch.testing.assert_close(norms, torch.full_like(norms, 2.0), rtol=1e-12, atol=0)


@pytest.mark.parametrize("method", [m for m in RESCALE_METHODS if m != "none"])
def test_rescale_leaves_unpruned_layers_alone(method):
    # sparsity 0: masks of ones; every method (eoc included) must leave the dense net unchanged
    m = pruned_mlp(scope="layerwise", sparsity=0.0)
    before = [layer.weight.detach().clone() for layer in m.layers]
    rec = rescale(m, method, **({"sparsity": 0.5} if method == "random" else {}))
    for layer, b, r in zip(m.layers, before, rec["layers"], strict=True):
        assert torch.equal(layer.weight, b)
        assert r["kept_fraction"] == 1.0 and r["factor"] == 1.0
    # a partly pruned net: only its pruned layer is rescaled
    m = pruned_mlp(scope="layerwise", sparsity=0.0)
    with torch.no_grad():
        m.layers[1].weight_mask[:, ::2] = 0
    before = [layer.weight.detach().clone() for layer in m.layers]
    rec = rescale(m, method)
    for i, (layer, b) in enumerate(zip(m.layers, before, strict=True)):
        assert torch.equal(layer.weight, b) == (i != 1), (method, i)


def test_rescale_bad_input():
    m = pruned_mlp()
    with pytest.raises(ValueError, match="unknown rescale method"):
        rescale(m, "bogus")
    with pytest.raises(ValueError, match="sparsity"):
        rescale(m, "random", sparsity=1.0)
    dense = MLP(5, 3, [4])
    with pytest.raises(ValueError, match="apply_masks"):
        rescale(dense, "random")
    rescale(dense, "none")  # nothing to do, fine
    bare = pruned_mlp(init=False)
    with pytest.raises(ValueError, match="sigprop_init"):
        rescale(bare, "eoc")
    with pytest.raises(ValueError, match="sigma_w2"):
        rescale(bare, "eoc", sigma_w2=-1.0)
    with pytest.raises(ValueError, match="not both"):
        rescale(bare, "eoc", activation="tanh", sigma_b2=0.1, q_star=1.0)
    assert set(RESCALE_METHODS) == {"none", "eoc", "random", "magnitude", "magnitude-exact"}


def test_magnitude_exact_restores_the_dense_second_moment_monte_carlo():
    # 1e6 Gaussian entries, magnitude-pruned layerwise: E[(a w 1{|w|>t})^2] / Var(w) = 1 for the
    # exact factor. The per-entry ratio X = a^2 w^2 1{|w|>t} / sigma^2 has mean 1 and
    # E[X^2] = a^4 * 2 ((tau^3 + 3 tau) phi(tau) + 3 Q(tau)) = 11.6 at p = 0.1 (a^2 = 2.28,
    # tau = 1.645), sd 3.3, so the mean of 1e6 entries has sd 0.0033: tolerance 0.02 (6 sd).
    n = 1000
    layer = nn.Linear(n, n, bias=False).double()
    with torch.no_grad():
        layer.weight.normal_(0, math.sqrt(2 / n), generator=torch.Generator().manual_seed(0))
    net = nn.Sequential(layer)
    apply_masks(net, make_masks(magnitude_scores(net), 0.9, scope="layerwise"))
    rescale(net, "magnitude-exact")
    ratio = float((layer.weight.detach() ** 2).mean() / (2 / n))
    assert ratio == pytest.approx(1.0, abs=0.02)


# ----------------------------------------------------------------------------- eoc_subnetwork


def test_eoc_subnetwork_masks_and_record():
    sw_eoc = eoc("tanh", sigma_b2=0.1).sigma_w2
    m = MLP(50, 10, [200, 200], activation="tanh").double()
    initialize(m, "gaussian", sigma_w2=2 * sw_eoc, sigma_b2=0.1, seed=0)
    rec = eoc_subnetwork(m, 2 * sw_eoc, sw_eoc, seed=0)
    assert rec["keep_probability"] == pytest.approx(0.5)
    assert rec["effective_sigma_w2"] == pytest.approx(sw_eoc)
    for f in kept_per_layer(m):
        assert f == pytest.approx(0.5, abs=1e-3)
    json.dumps(rec)
    # the masks are independent of weights drawn with the same seed: the kept weights have the
    # dense variance (40,000 entries of the 200x200 layer, kept 20,000: the relative sd of
    # their mean square is sqrt(2/20000) = 0.01, tolerance 0.05)
    w = m.layers[1].weight_orig.detach()
    kept = w[m.layers[1].weight_mask != 0]
    assert float((kept**2).mean() / (w**2).mean()) == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ValueError, match="unpruned"):
        eoc_subnetwork(m, 2 * sw_eoc, sw_eoc)


def test_eoc_subnetwork_bad_input():
    m = MLP(5, 3, [4])
    with pytest.raises(ValueError, match="above the EOC"):
        eoc_subnetwork(m, 1.0, 2.0)
    with pytest.raises(ValueError, match="sigma_w2"):
        eoc_subnetwork(m, -1.0, 2.0)
    with pytest.raises(ValueError, match="seed"):
        eoc_subnetwork(m, 2.0, 1.0, seed=1.5)
