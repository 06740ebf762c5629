"""``sigprop prune``: model + initialization + score + mask (+ repair), and what it did to the net.

:func:`run_prune` builds a model of the zoo, initializes it, scores its prunable tensors (every
Linear/Conv weight) with one of :data:`METHODS`, masks them to the requested sparsity
(:func:`sigprop.pruning.make_masks`, or iterative SynFlow), optionally repairs the pruned net
(``rescale``: seed 001 Prop. 1 / seed 000; ``isometry``: seed 002 eq. 8) and measures:

``kept_per_layer``
    kept fraction of each prunable tensor, in layer order (one entry per prunable layer; the
    names are in ``layers``);
``collapsed_layers``
    names of the tensors the mask removes entirely (layer collapse, seed 001 Sec. 2.1);
``disconnected``
    True when no path of kept weights joins the input to the output although perhaps no layer is
    fully pruned (e.g. magnitude pruning at 0.999: each layer keeps a few weights, but they do not
    line up), so the output no longer depends on the input. Checked structurally for MLPs
    (:func:`input_output_connected`), otherwise read off the measured Jacobian (``norm == 0``
    exactly); ``disconnected_check`` says which (``"structural"`` or ``"jacobian"``);
``critical_sparsity``
    for ``scope="global"``: the critical sparsity ``s_cr`` of global pruning by the scores
    (seed 001 Sec. 2.1, exact, :func:`sigprop.pruning.critical_sparsity`; for iterative
    SynFlow, of its first, one-shot round); for ``scope="layerwise"``: ``1 - 0.5 / min_l n_l``,
    the smallest sparsity at which ``round((1 - s) n_l) = 0`` for some tensor of ``n_l`` entries;
``jacobian`` / ``jacobian_dense``
    singular-value statistics ``{mean, std, cond, norm}`` of the input-output Jacobian over a
    batch of inputs (seed 002 Table 1; ``norm`` = mean spectral norm, ``cond`` None when
    infinite), of the pruned-and-repaired net and of the same net before pruning;
``orthogonality_score`` / ``orthogonality_score_dense``
    seed 002's orthogonality score of the pruned-and-repaired and of the dense net.

With ``out`` it writes :data:`MODEL_FILE` (the masked model's ``state_dict``: ``weight_orig`` +
``weight_mask`` per pruned tensor), :data:`CONFIG_FILE` (everything needed to rebuild it, read by
``sigprop train --prune-from``; see :func:`load_pruned`) and :data:`RESULT_FILE` (the result).
Every float in the result is finite or ``None`` (JSON ``null``), never NaN/Infinity.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

# torch-free: the option names are defined once in sigprop.pruning._names (SCOPES: mask scopes of
# make_masks; LOSSES: losses of SNIP / GraSP; RESCALE_METHODS: repairs of rescale)
from sigprop.pruning._names import LOSSES, RESCALE_METHODS, SCOPES

__all__ = [
    "CONFIG_FILE",
    "DATA_FREE_METHODS",
    "LOSSES",
    "METHODS",
    "MODEL_FILE",
    "RESCALE_METHODS",
    "RESULT_FILE",
    "SCOPES",
    "input_output_connected",
    "layerwise_critical_sparsity",
    "load_pruned",
    "plot_kept",
    "run_prune",
]

#: Score methods of :func:`run_prune`.
METHODS: tuple[str, ...] = ("random", "magnitude", "snip", "grasp", "synflow")
#: Methods that score without data (their Jacobian statistics still need inputs, see ``data``).
DATA_FREE_METHODS: tuple[str, ...] = ("random", "magnitude", "synflow")

MODEL_FILE = "pruned_model.pt"
CONFIG_FILE = "prune_config.json"
RESULT_FILE = "prune_result.json"
_FORMAT = 1
#: Rounds of iterative SynFlow (Tanaka et al. 2020 use 100).
SYNFLOW_ROUNDS = 100
#: Methods whose score takes a loss (``loss``); the others refuse one.
LOSS_METHODS: tuple[str, ...] = ("snip", "grasp")
#: Defaults of the isometry repair (``isometry_lr``, ``isometry_steps``).
ISOMETRY_LR = 0.1
ISOMETRY_STEPS = 10000


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def _json_safe(obj: Any) -> Any:
    """``obj`` with NaN/inf floats replaced by None and tuples/tensors/numpy scalars made plain."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return obj
    try:
        value = float(obj)
    except (TypeError, ValueError):
        return str(obj)
    return value if math.isfinite(value) else None


