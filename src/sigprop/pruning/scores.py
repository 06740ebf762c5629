"""Pruning scores at initialization (imports torch).

Every score function takes a model (any ``nn.Module`` with Linear/Conv layers) and returns a dict
``{param_name: scores}``, one float tensor of the weight's shape per prunable tensor, keyed by the
qualified parameter name (``"layers.0.weight"``; also for an already-pruned module, whose
parameter is ``weight_orig``). Higher score = more important (kept first by
:func:`sigprop.pruning.masks.make_masks`).

Scoring never changes the model: weights, buffers (batch-norm running statistics included),
``requires_grad`` flags, ``.grad`` and the training mode are all as before the call.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sigprop.nn_activations import TorchActivation

from ._names import LOSSES

__all__ = [
    "LOSSES",
    "WEIGHT_LAYER_TYPES",
    "magnitude_scores",
    "named_prunable",
    "prunable_parameters",
    "random_scores",
    "snip_scores",
    "surrogate_loss",
    "synflow_scores",
]

WEIGHT_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

Params = Sequence[tuple[nn.Module, str]]


def _weight_layers(model: nn.Module) -> list[nn.Module]:
    """Linear/Conv layers of ``model`` in registration order (residual 1x1 shortcuts included)."""
    return [m for m in model.modules() if isinstance(m, WEIGHT_LAYER_TYPES)]


def prunable_parameters(
    model: nn.Module, *, include_bias: bool = False, include_first: bool = True, include_last: bool = True
) -> list[tuple[nn.Module, str]]:
    """The prunable tensors of ``model`` as ``(module, tensor_name)`` pairs.

    Weights of every ``nn.Linear`` / ``nn.Conv{1,2,3}d`` in registration order (for the sigprop
    zoo: forward order, readout last; 1x1 projection shortcuts of residual blocks included).
    ``include_first`` / ``include_last`` keep or drop the first / last such layer;
    ``include_bias`` adds ``(module, "bias")`` right after each kept weight that has a bias.
    """
    layers = _weight_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Linear/Conv layer to prune")
    chosen = list(range(len(layers)))
    if not include_first:
        chosen = [i for i in chosen if i != 0]
    if not include_last:
        chosen = [i for i in chosen if i != len(layers) - 1]
    out: list[tuple[nn.Module, str]] = []
    for i in chosen:
        m = layers[i]
        out.append((m, "weight"))
        if include_bias and _tensor(m, "bias") is not None:
            out.append((m, "bias"))
    return out


def _tensor(module: nn.Module, name: str) -> torch.Tensor | None:
    """The effective tensor ``module.<name>`` (mask applied if the module is pruned)."""
    return getattr(module, name, None)


def _leaf(module: nn.Module, name: str) -> nn.Parameter:
    """The parameter that holds ``name``: ``name_orig`` when pruned, else ``name`` itself."""
    p = getattr(module, name + "_orig", None)
    return p if isinstance(p, nn.Parameter) else getattr(module, name)


def named_prunable(model: nn.Module, params: Params | None = None) -> list[tuple[str, nn.Module, str]]:
    """``(qualified_name, module, tensor_name)`` for ``params`` (default :func:`prunable_parameters`).

    ``qualified_name`` is ``"<module path>.<tensor_name>"`` (``"weight"`` for ``nn.Linear`` at the
    top level), the key used by every score and mask dict.
    """
    if params is None:
        params = prunable_parameters(model)
    names = {id(m): n for n, m in model.named_modules()}
    out = []
    for module, tname in params:
        if id(module) not in names:
            raise ValueError(f"module {type(module).__name__} is not a submodule of the model")
        prefix = names[id(module)]
        out.append((f"{prefix}.{tname}" if prefix else tname, module, tname))
    return out


def decorrelated_seed(seed: int) -> int:
    """A seed for masks that is independent of the generator ``manual_seed(seed)`` itself.

    ``torch.rand`` and ``torch.randn`` drawn from generators with the same seed are strongly
    dependent (corr(u, |z|) ~ 0.33 entrywise), so random scores drawn with the seed that also
    drew the weights (``initialize(seed=0)`` and ``seed=0`` here) would keep the larger weights
    and bias the kept variance upwards (1.76x the dense mean square measured on an EOC ReLU
    MLP). The seed is hashed through ``numpy.random.SeedSequence``.
    """
    return int(np.random.SeedSequence([int(seed), 0x5EED5]).generate_state(1, dtype=np.uint32)[0])


def random_scores(model: nn.Module, seed: int | torch.Generator = 0, params: Params | None = None) -> dict:
    """Uniform(0, 1) scores in layer order, from a ``torch.Generator`` as given or, for an int,
    from :func:`decorrelated_seed` ``(seed)`` (independent of weights drawn with the same int)."""
    gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(decorrelated_seed(seed))
    return {
        name: torch.rand(_tensor(m, t).shape, generator=gen, dtype=torch.float64)
        for name, m, t in named_prunable(model, params)
    }


def magnitude_scores(model: nn.Module, params: Params | None = None) -> dict:
    """``|w|`` of the effective (masked) weights."""
    return {name: _tensor(m, t).detach().abs().clone() for name, m, t in named_prunable(model, params)}


# ----------------------------------------------------------------------------- SNIP


def surrogate_loss(out: torch.Tensor, y: torch.Tensor | None, loss: str) -> torch.Tensor:
    """The loss whose gradient SNIP uses, on logits ``out`` of shape ``(B, K)``.

    - ``"supervised"``: cross-entropy with the labels ``y`` (seed 002 eq. 1, "GT").
    - ``"uniform"``: cross-entropy with the uniform target, ``-mean_b mean_k log softmax(z_b)_k``
      (seed 002 Table 4, "Unif.").
    - ``"pred-softmax"``: cross-entropy with the batch-averaged softmax prediction
      ``p = mean_b softmax(z_b)`` as the (constant, detached) target ("Pred. (softmax)").
    - ``"pred-raw"``: cross-entropy with ``softmax(mean_b z_b)``, the softmax of the
      batch-averaged raw outputs, as the (detached) target ("Pred. (raw)"). Seed 002 only names
      the two "Pred." losses ("the averaged output prediction of the network; softmax/raw");
      this is our reading of them.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    if out.dim() != 2:
        raise ValueError(f"expected logits of shape (B, K), got {tuple(out.shape)}")
    logp = F.log_softmax(out, dim=1)
    if loss == "supervised":
        if y is None:
            raise ValueError("loss='supervised' needs labels; use an unsupervised loss for unlabeled data")
        return F.nll_loss(logp, y)
    if loss == "uniform":
        target = torch.full_like(logp, 1.0 / out.shape[1])
    elif loss == "pred-softmax":
        target = F.softmax(out.detach(), dim=1).mean(0, keepdim=True).expand_as(logp)
    else:  # pred-raw
        target = F.softmax(out.detach().mean(0, keepdim=True), dim=1).expand_as(logp)
    return -(target * logp).sum(1).mean()


