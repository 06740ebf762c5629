"""Activation registry: phi, phi', kinks, pieces and a torch twin, by name with parameters.

An :class:`Activation` is described by *pieces*: consecutive intervals of the real line
separated by its kinks. A piece is either linear (``phi(x) = slope * x + intercept``, the
Gaussian engine integrates it exactly) or non-linear (integrated by quadrature using
``phi``/``dphi``). The torch twin (:meth:`Activation.torch_module`) is built lazily so this
module never imports torch.

Sparsity-inducing families follow Price et al. (seed 004): ``relu_tau`` (eq. 7),
``st_tau`` (soft threshold, eq. 8), ``crelu`` (clipped shifted ReLU, eq. 9) and ``cst``
(clipped soft threshold, eq. 10). Their parameters may be NumPy arrays (a *batch* of
activations, used by the vectorized calibration); everything else takes scalars.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import special

__all__ = ["Activation", "Piece", "available", "get_activation", "parse_params"]

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
_INF = math.inf


@dataclass(frozen=True)
class Piece:
    """phi on the open interval (lo, hi): linear ``slope*x + intercept`` or non-linear."""

    lo: Any
    hi: Any
    slope: Any = None
    intercept: Any = 0.0

    @property
    def is_linear(self) -> bool:
        return self.slope is not None


@dataclass(frozen=True, eq=False)
class Activation:
    """A scalar activation function with what mean-field theory needs to integrate it.

    Attributes
    ----------
    name : str
        Registry name (``sigprop.theory.activations.available()`` lists them).
    params : dict
        Parameters as given (after defaults), e.g. ``{"tau": 0.25, "m": 1.22}``.
    phi, dphi : callable
        NumPy functions x -> phi(x), phi'(x) (phi' one-sided at kinks).
    pieces : tuple of Piece
        Consecutive pieces covering the real line; their inner boundaries are the kinks.
    feature_points : ndarray
        Points in x where a smooth activation changes fastest; added as quadrature
        breakpoints so large variances stay accurate.
    """

    name: str
    params: dict
    phi: Callable[[np.ndarray], np.ndarray]
    dphi: Callable[[np.ndarray], np.ndarray]
    pieces: tuple[Piece, ...]
    feature_points: np.ndarray = field(
        default_factory=lambda: np.array(
            [-32.0, -16.0, -8.0, -4.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
        )
    )
    _torch: str = ""

    @property
    def kinks(self) -> tuple:
        """Finite boundaries between pieces (where phi' jumps)."""
        return tuple(p.hi for p in self.pieces[:-1])

    def kinks_array(self) -> np.ndarray:
        return np.asarray([float(k) for k in self.kinks], float) if self.kinks else np.zeros(0)

    @property
    def is_piecewise_linear(self) -> bool:
        return all(p.is_linear for p in self.pieces)

    @property
    def is_batched(self) -> bool:
        return any(np.ndim(v) > 0 for v in self.params.values())

    def __repr__(self) -> str:
        ps = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"Activation({self.name}{', ' + ps if ps else ''})"

    def label(self) -> str:
        """Short human-readable name such as ``crelu(tau=0.25, m=1.22)``."""
        ps = ", ".join(f"{k}={_fmt(v)}" for k, v in self.params.items())
        return f"{self.name}({ps})" if ps else self.name

    def torch_module(self):
        """A ``torch.nn.Module`` computing the same function (imports torch lazily)."""
        from sigprop.nn_activations import TorchActivation

        if self.is_batched:
            raise ValueError(f"{self.name}: a batch of parameter values has no torch twin; pass scalars")
        return TorchActivation(self)


def _fmt(v) -> str:
    return f"{float(v):.6g}" if np.ndim(v) == 0 else str(np.asarray(v).tolist())


# ----------------------------------------------------------------------------------------
# Piecewise-linear helper: pieces -> phi, dphi
# ----------------------------------------------------------------------------------------
def _pl_funcs(pieces: tuple[Piece, ...]):
    def phi(x):
        x = np.asarray(x, float)
        out = pieces[0].slope * x + pieces[0].intercept
        for p in pieces[1:]:
            out = np.where(x > p.lo, p.slope * x + p.intercept, out)
        return out

    def dphi(x):
        x = np.asarray(x, float)
        out = pieces[0].slope * np.ones_like(x)
        for p in pieces[1:]:
            out = np.where(x > p.lo, p.slope, out)
        return out

    return phi, dphi


def _pl(name: str, params: dict, breaks: list, lines: list[tuple]) -> Activation:
    """Build a piecewise-linear activation from kinks and (slope, intercept) per piece."""
    bounds = [-_INF, *breaks, _INF]
    pieces = tuple(Piece(bounds[i], bounds[i + 1], s, b) for i, (s, b) in enumerate(lines))
    phi, dphi = _pl_funcs(pieces)
    return Activation(name, params, phi, dphi, pieces, _torch="pl")


def _smooth(name, params, phi, dphi, torch_name) -> Activation:
    return Activation(name, params, phi, dphi, (Piece(-_INF, _INF),), _torch=torch_name)


# ----------------------------------------------------------------------------------------
# Families
# ----------------------------------------------------------------------------------------
def _relu() -> Activation:
    return _pl("relu", {}, [0.0], [(0.0, 0.0), (1.0, 0.0)])


def _leaky_relu(alpha=0.01) -> Activation:
    alpha = _check_real("leaky_relu", "alpha", alpha)
    return _pl("leaky_relu", {"alpha": alpha}, [0.0], [(alpha, 0.0), (1.0, 0.0)])


def _linear() -> Activation:
    return _pl("linear", {}, [], [(1.0, 0.0)])


def _hard_tanh() -> Activation:
    return _pl("hard_tanh", {}, [-1.0, 1.0], [(0.0, -1.0), (1.0, 0.0), (0.0, 1.0)])


def _relu_tau(tau=0.0) -> Activation:
    tau = _check_nonneg("relu_tau", "tau", tau)
    return _pl("relu_tau", {"tau": tau}, [tau], [(0.0, 0.0), (1.0, -tau)])


def _st_tau(tau=0.0) -> Activation:
    tau = _check_nonneg("st_tau", "tau", tau)
    return _pl("st_tau", {"tau": tau}, [-tau, tau], [(1.0, tau), (0.0, 0.0), (1.0, -tau)])


def _crelu(tau=0.0, m=1.0) -> Activation:
    tau = _check_nonneg("crelu", "tau", tau)
    m = _check_pos("crelu", "m", m)
    return _pl("crelu", {"tau": tau, "m": m}, [tau, tau + m], [(0.0, 0.0), (1.0, -tau), (0.0, m)])


def _cst(tau=0.0, m=1.0) -> Activation:
    tau = _check_nonneg("cst", "tau", tau)
    m = _check_pos("cst", "m", m)
    return _pl(
        "cst",
        {"tau": tau, "m": m},
        [-tau - m, -tau, tau, tau + m],
        [(0.0, -m), (1.0, tau), (0.0, 0.0), (1.0, -tau), (0.0, m)],
    )


def _tanh() -> Activation:
    return _smooth("tanh", {}, np.tanh, lambda x: 1.0 - np.tanh(x) ** 2, "tanh")


def _erf() -> Activation:
    c = 2.0 / math.sqrt(math.pi)
    return _smooth("erf", {}, special.erf, lambda x: c * np.exp(-np.square(x)), "erf")


def _sigmoid() -> Activation:
    def d(x):
        s = special.expit(x)
        return s * (1.0 - s)

    return _smooth("sigmoid", {}, special.expit, d, "sigmoid")


def _gelu() -> Activation:
    # exact GELU: x Phi(x)
    def phi(x):
        return x * special.ndtr(x)

    def d(x):
        return special.ndtr(x) + x * np.exp(-0.5 * np.square(x)) / math.sqrt(2 * math.pi)

    return _smooth("gelu", {}, phi, d, "gelu")


def _silu() -> Activation:
    def phi(x):
        return x * special.expit(x)

    def d(x):
        s = special.expit(x)
        return s * (1.0 + x * (1.0 - s))

    return _smooth("silu", {}, phi, d, "silu")


def _softplus() -> Activation:
    return _smooth("softplus", {}, lambda x: np.logaddexp(0.0, x), special.expit, "softplus")


def _elu_like(name, params, alpha, scale) -> Activation:
    def phi(x):
        x = np.asarray(x, float)
        return scale * np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0)))

    def d(x):
        x = np.asarray(x, float)
        return scale * np.where(x > 0, 1.0, alpha * np.exp(np.minimum(x, 0.0)))

    pieces = (Piece(-_INF, 0.0), Piece(0.0, _INF, scale, 0.0))
    return Activation(name, params, phi, d, pieces, _torch=name)


