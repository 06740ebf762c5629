"""NetSpec: a plain description of a feed-forward network, the bridge between theory and torch.

A NetSpec with widths ``N_0..N_L`` describes ``L`` layers ``h^l = W^l x^{l-1} + b^l``,
``x^l = phi_l(h^l)`` with ``W^l_{ij}`` of variance ``sigma_w2[l] / N_{l-1}`` (Gaussian iid, Haar
orthogonal scaled to that variance, or correlated ``W = W_ind + eta w`` as in seed 000 Sec. 5),
``b^l_i`` of variance ``sigma_b2[l]``, and a random mask keeping a fraction ``kept[l]`` of ``W^l``.
The input-output Jacobian is ``J = D_L W_L ... D_1 W_1`` with ``D_l = diag(phi_l'(h^l))``; a
linear readout is a last layer with ``activation="linear"``.

The free-probability side (``sigprop.theory.spectrum``) and the empirical side
(``sigprop.jacobian``) both take a NetSpec; ``NetSpec.from_module(model)`` reads one off a torch
MLP, masks included. This module does not import torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from sigprop.theory.activations import Activation, get_activation

__all__ = ["WEIGHT_LAWS", "NetSpec"]

#: weight laws a NetSpec may name
WEIGHT_LAWS = ("gaussian", "orthogonal", "correlated")


def _per_layer(value, n: int, what: str) -> tuple:
    if isinstance(value, (str, Activation)) or np.ndim(value) == 0:
        return (value,) * n
    value = tuple(value)
    if len(value) != n:
        raise ValueError(f"{what} has {len(value)} entries; give one value or one per layer ({n} layers)")
    return value


def _real(v, what: str, lo: float = 0.0, lo_open: bool = False, hi: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise ValueError(f"{what} must be a number, got {v!r}")
    v = float(v)
    if not math.isfinite(v) or v < lo or (lo_open and v == lo) or (hi is not None and v > hi):
        if hi is not None:
            rng = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}]"
        elif math.isinf(lo):
            rng = "(any sign)"
        else:
            rng = f"{'>' if lo_open else '>='} {lo:g}"
        raise ValueError(f"{what} must be a finite number {rng}, got {v:g}")
    return v


def _name(what: str, i: int, given) -> str:
    """``what`` when one value was given for every layer, else ``what[i]``."""
    return what if isinstance(given, (str, Activation)) or np.ndim(given) == 0 else f"{what}[{i}]"


@dataclass(frozen=True)
class NetSpec:
    """Widths ``N_0..N_L``, per-layer activation / variances / kept fraction, weight law, input q0.

    Scalars are broadcast to every layer. ``activation`` entries are registry names or
    :class:`~sigprop.theory.activations.Activation` objects (stored as Activations).
    """

    widths: tuple[int, ...]
    activation: tuple[Activation, ...] | Activation | str = "relu"
    sigma_w2: tuple[float, ...] | float = 2.0
    sigma_b2: tuple[float, ...] | float = 0.0
    weights: str = "gaussian"
    eta: float = 0.0
    kept: tuple[float, ...] | float = 1.0
    q0: float = 1.0
    act_params: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        if isinstance(self.widths, (int, str)) or not isinstance(self.widths, Sequence | np.ndarray):
            raise ValueError(f"widths must be a list N_0..N_L of positive ints, got {self.widths!r}")
        widths = []
        for i, n in enumerate(self.widths):
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
                raise ValueError(f"widths[{i}] must be a positive int, got {n!r}")
            widths.append(int(n))
        if len(widths) < 2:
            raise ValueError(f"widths must list N_0..N_L with L >= 1 (at least two numbers), got {widths}")
        L = len(widths) - 1
        acts = tuple(
            a if isinstance(a, Activation) else get_activation(a, **self.act_params)
            for a in _per_layer(self.activation, L, "activation")
        )
        sw = tuple(
            _real(v, _name("sigma_w2", i, self.sigma_w2))
            for i, v in enumerate(_per_layer(self.sigma_w2, L, "sigma_w2"))
        )
        sb = tuple(
            _real(v, _name("sigma_b2", i, self.sigma_b2))
            for i, v in enumerate(_per_layer(self.sigma_b2, L, "sigma_b2"))
        )
        kept = tuple(
            _real(v, _name("kept", i, self.kept), 0.0, lo_open=True, hi=1.0)
            for i, v in enumerate(_per_layer(self.kept, L, "kept"))
        )
        if self.weights not in WEIGHT_LAWS:
            raise ValueError(f"unknown weight law {self.weights!r}; allowed: {', '.join(WEIGHT_LAWS)}")
        eta = _real(self.eta, "eta", lo=-math.inf)
        if eta != 0.0 and self.weights != "correlated":
            raise ValueError(f"eta is only used by weights='correlated', not {self.weights!r}")
        if self.weights == "orthogonal" and any(k < 1.0 for k in kept):
            raise ValueError("a masked orthogonal matrix is not orthogonal: use kept=1 with weights='orthogonal'")
        q0 = _real(self.q0, "q0", 0.0, lo_open=True)
        for name, v in (
            ("widths", tuple(widths)),
            ("activation", acts),
            ("sigma_w2", sw),
            ("sigma_b2", sb),
            ("kept", kept),
            ("eta", eta),
            ("q0", q0),
        ):
            object.__setattr__(self, name, v)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def mlp(
        cls, depth: int, width: int, activation: Activation | str = "relu", *, in_width: int | None = None, **kw
    ) -> NetSpec:
        """``depth`` square layers of ``width`` (input width ``in_width``, default ``width``)."""
        if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
            raise ValueError(f"depth must be a positive int, got {depth!r}")
        return cls(widths=(in_width or width, *([width] * int(depth))), activation=activation, **kw)

    @classmethod
    def from_module(cls, model, q0: float | None = None) -> NetSpec:
        """Read a NetSpec off a torch MLP (masks included); see :func:`sigprop.jacobian.netspec_from_module`."""
        from sigprop.jacobian import netspec_from_module

        return netspec_from_module(model, q0=q0)

    # ------------------------------------------------------------------ derived
    @property
    def depth(self) -> int:
        return len(self.widths) - 1

    @property
    def effective_sigma_w2(self) -> tuple[float, ...]:
        """``kept * sigma_w2``: a random mask keeping a fraction p scales the variance of every row's
        sum by p. For ``correlated`` weights this is the iid part's variance: seed 000 Thm 5.1 shows
        the correlated model has the iid model's large-width Jacobian limit when the correlation
        ``eta^2 / (1 + eta^2)`` is ``o(N^{-3/2} / log N)``; beyond that no mean-field limit is claimed."""
        return tuple(k * s for k, s in zip(self.kept, self.sigma_w2, strict=True))

    def layer_variances(self) -> np.ndarray:
        """Pre-activation second moments ``q^1..q^L`` from ``q^1 = sigma_w2 q0 + sigma_b2`` and
        ``q^l = sigma_w2 E[phi_{l-1}(sqrt(q^{l-1}) Z)^2] + sigma_b2`` (seed 003 eq. 3.1), with
        the masked / correlated effective weight variance."""
        from sigprop.theory.meanfield import second_moment

        sw = self.effective_sigma_w2
        q = np.empty(self.depth)
        prev = self.q0
        for layer in range(self.depth):
            q[layer] = sw[layer] * prev + self.sigma_b2[layer]
            if not math.isfinite(q[layer]):
                raise ValueError(f"the variance recursion overflows at layer {layer + 1} (q = {q[layer]})")
            if q[layer] <= 0.0:
                raise ValueError(
                    f"the pre-activation variance of layer {layer + 1} is 0 (sigma_w2 = sigma_b2 = 0 or a "
                    "dead input): D_l is undefined"
                )
            prev = float(second_moment(self.activation[layer], q[layer]))
        return q

    def to_dict(self) -> dict:
        return {
            "widths": list(self.widths),
            "activation": [a.label() for a in self.activation],
            "sigma_w2": list(self.sigma_w2),
            "sigma_b2": list(self.sigma_b2),
            "weights": self.weights,
            "eta": self.eta,
            "kept": list(self.kept),
            "q0": self.q0,
        }
