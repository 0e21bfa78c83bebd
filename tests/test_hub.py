"""Model ids ("owner/name") through the Hugging Face hub cache, offline.

The cache is built in tmp_path the way huggingface_hub lays it out -- HF_HOME/hub/models--owner--name/refs/main
holding a commit hash, snapshots/<hash>/ holding the files -- with HF_HOME pointed there and HF_HUB_OFFLINE=1
(monkeypatched), so nothing touches the network. A tiny random Llama saved by transformers and a small tokenizer
with a chat template are the cached files.
"""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

import scratch.models
from scratch.cli import main
from scratch.formats.hub import MISSING_HUB, hub_cache_dir, looks_like_model_id, resolve_model_id
from scratch.tokenizer import BPETokenizer, load_tokenizer
from scratch.tokenizer.hf import to_hf

pytest.importorskip("huggingface_hub")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

MODEL_ID = "tiny-org/Tiny-Chat-0.1"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def _snapshot(folder, seed: int = 0) -> None:
    """A tiny Llama (vocabulary 300) and its tokenizer + chat template in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = BPETokenizer.train("hello there, the quick brown fox. " * 8, vocab_size=300, pattern="gpt2",
                                   special_tokens=["<|im_start|>", "<|im_end|>"])
    to_hf(tokenizer, folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    (folder / "chat_template.jinja").write_text(CHATML)
    torch.manual_seed(seed)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=300, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=128, eos_token_id=299, bos_token_id=None,
        pad_token_id=None)).save_pretrained(folder)


@pytest.fixture(scope="module")
def snapshot_source(tmp_path_factory):
    source = tmp_path_factory.mktemp("snapshot")
    _snapshot(source)
    return source


@pytest.fixture
def hub(tmp_path, monkeypatch, snapshot_source):
    """HF_HOME with MODEL_ID cached, offline."""
    repo = tmp_path / "hf" / "hub" / f"models--{MODEL_ID.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for path in snapshot_source.iterdir():
        (snapshot / path.name).write_bytes(path.read_bytes())
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    return snapshot


def test_model_and_tokenizer_load_from_the_cache_offline(hub):
    model = scratch.models.load(MODEL_ID)
    reference = scratch.models.load(hub)
    ids = np.array([[1, 5, 9, 200]])
    np.testing.assert_array_equal(model(ids), reference(ids))
    tokenizer = load_tokenizer(MODEL_ID)
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == \
        "<|im_start|>user\nhi<|im_end|>\n"
    assert resolve_model_id(MODEL_ID) == hub


def test_scratch_chat_takes_a_model_id(hub, capsys):
    assert main(["chat", "--model", MODEL_ID, "--max-new-tokens", "3", "--quiet", "--prompt", "hello"]) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n") and len(out) > 1


def test_offline_without_the_files_is_one_line(hub, capsys):
    with pytest.raises(FileNotFoundError) as error:
        scratch.models.load("tiny-org/not-cached")
    message = str(error.value)
    assert "\n" not in message and "HF_HUB_OFFLINE" in message and "tiny-org/not-cached" in message
    assert main(["chat", "--model", "tiny-org/not-cached", "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not in the hub cache" in err


def test_a_snapshot_without_the_needed_files_says_so(hub):
    (hub / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="has none of config.json"):
        scratch.models.load(MODEL_ID)


def test_a_local_path_wins_over_an_id(hub, tmp_path):
    _snapshot(tmp_path / MODEL_ID, seed=1)      # ./tiny-org/Tiny-Chat-0.1 exists in the working directory
    ids = np.array([[1, 2, 3]])
    local = scratch.models.load(MODEL_ID)(ids)
    cached = scratch.models.load(hub)(ids)
    np.testing.assert_array_equal(local, scratch.models.load(tmp_path / MODEL_ID)(ids))
    assert not np.array_equal(local, cached)


def test_cache_location_follows_the_environment(monkeypatch, tmp_path):
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert hub_cache_dir() == tmp_path / "cache"


@pytest.mark.parametrize("name, is_id", [
    ("HuggingFaceTB/SmolLM2-135M-Instruct", True), ("meta-llama/Llama-3.2-1B", True), ("gpt2", False),
    ("./models/x", False), ("/abs/path", False), ("a/b/c", False), ("org/na--me", False), ("org/-x", False),
    ("org/model.gguf", True), ("C:\\models\\x", False), ("", False),
])
def test_what_looks_like_a_model_id(name, is_id):
    assert looks_like_model_id(name) == is_id


def test_without_huggingface_hub_the_message_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ImportError, match=r"scratch-llm\[hub\]") as error:
        scratch.models.load(MODEL_ID)
    assert MISSING_HUB in str(error.value)
    with pytest.raises(FileNotFoundError, match="not a Hugging Face model id"):
        scratch.models.load("no_such_folder")