def _elu(alpha=1.0) -> Activation:
    alpha = _check_real("elu", "alpha", alpha)
    return _elu_like("elu", {"alpha": alpha}, alpha, 1.0)


def _selu() -> Activation:
    return _elu_like("selu", {}, SELU_ALPHA, SELU_SCALE)


_REGISTRY: dict[str, Callable[..., Activation]] = {
    "relu": _relu,
    "leaky_relu": _leaky_relu,
    "linear": _linear,
    "tanh": _tanh,
    "hard_tanh": _hard_tanh,
    "erf": _erf,
    "sigmoid": _sigmoid,
    "elu": _elu,
    "selu": _selu,
    "gelu": _gelu,
    "silu": _silu,
    "softplus": _softplus,
    "relu_tau": _relu_tau,
    "st_tau": _st_tau,
    "crelu": _crelu,
    "cst": _cst,
}

#: Parameters each family accepts (name -> default).
PARAMS: dict[str, dict[str, float]] = {
    "leaky_relu": {"alpha": 0.01},
    "elu": {"alpha": 1.0},
    "relu_tau": {"tau": 0.0},
    "st_tau": {"tau": 0.0},
    "crelu": {"tau": 0.0, "m": 1.0},
    "cst": {"tau": 0.0, "m": 1.0},
}

