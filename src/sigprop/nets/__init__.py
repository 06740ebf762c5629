"""Torch models for signal-propagation experiments (imports torch).

``build_model(name, in_shape=..., num_classes=...)`` builds any model of the zoo by name
(:data:`MODEL_NAMES`); the classes are exported for direct use. Every model takes any
activation of the registry (``sigprop.theory.activations``).
"""

from ._common import Network, resolve_activation
from .init import INIT_ATTR, INIT_SCHEMES, delta_orthogonal_, fans, initialize, orthogonal_
from .models import MLP, VCNN, VGG, VGG16_BLOCKS, VGG16X3_BLOCKS, LeNet5, LeNet300100
from .registry import MODEL_NAMES, build_model, describe_model
from .resnets import BasicBlock, ResNet, WideBlock, WideResNet

__all__ = [
    "INIT_ATTR",
    "INIT_SCHEMES",
    "MLP",
    "MODEL_NAMES",
    "VCNN",
    "VGG",
    "VGG16X3_BLOCKS",
    "VGG16_BLOCKS",
    "BasicBlock",
    "LeNet5",
    "LeNet300100",
    "Network",
    "ResNet",
    "WideBlock",
    "WideResNet",
    "build_model",
    "delta_orthogonal_",
    "describe_model",
    "fans",
    "initialize",
    "orthogonal_",
    "resolve_activation",
]
