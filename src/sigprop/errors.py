"""Named errors. Bad input is a ValueError saying what was wrong and what is allowed;
numerical failure is a :class:`NumericalError`, never a silent NaN."""

from __future__ import annotations

import numpy as np

__all__ = ["NoEOCError", "NumericalError", "check_finite", "check_variance"]


class NoEOCError(ValueError):
    """No Edge-of-Chaos point exists for the requested arguments."""


class NumericalError(ArithmeticError):
    """A computation produced NaN/inf or failed to converge."""


def check_finite(value, what: str):
    """Return ``value`` unchanged, or raise NumericalError if it holds NaN (inf is allowed
    only where the caller handles it, so it is reported too)."""
    arr = np.asarray(value, float)
    if not np.all(np.isfinite(arr)):
        raise NumericalError(f"{what}: non-finite result ({np.sum(~np.isfinite(arr))} of {arr.size} values)")
    return value


def check_variance(value, name: str, allow_zero: bool = True):
    """Validate a variance argument (sigma_w2, sigma_b2, q): finite and >= 0 (or > 0)."""
    arr = np.asarray(value, float)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if allow_zero and np.any(arr < 0):
        raise ValueError(f"{name} is a variance and must be >= 0, got {value}")
    if not allow_zero and np.any(arr <= 0):
        raise ValueError(f"{name} is a variance and must be > 0, got {value}")
    return arr
