"""The model zoo: parameter counts from the architectures' definitions, forward shapes,
Stable ResNet branch scaling, any activation, and input validation.

Parameter counts are recomputed here by hand from each architecture's layer list (not from
the code under test): ``conv(i, o, k)`` = i*o*k^2 weights (+ o biases), ``bn(c)`` = 2c affine
parameters, ``lin(i, o)`` = i*o (+ o).
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from sigprop.nets import MLP, MODEL_NAMES, VCNN, ResNet, build_model  # noqa: E402
from sigprop.theory.activations import available, get_activation  # noqa: E402

CIFAR = (3, 32, 32)
MNIST = (1, 28, 28)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The forwards here are tiny; one intra-op thread avoids OpenMP spin-waits on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def lin(i: int, o: int, b: bool = True) -> int:
    return i * o + (o if b else 0)


def conv(i: int, o: int, k: int, b: bool = True, dims: int = 2) -> int:
    return i * o * k**dims + (o if b else 0)


def bn(c: int, on: bool = True) -> int:
    return 2 * c if on else 0


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------
# Hand counts of each architecture
# ---------------------------------------------------------------------------------------
def he_resnet(depth: int, w: int = 16, b: bool = True, norm: bool = True, classes: int = 10, cin: int = 3) -> int:
    """He et al. (2016) Sec. 4.2 CIFAR ResNet, option-A (parameter-free) shortcuts."""
    n = (depth - 2) // 6
    total = conv(cin, w, 3, b) + bn(w, norm)  # first 3x3 conv
    for i, c in enumerate((w, 2 * w, 4 * w)):
        c_in = w if i == 0 else c // 2
        total += conv(c_in, c, 3, b) + bn(c, norm)  # first conv of the stage (stride 2 after stage 1)
        total += (2 * n - 1) * (conv(c, c, 3, b) + bn(c, norm))
    return total + lin(4 * w, classes, b)


def grasp_resnet(depth: int, w: int = 32, b: bool = True, norm: bool = True, classes: int = 10) -> int:
    """GraSP's CIFAR ResNet (seed 001): as He et al. plus 1x1-conv + BN projection shortcuts."""
    return he_resnet(depth, w, b, norm, classes) + sum(conv(c, 2 * c, 1, b) + bn(2 * c, norm) for c in (w, 2 * w))


def wrn(depth: int, k: int, b: bool = True, norm: bool = True, classes: int = 10) -> int:
    """Zagoruyko & Komodakis (2016) WRN-d-k, pre-activation blocks, 1x1 projections where the shape changes."""
    n = (depth - 4) // 6
    total = conv(3, 16, 3, b)
    c_in = 16
    for c in (16 * k, 32 * k, 64 * k):
        for j in range(n):
            i = c_in if j == 0 else c
            total += bn(i, norm) + conv(i, c, 3, b) + bn(c, norm) + conv(c, c, 3, b)
            if i != c:
                total += conv(i, c, 1, b)
        c_in = c
    return total + bn(c_in, norm) + lin(c_in, classes, b)


def vgg(convs: list[int], w: int = 64, b: bool = True, norm: bool = True, classes: int = 10) -> int:
    total, c_in = 0, 3
    for n, m in zip(convs, (1, 2, 4, 8, 8), strict=True):
        for _ in range(n):
            total += conv(c_in, m * w, 3, b) + bn(m * w, norm)
            c_in = m * w
    return total + lin(c_in, classes, b)


def test_lenet300_100_count():
    # LeNet-300-100 (LeCun et al. 1998; seed 002 Table 5): 784*300+300 + 300*100+100 + 100*10+10
    assert 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10 == 266_610
    assert count(build_model("lenet300", in_shape=MNIST, num_classes=10)) == 266_610
    assert count(build_model("lenet300", in_shape=MNIST, num_classes=10, bias=False)) == 784 * 300 + 300 * 100 + 1000


def test_lenet5_caffe_count():
    # LeNet-5-Caffe (SNIP, Lee et al. 2019, Table 1: 431K): conv 5x5 1->20, conv 5x5 20->50, fc 800->500, fc 500->10
    hand = (1 * 20 * 25 + 20) + (20 * 50 * 25 + 50) + (50 * 4 * 4 * 500 + 500) + (500 * 10 + 10)
    assert hand == 431_080
    assert count(build_model("lenet5", in_shape=MNIST, num_classes=10)) == 431_080
    # 32x32 RGB: the feature map before fc1 is 50 x 5 x 5
    m = build_model("lenet5", in_shape=CIFAR, num_classes=100)
    assert count(m) == conv(3, 20, 5) + conv(20, 50, 5) + lin(50 * 5 * 5, 500) + lin(500, 100)


