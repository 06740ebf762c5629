"""sigprop: signal propagation at initialization in deep networks.

The theory API is re-exported here (``sigprop.eoc``, ``sigprop.get_activation``,
``sigprop.NetSpec``, ``sigprop.jacobian_spectrum``, ...); it imports NumPy/SciPy only.
Torch-side pieces live in their own modules (``sigprop.nets``, ``sigprop.jacobian``,
``sigprop.pruning``, ...) and are imported on demand.
"""

from importlib.metadata import PackageNotFoundError, version

from .errors import NoEOCError, NumericalError
from .netspec import NetSpec
from .theory import *  # noqa: F403
from .theory import __all__ as _theory_all
from .theory.spectrum import SpectrumResult, jacobian_spectrum

try:
    __version__ = version("sigprop")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+src"

__all__ = [
    "NetSpec",
    "NoEOCError",
    "NumericalError",
    "SpectrumResult",
    "__version__",
    "jacobian_spectrum",
    *_theory_all,
]
