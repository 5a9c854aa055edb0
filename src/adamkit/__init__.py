"""adamkit: the Adam family of optimizers for Keras 3, written from the equations."""

from adamkit.optimizers import FAMILY, Adam, Adamax, AdamFamily, AdamW, Nadam, RAdam, get

__version__ = "0.1.0"
__all__ = ["FAMILY", "Adam", "AdamFamily", "AdamW", "Adamax", "Nadam", "RAdam", "__version__", "get"]
