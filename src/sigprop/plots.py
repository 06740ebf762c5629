"""Figures made from theory results (matplotlib, Agg backend; no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sigprop.theory.activations import Activation
from sigprop.theory.meanfield import (
    EOCPoint,
    correlation_fixed_points,
    correlation_map,
    variance_map,
)

__all__ = ["plot_maps"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_maps(act: Activation, point: EOCPoint, path: str | Path, q_max: float | None = None) -> Path:
    """Variance map V(q) and correlation map R(c) at an EOC point (seed 004 Figs 2, 4, 6, 7).

    Left: V(q) against the identity with the fixed points of V marked (filled = locally stable).
    Right: R(c) against the identity with the fixed points c* of R marked.
    """
    plt = _plt()
    sw, sb = point.sigma_w2, point.sigma_b2
    q_star = point.q_star if point.q_star else 1.0
    others = [fp.q for fp in point.other_fixed_points]
    top = max([3.0 * q_star, *(1.3 * q for q in others)]) if q_max is None else q_max
    qs = np.linspace(top * 1e-3, top, 400)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    ax1.plot(qs, variance_map(act, qs, sw, sb), label=r"$V(q)$")
    ax1.plot(qs, qs, "k--", lw=0.8, label="identity")
    if point.q_star:
        locally = point.dV is not None and abs(point.dV) < 1  # filled marker = attracts nearby q
        ax1.plot([q_star], [q_star], "o", color="C3" if locally else "white", mec="C3", label=r"$q^*$")
    for fp in point.other_fixed_points:
        ax1.plot([fp.q], [fp.q], "s", color="C2" if fp.stable else "white", mec="C2")
    ax1.set_xlabel("q")
    ax1.set_ylabel("V(q)")
    ax1.set_title(f"variance map, {act.label()}")
    ax1.legend(loc="upper left", fontsize=8)
    cs = np.linspace(-1, 1, 201)
    ax2.plot(cs, correlation_map(act, cs, q_star, sw, sb), label=r"$R(c)$")
    ax2.plot(cs, cs, "k--", lw=0.8)
    for fp in correlation_fixed_points(act, sw, sb, q_star):
        ax2.plot([fp.q], [fp.q], "o", color="C3" if fp.stable else "white", mec="C3")
    ax2.set_xlabel("c")
    ax2.set_ylabel("R(c)")
    ax2.set_title(rf"correlation map at $q^*$={q_star:.3g}")
    fig.suptitle(rf"EOC: $\sigma_w^2$={sw:.4g}, $\sigma_b^2$={sb:.4g}, $V'(q^*)$={point.dV:.3g}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".png")  # what matplotlib would write; report the real name
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
