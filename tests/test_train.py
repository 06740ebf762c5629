"""The training loop: schedules, files, masks, divergence, determinism and resumption."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch import nn
from torch.nn.utils import prune
from torch.utils.data import DataLoader, TensorDataset

from sigprop.train import DirectMasks, TrainConfig, evaluate, lr_factor, resolve_device, train

IN, CLASSES = 10, 3


def make_data(seed: int = 0, n_train: int = 192, n_eval: int = 64):
    """Gaussian inputs labelled by a random linear teacher: (train, val, test) TensorDatasets."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(IN, CLASSES, generator=g)

    def split(n):
        x = torch.randn(n, IN, generator=g)
        return TensorDataset(x, (x @ w).argmax(1))

    return split(n_train), split(n_eval), split(n_eval)


def make_model(seed: int = 0, width: int = 32, dropout: float = 0.0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(IN, width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, CLASSES)
    )  # fmt: skip


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


CFG = {"batch_size": 32, "device": "cpu", "lr": 0.05}


# ----------------------------------------------------------------------------------------
# configuration and schedules
# ----------------------------------------------------------------------------------------
def test_config_validation_and_round_trip():
    with pytest.raises(ValueError, match="not both"):
        TrainConfig(epochs=2, iterations=10)
    with pytest.raises(ValueError, match="unknown optimizer"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="step_every"):
        TrainConfig(schedule="step-every")
    with pytest.raises(ValueError, match="milestones"):
        TrainConfig(milestones=(0.75, 0.5))
    with pytest.raises(TypeError, match="batch_size"):
        TrainConfig(batch_size=True)
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=-1.0)
    cfg = TrainConfig(optimizer="adam", iterations=7, schedule="cosine")
    d = cfg.to_dict()
    assert d["lr"] == 1e-3 and json.loads(json.dumps(d)) == d
    assert TrainConfig.from_dict(d) == TrainConfig(optimizer="adam", lr=1e-3, iterations=7, schedule="cosine")
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        TrainConfig.from_dict({"lr": 0.1, "nope": 1})


def test_lr_schedules():
    step = TrainConfig(schedule="step")
    assert [lr_factor(step, s, 100) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    every = TrainConfig(schedule="step-every", step_every=10, gamma=0.5)
    assert [lr_factor(every, s, 100) for s in (0, 9, 10, 25)] == [1, 1, 0.5, 0.25]
    cos = TrainConfig(schedule="cosine")
    assert lr_factor(cos, 0, 100) == 1 and lr_factor(cos, 50, 100) == pytest.approx(0.5)
    assert lr_factor(TrainConfig(schedule="none"), 99, 100) == 1


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device"):
        resolve_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


# ----------------------------------------------------------------------------------------
# a run and its files
# ----------------------------------------------------------------------------------------
def test_train_writes_metrics_model_and_result(tmp_path):
    data = make_data()
    model = make_model()
    cfg = TrainConfig(epochs=8, eval_every=10, **CFG)
    result = train(model, data, cfg, tmp_path, progress=False)

    per_epoch = 192 // 32
    assert result["steps"] == 8 * per_epoch and result["epochs"] == 8.0
    assert set(result) == {
        "test_accuracy", "best_val_accuracy", "best_test_accuracy", "steps", "epochs",
        "diverged", "diverged_step", "seconds", "config",
    }  # fmt: skip
    assert result["diverged"] is False and result["diverged_step"] is None
    assert json.loads((tmp_path / "result.json").read_text()) == result
    assert result["config"] == cfg.to_dict()

    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30, 40, 48]  # every 10 steps and at the end
    assert all(set(r) == {"step", "epoch", "train_loss", "val_accuracy", "test_accuracy", "lr"} for r in rows)
    assert rows[-1]["epoch"] == 8.0 and rows[-1]["lr"] == pytest.approx(0.05 * 0.01)  # after both milestones
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    for key in ("test_accuracy", "best_val_accuracy", "best_test_accuracy"):
        assert 0.0 <= result[key] <= 1.0
    assert result["test_accuracy"] == rows[-1]["test_accuracy"] >= 0.8  # a linear teacher is easy
    best = max(rows, key=lambda r: r["val_accuracy"])  # first row with the best val accuracy
    assert result["best_val_accuracy"] == best["val_accuracy"]
    assert result["best_test_accuracy"] == best["test_accuracy"]

    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert same_state(saved, model.state_dict())
    assert not (tmp_path / "checkpoint.pt").exists()  # removed once the run has finished
    assert evaluate(model, data[2]) == result["test_accuracy"]


