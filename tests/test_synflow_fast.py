"""Iterative SynFlow (``synflow_masks``) against a plain reference implementation.

The reference is Algorithm 1 of Tanaka et al. (2020) written out directly, independent of
``sigprop.pruning``: a float64 eval-mode copy with every floating state tensor replaced by its
absolute value and the activations by the identity, an all-ones input, scores ``|w * dR/dw|``,
pruned entries set to ``-inf``, and a full stable sort each round keeping the
``round((1 - s_k) n)`` best (ties by position) with ``s_k = 1 - (1 - s)^(k / rounds)``. The fast
implementation must return exactly the same masks.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sigprop.pruning.masks as masks_mod
from sigprop.nets import build_model, initialize
from sigprop.pruning import apply_masks, magnitude_scores, make_masks, prunable_parameters, synflow_masks
from sigprop.pruning.scores import _abs_state_, _linearized_copy


def _plain_copy(model: nn.Module) -> nn.Module:
    """SynFlow's network: the library's float64 linearized copy with every state tensor made
    absolute (checked by the conservation-law tests); the reference below differs in the rounds."""
    net = _linearized_copy(model)
    _abs_state_(net)
    return net


def _top(flat: torch.Tensor, k: int) -> torch.Tensor:
    if torch.isnan(flat).any():
        raise ValueError("scores contain NaN")
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[torch.argsort(-flat, stable=True)[:k]] = True
    return keep


def reference_synflow(model, in_shape, sparsity, rounds=100, scope="global", params=None):
    """Iterative SynFlow, plainly: the definition the fast implementation must reproduce."""
    if params is None:
        params = prunable_parameters(model)
    net = _plain_copy(model)
    names = {id(m): n for n, m in model.named_modules()}
    mods = dict(net.named_modules())
    keys, leaves = [], []
    for m, t in params:
        prefix = names[id(m)]
        keys.append(f"{prefix}.{t}" if prefix else t)
        cm = mods[prefix]
        leaf = getattr(cm, t + "_orig", None)
        leaves.append(leaf if isinstance(leaf, nn.Parameter) else getattr(cm, t))
    for p in net.parameters():
        p.requires_grad_(False)
    for p in leaves:
        p.requires_grad_(True)
    originals = [p.detach().clone() for p in leaves]
    masks = [torch.ones_like(p, dtype=torch.bool) for p in leaves]
    x = torch.ones((1, *in_shape), dtype=torch.float64)
    for k in range(1, rounds + 1):
        with torch.no_grad():
            for p, w, m in zip(leaves, originals, masks, strict=True):
                p.copy_(w * m)
        gs = torch.autograd.grad(net(x).sum(), leaves, allow_unused=True)
        scores = []
        for p, g, m in zip(leaves, gs, masks, strict=True):
            g = torch.zeros_like(p) if g is None else g
            v = (p.detach() * g).abs()
            scores.append(torch.where(m, v, torch.full_like(v, -math.inf)).reshape(-1))
        s_k = sparsity if k == rounds else 1.0 - (1.0 - sparsity) ** (k / rounds)
        if scope == "global":
            flat = torch.cat(scores)
            keep = _top(flat, round((1.0 - s_k) * flat.numel()))
            parts = torch.split(keep, [v.numel() for v in scores])
        else:
            parts = [_top(v, round((1.0 - s_k) * v.numel())) for v in scores]
        masks = [part.reshape(p.shape) for part, p in zip(parts, leaves, strict=True)]
    return dict(zip(keys, masks, strict=True))


def assert_same(fast: dict, ref: dict) -> None:
    assert list(fast) == list(ref)
    for name in ref:
        assert fast[name].dtype == torch.bool and fast[name].shape == ref[name].shape, name
        assert torch.equal(fast[name], ref[name]), name


def _mlp(in_dim, width, depth, seed=0, **kw):
    net = build_model("mlp", in_shape=(in_dim,), num_classes=10, depth=depth, width=width, **kw)
    initialize(net, "eoc", seed=seed)
    return net


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_small_mlp_matches_reference(scope):
    model = _mlp(12, 16, 3, activation="tanh")
    for s, rounds in ((0.9, 100), (0.5, 7), (0.0, 3), (0.999, 20)):
        assert_same(
            synflow_masks(model, (12,), s, rounds=rounds, scope=scope),
            reference_synflow(model, (12,), s, rounds=rounds, scope=scope),
        )


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_large_mlp_matches_reference(scope):
    # > 65536 prunable weights (per layer too): the sampled-threshold path of the fast selection
    model = _mlp(300, 300, 2)
    assert all(m.weight.numel() >= 3000 for m, _ in prunable_parameters(model))
    assert_same(
        synflow_masks(model, (300,), 0.9, rounds=100, scope=scope),
        reference_synflow(model, (300,), 0.9, rounds=100, scope=scope),
    )


def test_ties_and_zero_scores_match_reference():
    # equal weights: massive ties broken by position; high sparsity disconnects units, whose
    # remaining weights then score exactly 0 (and must still rank above the pruned ones)
    model = _mlp(260, 260, 2, bias=False)
    for m, _ in prunable_parameters(model):
        nn.init.constant_(m.weight, 0.5)
    with torch.no_grad():
        model.layers[0].weight[:, :7] = 0.0  # exact zero weights are alive with score 0
    for scope in ("global", "layerwise"):
        assert_same(
            synflow_masks(model, (260,), 0.995, rounds=30, scope=scope),
            reference_synflow(model, (260,), 0.995, rounds=30, scope=scope),
        )


def test_rounded_scores_with_many_ties_match_reference():
    model = _mlp(280, 280, 2)
    with torch.no_grad():
        for m, _ in prunable_parameters(model):
            m.weight.copy_(torch.round(m.weight * 8) / 8)  # few distinct |w|: ties at the threshold
    assert_same(synflow_masks(model, (280,), 0.95, rounds=25), reference_synflow(model, (280,), 0.95, rounds=25))


def _batchnorm_resnet(width: int, seed: int, mean_std: float, vary_var: bool = False) -> nn.Module:
    """A ResNet whose batch norms hold random running means (and variances): batch norm
    subtracts the absolute running means, so SynFlow's gradients take either sign."""
    model = build_model("resnetx2", in_shape=(3, 8, 8), num_classes=4, depth=8, width=width)
    initialize(model, "eoc", seed=seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, mean_std)
                if vary_var:
                    m.running_var.uniform_(0.5, 2.0)
    return model


