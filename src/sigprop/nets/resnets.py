"""CIFAR-style residual networks: ResNet-(6n+2) (He et al. 2016), wide ResNets, Stable ResNets.

A residual block computes ``y = shortcut(x) + s * F(x)`` where F is the residual branch
and ``s = 1`` for a standard ResNet or ``s = 1/sqrt(L)`` for a **Stable ResNet** (seed 001,
Prop. 2, eq. 9), L being the number of residual *blocks* (not layers): ResNet32 has 15
blocks and 32 layers, hence L = 15.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._common import ActivationLike, Network, check_image_shape, check_int

__all__ = ["BasicBlock", "ResNet", "WideBlock", "WideResNet"]


def _bn(c: int, batchnorm: bool) -> list[nn.Module]:
    return [nn.BatchNorm2d(c)] if batchnorm else []


class _ZeroPadShortcut(nn.Module):
    """He et al. (2016) option A: subsample by ``stride`` and zero-pad the new channels (no parameters)."""

    def __init__(self, stride: int, extra_channels: int):
        super().__init__()
        self.stride = stride
        self.extra = extra_channels

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))


class BasicBlock(nn.Module):
    """Post-activation basic block (He et al. 2016): ``phi(shortcut(x) + scale * branch(x))``.

    ``branch = conv3x3(stride) -> [BN] -> phi -> conv3x3 -> [BN]``. When the shape changes the
    shortcut is option ``"A"`` (subsample + zero channels, He et al.'s CIFAR nets) or ``"B"``
    (``conv1x1(stride) -> [BN]``, as in GraSP's code used by seed 001); otherwise the identity.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int,
        new_act,
        bias: bool,
        batchnorm: bool,
        shortcut: str = "A",
        scale: float = 1.0,
    ):
        super().__init__()
        self.scale = float(scale)
        self.branch = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias),
            *_bn(cout, batchnorm),
            new_act(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=bias),
            *_bn(cout, batchnorm),
        )
        if stride == 1 and cin == cout:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "A":
            if cout < cin:
                raise ValueError(f"option-A shortcut cannot reduce channels ({cin} -> {cout})")
            self.shortcut = _ZeroPadShortcut(stride, cout - cin)
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=bias), *_bn(cout, batchnorm))
        self.act = new_act()

    def extra_repr(self) -> str:
        return f"scale={self.scale:.6g}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        if self.scale != 1.0:
            out = out * self.scale
        return self.act(self.shortcut(x) + out)