def test_mlp_count_any_width_profile():
    m = build_model("mlp", in_shape=MNIST, num_classes=10)  # depth 3, width 256 by default
    assert count(m) == lin(784, 256) + 2 * lin(256, 256) + lin(256, 10)
    m = MLP(40, 7, [50, 20, 70], bias=False)
    assert count(m) == 40 * 50 + 50 * 20 + 20 * 70 + 70 * 7
    assert m.widths == [50, 20, 70]
    assert list(m.weight_layers()) == list(m.layers) and m.layers[-1] is m.readout
    assert count(MLP(5, 3, [])) == lin(5, 3)


def test_vcnn_count():
    m = build_model("vcnn", in_shape=MNIST, num_classes=10, depth=5, width=16)
    assert count(m) == conv(1, 16, 3) + 4 * conv(16, 16, 3) + lin(16, 10)
    m1 = build_model("vcnn", in_shape=(2, 40), num_classes=10, depth=3, width=8, bias=False)
    assert count(m1) == conv(2, 8, 3, False, dims=1) + 2 * conv(8, 8, 3, False, dims=1) + lin(8, 10, False)
    assert all(c.padding_mode == "circular" for c in m.convs)
    assert not any(isinstance(mod, (nn.MaxPool2d, nn.AvgPool2d, nn.BatchNorm2d)) for mod in m.modules())


def test_vgg16_count():
    # VGG16 configuration D (13 3x3 convs: 64,64 | 128,128 | 256x3 | 512x3 | 512x3) with BatchNorm and a
    # single 512 -> 10 readout (GraSP / Frankle et al. 2020, "14.7M" parameters), written out layer by layer.
    hand = (
        (3 * 64 * 9 + 64 * 64 * 9)
        + (64 * 128 * 9 + 128 * 128 * 9)
        + (128 * 256 * 9 + 2 * 256 * 256 * 9)
        + (256 * 512 * 9 + 2 * 512 * 512 * 9)
        + (3 * 512 * 512 * 9)
        + 2 * (2 * 64 + 2 * 128 + 3 * 256 + 6 * 512)  # BatchNorm gamma, beta
        + 512 * 10
    )
    assert hand + 10 == 14_724_042  # GraSP's VGG16 (bias-free convs, readout with bias)
    m = build_model("vgg16", in_shape=CIFAR, num_classes=10, bias=False)
    assert count(m) == hand
    assert sum(isinstance(x, nn.Conv2d) for x in m.modules()) == 13
    biases = 2 * 64 + 2 * 128 + 3 * 256 + 6 * 512 + 10
    assert count(build_model("vgg16", in_shape=CIFAR, num_classes=10)) == hand + biases
    assert count(build_model("vgg16", in_shape=CIFAR, num_classes=10, batchnorm=False)) == vgg(
        [2, 2, 3, 3, 3], norm=False
    )


def test_vgg16x3_count():
    # seed 001 Sec. 4.3: same pooling layers as VGG16, 3x the convolutions of each block -> 6,6,9,9,9
    m = build_model("vgg16x3", in_shape=CIFAR, num_classes=10, width=8, bias=False)
    assert sum(isinstance(x, nn.Conv2d) for x in m.modules()) == 39
    assert sum(isinstance(x, nn.MaxPool2d) for x in m.modules()) == 4
    assert count(m) == vgg([6, 6, 9, 9, 9], w=8, b=False)  # full size: test_default_parameter_count


@pytest.mark.parametrize(("depth", "millions"), [(20, 0.27), (32, 0.46), (56, 0.85), (110, 1.7)])
def test_he_resnet_counts(depth, millions):
    # He et al. (2016) Table 6: ResNet-20/32/56/110 have 0.27M/0.46M/0.85M/1.7M parameters
    m = build_model(f"resnet{depth}", in_shape=CIFAR, num_classes=10, bias=False)
    assert count(m) == he_resnet(depth, b=False)
    assert round(count(m) / 1e6, 2 if depth < 110 else 1) == millions
    assert count(build_model(f"resnet{depth}", in_shape=CIFAR, num_classes=10)) == he_resnet(depth)
    assert m.num_blocks == 3 * (depth - 2) // 6


