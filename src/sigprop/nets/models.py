"""Feed-forward models: MLP, LeNet-300-100, LeNet-5 (Caffe), vanilla CNN, VGG16 / 3xVGG16.

Every model is a :class:`~sigprop.nets._common.Network`: it maps ``(B, *in_shape)`` (or the
flat ``(B, prod(in_shape))``) to logits ``(B, num_classes)``, takes any activation of the
registry (``sigprop.theory.activations``) and gives each hidden layer its own torch twin.
``model.weight_layers()`` lists the Linear/Conv layers in forward order (readout last), the
order initializers, pruning and ``NetSpec.from_module`` iterate.

Residual networks live in :mod:`sigprop.nets.resnets`; :func:`sigprop.nets.build_model`
builds any of them by name.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn

from ._common import ActivationLike, Network, check_image_shape, check_int

__all__ = ["MLP", "VCNN", "VGG", "VGG16X3_BLOCKS", "VGG16_BLOCKS", "LeNet5", "LeNet300100"]


class MLP(Network):
    """Fully connected network (FFNN of seed 001 eq. 2): ``Linear -> phi`` per hidden layer, then a Linear readout.

    Parameters
    ----------
    in_features : int
        Input dimension; inputs of any shape ``(B, ...)`` are flattened to ``(B, in_features)``.
    num_classes : int
        Output dimension.
    widths : sequence of int
        Hidden widths N_1..N_L, any profile (may be empty: a linear classifier).
    activation : str or Activation
        Registry name (parameters in ``act_params``) or an Activation; used after every hidden layer.
    bias : bool
        Biases on every layer (readout included).

    Attributes
    ----------
    layers : nn.ModuleList of nn.Linear
        The ``len(widths) + 1`` linear layers in order; ``layers[-1]`` is the readout.
    acts : nn.ModuleList
        One activation module per hidden layer.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        widths: Sequence[int],
        activation: ActivationLike = "relu",
        bias: bool = True,
        *,
        act_params: dict | None = None,
    ):
        in_features = check_int(in_features, "in_features")
        super().__init__((in_features,), num_classes, activation, act_params)
        if isinstance(widths, (int, str)) or not isinstance(widths, Sequence):
            raise TypeError(f"widths must be a list of positive ints (one per hidden layer), got {widths!r}")
        widths = [check_int(w, f"widths[{i}]") for i, w in enumerate(widths)]
        dims = [in_features, *widths, self.num_classes]
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in itertools.pairwise(dims))
        self.acts = nn.ModuleList(self.new_act() for _ in widths)

    @property
    def widths(self) -> list[int]:
        """Hidden widths."""
        return [layer.out_features for layer in self.layers[:-1]]

    @property
    def readout(self) -> nn.Linear:
        return self.layers[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or math.prod(x.shape[1:]) != self.in_shape[0]:
            raise ValueError(
                f"{type(self).__name__} expects input (B, ...) with {self.in_shape[0]} features per example, "
                f"got {tuple(x.shape)}"
            )
        x = x.reshape(x.shape[0], -1)
        for layer, act in zip(self.layers, self.acts, strict=False):  # (not layers[:-1]: a slice
            x = act(layer(x))  # of a ModuleList builds a new ModuleList at every call)
        return self.layers[-1](x)


class LeNet300100(MLP):
    """LeNet-300-100 (LeCun et al. 1998): ``in -> 300 -> 100 -> num_classes``, fully connected.

    The "LeNet" of seed 002 Table 5 (its authors' code builds ``lenet`` as 784-300-100-10).
    On MNIST it has 784*300+300 + 300*100+100 + 100*10+10 = 266,610 parameters.
    """

    def __init__(
        self,
        in_features: int = 784,
        num_classes: int = 10,
        activation: ActivationLike = "relu",
        bias: bool = True,
        *,
        act_params: dict | None = None,
    ):
        super().__init__(in_features, num_classes, [300, 100], activation, bias, act_params=act_params)


class LeNet5(Network):
    """LeNet-5, Caffe variant (as in SNIP, Lee et al. 2019, Table 1 "LeNet-5-Caffe", 431K params).

    ``conv5x5(C->20) -> phi -> maxpool2 -> conv5x5(20->50) -> phi -> maxpool2 -> fc(->500) -> phi -> fc(->classes)``
    (no padding). Caffe's prototxt has no non-linearity after the convolutions; here every
    hidden layer gets the activation, as signal-propagation analyses assume. Parameter count
    is unaffected: on MNIST 520 + 25,050 + 400,500 + 5,010 = 431,080.

    Parameters
    ----------
    in_shape : (C, H, W)
        H, W >= 16 so that both 5x5 convolutions and poolings leave at least 1 pixel.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int = 10,
        activation: ActivationLike = "relu",
        bias: bool = True,
        *,
        act_params: dict | None = None,
    ):
        in_shape = check_image_shape("lenet5", in_shape, (2,), min_size=16)
        super().__init__(in_shape, num_classes, activation, act_params)
        c, h, w = in_shape
        h, w = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
        self.conv1 = nn.Conv2d(c, 20, 5, bias=bias)
        self.act1 = self.new_act()
        self.conv2 = nn.Conv2d(20, 50, 5, bias=bias)
        self.act2 = self.new_act()
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(50 * h * w, 500, bias=bias)
        self.act3 = self.new_act()
        self.fc2 = nn.Linear(500, self.num_classes, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._as_input(x)
        x = self.pool(self.act1(self.conv1(x)))
        x = self.pool(self.act2(self.conv2(x)))
        x = self.act3(self.fc1(x.flatten(1)))
        return self.fc2(x)


def _conv(ndim: int, cin: int, cout: int, k: int, bias: bool, **kw) -> nn.Module:
    return (nn.Conv1d if ndim == 1 else nn.Conv2d)(cin, cout, k, bias=bias, **kw)


class VCNN(Network):
    """Vanilla CNN (seed 001 eq. 3, Sec. 4.3 / Table 4 "V-CNN"): convolutions without pooling, circular padding.

    ``depth`` convolutions ``k x k`` (stride 1, circular padding ``k // 2`` so every layer keeps the
    spatial size: the periodic boundary conditions of seed 001 eq. 3), each followed by the
    activation; then global average pooling over positions and a Linear readout.
    1-D signals (``in_shape = (C, L)``, the seed's 1D CNN) use Conv1d, images ``(C, H, W)`` Conv2d.

    Seed 001 trains V-CNNs of depth L in {10, 50, 100} on MNIST (Table 4) but does not state the
    number of channels; ``width`` sets it (default 64).
    """

    def __init__(
        self,
        in_shape: tuple[int, ...],
        num_classes: int,
        depth: int = 10,
        width: int = 64,
        activation: ActivationLike = "relu",
        bias: bool = True,
        kernel_size: int = 3,
        *,
        act_params: dict | None = None,
    ):
        in_shape = check_image_shape("vcnn", in_shape, (1, 2))
        super().__init__(in_shape, num_classes, activation, act_params)
        depth = check_int(depth, "vcnn depth (number of conv layers)")
        width = check_int(width, "vcnn width (channels per conv layer)")
        kernel_size = check_int(kernel_size, "kernel_size")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (a centred filter [-k, k]), got {kernel_size}")
        ndim = len(in_shape) - 1
        chans = [in_shape[0]] + [width] * depth
        self.convs = nn.ModuleList(
            _conv(ndim, a, b, kernel_size, bias, padding=kernel_size // 2, padding_mode="circular")
            for a, b in itertools.pairwise(chans)
        )
        self.acts = nn.ModuleList(self.new_act() for _ in range(depth))
        self.readout = nn.Linear(width, self.num_classes, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._as_input(x)
        for conv, act in zip(self.convs, self.acts, strict=True):
            x = act(conv(x))
        x = x.mean(dim=tuple(range(2, x.dim())))
        return self.readout(x)


#: Convolutions per block of VGG16 (Simonyan & Zisserman 2015, configuration D).
VGG16_BLOCKS = (2, 2, 3, 3, 3)
#: 3xVGG16 of seed 001 Sec. 4.3: same pooling layers, 3 times the convolutions in each block.
VGG16X3_BLOCKS = (6, 6, 9, 9, 9)


class VGG(Network):
    """CIFAR-style VGG as used by GraSP (Wang et al. 2020) and Frankle et al. (2020), cited by seed 001 Table 5.

    Five blocks of ``conv3x3 -> [BatchNorm] -> phi`` with ``base_width * (1, 2, 4, 8, 8)`` channels
    (64-128-256-512-512 by default), 2x2 max pooling after each of the first four blocks, global
    average pooling after the fifth, and a single Linear readout ``8*base_width -> num_classes``.
    ``convs_per_block=(2, 2, 3, 3, 3)`` is VGG16 (13 conv layers); ``(6, 6, 9, 9, 9)`` is seed 001's
    3xVGG16 (39 conv layers). With 32x32 inputs the last block sees 2x2 maps, as in GraSP's
    ``AvgPool2d(2)``.

    Parameters
    ----------
    in_shape : (C, H, W)
        H, W >= 16 (four 2x2 poolings).
    batchnorm : bool
        BatchNorm2d after every convolution (GraSP/Frankle et al. train VGG16 with it).
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        convs_per_block: Sequence[int] = VGG16_BLOCKS,
        base_width: int = 64,
        activation: ActivationLike = "relu",
        bias: bool = True,
        batchnorm: bool = True,
        *,
        act_params: dict | None = None,
    ):
        in_shape = check_image_shape("vgg", in_shape, (2,), min_size=16)
        super().__init__(in_shape, num_classes, activation, act_params)
        base_width = check_int(base_width, "vgg width (channels of the first block)")
        convs_per_block = [check_int(n, "convs_per_block entries") for n in convs_per_block]
        if len(convs_per_block) != 5:
            raise ValueError(f"VGG has 5 blocks; convs_per_block needs 5 entries, got {convs_per_block}")
        layers: list[nn.Module] = []
        cin = in_shape[0]
        for b, (n, mult) in enumerate(zip(convs_per_block, (1, 2, 4, 8, 8), strict=True)):
            cout = base_width * mult
            for _ in range(n):
                layers.append(nn.Conv2d(cin, cout, 3, padding=1, bias=bias))
                if batchnorm:
                    layers.append(nn.BatchNorm2d(cout))
                layers.append(self.new_act())
                cin = cout
            if b < 4:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, self.num_classes, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self._as_input(x))
        return self.classifier(x.mean(dim=(2, 3)))
