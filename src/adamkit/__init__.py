"""adamkit: the Adam family of optimizers for Keras 3, written from the equations."""

from adamkit import callbacks  # adamkit.callbacks.LRFinder, ...
from adamkit.optimizers import (
    FAMILY,
    Adam,
    Adamax,
    AdamFamily,
    AdamW,
    Nadam,
    RAdam,
    ScheduleFreeAdamW,
    get,
)
from adamkit.tools.lr_find import LRFindResult, lr_find

__version__ = "0.1.0"
__all__ = ["FAMILY", "Adam", "AdamFamily", "AdamW", "Adamax", "LRFindResult", "Nadam", "RAdam",
           "ScheduleFreeAdamW", "__version__", "callbacks", "get", "lr_find"]
