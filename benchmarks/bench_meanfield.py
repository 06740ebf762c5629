"""Benchmark: the seed-004 Table-2 calibration grid, scipy baseline vs sigprop.

Every cell (family, sparsity s, target slope V'(q*)) at q* = 1 needs tau, the clipping
magnitude m with V'(q*; m) = slope at the EOC, sigma_w2, sigma_b2, V'(q*) and V''(q*).

* baseline: a plain implementation, cell by cell in Python loops, with
  ``scipy.integrate.quad`` (adaptive, kinks passed as ``points``) for every Gaussian
  expectation and ``scipy.optimize.brentq`` for m;
* sigprop: the vectorized core ``calibrate_grid(kind, sparsities, slopes, q_star=1.0)`` once
  per family (arrays in, a dict of arrays out: the same six numbers per cell); reported
  separately, ``calibrate_sparse(..., fixed_point_analysis=False)`` (the same plus one
  ``SparseCalibration`` record and its ``to_dict()`` per cell) and
  ``calibrate_sparse(..., fixed_point_analysis=True)`` (plus the fixed-point count and global
  stability of every cell, which the baseline does not compute).

Both run in the same process; the script checks that they agree (tau, m, V'' to 1e-6) and
prints the timings and whether the targets are met: sigprop >= 200x faster than the baseline
and the whole grid in < 0.1 s. Timing is the same for every contender (``timeit.Timer``:
each sample runs the function ``number`` times, ``number`` chosen as in ``Timer.autorange``
so that a sample lasts >= 0.02 s, garbage collection off during a sample as in ``timeit``;
the samples of all contenders are interleaved so that they see the same machine load); the
ratios use the median per-call time over ``--repeat`` samples, and the minimum is printed too.

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
import timeit

from scipy import integrate, optimize, special

from sigprop.theory.calibrate import M_MAX, M_MIN, calibrate_grid, calibrate_sparse

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
#: minimum duration of one timing sample (seconds)
MIN_SAMPLE = 0.02
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
_KEYS = ("tau", "m", "sigma_w2", "sigma_b2", "dV", "d2V")


def sigprop_family(kind: str) -> dict:
    """The timed core: one vectorized call per family."""
    return calibrate_grid(kind, GRID[kind], SLOPES, q_star=Q_STAR)


def sigprop_records(kind: str, fixed_point_analysis: bool = False) -> list[dict]:
    out = calibrate_sparse(kind, GRID[kind], SLOPES, q_star=Q_STAR, fixed_point_analysis=fixed_point_analysis)
    return [c.to_dict() for c in out]


def _cells(grid: dict) -> list[dict]:
    """``calibrate_grid``'s arrays as one dict per cell (outside the timings)."""
    cols = {k: grid[k].tolist() for k in _KEYS}
    return [dict(zip(_KEYS, vals, strict=True)) for vals in zip(*cols.values(), strict=True)]


# ----------------------------------------------------------------------------------------
def _number(fn) -> int:
    """Calls per sample, as ``timeit.Timer.autorange``: 1, 2, 5, 10, 20, ... until one
    sample lasts >= MIN_SAMPLE."""
    timer = timeit.Timer(fn)
    i = 1
    while True:
        for j in (1, 2, 5):
            number = i * j
            if timer.timeit(number) >= MIN_SAMPLE:
                return number
        i *= 10


def _interleaved_times(fns: dict, repeat: int) -> dict:
    """Per-call seconds of every function over ``repeat`` interleaved samples:
    {name: (median, min)}."""
    timers = {name: (timeit.Timer(fn), _number(fn)) for name, fn in fns.items()}
    samples = {name: [] for name in fns}
    for _ in range(repeat):
        for name, (timer, number) in timers.items():
            samples[name].append(timer.timeit(number) / number)
    return {name: (statistics.median(s), min(s)) for name, s in samples.items()}


