"""The command line: JSON contracts, readable tables, and one-line errors with status 2."""

import json
import subprocess
import sys

import pytest
from scipy import special

from sigprop import __version__
from sigprop.cli import main

EOC_KEYS = {
    "sigma_w2",
    "sigma_b2",
    "q_star",
    "chi1",
    "dV",
    "d2V",
    "xi_q",
    "xi_c",
    "sparsity",
    "stable",
    "other_fixed_points",
}
SPARSE_KEYS = [
    "kind",
    "sparsity",
    "slope",
    "tau",
    "m",
    "sigma_w2",
    "sigma_b2",
    "q_star",
    "dV",
    "d2V",
    "n_fixed_points",
    "stable",
]


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_eoc_json_contract(capsys):
    code, out, _ = run(capsys, "eoc", "tanh", "--sigma-b2", "0.05", "--json")
    assert code == 0
    d = json.loads(out)
    assert EOC_KEYS <= set(d)
    assert d["sigma_b2"] == 0.05
    assert d["chi1"] == pytest.approx(1.0, abs=1e-9)
    # q* is a fixed point of V and the EOC is not at infinite depth for V
    assert d["q_star"] > 0 and d["xi_q"] is not None and d["xi_c"] is None
    assert d["stable"] is True and d["other_fixed_points"] == []


def test_eoc_params_and_q_star(capsys):
    tau = 0.5
    code, out, _ = run(capsys, "eoc", "relu_tau", "--param", f"tau={tau}", "--q-star", "1", "--json")
    d = json.loads(out)
    assert code == 0
    # Table 1: sigma_w2 = 1/Phi(-tau/sqrt(q*)) on the EOC; V'(q*) = 1 so the point is not stable
    assert d["sigma_w2"] == pytest.approx(1 / special.ndtr(-tau), rel=1e-12)
    assert d["dV"] == pytest.approx(1.0, abs=1e-10)
    assert d["xi_q"] is None and d["stable"] is False
    assert d["sparsity"] == pytest.approx(special.ndtr(tau), rel=1e-12)


def test_relu_says_every_q_is_fixed(capsys):
    code, out, _ = run(capsys, "eoc", "relu", "--sigma-b2", "0", "--json")
    d = json.loads(out)
    assert code == 0 and d["sigma_w2"] == pytest.approx(2.0) and d["q_star"] is None
    assert "every q" in d["note"]


def test_eoc_table(capsys):
    code, out, _ = run(capsys, "eoc", "erf", "--q-star", "1")
    assert code == 0
    assert out.splitlines()[0].split()[0] == "activation"
    assert any(line.startswith("sigma_w2") for line in out.splitlines())


def test_sparse_activation_json(capsys):
    code, out, _ = run(
        capsys, "sparse-activation", "crelu", "--sparsity", "0.6", "0.85", "--slope", "0.5", "0.9", "--json"
    )
    rows = json.loads(out)
    assert code == 0 and len(rows) == 4
    assert all(list(r) == SPARSE_KEYS for r in rows)
    assert [(r["sparsity"], r["slope"]) for r in rows] == [(0.6, 0.5), (0.6, 0.9), (0.85, 0.5), (0.85, 0.9)]
    # tau from the sparsity alone: P(X < tau) = s at q* = 1
    assert rows[0]["tau"] == pytest.approx(special.ndtri(0.6), rel=1e-12)
    assert all(r["dV"] == pytest.approx(r["slope"], abs=1e-9) for r in rows)


def test_sparse_activation_unclipped_has_null_m(capsys):
    code, out, _ = run(capsys, "sparse-activation", "st_tau", "--sparsity", "0.6", "--json")
    (row,) = json.loads(out)
    assert code == 0 and row["m"] is None
    assert row["sigma_w2"] == pytest.approx(1 / (1 - 0.6), rel=1e-10)


def test_sparse_activation_table(capsys):
    code, out, _ = run(capsys, "sparse-activation", "cst", "--sparsity", "0.5", "--slope", "0.5")
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == SPARSE_KEYS and row.split()[0] == "cst"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["eoc", "nosuch", "--q-star", "1"], "known activations: relu"),
        (["eoc", "tanh", "--sigma-b2", "-1"], "sigma_b2"),
        (["eoc", "tanh", "--q-star", "-2"], "q_star"),
        (["eoc", "relu", "--sigma-b2", "0.3"], "no EOC point"),
        (["eoc", "crelu", "--param", "bogus=1", "--q-star", "1"], "allowed: tau, m"),
        (["eoc", "crelu", "--param", "tau", "--q-star", "1"], "NAME=VALUE"),
        (["sparse-activation", "crelu", "--sparsity", "1.2", "--slope", "0.5"], "between 0 and 1"),
        (["sparse-activation", "crelu", "--sparsity", "0.7", "--slope", "1.0"], "(0, 1)"),
        (["sparse-activation", "cst", "--sparsity", "0.7"], "--slope"),
        (["sparse-activation", "relu_tau", "--sparsity", "0.3"], "0.5"),
        (["eoc", "tanh"], "required"),
    ],
)
def test_bad_input_one_line_status_2(capsys, argv, needle):
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert needle in err


def test_maps_plot(tmp_path, capsys):
    png = tmp_path / "m.png"
    code, out, _ = run(
        capsys, "maps", "crelu", "--param", "tau=1.04", "--param", "m=1.74", "--q-star", "1", "--plot", str(png)
    )
    assert code == 0 and png.stat().st_size > 10_000 and str(png) in out


def test_version_and_module_entry_point():
    res = subprocess.run([sys.executable, "-m", "sigprop", "--version"], capture_output=True, text=True, check=False)
    assert res.returncode == 0 and res.stdout.strip() == f"sigprop {__version__}"
    res = subprocess.run(
        [sys.executable, "-m", "sigprop", "eoc", "nosuch", "--q-star", "1"], capture_output=True, text=True, check=False
    )
    assert res.returncode == 2 and res.stderr.count("\n") == 1
