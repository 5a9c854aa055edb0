"""The documentation: every argument is documented on every optimizer, the docstrings' examples
run, and the site (mkdocs.yml) builds with warnings as errors, self-contained, its API reference
filled and its math valid."""

from __future__ import annotations

import doctest
import html
import importlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import pytest

import adamkit
from adamkit.optimizers.docs import SHARED_ARGS, documented_args

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = [adamkit.Adam, adamkit.AdamW, adamkit.Nadam, adamkit.Adamax, adamkit.RAdam,
           adamkit.ScheduleFreeAdamW]
SHARED = [entry.split(" ")[0] for entry, _ in SHARED_ARGS]
# Keras's own optimizer keywords: those of a Keras optimizer with no arguments of its own but
# the learning rate and its momentum.
KERAS_KEYWORDS = [name for name, p in inspect.signature(keras.optimizers.SGD.__init__).parameters.items()
                  if name not in ("self", "learning_rate", "momentum", "nesterov")
                  and p.kind is p.POSITIONAL_OR_KEYWORD]
DOCTEST_MODULES = ["adamkit.optimizers", "adamkit.optimizers.base",
                   *(f"adamkit.optimizers.{m.__module__.rsplit('.', 1)[1]}" for m in MEMBERS)]


def own_arguments(cls) -> list[str]:
    return [name for name, p in inspect.signature(cls.__init__).parameters.items()
            if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]


@pytest.mark.parametrize("cls", MEMBERS, ids=lambda c: c.__name__)
def test_every_argument_is_in_the_args_section(cls):
    documented = documented_args(cls.__doc__)
    missing = [a for a in [*own_arguments(cls), *SHARED, *KERAS_KEYWORDS] if a not in documented]
    assert not missing, f"{cls.__name__}'s docstring does not document {missing}"
    assert "{{shared_args}}" not in cls.__doc__
    assert re.search(r"^\s*Examples:$", cls.__doc__, re.M), "no Examples section"
    assert re.search(r"^\s*References:$", cls.__doc__, re.M), "no References section"


def section_names(doc: str, title: str) -> list[str]:
    """The entries' names of a docstring's section ``title`` (``Args``, ``Keyword Args``)."""
    found = re.search(rf"^([ \t]*){title}:\n(.*?)(?=^\1\S|\Z)", doc, re.M | re.S)
    if found is None:
        return []
    return re.findall(rf"^{found.group(1)}    (\w+)(?: \([^)]*\))?:", found.group(2), re.M)


@pytest.mark.parametrize("cls", MEMBERS, ids=lambda c: c.__name__)
def test_arguments_through_kwargs_are_keyword_args_not_args(cls):
    """The API reference takes an Args entry's default from the signature, so an argument that
    arrives through **kwargs belongs in Keyword Args (whose table has no default column)."""
    signature = inspect.signature(cls.__init__).parameters
    args, keyword = section_names(cls.__doc__, "Args"), section_names(cls.__doc__, "Keyword Args")
    assert args and keyword, f"{cls.__name__} lacks an Args or a Keyword Args section"
    assert [a for a in args if a not in signature] == []
    assert [k for k in keyword if k in signature] == []
    assert {"lazy", "skip_nonfinite", "state_dtype", "name"} <= set(keyword)


def test_shared_args_moves_kwargs_entries_and_needs_its_marker_last():
    from adamkit.optimizers.docs import shared_args

    class Member:
        """A member.

        Args:
            rate: the rate. Defaults to 1.
            mode: through **kwargs. Defaults to "a".
            {{shared_args}}

        Examples:
            none
        """

        def __init__(self, rate=1, **kwargs):
            pass

    doc = shared_args(Member).__doc__
    assert section_names(doc, "Args") == ["rate"]
    assert section_names(doc, "Keyword Args")[:2] == ["mode", "fused"]
    assert doc.rstrip().endswith("Examples:\n            none")

    class Misplaced:
        """Args:
            {{shared_args}}
            rate: after the marker.
        """

    with pytest.raises(ValueError, match="must end its Args section"):
        shared_args(Misplaced)


