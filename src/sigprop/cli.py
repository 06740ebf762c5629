"""Command line: thin wrappers that parse, call the API and print a table or ``--json``.

Bad input prints one line to stderr and exits with status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from sigprop import __version__
from sigprop.cli_prune import add_model_args, add_prune_from_args, add_prune_parser, model_kwargs
from sigprop.cli_spectrum import add_parser as add_spectrum_parser
from sigprop.errors import NumericalError
from sigprop.theory.activations import SPARSE_FAMILIES, get_activation, parse_params


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, status 2
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def _fmt(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _print_kv(d: dict) -> None:
    width = max(len(k) for k in d)
    for k, v in d.items():
        if k == "other_fixed_points":
            v = (
                ", ".join(
                    f"q={_fmt(fp['q'])} (V'={_fmt(fp['dV'])}, {'stable' if fp['stable'] else 'unstable'})" for fp in v
                )
                or "none"
            )
        print(f"{k:<{width}}  {_fmt(v) if not isinstance(v, str) else v}")


def _print_rows(rows: list[dict]) -> None:
    keys = list(rows[0])
    cells = [[_fmt(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    print("  ".join(k.rjust(w) for k, w in zip(keys, widths, strict=True)))
    for c in cells:
        print("  ".join(x.rjust(w) for x, w in zip(c, widths, strict=True)))


def _add_point_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("activation", metavar="ACT", help="activation name (e.g. tanh, relu, crelu)")
    p.add_argument(
        "--param", action="append", metavar="NAME=VALUE", help="activation parameter, repeatable (e.g. tau=0.5)"
    )
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--sigma-b2", type=float, help="bias variance sigma_b^2; solve for q* and sigma_w^2")
    g.add_argument("--q-star", type=float, help="fixed-point variance q*; solve for sigma_w^2 and sigma_b^2")


def _eoc_point(args):
    from sigprop.theory.meanfield import eoc

    act = get_activation(args.activation, **parse_params(args.param))
    return act, eoc(act, sigma_b2=args.sigma_b2, q_star=args.q_star)


def cmd_eoc(args) -> int:
    _, point = _eoc_point(args)
    d = point.to_dict()
    if args.json:
        print(json.dumps(d))
    else:
        _print_kv(d)
    return 0


def cmd_sparse(args) -> int:
    from sigprop.theory.calibrate import calibrate_sparse

    slope = args.slope if args.slope else None
    rows = [r.to_dict() for r in calibrate_sparse(args.kind, args.sparsity, slope, q_star=args.q_star)]
    if args.json:
        print(json.dumps(rows))
    else:
        _print_rows(rows)
    return 0


def cmd_maps(args) -> int:
    from sigprop.plots import plot_maps

    act, point = _eoc_point(args)
    path = plot_maps(act, point, args.plot)
    print(f"wrote {path}")
    return 0


def cmd_train(args) -> int:
    from sigprop.run_train import run_train

    result = run_train(
        **model_kwargs(args),
        data=args.data,
        data_dir=args.data_dir,
        epochs=args.epochs,
        iterations=args.iterations,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        seed=args.seed,
        device=args.device,
        out=args.out,
        resume=args.resume,
        progress=not args.json,
        prune_from=args.prune_from,
        allow_collapse=args.allow_collapse,
    )
    if args.json:
        print(json.dumps(result))
    else:
        acc = result["test_accuracy"]
        state = f"diverged at step {result['diverged_step']}" if result["diverged"] else "finished"
        print(
            f"{state}: {result['steps']} steps, test accuracy {_fmt(acc)}, best val {_fmt(result['best_val_accuracy'])} ({result['seconds']:.1f} s)"
        )
        print(f"wrote {args.out}/model.pt, metrics.jsonl, result.json, run.json")
    return 0


def cmd_demo(args) -> int:
    from sigprop.demo import run_demo

    run_demo(args.out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sigprop", description="Signal propagation at initialization: mean-field theory and EOC tools.")
    p.add_argument("--version", action="version", version=f"sigprop {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    e = sub.add_parser(
        "eoc",
        help="Edge-of-Chaos point of an activation",
        description="Edge-of-Chaos initialization (chi_1 = 1 at a fixed point q* of V) and the mean-field quantities there.",
    )
    _add_point_args(e)
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(func=cmd_eoc)

    s = sub.add_parser(
        "sparse-activation",
        help="calibrate relu_tau/st_tau/crelu/cst to a target sparsity",
        description="Calibrate a sparsity-inducing activation (seed 004 Sec. 3.1): tau from the sparsity, m from the target V'(q*) (crelu/cst), then the EOC at q*.",
    )
    s.add_argument("kind", choices=SPARSE_FAMILIES, metavar="{" + ",".join(SPARSE_FAMILIES) + "}")
    s.add_argument(
        "--sparsity",
        type=float,
        nargs="+",
        required=True,
        metavar="S",
        help="target expected fraction of zeros, in (0, 1)",
    )
    s.add_argument("--slope", type=float, nargs="+", metavar="V", help="target V'(q*) in (0, 1) (crelu/cst only)")
    s.add_argument("--q-star", type=float, default=1.0, help="fixed-point variance q* (default 1)")
    s.add_argument("--json", action="store_true", help="print a JSON list, one object per (sparsity, slope)")
    s.set_defaults(func=cmd_sparse)

    m = sub.add_parser(
        "maps",
        help="plot the variance and correlation maps at the EOC",
        description="Plot V(q) and R(c) at the EOC point, with their fixed points.",
    )
    _add_point_args(m)
    m.add_argument("--plot", required=True, metavar="FILE.png", help="output image")
    m.set_defaults(func=cmd_maps)

    t = sub.add_parser(
        "train",
        help="train a model (EOC or other initialization) on a data set",
        description="Build a model, initialize it, train it with SGD/Adam and write model.pt, metrics.jsonl and "
        "result.json to --out. --resume continues a killed run to exactly the weights an uninterrupted run reaches.",
    )
    add_model_args(t)
    t.add_argument(
        "--data",
        default="digits",
        help="digits (default), mnist1d, mnist, fashion-mnist, cifar10, cifar100, tiny-imagenet, gaussian",
    )
    t.add_argument("--data-dir", help="folder holding the data files (mnist, fashion-mnist, cifar, tiny-imagenet)")
    n = t.add_mutually_exclusive_group()
    n.add_argument("--epochs", type=int, help="passes over the training data (default 10)")
    n.add_argument("--iterations", type=int, help="optimizer steps (instead of --epochs)")
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=float, help="learning rate (default 0.05 for sgd, 1e-3 for adam)")
    t.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    t.add_argument("--out", required=True, metavar="DIR", help="output folder")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--json", action="store_true", help="print the result as one JSON object")
    t.set_defaults(func=cmd_train)
    add_prune_from_args(t)
    add_prune_parser(sub)
    add_spectrum_parser(sub)

    d = sub.add_parser("demo", help="run the demo job (EOC points and map plots of a few activations)")
    d.add_argument("--out", default="demo", help="output directory (default: demo)")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, NumericalError, OSError) as exc:
        msg = str(exc).replace("\n", " ")
        sys.stderr.write(f"sigprop {args.command}: error: {msg}\n")
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
