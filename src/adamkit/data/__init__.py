"""Datasets, fetched, verified by checksum, and cached."""

from adamkit.data.mnist import DataError, load_mnist

__all__ = ["DataError", "load_mnist"]