def test_conv_resnet_batchnorm_matches_reference():
    model = _batchnorm_resnet(width=4, seed=1, mean_std=1.0, vary_var=True)
    for scope in ("global", "layerwise"):
        assert_same(
            synflow_masks(model, (3, 8, 8), 0.8, rounds=20, scope=scope),
            reference_synflow(model, (3, 8, 8), 0.8, rounds=20, scope=scope),
        )
    vcnn = build_model("vcnn", in_shape=(3, 16, 16), num_classes=10, depth=3, width=32)
    initialize(vcnn, "eoc", seed=2)
    assert_same(synflow_masks(vcnn, (3, 16, 16), 0.9), reference_synflow(vcnn, (3, 16, 16), 0.9))


def test_pruned_model_and_parameter_subsets_match_reference():
    model = _mlp(40, 48, 3, bias=True)
    apply_masks(model, make_masks(magnitude_scores(model), 0.6))
    assert_same(synflow_masks(model, (40,), 0.8, rounds=15), reference_synflow(model, (40,), 0.8, rounds=15))
    fresh = _mlp(40, 48, 3, seed=4, bias=True)
    params = prunable_parameters(fresh, include_bias=True, include_first=False)
    assert_same(
        synflow_masks(fresh, (40,), 0.7, rounds=12, params=params),
        reference_synflow(fresh, (40,), 0.7, rounds=12, params=params),
    )


def test_nan_scores_are_an_error():
    # a weight that is exactly 0 but alive, under a gradient that overflows to inf: 0 * inf = NaN
    model = nn.Sequential(
        nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False), nn.Linear(4, 2, bias=False)
    ).double()
    with torch.no_grad():
        for m in model:
            m.weight.fill_(1e200)
        model[0].weight[0, 0] = 0.0
    with pytest.raises(ValueError, match="NaN"):
        reference_synflow(model, (4,), 0.5, rounds=3)
    with pytest.raises(ValueError, match="NaN"):
        synflow_masks(model, (4,), 0.5, rounds=3)


