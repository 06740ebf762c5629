"""``sigprop train``: data + model + initialization + training loop, one call.

The result (``result.json`` and the return value) is the training loop's
``{test_accuracy, best_val_accuracy, best_test_accuracy, steps, epochs, diverged,
diverged_step, seconds, config}`` with ``config`` extended by the model, data and
initialization settings, so a run is reproducible from its result alone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sigprop.data import DATASETS, load_dataset
from sigprop.nets import INIT_SCHEMES, MODEL_NAMES, build_model, initialize
from sigprop.theory.activations import get_activation
from sigprop.train import RESULT_FILE, TrainConfig, train

__all__ = ["RUN_FILE", "run_train"]

#: the model/data/init settings of a run, checked on --resume
RUN_FILE = "run.json"


def run_train(
    *,
    model: str = "mlp",
    depth: int | None = None,
    width: int | None = None,
    activation: str = "relu",
    act_params: dict | None = None,
    init: str = "eoc",
    sigma_w2: float | None = None,
    sigma_b2: float | None = None,
    eta: float | None = None,
    data: str = "digits",
    data_dir: str | None = None,
    epochs: int | None = None,
    iterations: int | None = None,
    batch_size: int = 128,
    lr: float | None = None,
    optimizer: str = "sgd",
    seed: int = 0,
    device: str = "auto",
    out: str | Path = "run",
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Train one model end to end; see the module docstring for the result."""
    if model not in MODEL_NAMES:
        raise ValueError(f"unknown model {model!r}; known models: {', '.join(MODEL_NAMES)}")
    if data not in DATASETS:
        raise ValueError(f"unknown data set {data!r}; known data sets: {', '.join(DATASETS)}")
    if init not in INIT_SCHEMES:
        raise ValueError(f"unknown init {init!r}; allowed: {', '.join(INIT_SCHEMES)}")
    act = get_activation(activation, **(act_params or {}))
    settings = {
        "model": model,
        "depth": depth,
        "width": width,
        "activation": act.label(),
        "init": init,
        "sigma_w2": sigma_w2,
        "sigma_b2": sigma_b2,
        "eta": eta,
        "data": data,
        "data_dir": None if data_dir is None else str(data_dir),
    }
    out = Path(out)
    run_file = out / RUN_FILE
    if resume and run_file.exists():
        try:
            saved = json.loads(run_file.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{run_file} is not valid JSON ({exc}); remove it or use another --out") from exc
        diff = [f"{k}: {saved.get(k)!r} (saved) vs {v!r} (now)" for k, v in settings.items() if saved.get(k) != v]
        if diff:
            raise ValueError(
                f"{out} holds a run with different settings ({'; '.join(diff)}); use another --out, or the same flags as the first run"
            )

    config = TrainConfig(
        optimizer=optimizer,
        lr=lr,
        epochs=epochs,
        iterations=iterations,
        batch_size=batch_size,
        seed=seed,
        device=device,
    )
    splits = load_dataset(data, data_dir=data_dir, seed=seed)
    net = build_model(
        model, in_shape=splits.in_shape, num_classes=splits.num_classes, depth=depth, width=width, activation=act
    )
    init_kw = {"sigma_w2": sigma_w2, "sigma_b2": sigma_b2, "eta": eta}
    record = initialize(net, init, activation=act, seed=seed, **{k: v for k, v in init_kw.items() if v is not None})
    # written only once everything above was accepted, so a rejected command leaves no trace
    out.mkdir(parents=True, exist_ok=True)
    _write_json(run_file, settings)
    result = train(net, splits, config, out, resume=resume, progress=progress)
    # the variances actually set (e.g. the EOC values) rather than the flags given
    result["config"] = {
        **result["config"],
        **settings,
        "sigma_w2": record.get("sigma_w2"),
        "sigma_b2": record.get("sigma_b2"),
    }
    _write_json(out / RESULT_FILE, result)
    return result


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)
