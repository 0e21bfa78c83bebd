"""`scratch tokenizer train|encode|decode|view`, called through scratch.cli.main."""
from __future__ import annotations

import io
import json

import pytest

from scratch.cli import main
from scratch.tokenizer import BPETokenizer


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("the cat sat on the mat, the cat ate the rat.\n" * 30 + "안녕하세요 세계\n" * 5, encoding="utf-8")
    return path


def test_train_then_encode_decode_view(corpus, tmp_path, capsys):
    out = tmp_path / "tok.json"
    assert main(["tokenizer", "train", "--corpus", str(corpus), str(corpus), "--vocab-size", "280", "--out", str(out),
                 "--special", "<|endoftext|>", "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    tokenizer = BPETokenizer.load(out)
    assert tokenizer.n_vocab == 280 and tokenizer.special_tokens == {"<|endoftext|>": 279}
    assert json.loads(out.read_text())["pattern"] == "gpt4"

    assert main(["tokenizer", "encode", "--tokenizer", str(out), "the cat sat"]) == 0
    ids = [int(t) for t in capsys.readouterr().out.split()]
    assert ids == tokenizer.encode("the cat sat")

    assert main(["tokenizer", "decode", "--tokenizer", str(out), *map(str, ids)]) == 0
    assert capsys.readouterr().out == "the cat sat\n"

    assert main(["tokenizer", "view", "--tokenizer", str(out), "the cat<|endoftext|>"]) == 0
    view = capsys.readouterr().out
    assert "[279 '<|endoftext|>']" in view and "' cat'" in view


def test_train_progress_and_pattern(corpus, tmp_path, capsys):
    out = tmp_path / "tok.json"
    assert main(["tokenizer", "train", "--corpus", str(corpus), "--vocab-size", "260", "--out", str(out),
                 "--pattern", "gpt2"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert BPETokenizer.load(out).pattern == "gpt2"


def test_cl100k_by_name(capsys, monkeypatch):
    assert main(["tokenizer", "view", "--tokenizer", "cl100k_base", "hello world"]) == 0
    assert capsys.readouterr().out.startswith("[15339 'hello'] [1917 ' world']")
    monkeypatch.setattr("sys.stdin", io.StringIO("hello world"))
    assert main(["tokenizer", "encode", "--tokenizer", "cl100k_base"]) == 0
    assert capsys.readouterr().out.split() == ["15339", "1917"]
    assert main(["tokenizer", "decode", "--tokenizer", "cl100k", "15339,1917"]) == 0
    assert capsys.readouterr().out == "hello world\n"
    assert main(["tokenizer", "view", "--tokenizer", "cl100k_base", "🎉"]) == 0
    assert "b'\\xf0\\x9f" in capsys.readouterr().out  # a piece of a character shows as bytes


def test_special_tokens_need_allow_special(capsys):
    assert main(["tokenizer", "encode", "--tokenizer", "cl100k_base", "a<|endoftext|>"]) == 2
    assert "--allow-special" in capsys.readouterr().err
    assert main(["tokenizer", "encode", "--tokenizer", "cl100k_base", "--allow-special", "a<|endoftext|>"]) == 0
    assert capsys.readouterr().out.split()[-1] == "100257"


@pytest.mark.parametrize("argv, message", [
    (["tokenizer", "encode", "--tokenizer", "nope-not-here", "x"], "no tokenizer file, folder or known name"),
    (["tokenizer", "decode", "--tokenizer", "cl100k_base", "15339", "999999"], "token id 999999"),
    (["tokenizer", "decode", "--tokenizer", "cl100k_base", "abc"], "token ids must be integers"),
    (["tokenizer", "train", "--corpus", "missing.txt", "--vocab-size", "300", "--out", "x.json"], "missing.txt"),
])
def test_errors_are_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_train_vocab_too_small(corpus, tmp_path, capsys):
    assert main(["tokenizer", "train", "--corpus", str(corpus), "--vocab-size", "100", "--out",
                 str(tmp_path / "t.json")]) == 2
    assert "vocab_size" in capsys.readouterr().err
    assert not (tmp_path / "t.json").exists()


def test_view_sentencepiece_shows_pieces(capsys):
    from tests.conftest import require_shared

    path = require_shared("tokenizers", "llama2", "tokenizer.model")
    assert main(["tokenizer", "view", "--tokenizer", str(path), "Hello world"]) == 0
    assert capsys.readouterr().out.startswith("[15043 '▁Hello'] [3186 '▁world']")
