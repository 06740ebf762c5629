"""Initializers for whole models: Edge of Chaos, explicit Gaussian, variance scaling,
orthogonal (layerwise dynamical isometry) and correlated weights.

One call, :func:`initialize`, re-draws every ``nn.Linear`` and ``nn.Conv1d/2d/3d`` of a model in
place, reproducibly from a seed, and returns a JSON-serializable record of what it set (also
stored on the model as ``model.sigprop_init`` so that a later reader, e.g. ``NetSpec.from_module``,
can find it). Other modules (normalization layers, ...) are left alone.

Conventions
-----------
* ``fan_in`` of a layer is ``in_features`` for Linear and ``in_channels / groups * prod(kernel)``
  for convolutions; ``fan_out`` is ``out_features`` resp. ``out_channels * prod(kernel)``
  (the same as ``torch.nn.init``).
* Variances are named ``sigma_w2`` / ``sigma_b2`` as in mean-field theory: weights have
  per-entry variance ``sigma_w2 / fan_in`` and biases variance ``sigma_b2``, so that a
  pre-activation ``h = W phi(x) + b`` has variance ``sigma_w2 E[phi^2] + sigma_b2`` (seed 004
  eq. 5, the variance map ``V``).
* "First layer" is the first Linear/Conv in ``model.modules()`` order (the stem of a CNN).
* Randomness: every tensor is drawn on the CPU from one ``torch.Generator`` (seeded from
  ``seed``) in module order, weight before bias, in float32 (float64 for float64 parameters),
  and then copied to the parameter's device and dtype, so the same seed gives the same weights
  on every device (and for float32, float16 and bfloat16 models, up to rounding).
* A layer pruned with ``torch.nn.utils.prune`` (``weight_orig`` + ``weight_mask``) has its
  ``weight_orig`` re-drawn and its masked ``weight`` refreshed; the mask is kept.

Schemes (``INIT_SCHEMES``)
--------------------------
``eoc``
    ``(sigma_w2, sigma_b2)`` on the Edge of Chaos of the activation from
    :func:`sigprop.theory.meanfield.eoc` at ``q_star`` (or at the given ``sigma_b2``, which then
    fixes q*), weights ``N(0, sigma_w2 / fan_in)``, biases ``N(0, sigma_b2)``. Positively
    homogeneous activations (relu, leaky_relu, linear) have the EOC ``sigma_w2 = 1/E[phi'^2]``
    (2 for relu), ``sigma_b2 = 0``, on which every q is a fixed point.

    First layer (seed 004 App. D). Price et al. initialize "all layers on the EoC, with a slight
    modification for the first layer ... initialized so as to preserve the input variance in
    the first layer's pre-activations": the EoC variance assumes the layer's input is a
    post-activation ``phi(h)``, whereas the raw input is dense and multiplying it by an EoC
    matrix "would substantially grow the variance, possibly to a value larger than q*". The
    paper gives no formula; with its setting (standardized inputs, q* = 1) preserving the input
    variance means first-layer weights ``N(0, 1 / fan_in)`` and no bias. We implement the rule
    that reduces to exactly this and puts the first pre-activations *at* q* in general
    (``first_layer="q_star"``, the default)::

        sigma_w2_first = q_star / input_q,   sigma_b2_first = 0,
        so  Var(h^1_i) = sigma_w2_first * ||x||^2 / fan_in + 0 = q_star

    where ``input_q = E||x||^2 / fan_in`` is the per-coordinate second moment of the input
    (1 for standardized data, the default). ``first_layer="same"`` uses the EOC values in the
    first layer too.
``gaussian``
    Explicit ``sigma_w2`` and ``sigma_b2`` (both required) in every layer: weights
    ``N(0, sigma_w2 / fan_in)``, biases ``N(0, sigma_b2)``; the ordered / chaotic phases are one
    argument away from the EOC.
``lecun``, ``glorot``, ``he``
    Variance scaling, seed 002's VS-L, VS-G, VS-H (LeCun et al. 1998, Glorot & Bengio 2010,
    He et al. 2015): weights ``N(0, 1/fan_in)``, ``N(0, 2/(fan_in + fan_out))``,
    ``N(0, 2/fan_in)``; zero biases. (Normal, not uniform or truncated, laws.)
``orthogonal``
    Layerwise dynamical isometry (seed 002 Sec. 3.3, Saxe et al. 2014, Pennington et al. 2017):
    every layer Jacobian ``D W`` should have all singular values near 1, which with the
    pre-activations at the mean-field fixed point q* means ``W^T W = sigma_w2 I`` (seed 002,
    "(DW)^T(DW) = W^T W / sigma_w^2 = I"). So Linear weights are Haar (semi-)orthogonal times
    the gain ``sqrt(sigma_w2)`` with ``sigma_w2`` the mean-field EOC value of the activation at
    ``q_star`` (or the given ``sigma_w2``); biases ``N(0, sigma_b2)`` with the EOC ``sigma_b2``.
    For an ``out x in`` matrix: ``W W^T = gain^2 I_out`` when ``out <= in`` (orthonormal rows),
    ``W^T W = gain^2 I_in`` when ``out > in`` (orthonormal columns; every singular value is
    ``gain``, so the per-unit output variance is ``gain^2 q in/out``, a factor ``in/out``
    below the Gaussian EOC value: the price of exact isometry on a widening layer).
    Convolutions use the delta-orthogonal kernel (Xiao et al. 2018, Alg. 2): all taps zero
    except the centre tap (index ``k // 2`` per spatial dimension), which is the (semi-)
    orthogonal ``out x in/groups`` matrix above (one block per group); it is orthogonal only
    when ``out_channels >= in_channels``, semi-orthogonal (orthonormal rows) otherwise. The
    first layer follows the ``first_layer`` rule with the gain chosen to put its outputs at q*:
    ``gain^2 = (q_star / input_q) * max(1, out/in)``.
``correlated``
    Seed 000 Sec. 5 (Fig. 4): ``W_k^{ij} = W_{k,ind}^{ij} + eta * w^k`` with
    ``W_{k,ind}^{ij}, w^k ~ N(0, sigma_w2 / fan_in)`` independent, where ``w^k`` is ONE scalar
    per layer k shared by all entries of that layer. Hence ``Var(W^{ij}) = (1 + eta^2)
    sigma_w2 / fan_in``, ``Cov(W^{ij}, W^{ml}) = eta^2 sigma_w2 / fan_in`` and
    ``corr = eta^2 / (1 + eta^2)``. As in the paper the total variance is not renormalized.
    The seed uses ``sigma_w2 = 2`` (ReLU); here ``sigma_w2`` defaults to the EOC value of the
    activation at ``q_star`` (2 for relu), biases ``N(0, sigma_b2)`` with the EOC ``sigma_b2``
    (0 for relu). The drawn ``w^k`` is recorded per layer (``w_shared``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from sigprop.errors import check_variance
from sigprop.theory.activations import Activation, get_activation
from sigprop.theory.meanfield import eoc

__all__ = [
    "INIT_ATTR",
    "INIT_SCHEMES",
    "activation_from_module",
    "delta_orthogonal_",
    "fans",
    "haar",
    "initialize",
    "model_activation",
    "orthogonal_",
]

INIT_SCHEMES = ("eoc", "gaussian", "lecun", "glorot", "he", "orthogonal", "correlated")
FIRST_LAYER_RULES = ("q_star", "same")
#: attribute of the model where :func:`initialize` leaves its record
INIT_ATTR = "sigprop_init"

_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_EOC_SCHEMES = ("eoc", "orthogonal", "correlated")


# ----------------------------------------------------------------------------------------
# Activation lookup
# ----------------------------------------------------------------------------------------
def activation_from_module(m: nn.Module) -> Activation | None:
    """The registry activation a torch module computes (TorchActivation, nn.ReLU, nn.Tanh, ...), or None."""
    act = getattr(m, "act", None)
    if isinstance(act, Activation):  # sigprop.nn_activations.TorchActivation
        return act
    if isinstance(m, nn.LeakyReLU):
        return get_activation("leaky_relu", alpha=float(m.negative_slope))
    if isinstance(m, nn.ELU):
        return get_activation("elu", alpha=float(m.alpha))
    if isinstance(m, nn.GELU):
        return get_activation("gelu") if m.approximate == "none" else None
    if isinstance(m, nn.Softplus):
        return get_activation("softplus") if float(m.beta) == 1.0 and float(m.threshold) >= 20 else None
    if isinstance(m, nn.Hardtanh):
        return get_activation("hard_tanh") if (m.min_val, m.max_val) == (-1.0, 1.0) else None
    simple = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.SiLU: "silu", nn.SELU: "selu"}
    simple[nn.Identity] = "linear"
    for cls, name in simple.items():
        if type(m) is cls:
            return get_activation(name)
    return None


def model_activation(activation=None, act_params: dict | None = None, model: nn.Module | None = None) -> Activation:
    """The :class:`Activation` to initialize for.

    ``activation`` may be an Activation, a registry name (with ``act_params``), a
    ``TorchActivation`` or a plain torch activation module (``nn.ReLU``, ``nn.Tanh``, ...).
    When it is None, ``model.activation`` is used if the model has one, else relu.
    """
    if activation is None:
        activation = getattr(model, "activation", None) if model is not None else None
        if activation is None:
            activation = "relu"
    if isinstance(activation, str):
        return get_activation(activation, **(act_params or {}))
    if act_params:
        raise ValueError("act_params can only be given with an activation name (e.g. activation='crelu')")
    if isinstance(activation, Activation):
        return activation
    if isinstance(activation, nn.Module):
        act = activation_from_module(activation)
        if act is not None:
            return act
        raise ValueError(
            f"cannot read a sigprop activation off {activation!r}; pass activation=NAME "
            "(sigprop.theory.activations.available() lists them)"
        )
    raise TypeError(f"activation must be an Activation, a name or a torch activation module, got {type(activation)}")


# ----------------------------------------------------------------------------------------
# Per-tensor helpers
# ----------------------------------------------------------------------------------------
def fans(module: nn.Module) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a Linear / Conv layer (conv: channels/groups times kernel size)."""
    w = _weight(module)
    receptive = int(np.prod(w.shape[2:])) if w.dim() > 2 else 1
    return int(w.shape[1]) * receptive, int(w.shape[0]) * receptive


