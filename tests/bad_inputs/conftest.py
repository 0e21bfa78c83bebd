"""Fixtures of the bad-input catalogue: tiny model folders saved by transformers, a tiny tokenizer, and `finishes`,
which runs a call that must not hang (a FIFO opened for reading blocks until a writer comes) with a time limit."""
from __future__ import annotations

import shutil
import threading

import pytest
import torch
import transformers

from scratch.tokenizer import BPETokenizer

V = 300  # the vocabulary of the models and of the tokenizer


@pytest.fixture(scope="session")
def files(tmp_path_factory):
    """{"gpt2": folder, "llama": folder, "tokenizer": our JSON}: small enough to load in milliseconds."""
    root = tmp_path_factory.mktemp("bad_inputs")
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=V, n_positions=64, n_embd=16, n_layer=1, n_head=2, bos_token_id=None, eos_token_id=None,
    )).save_pretrained(root / "gpt2")
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64,
    )).save_pretrained(root / "llama")
    text = "the quick brown fox jumps over the lazy dog. " * 4 + "pack my box with five dozen liquor jugs! " * 4
    BPETokenizer.train(text, vocab_size=V, pattern="gpt2").save(root / "tok.json")
    return {"gpt2": root / "gpt2", "llama": root / "llama", "tokenizer": root / "tok.json"}


@pytest.fixture
def copy_of(files, tmp_path):
    """copy_of("gpt2") -> a fresh copy of that model folder under tmp_path, to spoil."""
    def copy(name: str):
        return shutil.copytree(files[name], tmp_path / f"{name}-copy")
    return copy


def finishes(call, seconds: float = 20.0):
    """call() in a thread; its exception (or None) once it returns; fails if it is still running after `seconds`."""
    outcome: dict = {}

    def run():
        try:
            call()
        except BaseException as error:  # handed to the test
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s (blocked on a FIFO or reading without end?)"
    return outcome.get("error")
