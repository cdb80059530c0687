"""kernelib: merge several trained Keras classifiers into one Keras model, evaluate it, ship it."""

__version__ = "0.1.0"

from kernelib.errors import KernelibError  # noqa: E402

__all__ = ["KernelibError", "__version__"]
