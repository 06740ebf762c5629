"""Build any model of the zoo from a name and options (used by the CLI, configs and experiments).

Names, what they build, and what ``depth`` / ``width`` mean (defaults in brackets):

- ``mlp``: fully connected; depth = hidden layers [3], width = hidden width [256].
- ``lenet300``: LeNet-300-100 (seed 002 Table 5); fixed.
- ``lenet5``: LeNet-5, Caffe variant 20-50-500 (SNIP); fixed.
- ``vcnn``: vanilla CNN, no pooling, circular padding (seed 001 Table 4); depth = conv layers [10],
  width = channels [64].
- ``vgg16``, ``vgg16x3``: VGG16 / 3xVGG16 (seed 001 Table 5); depth fixed, width = channels of the
  first block [64].
- ``resnet``: CIFAR ResNet of He et al. (option-A shortcuts); depth = 6n+2 [20], width = filters of
  the first stage [16]. ``resnet20``, ``resnet32``, ``resnet56``, ``resnet110`` (seed 002 Table 2):
  the same at a fixed depth.
- ``resnetx2``: doubled filters and 1x1 projection shortcuts, as GraSP / seed 001; depth = 6n+2 [32],
  width [32]. ``resnet32x2``, ``resnet50x2``, ``resnet104x2``: seed 001's ResNet32/50/104.
- ``stable_resnet``: ``resnetx2`` with 1/sqrt(L) residual branches (seed 001 Prop. 2); depth [32],
  width [32]. ``stable_resnet32``, ``stable_resnet50``, ``stable_resnet104``: fixed depth.
- ``wrn``: wide ResNet WRN-d-k (pre-activation); depth = 6n+4 [16], width = widening factor k [6].
  ``wrn16``: WRN-16-k of seed 002 Table 2.

``stable=True`` turns any residual network into its Stable version. ``batchnorm`` (None: the
architecture's own default) applies to VGG and residual networks only, which use it by default
as in the papers' training code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from ._common import ActivationLike, check_in_shape, check_int
from .models import MLP, VCNN, VGG, VGG16_BLOCKS, VGG16X3_BLOCKS, LeNet5, LeNet300100
from .resnets import ResNet, WideResNet

__all__ = ["MODEL_NAMES", "build_model", "describe_model"]


@dataclass(frozen=True)
class _Spec:
    family: str  # mlp | lenet300 | lenet5 | vcnn | vgg | resnet | wrn
    summary: str
    depth: int | None  # default depth, or the fixed depth when fixed_depth
    width: int | None  # default width
    fixed_depth: bool = False
    fixed_width: bool = False
    depth_rule: str = ""
    width_rule: str = ""
    options: dict | None = None
    generic: str = ""  # the name that takes any depth, for fixed-depth aliases


def _specs() -> dict[str, _Spec]:
    s: dict[str, _Spec] = {
        "mlp": _Spec(
            "mlp",
            "fully connected network",
            3,
            256,
            depth_rule="number of hidden layers >= 1",
            width_rule="hidden width >= 1",
        ),
        "lenet300": _Spec("lenet300", "LeNet-300-100", None, None, fixed_depth=True, fixed_width=True),
        "lenet5": _Spec("lenet5", "LeNet-5 (Caffe 20-50-500)", None, None, fixed_depth=True, fixed_width=True),
        "vcnn": _Spec(
            "vcnn",
            "vanilla CNN (no pooling, circular padding)",
            10,
            64,
            depth_rule="number of conv layers >= 1",
            width_rule="channels per conv layer >= 1",
        ),
        "vgg16": _Spec(
            "vgg",
            "VGG16",
            None,
            64,
            fixed_depth=True,
            width_rule="channels of the first block >= 1",
            options={"convs_per_block": VGG16_BLOCKS},
        ),
        "vgg16x3": _Spec(
            "vgg",
            "3xVGG16",
            None,
            64,
            fixed_depth=True,
            width_rule="channels of the first block >= 1",
            options={"convs_per_block": VGG16X3_BLOCKS},
        ),
    }
    rrule = "6n+2 (8, 14, 20, 32, 44, 50, 56, 104, 110, ...)"
    wrule = "filters of the first stage >= 1"
    s["resnet"] = _Spec(
        "resnet", "CIFAR ResNet (He et al. 2016)", 20, 16, depth_rule=rrule, width_rule=wrule, options={"shortcut": "A"}
    )
    for d in (20, 32, 56, 110):
        s[f"resnet{d}"] = _Spec(
            "resnet",
            f"ResNet{d} (He et al. 2016)",
            d,
            16,
            fixed_depth=True,
            width_rule=wrule,
            options={"shortcut": "A"},
            generic="resnet",
        )
    s["resnetx2"] = _Spec(
        "resnet",
        "CIFAR ResNet with doubled filters (GraSP)",
        32,
        32,
        depth_rule=rrule,
        width_rule=wrule,
        options={"shortcut": "B"},
    )
    for d in (32, 50, 104):
        s[f"resnet{d}x2"] = _Spec(
            "resnet",
            f"ResNet{d} with doubled filters (seed 001 / GraSP)",
            d,
            32,
            fixed_depth=True,
            width_rule=wrule,
            options={"shortcut": "B"},
            generic="resnetx2",
        )
    s["stable_resnet"] = _Spec(
        "resnet",
        "Stable ResNet (seed 001 Prop. 2)",
        32,
        32,
        depth_rule=rrule,
        width_rule=wrule,
        options={"shortcut": "B", "stable": True},
    )
    for d in (32, 50, 104):
        s[f"stable_resnet{d}"] = _Spec(
            "resnet",
            f"Stable ResNet{d} (seed 001)",
            d,
            32,
            fixed_depth=True,
            width_rule=wrule,
            options={"shortcut": "B", "stable": True},
            generic="stable_resnet",
        )
    krule = "widening factor k >= 1"
    s["wrn"] = _Spec("wrn", "wide ResNet WRN-d-k", 16, 6, depth_rule="6n+4 (10, 16, 22, 28, 40, ...)", width_rule=krule)
    s["wrn16"] = _Spec("wrn", "WRN-16-k (seed 002)", 16, 6, fixed_depth=True, width_rule=krule, generic="wrn")
    return s


_SPECS = _specs()

#: Names accepted by :func:`build_model`.
MODEL_NAMES: list[str] = list(_SPECS)

_RESIDUAL = ("resnet", "wrn")
_WITH_BN = ("vgg", "resnet", "wrn")


def describe_model(name: str) -> str:
    """One line saying what ``name`` builds and what depth/width mean for it."""
    spec = _get(name)
    if spec.fixed_depth and spec.fixed_width:
        dw = "fixed architecture"
    else:
        if spec.fixed_depth:
            depth = f"depth fixed at {spec.depth}" if spec.depth else "depth fixed"
        else:
            depth = f"depth = {spec.depth_rule} (default {spec.depth})"
        dw = f"{depth}; width = {spec.width_rule} (default {spec.width})"
    return f"{name}: {spec.summary}; {dw}"


def _get(name: str) -> _Spec:
    if not isinstance(name, str) or name not in _SPECS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
    return _SPECS[name]


def build_model(
    name: str,
    *,
    in_shape: tuple[int, ...],
    num_classes: int,
    depth: int | None = None,
    width: int | None = None,
    activation: ActivationLike = "relu",
    act_params: dict | None = None,
    bias: bool = True,
    stable: bool = False,
    batchnorm: bool | None = None,
) -> nn.Module:
    """Build a model of the zoo by name.

    Parameters
    ----------
    name : str
        One of :data:`MODEL_NAMES` (see the module docstring for what each builds).
    in_shape : tuple of int
        Shape of one input example, no batch dimension: anything for MLPs (flattened),
        ``(C, H, W)`` for convolutional nets, also ``(C, L)`` for ``vcnn``.
    num_classes : int
        Number of logits.
    depth, width : int or None
        Architecture size; meaning per model in the module docstring. None: the default.
        Models with a fixed size reject a different value.
    activation, act_params
        Registry activation name and its parameters (e.g. ``"crelu", {"tau": 0.25, "m": 1.2}``),
        or an :class:`~sigprop.theory.activations.Activation`.
    bias : bool
        Biases on every Linear/Conv layer (readout included).
    stable : bool
        Stable ResNet scaling 1/sqrt(L) of every residual branch (residual networks only).
    batchnorm : bool or None
        BatchNorm after convolutions (VGG and residual networks; default True there, as in the
        papers' training code). Must be None/False for the other models.

    Returns
    -------
    nn.Module
        A :class:`~sigprop.nets._common.Network`: ``(B, *in_shape) -> (B, num_classes)``.

    Raises
    ------
    ValueError
        Unknown name (the known ones are listed), a depth/width/in_shape the model cannot take,
        or an option that does not apply to it.
    """
    spec = _get(name)
    in_shape = check_in_shape(in_shape)
    num_classes = check_int(num_classes, "num_classes")
    if depth is not None:
        depth = check_int(depth, f"{name} depth")
        if spec.fixed_depth and depth != spec.depth:
            if spec.depth is None:
                raise ValueError(f"{name} has a fixed depth; depth cannot be set (got {depth})")
            hint = f"; use {spec.generic!r} with depth={depth}" if spec.generic else ""
            raise ValueError(f"{name} has depth {spec.depth}, got depth={depth}{hint}")
    if width is not None:
        width = check_int(width, f"{name} width")
        if spec.fixed_width:
            raise ValueError(f"{name} has a fixed architecture; width cannot be set (got {width})")
    depth = spec.depth if depth is None else depth
    width = spec.width if width is None else width
    if stable and spec.family not in _RESIDUAL:
        raise ValueError(f"stable=True (1/sqrt(L) residual branches) applies to residual networks only, not {name!r}")
    if batchnorm and spec.family not in _WITH_BN:
        raise ValueError(f"{name} has no batch-norm option; batchnorm applies to vgg and residual networks only")
    bn = True if batchnorm is None else bool(batchnorm)
    opts = dict(spec.options or {})
    common = {"activation": activation, "act_params": act_params}

    if spec.family == "mlp":
        model = MLP(math.prod(in_shape), num_classes, [width] * depth, bias=bias, **common)
    elif spec.family == "lenet300":
        model = LeNet300100(math.prod(in_shape), num_classes, bias=bias, **common)
    elif spec.family == "lenet5":
        model = LeNet5(in_shape, num_classes, bias=bias, **common)
    elif spec.family == "vcnn":
        model = VCNN(in_shape, num_classes, depth, width, bias=bias, **common)
    elif spec.family == "vgg":
        model = VGG(in_shape, num_classes, opts["convs_per_block"], width, bias=bias, batchnorm=bn, **common)
    elif spec.family == "resnet":
        model = ResNet(
            in_shape,
            num_classes,
            depth,
            width,
            bias=bias,
            batchnorm=bn,
            stable=stable or opts.get("stable", False),
            shortcut=opts["shortcut"],
            **common,
        )
    else:  # wrn
        model = WideResNet(in_shape, num_classes, depth, width, bias=bias, batchnorm=bn, stable=stable, **common)
    model.name = name
    return model
