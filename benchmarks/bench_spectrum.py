"""Benchmark: Newton lilypads (sigprop) vs a numpy.roots baseline for the density of J^T J.

For ReLU nets at the EOC (sigma_w2 = 2, square layers, Gaussian weights) of depth L in
{4, 50, 100}, the density is computed at 1000 points (the default log grid over the support,
y = 1e-9):

* baseline (Pennington et al. 2018, Algorithm 1 style): at every x, all roots of the polynomial
  master equation ``z m Q(m) - (1 + m) P(m) = 0`` by ``numpy.roots``; keep the root closest to
  the previous x's (x swept from above the support, where ``M(z) ~ 1/z``, downwards);
* sigprop: ``freeprob.lilypads`` (vectorized Newton lilypads with the Kantorovich basin test,
  chained along the grid), same master equation, same points.

A baseline point is on a wrong branch when it differs from sigprop's certified value by more
than 1e-6 (1 + |m|) (sigprop's values are certified: Im G <= 0 and a Kantorovich chain from
|z| >= 4 x_+); the script also counts baseline points with Im G > 0 (impossible for a
Stieltjes transform). sigprop's own values are checked (untimed) against a second certified
route, ``lilypads(..., chain=False)`` (an independent doubling start and vertical descent at every
point): a sigprop point is wrong when the two differ by more than 1e-10 (1 + |m|). Timing: best
of ``--repeat`` runs each, both methods on the same points in the same process. Target: >= 20x
and no wrong point for sigprop.

At the end it runs the empirical half (``benchmarks/bench_jacobian.py``, explicit product vs
torch.autograd.functional.jacobian) when that file exists, unless ``--no-empirical``.

Run: ``.venv/bin/python benchmarks/bench_spectrum.py [--repeat N] [--points K] [--no-empirical]``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import time
from pathlib import Path

import numpy as np

from sigprop.netspec import NetSpec
from sigprop.theory import freeprob as fp
from sigprop.theory.spectrum import _grid, _model, master_equation


def _poly(eq: fp.MasterEquation, z: complex) -> np.ndarray:
    """Coefficients of ``z m Q(m) - (1 + m) scale P(m)`` with ``T = scale P / Q``."""
    P = np.array([1.0])
    Q = np.array([1.0])
    for c, d, e in zip(eq.c, eq.d, eq.e, strict=True):
        for _ in range(int(abs(e))):
            if e > 0:
                P = np.polymul(P, [d, c])
            else:
                Q = np.polymul(Q, [d, c])
    return np.polysub(np.polymul([z, 0.0], Q), eq.scale * np.polymul([1.0, 1.0], P))


def baseline(eq: fp.MasterEquation, z: np.ndarray) -> np.ndarray:
    """numpy.roots at every point, root closest to the previous point's (z sorted by decreasing x)."""
    out = np.empty(z.size, complex)
    prev = None
    for i, zi in enumerate(z):
        roots = np.roots(_poly(eq, zi))
        guess = 1.0 / zi if prev is None else prev
        prev = roots[np.argmin(np.abs(roots - guess))]
        out[i] = prev
    return out


def _best(f, repeat: int) -> tuple[float, object]:
    best, val = np.inf, None
    for _ in range(repeat):
        t = time.perf_counter()
        val = f()
        best = min(best, time.perf_counter() - t)
    return best, val


