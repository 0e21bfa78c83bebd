"""Every page in docs/, and the README's tour, is executed: its ```python blocks run in order, in one namespace per
page, so the examples the pages show are the examples that work. A block may assert what it prints. Pages run in a
temporary working directory, so examples that write files write there."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def code_blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text(encoding="utf-8"))


PAGES = sorted(DOCS.glob("*.md")) + [DOCS.parent / "README.md"]
EXAMPLE_PAGES = [page for page in PAGES if code_blocks(page)]
PAGES_WITHOUT_EXAMPLES = {"index.md"}          # the reading order: links only


def test_docs_exist():
    assert (DOCS / "backends.md").exists()
    assert {page.name for page in PAGES if page not in EXAMPLE_PAGES} == PAGES_WITHOUT_EXAMPLES


@pytest.mark.parametrize("page", EXAMPLE_PAGES, ids=[p.stem for p in EXAMPLE_PAGES])
def test_page_examples_run(page, tmp_path, monkeypatch):
    blocks = code_blocks(page)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for number, source in enumerate(blocks, 1):
        try:
            exec(compile(source, f"{page.name}[block {number}]", "exec"), namespace)
        except Exception as error:  # re-raise with the page and block named, for a readable failure
            raise AssertionError(f"{page.name}, python block {number} failed: {error!r}") from error