def _batches(data) -> Iterable:
    if isinstance(data, torch.Tensor):
        return [(data, None)]
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return [tuple(data)]
    return data


class _Preserve:
    """Restore parameters' ``requires_grad``/``.grad``, all buffers and the training mode."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        m = self.model
        self.modes = [(mod, mod.training) for mod in m.modules()]
        self.flags = [(p, p.requires_grad, p.grad) for p in m.parameters()]
        self.buffers = [(b, b.detach().clone()) for b in m.buffers()]
        return self

    def __exit__(self, *exc):
        with torch.no_grad():
            for b, saved in self.buffers:
                b.copy_(saved)
        for p, flag, grad in self.flags:
            p.requires_grad_(flag)
            p.grad = grad
        for mod, training in self.modes:
            mod.training = training
        return False


def snip_scores(
    model: nn.Module,
    data,
    loss: str = "supervised",
    batches: int | None = None,
    params: Params | None = None,
) -> dict:
    """Connection sensitivity ``|w * dL/dw|`` (seed 002 eq. 1, unnormalized; Lee et al. 2019).

    Parameters
    ----------
    model : nn.Module
        Mapping inputs ``(B, ...)`` to logits ``(B, K)``; used in its current training mode.
    data : iterable of ``(x, y)`` batches, or one ``(x, y)`` pair of tensors, or a tensor ``x``
        ``y`` may be None for the unsupervised losses.
    loss : {"supervised", "uniform", "pred-raw", "pred-softmax"}
        See :func:`surrogate_loss`.
    batches : int or None
        Use only the first ``batches`` batches; None: all of ``data``.

    Returns
    -------
    dict ``{param_name: |w * g|}`` with ``g = sum over batches of dL_batch/dw`` (the gradient of
    the summed per-batch mean losses, i.e. eq. 1 with ``L(D)`` = that sum). The normalization of
    eq. 1 by ``sum_k |g_k w_k|`` does not change any ranking and is left out. For a pruned module
    the score of a masked entry is 0.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    if batches is not None and batches < 1:
        raise ValueError(f"batches must be >= 1 or None, got {batches}")
    named = named_prunable(model, params)
    leaves = [_leaf(m, t) for _, m, t in named]
    grads: list[torch.Tensor | None] = [None] * len(leaves)
    seen = 0
    with _Preserve(model):
        for p in leaves:
            p.requires_grad_(True)
        for i, batch in enumerate(_batches(data)):
            if batches is not None and i >= batches:
                break
            x, y = (batch, None) if isinstance(batch, torch.Tensor) else (batch[0], batch[1])
            value = surrogate_loss(model(x), y, loss)
            gs = torch.autograd.grad(value, leaves, allow_unused=True)
            for j, g in enumerate(gs):  # the first batch's gradient is the accumulator (no copy)
                if g is not None:
                    grads[j] = g if grads[j] is None else grads[j].add_(g)
            seen += 1
    if seen == 0:
        raise ValueError("snip_scores got no batch of data")
    return {
        name: torch.zeros_like(p) if g is None else g.mul_(p.detach()).abs_()
        for (name, _, _), p, g in zip(named, leaves, grads, strict=True)
    }


