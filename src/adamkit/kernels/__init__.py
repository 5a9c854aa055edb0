"""Backend-specific fast paths. Each computes what an ``adamkit.ops`` composition computes, and the
tests hold it to that composition step for step; the ops path stays the reference."""

# The per-parameter state the kernels update, in the order their calls take it: m, v and, for
# AMSGrad, v̂max (AdaMax's u is handed over as v).
STATE_NAMES = ("momentum", "velocity", "velocity_hat")


def state_names(state) -> tuple[str, ...]:
    """The names of ``STATE_NAMES`` that ``state`` (a dict of slots or variables) holds, in order."""
    return tuple(name for name in STATE_NAMES if name in state)
