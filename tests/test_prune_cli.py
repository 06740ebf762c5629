"""`sigprop prune` and `sigprop train --prune-from`: the JSON contract, masks that survive training,
transfer of sparsity, layer collapse, and one-line errors."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
import torch

import sigprop.pruning as pruning
from sigprop import cli
from sigprop.run_prune import (
    CONFIG_FILE,
    LOSSES,
    MODEL_FILE,
    RESCALE_METHODS,
    RESULT_FILE,
    SCOPES,
    input_output_connected,
    run_prune,
)

SMALL = ["--model", "mlp", "--depth", "2", "--width", "32", "--data", "digits"]
CONTRACT = {
    "kept_per_layer",
    "collapsed_layers",
    "critical_sparsity",
    "jacobian",
    "jacobian_dense",
    "orthogonality_score",
    "orthogonality_score_dense",
}
JAC_KEYS = {"mean", "std", "cond", "norm"}


# ------------------------------------------------------------------------------------------ helpers
@pytest.fixture
def main():
    """``sigprop.cli.main`` returning the exit status (argparse errors included)."""

    def run(argv):
        try:
            return cli.main([str(a) for a in argv])
        except SystemExit as exc:  # argparse errors
            return exc.code

    return run


def _no_nan_json(text: str):
    def bad(token):
        raise AssertionError(f"JSON holds {token}")

    return json.loads(text, parse_constant=bad)


def _prune(main, capsys, *argv):
    code = main(["prune", *argv, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return _no_nan_json(captured.out)


def _error(main, capsys, argv) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, (code, captured.err)
    assert captured.err.count("\n") == 1 and captured.out == "", captured.err
    return captured.err


def _write_idx(path, array: np.ndarray) -> None:
    code = {np.dtype(np.uint8): 0x08}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


def _fake_mnist(folder, seed: int, n_train: int = 300, n_test: int = 100) -> None:
    """Four IDX files of 28x28 uint8 images whose mean brightness pattern depends on the label."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    protos = rng.integers(0, 256, size=(10, 28, 28))
    for stem, n in (("train", n_train), ("t10k", n_test)):
        y = rng.integers(0, 10, size=n).astype(np.uint8)
        x = np.clip(protos[y] + rng.normal(0, 40, size=(n, 28, 28)), 0, 255).astype(np.uint8)
        _write_idx(folder / f"{stem}-images-idx3-ubyte", x)
        _write_idx(folder / f"{stem}-labels-idx1-ubyte", y)


def _check_contract(res: dict, n_layers: int) -> None:
    assert CONTRACT <= set(res)
    kept = res["kept_per_layer"]
    assert isinstance(kept, list) and len(kept) == n_layers
    assert all(isinstance(k, float) and 0.0 <= k <= 1.0 for k in kept)
    assert isinstance(res["collapsed_layers"], list) and all(isinstance(n, str) for n in res["collapsed_layers"])
    assert isinstance(res["critical_sparsity"], float) and 0.0 < res["critical_sparsity"] <= 1.0
    for key in ("jacobian", "jacobian_dense"):
        jac = res[key]
        assert set(jac) == JAC_KEYS
        for k in ("mean", "std", "norm"):
            assert isinstance(jac[k], float) and math.isfinite(jac[k]) and jac[k] >= 0
        assert jac["cond"] is None or (isinstance(jac["cond"], float) and jac["cond"] >= 1.0)
        assert jac["norm"] >= jac["mean"]  # the largest singular value is at least their mean
    for key in ("orthogonality_score", "orthogonality_score_dense"):
        assert isinstance(res[key], float) and res[key] >= 0


