"""`scratch train` end to end on a tiny corpus: the output folder loads with scratch.models.load and load_tokenizer;
Ctrl-C exits with 130 and no traceback, and --resume finishes with the same weights, byte for byte, as an
uninterrupted run; a config.json path and a reused tokenizer work; bad input exits 2 with a message, a non-finite
loss exits 1 naming the step."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import scratch.models
from scratch.cli import main
from scratch.models import LlamaConfig, save_config
from scratch.tokenizer import BPETokenizer, load_tokenizer
from scratch.train import model_grads
from tests.train import ctrl_c_in_step, write_corpus

FAST = ["--steps", "4", "--batch-size", "2", "--seq-len", "16", "--vocab-size", "280", "--log-every", "2",
        "--eval-every", "2", "--eval-batches", "1", "--warmup-steps", "1"]


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path, (600, 400))


def train_args(corpus, out, *extra):
    return ["train", "--corpus", *corpus, "--config", "gpt2-tiny", "--out", str(out), *FAST, *extra]


def test_train_writes_a_model_folder(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(corpus, out)) == 0
    printed = capsys.readouterr().out
    assert "step 2/4 | loss" in printed and "step 4/4 | val loss" in printed and "tok/s" in printed
    model = scratch.models.load(out)
    tokenizer = load_tokenizer(out)
    assert model.n_vocab == tokenizer.n_vocab == 280
    text = Path(corpus[0]).read_text(encoding="utf-8")
    assert tokenizer.decode(tokenizer.encode(text)) == text
    eot = tokenizer.encode("<|endoftext|>", allowed_special="all")
    assert len(eot) == 1 and model.config.eos_token_id == eot[0]
    logits = np.asarray(model(np.array([tokenizer.encode(text)[:16]])))
    assert logits.shape == (1, 16, 280) and np.isfinite(logits).all()
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000004"


def test_ctrl_c_exits_130_and_resume_finishes_like_an_uninterrupted_run(corpus, tmp_path, capsys, monkeypatch):
    assert main(train_args(corpus, tmp_path / "whole")) == 0
    ctrl_c_in_step(monkeypatch, 3)
    capsys.readouterr()
    assert main(train_args(corpus, tmp_path / "split")) == 130
    err = capsys.readouterr().err
    assert "interrupted after step 2" in err and "--resume" in err and "Traceback" not in err
    monkeypatch.undo()
    assert main(train_args(corpus, tmp_path / "split", "--resume")) == 0
    assert "resuming from" in capsys.readouterr().out
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert (split / "model.safetensors").read_bytes() == (whole / "model.safetensors").read_bytes()
    losses = [json.loads((run / "checkpoints" / "step-00000004" / "trainer.json").read_text())["losses"]
              for run in (whole, split)]
    assert losses[0] == losses[1] and len(losses[0]) == 4


def test_config_json_path_and_reused_tokenizer(corpus, tmp_path):
    tokenizer = BPETokenizer.train([Path(f).read_text(encoding="utf-8") for f in corpus], 270)
    tokenizer.save(tmp_path / "tok.json")
    llama = LlamaConfig(vocab_size=1, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    save_config(llama, tmp_path / "cfg")
    out = tmp_path / "run"
    args = ["train", "--corpus", *corpus, "--config", str(tmp_path / "cfg" / "config.json"), "--out", str(out),
            "--tokenizer", str(tmp_path / "tok.json"), *FAST]
    assert main(args) == 0
    model = scratch.models.load(out)
    assert type(model).__name__ == "Llama" and model.n_vocab == 270 and model.config.eos_token_id is None
    assert load_tokenizer(out).encode("the cat sat") == tokenizer.encode("the cat sat")


def test_bad_input_exits_2_and_a_non_finite_loss_exits_1(corpus, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "run")
    assert main(["train", "--corpus", *corpus, "--config", "no-such-config", "--out", out, *FAST]) == 2
    assert "unknown config 'no-such-config'" in capsys.readouterr().err
    assert main(["train", "--corpus", "missing.txt", "--config", "gpt2-tiny", "--out", out, *FAST]) == 2
    assert "corpus file not found: missing.txt" in capsys.readouterr().err
    assert main(train_args(corpus, tmp_path / "fresh", "--resume")) == 2
    assert "no checkpoint" in capsys.readouterr().err
    real = model_grads.loss_and_grads
    monkeypatch.setattr(model_grads, "loss_and_grads", lambda *a, **k: (float("nan"), real(*a, **k)[1]))
    assert main(train_args(corpus, tmp_path / "nan")) == 1
    assert "step 1: the training loss is nan" in capsys.readouterr().err
