"""The torch twin of every registered activation computes the same function as the NumPy one.

``Activation.torch_module()`` must agree with ``act.phi`` everywhere (kinks included) and its
autograd gradient with ``act.dphi`` away from the kinks, where phi is differentiable. At a
kink the NumPy derivative is one-sided; the twin's documented contract ("value and one-sided
slope at kinks agree") is checked for the piecewise-linear families too.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sigprop.theory.activations import available, get_activation  # noqa: E402

#: Representative (non-default) parameters, so a twin that ignores a parameter is caught.
PARAMS = {
    "leaky_relu": {"alpha": 0.1},
    "elu": {"alpha": 0.7},
    "relu_tau": {"tau": 0.5},
    "st_tau": {"tau": 0.5},
    "crelu": {"tau": 0.3, "m": 1.2},
    "cst": {"tau": 0.3, "m": 1.2},
}

NAMES = available()


def _act(name):
    return get_activation(name, **PARAMS.get(name, {}))


def _grid(act) -> np.ndarray:
    """A dense grid on [-8, 8] plus every kink and points a hair either side of it."""
    kinks = act.kinks_array()
    eps = 1e-7
    pts = [np.linspace(-8.0, 8.0, 1601), kinks, kinks - eps, kinks + eps, [-30.0, -12.0, 12.0, 30.0]]
    return np.unique(np.concatenate([np.asarray(p, float) for p in pts]))


def _torch_values_and_grads(act, x: np.ndarray):
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y = act.torch_module()(xt)
    (g,) = torch.autograd.grad(y.sum(), xt)
    return y.detach().numpy(), g.numpy(), y.dtype


def test_registry_is_covered():
    # every family with parameters has representative ones here, so no twin is tested at defaults only
    from sigprop.theory.activations import PARAMS as DEFAULTS

    assert set(DEFAULTS) == set(PARAMS)


@pytest.mark.parametrize("name", NAMES)
def test_twin_values_match_phi(name):
    act = _act(name)
    x = _grid(act)
    y, _, dtype = _torch_values_and_grads(act, x)
    assert dtype == torch.float64, "the twin must preserve float64"
    ref = act.phi(x)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-14, err_msg=f"{act.label()}: torch twin != phi")
    # exactly at the kinks (where pieces switch) the two must pick the same piece
    k = act.kinks_array()
    if k.size:
        yk, _, _ = _torch_values_and_grads(act, k)
        np.testing.assert_allclose(yk, act.phi(k), rtol=1e-13, atol=1e-15, err_msg=f"{act.label()}: value at kinks")


@pytest.mark.parametrize("name", NAMES)
def test_twin_gradient_matches_dphi_away_from_kinks(name):
    act = _act(name)
    x = _grid(act)
    k = act.kinks_array()
    if k.size:
        x = x[np.min(np.abs(x[:, None] - k[None, :]), axis=1) > 1e-9]
    _, g, _ = _torch_values_and_grads(act, x)
    np.testing.assert_allclose(g, act.dphi(x), rtol=1e-10, atol=1e-13, err_msg=f"{act.label()}: autograd != dphi")


@pytest.mark.parametrize("name", [n for n in NAMES if _act(n).is_piecewise_linear and _act(n).kinks])
def test_piecewise_linear_twin_one_sided_slope_at_kinks(name):
    act = _act(name)
    k = act.kinks_array()
    _, g, _ = _torch_values_and_grads(act, k)
    np.testing.assert_array_equal(g, act.dphi(k), err_msg=f"{act.label()}: one-sided slope at kinks")


@pytest.mark.parametrize("name", NAMES)
def test_twin_is_a_module_and_float32_works(name):
    act = _act(name)
    mod = act.torch_module()
    assert isinstance(mod, torch.nn.Module)
    assert list(mod.parameters()) == []  # a fixed function, nothing to train
    x = np.linspace(-3.0, 3.0, 61)
    y = mod(torch.tensor(x, dtype=torch.float32))
    assert y.dtype == torch.float32
    np.testing.assert_allclose(y.numpy(), act.phi(x), rtol=1e-5, atol=1e-6)


def test_batched_parameters_have_no_twin():
    act = get_activation("crelu", tau=np.array([0.1, 0.2]), m=1.0)
    with pytest.raises(ValueError, match="scalars"):
        act.torch_module()


def test_theory_does_not_import_torch():
    code = "import sigprop, sigprop.theory; import sys; assert 'torch' not in sys.modules, 'torch was imported'"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_theory_calls_do_not_import_torch():
    # computing with the theory layer must not pull torch in lazily either
    code = (
        "import sys, sigprop\n"
        "a = sigprop.get_activation('crelu', tau=0.3, m=1.2)\n"
        "sigprop.variance_map(a, 1.0, 2.0, 0.1); sigprop.correlation_map('tanh', 0.5, 1.0, 2.0, 0.1)\n"
        "sigprop.eoc('tanh', sigma_b2=0.05)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