@pytest.mark.parametrize("module", DOCTEST_MODULES)
def test_docstring_examples_run(module):
    tests = doctest.DocTestFinder().find(importlib.import_module(module))
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.attempted > 0, f"{module} has no examples"
    assert results.failed == 0, f"{results.failed} of {module}'s examples failed (output above)"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built as a user would (`mkdocs build --strict`) into a temporary folder."""
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, "mkdocs build --strict failed:\n" + result.stdout + result.stderr
    return out


def page(site: Path, name: str) -> str:
    return (site / name / "index.html").read_text(encoding="utf-8")


@pytest.mark.slow
def test_api_reference_lists_every_argument_of_every_member(site):
    text = page(site, "api")
    sections = dict(zip(*[iter(re.split(r'<h2 id="(adamkit\.\w+)" class="doc doc-heading">', text)[1:])] * 2))
    for cls in MEMBERS:
        section = sections.get(f"adamkit.{cls.__name__}")
        assert section is not None, f"no section for adamkit.{cls.__name__}"
        listed = set(re.findall(r"<td>\s*<code>(\w+)</code>", section))
        missing = [a for a in [*own_arguments(cls), *SHARED, *KERAS_KEYWORDS] if a not in listed]
        assert not missing, f"the API page's table for {cls.__name__} lacks {missing}"
        assert "&gt;&gt;&gt;" in section, f"no example rendered for {cls.__name__}"
        # every argument has a default, so none may be shown as required
        assert "<em>required</em>" not in section, f"{cls.__name__} shows a required argument"
    assert "adamkit.get" in sections


@pytest.mark.slow
def test_cli_reference_is_the_parsers_help(site):
    text = html.unescape(page(site, "cli"))
    for command in ("usage: adamkit ", "usage: adamkit train", "usage: adamkit reproduce",
                    "usage: adamkit bench"):
        assert command in text, command
    for flag in ("--checkpoint-every", "--state-dtype", "--distribute", "--quick", "--rounds"):
        assert flag in text, flag


@pytest.mark.slow
def test_site_is_self_contained(site):
    """Every script and stylesheet is served from the site itself (it is read offline too)."""
    for path in site.rglob("*.html"):
        text = path.read_text(encoding="utf-8")
        for url in re.findall(r'<(?:script[^>]*\ssrc|link[^>]*\shref)="([^"]+)"', text):
            assert not re.match(r"(https?:)?//", url), f"{path.relative_to(site)} loads {url}"
    assert (site / "assets" / "katex" / "katex.min.js").is_file()


@pytest.mark.slow
def test_every_formula_is_valid_tex(site, tmp_path):
    """KaTeX (the site's own copy) parses every formula of every page: a typo would otherwise
    show as red text in the browser only."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    formulas = []
    for path in sorted(site.rglob("*.html")):
        found = re.findall(r'<(span|div) class="arithmatex">(.*?)</\1>', path.read_text("utf-8"), re.S)
        for tag, body in found:
            tex = html.unescape(body).strip()[2:-2]  # \( … \) or \[ … \]
            formulas.append({"page": str(path.relative_to(site)), "tex": tex, "display": tag == "div"})
    assert len(formulas) > 40, "the optimizer pages' math is missing"
    (tmp_path / "formulas.json").write_text(json.dumps(formulas))
    script = """
const katex = require(process.argv[1]);
const formulas = require(process.argv[2]);
let bad = 0;
for (const f of formulas) {
  try { katex.renderToString(f.tex, {displayMode: f.display, throwOnError: true}); }
  catch (e) { bad += 1; console.log(f.page + ": " + e.message); }
}
process.exit(bad ? 1 : 0);
"""
    result = subprocess.run([node, "-e", script, str(site / "assets" / "katex" / "katex.min.js"),
                             str(tmp_path / "formulas.json")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