#: The sparsity-inducing families of seed 004.
SPARSE_FAMILIES = ("relu_tau", "st_tau", "crelu", "cst")


def available() -> list[str]:
    """Names of all registered activations."""
    return list(_REGISTRY)


def get_activation(name: str | Activation, **params) -> Activation:
    """Look up an activation by name with parameters, e.g. ``get_activation("crelu", tau=0.25, m=1.2)``.

    Raises ValueError naming the known activations or the allowed parameters.
    """
    if isinstance(name, Activation):
        if params:
            raise ValueError("parameters cannot be given together with an Activation object")
        return name
    if name not in _REGISTRY:
        raise ValueError(f"unknown activation {name!r}; known activations: {', '.join(_REGISTRY)}")
    allowed = PARAMS.get(name, {})
    bad = sorted(set(params) - set(allowed))
    if bad:
        what = ", ".join(allowed) if allowed else "none"
        raise ValueError(f"activation {name!r} has no parameter {', '.join(map(repr, bad))}; allowed: {what}")
    return _REGISTRY[name](**params)


def parse_params(items: list[str] | None) -> dict[str, float]:
    """Parse command-line ``NAME=VALUE`` strings into a dict of floats."""
    out: dict[str, float] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--param expects NAME=VALUE, got {item!r}")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--param {key}: {value!r} is not a number") from None
    return out


def _as_param(name, pname, value):
    arr = np.asarray(value, float)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: parameter {pname} must be finite, got {value}")
    return float(arr) if arr.ndim == 0 else arr


def _check_real(name, pname, value):
    return _as_param(name, pname, value)


def _check_nonneg(name, pname, value):
    v = _as_param(name, pname, value)
    if np.any(np.asarray(v) < 0):
        raise ValueError(f"{name}: parameter {pname} must be >= 0, got {value}")
    return v


def _check_pos(name, pname, value):
    v = _as_param(name, pname, value)
    if np.any(np.asarray(v) <= 0):
        raise ValueError(f"{name}: parameter {pname} must be > 0, got {value}")
    return v
