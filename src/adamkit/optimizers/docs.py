"""The arguments every member of the family takes, documented once and spliced into each member's
docstring (as Keras does for its optimizers' base keywords).

A member's docstring ends its ``Args:`` section with the line ``{{shared_args}}``;
``shared_args`` replaces that line with the entries below, leaving out any argument the member
documents itself (AdamW's own ``weight_decay`` default, for one), and moves every entry whose
argument is not in the member's signature to a ``Keyword Args:`` section after Args. A section of
its own because those arguments arrive through ``**kwargs``, not the signature:
in an ``Args`` section the API reference (mkdocstrings, which reads ``__doc__`` by importing the
module) takes each default from the signature and, finding none, shows them as "required"; its
``Keyword Args`` table has no default column, and each entry says its default in words. The result
is ordinary Google style, so ``help()``, IDEs and the API reference all show the same text.
"""

from __future__ import annotations

import inspect
import re

MARKER = "{{shared_args}}"

# ("name (type)", description): continuation lines are indented by four spaces relative to
# the name, as in a Google-style Args section.
SHARED_ARGS: tuple[tuple[str, str], ...] = (
    ("fused (bool | None)", """\
``None`` (default): run each variable's step in the fastest executor that takes it
    (adamkit's kernel, the peer's where it computes the same rule, else the ops path; see the
    fused-kernels page and ``explain()``); ``False``: always the ops path; ``True``: require
    the backend to have a kernel for this rule, else ``ValueError`` at construction."""),
    ("weight_decay (float | LearningRateSchedule | Callable | None)", """\
decoupled weight decay λ ≥ 0, θ ← θ·(1 − αₜ·λ) before the step (as every Keras optimizer and
    ``torch.optim.AdamW``; ``torch.optim.Adam``'s ``weight_decay`` is an L2 term instead): a
    number, a ``keras.optimizers.schedules.LearningRateSchedule`` (called with the iteration
    count) or a zero-argument callable. Defaults to None (no decay)."""),
    ("exclude_from_weight_decay (list[str] | None)", """\
name patterns (regular expressions searched in each variable's name) whose variables
    are not decayed, e.g. ``["bias", "gamma", "beta"]``. Defaults to None."""),
    ("exclude_1d (bool)", """\
leave every variable of rank ≤ 1 (biases, normalisation scales) undecayed. Defaults to
    False."""),
    ("lazy (bool)", """\
for a sparse gradient (an embedding's ``IndexedSlices`` on TensorFlow) update only the
    touched rows of θ and of the state; untouched rows stay bit for bit. On JAX a sparse
    ``BCOO`` gradient's named rows are updated, at dense cost; for dense gradients (JAX,
    PyTorch) rows whose gradient is all zero are left untouched. Not with
    ``state_dtype="int8"``, nor for ``Nadam`` or ``ScheduleFreeAdamW``. Defaults to False."""),
    ("skip_nonfinite (bool)", """\
a step whose gradients hold any NaN or ±Inf leaves the parameters and all state (the
    iteration count too) unchanged and adds one to ``optimizer.skipped_steps``. Defaults to
    False, as in Keras and PyTorch."""),
    ("state_dtype (str | dict | callable)", """\
how the per-parameter state is stored: ``"float32"`` (default; float64 parameters keep
    float64 state), ``"bfloat16"`` (4 bytes per parameter) or ``"int8"`` (block-wise 8-bit
    codes, about 2 bytes per parameter). Both lean forms round stochastically; the update is
    computed in float32 from the decoded state. Per variable: a dict from name patterns
    (regular expressions searched in the variable's path) to those dtypes, the first match
    deciding and float32 where none matches, e.g. ``{"embedding": "int8", "": "bfloat16"}``;
    or a callable taking the variable and returning one."""),
    ("min_8bit_size (int)", """\
tensors with fewer values keep float32 state where ``state_dtype`` says ``"int8"``
    (biases and norms: little memory, most sensitive to quantisation). Defaults to 4096."""),
    ("clipnorm (float | None)", """\
clip each gradient to this norm (> 0). Defaults to None (Keras's keyword)."""),
    ("clipvalue (float | None)", """\
clip each gradient element to [−clipvalue, clipvalue] (clipvalue > 0). Defaults to None
    (Keras's keyword)."""),
    ("global_clipnorm (float | None)", """\
clip all gradients together to this global norm (> 0). Defaults to None (Keras's
    keyword)."""),
    ("use_ema (bool)", """\
keep an exponential moving average of the weights. Defaults to False (Keras's keyword)."""),
    ("ema_momentum (float)", """\
in [0, 1], the moving average's momentum. Defaults to 0.99 (Keras's keyword)."""),
    ("ema_overwrite_frequency (int | None)", """\
≥ 1: every so many steps, overwrite the weights with their moving average. Defaults to
    None (Keras's keyword)."""),
    ("loss_scale_factor (float | None)", """\
the loss is multiplied by it and the gradients divided by it. Defaults to None (Keras's
    keyword)."""),
    ("gradient_accumulation_steps (int | None)", """\
≥ 2: apply the mean gradient every so many steps. Defaults to None (Keras's keyword)."""),
    ("name (str | None)", """\
the optimizer's name. Defaults to the class's name in snake case (Keras's keyword)."""),
)


def documented_args(doc: str) -> set[str]:
    """The argument names a docstring's ``Args`` and ``Keyword Args`` sections list."""
    names: set[str] = set()
    for section in re.finditer(r"^([ \t]*)(?:Keyword )?Args:\n(.*?)(?=^\1\S|\Z)", doc, re.M | re.S):
        names |= set(re.findall(r"^\s*(\*{0,2}\w+)(?: \([^)]*\))?:", section.group(2), re.M))
    return names


def shared_args(cls: type) -> type:
    """Class decorator: adds to ``cls.__doc__`` the shared entries that it does not already list,
    in place of its ``{{shared_args}}`` line (the last of its Args section); every entry, its own
    or shared, whose argument is not in the signature (it arrives through ``**kwargs``) goes to a
    ``Keyword Args`` section after Args."""
    doc = cls.__doc__ or ""
    found = re.search(r"^([ \t]*)" + re.escape(MARKER) + r"[ \t]*$", doc, re.M)
    header = re.search(r"^([ \t]*)Args:\n", doc[: found.start()] if found else "", re.M)
    if found is None or header is None:
        raise ValueError(f"{cls.__name__}'s docstring has no {MARKER} line in its Args section.")
    following = re.search(r"^([ \t]*)\S", doc[found.end():], re.M)
    if following and len(following.group(1)) > len(header.group(1)):
        raise ValueError(f"{cls.__name__}'s {MARKER} line must end its Args section.")
    indent = found.group(1)
    own = documented_args(doc)
    signature = inspect.signature(cls.__init__).parameters
    # the Args section's entries, each with its continuation lines, then the shared ones
    entries = re.split(rf"\n(?={indent}\S)", doc[header.end(): found.start()].rstrip("\n"))
    for entry, text in SHARED_ARGS:
        if entry.split(" ")[0] not in own:
            entries.append(indent + f"{entry}: {text}".replace("\n", "\n" + indent))
    named = [(re.match(r"\s*(\w+)", entry).group(1), entry) for entry in entries if entry.strip()]
    lines = [entry for name, entry in named if name in signature]
    lines += ["", header.group(1) + "Keyword Args:"]
    lines += [entry for name, entry in named if name not in signature]
    cls.__doc__ = doc[: header.end()] + "\n".join(lines) + doc[found.end():]
    return cls
