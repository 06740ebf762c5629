"""Benchmark: the seed-004 Table-2 calibration grid, scipy baseline vs sigprop.

Every cell (family, sparsity s, target slope V'(q*)) at q* = 1 needs tau, the clipping
magnitude m with V'(q*; m) = slope at the EOC, sigma_w2, sigma_b2, V'(q*) and V''(q*).

* baseline: a plain implementation, cell by cell in Python loops, with
  ``scipy.integrate.quad`` (adaptive, kinks passed as ``points``) for every Gaussian
  expectation and ``scipy.optimize.brentq`` for m;
* sigprop: ``calibrate_sparse(kind, sparsities, slopes, q_star=1.0,
  fixed_point_analysis=False)`` once per family (and, reported separately, with
  ``fixed_point_analysis=True``).

Both run in the same process; the script checks that they agree (tau, m, V'' to 1e-6) and
prints the timings (median of ``--repeat`` runs, ``time.perf_counter``) and whether the
targets are met: sigprop >= 200x faster than the baseline and the whole grid in < 0.1 s.

Run: ``.venv/bin/python benchmarks/bench_meanfield.py [--repeat N] [--profile]``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import math
import pstats
import statistics
import sys
import time

from scipy import integrate, optimize, special

from sigprop.theory.calibrate import M_MAX, M_MIN, calibrate_sparse

Q_STAR = 1.0
SLOPES = (0.5, 0.7, 0.9)
GRID = {
    "crelu": (0.6, 0.7, 0.8, 0.85),
    "cst": (0.5, 0.6, 0.7, 0.8, 0.85),
}
#: integration range in z; the standard normal density beyond |z| = 12 is below 1e-31
L_Z = 12.0
TOL = 1e-6
TARGET_RATIO = 200.0
TARGET_SECONDS = 0.1
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)


# ----------------------------------------------------------------------------------------
# (a) baseline: scipy quad + brentq, cell by cell
# ----------------------------------------------------------------------------------------
def _activation(kind: str, tau: float, m: float):
    """phi, phi' (scalar Python functions) and the kinks of crelu / cst."""
    if kind == "crelu":

        def phi(x):
            return min(max(x - tau, 0.0), m)

        def dphi(x):
            return 1.0 if tau < x < tau + m else 0.0

        return phi, dphi, (tau, tau + m)

    def phi(x):
        return math.copysign(min(max(abs(x) - tau, 0.0), m), x)

    def dphi(x):
        return 1.0 if tau < abs(x) < tau + m else 0.0

    return phi, dphi, (-tau - m, -tau, tau, tau + m)


def _gauss(f, weight, points, sq):
    """E[f(sqrt(q) Z) weight(Z)] by adaptive quadrature in z, kinks as breakpoints."""

    def integrand(z):
        return f(sq * z) * weight(z) * _INV_SQRT2PI * math.exp(-0.5 * z * z)

    return integrate.quad(integrand, -L_Z, L_Z, points=points)[0]


def _one(z):
    return 1.0


def _h2(z):
    return z * z - 1.0


def _h4(z):
    z2 = z * z
    return z2 * z2 - 6.0 * z2 + 3.0


def baseline_cell(kind: str, s: float, slope: float, q: float = Q_STAR) -> dict:
    """tau, m, sigma_w2, sigma_b2, V'(q*), V''(q*) for one cell."""
    sq = math.sqrt(q)
    tau = sq * float(special.ndtri(s)) if kind == "crelu" else math.sqrt(2.0 * q) * float(special.erfinv(s))

    def eoc(m):
        phi, dphi, kinks = _activation(kind, tau, m)
        pts = [k / sq for k in kinks]
        sw = 1.0 / _gauss(lambda x: dphi(x) ** 2, _one, pts, sq)
        return phi, pts, sw

    def dv(m):
        # V'(q) = sigma_w2 d/dq E[phi(sqrt(q) Z)^2] = sigma_w2 E[phi^2 (Z^2 - 1)] / (2 q)
        phi, pts, sw = eoc(m)
        return sw * _gauss(lambda x: phi(x) ** 2, _h2, pts, sq) / (2.0 * q)

    m = optimize.brentq(lambda m: dv(m) - slope, M_MIN * sq, M_MAX * sq)
    phi, pts, sw = eoc(m)
    sq_phi = lambda x: phi(x) ** 2  # noqa: E731
    e0 = _gauss(sq_phi, _one, pts, sq)
    d1 = sw * _gauss(sq_phi, _h2, pts, sq) / (2.0 * q)
    d2 = sw * _gauss(sq_phi, _h4, pts, sq) / (4.0 * q * q)
    return {"tau": tau, "m": m, "sigma_w2": sw, "sigma_b2": q - sw * e0, "dV": d1, "d2V": d2}


def baseline_family(kind: str) -> list[dict]:
    return [baseline_cell(kind, s, v) for s in GRID[kind] for v in SLOPES]


# ----------------------------------------------------------------------------------------
# (b) sigprop
# ----------------------------------------------------------------------------------------
def sigprop_family(kind: str, fixed_point_analysis: bool = False) -> list[dict]:
    out = calibrate_sparse(kind, GRID[kind], SLOPES, q_star=Q_STAR, fixed_point_analysis=fixed_point_analysis)
    return [c.to_dict() for c in out]


