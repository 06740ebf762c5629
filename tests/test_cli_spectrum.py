"""``sigprop spectrum`` command line (sigprop.cli_spectrum)."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from sigprop.cli_spectrum import add_parser
from sigprop.errors import NumericalError
from sigprop.netspec import NetSpec
from sigprop.theory.meanfield import eoc
from sigprop.theory.spectrum import jacobian_spectrum


def run(argv: list[str]) -> int:
    """Build a parser with the spectrum subcommand (as the lead's build_parser does) and mimic
    sigprop.cli.main: ValueError / NumericalError / OSError -> one stderr line, status 2."""
    from sigprop.cli import _Parser

    p = _Parser(prog="sigprop")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    add_parser(sub)
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, NumericalError, OSError) as exc:
        sys.stderr.write(f"sigprop {args.command}: error: {str(exc).replace(chr(10), ' ')}\n")
        return 2


def test_json_contract_relu_default_sigma_w2(capsys):
    rc = run(
        [
            "spectrum",
            "--activation", "relu",
            "--depth", "3", "--width", "100",
            "--points", "60",
            "--cdf-at", "1e-3", "0.5", "2",
            "--quantiles", "0.5", ".9",
            "--json",
        ]
    )  # fmt: skip
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"x", "density", "atom_at_zero", "cdf", "quantiles", "moments", "empirical"}
    assert len(out["x"]) == len(out["density"]) == 60
    # keys exactly as given on the command line
    assert list(out["cdf"]) == ["1e-3", "0.5", "2"]
    assert list(out["quantiles"]) == ["0.5", ".9"]
    assert out["empirical"] is None
    # default sigma_w2 is relu's EOC value 2: m1 = 1, m2 = 1 + 2L (closed form, independent)
    assert out["moments"]["m1"] == pytest.approx(1.0)
    assert out["moments"]["m2"] == pytest.approx(7.0)
    assert out["atom_at_zero"] == pytest.approx(0.5)
    assert out["quantiles"]["0.5"] == 0.0  # p <= atom
    F = [out["cdf"][k] for k in ("1e-3", "0.5", "2")]
    assert 0.5 <= F[0] <= F[1] <= F[2] <= 1.0


def test_widths_and_eoc_default_match_api(capsys):
    sb = 0.2
    rc = run(
        ["spectrum", "--activation", "hard_tanh", "--widths", "100", "200", "50", "--sigma-b2", str(sb),
         "--points", "40", "--cdf-at", "0.1", "--json"]
    )  # fmt: skip
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    sw = eoc("hard_tanh", sigma_b2=sb).sigma_w2
    ref = jacobian_spectrum(
        NetSpec(widths=(100, 200, 50), activation="hard_tanh", sigma_w2=sw, sigma_b2=sb), points=40, cdf_at=[0.1]
    )
    assert out["moments"]["m1"] == pytest.approx(ref.moments["m1"])
    assert out["cdf"]["0.1"] == pytest.approx(ref.cdf[0.1])
    # the 50-wide last layer makes J^T J rank-deficient: atom >= 1 - 50/100
    assert out["atom_at_zero"] >= 0.5


def test_widths_relu_closed_form(capsys):
    """--widths against the ReLU closed form at sigma_w2 = 2 (independent of jacobian_spectrum):
    m1 = N_L / N_0, m2 / m1^2 = 1 + sum_l (N_0 / N_l) E[D^4] / E[D^2]^2 = 1 + 2 (100/200 + 100/50),
    atom = 1 - min_l P(D != 0) N_l / N_0 = 1 - 25/100."""
    rc = run(["spectrum", "--activation", "relu", "--widths", "100", "200", "50", "--points", "40", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["moments"]["m1"] == pytest.approx(0.5)
    assert out["moments"]["m2"] == pytest.approx(0.25 * 6.0)
    assert out["atom_at_zero"] == pytest.approx(0.75)


def test_tanh_narrowing_last_layer_runs(capsys):
    rc = run(["spectrum", "--activation", "tanh", "--widths", "100", "100", "50", "--points", "40", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["atom_at_zero"] == pytest.approx(0.5)


def test_negative_cdf_at_is_zero(capsys):
    rc = run(["spectrum", "--activation", "relu", "--depth", "2", "--width", "40", "--points", "30",
              "--cdf-at", "-1", "--json"])  # fmt: skip
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["cdf"] == {"-1": 0.0}


def test_orthogonal_and_params(capsys):
    rc = run(
        ["spectrum", "--activation", "relu_tau", "--param", "tau=0.3", "--depth", "2", "--width", "80",
         "--sigma-w2", "2.5", "--weights", "orthogonal", "--points", "30", "--json"]
    )  # fmt: skip
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["atom_at_zero"] > 0.5  # P(h > 0.3) < 1/2


def test_readable_summary(capsys):
    rc = run(
        ["spectrum", "--activation", "relu", "--depth", "2", "--width", "50", "--points", "30", "--quantiles", "0.9"]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "m1" in text and "atom at 0" in text and "quantile 0.9" in text


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--activation", "relu", "--widths", "10", "-5"], "positive"),
        (["--activation", "nosuch", "--depth", "2", "--width", "10"], "unknown activation"),
        (
            ["--activation", "relu", "--depth", "2", "--width", "10", "--quantiles", "1.5"],
            "quantiles must lie in (0, 1)",
        ),
        (["--activation", "relu", "--depth", "2", "--width", "10", "--sigma-w2", "0"], "sigma_w2 must be > 0"),
        (["--activation", "relu", "--depth", "2", "--width", "10", "--q0", "0"], "q0 must be a finite number > 0"),
        (["--activation", "relu", "--depth", "2", "--width", "10", "--points", "3"], "points must be an int >= 8"),
        (["--activation", "relu", "--depth", "2", "--width", "10", "--sigma-w2", "1", "--sigma-b2", "-1"], ">= 0"),
        (["--activation", "hard_tanh", "--depth", "3", "--width", "200", "--weights", "orthogonal"], "point mass"),
        (["--activation", "relu", "--depth", "2", "--width", "200", "--weights", "orthogonal"], "point masses"),
        (["--activation", "relu", "--depth", "2", "--width", "10", "--quantiles", "abc"], "not a number"),
        (["--activation", "relu", "--depth", "2", "--width", "10", "--sigma-b2", "0.5"], "no EOC"),
        (["--activation", "relu", "--depth", "2"], "--width"),
        (["--activation", "relu", "--depth", "0", "--width", "10"], "--depth"),
        (["--activation", "relu", "--depth", "2", "--width", "10", "--widths", "10", "10"], "not both"),
        (["--activation", "relu", "--depth", "400", "--width", "10", "--sigma-w2", "1e4"], ""),
    ],
)
def test_bad_input_one_line_exit_2(capsys, argv, needle):
    rc = run(["spectrum", *argv])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sigprop spectrum: error:")
    assert needle in err


def test_plot_writes_png(tmp_path, capsys):
    path = tmp_path / "spec.png"
    rc = run(
        ["spectrum", "--activation", "relu", "--depth", "2", "--width", "50", "--points", "30", "--plot", str(path)]
    )
    assert rc == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {path}" in capsys.readouterr().out


@pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or importlib.util.find_spec("sigprop.jacobian") is None,
    reason="--empirical needs torch and sigprop.jacobian",
)
def test_empirical_rekeyed_and_close_to_theory(tmp_path, capsys):
    path = tmp_path / "both.png"
    rc = run(
        ["spectrum", "--activation", "relu", "--widths", "60", "120", "120", "--points", "40",
         "--cdf-at", "0.5", "2", "--quantiles", ".9", "--empirical", "--samples", "6", "--seed", "3",
         "--plot", str(path), "--json"]
    )  # fmt: skip
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    emp = out["empirical"]
    assert emp["samples"] == 6 and emp["seed"] == 3
    assert list(emp["cdf"]) == ["0.5", "2"] and list(emp["quantiles"]) == [".9"]
    # 360 eigenvalues: DKW(alpha=1e-3) ~ 0.10, plus 0.03 finite width
    for k in ("0.5", "2"):
        assert abs(emp["cdf"][k] - out["cdf"][k]) < 0.13
    assert path.stat().st_size > 0
