"""Backend-specific executors (``adamkit.executors``): adamkit's kernels and the peers' used as
fallbacks. Each computes what the rule's ops path computes, and the tests hold it to that path step
for step; the ops path stays the reference."""

from __future__ import annotations

from adamkit.state import PlainSlot, QuantizedSlot

# The per-parameter state the kernels update, in the order their calls take it: m, v and, for
# AMSGrad, v̂max (AdaMax's u is handed over as v).
STATE_NAMES = ("momentum", "velocity", "velocity_hat")


def rule_flags(rule) -> dict[str, bool]:
    """The C++ loops' rule switches (``adam_update.h``'s ``Rule``): AMSGrad keeps v̂max, AdaMax
    keeps the infinity norm in v's place; neither is Adam's own."""
    return {"amsgrad": rule.second_moment == "max",
            "adamax": rule.second_moment == "infinity_norm"}


def state_names(state) -> tuple[str, ...]:
    """The names of ``STATE_NAMES`` that ``state`` (a dict of slots or variables) holds, in order."""
    return tuple(name for name in STATE_NAMES if name in state)


def kernel_slots(slots: dict) -> dict:
    """A variable's per-parameter slots by the kernels' names (AdaMax's ``norm`` as ``velocity``),
    without the scalar state a rule carries (stored as 0-d slots)."""
    return {("velocity" if name == "norm" else name): slot for name, slot in slots.items()
            if name in STATE_NAMES or name == "norm"}


def plain_state(slots: dict) -> dict | None:
    """The state variables by the kernels' names, where every slot is stored plainly (float or
    bfloat16); else None."""
    slots = kernel_slots(slots)
    if not all(isinstance(s, PlainSlot) for s in slots.values()):
        return None
    return {name: slot.variable for name, slot in slots.items()}


def quantized_state(slots: list[dict]) -> list[list]:
    """The 8-bit state of a group of variables (each one's slots, in the group's order) in the
    order the kernels' calls take it: for each state, every variable's codes, then every
    variable's absmax."""
    slots = [kernel_slots(s) for s in slots]
    return [[getattr(s[name], part) for s in slots]
            for name in state_names(slots[0]) for part in ("codes", "absmax")]


def is_8bit(slots: dict) -> bool:
    return all(isinstance(s, QuantizedSlot) for s in kernel_slots(slots).values())


def refuse_state(dtype: str, slots: dict, stored_dtype) -> str | None:
    """The kernels' common terms: float32 or float64 parameters with state of their own dtype,
    float32 with bfloat16 state, or float32 with 8-bit state; why not, else None.
    ``stored_dtype``: a state variable's dtype as a Keras dtype name."""
    if dtype not in ("float32", "float64"):
        return f"{dtype} parameters (the ops path computes them in float32)"
    if is_8bit(slots):
        return None if dtype == "float32" else f"8-bit state with {dtype} parameters"
    state = plain_state(slots)
    if state is None:
        return "mixed state storage"
    stored = {stored_dtype(s) for s in state.values()}
    if stored == {dtype} or (dtype == "float32" and stored == {"bfloat16"}):
        return None
    return f"{'/'.join(sorted(stored))} state with {dtype} parameters"
