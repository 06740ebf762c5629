"""Tests of sigprop.pruning: scores, masks, critical sparsity."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from sigprop.nets import build_model
from sigprop.pruning import (
    apply_masks,
    collapsed_layers,
    critical_sparsity,
    kept_per_layer,
    magnitude_scores,
    make_masks,
    prunable_parameters,
    random_scores,
    snip_scores,
    synflow_masks,
    synflow_scores,
)


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def tiny_data(seed: int = 1, batches: int = 2):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (6,), generator=g))
        for _ in range(batches)
    ]


def fd_connection_sensitivity(net: nn.Module, loss_fn) -> dict:
    """|w_j * dL/dw_j| by central finite differences, one entry at a time."""
    out, h = {}, 1e-6
    for name, p in net.named_parameters():
        if not name.endswith("weight"):
            continue
        g = torch.zeros_like(p)
        with torch.no_grad():
            for j in range(p.numel()):
                w0 = p.view(-1)[j].item()
                p.view(-1)[j] = w0 + h
                lp = loss_fn()
                p.view(-1)[j] = w0 - h
                lm = loss_fn()
                p.view(-1)[j] = w0
                g.view(-1)[j] = (lp - lm) / (2 * h)
        out[name] = (p.detach() * g).abs()
    return out


def test_snip_matches_finite_differences():
    net, data = tiny_net(), tiny_data()
    scores = snip_scores(net, data)

    def total():
        return sum(F.cross_entropy(net(x), y).item() for x, y in data)

    ref = fd_connection_sensitivity(net, total)
    assert scores.keys() == ref.keys() == {"0.weight", "2.weight"}
    for k in ref:
        torch.testing.assert_close(scores[k], ref[k], rtol=1e-5, atol=1e-8)
    # only the first batch
    one = snip_scores(net, data, batches=1)
    ref1 = fd_connection_sensitivity(net, lambda: F.cross_entropy(net(data[0][0]), data[0][1]).item())
    torch.testing.assert_close(one["0.weight"], ref1["0.weight"], rtol=1e-5, atol=1e-8)
    # a single (x, y) pair is accepted
    torch.testing.assert_close(snip_scores(net, data[0])["2.weight"], one["2.weight"])


def test_snip_uniform_loss_matches_finite_differences():
    net, data = tiny_net(2), tiny_data(3, batches=1)
    x = data[0][0]
    scores = snip_scores(net, x, loss="uniform")
    ref = fd_connection_sensitivity(net, lambda: (-F.log_softmax(net(x), 1).mean()).item())
    for k in ref:
        torch.testing.assert_close(scores[k], ref[k], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("loss", ["pred-raw", "pred-softmax"])
def test_snip_prediction_losses_run_without_labels(loss):
    net = tiny_net()
    scores = snip_scores(net, [(x, None) for x, _ in tiny_data()], loss=loss)
    assert all(torch.isfinite(v).all() and (v >= 0).all() for v in scores.values())
    with pytest.raises(ValueError):
        snip_scores(net, tiny_data()[0][0], loss="supervised")
    with pytest.raises(ValueError):
        snip_scores(net, tiny_data(), loss="nope")


def test_scoring_leaves_model_untouched():
    model = build_model("resnetx2", in_shape=(3, 8, 8), num_classes=4, depth=8, width=4)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 4, (4,), generator=g)
    for fn in (
        lambda: snip_scores(model, (x, y)),
        lambda: snip_scores(model, x, loss="uniform"),
        lambda: synflow_scores(model, (3, 8, 8)),
        lambda: synflow_masks(model, (3, 8, 8), 0.5, rounds=3),
        lambda: magnitude_scores(model),
        lambda: random_scores(model, 0),
    ):
        fn()
        assert model.training and all(m.training for m in model.modules())
        after = model.state_dict()
        for k, v in before.items():
            assert torch.equal(after[k], v), k
        assert all(p.grad is None for p in model.parameters())
        assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    model.eval()
    synflow_scores(model, (3, 8, 8))
    assert not model.training


def test_prunable_parameters_include_shortcuts_and_options():
    model = build_model("resnetx2", in_shape=(3, 8, 8), num_classes=4, depth=8, width=4)
    params = prunable_parameters(model)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert any(m.kernel_size == (1, 1) for m in convs)
    assert [m for m, _ in params] == [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert all(t == "weight" for _, t in params)
    inner = prunable_parameters(model, include_first=False, include_last=False)
    assert len(inner) == len(params) - 2 and inner[0][0] is params[1][0]
    mlp = build_model("mlp", in_shape=(5,), num_classes=3, depth=2, width=4)
    with_bias = prunable_parameters(mlp, include_bias=True)
    assert [t for _, t in with_bias] == ["weight", "bias"] * 3


def test_synflow_layerwise_conservation():
    model = build_model("mlp", in_shape=(7,), num_classes=3, depth=5, width=6, activation="tanh", bias=False)
    scores = synflow_scores(model, (7,))
    sums = torch.stack([v.sum() for v in scores.values()])
    assert all(v.dtype == torch.float64 for v in scores.values())
    torch.testing.assert_close(sums, sums[0].expand_as(sums), rtol=1e-10, atol=0)
    # and the common sum is R = 1^T prod |W| 1
    prod = torch.ones(7, 1, dtype=torch.float64)
    for m, _ in prunable_parameters(model):
        prod = m.weight.detach().double().abs() @ prod
    torch.testing.assert_close(sums[0], prod.sum())


def test_synflow_deep_net_does_not_overflow_and_handles_batchnorm():
    model = build_model("resnetx2", in_shape=(3, 8, 8), num_classes=4, depth=14, width=4)
    scores = synflow_scores(model, (3, 8, 8))
    assert all(torch.isfinite(v).all() for v in scores.values())
    assert len(scores) == len(prunable_parameters(model))
    deep = build_model("mlp", in_shape=(10,), num_classes=2, depth=40, width=10, bias=False)
    for m, _ in prunable_parameters(deep):
        nn.init.constant_(m.weight, 3.0)  # R = 2 * 10 * 30^40 ~ 1e60: overflows float32
    scores = synflow_scores(deep, (10,))
    assert all(torch.isfinite(v).all() and (v > 0).all() for v in scores.values())


def test_iterative_synflow_keeps_exact_count_and_avoids_collapse():
    model = build_model("mlp", in_shape=(10,), num_classes=3, depth=4, width=12, bias=False)
    n = sum(m.weight.numel() for m, _ in prunable_parameters(model))
    masks = synflow_masks(model, (10,), 0.9, rounds=100)
    assert sum(int(m.sum()) for m in masks.values()) == round(0.1 * n)
    assert all(m.any() for m in masks.values())


def test_masks_keep_exact_count_with_ties():
    scores = {"a.weight": torch.zeros(3, 4), "b.weight": torch.ones(5), "c.weight": torch.zeros(2, 2, 2)}
    n = 12 + 5 + 8
    for s in (0.0, 0.1, 0.25, 0.5, 0.77, 0.9, 0.99):
        masks = make_masks(scores, s)
        assert sum(int(m.sum()) for m in masks.values()) == round((1 - s) * n)
        again = make_masks(scores, s)
        assert all(torch.equal(masks[k], again[k]) for k in masks)
        lw = make_masks(scores, s, scope="layerwise")
        assert [int(m.sum()) for m in lw.values()] == [round((1 - s) * v.numel()) for v in scores.values()]
    # ties among zeros: earliest positions are kept first
    m = make_masks(scores, 1 - 7 / n)
    assert m["b.weight"].all() and int(m["a.weight"].sum()) == 2 and m["a.weight"].view(-1)[:2].all()
    assert not m["c.weight"].any()
    for bad in (-0.1, 1.0, 1.5, float("nan")):
        with pytest.raises(ValueError):
            make_masks(scores, bad)
    with pytest.raises(ValueError):
        make_masks(scores, 0.5, scope="nope")


def test_global_vs_layerwise():
    scores = {"a.weight": torch.arange(10.0), "b.weight": torch.arange(100.0, 120.0)}
    g = make_masks(scores, 0.5, scope="global")
    assert int(g["a.weight"].sum()) == 0 and int(g["b.weight"].sum()) == 15
    lw = make_masks(scores, 0.5, scope="layerwise")
    assert int(lw["a.weight"].sum()) == 5 and int(lw["b.weight"].sum()) == 10
    assert lw["a.weight"][5:].all() and lw["b.weight"][10:].all()


@pytest.mark.parametrize("kind", ["snip", "magnitude", "random"])
def test_critical_sparsity_is_exact(kind):
    torch.manual_seed(0)
    model = build_model("mlp", in_shape=(8,), num_classes=4, depth=6, width=10, activation="tanh")
    for m, _ in prunable_parameters(model):
        nn.init.normal_(m.weight, std=2.0 / m.weight.shape[1] ** 0.5)  # chaotic phase
    if kind == "snip":
        x, y = torch.randn(16, 8), torch.randint(0, 4, (16,))
        scores = snip_scores(model, (x, y))
    elif kind == "magnitude":
        scores = magnitude_scores(model)
    else:
        scores = random_scores(model, 3)
    n = sum(v.numel() for v in scores.values())
    s_cr = critical_sparsity(scores)
    assert 0 < s_cr < 1
    at = apply_masks(copy.deepcopy(model), make_masks(scores, s_cr))
    assert collapsed_layers(at)
    below = apply_masks(copy.deepcopy(model), make_masks(scores, s_cr - 1 / n))
    assert not collapsed_layers(below)
    assert min(kept_per_layer(below)) > 0


def test_critical_sparsity_with_ties():
    scores = {"a.weight": torch.zeros(4), "b.weight": torch.zeros(4)}
    # order: a0..a3, b0..b3; b's best has 4 before it -> collapses when 4 kept, s = 0.5
    assert critical_sparsity(scores) == 0.5
    assert not make_masks(scores, 0.5)["b.weight"].any()
    assert make_masks(scores, 0.5 - 1 / 8)["b.weight"].any()


def test_apply_masks_state_dict_round_trip_and_remove():
    model = build_model("mlp", in_shape=(6,), num_classes=3, depth=2, width=8)
    masks = make_masks(magnitude_scores(model), 0.6)
    apply_masks(model, masks)
    params = prunable_parameters(model)
    for (m, _t), mask in zip(params, masks.values(), strict=True):
        assert hasattr(m, "weight_orig") and hasattr(m, "weight_mask")
        assert torch.equal(m.weight_mask.bool(), mask)
        assert (m.weight[~mask] == 0).all()
    kept = kept_per_layer(model)
    assert len(kept) == len(params)
    total = sum(int(m.sum()) for m in masks.values())
    n = sum(m.numel() for m in masks.values())
    assert total == round(0.4 * n)
    assert abs(sum(k * m.numel() for k, m in zip(kept, masks.values(), strict=True)) - total) < 1e-9

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = build_model("mlp", in_shape=(6,), num_classes=3, depth=2, width=8)
    apply_masks(fresh, {k: torch.ones_like(v) for k, v in masks.items()})
    fresh.load_state_dict(torch.load(buf))
    x = torch.randn(5, 6)
    torch.testing.assert_close(fresh(x), model(x))
    assert kept_per_layer(fresh) == kept
    for m, t in prunable_parameters(fresh):
        prune.remove(m, t)
    assert not any(hasattr(m, "weight_mask") for m, _ in prunable_parameters(fresh))
    assert kept_per_layer(fresh) == [1.0] * len(kept)
    torch.testing.assert_close(fresh(x), model(x))


def test_collapsed_layers_reports_shortcut_conv():
    model = build_model("resnetx2", in_shape=(3, 8, 8), num_classes=4, depth=8, width=4)
    names = {n for n, m in model.named_modules()}
    short = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1))
    assert short in names
    scores = magnitude_scores(model)
    scores[short + ".weight"] = torch.full_like(scores[short + ".weight"], -1.0)
    m = apply_masks(model, make_masks(scores, 0.05))
    assert collapsed_layers(m) == [short + ".weight"]
    # scoring a pruned model: masked entries score zero
    snip = snip_scores(model, torch.randn(2, 3, 8, 8), loss="uniform")
    assert (snip[short + ".weight"] == 0).all()


def test_synflow_on_pruned_model():
    model = build_model("mlp", in_shape=(6,), num_classes=3, depth=2, width=8, bias=False)
    masks = make_masks(magnitude_scores(model), 0.5)
    apply_masks(model, masks)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = synflow_scores(model, (6,))
    assert all((v[~masks[k]] == 0).all() for k, v in scores.items())
    again = synflow_masks(model, (6,), 0.7, rounds=10)
    assert all((again[k] <= masks[k]).all() for k in again)
    assert sum(int(v.sum()) for v in again.values()) == round(0.3 * sum(v.numel() for v in again.values()))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_random_scores_are_independent_of_weights_drawn_with_the_same_seed():
    # torch.rand and torch.randn from manual_seed(0) are dependent (corr(u, |z|) ~ 0.33); an int
    # seed is decorrelated first, so random pruning keeps a plain random subset of the weights
    from sigprop.nets import build_model, initialize
    from sigprop.pruning import apply_masks, make_masks, random_scores

    net = build_model("mlp", in_shape=(64,), num_classes=10, depth=3, width=300, activation="relu")
    initialize(net, "eoc", seed=0)
    dense = {n: p.detach().clone() for n, p in net.named_parameters() if n.endswith("weight")}
    masks = make_masks(random_scores(net, seed=0), 0.9)
    apply_masks(net, masks)
    w = torch.cat([dense[n][masks[n].bool()] for n in masks if n in dense])
    ref = torch.cat([dense[n].flatten() for n in masks if n in dense])
    ratio = float((w**2).mean() / (ref**2).mean())
    # ~20k kept Gaussian weights: the mean square has relative sd sqrt(2 / 20k) ~ 0.01 (per-layer
    # fan-ins differ, so allow 5 sd + a little); the correlated draw gave 1.76
    assert abs(ratio - 1.0) < 0.08, ratio


@pytest.mark.parametrize("kind", ["distinct", "ties", "half_pruned", "all_equal"])
def test_top_k_selection_equals_a_stable_descending_sort(kind):
    # the bracketed O(n) selection (inputs >= 65536 entries) against the definition
    from sigprop.pruning.masks import _keep_top

    g = torch.Generator().manual_seed(3)
    n = 70_001
    x = torch.rand(n, generator=g, dtype=torch.float64)
    if kind == "ties":
        x = torch.round(x * 50) / 50
    elif kind == "half_pruned":
        x[: n // 2] = -math.inf
    elif kind == "all_equal":
        x = torch.zeros(n, dtype=torch.float64)
    for k in (1, n // 10, n // 2, n - 1):
        ref = torch.zeros(n, dtype=torch.bool)
        ref[torch.argsort(-x, stable=True)[:k]] = True
        assert torch.equal(_keep_top(x, k), ref), k
