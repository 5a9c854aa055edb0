"""benchmarks/: the README's result tables are rendered from the result files the scripts write,
so every figure shown is the latest run's (nothing is timed here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import render  # benchmarks/, on pytest's pythonpath (pyproject.toml)
import results

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_readme_tables_are_the_result_files_rendered():
    check = subprocess.run([sys.executable, str(BENCHMARKS / "render.py"), "--check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_every_result_file_is_shown_and_every_table_has_its_file():
    shown = {m["name"] for m in render.BLOCK.finditer(render.README.read_text())}
    files = {p.stem for p in results.RESULTS.glob("*.json")}
    assert shown == files
    for path in results.RESULTS.glob("*.json"):
        result = json.loads(path.read_text())
        assert {"command", "machine", "columns", "rows", "title"} <= set(result)
        assert result["machine"]["cpu"] and result["machine"]["date"] and result["rows"]
        assert all(len(row) == len(result["columns"]) for row in result["rows"])


def test_a_table_is_rendered_from_its_file_and_only_between_its_markers(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "RESULTS", tmp_path)
    monkeypatch.setattr(render, "RESULTS", tmp_path)
    monkeypatch.setattr(sys, "argv", ["benchmarks/demo.py", "--rounds", "3"])
    table = results.Table("demo", "A demo", results.RATIO_COLUMNS)
    table.ratio_row("10M Adam / torch fused", [1.1, 0.9, 1.0])
    table.save()
    text = "prose before\n<!-- results: demo -->\nstale 9.99×\n<!-- /results -->\nprose after\n"
    rendered = render.render(text)
    assert rendered.startswith("prose before\n<!-- results: demo -->\n**A demo.** "
                               "`python benchmarks/demo.py --rounds 3`")
    assert "| 10M Adam / torch fused | 1.00 | 0.90 | 1.10 |" in rendered
    assert "stale" not in rendered and rendered.endswith("<!-- /results -->\nprose after\n")
    assert render.render(rendered) == rendered
    with pytest.raises(SystemExit, match="missing|does not exist"):
        render.render("<!-- results: missing -->\n<!-- /results -->\n")


def test_the_readmes_short_table_gives_each_figure_its_command_and_machine(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "RESULTS", tmp_path)
    monkeypatch.setattr(render, "RESULTS", tmp_path)
    monkeypatch.setattr(sys, "argv", ["benchmarks/demo.py", "--rounds", "3"])
    table = results.Table("demo", "A demo", results.RATIO_COLUMNS)
    table.ratio_row("10M Adam     adamkit / keras", [1.5, 1.25, 2.0])
    table.save()
    monkeypatch.setattr(render, "SUMMARY", [("Adam step: adamkit / Keras's", "demo",
                                             render.ratio("10M Adam adamkit / keras"))])
    text = "prose\n<!-- results summary -->\nstale\n<!-- /results summary -->\nmore prose\n"
    rendered = render.render_summary(text)
    row = next(line for line in rendered.splitlines() if line.startswith("| Adam step"))
    assert "**1.50×** (rounds 1.25–2.00)" in row and "`python benchmarks/demo.py --rounds 3`" in row
    assert "cores" in row and "Libraries: Python" in rendered
    assert "stale" not in rendered and rendered.startswith("prose\n<!-- results summary -->\n")
    assert rendered.endswith("<!-- /results summary -->\nmore prose\n")
    assert render.render_summary(rendered) == rendered


def test_a_table_named_by_path_is_rendered_from_that_file_on_any_page(tmp_path, monkeypatch):
    """README.md and the docs show tables too; a NAME with a ``/`` is a path from the repository's
    root (``adamkit reproduce --out docs`` writes its result beside its figure)."""
    from adamkit.bench import record

    monkeypatch.setattr(render, "ROOT", tmp_path)
    result = record.document("reddi", "Counterexamples", "adamkit reproduce reddi",
                             [("setting", ""), ("Adam final x", "+.3f")], [["Theorem 1", 0.98344]])
    record.write({**result, "results": {"theorem-1": {}}}, tmp_path / "docs" / "reddi.json")
    text = "intro\n<!-- results: docs/reddi -->\n| old | table |\n<!-- /results -->\nafter\n"
    rendered = render.render(text, "README.md")
    assert "`adamkit reproduce reddi`" in rendered and "| Theorem 1 | +0.983 |" in rendered
    assert "old" not in rendered and render.render(rendered, "README.md") == rendered
    with pytest.raises(SystemExit, match="README.md shows results 'docs/gone'"):
        render.render("<!-- results: docs/gone -->\n<!-- /results -->\n", "README.md")


@pytest.mark.parametrize("page, names", [
    ("README.md", {"lean_state_accuracy", "lr_find", "docs/reddi", "docs/kingma_ba"}),
    ("docs/lr-find.md", {"lr_find"}),
    ("benchmarks/README.md", {"lean_state_accuracy", "lean_state_drift", "lr_find"}),
])
def test_measured_figures_on_the_pages_are_rendered_tables(page, names):
    """The lean-state, range-test and papers' figures are tables rendered from result files (the
    --check test above keeps them equal to the files), not figures typed into the page."""
    path = render.ROOT / page
    assert path in render.PAGES
    shown = {m["name"] for m in render.BLOCK.finditer(path.read_text())}
    assert names <= shown, f"{page} does not render {names - shown}"


def test_the_training_stepper_takes_the_step_that_fit_takes():
    """``bench.timing.training_stepper`` (step_share's whole training step) is the trainer's own
    step: a model stepped by it ends where ``train_on_batch`` on the same batch leaves its twin."""
    import keras
    import numpy as np

    import adamkit
    from adamkit.bench.timing import training_stepper

    rng = np.random.default_rng(0)
    x, y = rng.random((16, 6), dtype=np.float32), rng.integers(0, 3, 16)
    models = []
    for _ in range(2):
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, activation="relu"),
                                  keras.layers.Dense(3)])
        model.compile(adamkit.Adam(0.01),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)
        models.append(model)
    step = training_stepper(models[0], x, y)
    for _ in range(3):
        step()
        models[1].train_on_batch(x, y)
    getattr(step, "write_back", lambda: None)()  # JAX: the state, from the step's own arrays
    for a, b in zip(models[0].trainable_variables, models[1].trainable_variables):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b),
                                   rtol=1e-6, atol=1e-7)
    assert int(models[0].optimizer.iterations) == 4
