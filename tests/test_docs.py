"""The documentation site: ``mkdocs build --strict`` passes, and the pages a reader relies on are there.

Strict mode turns every warning into a failure: a broken link or anchor between pages, a page missing from
the nav, and a docstring that mkdocstrings cannot render.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import nbcache

from .conftest import require

ROOT = Path(__file__).resolve().parent.parent


def _mkdocs_missing() -> str | None:
    try:
        import material  # noqa: F401
        import mkdocs  # noqa: F401
        import mkdocstrings  # noqa: F401
    except ImportError as exc:
        return f"the docs tools are not installed ({exc.name}): pip install -e '.[docs]'"
    return None


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(_mkdocs_missing())
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    if proc.returncode != 0:
        pytest.fail(f"mkdocs build --strict failed ({proc.returncode}):\n{proc.stderr}\n{proc.stdout}")
    return out


def _nav_pages() -> list[str]:
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages = []
    for entry in config["nav"]:
        (page,) = entry.values()
        pages.append(page)
    return pages


def _html(site: Path, page: str) -> str:
    path = site / ("index.html" if page == "index.md" else Path(page).with_suffix("") / "index.html")
    assert path.is_file(), f"{page} was not rendered to {path.relative_to(site)}"
    return path.read_text(encoding="utf-8")


def test_every_page_of_the_issue_is_in_the_nav_and_rendered(site: Path) -> None:
    pages = _nav_pages()
    for page in ("index.md", "quickstart.md", "concepts.md", "magics.md", "lineage.md", "api.md", "cli.md",
                 "pitfalls.md"):
        assert page in pages
    for page in pages:
        assert "<article" in _html(site, page)


def test_api_page_documents_every_public_name(site: Path) -> None:
    html = _html(site, "api.md")
    for name in nbcache.__all__:
        anchor = rf'id="nbcache\.(\w+\.)?{re.escape(name)}"'
        assert re.search(anchor, html), f"nbcache.{name} is not on the API page"
    # step's signature and its docstring's parameter table came through mkdocstrings
    assert "enable_cache" in html
    assert "Names of arguments left out of the key" in html


def test_concepts_and_pitfalls_have_their_sections(site: Path) -> None:
    concepts = _html(site, "concepts.md")
    for anchor in ("what-goes-into-a-key", "what-invalidates-a-key-and-what-does-not", "content-addressing"):
        assert f'id="{anchor}"' in concepts
    pitfalls = _html(site, "pitfalls.md")
    for anchor in ("randomness", "mutating-inputs", "side-effects-files-printing-library-settings",
                   "pickles-and-trust", "dict-order-is-not-in-the-key", "matplotlib-figures-change-when-they-are-drawn",
                   "library-code-counts-by-name-and-version", "unhashable-arguments-and-unpicklable-results"):
        assert f'id="{anchor}"' in pitfalls


def test_pages_fetch_nothing_from_font_services(site: Path) -> None:
    for page in _nav_pages():
        assert "fonts.googleapis.com" not in _html(site, page)
