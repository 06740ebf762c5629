"""Shared pieces of the model zoo: activation resolution, input validation, the base class."""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch
from torch import nn

from sigprop.theory.activations import Activation, get_activation

__all__ = ["WEIGHT_LAYER_TYPES", "ActivationLike", "Network", "resolve_activation"]

#: An activation given as a registry name (parameters in ``act_params``) or an Activation.
ActivationLike = Activation | str

#: Module types that carry the weights initializers and pruning act on.
WEIGHT_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)


def resolve_activation(activation: ActivationLike, act_params: dict | None = None) -> Activation:
    """An :class:`Activation` from a registry name + parameters, or an Activation as is.

    Raises ValueError for an unknown name or parameter (naming what is allowed) and for a
    batch of parameter values (a model needs one scalar activation).
    """
    if not isinstance(activation, (str, Activation)):
        raise TypeError(
            f"activation must be a registry name (str) or a sigprop Activation, got {type(activation).__name__}"
        )
    act = get_activation(activation, **(act_params or {}))
    if act.is_batched:
        raise ValueError(f"activation {act.name!r}: a model needs scalar parameters, got {act.params}")
    return act


def check_int(value, what: str, minimum: int = 1) -> int:
    """``value`` as an int >= minimum, else ValueError/TypeError saying what is allowed."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{what} must be an integer >= {minimum}, got {value!r}")
    value = operator.index(value)
    if value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value}")
    return value


def check_in_shape(in_shape) -> tuple[int, ...]:
    """The per-example input shape (no batch dimension) as a tuple of positive ints."""
    if isinstance(in_shape, int) and not isinstance(in_shape, bool):
        in_shape = (in_shape,)
    try:
        shape = tuple(in_shape)
    except TypeError:
        raise TypeError(f"in_shape must be a tuple of positive ints (no batch dimension), got {in_shape!r}") from None
    bad = ValueError(f"in_shape must be a non-empty tuple of positive ints (no batch dimension), got {in_shape!r}")
    if not shape or any(isinstance(s, bool) or not hasattr(s, "__index__") for s in shape):
        raise bad
    shape = tuple(operator.index(s) for s in shape)
    if any(s < 1 for s in shape):
        raise bad
    return shape


def check_image_shape(model: str, in_shape, spatial_dims: Sequence[int] = (2,), min_size: int = 1) -> tuple[int, ...]:
    """Validate ``in_shape = (channels, *spatial)`` for a convolutional model."""
    shape = check_in_shape(in_shape)
    ndim = len(shape) - 1
    if ndim not in spatial_dims:
        forms = " or ".join({1: "(channels, length)", 2: "(channels, height, width)"}[d] for d in sorted(spatial_dims))
        hint = " (a single-channel image is (1, H, W))" if 2 in spatial_dims else ""
        raise ValueError(
            f"{model} is convolutional and needs in_shape {forms}{hint}, got {shape}; "
            f"use an MLP ('mlp', 'lenet300') for flat inputs"
        )
    if any(s < min_size for s in shape[1:]):
        raise ValueError(
            f"{model} needs every spatial size >= {min_size} (its pooling would shrink it below 1), got in_shape {shape}"
        )
    return shape


class Network(nn.Module):
    """Base class of sigprop's models: a classifier ``(B, *in_shape) -> (B, num_classes)``.

    Attributes
    ----------
    in_shape : tuple of int
        Shape of one input example (no batch dimension). Inputs of shape ``(B, *in_shape)``
        are accepted, and so are flat inputs ``(B, prod(in_shape))``.
    num_classes : int
        Number of outputs (logits).
    activation : Activation
        The registry activation used by every hidden layer; each layer owns a fresh torch
        twin (``activation.torch_module()``).
    """

    def __init__(
        self, in_shape: tuple[int, ...], num_classes: int, activation: ActivationLike, act_params: dict | None
    ):
        super().__init__()
        self.in_shape = check_in_shape(in_shape)
        self.num_classes = check_int(num_classes, "num_classes")
        self.activation = resolve_activation(activation, act_params)

    def new_act(self) -> nn.Module:
        """A fresh torch module computing :attr:`activation`."""
        return self.activation.torch_module()

    def weight_layers(self) -> list[nn.Module]:
        """All Linear/Conv layers in registration order (= forward order; readout last)."""
        return [m for m in self.modules() if isinstance(m, WEIGHT_LAYER_TYPES)]

    def num_parameters(self) -> int:
        """Total number of parameters (weights, biases and batch-norm affine parameters)."""
        return sum(p.numel() for p in self.parameters())

    def _as_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` reshaped to ``(B, *in_shape)``; accepts that shape or flat ``(B, prod(in_shape))``."""
        if tuple(x.shape[1:]) == self.in_shape:
            return x
        if x.dim() == 2 and x.shape[1] == math.prod(self.in_shape):
            return x.reshape(x.shape[0], *self.in_shape)
        raise ValueError(
            f"{type(self).__name__} expects input of shape (B, {', '.join(map(str, self.in_shape))}) "
            f"or (B, {math.prod(self.in_shape)}), got {tuple(x.shape)}"
        )
