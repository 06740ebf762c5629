"""sigprop: signal propagation at initialization in deep networks.

The theory API is re-exported here (``sigprop.eoc``, ``sigprop.get_activation``, ...);
it imports NumPy/SciPy only. Torch-side pieces live in their own modules
(``sigprop.nn_activations``) and are imported on demand.
"""

from importlib.metadata import PackageNotFoundError, version

from .errors import NoEOCError, NumericalError
from .theory import *  # noqa: F403
from .theory import __all__ as _theory_all

try:
    __version__ = version("sigprop")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+src"

__all__ = ["NoEOCError", "NumericalError", "__version__", *_theory_all]