def run(depths=(4, 50, 100), points: int = 1000, repeat: int = 3, y: float = 1e-9) -> list[dict]:
    rows = []
    for L in depths:
        spec = NetSpec.mlp(L, 1000, "relu", sigma_w2=2.0)
        eq, m1, _ = master_equation(_model(spec))
        edge = fp.real_axis_edge(eq)
        x = _grid(edge * 1e-10, 1.02 * edge, edge, points)[::-1]  # decreasing: the baseline sweeps down
        z = x + 1j * y / m1
        t_lily, (m_lily, info) = _best(lambda z=z, eq=eq, edge=edge: fp.lilypads(eq, z, edge), repeat)
        t_base, m_base = _best(lambda z=z, eq=eq: baseline(eq, z), repeat)
        wrong = np.abs(m_base - m_lily) > 1e-6 * (1 + np.abs(m_lily))
        # sigprop checked by a second certified route (untimed): an independent doubling start and
        # vertical descent at every point, no chaining between points
        m_vert, _ = fp.lilypads(eq, z, edge, chain=False)
        sig_wrong = np.abs(m_vert - m_lily) > 1e-10 * (1 + np.abs(m_lily))
        G_base = (1 + m_base) / z
        G_lily = (1 + m_lily) / z
        # independent check of which values are right: m1 from integrating each density on the
        # grid must be the closed-form m1 = 1 (ReLU at the EOC)
        xs = x[::-1]

        def m1_of(m, xs=xs, z=z):
            rho = np.maximum(-((1 + m) / z).imag[::-1] / np.pi, 0.0)
            f = rho * xs * xs
            return float(np.sum(0.5 * (f[1:] + f[:-1]) * np.diff(np.log(xs))))

        rows.append(
            {
                "L": L,
                "points": points,
                "sigprop_s": t_lily,
                "baseline_s": t_base,
                "speedup": t_base / t_lily,
                "baseline_wrong_points": int(wrong.sum()),
                "sigprop_wrong_points": int(sig_wrong.sum()),
                "baseline_ImG_positive": int(np.sum(G_base.imag > 1e-12 * np.abs(G_base))),
                "sigprop_ImG_positive": int(np.sum(G_lily.imag > 1e-12 * np.abs(G_lily))),
                "sigprop_basin_tests": int(info["tests"].sum()),
                "m1_closed_form": 1.0,
                "m1_sigprop_density": m1_of(m_lily),
                "m1_baseline_density": m1_of(m_base),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--points", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=3, help="best of N runs (default 3)")
    p.add_argument("--depths", type=int, nargs="+", default=[4, 50, 100])
    p.add_argument("--no-empirical", action="store_true", help="skip benchmarks/bench_jacobian.py")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    rows = run(tuple(a.depths), a.points, a.repeat)
    result: dict = {"theory": rows, "empirical": None}
    if not a.json:
        print(
            f"{'L':>4} {'points':>6} {'sigprop [s]':>12} {'numpy.roots [s]':>16} {'speedup':>8} "
            f"{'baseline wrong':>15} {'baseline ImG>0':>15} {'sigprop wrong':>14} {'sigprop ImG>0':>14}"
        )
        for r in rows:
            print(
                f"{r['L']:>4} {r['points']:>6} {r['sigprop_s']:>12.4f} {r['baseline_s']:>16.4f} {r['speedup']:>7.1f}x "
                f"{r['baseline_wrong_points']:>15} {r['baseline_ImG_positive']:>15} "
                f"{r['sigprop_wrong_points']:>14} {r['sigprop_ImG_positive']:>14}"
            )
        for r in rows:
            print(
                f"L={r['L']}: m1 by integrating the density: sigprop {r['m1_sigprop_density']:.4f}, "
                f"baseline {r['m1_baseline_density']:.4f} (closed form 1)"
            )
        ok = all(r["speedup"] >= 20 and r["sigprop_ImG_positive"] == 0 and r["sigprop_wrong_points"] == 0 for r in rows)
        print(f"target (>= 20x, no wrong sigprop point): {'met' if ok else 'NOT met'}")
    bench_j = Path(__file__).with_name("bench_jacobian.py")
    if not a.no_empirical and bench_j.exists():
        spec = importlib.util.spec_from_file_location("bench_jacobian", bench_j)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        if a.json:
            with contextlib.redirect_stdout(io.StringIO()):
                result["empirical"] = mod.main(["--quick"])
        else:
            print("\nempirical half (benchmarks/bench_jacobian.py --quick):")
            result["empirical"] = mod.main(["--quick"])
    if a.json:
        print(json.dumps(result, default=float))
    return result


if __name__ == "__main__":  # pragma: no cover
    main()
