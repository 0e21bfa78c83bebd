"""Bad-input catalogue, the command line: every case exits with status 2 and ONE line on stderr that names the
culprit -- never a traceback -- and Ctrl-C exits with status 130 quietly, in-process and in a real process."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import scratch.nn.kv_cache as kv_cache
import scratch.tokenizer.cli
from scratch.cli import main
from tests.conftest import RESTORE_SIGINT

REPO = Path(__file__).resolve().parents[2]


def spoil_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def shard_index(folder, shard):
    (folder / "model.safetensors").rename(folder / "part.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"lm_head.weight": shard}}))
    return folder


def with_config_bytes(folder, data: bytes):
    (folder / "config.json").write_bytes(data)
    return folder


def fifo(tmp):
    os.mkfifo(tmp / "pipe")
    return tmp / "pipe"


def hf_tokenizer_with_string_id(tmp, files):
    from scratch.tokenizer import load_tokenizer
    from scratch.tokenizer.hf import to_hf_json

    data = to_hf_json(load_tokenizer(files["tokenizer"]))
    data["model"]["vocab"]["a"] = "97"
    (tmp / "tokenizer.json").write_text(json.dumps(data))
    return tmp / "tokenizer.json"


def little_memory(monkeypatch):
    monkeypatch.setattr(kv_cache, "available_memory", lambda xp: 1000)


def generate(model, tokenizer, *options):
    return ["generate", "--model", str(model), "--tokenizer", str(tokenizer), *options, "the quick"]


# name -> (argv from (tmp_path, files, copy_of, monkeypatch), text the one stderr line must contain)
CASES = {
    "config.json nested 100k deep": (lambda t, f, c, m: generate(with_config_bytes(c("gpt2"), b"[" * 100_000),
                                                                  f["tokenizer"]), "config.json: JSON nested too deeply"),
    "config.json not UTF-8": (lambda t, f, c, m: generate(with_config_bytes(c("gpt2"), b'{"a": "\xe9"}'),
                                                          f["tokenizer"]), "config.json: not UTF-8 text (byte 0xe9"),
    "rope_parameters of the wrong type": (lambda t, f, c, m: generate(spoil_config(c("llama"), rope_parameters="x"),
                                                                      f["tokenizer"]),
                                          "LlamaConfig.rope_parameters must be a JSON object"),
    "architectures disagree with model_type": (lambda t, f, c, m: generate(spoil_config(
        c("llama"), architectures=["GPT2LMHeadModel"]), f["tokenizer"]),
        "architectures names 'GPT2LMHeadModel' but model_type is 'llama'"),
    "model_type a list": (lambda t, f, c, m: generate(spoil_config(c("gpt2"), model_type=["gpt2"]), f["tokenizer"]),
                          "unsupported model_type ['gpt2']"),
    "index value a number": (lambda t, f, c, m: generate(shard_index(c("gpt2"), 5), f["tokenizer"]),
                             "tensor 'lm_head.weight' is mapped to 5, which is not a plain file name"),
    "index value outside the folder": (lambda t, f, c, m: generate(shard_index(c("gpt2"), "../part.safetensors"),
                                                                   f["tokenizer"]),
                                       "mapped to '../part.safetensors', which is not a plain file name"),
    "vocabulary id a string": (lambda t, f, c, m: generate(f["gpt2"], hf_tokenizer_with_string_id(t, f)),
                               "vocabulary token 'a' has id '97'"),
    "a cache larger than memory": (lambda t, f, c, m: (little_memory(m), generate(
        f["gpt2"], f["tokenizer"], "--max-new-tokens", "40"))[1], "max_new_tokens=40: the KV cache"),
    "a temperature that overflows": (lambda t, f, c, m: generate(f["gpt2"], f["tokenizer"], "--strategy", "sample",
                                                                 "--temperature", "1e-45"),
                                     "sampling: row 0 of the next-token probabilities has nothing to draw from"),
    "--model a file": (lambda t, f, c, m: generate(f["tokenizer"], f["tokenizer"]),
                       "tok.json is neither a model folder (config.json + safetensors) nor a GGUF file"),
    "--model missing": (lambda t, f, c, m: generate(t / "nope", f["tokenizer"]), "nope does not exist"),
    "--tokenizer /dev/zero": (lambda t, f, c, m: generate(f["gpt2"], "/dev/zero"),
                              "/dev/zero: is a character device, not a regular tokenizer file"),
    "--tokenizer a FIFO": (lambda t, f, c, m: ["tokenizer", "encode", "--tokenizer", str(fifo(t)), "x"],
                           "pipe: is a FIFO (named pipe), not a regular tokenizer file"),
    "--dtype not a float": (lambda t, f, c, m: generate(f["gpt2"], f["tokenizer"], "--dtype", "int8"),
                            "a model runs in a floating dtype (float16, float32, float64), got 'int8'"),
    "--backend unknown": (lambda t, f, c, m: generate(f["gpt2"], f["tokenizer"], "--backend", "tpu"),
                          "unknown backend 'tpu'"),
    "--top-p above 1": (lambda t, f, c, m: generate(f["gpt2"], f["tokenizer"], "--strategy", "sample", "--top-p", "2"),
                        "top_p must be in (0, 1], got 2.0"),
    "--num-beams 0": (lambda t, f, c, m: generate(f["gpt2"], f["tokenizer"], "--strategy", "beam", "--num-beams", "0"),
                      "num_beams must be an integer >= 1, got 0"),
    "contrastive with --top-k 1": (lambda t, f, c, m: generate(f["gpt2"], f["tokenizer"], "--strategy", "contrastive",
                                                               "--top-k", "1"),
                                   "--strategy contrastive needs --penalty-alpha > 0 and --top-k >= 2, got 0.6 and 1"),
    "past the context": (lambda t, f, c, m: generate(f["gpt2"], f["tokenizer"], "--max-new-tokens", "80"),
                         "exceed the model's context of 64"),
    "train --out in a missing folder": (lambda t, f, c, m: ["tokenizer", "train", "--corpus", str(f["tokenizer"]),
                                                            "--vocab-size", "300", "--out", str(t / "no" / "x.json")],
                                        "no/x.json: the folder "),
    "train --out a folder": (lambda t, f, c, m: ["tokenizer", "train", "--corpus", str(f["tokenizer"]), "--quiet",
                                                 "--vocab-size", "300", "--out", str(t)], ": it is a folder"),
    "decode an id past the vocabulary": (lambda t, f, c, m: ["tokenizer", "decode", "--tokenizer", str(f["tokenizer"]),
                                                             str(2 ** 70)], f"token id {2 ** 70} is not in the "
                                                                             f"vocabulary"),
    "decode a word": (lambda t, f, c, m: ["tokenizer", "decode", "--tokenizer", str(f["tokenizer"]), "seven"],
                      "token ids must be integers, got 'seven'"),
}


@pytest.mark.parametrize("case", CASES)
def test_one_line_and_status_2(case, tmp_path, files, copy_of, monkeypatch, capsys):
    build, expected = CASES[case]
    status = main(build(tmp_path, files, copy_of, monkeypatch))
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert status == 2 and len(lines) == 1, f"{case}: status {status}, stderr {captured.err!r}"
    assert re.match(r"scratch [a-z-]+: error: ", lines[0]) and expected in lines[0], f"{case}: {lines[0]}"


def test_ctrl_c_in_process_exits_130_quietly(files, monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(scratch.tokenizer.cli, "_cmd_encode", interrupted)
    assert main(["tokenizer", "encode", "--tokenizer", str(files["tokenizer"]), "x"]) == 130
    captured = capsys.readouterr()
    assert captured.err.strip() == "" and "Traceback" not in captured.err


def _scratch(*argv, **popen):
    env = dict(os.environ, PYTHONPATH=str(REPO), OPENBLAS_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "scratch", *argv], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            preexec_fn=RESTORE_SIGINT, **popen)


def test_a_real_process_prints_one_line_not_a_traceback(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    process = _scratch("tokenizer", "encode", "--tokenizer", str(tmp_path / "pipe"), "x")
    out, err = process.communicate(timeout=60)
    assert process.returncode == 2 and out == b""
    assert err.decode().splitlines() == [f"scratch tokenizer: error: {tmp_path / 'pipe'}: is a FIFO (named pipe), "
                                         f"not a regular tokenizer file"]


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name == "nt", reason="POSIX signals")
def test_ctrl_c_in_a_real_process_exits_130_quietly(tmp_path):
    """SIGINT while `scratch generate` streams tokens (a model with a long context, a long budget)."""
    import torch
    import transformers

    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=300, n_positions=4096, n_embd=16, n_layer=1, n_head=2, bos_token_id=None, eos_token_id=None,
    )).save_pretrained(tmp_path / "long")
    from scratch.tokenizer import BPETokenizer

    BPETokenizer.train("the quick brown fox " * 10, vocab_size=300, pattern="gpt2").save(tmp_path / "tok.json")
    process = _scratch("generate", "--model", str(tmp_path / "long"), "--tokenizer", str(tmp_path / "tok.json"),
                       "--max-new-tokens", "4000", "the quick")
    try:
        assert process.stdout.read(1), "no token streamed"           # it is generating: inside the command now
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130
    assert "Traceback" not in err.decode() and err.decode().strip() == ""

