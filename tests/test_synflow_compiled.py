"""SynFlow's compiled CPU rounds (``sigprop.pruning._outer``, numba).

The kernels against brute-force numpy, and ``synflow_masks`` with the compiled route against the
plain reference of ``test_synflow_fast`` (Algorithm 1 written out with autograd) and against the
gradient route, on the nets where the route applies in part or not at all.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import sigprop.pruning.masks as masks_mod
from sigprop.nets import build_model
from sigprop.pruning import _outer, apply_masks, magnitude_scores, make_masks, prunable_parameters, synflow_masks
from sigprop.pruning.scores import _abs_state_, _leaf, _linearized_copy, _params_in_copy, named_prunable
from test_synflow_fast import _mlp, assert_same, reference_synflow


def _brute(w, delta, a, hi):
    """Alive (sign bit clear) entries of w with not (|w (delta a)| > hi): positions, scores."""
    s = np.abs(w.reshape(len(delta), len(a)) * (delta[:, None] * a[None, :])).reshape(-1)
    keep = ~np.signbit(w) & ~(s > hi)
    return np.flatnonzero(keep), s[keep]


@pytest.mark.parametrize("shape", [(7, 3), (33, 65), (4, 20000), (300, 129)])
def test_scan_is_the_brute_force_selection(shape):
    rng = np.random.default_rng(sum(shape))
    r, c = shape
    w = np.abs(rng.standard_normal(r * c))
    w[rng.random(r * c) < 0.3] = -0.0  # pruned
    w[rng.random(r * c) < 0.01] = 0.0  # alive, score 0
    delta = rng.standard_normal(r)
    delta[rng.random(r) < 0.1] = 0.0
    a = rng.standard_normal(c)
    store = (np.empty(r * c + 5, dtype=np.int64), np.empty(r * c + 5, dtype=np.float64))
    s_all = np.abs(w.reshape(r, c) * (delta[:, None] * a[None, :])).reshape(-1)
    for hi in (np.quantile(s_all, 0.05), np.quantile(s_all, 0.6), 0.0, np.inf, -np.inf):
        n0 = 5  # appended after what is there
        n = _outer.scan(w, delta, a, hi, 1000, *store, n0)
        pos, val = _brute(w, delta, a, hi)
        np.testing.assert_array_equal(store[0][n0:n], pos + 1000)
        np.testing.assert_array_equal(store[1][n0:n], val)  # bit for bit


def test_scan_reports_nan_scores_and_skips_dead_entries():
    w = np.array([1.0, 0.0, 2.0, -0.0, 3.0, 0.0])
    delta = np.array([np.inf, 1.0])
    a = np.array([1.0, 0.0, 1.0])
    pos, val = np.empty(6, dtype=np.int64), np.empty(6)
    # row 0: inf*1 = inf, 0*(inf*0) = nan, 2*inf = inf; row 1: dead, 3*0 = 0, 0*1 = 0
    n = _outer.scan(w, delta, a, -np.inf, 0, pos, val, 0)
    assert pos[:n].tolist() == [1]
    n = _outer.scan(w, delta, a, 1.0, 0, pos, val, 0)
    assert pos[:n].tolist() == [1, 4, 5]
    assert np.isnan(val[0]) and val[1:3].tolist() == [0.0, 0.0]


def test_select_takes_the_lowest_and_the_last_ties():
    # candidates come in increasing position (as the scans append them); ties at the m-th
    # lowest score: the later positions go first, as in make_masks
    rng = np.random.default_rng(0)
    pos = np.sort(rng.choice(1000, 40, replace=False)).astype(np.int64)
    val = np.where(np.arange(40) % 3 == 0, 1.0, np.where(rng.random(40) < 0.5, 0.5, 2.0))
    sel = np.empty(40, dtype=np.int64)
    below = pos[val < 1.0].tolist()
    tied = pos[val == 1.0].tolist()
    for m in (len(below), len(below) + 1, len(below) + 5, len(below) + len(tied)):
        got = sorted(_outer.select(pos, -val.copy(), 40, m, sel).tolist())  # scores made |.|
        want = sorted(below + tied[len(tied) - (m - len(below)) :]) if m > len(below) else below
        assert got == want
    bad = val.copy()
    bad[7] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        _outer.select(pos, bad, 40, 3, sel)


def test_prune_writes_the_mask_only_in_tracked_ranges():
    w = np.ones(10)
    alive = np.ones(10, dtype=bool)
    _outer.prune(w, alive, np.array([1, 4, 8], dtype=np.int64), np.array([[3, 6]], dtype=np.int64))
    assert np.signbit(w).tolist() == [i in (1, 4, 8) for i in range(10)]
    assert (w[[1, 4, 8]] == 0).all()
    assert alive.tolist() == [i != 4 for i in range(10)]


def _two_leaves(seed, nan=False):
    """Two row-major leaves (3x700 and 500x4) in one flat buffer, some entries pruned, some
    scores tied; their deltas and inputs, the layers' table and the scores."""
    rng = np.random.default_rng(seed)
    w = np.abs(np.round(rng.standard_normal(2100 + 2000), 1))  # (rounded: many ties)
    w[rng.random(w.size) < 0.2] = -0.0
    deltas = np.abs(rng.standard_normal(503))
    acts = np.round(np.abs(rng.standard_normal(704)), 1)
    if nan:
        acts[5] = np.nan
    layers = np.array([[0, 3, 700, 0, 0], [2100, 500, 4, 3, 700]], dtype=np.int64)
    scores = np.concatenate(
        [
            np.abs(w[:2100].reshape(3, 700) * (deltas[:3, None] * acts[None, :700])).reshape(-1),
            np.abs(w[2100:].reshape(500, 4) * (deltas[3:, None] * acts[None, 700:])).reshape(-1),
        ]
    )
    return w, deltas, acts, layers, scores


