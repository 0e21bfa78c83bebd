"""docs/make_figures.py runs (so no figure can rot), writes every figure it lists as a small PNG, and every docs page
opens with a committed figure: each page embeds at least one image of docs/figures/, every image it embeds exists,
and every figure the script makes is embedded somewhere."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SCRIPT = DOCS / "make_figures.py"
IMAGE = re.compile(r"!\[[^\]]*\]\((figures/[^)\s]+\.png)\)")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_BYTES = 150 * 1024           # committed images stay small (dpi 100)


def figure_names() -> list[str]:
    result = subprocess.run([sys.executable, str(SCRIPT), "--list"], capture_output=True, text=True, check=True)
    return result.stdout.split()


def test_the_script_draws_every_figure_small(tmp_path):
    pytest.importorskip("matplotlib", reason="drawing the figures needs matplotlib (pip install '.[docs]')")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    names = figure_names()
    assert len(names) >= 13
    for name in names:
        path = tmp_path / f"{name}.png"
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE), name
        assert 10_000 < len(data) < MAX_BYTES, (name, len(data))
        assert f"{name}.png" in result.stdout                          # one progress line per figure


def test_every_page_embeds_a_committed_figure():
    pages = sorted(DOCS.glob("*.md"))
    embedded = set()
    for page in pages:
        images = IMAGE.findall(page.read_text(encoding="utf-8"))
        assert images, f"{page.name} embeds no figure of docs/figures/"
        for image in images:
            assert (DOCS / image).is_file(), f"{page.name} embeds {image}, which does not exist"
            assert (DOCS / image).stat().st_size < MAX_BYTES, image
        embedded.update(Path(image).stem for image in images)
    missing = [name for name in figure_names() if name not in embedded]
    assert not missing, f"figures no page shows: {missing}"


def test_each_page_opens_with_its_figure():
    """The figure comes before any section heading: it is what a reader sees first."""
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        first_section = text.find("\n## ")
        first_image = IMAGE.search(text)
        assert first_image is not None and (first_section < 0 or first_image.start() < first_section), page.name
