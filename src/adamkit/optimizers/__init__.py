"""The Adam family as Keras 3 optimizers, and lookup by name."""

from __future__ import annotations

from typing import Any

from adamkit.optimizers.adam import Adam
from adamkit.optimizers.adamax import Adamax
from adamkit.optimizers.adamw import AdamW
from adamkit.optimizers.base import AdamFamily
from adamkit.optimizers.nadam import Nadam
from adamkit.optimizers.radam import RAdam

FAMILY: dict[str, tuple[type[AdamFamily], dict[str, Any]]] = {
    "adam": (Adam, {}),
    "amsgrad": (Adam, {"amsgrad": True}),
    "adamw": (AdamW, {}),
    "nadam": (Nadam, {}),
    "adamax": (Adamax, {}),
    "radam": (RAdam, {}),
}


def get(name: str, **kwargs: Any) -> AdamFamily:
    """An optimizer of the family by name (``adam``, ``amsgrad``, ``adamw``, ``nadam``,
    ``adamax``, ``radam``), built with ``kwargs``."""
    key = name.lower() if isinstance(name, str) else name
    if key not in FAMILY:
        raise ValueError(f"Unknown optimizer {name!r}; choose one of: {', '.join(FAMILY)}.")
    cls, preset = FAMILY[key]
    return cls(**{**preset, **kwargs})


__all__ = ["Adam", "AdamFamily", "AdamW", "Adamax", "FAMILY", "Nadam", "RAdam", "get"]
