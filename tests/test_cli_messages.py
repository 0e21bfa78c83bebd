"""What a newcomer reads from the command line, captured: long work says what it is doing (loading a large model, each
decoding strategy as it finishes, the BPE merges as text), help lists what can be asked for (every option has help,
`scratch info --help` lists the presets, which accept any spelling), and bad requests are refused up front with the
reason (a binary corpus, a vocabulary the corpus cannot give, a tokenizer whose ids the model lacks). Plus: the test
suite's own skips say what is missing in a user's words, one summary line per reason."""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import backends
import scratch.models
from scratch.cli import build_parser, main
from scratch.models import GPT2Config
from scratch.models import cli as models_cli
from scratch.models.presets import format_bytes
from scratch.tokenizer import BPETokenizer
from scratch.tokenizer import train as bpe_train
from scratch.train.loop import save_model

ROOT = Path(__file__).resolve().parent.parent
TEXT = "the quick brown fox jumps over the lazy dog. pack my box with five dozen liquor jugs! " * 6
PROMPT = "the quick brown"


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tok.json"
    BPETokenizer.train(TEXT, vocab_size=300, pattern="gpt2").save(path)
    return path


def model_folder(root: Path, vocab_size: int) -> str:
    """A tiny random GPT-2 saved as a model folder (config.json + model.safetensors)."""
    config = GPT2Config(vocab_size=vocab_size, n_positions=64, n_embd=16, n_layer=1, n_head=2)
    return str(save_model(scratch.models.from_config(config, seed=0), root / f"gpt2_v{vocab_size}"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    return model_folder(tmp_path_factory.mktemp("models"), 300)


# --- feedback on long work -----------------------------------------------------------------------------------------

def test_loading_a_large_model_says_what_it_loads(folder, tokenizer_file, monkeypatch, capsys):
    text, size = models_cli.describe_model_source(folder)
    assert text == f"{folder}: 1 safetensors file, {format_bytes(size)}" and size > 0
    argv = ["generate", "--model", folder, "--tokenizer", str(tokenizer_file), "--max-new-tokens", "2", PROMPT]
    assert main(argv) == 0
    assert "loading" not in capsys.readouterr().err                 # a small model loads silently
    monkeypatch.setattr(models_cli, "LARGE_MODEL_BYTES", 1)          # ... a large one is announced
    assert main(argv) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [f"loading {text}"]


def test_a_gguf_file_is_described_as_gguf(tmp_path):
    from scratch.formats.gguf import write_gguf

    path = tmp_path / "m.gguf"
    write_gguf(path, {"general.architecture": "llama"}, {})
    text, size = models_cli.describe_model_source(path)
    assert text.startswith(f"{path}: GGUF, ") and size == path.stat().st_size


def test_compare_decoding_prints_the_prompt_and_each_strategy_as_it_finishes(folder, tokenizer_file, monkeypatch,
                                                                             capsys):
    import scratch.generate

    real_generate = scratch.generate.generate
    printed_before = []                                  # stdout at the start of each strategy's generate call

    def recording_generate(*args, **kwargs):
        printed_before.append(capsys.readouterr().out)
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(scratch.generate, "generate", recording_generate)
    assert main(["compare-decoding", "--model", folder, "--tokenizer", str(tokenizer_file), "--max-new-tokens", "3",
                 PROMPT]) == 0
    printed_before.append(capsys.readouterr().out)
    assert printed_before[0] == f"prompt: {PROMPT!r}\n"               # before any strategy runs
    assert len(printed_before) == 8                                   # 7 strategies, then the last line
    for chunk in printed_before[1:]:                                  # each strategy's line, before the next one starts
        assert chunk.count("\n") == 1 and " | " in chunk


def test_the_bpe_progress_line_shows_the_merged_pair_as_text(tmp_path, monkeypatch, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    monkeypatch.setattr(bpe_train, "PROGRESS_EVERY", 10)
    assert main(["tokenizer", "train", "--corpus", str(corpus), "--vocab-size", "300", "--out",
                 str(tmp_path / "t.json")]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(line.startswith("bpe train: ") for line in lines)
    merged = re.search(r"last merge (b'[^']*') \+ (b'[^']*'), count \d+", lines[0])
    assert merged, lines[0]                                           # bytes, e.g. b' th' + b'e', not (116, 104)
    assert not re.search(r"\(\d+, \d+\)", lines[0])


# --- help and messages ---------------------------------------------------------------------------------------------

def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...]):
    """(command path, action) for every action of every (sub)parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield path + (name,), helps.get(name)                  # the subcommand's own line in the listing
                yield from _walk(sub, path + (name,))
        else:
            yield path, action


def test_every_subcommand_and_option_has_help():
    missing = []
    for path, item in _walk(build_parser(), ("scratch",)):
        if isinstance(item, argparse._HelpAction):
            continue
        if isinstance(item, argparse.Action):
            if not item.help or item.help == argparse.SUPPRESS:
                missing.append(f"{' '.join(path)} {'/'.join(item.option_strings) or item.dest}")
        elif not item:
            missing.append(f"{' '.join(path)} (the subcommand)")
    assert not missing, f"options without help text: {missing}"


def test_info_help_lists_the_presets(capsys):
    from scratch.models.presets import list_presets

    with pytest.raises(SystemExit):
        main(["info", "--help"])
    out = " ".join(capsys.readouterr().out.split())       # argparse wraps lines
    for name in list_presets():
        assert name in out


@pytest.mark.parametrize("spelling", ["llama2-7b", "Llama-2-7B", "llama_2_7b", "meta-llama/Llama-2-7b-hf"])
def test_info_accepts_any_spelling_of_a_preset(spelling, capsys):
    assert main(["info", "llama-2-7b"]) == 0
    expected = capsys.readouterr().out
    assert main(["info", spelling]) == 0
    assert capsys.readouterr().out == expected
    assert main(["info", spelling, "--training"]) == 0
    assert capsys.readouterr().out.startswith("llama-2-7b: training memory")


def test_an_unknown_preset_lists_the_known_ones(capsys):
    assert main(["info", "llama-9"]) == 2
    err = capsys.readouterr().err
    assert "unknown model preset 'llama-9'" in err and "llama-3.1-8b" in err


def test_a_vocabulary_the_corpus_cannot_give_says_what_it_got_and_why(tmp_path, capsys):
    corpus = tmp_path / "small.txt"
    corpus.write_text("abab abab", encoding="utf-8")
    out = tmp_path / "t.json"
    assert main(["tokenizer", "train", "--corpus", str(corpus), "--vocab-size", "1000", "--out", str(out),
                 "--quiet"]) == 0
    tokenizer = BPETokenizer.load(out)
    err = capsys.readouterr().err
    assert f"asked for 1,000 tokens, got {tokenizer.n_vocab}" in err
    assert f"{len(tokenizer.merges)} merges" in err and "no pair is left to merge" in err


@pytest.mark.parametrize("content, reason", [(b"text\x00\x01\x02 more", "looks binary (it holds NUL bytes"),
                                             (b"caf\xe9 latin-1", "is not UTF-8 text (byte 0xe9 at offset 3")])
def test_a_binary_or_non_utf8_corpus_is_refused_naming_the_file(tmp_path, capsys, content, reason):
    corpus = tmp_path / "data.bin"
    corpus.write_bytes(content)
    assert main(["tokenizer", "train", "--corpus", str(corpus), "--vocab-size", "300", "--out",
                 str(tmp_path / "t.json")]) == 2
    err = capsys.readouterr().err
    assert f"corpus file {corpus} {reason}" in err and err.count("\n") == 1
    assert not (tmp_path / "t.json").exists()


def test_a_tokenizer_with_ids_the_model_lacks_is_refused(tmp_path, tokenizer_file, capsys):
    small = model_folder(tmp_path, 280)                               # the tokenizer has 300 ids
    assert main(["generate", "--model", small, "--tokenizer", str(tokenizer_file), PROMPT]) == 2
    err = capsys.readouterr().err
    assert "produces ids up to 299, but the model" in err and "has only 280 tokens" in err
    padded = model_folder(tmp_path, 320)                              # padded beyond the tokenizer: normal
    assert main(["generate", "--model", padded, "--tokenizer", str(tokenizer_file), "--max-new-tokens", "2",
                 PROMPT]) == 0


# --- the test suite's skip messages --------------------------------------------------------------------------------

def test_skips_say_what_is_missing_in_one_line_per_reason(tmp_path):
    """A test module using the backend fixture, the shared data and the real checkpoint, run with -ra in a fresh
    process: each missing thing is one summary line in a user's words."""
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text(encoding="utf-8"))
    (tmp_path / "test_sample.py").write_text(
        "from conftest import require_real_gguf, require_shared\n"
        "def test_a(backend): pass\n"
        "def test_b(backend): pass\n"
        "def test_c(): require_shared('tokenizers', 'gpt2')\n"
        "def test_d(): require_shared('corpora')\n"
        "def test_e(): require_real_gguf()\n")
    env = {key: value for key, value in os.environ.items()
           if key not in ("CI", "SCRATCH_SHARED_DATA", "SCRATCH_REAL_GGUF")}
    env.update(PYTHONPATH=str(ROOT), SCRATCH_SHARED_DATA=str(tmp_path / "no-such-folder"))
    result = subprocess.run([sys.executable, "-m", "pytest", "-ra", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    skipped = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    assert result.returncode == 0, result.stdout[-2000:]
    gpu = [line for line in skipped if "GPU" in line]
    if backends.unavailable_reason("cupy") is not None:
        assert len(gpu) == 1 and gpu[0].startswith("SKIPPED [2]"), skipped      # test_a and test_b: one line
    else:
        assert not gpu
    shared = [line for line in skipped if "SCRATCH_SHARED_DATA" in line]
    assert len(shared) == 1 and shared[0].startswith("SKIPPED [2]"), skipped
    assert any("SCRATCH_REAL_GGUF" in line for line in skipped)
    for line in skipped:                                   # no internal wording: paths of this project's workspace
        assert "../shared" not in line and "tools/" not in line and "this tree" not in line, line
