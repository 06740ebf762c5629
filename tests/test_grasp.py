"""Tests of sigprop.pruning.grasp_scores (GraSP, Wang et al. 2020)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from sigprop.errors import NumericalError
from sigprop.pruning import apply_masks, grasp_scores, make_masks, random_scores

NAMES = ["0.weight", "2.weight"]


@pytest.fixture(autouse=True)
def _single_thread():
    """Small dense products: one intra-op thread is faster and steadier on a shared 2-core box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_net(seed: int = 0, act: type[nn.Module] = nn.Tanh) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), act(), nn.Linear(5, 3)).double()


def tiny_data(seed: int = 1, batches: int = 2):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (6,), generator=g))
        for _ in range(batches)
    ]


def flat_loss(net: nn.Module, data, temperature: float, names=NAMES):
    """``theta -> sum_b CE(f_theta(x_b) / T, y_b)`` on the flattened weights ``names``."""
    base = {k: v.detach().clone() for k, v in net.named_parameters()}
    shapes = [base[n].shape for n in names]
    theta = torch.cat([base[n].reshape(-1) for n in names])

    def f(th):
        ps, i = dict(base), 0
        for n, sh in zip(names, shapes, strict=True):
            ps[n] = th[i : i + sh.numel()].reshape(sh)
            i += sh.numel()
        return sum(F.cross_entropy(functional_call(net, ps, (x,)) / temperature, y) for x, y in data)

    return f, theta


@pytest.mark.parametrize("temperature", [1.0, 200.0])
def test_grasp_equals_explicit_hessian_gradient_product(temperature):
    # independent route: the full Hessian of the flattened-parameter loss, then theta * (H g)
    net, data = tiny_net(), tiny_data()
    scores = grasp_scores(net, data, temperature=temperature)
    f, theta = flat_loss(net, data, temperature)
    hess = torch.autograd.functional.hessian(f, theta)
    grad = torch.autograd.functional.jacobian(f, theta)
    ref = theta * (hess @ grad)
    got = torch.cat([scores[n].reshape(-1) for n in NAMES])
    assert scores.keys() == set(NAMES)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-14 * float(ref.abs().max()) + 1e-300)
    assert ref.abs().max() > 0  # not a vacuous comparison


def test_grasp_first_batch_only_and_single_pair():
    net, data = tiny_net(), tiny_data()
    one = grasp_scores(net, data, batches=1, temperature=3.0)
    f, theta = flat_loss(net, data[:1], 3.0)
    ref = theta * (torch.autograd.functional.hessian(f, theta) @ torch.autograd.functional.jacobian(f, theta))
    torch.testing.assert_close(torch.cat([one[n].reshape(-1) for n in NAMES]), ref, rtol=1e-9, atol=1e-18)
    pair = grasp_scores(net, data[0], temperature=3.0)
    for n in NAMES:
        torch.testing.assert_close(pair[n], one[n])
    # a generator of batches is read once and still gives both passes
    gen = grasp_scores(net, (b for b in data), temperature=3.0)
    full = grasp_scores(net, data, temperature=3.0)
    for n in NAMES:
        torch.testing.assert_close(gen[n], full[n])


def test_grasp_sign_convention_removed_weights_raise_gradient_flow():
    """GraSP removes the weights whose removal raises ``||g||^2`` most (to first order).

    Shrinking weight q (theta -> theta - eps theta_q e_q) changes ``||g||^2`` at rate
    ``-2 theta_q (H g)_q = -2 score_q``, measured here by central finite differences of the
    *first-order* gradient (no Hessian involved). So the lowest score (pruned first by
    make_masks) has the largest gradient-flow gain on removal.
    """
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    data = tiny_data(seed=4)
    temperature = 2.0
    scores = grasp_scores(net, data, temperature=temperature)
    f, theta = flat_loss(net, data, temperature)

    def gnorm2(th):
        th = th.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(f(th), th)
        return float((g * g).sum())

    flat_scores = torch.cat([scores[n].reshape(-1) for n in NAMES])
    rates = []
    h = 1e-5
    for q in range(theta.numel()):
        e = torch.zeros_like(theta)
        e[q] = theta[q]
        rates.append((gnorm2(theta - h * e) - gnorm2(theta + h * e)) / (2 * h))  # d/d eps of removing
    rates = torch.tensor(rates, dtype=torch.float64)
    torch.testing.assert_close(rates, -2 * flat_scores, rtol=1e-5, atol=1e-9 * float(rates.abs().max()))
    # the weights make_masks removes first are those whose removal raises the gradient flow most
    masks = make_masks(scores, 0.25)
    removed = ~torch.cat([masks[n].reshape(-1) for n in NAMES])
    assert rates[removed].min() >= rates[~removed].max()


def test_grasp_keeps_masked_entries_pruned_and_model_unchanged():
    net, data = tiny_net(), tiny_data()
    apply_masks(net, make_masks(random_scores(net, 5), 0.5, scope="layerwise"))
    net.train()
    before = copy.deepcopy(net.state_dict())
    flags = [p.requires_grad for p in net.parameters()]
    scores = grasp_scores(net, data, temperature=5.0)
    after = net.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        torch.testing.assert_close(before[k], after[k], rtol=0, atol=0)
    assert [p.requires_grad for p in net.parameters()] == flags
    assert all(p.grad is None for p in net.parameters())
    assert net.training
    for name in NAMES:
        mask = net.get_submodule(name.split(".")[0]).weight_mask
        assert torch.isneginf(scores[name][mask == 0]).all()
        assert torch.isfinite(scores[name][mask != 0]).all()
    # re-pruning a pruned net by GraSP never revives a masked entry
    new = make_masks(scores, 0.6)
    for name in NAMES:
        mask = net.get_submodule(name.split(".")[0]).weight_mask
        assert not (new[name] & (mask == 0)).any()
    # kept entries equal GraSP of the subnetwork: theta * (M H M g) on the kept coordinates
    dense = tiny_net()
    with torch.no_grad():
        for i in (0, 2):
            dense[i].weight.copy_(net[i].weight)
    f, theta = flat_loss(dense, data, 5.0)
    m = torch.cat([net[i].weight_mask.reshape(-1) for i in (0, 2)])
    hess = torch.autograd.functional.hessian(f, theta) * m[:, None] * m[None, :]
    ref = theta * (hess @ (torch.autograd.functional.jacobian(f, theta) * m))
    got = torch.cat([scores[n].reshape(-1) for n in NAMES])
    torch.testing.assert_close(got[m != 0], ref[m != 0], rtol=1e-9, atol=1e-18)


def test_grasp_unsupervised_losses_and_relu():
    net, data = tiny_net(act=nn.ReLU), tiny_data()
    x = data[0][0]
    for loss in ("uniform", "pred-softmax", "pred-raw"):
        s = grasp_scores(net, x, loss=loss)
        assert set(s) == set(NAMES) and all(torch.isfinite(v).all() for v in s.values())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"loss": "nope"}, "unknown loss"),
        ({"batches": 0}, "batches"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
    ],
)
def test_grasp_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        grasp_scores(tiny_net(), tiny_data(), **kwargs)


def test_grasp_no_data_and_missing_labels():
    with pytest.raises(ValueError, match="no batch"):
        grasp_scores(tiny_net(), [])
    with pytest.raises(ValueError, match="labels"):
        grasp_scores(tiny_net(), tiny_data()[0][0], loss="supervised")


def test_grasp_non_finite_raises():
    net, data = tiny_net(), tiny_data()
    with torch.no_grad():
        net[0].weight.fill_(1e308)
    with pytest.raises(NumericalError):
        grasp_scores(net, data)