def _check_int(value, name: str, minimum: int) -> None:
    """:func:`sigprop.train._check_int` (TypeError for a non-integer, ValueError below ``minimum``)."""
    from sigprop.train import _check_int as check

    check(value, name, minimum)


def layerwise_critical_sparsity(sizes) -> float:
    """Critical sparsity of layerwise masks over tensors of ``sizes`` entries.

    A layerwise mask keeps ``round((1 - s) n_l)`` entries of tensor ``l``, which is 0 exactly when
    ``(1 - s) n_l <= 1/2`` (Python rounds 0.5 to 0), so the smallest collapsing sparsity is
    ``1 - 0.5 / min_l n_l``, whatever the scores (returned as the smallest float ``s`` at which
    ``round((1.0 - s) * n)``, computed as :func:`sigprop.pruning.make_masks` does, is 0).
    """
    sizes = [int(n) for n in sizes if int(n) > 0]
    if not sizes:
        raise ValueError("no tensor with entries")
    n = min(sizes)
    # the float s where make_masks' round((1.0 - s) * n) first gives 0 (1 - 0.5/n itself may
    # round the other way in floating point)
    s = 1.0 - 0.5 / n
    while round((1.0 - s) * n) != 0:
        s = math.nextafter(s, 1.0)
    while round((1.0 - math.nextafter(s, 0.0)) * n) == 0:
        s = math.nextafter(s, 0.0)
    return s


def input_output_connected(model) -> bool | None:
    """Whether the mask leaves a path of kept weights from the input to the output (structural).

    Known for :class:`sigprop.nets.MLP` (and LeNet-300-100): a boolean vector of the units
    reachable from the input is pushed through each layer's mask (``reach_l = (M_l != 0) reach_{l-1}``);
    the net is connected when some output is reachable. A disconnected net's output does not
    depend on its input (its Jacobian is exactly 0) even when no layer is fully pruned. ``None``
    for other architectures (convolutions, skip connections), where :func:`run_prune` falls back
    to the measured Jacobian.
    """
    import torch

    from sigprop.nets.models import MLP

    if not isinstance(model, MLP):
        return None
    reach = None
    for layer in model.layers:
        mask = getattr(layer, "weight_mask", None)
        keep = (mask if isinstance(mask, torch.Tensor) else torch.ones_like(layer.weight)) != 0
        keep = keep.detach().cpu().to(torch.float64)
        reach = torch.ones(keep.shape[1], dtype=torch.float64) if reach is None else reach
        reach = ((keep @ reach) > 0).to(torch.float64)
    return bool(reach.any())


def _mask_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------
def _check_sparsity(sparsity) -> float:
    from sigprop.pruning.masks import _check_sparsity as check

    return check(sparsity)


