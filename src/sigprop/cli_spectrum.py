"""``sigprop spectrum``: the free-probability spectrum of ``J^T J`` (seed 003), optionally
against an empirical ensemble of random networks and plotted.

The lead's ``sigprop.cli.build_parser`` registers it with ``add_parser(sub)``; ``main`` turns a
ValueError / NumericalError / OSError into one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json

__all__ = ["add_parser", "cmd_spectrum"]

_DESCRIPTION = """\
Spectrum of J^T J (J the input-output Jacobian, normalized by N_0) in the infinite-width limit
by free probability (seed 003 Thm 3.1, Newton lilypads): density on a log grid over the support,
the atom at zero (rank deficiency), CDF, quantiles and the moments m1, m2.

Default sigma_w2: the Edge-of-Chaos value of the activation at the given sigma_b2 (sigprop eoc;
relu: 2, tanh at sigma_b2 = 0: 1). Masks are not modelled here; gaussian weights have entries of
variance sigma_w2 / fan_in, orthogonal weights are Haar (semi-)orthogonal with that entry variance.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``spectrum`` subcommand on an argparse subparsers object."""
    p = subparsers.add_parser(
        "spectrum",
        help="free-probability spectrum of J^T J (density, atom, CDF, quantiles, moments)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--activation", required=True, metavar="ACT", help="activation name (relu, tanh, hard_tanh, ...)")
    p.add_argument("--param", action="append", metavar="NAME=VALUE", help="activation parameter, repeatable")
    p.add_argument("--depth", type=int, metavar="L", help="number of layers (with --width: square layers)")
    p.add_argument("--width", type=int, metavar="N", help="width of every layer, input included (with --depth)")
    p.add_argument(
        "--widths", type=int, nargs="+", metavar="N", help="widths N_0 N_1 ... N_L (instead of --depth/--width)"
    )
    p.add_argument(
        "--sigma-w2",
        type=float,
        help="weight variance sigma_w^2 (entries sigma_w2/fan_in); default: the EOC value at --sigma-b2",
    )
    p.add_argument("--sigma-b2", type=float, default=0.0, help="bias variance sigma_b^2 (default 0)")
    p.add_argument(
        "--weights", choices=["gaussian", "orthogonal"], default="gaussian", help="weight law (default gaussian)"
    )
    p.add_argument("--q0", type=float, default=1.0, help="input second moment ||x||^2 / N_0 (default 1)")
    p.add_argument("--points", type=int, default=400, help="points of the density grid (default 400)")
    p.add_argument("--cdf-at", nargs="+", metavar="X", help="report F(X) = P(eigenvalue <= X), atom included")
    p.add_argument("--quantiles", nargs="+", metavar="P", help="report quantiles for probabilities P in (0, 1)")
    p.add_argument("--empirical", action="store_true", help="also sample random networks (torch) and compare")
    p.add_argument("--samples", type=int, default=20, help="random networks for --empirical (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed for --empirical (default 0)")
    p.add_argument("--plot", metavar="FILE.png", help="plot the density (and the empirical histogram) on a log-x axis")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_spectrum)
    return p


def _numbers(items, what: str) -> list[tuple[str, float]]:
    """``(as typed, float)`` in command-line order; range checks are the library's."""
    out = []
    for s in items or []:
        try:
            out.append((s, float(s)))
        except ValueError:
            raise ValueError(f"--{what}: {s!r} is not a number") from None
    return out


def _spec(args):
    """The NetSpec of the arguments. Widths, variances and q0 are validated by NetSpec itself
    (sigma_b2 also by ``eoc`` when it supplies the default sigma_w2)."""
    from sigprop.netspec import NetSpec
    from sigprop.theory.activations import get_activation, parse_params
    from sigprop.theory.meanfield import eoc

    act = get_activation(args.activation, **parse_params(args.param))
    if args.widths is not None:
        if args.depth is not None or args.width is not None:
            raise ValueError("give either --widths N0 ... NL or --depth L --width N, not both")
        widths = tuple(args.widths)
    elif args.depth is None or args.width is None:
        raise ValueError("give --depth L and --width N (square layers), or --widths N0 N1 ... NL")
    else:
        if args.depth < 1:
            raise ValueError(f"--depth must be a positive int, got {args.depth}")
        widths = (args.width,) * (args.depth + 1)
    sw = eoc(act, sigma_b2=args.sigma_b2).sigma_w2 if args.sigma_w2 is None else args.sigma_w2
    return NetSpec(widths=widths, activation=act, sigma_w2=sw, sigma_b2=args.sigma_b2, weights=args.weights, q0=args.q0)


