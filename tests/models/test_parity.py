"""`scratch parity`: the report runs every component on two backends, passes on this machine, and fails (exit 1)
when a backend disagrees; bad arguments exit 2 with a one-line message."""
from __future__ import annotations

import numpy as np
import torch
import transformers

from scratch import cli
from scratch.models import parity


def test_every_component_passes_on_the_default_backends():
    rows = parity.run_parity()
    names = {row.component for row in rows}
    for expected in ("linear", "layer_norm", "rms_norm", "gelu_tanh", "softmax", "mlp (swiglu)",
                     "rope interleaved, llama3 scaling", "attention left-padded", "gpt2 cached decode", "llama logits"):
        assert expected in names
    failed = [row for row in rows if not row.passed]
    assert not failed, parity.format_table(failed, "numpy")


def test_cli_prints_the_table_and_exits_0(capsys, tmp_path):
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=40, n_positions=16, n_embd=16, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0,
    )).save_pretrained(tmp_path)
    assert cli.main(["parity", "--backends", "numpy", "strict", "--model", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "max abs err" in out and "PASS" in out and "FAIL" not in out
    assert f"{tmp_path.name} output" in out


def test_a_disagreeing_backend_fails_with_exit_1(monkeypatch, capsys):
    def checks(rng):   # an "implementation" whose output depends on the backend
        return [("broken", 1e-5, lambda be: np.full(3, 1.0 if be.name == "numpy" else 1.1, dtype=np.float32))]

    monkeypatch.setattr(parity, "_layer_checks", checks)
    assert cli.main(["parity", "--backends", "numpy", "strict"]) == 1
    out = capsys.readouterr().out
    assert "broken" in out and "FAIL" in out


def test_bad_arguments_exit_2(capsys, tmp_path):
    assert cli.main(["parity", "--backends", "numpy"]) == 2
    assert "at least two backends" in capsys.readouterr().err
    assert cli.main(["parity", "--backends", "numpy", "nosuch"]) == 2
    assert cli.main(["parity", "--model", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