def test_model_untouched_and_bad_arguments():
    model = _mlp(10, 12, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    synflow_masks(model, (10,), 0.5, rounds=5)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    for bad in (dict(sparsity=1.0), dict(sparsity=-0.1), dict(rounds=0), dict(scope="nope")):
        kw = dict(sparsity=0.5, rounds=3) | bad
        with pytest.raises(ValueError):
            synflow_masks(model, (10,), **kw)


def test_torch_path_and_bracket_fallback_match_reference(monkeypatch):
    # the torch selection (used off the CPU) on the CPU, and a bracket that always fails
    model = _mlp(300, 300, 2)
    ref = reference_synflow(model, (300,), 0.9, rounds=30)
    ref_lw = reference_synflow(model, (300,), 0.9, rounds=30, scope="layerwise")
    monkeypatch.setattr(masks_mod, "_NUMPY_ON_CPU", False)
    assert_same(synflow_masks(model, (300,), 0.9, rounds=30), ref)
    assert_same(synflow_masks(model, (300,), 0.9, rounds=30, scope="layerwise"), ref_lw)
    monkeypatch.setattr(masks_mod, "_bracket_rank", lambda ms, m, n, z=5.0: 0)  # too few candidates
    assert_same(synflow_masks(model, (300,), 0.9, rounds=30), ref)
    monkeypatch.setattr(masks_mod, "_NUMPY_ON_CPU", True)
    assert_same(synflow_masks(model, (300,), 0.9, rounds=30), ref)
    assert_same(synflow_masks(model, (300,), 0.9, rounds=30, scope="layerwise"), ref_lw)


def test_nan_scores_are_an_error_on_the_torch_path(monkeypatch):

    monkeypatch.setattr(masks_mod, "_NUMPY_ON_CPU", False)
    test_nan_scores_are_an_error()


def test_large_batchnorm_net_with_gradients_of_both_signs_matches_reference():
    # > 65536 weights ranked together with negative gradients (batch norm subtracts the absolute
    # running means): the signed leaves of the CPU sweep are made |w g| before the selection
    model = _batchnorm_resnet(width=32, seed=5, mean_std=3.0)
    assert sum(m.weight.numel() for m, _ in prunable_parameters(model)) >= 65536
    assert_same(synflow_masks(model, (3, 8, 8), 0.9, rounds=20), reference_synflow(model, (3, 8, 8), 0.9, rounds=20))


def test_channels_last_leaves_match_reference():
    # leaves that are not contiguous cannot be views of the flat buffer: they are copied back
    model = build_model("vcnn", in_shape=(3, 16, 16), num_classes=10, depth=3, width=16)
    initialize(model, "eoc", seed=6)
    model = model.to(memory_format=torch.channels_last)
    assert not all(m.weight.is_contiguous() for m, _ in prunable_parameters(model))
    assert_same(
        synflow_masks(model, (3, 16, 16), 0.8, rounds=15), reference_synflow(model, (3, 16, 16), 0.8, rounds=15)
    )


@pytest.mark.parametrize("numpy_path", [True, False])
def test_sampled_selection_on_small_nets_matches_reference(monkeypatch, numpy_path):
    # the bracketed selection forced onto small nets with a tiny sample (so that brackets often
    # fail and fall back), over several nets, sparsities and both scopes

    monkeypatch.setattr(masks_mod, "_BRACKET_MIN", 300)
    monkeypatch.setattr(masks_mod, "_SYNFLOW_SAMPLE", 1000)
    monkeypatch.setattr(masks_mod, "_SWEEP_CHUNK", 64)
    monkeypatch.setattr(masks_mod, "_NUMPY_ON_CPU", numpy_path)
    for seed, (width, s, rounds) in enumerate([(20, 0.9, 40), (30, 0.99, 25), (25, 0.5, 10)]):
        model = _mlp(15, width, 3, seed=seed, activation="tanh")
        if seed == 1:
            with torch.no_grad():
                for m, _ in prunable_parameters(model):
                    m.weight.copy_(torch.round(m.weight * 4) / 4)
        for scope in ("global", "layerwise"):
            assert_same(
                synflow_masks(model, (15,), s, rounds=rounds, scope=scope),
                reference_synflow(model, (15,), s, rounds=rounds, scope=scope),
            )


class _ShiftedReadout(nn.Module):
    """fc1 (300 -> 300, scored by the compiled scan) feeds a readout whose weight is used through
    ``F.linear`` (scored through its gradient), after subtracting a large constant in the columns
    that the fixed sample of the readout's weights misses: its scores there are negative and
    large, and the sample sees none of them."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.fc1 = nn.Linear(300, 300, bias=False)
        self.fc2 = nn.Linear(300, 2, bias=False)
        smp = masks_mod._sample_positions([90000, 600])[1].numpy()
        c = torch.full((300,), 1e4)
        c[np.unique(smp % 300)] = 0.0
        self.register_buffer("c", c)

    def forward(self, x):
        return F.linear(self.fc1(x.reshape(x.shape[0], -1)) - self.c, self.fc2.weight)


def test_bracket_counts_only_the_candidates_a_signed_leaf_really_gives():
    # the readout's leaf is swept without |.| (its sample shows no negative score), so all its
    # negative entries are candidates too; a bracket that holds fewer than m entries with
    # |s| <= hi must still be refused (it was accepted, and 1386 entries differed)
    model = _ShiftedReadout()
    assert_same(synflow_masks(model, (300,), 0.9, rounds=100), reference_synflow(model, (300,), 0.9, rounds=100))