# ----------------------------------------------------------------------------- SynFlow


def _is_activation(module: nn.Module) -> bool:
    return isinstance(module, TorchActivation) or type(module).__module__ == "torch.nn.modules.activation"


def _linearized_copy(model: nn.Module, shared: dict | None = None) -> nn.Module:
    """Float64 eval-mode deep copy with activations replaced by the identity.

    ``shared`` maps ``id(parameter)`` of the model to a float64 tensor of its shape that the copy
    uses as that parameter's data (no second copy of it is made).
    """
    # a pruned module holds its masked weight as a non-leaf attribute, which deepcopy refuses;
    # copy those as plain detached tensors (the pruning pre-hook recomputes them on forward)
    memo = {}
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, torch.Tensor) and value.grad_fn is not None:
                memo[id(value)] = value.detach().clone()
    if shared:
        for p in model.parameters():
            if id(p) in shared:
                memo[id(p)] = nn.Parameter(shared[id(p)], requires_grad=p.requires_grad)
    net = copy.deepcopy(model, memo).double().eval()
    for parent in list(net.modules()):
        for cname, child in list(parent.named_children()):
            if _is_activation(child):
                setattr(parent, cname, nn.Identity())
    return net


def _synflow_leaves(net: nn.Module, named_copy) -> list[nn.Parameter]:
    """The leaves of the prunable tensors of the copy, the only parameters that require grad."""
    leaves = [_leaf(m, t) for _, m, t in named_copy]
    for p in net.parameters():
        p.requires_grad_(False)
    for p in leaves:
        p.requires_grad_(True)
    return leaves


def _synflow_grads(net: nn.Module, leaves, in_shape: tuple[int, ...]) -> tuple:
    """``dR/dw`` for each leaf (None where unused), ``R`` the summed output on the all-ones input."""
    x = torch.ones((1, *in_shape), dtype=torch.float64, device=leaves[0].device)
    return torch.autograd.grad(net(x).sum(), leaves, allow_unused=True)


def _synflow_pass(net: nn.Module, named_copy, in_shape: tuple[int, ...]) -> dict:
    leaves = _synflow_leaves(net, named_copy)
    gs = _synflow_grads(net, leaves, in_shape)
    return {
        name: (p.detach() * (g if g is not None else torch.zeros_like(p))).abs()
        for (name, _, _), p, g in zip(named_copy, leaves, gs, strict=True)
    }


def _abs_state_(net: nn.Module) -> None:
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.abs_()


def synflow_scores(model: nn.Module, in_shape: Sequence[int], params: Params | None = None) -> dict:
    """One round of SynFlow (Tanaka et al. 2020): ``|w * dR/dw|`` with ``R = 1^T prod_l |W_l| 1``.

    Data-free. Computed on a float64 deep copy of ``model`` in eval mode with every floating
    tensor of its state (weights, biases, batch-norm affine parameters and running statistics)
    replaced by its absolute value, activations replaced by the identity, and an all-ones input of
    shape ``(1, *in_shape)``; ``R`` is the sum of the outputs. For a bias-free linear chain the
    scores of each layer sum to ``R`` (the layerwise conservation law). The model itself is never
    touched. Scores are float64 (no overflow in deep nets).
    """
    in_shape = tuple(int(s) for s in in_shape)
    named = named_prunable(model, params)
    net = _linearized_copy(model)
    _abs_state_(net)
    return _synflow_pass(net, named_prunable(net, _params_in_copy(model, net, named)), in_shape)


def _params_in_copy(model: nn.Module, net: nn.Module, named) -> list[tuple[nn.Module, str]]:
    copy_modules = dict(net.named_modules())
    model_names = {id(m): n for n, m in model.named_modules()}
    return [(copy_modules[model_names[id(m)]], t) for _, m, t in named]