def _sample_of(smp):
    """The sample's flat positions with their leaf, row and column (for _two_leaves)."""
    leaf = (smp >= 2100).astype(np.int64)
    local = smp - np.where(leaf == 1, 2100, 0)
    cols = np.where(leaf == 1, 4, 700)
    return smp, leaf, local // cols, local % cols


@pytest.mark.parametrize("rank", ["sample", "retry", "none"])
def test_compiled_round_prunes_the_lowest_alive_entries(rank):
    # the brute-force selection: the m lowest alive scores, ties at the m-th from the last
    # position back; "retry": the first bracket fails, the second holds; "none": every bracket
    # fails and every alive entry is a candidate
    w, deltas, acts, layers, scores = _two_leaves(3)
    alive_now = ~np.signbit(w)
    sample = _sample_of(np.sort(np.random.default_rng(1).choice(w.size, 1500, replace=False)).astype(np.int64))
    m = 900
    idx = np.flatnonzero(alive_now)
    order = np.lexsort((-idx, scores[idx]))  # by score, then the later position first
    want = np.zeros(w.size, dtype=bool)
    want[idx[order[:m]]] = True
    alive = np.ones(w.size, dtype=bool)
    tracked = np.array([[2100, 4100]], dtype=np.int64)  # the second leaf keeps its mask array
    scratch = [np.empty(w.size + 1, dtype=np.int64), np.empty(w.size + 1), np.empty(w.size, dtype=np.int64)]
    fair = lambda ms, z: int(ms * m / idx.size + z * 10 + 2)  # noqa: E731
    bracket = {"sample": fair, "retry": lambda ms, z: 0 if z < 5 else fair(ms, z), "none": lambda ms, z: 0}[rank]
    _outer.round_(
        w,
        alive,
        tracked,
        layers,
        deltas,
        acts,
        *sample,
        m,
        bracket,
        (2.0, 6.0),
        *scratch,
    )
    pruned = np.signbit(w) & alive_now
    np.testing.assert_array_equal(pruned, want)
    assert alive.tolist() == [not (p and i >= 2100) for i, p in enumerate(want)]


