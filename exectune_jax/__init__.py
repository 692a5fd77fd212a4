"""exectune-jax: train a small guide model to write strategies a black-box core can execute."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("exectune-jax")
except PackageNotFoundError:  # a source checkout on the path, not installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