class ResNet(Network):
    """CIFAR ResNet of depth 6n+2 (He et al. 2016, Sec. 4.2): 3 stages of n basic blocks.

    ``conv3x3(C -> w) -> [BN] -> phi``, stages of ``w, 2w, 4w`` filters (stride 2 entering stages
    2 and 3), global average pooling, Linear readout. ``w = base_width``: 16 in He et al. and
    seed 002 (ResNet20/32/56/110, option-A shortcuts: ResNet-20 has 0.27M parameters, He et al.
    Table 6); 32 ("doubled filters", option-B shortcuts) for seed 001's ResNet32/50/104, following
    GraSP (Wang et al. 2020).

    Parameters
    ----------
    in_shape : (C, H, W)
    depth : int
        6n + 2 (20, 32, 44, 56, 110, ... ; 50 and 104 for seed 001).
    stable : bool
        Stable ResNet (seed 001 Prop. 2): every residual branch is scaled by 1/sqrt(L), L = 3n blocks.
    shortcut : {"A", "B"}
        Shortcut where the shape changes: zero-padding identity or 1x1 projection.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        depth: int = 20,
        base_width: int = 16,
        activation: ActivationLike = "relu",
        bias: bool = True,
        batchnorm: bool = True,
        stable: bool = False,
        shortcut: str = "A",
        *,
        act_params: dict | None = None,
    ):
        in_shape = check_image_shape("resnet", in_shape, (2,))
        super().__init__(in_shape, num_classes, activation, act_params)
        depth = check_int(depth, "resnet depth")
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(
                f"resnet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 50, 56, 104, 110, ...), got {depth}"
            )
        base_width = check_int(base_width, "resnet width (filters of the first stage)")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' (zero-padding) or 'B' (1x1 projection), got {shortcut!r}")
        n = (depth - 2) // 6
        self.depth = depth
        self.num_blocks = 3 * n
        self.stable = bool(stable)
        scale = 1.0 / math.sqrt(self.num_blocks) if stable else 1.0
        w = base_width
        self.stem = nn.Sequential(
            nn.Conv2d(in_shape[0], w, 3, padding=1, bias=bias), *_bn(w, batchnorm), self.new_act()
        )
        stages = []
        cin = w
        for i, cout in enumerate((w, 2 * w, 4 * w)):
            blocks = [
                BasicBlock(
                    cin if j == 0 else cout,
                    cout,
                    2 if (i > 0 and j == 0) else 1,
                    self.new_act,
                    bias,
                    batchnorm,
                    shortcut,
                    scale,
                )
                for j in range(n)
            ]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.readout = nn.Linear(cin, self.num_classes, bias=bias)

    def blocks(self) -> list[BasicBlock]:
        """The L = 3n residual blocks in order."""
        return [b for stage in self.stages for b in stage]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self._as_input(x))
        for stage in self.stages:
            x = stage(x)
        return self.readout(x.mean(dim=(2, 3)))


class WideBlock(nn.Module):
    """Pre-activation wide-ResNet block (Zagoruyko & Komodakis 2016; the ``v2`` block of seed 002's code).

    ``o = phi([BN](x))``; ``y = shortcut + scale * branch(o)`` with
    ``branch = conv3x3(stride) -> [BN] -> phi -> conv3x3`` and ``shortcut = conv1x1(stride)(o)``
    when the shape changes, ``x`` otherwise.
    """

    def __init__(self, cin: int, cout: int, stride: int, new_act, bias: bool, batchnorm: bool, scale: float = 1.0):
        super().__init__()
        self.scale = float(scale)
        self.pre = nn.Sequential(*_bn(cin, batchnorm), new_act())
        self.branch = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias),
            *_bn(cout, batchnorm),
            new_act(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=bias),
        )
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=bias) if (stride != 1 or cin != cout) else None

    def extra_repr(self) -> str:
        return f"scale={self.scale:.6g}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.pre(x)
        out = self.branch(o)
        if self.scale != 1.0:
            out = out * self.scale
        return (x if self.shortcut is None else self.shortcut(o)) + out


class WideResNet(Network):
    """Wide ResNet WRN-d-k (Zagoruyko & Komodakis 2016), as built by seed 002's code for "WRN16".

    ``conv3x3(C -> 16)``, 3 stages of n = (d-4)/6 pre-activation blocks with ``16k, 32k, 64k``
    filters (stride 2 entering stages 2 and 3; 1x1 projection shortcuts where the shape changes),
    final ``[BN] -> phi``, global average pooling, Linear readout. No dropout.
    Seed 002 Table 2 trains WRN16 on Tiny-ImageNet; its code uses k = 6 (``wrn-16``).

    Parameters
    ----------
    depth : int
        6n + 4 (10, 16, 22, 28, 40, ...).
    widen_factor : int
        k.
    stable : bool
        Scale each residual branch by 1/sqrt(L), L = 3n blocks (seed 001 Prop. 2).
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        depth: int = 16,
        widen_factor: int = 6,
        activation: ActivationLike = "relu",
        bias: bool = True,
        batchnorm: bool = True,
        stable: bool = False,
        *,
        act_params: dict | None = None,
    ):
        in_shape = check_image_shape("wrn", in_shape, (2,))
        super().__init__(in_shape, num_classes, activation, act_params)
        depth = check_int(depth, "wrn depth")
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"wrn depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}")
        k = check_int(widen_factor, "wrn width (widening factor k)")
        n = (depth - 4) // 6
        self.depth = depth
        self.widen_factor = k
        self.num_blocks = 3 * n
        self.stable = bool(stable)
        scale = 1.0 / math.sqrt(self.num_blocks) if stable else 1.0
        self.stem = nn.Conv2d(in_shape[0], 16, 3, padding=1, bias=bias)
        stages = []
        cin = 16
        for i, cout in enumerate((16 * k, 32 * k, 64 * k)):
            stride = 1 if i == 0 else 2
            blocks = [
                WideBlock(cin if j == 0 else cout, cout, stride if j == 0 else 1, self.new_act, bias, batchnorm, scale)
                for j in range(n)
            ]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.final = nn.Sequential(*_bn(cin, batchnorm), self.new_act())
        self.readout = nn.Linear(cin, self.num_classes, bias=bias)

    def blocks(self) -> list[WideBlock]:
        """The L = 3n residual blocks in order."""
        return [b for stage in self.stages for b in stage]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self._as_input(x))
        for stage in self.stages:
            x = stage(x)
        x = self.final(x)
        return self.readout(x.mean(dim=(2, 3)))