@pytest.mark.parametrize("where", ["sample", "scan", "all"])
def test_compiled_round_reports_nan_and_prunes_nothing(where):
    # the NaN scores (column 5 of the first leaf) in the sample, or found by the bracketed scan
    # only, or by the scan of every alive entry
    w, deltas, acts, layers, _ = _two_leaves(4, nan=True)
    before = w.copy()
    smp = np.arange(0, w.size, 3, dtype=np.int64)
    if where != "sample":
        smp = smp[(smp >= 2100) | (smp % 700 != 5)]
    sample = _sample_of(smp)
    bracket = (lambda ms, z: 0) if where == "all" else (lambda ms, z: 50)
    scratch = [np.empty(w.size + 1, dtype=np.int64), np.empty(w.size + 1), np.empty(w.size, dtype=np.int64)]
    with pytest.raises(ValueError, match="NaN"):
        _outer.round_(
            w,
            np.ones(w.size, dtype=bool),
            np.zeros((0, 2), dtype=np.int64),
            layers,
            deltas,
            acts,
            *sample,
            100,
            bracket,
            (2.0,),
            *scratch,
        )
    np.testing.assert_array_equal(w.view(np.int64), before.view(np.int64))


def _routes(model, in_shape):
    """Indices of the leaves the compiled route scores, for the default prunable tensors."""
    named = named_prunable(model)
    sources = [_leaf(m, t) for _, m, t in named]
    st = masks_mod._SynflowState(sources)
    net = _linearized_copy(model, st.shared(sources))
    _abs_state_(net)
    named_copy = named_prunable(net, _params_in_copy(model, net, named))
    leaves = [_leaf(m, t) for _, m, t in named_copy]
    st.bind(leaves)
    return sorted(masks_mod._outer_layers(net, named_copy, leaves, st, in_shape))


def _same_by_both_routes(monkeypatch, model, in_shape, sparsity, rounds, **kw):
    ref = reference_synflow(model, in_shape, sparsity, rounds=rounds, **kw)
    assert_same(synflow_masks(model, in_shape, sparsity, rounds=rounds, **kw), ref)
    with monkeypatch.context() as mp:  # the layers recorded by forward hooks instead
        mp.setattr(masks_mod, "_OUTER_FORWARD", False)
        assert_same(synflow_masks(model, in_shape, sparsity, rounds=rounds, **kw), ref)
    with monkeypatch.context() as mp:  # rounds of fully connected leaves called step by step
        mp.setattr(masks_mod, "_ROUND_ON_CPU", False)
        assert_same(synflow_masks(model, in_shape, sparsity, rounds=rounds, **kw), ref)
    with monkeypatch.context() as mp:
        mp.setattr(masks_mod, "_OUTER_ON_CPU", False)
        assert_same(synflow_masks(model, in_shape, sparsity, rounds=rounds, **kw), ref)


class _Shared(nn.Module):
    """One Linear used twice: its gradient is a sum of two outer products (not rank one)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(12, 16)
        self.mid = nn.Linear(16, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        return self.out(self.mid(self.mid(self.inp(x))))


class _Tokens(nn.Module):
    """A Linear applied to a sequence of 4 rows: not a single input row."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Linear(6, 10)
        self.head = nn.Linear(40, 2)

    def forward(self, x):
        return self.head(self.emb(x.reshape(x.shape[0], 4, 6)).reshape(x.shape[0], -1))


class _ReusedWeight(nn.Module):
    """A Linear called once whose weight is used once more directly: two terms in its gradient."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(20, 20)
        self.b = nn.Linear(20, 5)

    def forward(self, x):
        return self.b(nn.functional.linear(self.a(x), self.a.weight))


class _ThreeLinears(nn.Module):
    """20 -> 20 -> 20 -> 5 as ``a``, ``m``, ``b``; the subclasses change how they are used."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(20, 20)
        self.m = nn.Linear(20, 20)
        self.b = nn.Linear(20, 5)

    def forward(self, x):
        return self.b(self.m(self.a(x)))


class _Tied(_ThreeLinears):
    """Two Linears sharing one weight."""

    def __init__(self):
        super().__init__()
        self.m.weight = self.a.weight


class _InPlace(_ThreeLinears):
    """A Linear's output scaled in place afterwards (``delta`` must be taken before the scaling);
    and the first layer's (its output is a leaf on the compiled route)."""

    def forward(self, x):
        h = self.a(x)
        h.mul_(2.0)
        h = self.m(h)
        h.mul_(3.0)
        return self.b(h)


def _doubled(model):
    """A forward hook that doubles the middle layer's output (the copy keeps it)."""
    model.layers[1].register_forward_hook(lambda mod, inp, out: 2.0 * out)
    return model


