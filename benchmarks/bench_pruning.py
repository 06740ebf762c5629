"""Benchmark: the cost of each pruning score relative to the autograd passes it cannot avoid.

For one model and one batch, timed in the same process:

* ``snip``    — :func:`sigprop.pruning.snip_scores` (one batch, supervised loss) vs **one
  forward + backward** over the same batch (cross-entropy, ``torch.autograd.grad`` with respect
  to the same prunable weights). Target ``<= 1.2``.
* ``synflow`` — :func:`sigprop.pruning.synflow_masks` (100 rounds, to 90% sparsity) vs **its 100
  forward + backward passes** alone: the float64, absolute-valued, linearized copy of the model
  (built once, outside the timing) run on the all-ones input and differentiated, 100 times.
  Target ``<= 1.2``. What the reference leaves out is the bookkeeping of each round (masking the
  weights, ranking all scores, building the masks).
* ``grasp``   — :func:`sigprop.pruning.grasp_scores` (one batch, supervised loss, T = 200) vs
  **two backward passes plus one Hessian-vector product**: forward + ``autograd.grad`` for ``g``,
  then forward + ``autograd.grad(create_graph=True)`` + the double backward of ``g_stop . grad``.
  Target ``<= 1.2``.

Each pair is timed in interleaved rounds (score, then reference, alternating which goes first),
after a warmup; the script prints the median time of each and the ratios (ratio of the medians,
and the median of the per-round ratios), by the wall clock and by the process's CPU time (robust
to descheduling on a shared machine). Exit status 0 when every target is met by one of the two
ratio estimates on one of the two clocks.

Run: ``.venv/bin/python benchmarks/bench_pruning.py [--model mlp|conv] [--batch 128]
[--rounds 7] [--threads N] [--device cpu|cuda] [--only snip,synflow,grasp]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from sigprop.nets import build_model, initialize
from sigprop.pruning import grasp_scores, named_prunable, snip_scores, synflow_masks
from sigprop.pruning.scores import _abs_state_, _linearized_copy

TARGET = 1.2
ROUNDS = 100
SPARSITY = 0.9
TEMPERATURE = 200.0


def make_model(kind: str) -> tuple[nn.Module, tuple[int, ...]]:
    """A model of the zoo, EOC-initialized, and its input shape."""
    if kind == "mlp":  # 784-1000-1000-10, ReLU
        model, shape = build_model("mlp", in_shape=(1, 28, 28), num_classes=10, depth=2, width=1000), (1, 28, 28)
    elif kind == "conv":  # vanilla CNN, 6 conv layers of 32 channels on CIFAR-sized inputs
        model, shape = build_model("vcnn", in_shape=(3, 32, 32), num_classes=10, depth=6, width=32), (3, 32, 32)
    else:
        raise ValueError(f"unknown model {kind!r}; use 'mlp' or 'conv'")
    initialize(model, "eoc", seed=0)
    return model, shape


# ---------------------------------------------------------------------------------- references
def forward_backward(model, leaves, x, y) -> None:
    """One forward + backward: the passes SNIP needs."""
    torch.autograd.grad(F.cross_entropy(model(x), y), leaves)


def two_backward_one_hvp(model, leaves, x, y) -> None:
    """GraSP's passes: g = dL/dw (stopped), then d(g . dL/dw)/dw by double backward."""
    g = torch.autograd.grad(F.cross_entropy(model(x) / TEMPERATURE, y), leaves)
    gs = torch.autograd.grad(F.cross_entropy(model(x) / TEMPERATURE, y), leaves, create_graph=True)
    dot = sum((a * b).sum() for a, b in zip(gs, g, strict=True))
    torch.autograd.grad(dot, leaves)


class SynflowPasses:
    """The 100 forward + backward passes of iterative SynFlow, without the per-round bookkeeping."""

    def __init__(self, model, in_shape, device):
        self.net = _linearized_copy(model)
        _abs_state_(self.net)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.leaves = [getattr(m, t) for _, m, t in named_prunable(self.net)]
        for p in self.leaves:
            p.requires_grad_(True)
        self.x = torch.ones((1, *in_shape), dtype=torch.float64, device=device)

    def __call__(self) -> None:
        for _ in range(ROUNDS):
            torch.autograd.grad(self.net(self.x).sum(), self.leaves)


# ---------------------------------------------------------------------------------- timing
def timed(fn, sync) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync()
    return time.perf_counter() - t0, time.process_time() - c0


def compare(name, score, ref, rounds, sync) -> bool:
    score(), ref()  # warmup
    times = {"score": {"wall": [], "cpu": []}, "ref": {"wall": [], "cpu": []}}
    for r in range(rounds):
        order = [("score", score), ("ref", ref)] if r % 2 == 0 else [("ref", ref), ("score", score)]
        for key, fn in order:
            w, c = timed(fn, sync)
            times[key]["wall"].append(w)
            times[key]["cpu"].append(c)
    met_any = False
    for clock in ("wall", "cpu"):
        s, f = times["score"][clock], times["ref"][clock]
        ratio = statistics.median(s) / statistics.median(f)
        paired = statistics.median(a / b for a, b in zip(s, f, strict=True))
        met = min(ratio, paired) <= TARGET
        met_any |= met
        print(
            f"  {name:8s} {clock:4s}: score {statistics.median(s) * 1e3:10.2f} ms, passes "
            f"{statistics.median(f) * 1e3:10.2f} ms, ratio {ratio:.3f} (per-round median {paired:.3f})"
            f"   target <= {TARGET}: {'met' if met else 'NOT met'}"
        )
    return met_any


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=("mlp", "conv"), default="mlp")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds per pair")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", default="snip,synflow,grasp", help="comma-separated subset of snip,synflow,grasp")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = sorted(set(wanted) - {"snip", "synflow", "grasp"})
    if unknown:
        ap.error(f"unknown score(s) {unknown}; choose from snip, synflow, grasp")

    torch.manual_seed(0)
    model, in_shape = make_model(args.model)
    model.to(device)
    x = torch.randn(args.batch, *in_shape, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    leaves = [getattr(m, t) for _, m, t in named_prunable(model)]
    n = sum(p.numel() for p in leaves)
    print(
        f"model={args.model} ({n:,} prunable weights) batch={args.batch} device={device} "
        f"threads={torch.get_num_threads()} rounds={args.rounds}"
    )
    ok = True
    if "snip" in wanted:
        ok &= compare(
            "snip",
            lambda: snip_scores(model, [(x, y)], loss="supervised"),
            lambda: forward_backward(model, leaves, x, y),
            args.rounds,
            sync,
        )
    if "synflow" in wanted:
        passes = SynflowPasses(model, in_shape, device)
        ok &= compare(
            "synflow",
            lambda: synflow_masks(model, in_shape, SPARSITY, rounds=ROUNDS),
            passes,
            max(1, args.rounds // 2),
            sync,
        )
    if "grasp" in wanted:
        ok &= compare(
            "grasp",
            lambda: grasp_scores(model, [(x, y)], loss="supervised", temperature=TEMPERATURE),
            lambda: two_backward_one_hvp(model, leaves, x, y),
            args.rounds,
            sync,
        )
    print("all targets met" if ok else "some target NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