def test_iterations_and_loaders(tmp_path):
    train_ds, val_ds, _ = make_data()
    g = torch.Generator().manual_seed(0)
    loaders = (
        DataLoader(train_ds, batch_size=32, shuffle=True, generator=g),
        DataLoader(val_ds, batch_size=50),
        None,  # no test set: its accuracies are None
    )
    result = train(make_model(), loaders, TrainConfig(iterations=15, **CFG), tmp_path, progress=False)
    assert result["steps"] == 15 and result["epochs"] == pytest.approx(15 / 6)
    assert result["test_accuracy"] is None and result["best_test_accuracy"] is None
    assert 0.0 <= result["best_val_accuracy"] <= 1.0
    with pytest.raises(ValueError, match="batch size 32"):
        train(make_model(), loaders, TrainConfig(iterations=5, **{**CFG, "batch_size": 16}), tmp_path, progress=False)


# ----------------------------------------------------------------------------------------
# pruning masks
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_pruned_weights_stay_exactly_zero(tmp_path, optimizer):
    model = make_model()
    torch.manual_seed(1)
    prune.random_unstructured(model[0], "weight", amount=0.7)
    prune.random_unstructured(model[3], "weight", amount=0.9)
    keys = set(model.state_dict())
    masked = [model[0], model[3]]
    kept = [m.weight_mask.clone() for m in masked]
    before = [m.weight.detach().clone() for m in masked]

    cfg = TrainConfig(optimizer=optimizer, epochs=3, weight_decay=1e-2, batch_size=32, device="cpu")
    train(model, make_data(), cfg, tmp_path, progress=False)

    for m, mask, w0 in zip(masked, kept, before, strict=True):
        assert torch.equal(m.weight_mask, mask)
        pruned = mask == 0
        assert torch.all(m.weight[pruned] == 0)  # the effective weight
        assert torch.all((m.weight_orig * m.weight_mask)[pruned] == 0)
        assert torch.all(m.weight_orig.grad[pruned] == 0)  # no gradient reaches a pruned entry
        assert m.weight_orig.grad[~pruned].abs().sum() > 0
        assert not torch.equal(m.weight[~pruned], w0[~pruned])  # the kept weights did train
        # the torch.nn.utils.prune convention is intact: hook back, weight recomputed at forward
        assert any(isinstance(h, prune.BasePruningMethod) for h in m._forward_pre_hooks.values())
        assert "weight" not in m._parameters and torch.equal(m.weight, m.weight_orig * m.weight_mask)
    assert set(model.state_dict()) == keys
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert torch.all(saved["3.weight_orig"][saved["3.weight_mask"] == 0] == 0)
    prune.remove(model[3], "weight")
    assert (model[3].weight == 0).float().mean() >= 0.9


def test_direct_masks_match_the_prune_hook():
    """DirectMasks trains the kept weights exactly as the pre-hook does (SGD acts element-wise)."""
    x, y = torch.randn(64, IN), torch.randint(0, CLASSES, (64,))
    models = []
    for _ in range(2):
        m = make_model()
        torch.manual_seed(5)
        prune.l1_unstructured(m[3], "weight", amount=0.8)
        models.append(m)
    for direct, m in zip((False, True), models, strict=True):
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        ctx = DirectMasks(m) if direct else None
        if ctx:
            ctx.__enter__()
        for _ in range(5):
            opt.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            if ctx:
                ctx.mask_grads()
            opt.step()
        if ctx:
            ctx.__exit__(None, None, None)
    hook_w, direct_w = (m[3].weight_orig * m[3].weight_mask for m in models)  # m[3].weight is stale for the hook
    assert torch.equal(direct_w, hook_w)  # bit for bit
    assert torch.equal(models[1][3].weight, direct_w)  # recomputed on exit
    assert not torch.equal(models[0][3].weight_orig, models[1][3].weight_orig)  # they differ at pruned entries