# ------------------------------------------------------------------------------------------ contract
@pytest.mark.parametrize("method", ["random", "magnitude", "snip", "grasp", "synflow"])
def test_json_contract_for_each_method(main, capsys, method):
    res = _prune(main, capsys, *SMALL, "--method", method, "--sparsity", "0.9")
    _check_contract(res, n_layers=3)  # depth 2: two hidden Linear layers and the readout
    # global masks keep exactly round((1 - s) n) of the n = 64*32 + 32*32 + 32*10 prunable weights
    sizes = [64 * 32, 32 * 32, 32 * 10]
    kept = sum(round(f * n) for f, n in zip(res["kept_per_layer"], sizes, strict=True))
    assert kept == round(0.1 * sum(sizes))
    assert res["layers"] == ["layers.0.weight", "layers.1.weight", "layers.2.weight"]
    # the dense statistics do not depend on the method
    ref = _prune(main, capsys, *SMALL, "--method", "random", "--sparsity", "0.9")
    assert res["jacobian_dense"] == ref["jacobian_dense"]
    assert res["orthogonality_score_dense"] == ref["orthogonality_score_dense"]


def test_constants_match_the_library():
    from sigprop.pruning import _names, masks, scores

    assert LOSSES == pruning.LOSSES == scores.LOSSES == _names.LOSSES
    assert tuple(pruning.RESCALE_METHODS) == RESCALE_METHODS == _names.RESCALE_METHODS
    assert SCOPES == masks.SCOPES == pruning.SCOPES == _names.SCOPES


def test_building_the_command_line_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, sigprop.cli_prune; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sparsity_zero_keeps_everything_and_changes_nothing(main, capsys):
    res = _prune(main, capsys, *SMALL, "--method", "snip", "--sparsity", "0")
    assert res["kept_per_layer"] == [1.0, 1.0, 1.0] and res["collapsed_layers"] == []
    assert res["jacobian"] == res["jacobian_dense"]
    assert res["orthogonality_score"] == pytest.approx(res["orthogonality_score_dense"], rel=1e-6, abs=1e-9)


def test_layerwise_keeps_the_same_fraction_in_every_layer(main, capsys):
    s = 0.8
    lw = _prune(main, capsys, *SMALL, "--method", "snip", "--sparsity", s, "--scope", "layerwise")
    sizes = [64 * 32, 32 * 32, 32 * 10]
    assert lw["kept_per_layer"] == [round((1 - s) * n) / n for n in sizes]
    # layerwise masks collapse a layer only at the reported critical sparsity (the readout, the
    # smallest tensor, goes first), and not just below it
    s_cr = lw["critical_sparsity"]
    at = _prune(main, capsys, *SMALL, "--method", "snip", "--sparsity", repr(s_cr), "--scope", "layerwise")
    assert at["collapsed_layers"] == ["layers.2.weight"]
    below = _prune(main, capsys, *SMALL, "--method", "snip", "--sparsity", repr(s_cr - 1e-6), "--scope", "layerwise")
    assert below["collapsed_layers"] == []
    gl = _prune(main, capsys, *SMALL, "--method", "snip", "--sparsity", s)
    assert gl["kept_per_layer"] != lw["kept_per_layer"]  # one global threshold: layers differ
    assert max(gl["kept_per_layer"]) - min(gl["kept_per_layer"]) > 0.01