def test_resnet20_exact():
    # He et al. ResNet-20 (convs without bias, BN, fc with bias) has 269,722 parameters; bias=False here also
    # drops the 10 readout biases.
    assert he_resnet(20, b=False) + 10 == 269_722
    assert count(build_model("resnet20", in_shape=CIFAR, num_classes=10, bias=False)) == 269_712


@pytest.mark.parametrize("depth", [32, 50, 104])
def test_doubled_resnet_counts(depth):
    # seed 001 Sec. 4.2: "as in (Wang et al., 2020) ... we doubled the number of filters" -> 32/64/128
    for name in (f"resnet{depth}x2", f"stable_resnet{depth}"):
        m = build_model(name, in_shape=CIFAR, num_classes=100, bias=False)
        assert count(m) == grasp_resnet(depth, b=False, classes=100)
        assert m.num_blocks == 3 * (depth - 2) // 6


def test_wrn16_count():
    # seed 002 Table 2 WRN16; its code builds wrn-16 with k = 6 (16 -> 96, 192, 384 filters)
    m = build_model("wrn16", in_shape=(3, 64, 64), num_classes=200)
    assert count(m) == wrn(16, 6, classes=200)
    assert count(build_model("wrn", in_shape=CIFAR, num_classes=10, depth=28, width=10, bias=False)) == wrn(
        28, 10, b=False
    )
    # WRN-28-10 without biases: 36.5M (Zagoruyko & Komodakis 2016, Table 3)
    assert round(wrn(28, 10, b=False) / 1e6, 1) == 36.5


EXPECTED_DEFAULT = {  # every name at its default size on CIFAR-10 shapes, from the hand counts above
    "mlp": lin(3072, 256) + 2 * lin(256, 256) + lin(256, 10),
    "lenet300": lin(3072, 300) + lin(300, 100) + lin(100, 10),
    "lenet5": conv(3, 20, 5) + conv(20, 50, 5) + lin(50 * 5 * 5, 500) + lin(500, 10),
    "vcnn": conv(3, 64, 3) + 9 * conv(64, 64, 3) + lin(64, 10),
    "vgg16": vgg([2, 2, 3, 3, 3]),
    "vgg16x3": vgg([6, 6, 9, 9, 9]),
    "resnet": he_resnet(20),
    "resnetx2": grasp_resnet(32),
    "stable_resnet": grasp_resnet(32),
    "wrn": wrn(16, 6),
    "wrn16": wrn(16, 6),
    **{f"resnet{d}": he_resnet(d) for d in (20, 32, 56, 110)},
    **{f"resnet{d}x2": grasp_resnet(d) for d in (32, 50, 104)},
    **{f"stable_resnet{d}": grasp_resnet(d) for d in (32, 50, 104)},
}


def test_every_name_has_a_hand_count():
    assert set(EXPECTED_DEFAULT) == set(MODEL_NAMES)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_default_parameter_count(name):
    assert count(build_model(name, in_shape=CIFAR, num_classes=10)) == EXPECTED_DEFAULT[name]


# ---------------------------------------------------------------------------------------
# Forward shapes
# ---------------------------------------------------------------------------------------
SMALL = {  # small widths keep the CPU forward fast; the architecture (depth, pooling) is the real one
    "mlp": {"width": 32},
    "vcnn": {"width": 8, "depth": 4},
    "vgg16": {"width": 4},
    "vgg16x3": {"width": 4},
    "wrn": {"width": 1},
    "wrn16": {"width": 1},
}
BIG = {"resnet110", "resnet104x2", "stable_resnet104", "vgg16x3", "wrn16"}


def _shape_for(name):
    return MNIST if name.startswith("lenet") else CIFAR


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_shape_small(name):
    kw = SMALL.get(name, {} if name.startswith(("lenet", "mlp")) else {"width": 4})
    m = build_model(name, in_shape=_shape_for(name), num_classes=7, **kw)
    x = torch.randn(2, *_shape_for(name))
    y = m(x)
    assert y.shape == (2, 7) and torch.isfinite(y).all()
    assert m(x.flatten(1)).shape == (2, 7)  # flat input accepted
    layers = m.weight_layers()
    assert isinstance(layers[-1], nn.Linear) and layers[-1].out_features == 7


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BIG | {"resnet32x2", "resnet50x2", "vgg16"}))
def test_forward_shape_full_size(name):
    shape = (3, 64, 64) if name.startswith("wrn") else CIFAR
    m = build_model(name, in_shape=shape, num_classes=200)
    assert m(torch.randn(2, *shape)).shape == (2, 200)