def test_the_route_applies_to_single_row_linears_only():
    assert _routes(_mlp(12, 16, 3), (12,)) == [0, 1, 2, 3]
    assert _routes(_Shared(), (12,)) == [0, 2]
    assert _routes(_Tokens(), (24,)) == [1]
    vcnn = build_model("vcnn", in_shape=(3, 8, 8), num_classes=4, depth=2, width=8)
    assert _routes(vcnn, (3, 8, 8)) == [len(prunable_parameters(vcnn)) - 1]  # the readout
    pruned = _mlp(12, 16, 2)
    apply_masks(pruned, make_masks(magnitude_scores(pruned), 0.5))
    assert _routes(pruned, (12,)) == []  # weight_orig leaves: the gradient route
    assert _routes(_doubled(_mlp(12, 16, 3)), (12,)) == [0, 2, 3]  # a hooked layer: its gradient
    assert _routes(_ReusedWeight(), (20,)) == [1]  # the weight used twice: its gradient
    assert _routes(_Tied(), (20,)) == [2]  # (the tied weight is listed once)
    assert _routes(_InPlace(), (20,)) == [2]  # outputs changed in place: their gradients


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_compiled_route_gives_the_reference_masks(monkeypatch, scope):
    model = _mlp(300, 300, 2, seed=3)  # > 65536 weights: the sampled bracket runs
    with torch.no_grad():
        model.layers[1].weight[:5] = -0.0  # alive, score 0 (the copy makes them +0.0)
        model.layers[0].bias.fill_(0.3)
    _same_by_both_routes(monkeypatch, model, (300,), 0.95, 40, scope=scope)
    torch.manual_seed(1)
    nets = [(_Shared(), (12,)), (_Tokens(), (24,)), (_doubled(_mlp(12, 16, 3)), (12,))]
    nets += [(_ReusedWeight(), (20,)), (_Tied(), (20,)), (_InPlace(), (20,))]
    for net, shape in nets:
        _same_by_both_routes(monkeypatch, net, shape, 0.8, 12, scope=scope)


def test_compiled_route_with_bias_leaves_and_a_pruned_model(monkeypatch):
    # biases prunable too: they go the gradient route, the weights the compiled one, ranked
    # together; then SynFlow again on the masked model (weight_orig leaves)
    model = _mlp(280, 280, 2, seed=4)
    params = prunable_parameters(model, include_bias=True)
    _same_by_both_routes(monkeypatch, model, (280,), 0.9, 25, params=params)
    apply_masks(model, make_masks(magnitude_scores(model), 0.3))
    _same_by_both_routes(monkeypatch, model, (280,), 0.9, 25)


def test_without_numba_the_gradient_route_runs(monkeypatch):
    model = _mlp(40, 30, 2, seed=5)
    want = reference_synflow(model, (40,), 0.9, rounds=20)
    monkeypatch.setattr(_outer, "kernels", lambda: None)
    assert _routes(model, (40,)) == []
    assert_same(synflow_masks(model, (40,), 0.9, rounds=20), want)


def test_the_copy_forward_is_restored_and_the_model_untouched(monkeypatch):
    # the compiled route replaces the forward of the copy's Linears during the rounds only, also
    # when the rounds stop on an error; the model itself is never touched
    copies = []

    def keep(model, shared=None):
        net = _linearized_copy(model, shared)
        copies.append(net)
        return net

    monkeypatch.setattr(masks_mod, "_linearized_copy", keep)
    model = _mlp(30, 20, 2, seed=6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    synflow_masks(model, (30,), 0.5, rounds=3)
    with torch.no_grad():
        model.layers[0].weight[0, 0] = float("inf")  # inf * 0 somewhere: NaN scores
        model.layers[1].weight[:, 0] = 0.0
    with pytest.raises(ValueError, match="NaN"):
        synflow_masks(model, (30,), 0.5, rounds=3)
    assert len(copies) == 2
    for net in copies:
        patched = [m for m in net.modules() if type(m) is nn.Linear]
        assert patched and all("forward" not in vars(m) for m in patched)
    assert all("forward" not in vars(m) for m in model.modules())
    model.layers[0].weight.data[0, 0] = before["layers.0.weight"][0, 0]
    model.layers[1].weight.data[:, 0] = before["layers.1.weight"][:, 0]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
