"""The import rules of ARCHITECTURE.md: a layer imports only from its own layer and those below it,
the applications are never imported by the library, and only the backend modules touch a
framework. Read from the source (every import, a function's own included), so nothing is run."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "adamkit"

# Bottom to top; a module belongs to the first entry that names it or a package above it.
LAYERS = (
    ("foundation", ("adamkit.choices", "adamkit.ops", "adamkit.schedules", "adamkit.data",
                    "adamkit.checkpoint", "adamkit.kernels.build")),
    ("rules and storage", ("adamkit.rule", "adamkit.state")),
    ("paths", ("adamkit.sparse", "adamkit.chunks", "adamkit.kernels")),
    ("executors", ("adamkit.executors",)),
    ("optimizers", ("adamkit.optimizers",)),
    ("applications", ("adamkit.tools", "adamkit.callbacks", "adamkit.train", "adamkit.reproduce",
                      "adamkit.bench", "adamkit.cli", "adamkit")),
)
FRAMEWORKS = ("tensorflow", "jax", "torch")
# The library's modules that may import a framework themselves: the backends' executors, the
# lazy rows of TensorFlow's IndexedSlices / JAX's BCOO, and the chunks' in-place row writes.
FRAMEWORK_MODULES = ("adamkit.kernels.tensorflow", "adamkit.kernels.jax",
                     "adamkit.kernels.pytorch", "adamkit.sparse", "adamkit.chunks")


def layer_of(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        # "adamkit" is the package's own facade (its __init__), not everything under it
        if any(module == p or (p != "adamkit" and module.startswith(p + ".")) for p in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer of ARCHITECTURE.md")


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(("adamkit", *parts)).removesuffix(".__init__")
        found[name] = path
    return found


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "adamkit":  # from adamkit import ops: the submodule
                names |= {f"adamkit.{alias.name}" for alias in node.names}
            elif node.module.startswith("adamkit."):
                # from adamkit.kernels import tensorflow: the submodule where there is one
                names |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in
                          modules() else node.module for alias in node.names}
            else:
                names.add(node.module)
    return names


def test_every_module_is_in_a_layer():
    for module in modules():
        layer_of(module)


def test_no_layer_imports_a_higher_one():
    wrong = []
    for module, path in modules().items():
        for imported in imports(path):
            if imported.startswith("adamkit.") and layer_of(imported) > layer_of(module):
                wrong.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {imported} "
                             f"({LAYERS[layer_of(imported)][0]})")
    assert not wrong, "\n".join(wrong)


def test_only_the_backend_modules_import_a_framework():
    library = LAYERS.index(next(layer for layer in LAYERS if layer[0] == "applications"))
    wrong = [f"{module} imports {imported}"
             for module, path in modules().items() if layer_of(module) < library
             and module not in FRAMEWORK_MODULES
             for imported in imports(path) if imported.split(".")[0] in FRAMEWORKS]
    assert not wrong, "\n".join(wrong)


def test_the_rules_catch_a_violation(tmp_path):
    """The checker itself: a rule module importing the optimizers is caught."""
    bad = tmp_path / "rule.py"
    bad.write_text("from adamkit.optimizers import base\n")
    (imported,) = imports(bad)
    assert layer_of(imported) > layer_of("adamkit.rule")