# ----------------------------------------------------------------------------------------
def _median_time(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def _compare(kind: str, base: list[dict], lib: list[dict]) -> tuple[dict, bool]:
    keys = ("tau", "m", "sigma_w2", "sigma_b2", "dV", "d2V")
    diffs = {k: max(abs(b[k] - c[k]) for b, c in zip(base, lib, strict=True)) for k in keys}
    ok = all(diffs[k] <= TOL for k in ("tau", "m", "d2V"))
    return diffs, ok


def _print_grid(kind: str, base: list[dict], lib: list[dict]) -> None:
    print(f"\n{kind}: baseline (b) vs sigprop (s)")
    print(f"{'s':>5} {'slope':>5} {'tau':>10} {'m (b)':>12} {'m (s)':>12} {'sigma_w2':>10} {'sigma_b2':>10} "
          f"{'dV (s)':>8} {'d2V (b)':>12} {'d2V (s)':>12}")  # fmt: skip
    cells = [(s, v) for s in GRID[kind] for v in SLOPES]
    for (s, v), b, c in zip(cells, base, lib, strict=True):
        print(
            f"{s:>5.2f} {v:>5.2f} {c['tau']:>10.6f} {b['m']:>12.8f} {c['m']:>12.8f} {c['sigma_w2']:>10.6f} "
            f"{c['sigma_b2']:>10.6f} {c['dV']:>8.5f} {b['d2V']:>12.8f} {c['d2V']:>12.8f}"
        )


def _profile(repeat: int) -> None:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(repeat):
        for kind in GRID:
            sigprop_family(kind)
    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf).strip_dirs().sort_stats("cumulative")
    stats.print_stats(25)
    stats.sort_stats("tottime").print_stats(15)
    print(f"\ncProfile of calibrate_sparse over the whole grid, {repeat} repeat(s):")
    print(buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="timing repeats (median is reported; default 5)")
    ap.add_argument("--profile", action="store_true", help="also cProfile sigprop's calibrate_sparse")
    ap.add_argument("--show-grid", action="store_true", help="print every cell of both implementations")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")

    for kind in GRID:  # warm-up: imports, first-call overheads
        sigprop_family(kind)
        sigprop_family(kind, fixed_point_analysis=True)

    rows, all_ok = [], True
    for kind in GRID:
        t_base, base = _median_time(lambda k=kind: baseline_family(k), args.repeat)
        t_lib, lib = _median_time(lambda k=kind: sigprop_family(k), args.repeat)
        t_fpa, lib_fpa = _median_time(lambda k=kind: sigprop_family(k, True), args.repeat)
        diffs, ok = _compare(kind, base, lib)
        _, ok_fpa = _compare(kind, base, lib_fpa)
        all_ok &= ok and ok_fpa
        rows.append((kind, len(base), t_base, t_lib, t_fpa, diffs, ok and ok_fpa))
        if args.show_grid:
            _print_grid(kind, base, lib)

    n_cells = sum(r[1] for r in rows)
    print(f"\nseed-004 Table-2 grid, q* = {Q_STAR:g}, slopes {list(SLOPES)}; median of {args.repeat} repeat(s)")
    print("\nagreement, max |baseline - sigprop| over the family's cells:")
    print(
        f"{'family':<7} {'tau':>9} {'m':>9} {'sigma_w2':>9} {'sigma_b2':>9} {'dV':>9} {'d2V':>9}  ok (tau, m, d2V <= 1e-6)"
    )
    for kind, _, _, _, _, d, ok in rows:
        print(
            f"{kind:<7} {d['tau']:>9.1e} {d['m']:>9.1e} {d['sigma_w2']:>9.1e} {d['sigma_b2']:>9.1e} "
            f"{d['dV']:>9.1e} {d['d2V']:>9.1e}  {ok}"
        )

    t_base = sum(r[2] for r in rows)
    t_lib = sum(r[3] for r in rows)
    t_fpa = sum(r[4] for r in rows)
    print("\ntimings (seconds):")
    print(f"{'family':<7} {'cells':>5} {'baseline':>10} {'sigprop':>10} {'ratio':>8} {'sigprop+fpa':>12} {'ratio':>8}")
    for kind, n, tb, tl, tf, _, _ in rows:
        print(f"{kind:<7} {n:>5d} {tb:>10.4f} {tl:>10.4f} {tb / tl:>7.1f}x {tf:>12.4f} {tb / tf:>7.1f}x")
    print(
        f"{'total':<7} {n_cells:>5d} {t_base:>10.4f} {t_lib:>10.4f} {t_base / t_lib:>7.1f}x "
        f"{t_fpa:>12.4f} {t_base / t_fpa:>7.1f}x"
    )
    print("(sigprop = calibrate_sparse(..., fixed_point_analysis=False); +fpa = fixed_point_analysis=True)")

    ratio_ok = t_base / t_lib >= TARGET_RATIO
    time_ok = t_lib < TARGET_SECONDS
    print("\ntargets:")
    print(f"  agreement tau, m, V'' <= {TOL:g}:         {'MET' if all_ok else 'NOT MET'}")
    print(
        f"  speed-up >= {TARGET_RATIO:g}x:                  {'MET' if ratio_ok else 'NOT MET'} ({t_base / t_lib:.1f}x)"
    )
    print(
        f"  whole grid < {TARGET_SECONDS:g} s of library time: {'MET' if time_ok else 'NOT MET'} "
        f"({t_lib:.4f} s; with fixed-point analysis {t_fpa:.4f} s)"
    )

    if args.profile:
        _profile(args.repeat)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
