"""A plain, resumable training loop for classification (imports torch).

:func:`train` runs SGD (momentum, weight decay) or Adam with a step / step-every-k / cosine
learning-rate schedule for a number of epochs or iterations, evaluates every ``eval_every``
steps, and writes to ``out_dir``:

* ``metrics.jsonl`` — one JSON object per evaluation:
  ``{"step", "epoch", "train_loss", "val_accuracy", "test_accuracy", "lr"}``;
* ``model.pt`` — the final ``state_dict`` (``torch.load`` gives it back);
* ``result.json`` — ``{"test_accuracy", "best_val_accuracy", "best_test_accuracy", "steps",
  "epochs", "diverged", "diverged_step", "seconds", "config"}`` (accuracies are fractions in
  [0, 1]);
* ``checkpoint.pt`` while it runs — everything needed to continue (model, optimizer, RNG states,
  step, best metrics, metrics so far), written atomically every ``checkpoint_every`` steps and
  removed when the run has finished.

Guarantees
----------
* **Deterministic.** The data order of epoch ``e`` is a permutation drawn from a generator seeded
  with ``(seed, e)`` alone, and the global torch RNG (dropout, …) is seeded with ``seed`` inside a
  :func:`torch.random.fork_rng` block, so the caller's RNG state is left as it was. On CPU two runs
  with the same seed give bit-identical weights.
* **Resumable.** ``train(..., resume=True)`` continues from ``checkpoint.pt`` — even after the
  process was killed with SIGKILL — to exactly the weights an uninterrupted run reaches: it
  restores the model, the optimizer state, the RNG states and the running metrics, rebuilds the
  interrupted epoch's permutation from ``(seed, epoch)`` and skips the batches already done. The
  schedule is a pure function of the step, so it needs no state of its own.
* **Masks stay applied.** Modules pruned with :mod:`torch.nn.utils.prune` (``weight_orig``
  parameter, ``weight_mask`` buffer, ``weight`` recomputed by a forward pre-hook) keep their pruned
  weights exactly zero. During training the loop uses :class:`DirectMasks`: the masked entries of
  ``weight_orig`` are zeroed once, the module computes with ``weight_orig`` itself (no mask product
  in the forward and backward passes) and the gradient is masked after ``backward``; with a zero
  weight and a zero gradient, SGD (momentum, weight decay) and Adam leave the entry exactly zero.
  Since these optimizers act element-wise, the unmasked weights follow the same trajectory as with
  the pre-hook, at the cost of one in-place multiply per masked tensor per step. The hooks are
  back in place when :func:`train` returns (``state_dict`` keys are unchanged throughout).
* **Divergence is a result, not a crash.** A NaN/inf training loss stops the run before any update
  is made from it; ``result.json`` records ``diverged=True`` and ``diverged_step`` (the 1-based
  index of the step whose loss was not finite; ``steps`` counts the updates actually applied).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import numbers
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "DirectMasks",
    "TrainConfig",
    "evaluate",
    "lr_factor",
    "resolve_device",
    "train",
    "train_step",
]

#: Optimizers :func:`train` knows.
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")
#: Learning-rate schedules :func:`train` knows.
SCHEDULES: tuple[str, ...] = ("step", "step-every", "cosine", "none")
#: Number of epochs when neither ``epochs`` nor ``iterations`` is given.
DEFAULT_EPOCHS = 10
#: Learning rate when ``lr`` is not given, by optimizer.
DEFAULT_LR: dict[str, float] = {"sgd": 0.05, "adam": 1e-3}

METRICS_FILE = "metrics.jsonl"
MODEL_FILE = "model.pt"
RESULT_FILE = "result.json"
CHECKPOINT_FILE = "checkpoint.pt"
_CHECKPOINT_FORMAT = 1
#: Config fields that may differ between a run and its resumption (they do not change the weights).
_RESUME_FREE = frozenset({"device", "eval_batch_size", "checkpoint_every"})
#: A training set up to this size (bytes) is copied to the GPU once instead of batch by batch.
_GPU_RESIDENT_BYTES = 2 << 30


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Hyperparameters of :func:`train`; each field documents itself (``help`` in its metadata).

    Exactly one of ``epochs`` and ``iterations`` sets the length of training; with neither,
    ``epochs = DEFAULT_EPOCHS``. Bad values raise ``ValueError`` / ``TypeError`` on construction.
    """

    optimizer: str = field(default="sgd", metadata={"help": "'sgd' (momentum, weight decay) or 'adam'"})
    lr: float | None = field(
        default=None, metadata={"help": "base learning rate; None means 0.05 for sgd, 1e-3 for adam"}
    )
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum (ignored by adam)"})
    weight_decay: float = field(default=5e-4, metadata={"help": "L2 weight decay, added to the gradient"})
    epochs: int | None = field(default=None, metadata={"help": "train for this many passes over the data"})
    iterations: int | None = field(default=None, metadata={"help": "train for this many steps (instead of epochs)"})
    batch_size: int = field(default=128, metadata={"help": "training batch size"})
    schedule: str = field(
        default="step",
        metadata={
            "help": "'step': lr x gamma at each milestone fraction of training; 'step-every': lr x gamma "
            "every step_every steps; 'cosine': cosine decay to 0; 'none': constant"
        },
    )
    milestones: tuple[float, ...] = field(
        default=(0.5, 0.75), metadata={"help": "fractions of training where 'step' multiplies lr by gamma"}
    )
    step_every: int | None = field(default=None, metadata={"help": "period in steps of 'step-every'"})
    gamma: float = field(default=0.1, metadata={"help": "factor of 'step' and 'step-every'"})
    eval_every: int | None = field(
        default=None, metadata={"help": "evaluate every this many steps (and at the end); None: once per epoch"}
    )
    eval_batch_size: int = field(default=1024, metadata={"help": "batch size of evaluation"})
    checkpoint_every: int | None = field(
        default=None, metadata={"help": "write checkpoint.pt every this many steps; None: once per epoch; 0: never"}
    )
    seed: int = field(default=0, metadata={"help": "seeds the data order and the torch RNG (dropout)"})
    device: str = field(default="auto", metadata={"help": "'auto' (cuda if available), 'cpu', 'cuda' or 'cuda:N'"})

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.lr is not None:
            _check_real(self.lr, "lr", positive=True)
        _check_real(self.momentum, "momentum")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        _check_real(self.weight_decay, "weight_decay")
        _check_real(self.gamma, "gamma", positive=True)
        if self.epochs is not None and self.iterations is not None:
            raise ValueError(
                f"give epochs or iterations, not both (got epochs={self.epochs}, iterations={self.iterations})"
            )
        for name in ("epochs", "iterations", "step_every", "eval_every"):
            if getattr(self, name) is not None:
                _check_int(getattr(self, name), name, minimum=1)
        _check_int(self.batch_size, "batch_size", minimum=1)
        _check_int(self.eval_batch_size, "eval_batch_size", minimum=1)
        if self.checkpoint_every is not None:
            _check_int(self.checkpoint_every, "checkpoint_every", minimum=0)
        _check_int(self.seed, "seed", minimum=0)
        self.milestones = tuple(float(_check_real(m, "milestones entry")) for m in self.milestones)
        if any(not 0.0 < m < 1.0 for m in self.milestones) or list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"milestones must be increasing fractions in (0, 1), got {self.milestones}")
        if self.schedule == "step-every" and self.step_every is None:
            raise ValueError("schedule 'step-every' needs step_every (the period in steps)")
        if not isinstance(self.device, str):
            raise TypeError(f"device must be a str ('auto', 'cpu', 'cuda', 'cuda:N'), got {self.device!r}")

    @property
    def base_lr(self) -> float:
        """The learning rate actually used: ``lr``, or the optimizer's default."""
        return float(self.lr) if self.lr is not None else DEFAULT_LR[self.optimizer]

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (``milestones`` as a list, ``lr`` resolved)."""
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        d["lr"] = self.base_lr
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; known: {sorted(names)}")
        d = dict(d)
        if "milestones" in d:
            d["milestones"] = tuple(d["milestones"])
        return cls(**d)


def _load(path: Path, device):
    """torch.load with a ValueError naming the file when it is unreadable (e.g. truncated)."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # UnpicklingError, EOFError, RuntimeError from a corrupt zip
        raise ValueError(
            f"{path} is not a readable checkpoint ({type(exc).__name__}: {exc}); remove it or use another --out"
        ) from exc