def _check_args(
    *,
    method,
    sparsity,
    scope,
    loss,
    rescale,
    isometry,
    isometry_lr,
    isometry_steps,
    data,
    in_shape,
    num_classes,
    batch_size,
    batches,
    jacobian_batch,
    depth,
    width,
    out,
    plot,
) -> float:
    """Validate the settings before anything is built or scored; messages name the CLI flags."""
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; choose one of {', '.join(METHODS)}")
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    s = _check_sparsity(sparsity)
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; choose 'global' or 'layerwise'")
    if loss is not None:
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
        if method not in LOSS_METHODS:
            raise ValueError(
                f"--loss is the loss of {'/'.join(LOSS_METHODS)}; method {method!r} uses no loss: drop --loss"
            )
    if rescale not in RESCALE_METHODS:
        raise ValueError(f"unknown rescale {rescale!r}; choose one of {', '.join(RESCALE_METHODS)}")
    if not isometry:
        given = [f for f, v in (("--isometry-lr", isometry_lr), ("--isometry-steps", isometry_steps)) if v is not None]
        if given:
            raise ValueError(f"{' and '.join(given)} set(s) the isometry repair: add --isometry, or drop {given[0]}")
    if isometry_steps is not None:
        _check_int(isometry_steps, "--isometry-steps", 1)
    if isometry_lr is not None and (
        isinstance(isometry_lr, bool)
        or not isinstance(isometry_lr, (int, float))
        or not (isometry_lr > 0 and math.isfinite(isometry_lr))
    ):
        raise ValueError(f"--isometry-lr must be a finite number > 0, got {isometry_lr!r}")
    if data is None:
        if method not in DATA_FREE_METHODS:
            raise ValueError(
                f"method {method!r} needs data to score; give a data set (--data NAME), or use a data-free "
                f"method ({', '.join(DATA_FREE_METHODS)})"
            )
        if in_shape is None or num_classes is None:
            raise ValueError("without data, give the input shape and the number of classes (--in-shape, --num-classes)")
    elif in_shape is not None or num_classes is not None:
        raise ValueError(f"--in-shape/--num-classes are only for --data none; the data set {data!r} sets them")
    if in_shape is not None:
        shape = tuple(in_shape)
        if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
            raise ValueError(f"--in-shape must be positive integers (e.g. 1,8,8), got {in_shape!r}")
    if num_classes is not None:
        _check_int(num_classes, "--num-classes", 2)
    _check_int(batch_size, "--batch-size", 1)
    _check_int(batches, "--batches", 1)
    _check_int(jacobian_batch, "--jacobian-batch", 1)
    if depth is not None:
        _check_int(depth, "--depth", 1)
    if width is not None:
        _check_int(width, "--width", 1)
    _check_paths(out, plot)
    return s