def test_forward_other_shapes():
    assert build_model("vcnn", in_shape=(1, 40), num_classes=10, depth=3, width=4)(torch.randn(3, 1, 40)).shape == (
        3,
        10,
    )
    assert build_model("resnet20", in_shape=(3, 64, 64), num_classes=200, width=2)(torch.randn(2, 3, 64, 64)).shape == (
        2,
        200,
    )
    assert build_model("mlp", in_shape=(64,), num_classes=10)(torch.randn(5, 64)).shape == (5, 10)
    assert build_model("vgg16", in_shape=(1, 16, 16), num_classes=3, width=2)(torch.randn(2, 1, 16, 16)).shape == (2, 3)


# ---------------------------------------------------------------------------------------
# Stable ResNet (seed 001 Prop. 2): y_l = y_{l-1} + F(W_l, y_{l-1}) / sqrt(L), L = number of blocks
# ---------------------------------------------------------------------------------------
def _pair(name, **kw):
    torch.manual_seed(0)
    std = build_model(name, in_shape=CIFAR, num_classes=10, activation="linear", batchnorm=False, **kw)
    st = build_model(name, in_shape=CIFAR, num_classes=10, activation="linear", batchnorm=False, stable=True, **kw)
    st.load_state_dict(std.state_dict())
    return std, st


@pytest.mark.parametrize(("name", "L"), [("resnet32x2", 15), ("resnet20", 9), ("wrn16", 6)])
def test_stable_branch_scaled_by_inverse_sqrt_blocks(name, L):
    # seed 001: "ResNet32 has 15 blocks and 32 layers, hence L = 15"
    std, st = _pair(name, width=2)
    assert st.num_blocks == L == len(st.blocks())
    checked = 0
    with torch.no_grad():
        for b_std, b_st in zip(std.blocks(), st.blocks(), strict=True):
            if b_std.shortcut is not None and not isinstance(b_std.shortcut, nn.Identity):
                continue  # identity-shortcut blocks: y - x is exactly the (scaled) branch
            c = b_std.branch[0].in_channels
            xb = torch.randn(2, c, 8, 8)
            r_std, r_st = b_std(xb) - xb, b_st(xb) - xb
            torch.testing.assert_close(r_st, r_std / math.sqrt(L), rtol=1e-5, atol=1e-6)
            assert r_std.abs().max() > 0.01
            checked += 1
    # all but the blocks entering stages 2 and 3 (and stage 1 of a WRN, 16 -> 16k channels)
    assert checked == L - (3 if name.startswith("wrn") else 2)


