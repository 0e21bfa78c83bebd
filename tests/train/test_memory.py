"""scratch.train.memory against hand-computed numbers: model states of full fine-tuning and LoRA (Llama 2 7B: 16 B per
parameter; PEFT's famous trainable counts), ZeRO stages dividing them over N GPUs, Korthikanti et al.'s activation
formula, and our own stored-activation formula checked against the bytes the training forward's Tape really holds
(GPT-2 and Llama, float32 and float16, with and without checkpointing)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

import scratch.models
from scratch.models import GPT2Config, LlamaConfig
from scratch.models.presets import get_preset, parameter_count
from scratch.train.memory import (
    deepspeed_estimate,
    korthikanti_bytes_per_token,
    lora_parameters,
    measured_tape_bytes,
    model_states,
    stored_bytes_per_token,
    training_report,
    tricks_table,
    zero_per_gpu,
)

FINETUNING_PAGE = Path(__file__).resolve().parents[2] / "docs" / "finetuning.md"

LLAMA2_7B = 6_738_415_616                     # transformers' num_parameters() of Llama-2-7b-hf
SMALL = GPT2Config(vocab_size=100, n_positions=16, n_embd=8, n_layer=2, n_head=2)
# by hand: embeddings 100*8 + 16*8; per layer ln_1 16, c_attn 8*24 + 24, c_proj 64 + 8, ln_2 16, c_fc 8*32 + 32,
# mlp c_proj 32*8 + 8; final LayerNorm 16
SMALL_PARAMETERS = 100 * 8 + 16 * 8 + 2 * (16 + 216 + 72 + 16 + 288 + 264) + 16


def test_small_config_model_states_by_hand():
    assert parameter_count(SMALL) == SMALL_PARAMETERS == 2688
    mixed = model_states(SMALL, "mixed")
    assert (mixed.weights, mixed.gradients, mixed.master, mixed.moments) == (2 * 2688, 2 * 2688, 4 * 2688, 8 * 2688)
    fp32 = model_states(SMALL, "fp32")
    assert (fp32.weights, fp32.gradients, fp32.master, fp32.moments) == (4 * 2688, 4 * 2688, 0, 8 * 2688)
    assert mixed.total == fp32.total == 16 * 2688 and mixed.optimizer == 12 * 2688
    lora = model_states(SMALL, "mixed", lora_r=2)                   # c_attn (8 -> 24): 2 * (8 + 24) per layer
    assert lora.trainable == 2 * 2 * 32 == 128 and lora.parameters == 2688 + 128
    assert (lora.weights, lora.gradients, lora.master, lora.moments) == (2 * 2816, 2 * 128, 4 * 128, 8 * 128)


def test_llama2_7b_full_fine_tuning_is_16_bytes_per_parameter():
    config = get_preset("llama-2-7b")
    assert parameter_count(config) == LLAMA2_7B
    for precision in ("mixed", "fp32"):
        assert model_states(config, precision).total == 16 * LLAMA2_7B == 107_814_649_856


def test_lora_trainable_counts_are_pefts():
    llama = get_preset("llama-2-7b")
    assert lora_parameters(llama, 8) == 4_194_304                   # q_proj, v_proj: PEFT's print_trainable_parameters
    every_linear = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert lora_parameters(llama, 16, every_linear) == 32 * 16 * (4 * 8192 + 3 * (4096 + 11008)) == 39_976_960
    gpt2 = get_preset("gpt2")
    assert lora_parameters(gpt2, 8) == 12 * 8 * (768 + 3 * 768) == 294_912
    assert lora_parameters(gpt2, 4, ("c_proj",)) == 12 * 4 * ((768 + 768) + (3072 + 768))   # both c_proj modules
    gqa = get_preset("llama-3.1-8b")                                 # v_proj is 4096 -> 1024 (8 kv heads)
    assert lora_parameters(gqa, 8) == 32 * 8 * ((4096 + 4096) + (4096 + 1024))
    with pytest.raises(ValueError, match="'qkv' matches no module of LlamaConfig"):
        lora_parameters(llama, 8, ("qkv",))
    with pytest.raises(ValueError, match="rank must be a positive int"):
        lora_parameters(llama, 0)


def test_zero_stages_divide_model_states():
    states = model_states(get_preset("llama-2-7b"), "mixed")
    P = LLAMA2_7B
    expected = {0: 16 * P, 1: 2 * P + 2 * P + 12 * P // 8, 2: 2 * P + (2 * P + 12 * P) // 8, 3: 16 * P // 8}
    for stage, total in expected.items():
        assert zero_per_gpu(states, 8, stage)["total"] == total, stage
    assert zero_per_gpu(states, 8, 3)["total"] == 2 * P                 # 16 B/param over 8 GPUs: 2 B each
    assert zero_per_gpu(states, 1, 3)["total"] == 16 * P                 # one GPU: nothing to divide
    assert zero_per_gpu(states, 3, 1)["optimizer"] == -(-12 * P // 3)    # shards round up
    assert deepspeed_estimate(states, 8, 2) == 4 * P + 16 * P // 8       # DeepSpeed's estimator adds buffers
    for bad in ({"gpus": 0, "stage": 1}, {"gpus": 2, "stage": 4}):
        with pytest.raises(ValueError):
            zero_per_gpu(states, **bad)


def test_korthikanti_formula_by_hand():
    config = get_preset("llama-2-7b")                                    # h = 4096, a = 32, L = 32
    assert korthikanti_bytes_per_token(config, 2048) == 32 * (34 * 4096 + 5 * 32 * 2048) == 14_942_208
    assert korthikanti_bytes_per_token(config, 2048, checkpointing=True) == 2 * 4096 * 32 + 34 * 4096 + 5 * 32 * 2048
    assert korthikanti_bytes_per_token(SMALL, 16) == 2 * (34 * 8 + 5 * 2 * 16)


@pytest.mark.parametrize("config", [
    GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4),
    LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=80, num_hidden_layers=3, num_attention_heads=8,
                num_key_value_heads=2, max_position_embeddings=32),
], ids=["gpt2", "llama-gqa"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["keep", "checkpointing"])
def test_our_formula_is_what_the_tape_holds(config, dtype, checkpointing):
    B, T = 2, 16
    model = scratch.models.from_config(config, dtype=dtype)
    measured = measured_tape_bytes(model, B, T, checkpointing)
    formula = stored_bytes_per_token(config, T, dtype, checkpointing)
    one_layer = stored_bytes_per_token(config, T, dtype)["layers"] // len(model.layers)
    b = 2 if dtype == "float16" else 4
    width = model.config.n_embd if isinstance(config, GPT2Config) else model.config.hidden_size
    if checkpointing:      # the tape keeps each block's input; one block's cache is rebuilt at a time
        assert measured["layers"] == B * T * b * width * len(model.layers)
        assert formula["layers"] == b * width * len(model.layers) + one_layer
    else:
        assert measured["layers"] == B * T * formula["layers"]
    assert measured["head"] + B * T * 4 * config.vocab_size == B * T * formula["head"]   # + float32 probabilities


def test_report_prints_the_numbers():
    text = training_report("llama-2-7b", get_preset("llama-2-7b"), gpus=8, zero=3)
    assert "100.41 GiB" in text and "16.00 B per parameter" in text and "ZeRO-3, 8 GPUs" in text
    assert "12.55 GiB/GPU" in text                                        # 16 B * 6.74e9 / 8
    lora = training_report("llama-2-7b", get_preset("llama-2-7b"), lora_r=8, checkpointing=True)
    assert "trainable 4,194,304 (0.06%)" in lora and "2h x 32 + one layer's 34h + 5as" in lora


def test_scratch_info_training_command(capsys):
    from scratch.cli import main

    assert main(["info", "llama-2-7b", "--training", "--lora", "8", "--checkpointing", "--gpus", "8",
                 "--zero", "3"]) == 0
    printed = capsys.readouterr().out
    assert printed.strip() == training_report("llama-2-7b", get_preset("llama-2-7b"), lora_r=8, checkpointing=True,
                                              gpus=8, zero=3)
    assert main(["info", "gpt2", "--lora", "8"]) == 2
    assert "add --training" in capsys.readouterr().err
    assert main(["info", "--training"]) == 2


def test_docs_page_shows_what_the_commands_print(capsys):
    """docs/finetuning.md pastes `scratch info ... --training` outputs and a tricks_table: they must still hold."""
    from scratch.cli import main

    page = FINETUNING_PAGE.read_text(encoding="utf-8")
    shown = re.findall(r"```text\n\$ (scratch info [^\n]+)\n(.*?)```", page, re.DOTALL)
    assert len(shown) >= 3
    for command, output in shown:
        assert main(shlex.split(command)[1:]) == 0
        assert capsys.readouterr().out == output, command
    table = re.search(r"<!-- tricks_table: (\S+) (\d+) -->\n(.*?)\n\n", page, re.DOTALL)
    assert table.group(3) == tricks_table(get_preset(table.group(1)), int(table.group(2)))