def _compare(kind: str, base: list[dict], lib: list[dict]) -> tuple[dict, bool]:
    diffs = {k: max(abs(b[k] - c[k]) for b, c in zip(base, lib, strict=True)) for k in _KEYS}
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
    print(f"\ncProfile of calibrate_grid over the whole grid, {repeat} repeat(s):")
    print(buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="timing samples (median is reported; default 5)")
    ap.add_argument("--profile", action="store_true", help="also cProfile sigprop's calibrate_grid")
    ap.add_argument("--show-grid", action="store_true", help="print every cell of both implementations")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")

    for kind in GRID:  # warm-up: imports, first-call overheads
        sigprop_family(kind)
        sigprop_records(kind)
        sigprop_records(kind, fixed_point_analysis=True)

    rows, all_ok = [], True
    for kind in GRID:
        times = _interleaved_times(
            {
                "base": lambda k=kind: baseline_family(k),
                "lib": lambda k=kind: sigprop_family(k),
                "rec": lambda k=kind: sigprop_records(k),
                "fpa": lambda k=kind: sigprop_records(k, True),
            },
            args.repeat,
        )
        base, lib = baseline_family(kind), _cells(sigprop_family(kind))
        diffs, ok = _compare(kind, base, lib)
        ok_rec = _compare(kind, base, sigprop_records(kind))[1]
        ok_fpa = _compare(kind, base, sigprop_records(kind, True))[1]
        all_ok &= ok and ok_rec and ok_fpa
        rows.append((kind, len(base), times, diffs, ok and ok_rec and ok_fpa))
        if args.show_grid:
            _print_grid(kind, base, lib)

    n_cells = sum(r[1] for r in rows)
    print(f"\nseed-004 Table-2 grid, q* = {Q_STAR:g}, slopes {list(SLOPES)}; {args.repeat} interleaved sample(s)")
    print("\nagreement, max |baseline - sigprop| over the family's cells:")
    print(
        f"{'family':<7} {'tau':>9} {'m':>9} {'sigma_w2':>9} {'sigma_b2':>9} {'dV':>9} {'d2V':>9}  ok (tau, m, d2V <= 1e-6)"
    )
    for kind, _, _, d, ok in rows:
        print(
            f"{kind:<7} {d['tau']:>9.1e} {d['m']:>9.1e} {d['sigma_w2']:>9.1e} {d['sigma_b2']:>9.1e} "
            f"{d['dV']:>9.1e} {d['d2V']:>9.1e}  {ok}"
        )

    def total(name: str, stat: int) -> float:
        return sum(r[2][name][stat] for r in rows)

    t_base, t_lib, t_rec, t_fpa = (total(name, 0) for name in ("base", "lib", "rec", "fpa"))
    print("\ntimings (seconds per call, median of the samples):")
    print(
        f"{'family':<7} {'cells':>5} {'baseline':>10} {'sigprop':>10} {'ratio':>8} {'records':>10} {'ratio':>8} "
        f"{'records+fpa':>12} {'ratio':>8}"
    )
    for kind, n, t, _, _ in rows:
        tb, tl, tr, tf = (t[name][0] for name in ("base", "lib", "rec", "fpa"))
        print(
            f"{kind:<7} {n:>5d} {tb:>10.4f} {tl:>10.6f} {tb / tl:>7.1f}x {tr:>10.6f} {tb / tr:>7.1f}x "
            f"{tf:>12.4f} {tb / tf:>7.1f}x"
        )
    print(
        f"{'total':<7} {n_cells:>5d} {t_base:>10.4f} {t_lib:>10.6f} {t_base / t_lib:>7.1f}x {t_rec:>10.6f} "
        f"{t_base / t_rec:>7.1f}x {t_fpa:>12.4f} {t_base / t_fpa:>7.1f}x"
    )
    m_base, m_lib = total("base", 1), total("lib", 1)
    print(
        f"{'min':<7} {n_cells:>5d} {m_base:>10.4f} {m_lib:>10.6f} {m_base / m_lib:>7.1f}x  (minimum over the samples)"
    )
    print(
        "(sigprop = calibrate_grid, the vectorized core; records = calibrate_sparse(..., "
        "fixed_point_analysis=False) + to_dict(); +fpa = fixed_point_analysis=True)"
    )

    ratio_ok = t_base / t_lib >= TARGET_RATIO
    time_ok = t_lib < TARGET_SECONDS
    print("\ntargets:")
    print(f"  agreement tau, m, V'' <= {TOL:g}:         {'MET' if all_ok else 'NOT MET'}")
    print(
        f"  speed-up >= {TARGET_RATIO:g}x:                  {'MET' if ratio_ok else 'NOT MET'} ({t_base / t_lib:.1f}x)"
    )
    print(
        f"  whole grid < {TARGET_SECONDS:g} s of library time: {'MET' if time_ok else 'NOT MET'} "
        f"({t_lib:.6f} s; as records {t_rec:.6f} s; with fixed-point analysis {t_fpa:.4f} s)"
    )

    if args.profile:
        _profile(args.repeat)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
