"""``make demo`` / ``sigprop demo``: EOC points, map plots and EOC curves of a few
activations, including seed 004's calibrated sparse activations, written to a folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sigprop.plots import _plt, plot_maps
from sigprop.theory.activations import get_activation
from sigprop.theory.calibrate import calibrate_sparse
from sigprop.theory.meanfield import eoc, eoc_curve

__all__ = ["run_demo"]


def _cases():
    yield "tanh_sb0.05", get_activation("tanh"), {"sigma_b2": 0.05}
    yield "erf_q1", get_activation("erf"), {"q_star": 1.0}
    yield "selu_q1", get_activation("selu"), {"q_star": 1.0}
    for kind, s, v in [("relu_tau", 0.7, None), ("crelu", 0.85, 0.7), ("crelu", 0.85, 0.9), ("cst", 0.85, 0.9)]:
        cal = calibrate_sparse(kind, s, v, fixed_point_analysis=False)[0]
        tag = f"{kind}_s{s}" + (f"_v{v}" if v else "")
        yield tag, cal.activation(), {"q_star": 1.0}


def run_demo(out: str | Path = "demo") -> list[Path]:
    """Compute and plot; returns the files written. Prints a summary table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    records = []
    print(f"{'case':<22} {'activation':<34} {'sigma_w2':>9} {'sigma_b2':>9} {'q*':>7} {'dV':>7} {'d2V':>8}  stable")
    for tag, act, kw in _cases():
        point = eoc(act, **kw)
        d = point.to_dict()
        records.append({"case": tag, **d})
        files.append(plot_maps(act, point, out / f"maps_{tag}.png"))
        print(
            f"{tag:<22} {act.label():<34} {point.sigma_w2:9.4f} {point.sigma_b2:9.4f} {point.q_star:7.3f} "
            f"{point.dV:7.3f} {point.d2V:8.3f}  {point.stable}"
        )
    files.append(_plot_curves(out / "eoc_curves.png"))
    summary = out / "eoc_points.json"
    summary.write_text(json.dumps(records, indent=2))
    files.append(summary)
    print(f"\nwrote {len(files)} files to {out.resolve()}/:")
    for f in files:
        print(f"  {f}")
    return files


def _plot_curves(path: Path) -> Path:
    plt = _plt()
    sb = np.linspace(0.0, 0.3, 61)[1:]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name in ("tanh", "erf", "selu", "elu"):
        sw, _ = eoc_curve(name, sb)
        ax.plot(sw, sb, label=name)
    ax.set_xlabel(r"$\sigma_w^2$")
    ax.set_ylabel(r"$\sigma_b^2$")
    ax.set_title("Edge-of-Chaos curves (chi_1 = 1)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
