"""`scratch demo` and the bundled model as the default of `scratch generate`, `compare-decoding` and `chat`: the demo
prints the same text every run and on every backend (timings aside), and the commands work with no --model."""
from __future__ import annotations

import io
import re
import subprocess
import sys

import numpy as np
import pytest

import scratch.bundled
from scratch.cli import main
from scratch.demo import greedy_without_cache, run_demo, token_pieces
from scratch.generate import generate

# Everything that is a measurement of time: "0.42 s", "1,234 tok/s", "3.1x faster", the backend's own line.
TIMING = re.compile(r"[\d,]+(\.\d+)? ?(s\b|tok/s|x faster)")


def masked(text: str) -> str:
    lines = [line for line in text.splitlines() if not line.startswith("backend: ")]
    return TIMING.sub("<t>", "\n".join(lines)).replace("5. backend: strict", "5. backend: numpy")


def demo(backend: str) -> str:
    out = io.StringIO()
    run_demo(backend=backend, seed=3, max_new_tokens=8, kv_tokens=12, out=out)
    return out.getvalue()


@pytest.fixture(scope="module")
def numpy_run():
    return demo("numpy")


def test_demo_shows_every_part_in_order(numpy_run):
    sections = [numpy_run.index(f"\n{n}. ") for n in range(1, 6)]
    assert sections == sorted(sections)
    for strategy in ("greedy", "beam search", "top-k", "top-p", "min-p"):
        assert f"-- {strategy}" in numpy_run
    assert numpy_run.count("tok/s)") >= 5
    assert "LLM 모델 파인튜닝을 위한 GPU 최적화" in numpy_run
    assert "llama-2-7b" in numpy_run and "llama-3.1-8b" in numpy_run
    assert "the same tokens; the cache is" in numpy_run                   # cached greedy == recomputed greedy
    assert "\nbackend: numpy" in numpy_run


def test_demo_is_deterministic(numpy_run):
    again = demo("numpy")
    assert masked(again) == masked(numpy_run)
    assert TIMING.search(numpy_run)                                       # the mask did hide something


def test_demo_prints_the_same_tokens_on_strict(numpy_run):
    pytest.importorskip("array_api_strict")
    assert masked(demo("strict")) == masked(numpy_run)


def test_token_pieces_show_partial_characters_as_bytes():
    _, tokenizer = scratch.bundled.load("numpy")
    pieces = token_pieces(tokenizer, "def 최")
    assert "".join(pieces[:2]) == "def " and all(p.startswith("<") for p in pieces[2:])
    assert b"".join(bytes.fromhex(p.strip("<>")) for p in pieces[2:]) == "최".encode()


def test_greedy_without_cache_equals_generate():
    model, tokenizer = scratch.bundled.load("numpy")
    ids = [model.config.bos_token_id] + tokenizer.encode("import os\n")
    cached = generate(model, [ids], max_new_tokens=6, eos_token_id=None).sequences[0].tolist()
    assert greedy_without_cache(model, ids, 6) == cached


def test_python_dash_m_scratch_demo_is_registered():
    result = subprocess.run([sys.executable, "-m", "scratch", "demo", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "--backend" in result.stdout


def test_demo_cli_rejects_a_bad_length(capsys):
    assert main(["demo", "--max-new-tokens", "0"]) == 2
    assert "--max-new-tokens must be >= 1, got 0" in capsys.readouterr().err


# --- no --model: the bundled model ----------------------------------------------------------------------------------

def test_generate_uses_the_bundled_model_by_default(capsys):
    assert main(["generate", "--max-new-tokens", "6", "class Point:"]) == 0
    printed = capsys.readouterr().out
    model, tokenizer = scratch.bundled.load("numpy")
    ids = [model.config.bos_token_id] + tokenizer.encode("class Point:")     # --bos auto: a Llama gets its BOS
    expected = generate(model, [ids], max_new_tokens=6, eos_token_id=model.config.eos_token_id).sequences[0]
    new = [int(t) for t in np.asarray(expected)[len(ids):] if int(t) != model.config.eos_token_id]
    assert printed == tokenizer.decode(new) + "\n"


def test_compare_decoding_uses_the_bundled_model_by_default(capsys):
    assert main(["compare-decoding", "--max-new-tokens", "3", "--num-beams", "2", "import"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("prompt: 'import'") and "greedy" in printed and "beam 2" in printed


def test_chat_uses_the_bundled_model_by_default(capsys):
    pytest.importorskip("jinja2")
    assert main(["chat", "--prompt", "def add(a, b):", "--max-new-tokens", "5", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "the bundled model" in captured.err
    assert captured.out.endswith("\n") and len(captured.out) > 1
