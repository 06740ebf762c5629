"""Command line of pruning at initialization: ``sigprop prune`` and ``sigprop train --prune-from``.

Wired into :func:`sigprop.cli.build_parser` by :func:`add_prune_parser` (the ``prune``
subcommand) and :func:`add_prune_from_args` (two options of ``train``). Building the parser does
not import torch; :func:`cmd_prune` does (through :mod:`sigprop.run_prune`).
"""

from __future__ import annotations

import argparse
import json

from sigprop.run_prune import ISOMETRY_LR, ISOMETRY_STEPS, LOSSES, METHODS, RESCALE_METHODS, SCOPES

__all__ = ["add_prune_from_args", "add_prune_parser", "cmd_prune"]


def _in_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(t) for t in text.replace("x", ",").split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers such as 1,8,8, got {text!r}"
        ) from None
    if not shape or any(d < 1 for d in shape):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers such as 1,8,8, got {text!r}")
    return shape


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The model and initialization options of ``sigprop train`` (same names and defaults)."""
    p.add_argument(
        "--model",
        default="mlp",
        help="model name (mlp, lenet300, lenet5, vcnn, vgg16, vgg16x3, resnet20, resnet32, ...; default mlp)",
    )
    p.add_argument("--depth", type=int, help="number of hidden layers (mlp, vcnn) or network depth (resnet, wrn)")
    p.add_argument("--width", type=int, help="hidden width (mlp) or channels (vcnn, first block of vgg/resnet)")
    p.add_argument(
        "--activation", default="relu", metavar="ACT", help="activation name from the registry (default relu)"
    )
    p.add_argument("--param", action="append", metavar="NAME=VALUE", help="activation parameter, repeatable")
    p.add_argument("--init", default="eoc", help="eoc (default), gaussian, lecun, glorot, he, orthogonal, correlated")
    p.add_argument("--sigma-w2", type=float, help="weight variance sigma_w^2 (gaussian, correlated)")
    p.add_argument(
        "--sigma-b2", type=float, help="bias variance sigma_b^2 (gaussian; with eoc: choose the EOC point by it)"
    )
    p.add_argument("--eta", type=float, help="correlation strength of --init correlated (W = W_ind + eta w)")


def model_kwargs(args) -> dict:
    """The keyword arguments of :func:`add_model_args`'s flags, as ``run_train``/``run_prune`` take them."""
    from sigprop.theory.activations import parse_params

    return {
        "model": args.model,
        "depth": args.depth,
        "width": args.width,
        "activation": args.activation,
        "act_params": parse_params(args.param),
        "init": args.init,
        "sigma_w2": args.sigma_w2,
        "sigma_b2": args.sigma_b2,
        "eta": args.eta,
    }


