"""Benchmark: a masked (90% sparse) training step vs the dense step of the same model.

Three variants of one model, timed in the same process:

* ``dense``  — no masks;
* ``hook``   — 90% of every weight pruned with ``torch.nn.utils.prune.random_unstructured``
  (``weight_orig`` parameter, ``weight_mask`` buffer, ``weight = weight_orig * weight_mask``
  recomputed by a forward pre-hook at every forward), trained as is;
* ``direct`` — the same pruned model inside :class:`sigprop.train.DirectMasks`, which is how
  :func:`sigprop.train.train` runs it: the module computes with ``weight_orig`` directly and
  the gradients of the masked entries are zeroed after ``backward`` (one fused multiply).

Every variant runs :func:`sigprop.train.train_step` (forward, cross-entropy, ``loss.item()``,
backward, SGD with momentum 0.9 and weight decay 5e-4) on a fixed batch. After a warmup, the
variants are timed in interleaved rounds (rotating their order, so drift from other load on the
machine hits all of them alike) of ``--steps`` steps; the script prints each variant's median
time per step and the ratios to dense: the ratio of the medians and the median of the per-round
ratios (robust to load that changes between rounds), by the wall clock and by the process's CPU
time (robust to the process being descheduled on a shared machine; with ``--threads 1`` it is the
cleanest measure). Target: ``direct / dense <= 1.1``.

Run: ``.venv/bin/python benchmarks/bench_train.py [--model mlp|conv] [--batch 128]
[--rounds 30] [--steps 5] [--threads N] [--device cpu|cuda]``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch
from torch import nn
from torch.nn.utils import prune

from sigprop.train import DirectMasks, train_step

TARGET_RATIO = 1.1
SPARSITY = 0.9


def make_model(kind: str) -> tuple[nn.Module, tuple[int, ...]]:
    """The dense model and its input shape."""
    if kind == "mlp":  # LeNet-style MLP 784-1000-1000-10
        model = nn.Sequential(
            nn.Flatten(), nn.Linear(784, 1000), nn.ReLU(), nn.Linear(1000, 1000), nn.ReLU(), nn.Linear(1000, 10)
        )
        return model, (1, 28, 28)
    if kind == "conv":  # a small CIFAR conv net: 3 conv layers (32, 64, 128 channels) + linear
        model = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
            nn.Flatten(), nn.Linear(128, 10),
        )  # fmt: skip
        return model, (3, 32, 32)
    raise ValueError(f"unknown model {kind!r}; use 'mlp' or 'conv'")


def pruned_copy(model: nn.Module, sparsity: float) -> nn.Module:
    """A copy with ``sparsity`` of every Linear/Conv weight pruned (random, unstructured)."""
    out = copy.deepcopy(model)
    for m in out.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            prune.random_unstructured(m, "weight", amount=sparsity)
    return out


class Variant:
    def __init__(self, name: str, model: nn.Module, x, y, direct: bool):
        self.name, self.model, self.x, self.y = name, model, x, y
        self.masks = DirectMasks(model).__enter__() if direct else None
        self.opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.loss_fn = nn.CrossEntropyLoss()
        self.times: dict[str, list[float]] = {"wall": [], "cpu": []}

    def run(self, steps: int, sync) -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            train_step(self.model, self.opt, self.loss_fn, self.x, self.y, self.masks)
        sync()
        self.times["wall"].append((time.perf_counter() - t0) / steps)
        self.times["cpu"].append((time.process_time() - c0) / steps)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=("mlp", "conv"), default="mlp")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=30, help="timed rounds per variant")
    ap.add_argument("--steps", type=int, default=5, help="training steps per round")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps per variant first")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    torch.manual_seed(0)
    dense, in_shape = make_model(args.model)
    masked_hook = pruned_copy(dense, SPARSITY)
    masked_direct = pruned_copy(dense, SPARSITY)
    x = torch.randn(args.batch, *in_shape, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    variants = [
        Variant("dense", dense.to(device), x, y, direct=False),
        Variant("hook", masked_hook.to(device), x, y, direct=False),
        Variant("direct", masked_direct.to(device), x, y, direct=True),
    ]
    for v in variants:
        v.run(args.warmup, sync)
        v.times = {"wall": [], "cpu": []}
    for r in range(args.rounds):
        k = r % len(variants)
        for v in variants[k:] + variants[:k]:
            v.run(args.steps, sync)

    # the masks held: every pruned weight is still exactly zero
    for v in variants[1:]:
        if v.masks is not None:
            v.masks.__exit__(None, None, None)
        for m in v.model.modules():
            if hasattr(m, "weight_mask"):
                assert torch.all(m.weight[m.weight_mask == 0] == 0), f"{v.name}: a pruned weight moved"

    n_params = sum(p.numel() for p in dense.parameters())
    print(
        f"model={args.model} ({n_params:,} parameters) batch={args.batch} sparsity={SPARSITY:.0%} "
        f"device={device} threads={torch.get_num_threads()} rounds={args.rounds}x{args.steps} steps"
    )
    ok = False
    for clock in ("wall", "cpu"):
        print(f" {clock} clock ({'time.perf_counter' if clock == 'wall' else 'time.process_time, all threads'}):")
        dense_t = variants[0].times[clock]
        for v in variants:
            t = v.times[clock]
            line = f"  {v.name:7s} {statistics.median(t) * 1e3:9.3f} ms/step"
            if v.name != "dense":
                ratio = statistics.median(t) / statistics.median(dense_t)
                paired = statistics.median(a / b for a, b in zip(t, dense_t, strict=True))
                line += f"   ratio to dense {ratio:.3f} (median of per-round ratios {paired:.3f})"
                if v.name == "direct":
                    met = min(ratio, paired) <= TARGET_RATIO
                    ok = ok or met
                    line += f"   target <= {TARGET_RATIO}: {'met' if met else 'NOT met'}"
            print(line)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