def _rekey(d: dict, pairs: list[tuple[str, float]]) -> dict:
    """``{as typed: d[float]}`` in command-line order (``d`` is keyed by the parsed floats)."""
    return {s: d[v] for s, v in pairs}


def cmd_spectrum(args) -> int:
    """Run ``sigprop spectrum``; prints JSON (``--json``) or a readable summary. Returns 0."""
    from sigprop.theory.spectrum import jacobian_spectrum

    cdf_pairs = _numbers(args.cdf_at, "cdf-at")
    q_pairs = _numbers(args.quantiles, "quantiles")
    spec = _spec(args)
    res = jacobian_spectrum(
        spec, points=args.points, cdf_at=[v for _, v in cdf_pairs], quantiles=[v for _, v in q_pairs]
    )
    out = res.to_dict()
    out["cdf"] = _rekey(res.cdf, cdf_pairs)
    out["quantiles"] = _rekey(res.quantiles, q_pairs)
    emp = None
    out["empirical"] = None
    if args.empirical:
        if args.samples < 1:
            raise ValueError(f"--samples must be a positive int, got {args.samples}")
        if args.seed < 0:
            raise ValueError(f"--seed must be a non-negative int, got {args.seed}")
        try:
            from sigprop.jacobian import empirical_spectrum
        except ImportError as exc:
            raise ValueError(f"--empirical needs torch and sigprop.jacobian ({exc})") from None
        emp = empirical_spectrum(spec, samples=args.samples, seed=args.seed)
        d = emp.to_dict(cdf_at=[v for _, v in cdf_pairs], quantiles=[v for _, v in q_pairs])
        d["cdf"] = _rekey(d["cdf"], cdf_pairs)
        d["quantiles"] = _rekey(d["quantiles"], q_pairs)
        out["empirical"] = d
    if args.plot:
        path = _plot(res, emp, spec, args.plot)
    if args.json:
        print(json.dumps(out))
    else:
        _summary(spec, res, out)
        if args.plot:
            print(f"wrote {path}")
    return 0


def _summary(spec, res, out) -> None:
    acts = sorted({a.label() for a in spec.activation})
    print(
        f"J^T J spectrum: widths {list(spec.widths)}, {', '.join(acts)}, sigma_w2={spec.sigma_w2[0]:.6g}, "
        f"sigma_b2={spec.sigma_b2[0]:.6g}, {spec.weights} weights"
    )
    emp = out["empirical"]
    rows = [
        ("m1", f"{res.moments['m1']:.6g}", emp and f"{emp['moments']['m1']:.6g}"),
        ("m2", f"{res.moments['m2']:.6g}", emp and f"{emp['moments']['m2']:.6g}"),
        ("atom at 0", f"{res.atom_at_zero:.6g}", emp and f"{emp['atom_at_zero']:.6g}"),
        ("support edge", f"{res.support[1]:.6g}", None),
    ]
    rows += [(f"F({k})", f"{v:.6g}", emp and f"{emp['cdf'][k]:.6g}") for k, v in out["cdf"].items()]
    rows += [(f"quantile {k}", f"{v:.6g}", emp and f"{emp['quantiles'][k]:.6g}") for k, v in out["quantiles"].items()]
    w = max(len(r[0]) for r in rows)
    print(f"{'':<{w}}  {'theory':>12}" + (f"  {'empirical':>12}" if emp else ""))
    for name, th, em in rows:
        print(f"{name:<{w}}  {th:>12}" + (f"  {em or '':>12}" if emp else ""))
    if emp:
        print(f"empirical: {emp['samples']} networks, seed {emp['seed']}")


def _plot(res, emp, spec, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(res.x, res.density, lw=1.8, label=f"free probability (atom at 0: {res.atom_at_zero:.3g})")
    if emp is not None:
        lam = np.asarray(emp.eigenvalues)
        pos = lam[lam > 0]
        if pos.size:
            lo = max(pos.min(), res.x[0])
            hi = max(pos.max(), res.x[-1])
            bins = np.geomspace(lo, hi, 60)
            counts, edges = np.histogram(pos, bins=bins)
            dens = counts / (lam.size * np.diff(edges))
            ax.stairs(dens, edges, label=f"empirical ({emp.samples} nets, atom {emp.atom_at_zero:.3g})", alpha=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("eigenvalue of $J^T J$")
    ax.set_ylabel("density")
    ax.set_title(f"widths {list(spec.widths)}, {spec.activation[0].label()}, {spec.weights}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
