"""`scratch parity`: the report runs every component on two backends and in float32/float16 against float64, passes
on this machine, and fails (exit 1) when a backend disagrees or a dtype loses more than its tolerance; its columns
line up; bad arguments exit 2 with a one-line message."""
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
        return [parity.Check("broken", lambda be, dtype: np.full(3, 1.0 if be.name == "numpy" else 1.1,
                                                                 dtype=np.float32), 1e-5)]

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


def test_precision_rows_compare_float32_and_float16_with_float64_on_the_reference_backend():
    rows = [row for row in parity.run_parity(["numpy", "strict"]) if row.section == "precision"]
    by_dtype = {(row.component, row.backend): row for row in rows}
    for component in ("linear", "softmax", "rms_norm", "llama cached decode"):
        float32, float16 = by_dtype[component, "float32"], by_dtype[component, "float16"]
        assert float32.reference == float16.reference == "numpy float64"     # strict is NumPy underneath: not rerun
        assert 0 < float32.max_rel < float32.tolerance <= 1e-4                # rounding, not exactness
        assert float32.max_rel * 100 < float16.max_rel < float16.tolerance   # float16 loses ~3 more digits
    contrast = by_dtype["  rms_norm, float16 throughout", "float16"]               # RMSNorm with no float32 inside
    assert contrast.tolerance is None and contrast.passed                     # shown, not judged
    assert contrast.max_rel > 0.5 > by_dtype["rms_norm, outlier channel", "float16"].max_rel * 100


def test_a_dtype_that_loses_too_much_fails(monkeypatch, capsys):
    def checks(rng):   # float16 far off (a float16 bug), float32 fine
        return [parity.Check("lossy", lambda be, dtype: np.full(3, 1.5 if dtype == "float16" else 1.0), 0.0,
                             float32=1e-6, float16=1e-2)]

    monkeypatch.setattr(parity, "_layer_checks", checks)
    monkeypatch.setattr(parity, "_model_checks", lambda rng, folder: [])
    assert cli.main(["parity"]) == 1
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("lossy")]
    assert [line.split()[-1] for line in lines] == ["PASS", "PASS", "FAIL"]   # strict; float32; float16


def test_the_table_columns_line_up(capsys):
    assert cli.main(["parity"]) == 0
    out = capsys.readouterr().out
    assert "Portability" in out and "Precision" in out and "rope interleaved, llama3 scaling" in out
    for table in out.split("\n\n")[:-1]:                      # the two sections; the summary line last
        head, rule, *body = table.splitlines()[1:]
        assert set(rule) == {"-"} and body
        for line in body:
            if line.startswith("on "):                         # a backend heading when there are several
                continue
            assert len(line.rsplit("  ", 1)[0]) == len(head.rsplit("  ", 1)[0]), line
