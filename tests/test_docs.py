"""The documentation builds offline with --strict, and the README keeps its two set-up commands."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INSTALL_AND_RUN = 'pip install -c ci/constraints.txt -e ".[all]" && refconv example seed'
INSTALL_AND_TEST = 'pip install -q -c ci/constraints.txt -e ".[test]" && python -m pytest -n 2 -q'


def test_readme_has_the_two_setup_commands_and_ci_mirrors_the_test_one():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert INSTALL_AND_RUN in readme, "README must show the install-and-run command verbatim"
    assert INSTALL_AND_TEST in readme, "README must show the install-and-test command verbatim"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert INSTALL_AND_TEST in ci, ".ci/run must run exactly the README's test command"


def test_readme_links_to_docs_pages_that_exist():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert links, "README links to the docs"
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, f"README links to missing files: {missing}"


def test_nav_pages_exist():
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = re.findall(r":\s*([\w/.-]+\.md)\s*$", text, flags=re.M)
    assert len(pages) >= 10, pages
    missing = [p for p in pages if not (ROOT / "docs" / p).exists()]
    assert not missing, f"mkdocs.yml nav names missing pages: {missing}"


def test_api_reference_covers_every_public_subpackage():
    import refconv

    ref = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "docs" / "reference").glob("*.md"))
    documented = set(re.findall(r"^::: ([\w.]+)", ref, flags=re.M))
    expected = {"refconv", "refconv.spec", "refconv.oracle", "refconv.frameworks", "refconv.attribution",
                "refconv.testing", "refconv.report", "refconv.cli", "refconv.errors"}
    assert expected <= documented, f"API reference lacks {sorted(expected - documented)}"
    assert refconv.__all__, "refconv has a public API to document"


_HAVE_MKDOCS = all(importlib.util.find_spec(m) for m in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers"))


@pytest.mark.skipif(not _HAVE_MKDOCS, reason="mkdocs, mkdocs-material and mkdocstrings[python] (the 'docs' extra) "
                    "are not installed")
def test_mkdocs_build_strict_offline(tmp_path):
    site = tmp_path / "site"
    env_cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(site)]
    proc = subprocess.run(env_cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    for page in ("index.html", "tutorial/index.html", "quickstart/index.html", "precision-knobs/index.html",
                 "reference/refconv/index.html", "reference/report/index.html"):
        assert (site / page).exists(), page
    html = "\n".join(p.read_text(encoding="utf-8") for p in site.rglob("*.html"))
    assert "fonts.googleapis" not in html and "fonts.gstatic" not in html, "the site must not load Google Fonts"
    ref = (site / "reference" / "report" / "index.html").read_text(encoding="utf-8")
    assert "render_html" in ref and "seed_answer" in ref, "API reference is generated from the docstrings"
    assert "&gt;&gt;&gt;" in ref and "<blockquote>" not in ref, "doctests render as code, not as block quotes"
    assert not (site / "hooks").exists(), "the build hook is not published"
    shutil.rmtree(site)
