"""Seed 001 Fig. 1 on digits: SNIP at 70% sparsity on a depth-100, width-100 tanh MLP.

In the chaotic phase (Gaussian init, sigma_w2 = 4, sigma_b2 = 0: chi_1 > 1) the gradients grow
towards the input, so the connection sensitivities |w dL/dw| of the deep layers are orders of
magnitude below those of the first ones and one global threshold removes whole layers near the
output (the dark band of Fig. 1b). On the Edge of Chaos (tanh, q* = 1) the sensitivities are of
the same scale in every layer and no layer is lost (Fig. 1a). The paper uses MNIST; digits
(8x8 images) is the embedded stand-in.
"""

from __future__ import annotations

import json

import pytest
import torch

from sigprop.data import load_dataset
from sigprop.nets import build_model, initialize
from sigprop.pruning import apply_masks, collapsed_layers, critical_sparsity, kept_per_layer, make_masks, snip_scores
from sigprop.run_prune import run_prune

DEPTH, WIDTH, SPARSITY = 100, 100, 0.7
CHAOTIC = {"init": "gaussian", "sigma_w2": 4.0, "sigma_b2": 0.0}
EOC = {"init": "eoc"}


@pytest.fixture(scope="module")
def batch():
    splits = load_dataset("digits", seed=0)
    x, y = splits.train.tensors
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:128]
    return splits, (x[idx], y[idx])


def _snip_fig1(batch, init: dict, seed: int):
    splits, data = batch
    net = build_model("mlp", in_shape=splits.in_shape, num_classes=10, depth=DEPTH, width=WIDTH, activation="tanh")
    kw = {k: v for k, v in init.items() if k != "init"}
    initialize(net, init["init"], activation="tanh", seed=seed, **kw)
    scores = snip_scores(net, [data], loss="supervised")
    apply_masks(net, make_masks(scores, SPARSITY))
    return kept_per_layer(net), collapsed_layers(net), critical_sparsity(scores)


@pytest.mark.parametrize("seed", [0, 1])
def test_chaotic_phase_loses_whole_layers_near_the_output(batch, seed):
    kept, collapsed, s_cr = _snip_fig1(batch, CHAOTIC, seed)
    assert len(kept) == DEPTH + 1
    assert len(collapsed) >= 10  # a band of layers, not a fluke
    assert s_cr < SPARSITY
    gone = [i for i, k in enumerate(kept) if k == 0.0]
    # the lost layers are the deep ones, and the first layers keep almost everything
    assert min(gone) > DEPTH // 2 and kept[DEPTH] == 0.0
    assert min(kept[:10]) > 0.9


@pytest.mark.parametrize("seed", [0, 1])
def test_edge_of_chaos_loses_no_layer(batch, seed):
    kept, collapsed, s_cr = _snip_fig1(batch, EOC, seed)
    assert collapsed == [] and min(kept) > 0.0
    assert s_cr > SPARSITY


def test_prune_command_reports_the_collapse_and_its_plot(tmp_path):
    common = {"method": "snip", "sparsity": SPARSITY, "depth": DEPTH, "width": WIDTH, "activation": "tanh"}
    chaos = run_prune(**common, **CHAOTIC, plot=tmp_path / "chaotic.png", progress=False)
    eoc = run_prune(**common, **EOC, progress=False)
    assert len(chaos["collapsed_layers"]) >= 10 and eoc["collapsed_layers"] == []
    assert chaos["critical_sparsity"] < SPARSITY < eoc["critical_sparsity"]
    # a collapsed layer makes the input-output Jacobian exactly zero: cond infinite (null)
    assert chaos["jacobian"]["cond"] is None and chaos["jacobian"]["norm"] == 0.0
    assert eoc["jacobian"]["norm"] > 0.0
    json.dumps(chaos, allow_nan=False)
    assert (tmp_path / "chaotic.png").read_bytes()[:4] == b"\x89PNG"
