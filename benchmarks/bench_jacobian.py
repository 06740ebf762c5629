"""Benchmark: the Jacobian spectrum of a deep MLP, explicit product vs autograd.

For one random ReLU MLP at the Edge of Chaos (default width 1000, depth 50, float64) and one
input, time

* ``explicit``: :func:`sigprop.jacobian.input_output_jacobian` (the product
  ``D_L W_L ... D_1 W_1`` with batched matmuls) + :func:`sigprop.jacobian.singular_values`;
* ``autograd``: ``torch.autograd.functional.jacobian(net, x)`` (default: one backward pass per
  output, ``vectorize=False``) + the same SVD;
* optionally ``autograd_vectorized`` (``--vectorize``: ``vectorize=True``, vmap over outputs),

check that the two Jacobians agree, and print the times and the ratio (target >= 10x).
``--quick`` uses width 200, depth 10. Run: ``python benchmarks/bench_jacobian.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from sigprop.jacobian import build_network, input_output_jacobian, random_input, singular_values
from sigprop.netspec import NetSpec


def _time(fn, repeat: int) -> tuple[float, float, object]:
    """Best wall time and best process CPU time (all threads) over ``repeat`` calls, and the
    last result. CPU time is less sensitive to other processes sharing the cores."""
    best, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best, best_cpu, out


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns the measured numbers (also printed)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="width 200, depth 10 (seconds)")
    p.add_argument("--width", type=int, default=None, help="width N (default 1000, quick 200)")
    p.add_argument("--depth", type=int, default=None, help="depth L (default 50, quick 10)")
    p.add_argument("--repeat", type=int, default=None, help="repeats of the explicit route (best time)")
    p.add_argument("--vectorize", action="store_true", help="also time autograd with vectorize=True")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    width = args.width or (200 if args.quick else 1000)
    depth = args.depth or (10 if args.quick else 50)
    repeat = args.repeat or (3 if args.quick else 2)
    if args.threads:
        torch.set_num_threads(args.threads)

    spec = NetSpec.mlp(depth, width, "relu", sigma_w2=2.0)
    net = build_network(spec, seed=0)
    x = random_input(spec, 1, 0)

    def explicit():
        J = input_output_jacobian(net, x)
        return J, singular_values(J)

    def autograd(vectorize: bool):
        def run():
            J = torch.autograd.functional.jacobian(net, x[0], vectorize=vectorize)
            return J, singular_values(J)

        return run

    t_exp, c_exp, (J_exp, s_exp) = _time(explicit, repeat)
    t_ag, c_ag, (J_ag, s_ag) = _time(autograd(False), 1)
    err = float((J_exp[0] - J_ag).abs().max() / J_ag.abs().max())
    sv_err = float(((s_exp[0] - s_ag).abs().max()) / s_ag.max())
    out = {
        "width": width,
        "depth": depth,
        "dtype": "float64",
        "threads": torch.get_num_threads(),
        "explicit_s": t_exp,
        "autograd_s": t_ag,
        "speedup": t_ag / t_exp,
        "explicit_cpu_s": c_exp,
        "autograd_cpu_s": c_ag,
        "speedup_cpu": c_ag / c_exp,
        "max_rel_diff_J": err,
        "max_rel_diff_sv": sv_err,
    }
    if args.vectorize:
        t_vec, c_vec, _ = _time(autograd(True), 1)
        out["autograd_vectorized_s"] = t_vec
        out["autograd_vectorized_cpu_s"] = c_vec
        out["speedup_vs_vectorized"] = t_vec / t_exp
    if args.json:
        print(json.dumps(out))
    else:
        print(f"Jacobian spectrum, ReLU MLP width {width} depth {depth}, float64, {out['threads']} threads")
        print("                                  wall      CPU (all threads)")
        print(f"  explicit product + SVD      : {t_exp:8.3f} s {c_exp:8.3f} s")
        print(f"  autograd.functional.jacobian: {t_ag:8.3f} s {c_ag:8.3f} s   (+ SVD)")
        if args.vectorize:
            print(f"  autograd (vectorize=True)   : {t_vec:8.3f} s {c_vec:8.3f} s   (+ SVD)")
        print(f"  speedup                     : {out['speedup']:8.1f} x {out['speedup_cpu']:8.1f} x")
        print(f"  agreement: max |dJ|/max|J| = {err:.1e}, max |ds|/s_max = {sv_err:.1e}")
    if err > 1e-8:
        raise SystemExit(f"the two Jacobians disagree (relative difference {err:.1e})")
    return out


if __name__ == "__main__":
    main()