def _draw_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _randn(shape, generator, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=generator, dtype=dtype, device="cpu")


def haar(rows: int, cols: int, generator, dtype=torch.float32) -> torch.Tensor:
    """Haar-distributed ``rows x cols`` matrix with orthonormal rows (rows <= cols) or
    columns (rows > cols), on the CPU (QR of a Gaussian, signs fixed by diag R)."""
    big, small = max(rows, cols), min(rows, cols)
    a = _randn((big, small), generator, dtype)
    q, r = torch.linalg.qr(a)
    d = torch.sign(torch.diagonal(r))
    q = q * torch.where(d == 0, torch.ones_like(d), d)
    return q if rows >= cols else q.T.contiguous()


def orthogonal_(weight: torch.Tensor, gain: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill a 2-D ``out x in`` tensor in place with a Haar (semi-)orthogonal matrix times ``gain``.

    ``W W^T = gain^2 I_out`` if ``out <= in``, else ``W^T W = gain^2 I_in``.
    """
    if weight.dim() != 2:
        raise ValueError(f"orthogonal_ expects a 2-D weight, got shape {tuple(weight.shape)}")
    q = haar(weight.shape[0], weight.shape[1], generator, _draw_dtype(weight.dtype)) * float(gain)
    with torch.no_grad():
        weight.copy_(q.to(device=weight.device, dtype=weight.dtype))
    return weight


def delta_orthogonal_(
    weight: torch.Tensor, gain: float = 1.0, generator: torch.Generator | None = None, groups: int = 1
) -> torch.Tensor:
    """Delta-orthogonal conv kernel (Xiao et al. 2018): zero except the centre tap.

    ``weight`` has shape ``(out, in/groups, *kernel)``; the centre tap (index ``k // 2`` in
    every spatial dimension) is block diagonal over groups, each ``out/groups x in/groups``
    block a Haar (semi-)orthogonal matrix times ``gain``. Orthogonal (``H^T H = gain^2 I``)
    when ``out/groups >= in/groups``; otherwise orthonormal rows (``H H^T = gain^2 I``).
    """
    if weight.dim() < 3:
        raise ValueError(f"delta_orthogonal_ expects a conv weight (out, in, *kernel), got {tuple(weight.shape)}")
    out_c, in_g = int(weight.shape[0]), int(weight.shape[1])
    if out_c % groups:
        raise ValueError(f"out_channels={out_c} is not divisible by groups={groups}")
    out_g = out_c // groups
    dt = _draw_dtype(weight.dtype)
    full = torch.zeros(tuple(weight.shape), dtype=dt)
    centre = tuple(k // 2 for k in weight.shape[2:])
    for g in range(groups):
        block = haar(out_g, in_g, generator, dt) * float(gain)
        full[(slice(g * out_g, (g + 1) * out_g), slice(None), *centre)] = block
    with torch.no_grad():
        weight.copy_(full.to(device=weight.device, dtype=weight.dtype))
    return weight


def _weight(module: nn.Module) -> torch.Tensor:
    """The parameter to draw: ``weight_orig`` for a layer pruned with torch.nn.utils.prune."""
    w = getattr(module, "weight_orig", None)
    return w if isinstance(w, torch.Tensor) else module.weight


def _set(param: torch.Tensor, value: torch.Tensor) -> None:
    with torch.no_grad():
        param.copy_(value.to(device=param.device, dtype=param.dtype))


def _refresh_mask(module: nn.Module) -> None:
    mask = getattr(module, "weight_mask", None)
    if isinstance(mask, torch.Tensor) and isinstance(getattr(module, "weight_orig", None), torch.Tensor):
        module.weight = module.weight_orig * mask  # what torch.nn.utils.prune's hook computes


# ----------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------
def _var(value, name: str, allow_zero: bool = True) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or np.ndim(value) != 0:
        raise ValueError(f"{name} must be a single number, got {value!r}")
    return float(check_variance(value, name, allow_zero=allow_zero))


def _check_args(scheme, sigma_w2, sigma_b2, eta, first_layer):
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; known schemes: {', '.join(INIT_SCHEMES)}")
    if scheme == "gaussian" and (sigma_w2 is None or sigma_b2 is None):
        raise ValueError("scheme='gaussian' needs both sigma_w2 and sigma_b2 (use scheme='eoc' for the Edge of Chaos)")
    if scheme in ("lecun", "glorot", "he") and (sigma_w2 is not None or sigma_b2 is not None):
        raise ValueError(f"scheme={scheme!r} sets its own variances; sigma_w2/sigma_b2 go with scheme='gaussian'")
    if scheme == "eoc" and sigma_w2 is not None:
        raise ValueError(
            "scheme='eoc' takes sigma_w2 from the Edge of Chaos (give q_star or sigma_b2); "
            "for an explicit sigma_w2 use scheme='gaussian'"
        )
    if scheme == "correlated":
        if eta is None:
            raise ValueError("scheme='correlated' needs eta (W = W_ind + eta * w, seed 000 Sec. 5), e.g. eta=2**-8")
        if isinstance(eta, bool) or np.ndim(eta) != 0 or not math.isfinite(float(eta)):
            raise ValueError(f"eta must be a finite number, got {eta!r}")
    elif eta is not None:
        raise ValueError(f"eta is only used by scheme='correlated', not {scheme!r}")
    if first_layer is not None:
        if first_layer not in FIRST_LAYER_RULES:
            raise ValueError(f"unknown first_layer rule {first_layer!r}; allowed: {', '.join(FIRST_LAYER_RULES)}")
        if first_layer != "same" and scheme not in ("eoc", "orthogonal"):
            raise ValueError(f"first_layer={first_layer!r} applies to schemes 'eoc' and 'orthogonal' only")


def _mean_field(act: Activation, sigma_w2, sigma_b2, q_star) -> tuple[float, float, float | None, str | None]:
    """(sigma_w2, sigma_b2, q_star, note) for the EOC-based schemes."""
    if sigma_w2 is not None:  # orthogonal / correlated with an explicit gain
        return sigma_w2, (0.0 if sigma_b2 is None else sigma_b2), q_star, None
    pt = eoc(act, q_star=q_star) if sigma_b2 is None else eoc(act, sigma_b2=sigma_b2)
    q = pt.q_star if pt.q_star is not None else q_star  # homogeneous: every q is a fixed point
    return float(pt.sigma_w2), float(pt.sigma_b2), (None if q is None else float(q)), pt.note


# ----------------------------------------------------------------------------------------
# The one entry point
# ----------------------------------------------------------------------------------------
def initialize(
    model: nn.Module,
    scheme: str,
    *,
    activation: Activation | str | nn.Module | None = None,
    act_params: dict | None = None,
    sigma_w2: float | None = None,
    sigma_b2: float | None = None,
    q_star: float = 1.0,
    eta: float | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    first_layer: str | None = None,
    input_q: float = 1.0,
) -> dict[str, Any]:
    """Initialize every Linear / Conv1d/2d/3d of ``model`` in place with ``scheme``.

    Parameters
    ----------
    model : nn.Module
    scheme : str
        One of ``INIT_SCHEMES`` (see the module docstring for each).
    activation : Activation, str, nn.Module or None
        Activation the mean-field values are computed for (schemes eoc, orthogonal,
        correlated). Default: ``model.activation`` if present, else relu.
    act_params : dict, optional
        Parameters of a named activation, e.g. ``{"tau": 0.3, "m": 1.2}`` for crelu.
    sigma_w2, sigma_b2 : float, optional
        Variances (>= 0). Required for ``gaussian``; for ``eoc``/``orthogonal``/``correlated``
        a given ``sigma_b2`` selects the EOC point with that bias variance (its q* replaces
        ``q_star``), a given ``sigma_w2`` (orthogonal, correlated only) replaces the EOC
        value. Not accepted by lecun/glorot/he.
    q_star : float
        Target pre-activation variance q* > 0 of the EOC point (default 1, as in seed 004).
    eta : float, optional
        Correlation strength of ``correlated`` (required there, rejected elsewhere).
    seed, generator :
        Source of randomness (at most one). Neither: torch's global generator.
    first_layer : {"q_star", "same"}, optional
        First-layer rule of ``eoc``/``orthogonal`` (default "q_star": seed 004 App. D, the
        first pre-activations get variance q* from inputs of second moment ``input_q``).
    input_q : float
        Per-coordinate second moment of the inputs ``E||x||^2 / n_0`` (1 for standardized data).

    Returns
    -------
    dict
        JSON-serializable record: ``scheme, activation, sigma_w2, sigma_b2, q_star, eta, seed,
        first_layer, input_q, note`` and ``layers``, one dict per initialized layer in module
        order with ``name, type, shape, fan_in, fan_out, first, law`` (gaussian /
        orthogonal / delta_orthogonal / correlated), ``sigma_w2`` (effective: fan_in times the
        per-entry weight variance, or gain^2 for orthogonal laws), ``weight_var`` (the mean
        per-entry variance E[W_ij^2]), ``weight_std`` (Gaussian laws), ``gain`` (orthogonal
        laws), ``w_shared`` (correlated), ``sigma_b2`` and ``bias_std`` (None without bias).
        The same record is stored as ``model.sigprop_init``.

    Raises
    ------
    ValueError
        Unknown scheme, negative variance, missing ``sigma_w2``/``sigma_b2`` (gaussian) or
        ``eta`` (correlated), no EOC point (:class:`sigprop.errors.NoEOCError`), no layer.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model)}")
    sigma_w2 = _var(sigma_w2, "sigma_w2")
    sigma_b2 = _var(sigma_b2, "sigma_b2")
    q_star = _var(q_star, "q_star", allow_zero=False)
    input_q = _var(input_q, "input_q", allow_zero=False)
    _check_args(scheme, sigma_w2, sigma_b2, eta, first_layer)
    if seed is not None and generator is not None:
        raise ValueError("give seed or generator, not both")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
    elif generator is not None and generator.device.type != "cpu":
        raise ValueError("generator must be a CPU torch.Generator (weights are drawn on the CPU, then moved)")
    rule = first_layer or ("q_star" if scheme in ("eoc", "orthogonal") else "same")

    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, _LAYER_TYPES)]
    if not layers:
        raise ValueError("the model has no nn.Linear or nn.Conv1d/2d/3d layer to initialize")
    for name, m in layers:
        if isinstance(_weight(m), nn.parameter.UninitializedParameter):
            raise ValueError(f"layer {name or type(m).__name__} is lazy and not materialized; run a forward pass first")

    act = None
    if scheme in _EOC_SCHEMES or activation is not None or act_params:
        act = model_activation(activation, act_params, model)
    elif getattr(model, "activation", None) is not None:  # only recorded: the scheme does not use it
        try:
            act = model_activation(None, None, model)
        except (TypeError, ValueError):
            act = None
    note = None
    sw, sb, q = sigma_w2, sigma_b2, q_star
    if scheme in _EOC_SCHEMES:
        sw, sb, q, note = _mean_field(act, sigma_w2, sigma_b2, q_star)
    elif scheme in ("lecun", "he"):
        sw, sb, q = (1.0 if scheme == "lecun" else 2.0), 0.0, None
    elif scheme == "glorot":
        sw, sb, q = None, 0.0, None
    else:
        q = None

    records = []
    for i, (name, m) in enumerate(layers):
        first = i == 0
        records.append(
            _init_layer(name, m, scheme, sw, sb, q, eta, generator, first=first and rule == "q_star", input_q=input_q)
        )
        records[-1]["first"] = first

    record = {
        "scheme": scheme,
        "activation": act.label() if act is not None else None,
        "sigma_w2": sw,
        "sigma_b2": sb,
        "q_star": q,
        "eta": None if eta is None else float(eta),
        "seed": None if seed is None else int(seed),
        "first_layer": rule,
        "input_q": input_q,
        "note": note,
        "layers": records,
    }
    setattr(model, INIT_ATTR, record)
    return record