def test_stable_block_formula_with_relu_and_batchnorm():
    m = build_model("stable_resnet50", in_shape=CIFAR, num_classes=10, width=2)
    assert m.num_blocks == 24 and m.stable
    b = m.blocks()[5]
    assert b.scale == pytest.approx(1 / math.sqrt(24))
    x = torch.randn(4, b.branch[0].in_channels, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(b(x), torch.relu(b.shortcut(x) + b.branch(x) / math.sqrt(24)))
    assert all(blk.scale == 1.0 for blk in build_model("resnet50x2", in_shape=CIFAR, num_classes=10).blocks())


def test_stable_whole_model_differs_only_by_scaling():
    std, st = _pair("resnet", depth=8, width=2)  # 3 blocks
    for b in std.blocks():
        b.scale = 1 / math.sqrt(3)
    x = torch.randn(2, *CIFAR)
    with torch.no_grad():
        torch.testing.assert_close(std(x), st(x))


# ---------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------
PARAMS = {"crelu": {"tau": 0.25, "m": 1.2}, "cst": {"tau": 0.2, "m": 1.0}, "relu_tau": {"tau": 0.5}}


@pytest.mark.parametrize("act", available())
def test_any_activation(act):
    params = PARAMS.get(act)
    for name, kw in [
        ("mlp", {"width": 16, "depth": 2}),
        ("resnet", {"depth": 8, "width": 2}),
        ("vcnn", {"width": 4, "depth": 2}),
    ]:
        m = build_model(name, in_shape=(1, 8, 8), num_classes=3, activation=act, act_params=params, **kw)
        y = m(torch.randn(2, 1, 8, 8))
        assert y.shape == (2, 3) and torch.isfinite(y).all()
        twins = [mod for mod in m.modules() if type(mod).__name__ == "TorchActivation"]
        assert twins and all(t.act.name == act for t in twins)
        assert len({id(t) for t in twins}) == len(twins)  # a fresh module per layer


def test_activation_object_and_params_applied():
    act = get_activation("crelu", tau=0.5, m=1.0)
    m = MLP(4, 2, [8], activation=act)
    assert m.activation is act
    h = torch.tensor([[-1.0, 0.25, 0.75, 2.0]])
    torch.testing.assert_close(m.acts[0](h), torch.tensor([[0.0, 0.0, 0.25, 1.0]]))
    m2 = VCNN((1, 6, 6), 2, depth=2, width=2, activation="tanh")
    assert m2.activation.name == "tanh"


# ---------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "kw", "match"),
    [
        ("resnet7", {}, "known models: mlp"),
        ("resnet", {"depth": 21}, "6n\\+2"),
        ("resnet32", {"depth": 50}, "use 'resnet' with depth=50"),
        ("stable_resnet32", {"depth": 56}, "use 'stable_resnet'"),
        ("wrn", {"depth": 18}, "6n\\+4"),
        ("vgg16", {"depth": 19}, "fixed depth"),
        ("lenet300", {"width": 100}, "fixed architecture"),
        ("mlp", {"width": 0}, ">= 1"),
        ("vcnn", {"depth": 0}, ">= 1"),
        ("vgg16", {"in_shape": (64,)}, "convolutional.*\\(channels, height, width\\)"),
        ("resnet20", {"in_shape": (28, 28)}, "\\(1, H, W\\)"),
        ("vcnn", {"in_shape": (40,)}, "\\(channels, length\\)"),
        ("vgg16", {"in_shape": (3, 8, 8)}, ">= 16"),
        ("lenet5", {"in_shape": (1, 12, 12)}, ">= 16"),
        ("mlp", {"stable": True}, "residual networks only"),
        ("vcnn", {"batchnorm": True}, "batch-norm"),
        ("mlp", {"activation": "crelu", "act_params": {"beta": 1.0}}, "allowed: tau, m"),
        ("mlp", {"activation": "swish"}, "known activations"),
        ("mlp", {"num_classes": 0}, "num_classes"),
        ("mlp", {"in_shape": (0, 3)}, "in_shape"),
    ],
)
def test_bad_input_raises_value_error(name, kw, match):
    args = {"in_shape": CIFAR, "num_classes": 10, **kw}
    with pytest.raises(ValueError, match=match):
        build_model(name, **args)


def test_bad_forward_shape():
    m = build_model("resnet20", in_shape=CIFAR, num_classes=10, width=2)
    with pytest.raises(ValueError, match="expects input of shape"):
        m(torch.randn(2, 32, 32, 3))
    with pytest.raises(ValueError, match="784 features"):
        build_model("mlp", in_shape=MNIST, num_classes=10)(torch.randn(2, 10))
    with pytest.raises(ValueError, match="scalar parameters"):
        MLP(3, 2, [4], activation=get_activation("relu_tau", tau=[0.1, 0.2]))


def test_pruning_masks_work_on_weight_layers():
    # torch.nn.utils.prune convention (weight_orig + weight_mask) on every weight layer
    from torch.nn.utils import prune

    m = build_model("resnet", in_shape=CIFAR, num_classes=10, depth=8, width=2)
    for layer in m.weight_layers():
        prune.random_unstructured(layer, "weight", amount=0.5)
    assert m(torch.randn(2, *CIFAR)).shape == (2, 10)
    assert all(hasattr(layer, "weight_mask") for layer in m.weight_layers())


def test_resnet_class_direct():
    m = ResNet(CIFAR, 10, depth=14, base_width=2, shortcut="B", batchnorm=False)
    assert count(m) == grasp_resnet(14, w=2, norm=False)
    kinds = [type(b.shortcut).__name__ for b in m.blocks()]
    assert kinds == ["Identity", "Identity", "Sequential", "Identity", "Sequential", "Identity"]
    with pytest.raises(ValueError, match=r"'A' .* or 'B'"):
        ResNet(CIFAR, 10, shortcut="C")