def test_plot_and_table_output(main, capsys, tmp_path):
    png = tmp_path / "kept.png"
    code = main(["prune", *SMALL, "--method", "magnitude", "--sparsity", "0.5", "--plot", png])
    out = capsys.readouterr().out
    assert code == 0 and "kept per layer" in out and "collapsed layers: none" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_out_and_plot_paths_are_checked_before_scoring(main, capsys, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("scored before the paths were checked")

    monkeypatch.setattr(pruning, "snip_scores", boom)
    afile = tmp_path / "afile"
    afile.write_text("x")
    base = ["prune", *SMALL, "--method", "snip", "--sparsity", "0.5"]
    for extra, needle in (
        (["--out", afile], "--out"),
        (["--out", afile / "sub"], "--out"),
        (["--plot", tmp_path / "missing" / "k.png"], "--plot"),
        (["--plot", tmp_path], "--plot"),
    ):
        err = _error(main, capsys, [*base, *extra])
        assert needle in err and str(afile if "--out" in extra else tmp_path) in err
    assert afile.read_text() == "x"


# ------------------------------------------------------------------------------------------ --out, train --prune-from
def test_out_then_train_prune_from_keeps_the_mask(main, capsys, tmp_path):
    pdir, tdir = tmp_path / "pruned", tmp_path / "trained"
    res = _prune(main, capsys, *SMALL, "--method", "snip", "--sparsity", "0.8", "--out", pdir)
    assert json.loads((pdir / RESULT_FILE).read_text()) == res
    assert json.loads((pdir / CONFIG_FILE).read_text())["method"] == "snip"
    saved = torch.load(pdir / MODEL_FILE, weights_only=True)
    masks = {k: v for k, v in saved.items() if k.endswith("weight_mask")}
    assert len(masks) == 3

    code = main(["train", "--prune-from", pdir, "--epochs", "2", "--out", tdir, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    trained = _no_nan_json(captured.out)
    assert trained["config"]["prune_from"]["method"] == "snip"
    assert trained["config"]["model"] == "mlp" and trained["config"]["width"] == 32
    state = torch.load(tdir / "model.pt", weights_only=True)
    changed = False
    for key, mask in masks.items():
        prefix = key[: -len("weight_mask")]
        assert torch.equal(state[key], mask)  # same mask
        w = state[prefix + "weight_orig"]
        assert (w[mask == 0] == 0).all()  # masked weights still exactly zero
        changed |= not torch.equal(w[mask != 0], saved[prefix + "weight_orig"][mask != 0])
    assert changed  # ... while the kept ones trained
    # the kept fraction per layer is the one of the pruned model
    kept = [float((state[k] != 0).float().mean()) for k in masks]
    assert kept == pytest.approx(res["kept_per_layer"])


def test_prune_from_refuses_conflicting_flags_and_other_shapes(main, capsys, tmp_path):
    pdir = tmp_path / "pruned"
    _prune(main, capsys, *SMALL, "--method", "magnitude", "--sparsity", "0.5", "--out", pdir)
    out = tmp_path / "t"
    err = _error(main, capsys, ["train", "--prune-from", pdir, "--width", "64", "--epochs", "1", "--out", out])
    assert "--width 64 (saved: 32)" in err
    err = _error(main, capsys, ["train", "--prune-from", pdir, "--activation", "tanh", "--epochs", "1", "--out", out])
    assert "activation tanh (saved: relu)" in err
    # flags equal to the saved ones are fine
    assert (
        main(["train", "--prune-from", pdir, "--width", "32", "--model", "mlp", "--iterations", "2", "--out", out]) == 0
    )
    capsys.readouterr()
    # mnist1d inputs are (1, 40), digits (1, 8, 8): no transfer
    err = _error(main, capsys, ["train", "--prune-from", pdir, "--data", "mnist1d", "--epochs", "1", "--out", out])
    assert "input shape" in err and "(1, 40)" in err
    # a data-free mask for 5 classes cannot train on the 10 digit classes
    d5 = tmp_path / "five"
    argv = ["--method", "synflow", "--sparsity", "0.5", "--data", "none", "--in-shape", "1,8,8", "--num-classes", "5"]
    _prune(main, capsys, "--depth", "2", "--width", "32", *argv, "--out", d5)
    err = _error(main, capsys, ["train", "--prune-from", d5, "--epochs", "1", "--out", out])
    assert "5 outputs" in err and "10 classes" in err
    # resuming a pruned run needs the same --prune-from
    err = _error(main, capsys, ["train", "--epochs", "1", "--out", out, "--resume", "--width", "32"])
    assert "different settings" in err and "prune_from" in err


def test_transfer_of_sparsity_unsupervised_mask_from_fashion_to_mnist(main, capsys, tmp_path):
    """Seed 002 Table 5: prune on Fashion-MNIST (uniform loss, no labels) and train on MNIST.

    The two data sets are stand-ins with the real file format and shapes (28x28, 10 classes),
    written here: the test checks the workflow, not the paper's error rates."""
    _fake_mnist(tmp_path / "data" / "fashion-mnist", seed=1)
    _fake_mnist(tmp_path / "data" / "mnist", seed=2)
    common = ["--model", "mlp", "--depth", "2", "--width", "32", "--data-dir", tmp_path / "data"]
    pdir = tmp_path / "pruned"
    res = _prune(
        main, capsys, *common, "--data", "fashion-mnist", "--method", "snip", "--loss", "uniform",
        "--sparsity", "0.9", "--out", pdir,
    )  # fmt: skip
    assert res["config"]["data"] == "fashion-mnist" and res["config"]["loss"] == "uniform"
    out = tmp_path / "t"
    argv = ["train", "--prune-from", pdir, "--data", "mnist", "--data-dir", tmp_path / "data", "--epochs", "10"]
    code = main([*argv, "--out", out, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    trained = json.loads(captured.out)
    assert trained["config"]["data"] == "mnist" and trained["config"]["prune_from"]["data"] == "fashion-mnist"
    assert trained["test_accuracy"] > 0.5  # the prototypes are easy to tell apart (chance: 0.1)
    state = torch.load(out / "model.pt", weights_only=True)
    kept = [float(state[k].mean()) for k in state if k.endswith("weight_mask")]
    assert kept == pytest.approx(res["kept_per_layer"])


# ------------------------------------------------------------------------------------------ collapse
def test_collapse_at_the_critical_sparsity_is_reported_and_refused(main, capsys, tmp_path):
    base = [*SMALL, "--method", "magnitude"]
    s_cr = _prune(main, capsys, *base, "--sparsity", "0.5")["critical_sparsity"]
    n = 64 * 32 + 32 * 32 + 32 * 10
    below = _prune(main, capsys, *base, "--sparsity", repr(s_cr - 1 / n))
    assert below["collapsed_layers"] == []
    pdir = tmp_path / "collapsed"
    at = _prune(main, capsys, *base, "--sparsity", repr(s_cr), "--out", pdir)
    assert at["collapsed_layers"] and all(
        at["kept_per_layer"][at["layers"].index(name)] == 0.0 for name in at["collapsed_layers"]
    )
    out = tmp_path / "t"
    err = _error(main, capsys, ["train", "--prune-from", pdir, "--epochs", "1", "--out", out])
    assert "collapse" in err and "--allow-collapse" in err and at["collapsed_layers"][0] in err
    assert not out.exists()  # a refused run leaves no trace
    code = main(["train", "--prune-from", pdir, "--allow-collapse", "--iterations", "3", "--out", out, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["config"]["allow_collapse"] is True


def test_disconnected_mask_without_a_collapsed_layer_is_reported_and_refused(main, capsys, tmp_path):
    # default mlp, magnitude at 0.999: every layer keeps a few weights, but no input-output path
    pdir = tmp_path / "disc"
    res = _prune(main, capsys, "--method", "magnitude", "--sparsity", "0.999", "--out", pdir)
    assert res["collapsed_layers"] == [] and min(res["kept_per_layer"]) > 0
    assert res["disconnected"] is True and res["disconnected_check"] == "structural"
    assert res["jacobian"]["norm"] == 0.0
    assert json.loads((pdir / RESULT_FILE).read_text())["disconnected"] is True
    assert main(["prune", "--method", "magnitude", "--sparsity", "0.999"]) == 0
    assert "DISCONNECTED" in capsys.readouterr().out
    out = tmp_path / "t"
    err = _error(main, capsys, ["train", "--prune-from", pdir, "--epochs", "1", "--out", out])
    assert "no path" in err and "--allow-collapse" in err
    assert not out.exists()
    code = main(["train", "--prune-from", pdir, "--allow-collapse", "--iterations", "2", "--out", out, "--json"])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    # a connected mask says so
    assert _prune(main, capsys, *SMALL, "--method", "magnitude", "--sparsity", "0.9")["disconnected"] is False


def test_input_output_connected_follows_the_kept_paths():
    from sigprop.nets import build_model

    net = build_model("mlp", in_shape=(4,), num_classes=2, depth=2, width=3)
    assert input_output_connected(net) is True  # unpruned
    w = [layer.weight for layer in net.layers]
    masks = {f"layers.{i}.weight": torch.zeros_like(t) for i, t in enumerate(w)}
    masks["layers.0.weight"][0, 1] = 1  # input 1 -> unit 0
    masks["layers.1.weight"][2, 1] = 1  # unit 1 -> unit 2: unit 1 is not reached
    masks["layers.2.weight"][0, 2] = 1
    pruning.apply_masks(net, masks)
    assert pruning.collapsed_layers(net) == [] and input_output_connected(net) is False
    net.layers[1].weight_mask[2, 0] = 1  # unit 0 -> unit 2 closes the path
    assert input_output_connected(net) is True
    assert input_output_connected(build_model("lenet5", in_shape=(1, 28, 28), num_classes=10)) is None


# ------------------------------------------------------------------------------------------ repairs
@pytest.mark.parametrize("method", [m for m in RESCALE_METHODS if m != "none"])
def test_rescale_runs_and_keeps_the_mask(main, capsys, method):
    plain = _prune(main, capsys, *SMALL, "--method", "snip", "--sparsity", "0.8")
    res = _prune(main, capsys, *SMALL, "--method", "snip", "--sparsity", "0.8", "--rescale", method)
    _check_contract(res, n_layers=3)
    assert res["kept_per_layer"] == plain["kept_per_layer"]
    assert res["config"]["rescale"] == method and res["rescale"] is not None
    # the kept weights were scaled (up: pruning removed variance), so the Jacobian grew
    assert res["jacobian"]["norm"] > plain["jacobian"]["norm"]
    assert res["jacobian_dense"] == plain["jacobian_dense"]


def test_isometry_lowers_the_orthogonality_score(main, capsys):
    argv = [*SMALL, "--method", "snip", "--sparsity", "0.8", "--init", "orthogonal", "--activation", "tanh"]
    plain = _prune(main, capsys, *argv)
    res = _prune(main, capsys, *argv, "--isometry", "--isometry-steps", "300")
    _check_contract(res, n_layers=3)
    assert res["kept_per_layer"] == plain["kept_per_layer"]
    assert res["orthogonality_score"] < plain["orthogonality_score"]


# ------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--method", "snip", "--sparsity", "1.0"], "[0, 1)"),
        (["--method", "snip", "--sparsity", "-0.1"], "[0, 1)"),
        (["--method", "snip", "--sparsity", "nan"], "[0, 1)"),
        (["--method", "obd", "--sparsity", "0.5"], "invalid choice"),
        (["--method", "snip"], "--sparsity"),
        (["--method", "snip", "--sparsity", "0.5", "--data", "none", "--in-shape", "1,8,8"], "needs data"),
        (["--method", "grasp", "--sparsity", "0.5", "--data", "none", "--in-shape", "1,8,8"], "needs data"),
        (["--method", "synflow", "--sparsity", "0.5", "--data", "none"], "--in-shape"),
        (["--method", "synflow", "--sparsity", "0.5", "--in-shape", "1,8,8"], "--data none"),
        (["--method", "snip", "--sparsity", "0.5", "--loss", "mse"], "invalid choice"),
        (["--method", "snip", "--sparsity", "0.5", "--rescale", "x"], "invalid choice"),
        (["--method", "snip", "--sparsity", "0.5", "--scope", "x"], "invalid choice"),
        (["--method", "snip", "--sparsity", "0.5", "--model", "nosuch"], "known models"),
        (["--method", "snip", "--sparsity", "0.5", "--data", "nosuch"], "known data sets"),
        (["--method", "snip", "--sparsity", "0.5", "--batch-size", "5000"], "--batch-size"),
        (["--method", "snip", "--sparsity", "0.5", "--jacobian-batch", "0"], "--jacobian-batch"),
        (["--method", "snip", "--sparsity", "0.5", "--batches", "0"], "--batches must be"),
        (["--method", "snip", "--sparsity", "0.5", "--depth", "0"], "--depth must be"),
        (["--method", "snip", "--sparsity", "0.5", "--width", "0"], "--width must be"),
        (["--method", "snip", "--sparsity", "0.5", "--isometry", "--isometry-lr", "inf"], "--isometry-lr"),
        (["--method", "snip", "--sparsity", "0.5", "--isometry", "--isometry-steps", "0"], "--isometry-steps"),
        (["--method", "snip", "--sparsity", "0.5", "--isometry-lr", "0.5"], "--isometry"),
        (["--method", "snip", "--sparsity", "0.5", "--isometry-steps", "5"], "--isometry"),
        (["--method", "random", "--sparsity", "0.5", "--loss", "uniform"], "--loss"),
        (["--method", "magnitude", "--sparsity", "0.5", "--loss", "supervised"], "--loss"),
        (["--method", "synflow", "--sparsity", "0.5", "--loss", "pred-raw"], "--loss"),
        (["--method", "snip", "--sparsity", "0.5", "--plot", "x.jpg"], "PNG"),
        (["--method", "snip", "--sparsity", "0.5", "--init", "gaussian"], "sigma_w2"),
    ],
)
def test_bad_prune_input_one_line_status_2(main, capsys, argv, needle):
    err = _error(main, capsys, ["prune", *argv])
    assert needle in err


def test_bad_train_prune_from_input(main, capsys, tmp_path):
    err = _error(
        main, capsys, ["train", "--prune-from", tmp_path / "missing", "--epochs", "1", "--out", tmp_path / "o"]
    )
    assert "no pruned model" in err
    err = _error(main, capsys, ["train", "--allow-collapse", "--epochs", "1", "--out", tmp_path / "o"])
    assert "--prune-from" in err


def test_run_prune_api_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown pruning method"):
        run_prune(method="obd", sparsity=0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        run_prune(method="random", sparsity=1)
    with pytest.raises(ValueError, match="needs data"):
        run_prune(method="snip", sparsity=0.5, data=None, in_shape=(4,), num_classes=2)
    with pytest.raises(ValueError, match="--isometry-lr"):
        run_prune(method="random", sparsity=0.5, isometry=True, isometry_lr=float("inf"))
    with pytest.raises(ValueError, match="--isometry"):
        run_prune(method="random", sparsity=0.5, isometry_steps=5)
    with pytest.raises(ValueError, match="--loss"):
        run_prune(method="magnitude", sparsity=0.5, loss="uniform")
    with pytest.raises(ValueError, match="--in-shape"):
        run_prune(method="random", sparsity=0.5, data=None, in_shape=(0, 4), num_classes=2)


def test_run_train_api_takes_the_model_from_prune_from(tmp_path):
    from sigprop.run_train import run_train

    pdir = tmp_path / "p"
    run_prune(method="magnitude", sparsity=0.5, depth=1, width=16, activation="tanh", out=pdir, progress=False)
    res = run_train(prune_from=pdir, iterations=2, out=tmp_path / "t", progress=False)
    assert res["config"]["activation"] == "tanh" and res["config"]["width"] == 16
    assert res["config"]["prune_from"]["sparsity"] == 0.5 and res["config"]["allow_collapse"] is False
    with pytest.raises(ValueError, match="disagree"):
        run_train(prune_from=pdir, activation="relu", iterations=2, out=tmp_path / "u", progress=False)
