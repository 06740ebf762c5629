"""Torch twins of :mod:`sigprop.theory.activations` (imports torch; theory never imports this)."""

from __future__ import annotations

import torch
from torch import nn

from sigprop.theory.activations import Activation

__all__ = ["TorchActivation"]


class TorchActivation(nn.Module):
    """``nn.Module`` computing the same function as a sigprop :class:`Activation`.

    Piecewise-linear activations use the same chain of pieces as the NumPy side (value and
    one-sided slope at kinks agree); smooth ones use the matching torch function.
    """

    def __init__(self, act: Activation):
        super().__init__()
        self.act = act
        self.kind = act._torch

    def extra_repr(self) -> str:
        return self.act.label()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.act
        if self.kind == "pl":
            p0 = act.pieces[0]
            out = p0.slope * x + p0.intercept
            for p in act.pieces[1:]:
                out = torch.where(x > p.lo, p.slope * x + p.intercept, out)
            return out
        if self.kind == "tanh":
            return torch.tanh(x)
        if self.kind == "erf":
            return torch.erf(x)
        if self.kind == "sigmoid":
            return torch.sigmoid(x)
        if self.kind == "gelu":
            return nn.functional.gelu(x, approximate="none")
        if self.kind == "silu":
            return nn.functional.silu(x)
        if self.kind == "softplus":
            return torch.logaddexp(x, torch.zeros((), dtype=x.dtype, device=x.device))
        if self.kind == "elu":
            return nn.functional.elu(x, alpha=float(act.params["alpha"]))
        if self.kind == "selu":
            return nn.functional.selu(x)
        raise ValueError(f"no torch twin for activation {act.name!r}")