def _init_layer(name, m, scheme, sw, sb, q, eta, gen, *, first: bool, input_q: float) -> dict:
    w = _weight(m)
    fan_in, fan_out = fans(m)
    groups = int(getattr(m, "groups", 1))
    conv = w.dim() > 2
    dt = _draw_dtype(w.dtype)
    rec: dict[str, Any] = {
        "name": name,
        "type": type(m).__name__,
        "shape": list(w.shape),
        "fan_in": fan_in,
        "fan_out": fan_out,
    }
    layer_sb = sb
    if scheme in ("eoc", "gaussian", "lecun", "glorot", "he"):
        if scheme == "glorot":
            var = 2.0 / (fan_in + fan_out)
        elif first:  # eoc, seed 004 App. D
            var, layer_sb = q / input_q / fan_in, 0.0
        else:
            var = sw / fan_in
        std = math.sqrt(var)
        _set(w, _randn(w.shape, gen, dt).mul_(std))
        rec.update(law="gaussian", sigma_w2=var * fan_in, weight_var=var, weight_std=std)
    elif scheme == "orthogonal":
        rows, cols = int(w.shape[0]) // groups, int(w.shape[1])
        if first:
            gain2, layer_sb = q / input_q * max(1.0, rows / cols), 0.0
        else:
            gain2 = sw
        gain = math.sqrt(gain2)
        if conv:
            delta_orthogonal_(w, gain, gen, groups=groups)
            n_taps = int(np.prod(w.shape[2:]))
        else:
            orthogonal_(w, gain, gen)
            n_taps = 1
        var = gain2 * min(rows, cols) / (rows * cols * n_taps)
        rec.update(
            law="delta_orthogonal" if conv else "orthogonal", sigma_w2=gain2, weight_var=var, gain=gain, weight_std=None
        )
    elif scheme == "correlated":
        std = math.sqrt(sw / fan_in)
        ind = _randn(w.shape, gen, dt).mul_(std)
        shared = float(_randn((), gen, dt)) * std
        _set(w, ind.add_(float(eta) * shared))
        var = (1.0 + float(eta) ** 2) * sw / fan_in
        rec.update(law="correlated", sigma_w2=var * fan_in, weight_var=var, weight_std=math.sqrt(var), w_shared=shared)
    else:  # pragma: no cover - guarded by _check_args
        raise AssertionError(scheme)
    _refresh_mask(m)

    bias = getattr(m, "bias", None)
    if isinstance(bias, torch.Tensor):
        bstd = math.sqrt(layer_sb)
        if bstd == 0.0:
            _set(bias, torch.zeros(bias.shape))
        else:
            _set(bias, _randn(bias.shape, gen, _draw_dtype(bias.dtype)).mul_(bstd))
        rec.update(sigma_b2=layer_sb, bias_std=bstd)
    else:
        rec.update(sigma_b2=None, bias_std=None)
    return rec
