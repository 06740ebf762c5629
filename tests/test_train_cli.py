"""`sigprop train`: the issue's accuracy contract on real data, the JSON shape and errors."""

import json

import pytest
import torch

from sigprop.cli import main

RESULT_KEYS = {
    "test_accuracy",
    "best_val_accuracy",
    "best_test_accuracy",
    "steps",
    "epochs",
    "diverged",
    "diverged_step",
    "seconds",
    "config",
}


def test_mlp_on_digits_reaches_95_percent(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model", "mlp", "--depth", "3", "--width", "256", "--activation", "relu", "--data", "digits"]
    code = main([*argv, "--epochs", "30", "--out", str(out), "--json"])
    res = json.loads(capsys.readouterr().out)
    assert code == 0 and RESULT_KEYS <= set(res)
    assert res["test_accuracy"] >= 0.95 and not res["diverged"]
    assert 0 <= res["best_val_accuracy"] <= 1 and res["config"]["init"] == "eoc" and res["config"]["sigma_w2"] == 2.0
    # the files of the contract
    assert json.loads((out / "result.json").read_text()) == res
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) >= 30 and rows[-1]["step"] == res["steps"]
    state = torch.load(out / "model.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state.values())


def test_defaults_work_and_resume_of_a_finished_run_is_a_no_op(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "mlp", "--data", "digits", "--epochs", "2", "--out", str(out)]) == 0
    first = json.loads((out / "result.json").read_text())
    assert (
        main(["train", "--model", "mlp", "--data", "digits", "--epochs", "2", "--out", str(out), "--resume", "--json"])
        == 0
    )
    again = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert again["test_accuracy"] == first["test_accuracy"] and again["steps"] == first["steps"]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--model", "nosuch"], "known models"),
        (["--data", "nosuch"], "known data sets"),
        (["--data", "mnist"], "--data-dir"),
        (["--data", "mnist", "--data-dir", "."], "IDX"),
        (["--init", "nosuch"], "allowed"),
        (["--model", "resnet20", "--depth", "7"], "depth"),
        (["--activation", "nosuch"], "known activations"),
        (["--init", "gaussian"], "sigma_w2"),
    ],
)
def test_bad_input_one_line_status_2(tmp_path, capsys, argv, needle):
    code = main(["train", *argv, "--epochs", "1", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and needle in err


def test_resume_refuses_other_settings(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", "--data", "digits", "--epochs", "1", "--out", out]) == 0
    code = main(["train", "--data", "digits", "--epochs", "1", "--width", "64", "--out", out, "--resume"])
    assert code == 2 and "different settings" in capsys.readouterr().err