def add_prune_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``prune`` subcommand on ``subparsers`` (``set_defaults(func=cmd_prune)``)."""
    p = subparsers.add_parser(
        "prune",
        help="prune a freshly initialized model (random, magnitude, SNIP, GraSP, SynFlow) and measure it",
        description="Build and initialize a model, prune it at initialization, optionally repair it (rescale, "
        "approximate isometry), and report the kept fraction per layer, collapsed layers, the critical sparsity, "
        "input-output Jacobian singular-value statistics (pruned and dense) and orthogonality scores. "
        "--out saves the masked model for 'sigprop train --prune-from'.",
    )
    add_model_args(p)
    p.add_argument("--method", required=True, choices=METHODS, help="score: " + ", ".join(METHODS))
    p.add_argument(
        "--sparsity", required=True, type=float, metavar="S", help="fraction of the prunable weights removed, in [0, 1)"
    )
    p.add_argument("--scope", choices=SCOPES, default="global", help="one global threshold (default) or per layer")
    p.add_argument(
        "--loss",
        choices=LOSSES,
        default=None,
        help="loss of snip/grasp only (default supervised; the others use no labels, seed 002 Table 4)",
    )
    p.add_argument(
        "--rescale",
        choices=RESCALE_METHODS,
        default="none",
        help="repair the pruned weights' scale: " + ", ".join(RESCALE_METHODS) + " (default none)",
    )
    p.add_argument("--isometry", action="store_true", help="approximate isometry repair after pruning (seed 002 eq. 8)")
    p.add_argument(
        "--isometry-lr", type=float, help=f"step size of the isometry repair (with --isometry; default {ISOMETRY_LR})"
    )
    p.add_argument(
        "--isometry-steps",
        type=int,
        help=f"most steps of the isometry repair (with --isometry; default {ISOMETRY_STEPS})",
    )
    p.add_argument(
        "--data",
        default="digits",
        help="data set of the scoring batches and Jacobian inputs: digits (default), mnist1d, mnist, fashion-mnist, "
        "cifar10, cifar100, tiny-imagenet, gaussian, or none (data-free methods only; give --in-shape)",
    )
    p.add_argument("--data-dir", help="folder holding the data files (mnist, fashion-mnist, cifar, tiny-imagenet)")
    p.add_argument("--in-shape", type=_in_shape, metavar="C,H,W", help="input shape with --data none (e.g. 1,8,8)")
    p.add_argument("--num-classes", type=int, help="number of classes with --data none (default 10)")
    p.add_argument("--batch-size", type=int, default=128, help="examples per scoring batch (default 128)")
    p.add_argument("--batches", type=int, default=1, help="scoring batches (snip, grasp; default 1)")
    p.add_argument(
        "--jacobian-batch", type=int, default=64, help="inputs the Jacobian statistics are taken over (default 64)"
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the initialization, random scores and batches")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--out", metavar="DIR", help="save the masked model, its settings and the result here")
    p.add_argument("--plot", metavar="FILE.png", help="draw the kept fraction per unit and per layer")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=cmd_prune)
    return p


def add_prune_from_args(train_parser: argparse.ArgumentParser) -> None:
    """Add ``--prune-from DIR`` and ``--allow-collapse`` to the ``train`` parser.

    Also sets the defaults of ``--model``, ``--activation`` and ``--init`` to None (run_train
    reads None as mlp / relu / eoc), so that with ``--prune-from`` a flag the user did not give
    is told apart from one that conflicts with the saved model.
    """
    train_parser.add_argument(
        "--prune-from",
        metavar="DIR",
        help="train the masked model saved by 'sigprop prune --out DIR' (its model, init, weights and mask); "
        "--data may differ (transfer of sparsity) when the input shape and class count agree",
    )
    train_parser.add_argument(
        "--allow-collapse",
        action="store_true",
        help="with --prune-from: train even if the mask removes a whole layer or leaves no input-output path "
        "(refused otherwise)",
    )
    train_parser.set_defaults(model=None, activation=None, init=None)


def _num(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def cmd_prune(args) -> int:
    """Run :func:`sigprop.run_prune.run_prune` from parsed arguments; print a summary or ``--json``."""
    from sigprop.run_prune import run_prune

    data = None if args.data is not None and args.data.lower() == "none" else args.data
    num_classes = args.num_classes
    if data is None and num_classes is None:
        num_classes = 10
    result = run_prune(
        **model_kwargs(args),
        method=args.method,
        sparsity=args.sparsity,
        scope=args.scope,
        loss=args.loss,
        rescale=args.rescale,
        isometry=args.isometry,
        isometry_lr=args.isometry_lr,
        isometry_steps=args.isometry_steps,
        data=data,
        data_dir=args.data_dir,
        in_shape=args.in_shape,
        num_classes=num_classes,
        batch_size=args.batch_size,
        batches=args.batches,
        jacobian_batch=args.jacobian_batch,
        seed=args.seed,
        device=args.device,
        out=args.out,
        plot=args.plot,
        progress=not args.json,
    )
    if args.json:
        print(json.dumps(result, allow_nan=False))
        return 0
    cfg = result["config"]
    print(
        f"{cfg['method']} at sparsity {cfg['sparsity']:g} ({cfg['scope']}): kept {100 * result['kept_fraction']:.4g}% "
        f"of the prunable weights; critical sparsity {_num(result['critical_sparsity'])}"
    )
    collapsed = result["collapsed_layers"]
    if not collapsed:
        print("collapsed layers: none")
    else:
        names = ", ".join(collapsed) if len(collapsed) <= 4 else f"{', '.join(collapsed[:3])}, ..., {collapsed[-1]}"
        print(f"collapsed layers: {len(collapsed)} ({names})")
    if result.get("disconnected"):
        how = "no path of kept weights" if result.get("disconnected_check") == "structural" else "Jacobian exactly 0"
        print(f"DISCONNECTED: the output no longer depends on the input ({how})")
    print("kept per layer:   " + " ".join(f"{k:.3f}" for k in result["kept_per_layer"]))
    keys = ("mean", "std", "cond", "norm")
    print(f"{'jacobian':<10}" + "".join(f"{k:>12}" for k in keys) + f"{'orthogonality':>16}")
    for label, jac, orth in (
        ("dense", result["jacobian_dense"], result["orthogonality_score_dense"]),
        ("pruned", result["jacobian"], result["orthogonality_score"]),
    ):
        print(f"{label:<10}" + "".join(f"{_num(jac.get(k)):>12}" for k in keys) + f"{_num(orth):>16}")
    if args.out:
        print(f"wrote {args.out}/pruned_model.pt, prune_config.json, prune_result.json")
    if args.plot:
        print(f"wrote {args.plot}")
    return 0