# ----------------------------------------------------------------------------------------
# divergence
# ----------------------------------------------------------------------------------------
def test_divergence_is_recorded_not_raised(tmp_path):
    cfg = TrainConfig(iterations=50, lr=1e8, momentum=0.9, schedule="none", batch_size=32, device="cpu")
    result = train(make_model(), make_data(), cfg, tmp_path, progress=False)
    assert result["diverged"] is True
    assert isinstance(result["diverged_step"], int) and 1 <= result["diverged_step"] <= 50
    assert result["steps"] == result["diverged_step"] - 1  # no update from the non-finite loss
    assert json.loads((tmp_path / "result.json").read_text())["diverged_step"] == result["diverged_step"]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows and rows[-1]["step"] == result["steps"]
    assert all(r["train_loss"] is None or math.isfinite(r["train_loss"]) for r in rows)
    assert (tmp_path / "model.pt").exists() and not (tmp_path / "checkpoint.pt").exists()


# ----------------------------------------------------------------------------------------
# determinism and resumption
# ----------------------------------------------------------------------------------------
def test_deterministic_given_seed(tmp_path):
    cfg = TrainConfig(epochs=2, seed=3, **CFG)
    state_before = torch.get_rng_state()
    a, b, c = make_model(dropout=0.2), make_model(dropout=0.2), make_model(dropout=0.2)
    train(a, make_data(), cfg, tmp_path / "a", progress=False)
    train(b, make_data(), cfg, tmp_path / "b", progress=False)
    train(c, make_data(), TrainConfig(epochs=2, seed=4, **CFG), tmp_path / "c", progress=False)
    assert same_state(a.state_dict(), b.state_dict())
    assert (tmp_path / "a" / "metrics.jsonl").read_text() == (tmp_path / "b" / "metrics.jsonl").read_text()
    assert not same_state(a.state_dict(), c.state_dict())  # the seed drives data order and dropout
    assert torch.equal(torch.get_rng_state(), state_before)  # the caller's RNG is left alone


class Interrupt(Exception):
    pass


class Crashing(nn.Module):
    """Wraps a model; raises Interrupt at the n-th training-mode forward."""

    def __init__(self, inner: nn.Module, crash_at: int):
        super().__init__()
        self.inner, self.crash_at, self.calls = inner, crash_at, 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls == self.crash_at:
                raise Interrupt
        return self.inner(x)


def _pruned_model():
    m = make_model(dropout=0.1)
    torch.manual_seed(2)
    prune.random_unstructured(m[3], "weight", amount=0.5)
    return m


@pytest.mark.parametrize("source", ["tensors", "loader", "loader-without-generator"])
def test_resume_after_interruption_in_process(tmp_path, source):
    def data():
        tr, va, te = make_data()
        if source == "tensors":
            return tr, va, te
        gen = torch.Generator() if source == "loader" else None
        return DataLoader(tr, batch_size=32, shuffle=True, generator=gen), va, te

    cfg = TrainConfig(iterations=40, eval_every=7, checkpoint_every=5, optimizer="adam", **CFG)
    reference = Crashing(_pruned_model(), crash_at=0)
    ref = train(reference, data(), cfg, tmp_path / "ref", progress=False)

    crashing = Crashing(_pruned_model(), crash_at=23)  # after the checkpoint at step 20
    with pytest.raises(Interrupt):
        train(crashing, data(), cfg, tmp_path / "run", progress=False)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 20
    resumed = Crashing(_pruned_model(), crash_at=0)
    res = train(resumed, data(), cfg, tmp_path / "run", resume=True, progress=False)

    assert same_state(resumed.state_dict(), reference.state_dict())
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == (tmp_path / "ref" / "metrics.jsonl").read_text()
    assert {k: v for k, v in res.items() if k != "seconds"} == {k: v for k, v in ref.items() if k != "seconds"}

    # resuming a finished run returns its result and loads its weights
    again = Crashing(_pruned_model(), crash_at=1)
    assert train(again, data(), cfg, tmp_path / "run", resume=True, progress=False) == res
    assert same_state(again.state_dict(), reference.state_dict())
    # a different config is refused
    with pytest.raises(ValueError, match="different config"):
        train(_pruned_model(), data(), TrainConfig(iterations=41, **CFG), tmp_path / "run", resume=True)


