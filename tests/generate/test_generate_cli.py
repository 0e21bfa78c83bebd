"""`scratch generate` and `scratch compare-decoding` through scratch.cli.main, with a tiny GPT-2 saved by
transformers and a tiny BPE tokenizer trained here (vocabulary sizes equal), everything under tmp_path."""
from __future__ import annotations

import pytest
import torch
import transformers

import scratch.models
from scratch.cli import main
from scratch.generate import generate
from scratch.generate.cli import printable
from scratch.tokenizer import BPETokenizer

V = 300
PROMPT = "the quick brown"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(model folder, tokenizer file) as strings."""
    root = tmp_path_factory.mktemp("cli")
    text = "the quick brown fox jumps over the lazy dog. " * 4 + "pack my box with five dozen liquor jugs! " * 4
    tokenizer = BPETokenizer.train(text, vocab_size=V, pattern="gpt2")
    tokenizer.save(root / "tok.json")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=2, initializer_range=0.2,
        bos_token_id=None, eos_token_id=None))
    hf.save_pretrained(root / "model")
    return str(root / "model"), str(root / "tok.json")


def _expected(files, **kwargs):
    model_dir, tok_path = files
    tokenizer = BPETokenizer.load(tok_path)
    model = scratch.models.load(model_dir)
    ids = tokenizer.encode(PROMPT)
    out = generate(model, [ids], **kwargs).sequences[0, len(ids):]
    return tokenizer.decode(out.tolist())


def test_generate_greedy_streams_the_text(files, capsys):
    model_dir, tok_path = files
    assert main(["generate", "--model", model_dir, "--tokenizer", tok_path, "--max-new-tokens", "12", PROMPT]) == 0
    assert capsys.readouterr().out == _expected(files, max_new_tokens=12) + "\n"


def test_generate_sampling_with_seed(files, capsys):
    model_dir, tok_path = files
    argv = ["generate", "--model", model_dir, "--tokenizer", tok_path, "--strategy", "sample", "--seed", "7",
            "--top-k", "20", "--top-p", "0.9", "--temperature", "1.2", "--max-new-tokens", "10", PROMPT]
    assert main(argv) == 0
    expected = _expected(files, max_new_tokens=10, do_sample=True, seed=7, top_k=20, top_p=0.9, temperature=1.2)
    assert capsys.readouterr().out == expected + "\n"


def test_generate_stop_string(files, capsys):
    model_dir, tok_path = files
    full = _expected(files, max_new_tokens=12)
    stop = full[3:5]
    assert main(["generate", "--model", model_dir, "--tokenizer", tok_path, "--max-new-tokens", "12",
                 "--stop", stop, PROMPT]) == 0
    text = capsys.readouterr().out[:-1]
    assert stop in PROMPT + text and full.startswith(text) and len(text) < len(full)


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    """A tiny Llama (vocabulary V, bos_token_id 1) saved by transformers."""
    folder = tmp_path_factory.mktemp("cli_llama")
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.2, bos_token_id=1,
        eos_token_id=None, pad_token_id=None)).save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("choice, with_bos", [("auto", True), ("yes", True), ("no", False)])
def test_generate_starts_a_llama_prompt_with_bos(files, llama_folder, capsys, choice, with_bos):
    """--bos auto gives a Llama prompt its BOS first (as Llama's own tokenizers do); --bos no leaves it out."""
    _, tok_path = files
    tokenizer = BPETokenizer.load(tok_path)
    ids = ([1] if with_bos else []) + tokenizer.encode(PROMPT)
    expected = generate(scratch.models.load(llama_folder), [ids], max_new_tokens=8).sequences[0, len(ids):]
    assert main(["generate", "--model", llama_folder, "--tokenizer", tok_path, "--max-new-tokens", "8",
                 "--bos", choice, PROMPT]) == 0
    assert capsys.readouterr().out == tokenizer.decode(expected.tolist()) + "\n"


def test_bos_yes_needs_a_bos_id(files, capsys):
    model_dir, tok_path = files                     # this GPT-2 was saved with bos_token_id=None
    assert main(["generate", "--model", model_dir, "--tokenizer", tok_path, "--bos", "yes", PROMPT]) != 0
    assert "--bos yes: the model config's bos_token_id (None)" in capsys.readouterr().err


def test_generate_beam_count(files, capsys):
    """--num-beams reaches beam search: each count prints what generate(num_beams=...) returns, and they differ."""
    model_dir, tok_path = files
    printed = {}
    for beams in (2, 5):
        assert main(["generate", "--model", model_dir, "--tokenizer", tok_path, "--max-new-tokens", "20",
                     "--strategy", "beam", "--num-beams", str(beams), PROMPT]) == 0
        printed[beams] = capsys.readouterr().out
        assert printed[beams] == _expected(files, max_new_tokens=20, num_beams=beams) + "\n"
    assert printed[2] != printed[5]          # the two counts give different text here, so the count is not ignored


def test_generate_beam_with_a_stop_string(files, capsys):
    """--strategy beam --stop: the stop string ends hypotheses (beam search takes stop strings)."""
    model_dir, tok_path = files
    tokenizer = BPETokenizer.load(tok_path)
    stop = _expected(files, max_new_tokens=12)[2:4]
    ids = tokenizer.encode(PROMPT)
    out = generate(scratch.models.load(model_dir), [ids], max_new_tokens=12, num_beams=4, stop_strings=[stop],
                   tokenizer=tokenizer).sequences[0, len(ids):]
    assert main(["generate", "--model", model_dir, "--tokenizer", tok_path, "--max-new-tokens", "12", "--strategy",
                 "beam", "--stop", stop, PROMPT]) == 0
    text = tokenizer.decode(out.tolist())
    if stop in text:   # the row ended on the stop string: the padding after it is not printed
        text = text[:text.find(stop) + len(stop)]
    assert capsys.readouterr().out == text + "\n"


def test_new_text_drops_the_padding_after_a_stop_string(files):
    from scratch.generate.cli import _new_text
    tokenizer = BPETokenizer.load(files[1])
    prompt, body, pad = tokenizer.encode("the"), tokenizer.encode(" quick brown fox"), tokenizer.encode("!")
    row = prompt + body + pad * 3                       # a beam hypothesis that ended on "brown", padded with "!"
    assert _new_text(tokenizer, row, len(prompt), set(), ["own"]) == " quick brown"
    assert _new_text(tokenizer, row, len(prompt), set()) == " quick brown fox!!!"
    assert _new_text(tokenizer, row, len(prompt), {body[-1]}) == tokenizer.decode(body[:-1])   # EOS cuts first


def test_compare_decoding_with_a_stop_string_skips_contrastive(files, capsys):
    model_dir, tok_path = files
    assert main(["compare-decoding", "--model", model_dir, "--tokenizer", tok_path, "--max-new-tokens", "6",
                 "--stop", "zz", PROMPT]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("contrastive") and "skipped: contrastive search takes no stop strings" in lines[-1]
    assert lines[6].startswith("beam 4") and "skipped" not in lines[6]


def test_compare_decoding_lists_each_strategy(files, capsys):
    model_dir, tok_path = files
    assert main(["compare-decoding", "--model", model_dir, "--tokenizer", tok_path, "--max-new-tokens", "6",
                 PROMPT]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"prompt: {PROMPT!r}"
    names = [line.split("|")[0].strip() for line in lines[1:]]
    assert names == ["greedy", "sample", "top-k 50", "top-p 0.9", "min-p 0.1", "beam 4", "contrastive"]
    greedy = lines[1].split("| ", 1)[1]
    assert greedy == printable(_expected(files, max_new_tokens=6))
    assert printable("a\nb\x1c\u2028c") == "a\\nb\\x1c\\u2028c"


@pytest.mark.parametrize("extra, message", [
    (["--strategy", "speculative"], "needs --draft-model"),
    (["--temperature", "0.5"], "use --strategy sample"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["--max-new-tokens", "80"], "exceed the model's context of 64"),
])
def test_generate_bad_options(files, capsys, extra, message):
    model_dir, tok_path = files
    assert main(["generate", "--model", model_dir, "--tokenizer", tok_path, *extra, PROMPT]) == 2
    assert message in capsys.readouterr().err


def test_generate_missing_model(files, tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "nope"), "--tokenizer", files[1], PROMPT]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_generate_refuses_an_encoder_model(files, tmp_path, capsys):
    bert = transformers.BertModel(transformers.BertConfig(
        vocab_size=V, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    bert.save_pretrained(tmp_path / "bert")
    assert main(["generate", "--model", str(tmp_path / "bert"), "--tokenizer", files[1], PROMPT]) == 2
    assert "holds a Bert model, which cannot generate text" in capsys.readouterr().err


def test_generate_backend_comes_from_the_environment(files, capsys, monkeypatch):
    model_dir, tok_path = files
    monkeypatch.setenv("SCRATCH_BACKEND", "jax")
    assert main(["generate", "--model", model_dir, "--tokenizer", tok_path, "--max-new-tokens", "3", PROMPT]) == 2
    assert "unknown backend 'jax' (from $SCRATCH_BACKEND)" in capsys.readouterr().err
    monkeypatch.setenv("SCRATCH_BACKEND", "strict")  # the same tokens on the strict backend
    assert main(["generate", "--model", model_dir, "--tokenizer", tok_path, "--max-new-tokens", "5", PROMPT]) == 0
    assert capsys.readouterr().out == _expected(files, max_new_tokens=5) + "\n"

