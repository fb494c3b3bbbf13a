"""The documentation site (mkdocs.yml, docs/): its structure, checked cheaply in the default
suite, and the strict build itself (slow; CI also runs `mkdocs build --strict`)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import jaxrobust

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _config() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def _nav_pages(nav) -> list[str]:
    """Every page path in mkdocs' nav (a nested list of 'page' and {'title': page or list})."""
    pages: list[str] = []
    for item in nav:
        if isinstance(item, str):
            pages.append(item)
        elif isinstance(item, dict):
            for value in item.values():
                pages.extend(_nav_pages([value]) if isinstance(value, str) else _nav_pages(value))
    return pages


def _doc_pages() -> set[str]:
    return {
        p.relative_to(DOCS).as_posix()
        for p in DOCS.rglob("*.md")
        if not p.relative_to(DOCS).as_posix().startswith("_")
    }


def test_nav_and_pages_agree():
    """Every nav entry is a page on disk, and every page on disk is in the nav once."""
    nav = _nav_pages(_config()["nav"])
    assert len(nav) == len(set(nav)), "a page is listed twice in the nav"
    missing = sorted(set(nav) - _doc_pages())
    assert not missing, f"nav entries without a page: {missing}"
    orphans = sorted(_doc_pages() - set(nav))
    assert not orphans, f"pages not in the nav: {orphans}"


def test_strict_build_and_docs_extra_configured():
    config = _config()
    assert config["strict"] is True
    setup = (ROOT / "setup.cfg").read_text()
    docs_extra = re.search(r"^docs =\n((?:    .+\n)+)", setup, re.M)
    assert docs_extra, "setup.cfg has no docs extra"
    for package in ("mkdocs", "mkdocs-material", "mkdocstrings[python]"):
        assert re.search(rf"^    {re.escape(package)}[<>=!]", docs_extra.group(1), re.M), package
    ci = (ROOT / ".ci" / "run").read_text()
    assert "mkdocs build --strict" in ci
    # The docs are built after the README's test command, which stays as it is.
    assert ci.index("pytest -n 2\n") < ci.index("mkdocs build --strict")


def test_every_top_level_name_is_on_the_api_page():
    page = (DOCS / "api" / "jaxrobust.md").read_text()
    listed = set(re.findall(r"\[`jr\.(\w+)`\]", page))
    assert listed == set(jaxrobust.__all__)


def test_api_pages_document_existing_modules():
    """Each `::: module` directive names a module of the package (a typo would only fail
    at build time, which the default suite does not run)."""
    directives = []
    for page in (DOCS / "api").glob("*.md"):
        directives += re.findall(r"^::: ([\w.]+)$", page.read_text(), re.M)
    assert directives
    for name in directives:
        parts = name.split(".")
        # jaxrobust.attacks.pgd.pgd is a function in a module: find the longest module prefix.
        for end in range(len(parts), 0, -1):
            base = ROOT.joinpath(*parts[:end])
            if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
                break
        else:
            pytest.fail(f"{name}: no such module")
        assert end >= len(parts) - 1, f"{name}: only {'.'.join(parts[:end])} exists"


def test_every_experiment_has_a_page_with_its_figures():
    experiments = {
        p.stem for p in (ROOT / "experiments").glob("*.py") if not p.name.startswith("_")
    }
    pages = {p.stem for p in (DOCS / "experiments").glob("*.md")} - {"index"}
    assert experiments == pages
    index = (DOCS / "experiments" / "index.md").read_text()
    for name in experiments:
        text = (DOCS / "experiments" / f"{name}.md").read_text()
        assert f"jaxrobust experiment {name}" in text, f"{name}: no command"
        assert f"({name}.md)" in index, f"{name}: not in the experiments index"
        figures = re.findall(r"\]\(\.\./figures/([^)]+\.png)\)", text)
        assert figures, f"{name}: no figure"
        for figure in figures:
            assert (ROOT / "experiments" / "results" / figure).is_file(), figure


def test_results_files_named_on_experiment_pages_exist():
    """A page names the JSON its numbers come from; the file must be committed."""
    for page in (DOCS / "experiments").glob("*.md"):
        for path in re.findall(r"`(experiments/results/[^`]+\.json)`", page.read_text()):
            assert (ROOT / path).is_file(), f"{page.name}: {path}"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="pip install -e '.[docs]'")
def test_mkdocs_build_strict(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert out.returncode == 0, out.stderr[-4000:]
    assert (tmp_path / "index.html").is_file()
    assert (tmp_path / "api" / "attacks" / "index.html").is_file()
    assert (tmp_path / "figures" / "spatial" / "spatial.png").is_file()
    html = (tmp_path / "api" / "attacks" / "index.html").read_text()
    assert 'id="jaxrobust.attacks.evaluate"' in html


def test_experiment_pages_quote_only_numbers_the_readme_states():
    """The experiment pages restate measured numbers; each decimal number on them must be
    one the README states (where tests/test_claims_*.py hold it against the results JSON)."""
    readme = (ROOT / "README.md").read_text()
    number = re.compile(r"(?<![\w.])\d+\.\d+(?:e-?\d+)?")
    readme_numbers = set(number.findall(readme))
    for page in (DOCS / "experiments").glob("*.md"):
        quoted = set(number.findall(page.read_text()))
        assert quoted <= readme_numbers, f"{page.name}: {sorted(quoted - readme_numbers)}"
