"""NetSpec: validation, broadcasting and the variance recursion against closed forms."""

import math

import numpy as np
import pytest

from sigprop.netspec import NetSpec
from sigprop.theory.activations import get_activation


def test_broadcast_and_labels():
    s = NetSpec(widths=(3, 5, 4), activation=["relu", get_activation("crelu", tau=0.2, m=1.0)], sigma_b2=0.1)
    assert s.depth == 2
    assert s.sigma_w2 == (2.0, 2.0) and s.sigma_b2 == (0.1, 0.1) and s.kept == (1.0, 1.0)
    assert [a.name for a in s.activation] == ["relu", "crelu"]
    d = s.to_dict()
    assert d["widths"] == [3, 5, 4] and d["activation"][1].startswith("crelu(")


def test_mlp_constructor():
    s = NetSpec.mlp(4, 7, "tanh", in_width=3, sigma_w2=1.5)
    assert s.widths == (3, 7, 7, 7, 7)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"widths": (3, 0)}, "widths\\[1\\]"),
        ({"widths": (3,)}, "at least two"),
        ({"widths": 5}, "widths must be"),
        ({"widths": (3, 3), "sigma_w2": -1.0}, "sigma_w2"),
        ({"widths": (3, 3, 3), "sigma_b2": [0.1]}, "one per layer"),
        ({"widths": (3, 3), "kept": 0.0}, "kept"),
        ({"widths": (3, 3), "kept": 1.5}, "kept"),
        ({"widths": (3, 3), "weights": "uniform"}, "allowed: gaussian"),
        ({"widths": (3, 3), "eta": 0.1}, "correlated"),
        ({"widths": (3, 3), "weights": "orthogonal", "kept": 0.5}, "orthogonal"),
        ({"widths": (3, 3), "q0": 0.0}, "q0"),
        ({"widths": (3, 3), "activation": "nope"}, "nope"),
    ],
)
def test_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        NetSpec(**kw)


def test_relu_recursion_closed_form():
    # relu: E[relu(sqrt(q) Z)^2] = q / 2, so q^l = kept sw q^{l-1} / 2 + sb with q^1 = kept sw q0 + sb
    sw, sb, kept, q0 = 2.4, 0.3, 0.7, 1.7
    s = NetSpec.mlp(6, 10, "relu", sigma_w2=sw, sigma_b2=sb, kept=kept, q0=q0)
    expected = [kept * sw * q0 + sb]
    for _ in range(5):
        expected.append(kept * sw * expected[-1] / 2 + sb)
    np.testing.assert_allclose(s.layer_variances(), expected, rtol=1e-13)


def test_tanh_recursion_against_quadrature():
    # an independent route: Gauss-Hermite (probabilists') with many nodes for the smooth tanh
    z, w = np.polynomial.hermite_e.hermegauss(200)
    w = w / math.sqrt(2 * math.pi)
    sw, sb = 1.8, 0.05
    s = NetSpec.mlp(5, 10, "tanh", sigma_w2=sw, sigma_b2=sb)
    q = [sw + sb]
    for _ in range(4):
        q.append(sw * float(np.sum(w * np.tanh(math.sqrt(q[-1]) * z) ** 2)) + sb)
    # 200-node Gauss-Hermite on tanh (poles at i pi / (2 sqrt q)) is itself only good to ~1e-12
    np.testing.assert_allclose(s.layer_variances(), q, rtol=1e-10)


def test_dead_layer_is_reported():
    s = NetSpec(widths=(3, 3), sigma_w2=0.0, sigma_b2=0.0)
    with pytest.raises(ValueError, match="variance of layer 1 is 0"):
        s.layer_variances()