_CHILD = textwrap.dedent(
    """
    import sys, time, torch
    from torch import nn
    sys.path.insert(0, {tests!r})
    import test_train as t
    from sigprop.train import TrainConfig, train

    class Slow(nn.Module):  # sleeps in forward so the parent can kill it mid-run
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
        def forward(self, x):
            if self.training:
                time.sleep({sleep})
            return self.inner(x)

    torch.set_num_threads({threads})
    cfg = TrainConfig(**{cfg!r})
    model = t._pruned_model() if {slow} is False else Slow(t._pruned_model())
    train(model, t.make_data(), cfg, {out!r}, resume={resume}, progress=False)
    """
)


def _child(out, cfg: dict, *, slow: bool, resume: bool = False) -> subprocess.Popen:
    code = _CHILD.format(
        tests=os.path.dirname(__file__), sleep=0.01, threads=torch.get_num_threads(),
        cfg=cfg, slow=slow, out=str(out), resume=resume,
    )  # fmt: skip
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


class Slow(nn.Module):
    """Same parameters as the child's ``Slow`` wrapper (state_dict keys ``inner.*``)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def test_resume_after_sigkill(tmp_path):
    """Kill a training process with SIGKILL after its first checkpoint, resume, compare bit for bit."""
    cfg = {"iterations": 400, "checkpoint_every": 10, "eval_every": 25, "seed": 7, **CFG}
    ckpt = tmp_path / "run" / "checkpoint.pt"
    proc = _child(tmp_path / "run", cfg, slow=True)
    try:
        deadline = time.monotonic() + 120
        while not ckpt.exists():
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "run" / "result.json").exists()  # it was killed mid-run
    step = torch.load(ckpt, weights_only=True)["step"]
    assert 10 <= step < 400

    config = TrainConfig(**cfg)
    resumed = Slow(_pruned_model())
    res = train(resumed, make_data(), config, tmp_path / "run", resume=True, progress=False)
    reference = Slow(_pruned_model())
    ref = train(reference, make_data(), config, tmp_path / "ref", progress=False)
    assert res["steps"] == ref["steps"] == 400
    assert same_state(resumed.state_dict(), reference.state_dict())
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == (tmp_path / "ref" / "metrics.jsonl").read_text()
    assert res["best_test_accuracy"] == ref["best_test_accuracy"]


# ----------------------------------------------------------------------------------------
# with the project's data and models
# ----------------------------------------------------------------------------------------
def test_digits_mlp_learns(tmp_path):
    data = pytest.importorskip("sigprop.data")
    nets = pytest.importorskip("sigprop.nets")
    splits = data.load_dataset("digits")
    model = nets.build_model("mlp", in_shape=splits.in_shape, num_classes=splits.num_classes, depth=2, width=64)
    result = train(model, splits, TrainConfig(epochs=6, device="cpu"), tmp_path, progress=False)
    assert result["test_accuracy"] >= 0.85
    loaders = data.make_loaders(splits, 128, seed=0)
    model2 = nets.build_model("mlp", in_shape=splits.in_shape, num_classes=splits.num_classes, depth=2, width=64)
    res2 = train(model2, loaders, TrainConfig(epochs=1, device="cpu"), tmp_path / "loaders", progress=False)
    assert res2["steps"] == len(loaders[0])
