"""``sigprop train``: data + model + initialization + training loop, one call.

The result (``result.json`` and the return value) is the training loop's
``{test_accuracy, best_val_accuracy, best_test_accuracy, steps, epochs, diverged,
diverged_step, seconds, config}`` with ``config`` extended by the model, data and
initialization settings, so a run is reproducible from its result alone.

With ``prune_from`` (``sigprop train --prune-from DIR``) the model is not built from the flags:
the masked model saved by ``sigprop prune --out DIR`` is rebuilt (its weights and masks, see
:func:`sigprop.run_prune.load_pruned`) and trained with its mask. Its model and initialization
settings come from DIR (a flag given as well must agree with them); the data set may differ from
the one it was pruned on (transfer of sparsity, seed 002 Table 5) as long as the input shape and
the number of classes are the same. A mask that removes a whole layer is refused unless
``allow_collapse``.
"""

from __future__ import annotations

import json
from pathlib import Path

from sigprop.data import DATASETS, load_dataset
from sigprop.nets import INIT_SCHEMES, MODEL_NAMES, build_model, initialize
from sigprop.theory.activations import get_activation
from sigprop.train import RESULT_FILE, TrainConfig, _write_json, train

__all__ = ["RUN_FILE", "run_train"]

_DEFAULTS = {"model": "mlp", "activation": "relu", "init": "eoc"}

#: the model/data/init settings of a run, checked on --resume
RUN_FILE = "run.json"


def run_train(
    *,
    model: str | None = None,
    depth: int | None = None,
    width: int | None = None,
    activation: str | None = None,
    act_params: dict | None = None,
    init: str | None = None,
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
    prune_from: str | Path | None = None,
    allow_collapse: bool = False,
) -> dict:
    """Train one model end to end; see the module docstring for the result.

    ``model``, ``activation`` and ``init`` left as None mean mlp, relu and eoc, or with
    ``prune_from`` the saved model's (a value given must agree with it). ``prune_from``: folder written by
    ``sigprop prune --out``; ``allow_collapse``: train its mask even if it removes a layer.
    The result's ``config`` then also holds ``prune_from`` (the folder, the SHA-256 of the saved
    model, and the pruning settings) and ``allow_collapse``.
    """
    pruned = None
    if prune_from is not None:
        pruned, model, activation, act_params, init = _from_pruned(
            prune_from, model=model, depth=depth, width=width, activation=activation, act_params=act_params,
            init=init, sigma_w2=sigma_w2, sigma_b2=sigma_b2, eta=eta,
        )  # fmt: skip
        cfg = pruned[1]
        depth, width, sigma_w2, sigma_b2, eta = (cfg.get(k) for k in ("depth", "width", "sigma_w2", "sigma_b2", "eta"))
    elif allow_collapse:
        raise ValueError("--allow-collapse goes with --prune-from DIR (a saved mask)")
    model = _DEFAULTS["model"] if model is None else model
    activation = _DEFAULTS["activation"] if activation is None else activation
    init = _DEFAULTS["init"] if init is None else init
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
        "prune_from": None,
    }
    if pruned is not None:
        _, cfg, digest = pruned
        settings["prune_from"] = {"dir": str(Path(prune_from).resolve()), "sha256": digest}
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
    if pruned is not None:
        net, cfg, _ = pruned
        _check_transfer(prune_from, cfg, splits, data)
        _check_collapse(prune_from, net, allow_collapse)
        record = {"sigma_w2": cfg.get("init_sigma_w2"), "sigma_b2": cfg.get("init_sigma_b2")}
    else:
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
    if pruned is not None:
        cfg = pruned[1]
        prune_keys = ("method", "sparsity", "scope", "loss", "rescale", "isometry", "data", "seed")
        result["config"]["prune_from"] = {**settings["prune_from"], **{k: cfg.get(k) for k in prune_keys}}
        result["config"]["allow_collapse"] = bool(allow_collapse)
    _write_json(out / RESULT_FILE, result)
    return result


def _from_pruned(prune_from, *, model, depth, width, activation, act_params, init, sigma_w2, sigma_b2, eta):
    """Load the pruned model of ``prune_from``; refuse model/init flags that disagree with it."""
    from sigprop.run_prune import load_pruned

    net, cfg, digest = load_pruned(prune_from)
    conflicts = []
    for flag, given in (
        ("--model", model), ("--depth", depth), ("--width", width), ("--init", init),
        ("--sigma-w2", sigma_w2), ("--sigma-b2", sigma_b2), ("--eta", eta),
    ):  # fmt: skip
        key = flag[2:].replace("-", "_")
        if given is not None and given != cfg.get(key):
            conflicts.append(f"{flag} {given} (saved: {cfg.get(key)})")
    if activation is not None or act_params:
        name = cfg["activation_name"] if activation is None else activation
        label = get_activation(name, **(act_params or {})).label()
        if label != cfg["activation"]:
            conflicts.append(f"activation {label} (saved: {cfg['activation']})")
    if conflicts:
        raise ValueError(
            f"--prune-from {prune_from} takes the model and its initialization from the saved model; "
            f"these flags disagree with it: {'; '.join(conflicts)}. Drop them (or prune again with them)"
        )
    return (net, cfg, digest), cfg["model"], cfg["activation_name"], cfg.get("act_params") or None, cfg["init"]


def _check_transfer(prune_from, cfg: dict, splits, data: str) -> None:
    """The training data must fit the pruned model: same input shape and number of classes."""
    saved_shape, saved_classes = tuple(cfg["in_shape"]), int(cfg["num_classes"])
    problems = []
    if tuple(splits.in_shape) != saved_shape:
        problems.append(f"inputs of shape {tuple(splits.in_shape)} (the model takes {saved_shape})")
    if int(splits.num_classes) != saved_classes:
        problems.append(f"{splits.num_classes} classes (the model has {saved_classes} outputs)")
    if problems:
        raise ValueError(
            f"cannot train the model pruned in {prune_from} (on {cfg.get('data') or 'no data'}) on {data}: {data} has "
            f"{' and '.join(problems)}; transfer a mask only between data sets of the same input shape and class count"
        )


def _check_collapse(prune_from, net, allow_collapse: bool) -> None:
    from sigprop.pruning import collapsed_layers

    collapsed = collapsed_layers(net)
    if collapsed and not allow_collapse:
        names = ", ".join(collapsed) if len(collapsed) <= 4 else f"{', '.join(collapsed[:3])}, ..., {collapsed[-1]}"
        raise ValueError(
            f"the mask in {prune_from} removes {len(collapsed)} whole layer(s) ({names}; layer collapse: the output "
            "no longer depends on the input); prune at a lower sparsity, with another method or initialization, "
            "or pass --allow-collapse to train it anyway"
        )
    if not allow_collapse and _disconnected(prune_from, net):
        raise ValueError(
            f"the mask in {prune_from} leaves no path of kept weights from the input to the output (no layer is "
            "fully pruned, but the kept weights do not line up: the output no longer depends on the input); prune "
            "at a lower sparsity, with another method or initialization, or pass --allow-collapse to train it anyway"
        )


def _disconnected(prune_from, net) -> bool:
    """No input-output path: structurally for MLPs, else as recorded by ``sigprop prune`` (if it was)."""
    from sigprop.run_prune import RESULT_FILE as PRUNE_RESULT
    from sigprop.run_prune import input_output_connected

    connected = input_output_connected(net)
    if connected is not None:
        return not connected
    try:
        return json.loads((Path(prune_from) / PRUNE_RESULT).read_text()).get("disconnected") is True
    except (OSError, ValueError, AttributeError):
        return False
