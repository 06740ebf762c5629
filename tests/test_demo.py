"""The demo job runs end to end and writes real figures and records."""

import json

import pytest

from sigprop.demo import run_demo


def test_demo_writes_plots_and_records(tmp_path, capsys):
    files = run_demo(tmp_path)
    pngs = [f for f in files if f.suffix == ".png"]
    assert len(pngs) >= 5 and all(f.stat().st_size > 10_000 for f in pngs)
    records = json.loads((tmp_path / "eoc_points.json").read_text())
    by_case = {r["case"]: r for r in records}
    # every demo point is on the EOC: chi_1 = 1
    assert all(r["chi1"] == pytest.approx(1.0, abs=1e-9) for r in records)
    # seed 004 Fig. 4(b): CST at s = 0.85, V'(q*) = 0.9 has extra fixed points -> not stable
    assert by_case["cst_s0.85_v0.9"]["stable"] is False and len(by_case["cst_s0.85_v0.9"]["other_fixed_points"]) == 2
    assert str(tmp_path) in capsys.readouterr().out
