"""The Adam family as Keras 3 optimizers, and lookup by name."""

from __future__ import annotations

from typing import Any

from adamkit.optimizers.adam import Adam
from adamkit.optimizers.adamax import Adamax
from adamkit.optimizers.adamw import AdamW
from adamkit.optimizers.base import AdamFamily
from adamkit.optimizers.nadam import Nadam
from adamkit.optimizers.radam import RAdam
from adamkit.optimizers.schedule_free import ScheduleFreeAdamW

FAMILY: dict[str, tuple[type[AdamFamily], dict[str, Any]]] = {
    "adam": (Adam, {}),
    "amsgrad": (Adam, {"amsgrad": True}),
    "adamw": (AdamW, {}),
    "nadam": (Nadam, {}),
    "adamax": (Adamax, {}),
    "radam": (RAdam, {}),
    "schedule-free": (ScheduleFreeAdamW, {}),
}


def get(name: str, **kwargs: Any) -> AdamFamily:
    """An optimizer of the family by name.

    Args:
        name: one of ``"adam"``, ``"amsgrad"`` (``Adam(amsgrad=True)``), ``"adamw"``,
            ``"nadam"``, ``"adamax"``, ``"radam"``, ``"schedule-free"``
            (``ScheduleFreeAdamW``); case does not matter.
        **kwargs: the class's arguments; they override the name's preset.

    Returns:
        A new optimizer of that class.

    Raises:
        ValueError: for a name that is not one of the above.

    Examples:
        >>> import adamkit
        >>> optimizer = adamkit.get("amsgrad", weight_decay=0.05)
        >>> type(optimizer).__name__, optimizer.amsgrad, optimizer.weight_decay
        ('Adam', True, 0.05)
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in FAMILY:
        raise ValueError(f"Unknown optimizer {name!r}; choose one of: {', '.join(FAMILY)}.")
    cls, preset = FAMILY[key]
    return cls(**{**preset, **kwargs})


__all__ = ["Adam", "AdamFamily", "AdamW", "Adamax", "FAMILY", "Nadam", "RAdam",
           "ScheduleFreeAdamW", "get"]