def _check_paths(out, plot) -> None:
    """``--out`` must be a folder (or not exist yet, under an existing one); ``--plot`` a PNG in a folder."""
    if out is not None:
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {str(out)!r} is a file; give a folder for the pruned model")
        parent = next((p for p in out.absolute().parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise ValueError(f"--out {str(out)!r}: {parent} is a file, not a folder")
    if plot is not None:
        plot = Path(plot)
        if plot.suffix.lower() != ".png":
            raise ValueError(f"--plot writes a PNG image; give a FILE.png, got {str(plot)!r}")
        if plot.is_dir():
            raise ValueError(f"--plot {str(plot)!r} is a folder; give a FILE.png")
        if not plot.absolute().parent.is_dir():
            raise ValueError(f"--plot {str(plot)!r}: the folder {str(plot.absolute().parent)!r} does not exist")


# --------------------------------------------------------------------------------------------
# the workflow
# --------------------------------------------------------------------------------------------
def run_prune(
    *,
    method: str,
    sparsity: float,
    model: str = "mlp",
    depth: int | None = None,
    width: int | None = None,
    activation: str = "relu",
    act_params: dict | None = None,
    init: str = "eoc",
    sigma_w2: float | None = None,
    sigma_b2: float | None = None,
    eta: float | None = None,
    scope: str = "global",
    loss: str | None = None,
    rescale: str = "none",
    isometry: bool = False,
    isometry_lr: float | None = None,
    isometry_steps: int | None = None,
    data: str | None = "digits",
    data_dir: str | None = None,
    in_shape: tuple[int, ...] | None = None,
    num_classes: int | None = None,
    batch_size: int = 128,
    batches: int = 1,
    jacobian_batch: int = 64,
    seed: int = 0,
    device: str = "auto",
    out: str | Path | None = None,
    plot: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Prune a freshly initialized model at initialization and measure the result.

    Parameters
    ----------
    method : {"random", "magnitude", "snip", "grasp", "synflow"}
        Score (higher = kept). ``snip``: connection sensitivity (seed 002 eq. 1); ``grasp``:
        gradient-signal preservation (Wang et al. 2020); ``synflow``: iterative SynFlow,
        :data:`SYNFLOW_ROUNDS` rounds (Tanaka et al. 2020); ``random``: uniform scores drawn
        from ``seed``; ``magnitude``: ``|w|``.
    sparsity : float in [0, 1)
        Fraction of the prunable weights removed.
    model, depth, width, activation, act_params, init, sigma_w2, sigma_b2, eta :
        As for ``sigprop train`` (:func:`sigprop.run_train.run_train`).
    scope : {"global", "layerwise"}
        One threshold over all tensors, or the same sparsity in each tensor.
    loss : {"supervised", "uniform", "pred-raw", "pred-softmax"} or None
        Loss of SNIP and GraSP (seed 002 Table 4); the unsupervised ones use no labels. None:
        supervised. Refused for the other methods.
    rescale : {"none", "eoc", "random", "magnitude", "magnitude-exact"}
        Repair of the pruned weights by :func:`sigprop.pruning.rescale`.
    isometry : bool
        Run :func:`sigprop.pruning.approximate_isometry` (seed 002 eq. 8) after the rescale,
        with ``isometry_lr`` (None: :data:`ISOMETRY_LR`) and at most ``isometry_steps`` steps
        (None: :data:`ISOMETRY_STEPS`); both are refused without ``isometry``.
    data : str or None
        Data set (:data:`sigprop.data.DATASETS`) whose training split gives the scoring batches
        (``batches`` batches of ``batch_size`` examples, drawn from a permutation seeded by
        ``seed``) and the ``jacobian_batch`` inputs of the Jacobian statistics (the first ones of
        that permutation). ``None``: no data; only the data-free methods, the net is built for
        ``in_shape`` / ``num_classes`` and the Jacobian statistics use standard Gaussian inputs.
    seed : int
        Seeds the initialization, the random scores and the choice of the batches.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``; the saved model is on the CPU.
    out : path, optional
        Folder for :data:`MODEL_FILE`, :data:`CONFIG_FILE` and :data:`RESULT_FILE`.
    plot : path, optional
        PNG of the kept fractions (:func:`plot_kept`).
    progress : bool
        tqdm bars for the long steps (SynFlow rounds, isometry).

    Returns
    -------
    dict
        ``kept_per_layer`` (list of float), ``collapsed_layers`` (list of str),
        ``disconnected`` (bool), ``critical_sparsity`` (float), ``jacobian`` and ``jacobian_dense``
        (``{mean, std, cond, norm}``), ``orthogonality_score``, ``orthogonality_score_dense``
        (float), plus ``layers`` (tensor names, parallel to ``kept_per_layer``),
        ``kept_fraction`` (kept share of all prunable weights) and ``config`` (the settings, with
        the variances actually set by the initialization). Non-finite numbers are ``None``.

    Raises
    ------
    ValueError
        Bad input (unknown method/scope/loss/rescale/model/data set, sparsity outside [0, 1),
        a method that needs data without data, a supervised loss without labels, a ``loss`` for a
        method without one, isometry settings without ``isometry``, an ``out`` that is a file or a
        ``plot`` in a missing folder, ...; checked before anything is scored).
    sigprop.errors.NumericalError
        Non-finite scores (e.g. overflowing gradients of a far-chaotic deep net).
    """
    s = _check_args(
        method=method, sparsity=sparsity, scope=scope, loss=loss, rescale=rescale, isometry=isometry,
        isometry_lr=isometry_lr, isometry_steps=isometry_steps, data=data, in_shape=in_shape,
        num_classes=num_classes, batch_size=batch_size, batches=batches, jacobian_batch=jacobian_batch,
        depth=depth, width=width, out=out, plot=plot,
    )  # fmt: skip
    _check_int(seed, "--seed", 0)
    if loss is None:
        loss = "supervised"
    if isometry_lr is None:
        isometry_lr = ISOMETRY_LR
    if isometry_steps is None:
        isometry_steps = ISOMETRY_STEPS

    import torch

    from sigprop.data import DATASETS, load_dataset
    from sigprop.errors import NumericalError
    from sigprop.nets import INIT_SCHEMES, MODEL_NAMES, build_model, initialize
    from sigprop.theory.activations import get_activation
    from sigprop.train import resolve_device

    if model not in MODEL_NAMES:
        raise ValueError(f"unknown model {model!r}; known models: {', '.join(MODEL_NAMES)}")
    if data is not None and data not in DATASETS:
        raise ValueError(f"unknown data set {data!r}; known data sets: {', '.join(DATASETS)} (or none)")
    if init not in INIT_SCHEMES:
        raise ValueError(f"unknown init {init!r}; allowed: {', '.join(INIT_SCHEMES)}")
    act = get_activation(activation, **(act_params or {}))
    dev = resolve_device(device)

    gen = torch.Generator().manual_seed(int(seed))
    if data is not None:
        splits = load_dataset(data, data_dir=data_dir, seed=seed)
        shape, classes = tuple(splits.in_shape), int(splits.num_classes)
        x_all, y_all = splits.train.tensors
        needed = batches * batch_size
        if needed > len(x_all):
            raise ValueError(
                f"{batches} batch(es) of {batch_size} examples need {needed} training examples; {data} has "
                f"{len(x_all)}: lower --batches or --batch-size"
            )
        perm = torch.randperm(len(x_all), generator=gen)
        score_batches = [
            (
                x_all[perm[i * batch_size : (i + 1) * batch_size]].to(dev),
                y_all[perm[i * batch_size : (i + 1) * batch_size]].to(dev),
            )
            for i in range(batches)
        ]
        x_jac = x_all[perm[: min(jacobian_batch, len(x_all))]].to(dev)
    else:
        shape, classes = tuple(int(d) for d in in_shape), int(num_classes)
        score_batches = None
        x_jac = torch.randn((jacobian_batch, *shape), generator=gen).to(dev)

    net = build_model(model, in_shape=shape, num_classes=classes, depth=depth, width=width, activation=act)
    init_kw = {"sigma_w2": sigma_w2, "sigma_b2": sigma_b2, "eta": eta}
    record = initialize(net, init, activation=act, seed=seed, **{k: v for k, v in init_kw.items() if v is not None})
    net.to(dev)

    from sigprop.jacobian import jacobian_stats
    from sigprop.pruning import (
        apply_masks,
        collapsed_layers,
        critical_sparsity,
        kept_per_layer,
        magnitude_scores,
        make_masks,
        named_prunable,
        random_scores,
        snip_scores,
        synflow_masks,
        synflow_scores,
    )
    from sigprop.pruning import orthogonality_score as ortho

    jac_dense = jacobian_stats(net, x_jac)
    ortho_dense = ortho(net)

    if method == "random":
        scores = random_scores(net, seed=seed)
    elif method == "magnitude":
        scores = magnitude_scores(net)
    elif method == "snip":
        scores = snip_scores(net, score_batches, loss=loss)
    elif method == "grasp":
        from sigprop.pruning import grasp_scores

        scores = grasp_scores(net, score_batches, loss=loss)
    else:
        scores = synflow_scores(net, shape)
    for name, v in scores.items():
        if torch.isnan(v).any():
            raise NumericalError(
                f"{method} scores of {name} contain NaN (overflow in the forward/backward pass?); "
                "try an initialization closer to the Edge of Chaos or a shallower net"
            )
    if method == "synflow":
        masks = synflow_masks(net, shape, s, rounds=SYNFLOW_ROUNDS, scope=scope, progress=progress)
    else:
        masks = make_masks(scores, s, scope=scope)
    if scope == "global":
        s_cr = critical_sparsity(scores)
    else:
        s_cr = layerwise_critical_sparsity(v.numel() for v in scores.values())
    apply_masks(net, masks)

    rescale_record = None
    if rescale != "none":
        from sigprop.pruning import rescale as rescale_fn

        # each layer's own dense variance (eoc: from model.sigprop_init, first layer included)
        # and each layer's actual pruned fraction (random/magnitude): global masks prune the
        # layers unevenly, and the variance argument is per layer
        rescale_record = rescale_fn(net, rescale)
    isometry_record = None
    if isometry:
        from sigprop.pruning import approximate_isometry

        isometry_record = approximate_isometry(net, lr=isometry_lr, max_steps=isometry_steps, progress=progress)

    names = [n for n, _, _ in named_prunable(net)]
    kept = kept_per_layer(net)
    total = sum(m.numel() for m in masks.values())
    kept_n = sum(int(m.sum()) for m in masks.values())
    settings = {
        "model": model,
        "depth": depth,
        "width": width,
        "activation": act.label(),
        "activation_name": act.name,
        "act_params": dict(act_params or {}),
        "init": init,
        "sigma_w2": sigma_w2,
        "sigma_b2": sigma_b2,
        "eta": eta,
        "data": data,
        "data_dir": None if data_dir is None else str(data_dir),
        "in_shape": list(shape),
        "num_classes": classes,
        "method": method,
        "sparsity": s,
        "scope": scope,
        "loss": loss if method in ("snip", "grasp") else None,
        "rescale": rescale,
        "isometry": bool(isometry),
        "batch_size": batch_size,
        "batches": batches,
        "jacobian_batch": int(x_jac.shape[0]),
        "seed": seed,
        "init_sigma_w2": record.get("sigma_w2"),
        "init_sigma_b2": record.get("sigma_b2"),
        "init_q_star": record.get("q_star"),
    }
    jac = jacobian_stats(net, x_jac)
    connected = input_output_connected(net)
    if connected is None:  # not a plain MLP: no path <=> (here) the measured Jacobian is exactly 0
        disconnected, how = jac.get("norm") == 0.0, "jacobian"
    else:
        disconnected, how = not connected, "structural"
    result = {
        "kept_per_layer": kept,
        "collapsed_layers": collapsed_layers(net),
        "disconnected": bool(disconnected),
        "disconnected_check": how,
        "critical_sparsity": s_cr,
        "jacobian": jac,
        "jacobian_dense": jac_dense,
        "orthogonality_score": ortho(net),
        "orthogonality_score_dense": ortho_dense,
        "layers": names,
        "kept_fraction": kept_n / total,
        "rescale": rescale_record,
        "isometry": isometry_record,
        "config": settings,
    }
    result = _json_safe(result)

    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        from sigprop.train import _atomic_write, _write_json

        state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        _atomic_write(out / MODEL_FILE, lambda f: torch.save(state, f))
        _write_json(out / CONFIG_FILE, _json_safe({"format": _FORMAT, **settings}))
        _write_json(out / RESULT_FILE, result)
    if plot is not None:
        plot_kept(net, plot, title=f"{method}, sparsity {s:g}, {scope}")
    return result


# --------------------------------------------------------------------------------------------
# reading a pruned model back
# --------------------------------------------------------------------------------------------
def load_pruned(path: str | Path, device: str = "cpu"):
    """Rebuild the masked model saved by :func:`run_prune` in folder ``path``.

    Returns ``(model, config, digest)``: the model (built from :data:`CONFIG_FILE`, masks attached
    with :func:`torch.nn.utils.prune.custom_from_mask`, then the saved ``state_dict`` loaded
    strictly, so the weights and masks are exactly the saved ones), the saved settings, and the
    SHA-256 of :data:`MODEL_FILE`. Raises ValueError when a file is missing or does not fit.
    """
    import torch

    from sigprop.nets import build_model
    from sigprop.pruning import apply_masks

    path = Path(path)
    cfg_file, model_file = path / CONFIG_FILE, path / MODEL_FILE
    for f in (cfg_file, model_file):
        if not f.is_file():
            raise ValueError(
                f"{path} holds no pruned model ({f.name} missing); write one with 'sigprop prune --out {path}'"
            )
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{cfg_file} is not valid JSON ({exc})") from exc
    if not isinstance(cfg, dict) or cfg.get("format") != _FORMAT:
        raise ValueError(f"{cfg_file} has an unknown format; write it again with 'sigprop prune --out'")
    try:
        state = torch.load(model_file, map_location=device, weights_only=True)
    except Exception as exc:
        raise ValueError(f"{model_file} is not a readable model ({type(exc).__name__}: {exc})") from exc
    net = build_model(
        cfg["model"],
        in_shape=tuple(cfg["in_shape"]),
        num_classes=int(cfg["num_classes"]),
        depth=cfg.get("depth"),
        width=cfg.get("width"),
        activation=cfg["activation_name"],
        act_params=cfg.get("act_params") or None,
    )
    masks = {k[: -len("_mask")]: v for k, v in state.items() if k.endswith("_mask")}
    try:
        apply_masks(net, masks)
        net.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"{model_file} does not fit the model described in {cfg_file}: {exc}") from None
    return net, cfg, _mask_digest(model_file)


# --------------------------------------------------------------------------------------------
# figure
# --------------------------------------------------------------------------------------------
def plot_kept(model, path: str | Path, title: str | None = None) -> Path:
    """Kept fractions of a masked model (seed 001 Figs 1-2 style), as a PNG.

    Top: one column per prunable tensor (layer, in order), one pixel per output unit (neuron or
    channel) showing the fraction of its incoming weights kept (seed 001 Fig 1); units beyond a
    layer's width are blank. Bottom: the kept fraction of each tensor (seed 001 Fig 2), collapsed
    tensors marked in red below the axis.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from sigprop.pruning import named_prunable

    cols = []
    for _, module, tname in named_prunable(model):
        mask = getattr(module, tname + "_mask", None)
        w = getattr(module, tname)
        m = (mask != 0) if mask is not None else np.ones(tuple(w.shape), bool)
        m = np.asarray(m.detach().cpu().numpy() if hasattr(m, "detach") else m, dtype=float)
        cols.append(m.reshape(m.shape[0], -1).mean(axis=1))
    height = max(len(c) for c in cols)
    img = np.full((height, len(cols)), np.nan)
    for j, c in enumerate(cols):
        img[: len(c), j] = c
    # the kept fraction of a tensor is the mean of its units' fractions (every unit of a tensor
    # has the same fan-in)
    frac = np.array([float(np.mean(c)) if len(c) else 1.0 for c in cols])
    fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(max(6.0, 0.08 * len(cols) + 4), 6), sharex=True)
    im = ax0.imshow(img, aspect="auto", origin="lower", vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
    ax0.set_ylabel("unit")
    fig.colorbar(im, ax=[ax0, ax1], label="kept fraction")
    x = np.arange(len(cols))
    ax1.bar(x, frac, color="tab:blue", width=0.9)
    gone = x[frac == 0]
    if len(gone):  # a zero-height bar is invisible: mark collapsed layers below the axis
        ax1.plot(gone, np.full(len(gone), -0.04), "|", color="tab:red", ms=8, clip_on=False, label="collapsed")
        ax1.legend(loc="upper right")
    ax1.set_ylim(0, 1)
    ax1.set_xlabel("layer")
    ax1.set_ylabel("kept fraction")
    if title:
        ax0.set_title(title)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