def _check_real(value, name: str, positive: bool = False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'}, got {value}")
    return value


def _check_int(value, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def lr_factor(config: TrainConfig, step: int, total_steps: int) -> float:
    """Multiplier of the base learning rate for the update with 0-based index ``step``.

    ``"step"``: ``gamma ** (number of milestones m with step >= floor(m * total_steps))`` (x0.1 at
    1/2 and 3/4 of training by default); ``"step-every"``: ``gamma ** (step // step_every)``;
    ``"cosine"``: ``(1 + cos(pi * step / total_steps)) / 2``; ``"none"``: 1.
    """
    s = config.schedule
    if s == "none":
        return 1.0
    if s == "step":
        passed = sum(step >= math.floor(m * total_steps) for m in config.milestones)
        return config.gamma**passed
    if s == "step-every":
        return config.gamma ** (step // config.step_every)
    return 0.5 * (1.0 + math.cos(math.pi * step / total_steps))


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> ``cuda`` when available, else ``cpu``; other names are checked."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"invalid device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use device='cpu' or 'auto'")
    return dev


# --------------------------------------------------------------------------------------------
# masks
# --------------------------------------------------------------------------------------------
class DirectMasks:
    """Context manager: train pruned modules without the :mod:`torch.nn.utils.prune` pre-hook.

    On entry, for every pruned tensor ``name`` of every module (a forward pre-hook that is a
    ``prune.BasePruningMethod``): zero the masked entries of ``name_orig`` in place, take the hook
    out and make ``module.name`` the parameter ``name_orig`` itself, so forward and backward run
    exactly as on a dense module. Call :meth:`mask_grads` after each ``backward()``: it zeroes the
    gradient of the masked entries (one fused multiply over all masked tensors). A masked entry
    then has weight 0 and gradient 0, which SGD (momentum, weight decay, Nesterov) and Adam map to
    0 again, so it stays exactly zero. On exit the hooks are put back and ``module.name`` is
    recomputed as ``name_orig * name_mask``. ``state_dict`` keys (``name_orig``, ``name_mask``) are
    the same inside and outside the block.

    The only observable difference from training with the hooks is in ``name_orig`` at masked
    entries (0 here, the decaying original values there); ``name_orig * name_mask``, the weight
    the network computes with, is the same.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self._entries: list[tuple[nn.Module, str, nn.Parameter, torch.Tensor]] = []
        self._saved_hooks: list[tuple[nn.Module, OrderedDict]] = []
        self.active = False

    @staticmethod
    def pruned(model: nn.Module) -> list[tuple[nn.Module, str, prune.BasePruningMethod]]:
        """``(module, tensor_name, hook)`` for every pruning pre-hook in ``model``."""
        out = []
        for module in model.modules():
            for hook in module._forward_pre_hooks.values():
                if isinstance(hook, prune.BasePruningMethod):
                    out.append((module, hook._tensor_name, hook))
        return out

    def __enter__(self) -> DirectMasks:
        found = self.pruned(self.model)
        modules = {id(m): m for m, _, _ in found}
        for module in modules.values():
            saved = module._forward_pre_hooks
            self._saved_hooks.append((module, saved))
            module._forward_pre_hooks = OrderedDict(
                (k, h) for k, h in saved.items() if not isinstance(h, prune.BasePruningMethod)
            )
        with torch.no_grad():
            for module, name, _ in found:
                orig = getattr(module, name + "_orig")
                mask = getattr(module, name + "_mask")
                orig.mul_(mask.to(orig.dtype))
                object.__setattr__(module, name, orig)  # a plain attribute aliasing the parameter
                self._entries.append((module, name, orig, mask))
        self.active = True
        return self

    def mask_grads(self) -> None:
        """Zero the gradients of the masked entries (call between ``backward`` and ``step``)."""
        grads, masks = [], []
        for _, _, orig, mask in self._entries:
            if orig.grad is not None:
                grads.append(orig.grad)
                masks.append(mask if mask.dtype == orig.dtype else mask.to(orig.dtype))
        if grads:
            torch._foreach_mul_(grads, masks)

    def mask_weights(self) -> None:
        """Zero the masked entries of the weights again (a no-op up to round-off-free arithmetic)."""
        with torch.no_grad():
            for _, _, orig, mask in self._entries:
                orig.mul_(mask.to(orig.dtype))

    def __exit__(self, *exc) -> None:
        for module, saved in self._saved_hooks:
            module._forward_pre_hooks = saved
        for module, name, _, _ in self._entries:
            module.__dict__.pop(name, None)
        for module, _, hook in self.pruned(self.model):
            hook(module, None)  # recompute module.name = name_orig * name_mask
        self._entries.clear()
        self._saved_hooks.clear()
        self.active = False


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
def _epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed for the data order of ``epoch``, a function of ``(seed, epoch)`` only."""
    return int(np.random.SeedSequence((int(seed), int(epoch), 0x5167_7072)).generate_state(1, np.uint64)[0] >> 1)


class _TensorBatches:
    """Shuffled mini-batches of a TensorDataset; epoch ``e`` uses a permutation seeded by (seed, e)."""

    def __init__(self, ds: TensorDataset, batch_size: int, seed: int, device: torch.device):
        tensors = ds.tensors
        n = len(tensors[0])
        if n == 0:
            raise ValueError("the training set is empty")
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        if device.type == "cuda" and nbytes <= _GPU_RESIDENT_BYTES:
            tensors = tuple(t.to(device) for t in tensors)
        self.tensors, self.n, self.batch_size, self.seed, self.device = tensors, n, batch_size, seed, device
        self.num_batches = -(-n // batch_size)
        if n % batch_size == 1 and n > 1:
            self.num_batches -= 1  # a final batch of one example is dropped (BatchNorm cannot train on it)

    def __len__(self) -> int:
        return self.num_batches

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, ...]]:
        g = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
        perm = torch.randperm(self.n, generator=g)
        if self.tensors[0].device != perm.device:
            perm = perm.to(self.tensors[0].device)
        for b in range(start, self.num_batches):
            idx = perm[b * self.batch_size : (b + 1) * self.batch_size]
            yield tuple(t[idx] for t in self.tensors)


class _LoaderBatches:
    """Batches of a DataLoader-like iterable; its shuffling generators are reseeded by (seed, epoch).

    A ``DataLoader`` (or ``RandomSampler``) without a generator is given one, so that neither its
    shuffling nor its base seed draws from the global torch RNG.
    """

    def __init__(self, loader, seed: int):
        self.loader, self.seed = loader, seed
        self.num_batches = len(loader)
        if self.num_batches == 0:
            raise ValueError("the training loader yields no batches")
        if isinstance(loader, DataLoader) and loader.generator is None:
            loader.generator = torch.Generator()
        for obj in self._chain():
            if isinstance(obj, RandomSampler) and obj.generator is None:
                obj.generator = torch.Generator()

    def _chain(self) -> Iterator[Any]:
        """The loader, its samplers and batch samplers, and the samplers they wrap."""
        for obj in (self.loader, getattr(self.loader, "sampler", None), getattr(self.loader, "batch_sampler", None)):
            while obj is not None:
                yield obj
                obj = getattr(obj, "sampler", None)

    def __len__(self) -> int:
        return self.num_batches

    def _generators(self) -> list[torch.Generator]:
        gens: list[torch.Generator] = []
        for obj in self._chain():
            g = getattr(obj, "generator", None)
            if isinstance(g, torch.Generator) and all(g is not h for h in gens):
                gens.append(g)
        return gens

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Any]:
        for g in self._generators():
            g.manual_seed(_epoch_seed(self.seed, epoch))
        it = iter(self.loader)
        for _ in range(start):
            next(it)
        yield from it


def _loader_batch_size(loader) -> int | None:
    bs = getattr(loader, "batch_size", None)
    if bs is None:
        bs = getattr(getattr(loader, "sampler", None), "batch_size", None)
    if bs is None:
        bs = getattr(getattr(loader, "batch_sampler", None), "batch_size", None)
    return bs


def _split_sources(splits_or_loaders) -> tuple[Any, Any, Any]:
    if all(hasattr(splits_or_loaders, a) for a in ("train", "val", "test")):
        return splits_or_loaders.train, splits_or_loaders.val, splits_or_loaders.test
    if isinstance(splits_or_loaders, (tuple, list)) and len(splits_or_loaders) == 3:
        return tuple(splits_or_loaders)
    raise TypeError(
        "splits_or_loaders must be a DatasetSplits (attributes train, val, test) or a tuple "
        f"(train, val, test) of TensorDatasets or DataLoaders, got {type(splits_or_loaders).__name__}"
    )


@torch.no_grad()
def evaluate(model: nn.Module, data, device: str | torch.device = "cpu", batch_size: int = 1024) -> float | None:
    """Top-1 accuracy (a fraction in [0, 1]) of ``model`` on ``data``.

    ``data`` is a TensorDataset ``(inputs, labels)`` or an iterable of ``(inputs, labels)``
    batches; ``None`` or an empty set gives ``None``. The model is put in eval mode and back
    into the mode it was in.
    """
    if data is None:
        return None
    device = torch.device(device)
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        if isinstance(data, TensorDataset):
            x_all, y_all = data.tensors[0], data.tensors[1]
            batches: Iterable = (
                (x_all[i : i + batch_size], y_all[i : i + batch_size]) for i in range(0, len(x_all), batch_size)
            )
        else:
            batches = data
        for x, y, *_ in batches:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            correct += (model(x).argmax(dim=1) == y).sum()
            total += len(y)
    finally:
        model.train(was_training)
    return None if total == 0 else int(correct) / total


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------
def _atomic_write(path: Path, write) -> None:
    """Write ``path`` via a temporary file in the same folder and ``os.replace``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _write_json(path: Path, obj) -> None:
    _atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def _write_metrics(path: Path, rows: list[dict]) -> None:
    _atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows).encode()))


def _finite_or_none(x: float | None) -> float | None:
    return x if x is None or math.isfinite(x) else None


def _config_diff(saved: dict, current: dict) -> list[str]:
    # keys a caller added to the saved config (e.g. the CLI's model/data settings) are the
    # caller's to check; the training loop compares its own
    keys = set(current) - _RESUME_FREE
    return [
        f"{k}: {saved.get(k)!r} (saved) vs {current.get(k)!r} (now)"
        for k in sorted(keys)
        if saved.get(k) != current.get(k)
    ]


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------
def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.base_lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.base_lr, weight_decay=config.weight_decay)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn,
    x: torch.Tensor,
    y: torch.Tensor,
    masks: DirectMasks | None = None,
) -> float:
    """One update on the batch ``(x, y)``; returns the loss before the update.

    A non-finite loss is returned without any update (no backward, no optimizer step). With
    ``masks`` (an active :class:`DirectMasks`), the gradients of pruned entries are zeroed
    before the step. This is the step :func:`train` runs, and the one the benchmark times.
    """
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    value = loss.item()
    if not math.isfinite(value):
        return value
    loss.backward()
    if masks is not None:
        masks.mask_grads()
    optimizer.step()
    return value


def train(
    model: nn.Module,
    splits_or_loaders,
    config: TrainConfig | None,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``model`` for classification with cross-entropy; write metrics, model and result.

    Parameters
    ----------
    model : nn.Module
        Maps a batch of inputs ``(B, *in_shape)`` to logits ``(B, num_classes)``. It is moved to
        the config's device and trained in place; pruning masks (``torch.nn.utils.prune``) stay
        applied (see the module docstring).
    splits_or_loaders : DatasetSplits or (train, val, test)
        A :class:`sigprop.data.DatasetSplits`, or a triple of ``TensorDataset`` s or DataLoaders
        yielding ``(inputs, labels)``. TensorDatasets are batched here with
        ``config.batch_size``; a loader must already use that batch size (a DataLoader without a
        ``generator`` is given one, see below). ``val`` / ``test`` may
        be ``None`` or empty, their accuracies are then ``None``. For bit-exact resumption, pass
        TensorDatasets (or loaders whose shuffling draws from ``loader.generator`` /
        ``sampler.generator``, which are reseeded each epoch).
    config : TrainConfig or None
        Hyperparameters; ``None`` means ``TrainConfig()``.
    out_dir : path
        Folder for ``metrics.jsonl``, ``model.pt``, ``result.json`` and ``checkpoint.pt``
        (created if missing). Without ``resume`` its previous outputs are replaced.
    resume : bool
        Continue from ``out_dir/checkpoint.pt`` when there is one (the config must match, apart
        from device, eval_batch_size and checkpoint_every); if the run had already finished
        (``result.json`` present), load ``model.pt`` into ``model`` and return the stored result;
        with neither, start from scratch.
    progress : bool
        Show a tqdm progress bar (on stderr, only when it is a terminal).

    Returns
    -------
    dict
        The content of ``result.json``: ``test_accuracy`` (final model), ``best_val_accuracy``,
        ``best_test_accuracy`` (test accuracy at the evaluation with the best validation
        accuracy; both ``None`` without a validation set), ``steps`` (updates applied), ``epochs`` (``steps / batches per epoch``),
        ``diverged``, ``diverged_step``, ``seconds`` (training time, summed over resumptions),
        ``config`` (:meth:`TrainConfig.to_dict`).
    """
    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    device = resolve_device(config.device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / v for k, v in (("metrics", METRICS_FILE), ("model", MODEL_FILE), ("result", RESULT_FILE))}
    paths["checkpoint"] = out / CHECKPOINT_FILE
    cfg = config.to_dict()

    if resume and paths["result"].exists() and not paths["checkpoint"].exists():
        result = json.loads(paths["result"].read_text())
        diff = _config_diff(result.get("config", {}), cfg)
        if diff:
            raise ValueError(
                f"{out} holds a finished run with a different config ({'; '.join(diff)}); use resume=False"
            )
        model.to(device)
        model.load_state_dict(_load(paths["model"], device))
        return result

    train_src, val_src, test_src = _split_sources(splits_or_loaders)
    model.to(device)
    if isinstance(train_src, TensorDataset):
        batches: _TensorBatches | _LoaderBatches = _TensorBatches(train_src, config.batch_size, config.seed, device)
    else:
        bs = _loader_batch_size(train_src)
        if bs is not None and bs != config.batch_size:
            raise ValueError(
                f"the training loader has batch size {bs} but config.batch_size is {config.batch_size}; "
                "make them agree, or pass the TensorDatasets / DatasetSplits"
            )
        batches = _LoaderBatches(train_src, config.seed)
    per_epoch = len(batches)
    total = config.iterations if config.iterations is not None else per_epoch * (config.epochs or DEFAULT_EPOCHS)
    eval_every = config.eval_every or per_epoch
    ckpt_every = per_epoch if config.checkpoint_every is None else config.checkpoint_every

    optimizer = _make_optimizer(model, config)
    loss_fn = nn.CrossEntropyLoss()
    cuda_devices = [device.index or 0] if device.type == "cuda" else []

    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(config.seed)
        state = {
            "step": 0,
            "best_val": None,
            "best_test": None,
            "metrics": [],
            "loss_sum": 0.0,
            "loss_n": 0,
            "seconds": 0.0,
        }
        if resume and paths["checkpoint"].exists():
            ckpt = _load(paths["checkpoint"], "cpu")
            if ckpt.get("format") != _CHECKPOINT_FORMAT:
                raise ValueError(f"{paths['checkpoint']} has an unknown format; use resume=False")
            diff = _config_diff(ckpt["config"], cfg)
            if diff:
                raise ValueError(
                    f"{paths['checkpoint']} was written with a different config ({'; '.join(diff)}); "
                    "use the same config or resume=False"
                )
            saved = (ckpt["data"]["batches_per_epoch"], ckpt["data"]["total_steps"])
            if saved != (per_epoch, total):
                raise ValueError(
                    f"{paths['checkpoint']} was written for {saved[0]} batches per epoch and {saved[1]} steps, "
                    f"this data gives {per_epoch} and {total}; use the same data or resume=False"
                )
            try:
                model.load_state_dict(ckpt["model"])
            except RuntimeError as e:
                raise ValueError(f"{paths['checkpoint']} does not fit this model: {e}") from None
            optimizer.load_state_dict(ckpt["optimizer"])
            torch.set_rng_state(ckpt["rng"]["torch"])
            if cuda_devices and ckpt["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
            for k in state:
                state[k] = ckpt[k]
            _write_metrics(paths["metrics"], state["metrics"])  # drop rows logged after the checkpoint
        else:
            for p in paths.values():
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            paths["metrics"].touch()

        result = _run(
            model, optimizer, loss_fn, batches, val_src, test_src, config, device, state,
            total=total, per_epoch=per_epoch, eval_every=eval_every, ckpt_every=ckpt_every,
            paths=paths, cfg=cfg, cuda=bool(cuda_devices), progress=progress,
        )  # fmt: skip
    return result


def _run(
    model, optimizer, loss_fn, batches, val_src, test_src, config, device, state, *,
    total, per_epoch, eval_every, ckpt_every, paths, cfg, cuda, progress,
) -> dict:  # fmt: skip
    from tqdm.auto import tqdm

    base_lr = config.base_lr
    t_start = time.perf_counter() - state["seconds"]
    step = state["step"]
    diverged_step = None
    pbar = tqdm(
        total=total, initial=step, disable=None if progress else True, desc="train", unit="step", file=sys.stderr
    )

    def record() -> None:
        val = evaluate(model, val_src, device, config.eval_batch_size)
        test = evaluate(model, test_src, device, config.eval_batch_size)
        loss = state["loss_sum"] / state["loss_n"] if state["loss_n"] else None
        row = {
            "step": step,
            "epoch": step / per_epoch,
            "train_loss": _finite_or_none(loss),
            "val_accuracy": val,
            "test_accuracy": test,
            "lr": base_lr * lr_factor(config, step - 1, total) if step > 0 else None,  # of the last update
        }
        state["metrics"].append(row)
        state["loss_sum"], state["loss_n"] = 0.0, 0
        if val is not None and (state["best_val"] is None or val > state["best_val"]):
            state["best_val"], state["best_test"] = val, test
        with open(paths["metrics"], "a") as f:
            f.write(json.dumps(row) + "\n")
        pbar.set_postfix(
            {k: "-" if v is None else f"{v:.4g}" for k, v in (("loss", loss), ("val", val), ("test", test))},
            refresh=False,
        )

    def checkpoint() -> None:
        ckpt = {
            "format": _CHECKPOINT_FORMAT,
            "config": cfg,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": {"schedule": config.schedule, "base_lr": base_lr, "total_steps": total},
            "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if cuda else None},
            "data": {
                "seed": config.seed,
                "epoch": step // per_epoch,
                "batch": step % per_epoch,
                "batches_per_epoch": per_epoch,
                "total_steps": total,
            },
            **{k: state[k] for k in state if k not in ("step", "seconds")},
            "step": step,
            "seconds": time.perf_counter() - t_start,
        }
        _atomic_write(paths["checkpoint"], lambda f: torch.save(ckpt, f))

    model.train()
    try:
        with DirectMasks(model) as masks:
            while step < total and diverged_step is None:
                epoch, start = divmod(step, per_epoch)
                for batch in batches.epoch(epoch, start):
                    x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
                    lr = base_lr * lr_factor(config, step, total)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    loss_value = train_step(model, optimizer, loss_fn, x, y, masks)
                    if not math.isfinite(loss_value):
                        diverged_step = step + 1
                        break
                    step += 1
                    state["loss_sum"] += loss_value
                    state["loss_n"] += 1
                    pbar.update(1)
                    if step % eval_every == 0 or step == total:
                        record()
                    if ckpt_every and step % ckpt_every == 0 and step < total:
                        state["step"] = step
                        checkpoint()
                    if step >= total:
                        break
            if diverged_step is not None:
                if not state["metrics"] or state["metrics"][-1]["step"] != step:
                    record()
                pbar.set_postfix_str(f"diverged at step {diverged_step}", refresh=False)
            masks.mask_weights()
    finally:
        pbar.close()

    seconds = time.perf_counter() - t_start
    last = state["metrics"][-1] if state["metrics"] else {}
    result = {
        "test_accuracy": last.get("test_accuracy"),
        "best_val_accuracy": state["best_val"],
        "best_test_accuracy": state["best_test"],
        "steps": step,
        "epochs": step / per_epoch,
        "diverged": diverged_step is not None,
        "diverged_step": diverged_step,
        "seconds": seconds,
        "config": cfg,
    }
    sd = model.state_dict()
    _atomic_write(paths["model"], lambda f: torch.save(sd, f))
    _write_json(paths["result"], result)
    with contextlib.suppress(FileNotFoundError):
        paths["checkpoint"].unlink()
    return result
