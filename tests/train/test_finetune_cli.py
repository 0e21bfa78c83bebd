"""`scratch finetune` end to end on a tiny model folder: the adapter it writes loads with
scratch.models.load(folder, adapter=out) and with PEFT (equal logits); only adapters are trained and checkpointed,
the base folder is untouched; Ctrl-C exits 130 without a traceback and --resume finishes with the same adapter,
byte for byte, as an uninterrupted run; bad input exits 2 naming it."""
from __future__ import annotations

import json

import numpy as np
import peft
import pytest
import torch
import transformers

import scratch.models
from scratch.cli import main
from scratch.models import GPT2Config, LlamaConfig
from scratch.tokenizer import BPETokenizer
from scratch.tokenizer.hf import to_hf
from scratch.train import load_adapter, lora, save_model
from tests.train import ctrl_c_in_step, write_corpus

FAST = ["--steps", "4", "--batch-size", "2", "--seq-len", "16", "--log-every", "2", "--eval-every", "2",
        "--eval-batches", "1", "--warmup-steps", "1", "--lr", "1e-2"]


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path, (500, 300))


@pytest.fixture(params=["gpt2", "llama"])
def model_folder(request, corpus, tmp_path):
    """A tiny random model with its tokenizer, saved as a Hugging Face folder."""
    texts = [open(f, encoding="utf-8").read() for f in corpus]
    tokenizer = BPETokenizer.train(texts, 280, special_tokens=["<|endoftext|>"])
    if request.param == "gpt2":
        config = GPT2Config(vocab_size=tokenizer.n_vocab, n_positions=32, n_embd=32, n_layer=2, n_head=4)
    else:
        config = LlamaConfig(vocab_size=tokenizer.n_vocab, hidden_size=32, intermediate_size=48,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=32)
    folder = tmp_path / request.param
    save_model(scratch.models.from_config(config, seed=1), folder)
    to_hf(tokenizer, folder / "tokenizer.json")
    return folder


def finetune_args(folder, corpus, out, *extra):
    return ["finetune", "--model", str(folder), "--data", *corpus, "--out", str(out), "--lora-r", "4", *FAST, *extra]


def test_finetune_writes_a_peft_adapter(model_folder, corpus, tmp_path, capsys):
    before = (model_folder / "model.safetensors").read_bytes()
    out = tmp_path / "adapter"
    assert main(finetune_args(model_folder, corpus, out, "--target-modules", "all-linear")) == 0
    printed = capsys.readouterr().out
    assert "LoRA:" in printed and "trainable parameters" in printed and "step 4/4 | val loss" in printed
    assert (model_folder / "model.safetensors").read_bytes() == before               # the base is only read
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 16 and config["base_model_name_or_path"] == str(model_folder)
    checkpoint = out / "checkpoints" / "step-00000004"
    assert (checkpoint / "adapter_model.safetensors").is_file() and not (checkpoint / "model.safetensors").exists()

    ids = np.arange(12).reshape(1, 12) % 50
    merged = scratch.models.load(model_folder, adapter=out)
    attached = scratch.models.load(model_folder)
    load_adapter(attached, out)
    np.testing.assert_allclose(merged(ids), lora.logits(attached, ids), rtol=0, atol=1e-5)
    assert not np.allclose(merged(ids), scratch.models.load(model_folder)(ids), atol=1e-4)   # it learned something

    base = transformers.AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32)
    with torch.no_grad():
        theirs = peft.PeftModel.from_pretrained(base, out)(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(merged(ids), theirs, rtol=0, atol=1e-4)


def test_ctrl_c_exits_130_and_resume_finishes_like_an_uninterrupted_run(model_folder, corpus, tmp_path, capsys,
                                                                        monkeypatch):
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main(finetune_args(model_folder, corpus, whole, "--lora-dropout", "0.1")) == 0
    ctrl_c_in_step(monkeypatch, 3)
    capsys.readouterr()
    assert main(finetune_args(model_folder, corpus, split, "--lora-dropout", "0.1")) == 130
    err = capsys.readouterr().err
    assert "interrupted after step 2" in err and "--resume" in err and "Traceback" not in err
    assert not (split / "adapter_model.safetensors").exists()                      # only the checkpoint
    monkeypatch.undo()
    assert main(finetune_args(model_folder, corpus, split, "--resume")) == 0
    assert "resuming from" in capsys.readouterr().out
    name = "adapter_model.safetensors"
    assert (split / name).read_bytes() == (whole / name).read_bytes()
    losses = [json.loads((run / "checkpoints" / "step-00000004" / "trainer.json").read_text())["losses"]
              for run in (whole, split)]
    assert losses[0] == losses[1] and len(losses[0]) == 4


def test_bad_input_exits_2(model_folder, corpus, tmp_path, capsys):
    out = str(tmp_path / "adapter")
    assert main(finetune_args(model_folder, corpus, out, "--target-modules", "no_such_proj")) == 2
    assert "'no_such_proj' matches no projection" in capsys.readouterr().err
    assert main(["finetune", "--model", str(model_folder), "--data", *corpus, "--out", out, "--lora-r", "0"]) == 2
    assert "rank r must be a positive integer, got 0" in capsys.readouterr().err
    assert main(finetune_args(model_folder, ["missing.txt"], out)) == 2
    assert "corpus file not found: missing.txt" in capsys.readouterr().err
    assert main(finetune_args(model_folder, corpus, tmp_path / "fresh", "--resume")) == 2
    assert "no checkpoint" in capsys.readouterr().err
