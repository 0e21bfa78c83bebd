"""scratch.train.loop on tiny GPT-2 / Llama models: a run stopped by Ctrl-C (before or during an update) and resumed
gives the same losses, validation losses and weights, bit for bit, as one that never stopped (float32 and mixed
precision); a kill at any point of a checkpoint write leaves the previous checkpoint current and loadable; a
non-finite loss stops naming the step, while mixed precision skips overflowing steps; the lr follows warmup + cosine;
the progress line has its fields; saved weights load with scratch.models.load; a tiny model learns a pattern."""
from __future__ import annotations

import dataclasses
import math
import os
import signal

import numpy as np
import pytest

import scratch.models
from scratch import train
from scratch.models import GPT2Config, LlamaConfig
from scratch.train import loop
from scratch.train.data import write_tokens
from scratch.train.loop import NonFiniteLossError, Trainer, TrainSettings, latest_checkpoint, save_model

V = 64
CONFIG = GPT2Config(vocab_size=V, n_positions=32, n_embd=32, n_layer=2, n_head=4)
SETTINGS = TrainSettings(steps=8, batch_size=2, seq_len=16, grad_accum=2, lr=3e-3, min_lr=3e-4, warmup_steps=2,
                         eval_every=3, eval_batches=2, log_every=1, checkpoint_every=0, max_grad_norm=0.5)


@pytest.fixture(scope="module")
def token_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokens")
    rng = np.random.default_rng(0)
    pattern = np.tile(rng.integers(0, V, size=23), 60)          # a repeating sequence: something to learn
    noise = rng.integers(0, V, size=pattern.size)
    ids = np.where(rng.random(pattern.size) < 0.1, noise, pattern)
    return write_tokens([ids[:1200]], folder / "train", V), write_tokens([ids[1200:]], folder / "val", V)


def fresh_model(seed=0, config=CONFIG):
    return scratch.models.from_config(config, backend="numpy", seed=seed, dtype="float32")


def weights(model):
    return {name: np.array(array) for name, array in train.named_parameters(model).items()}


def interrupt_at(call: int):
    """loss_and_grads that raises KeyboardInterrupt (as Ctrl-C would) on its `call`-th use (1-based)."""
    calls = []

    def loss_and_grads(model, input_ids, targets, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return train.loss_and_grads(model, input_ids, targets, **kwargs)

    return loss_and_grads


@pytest.mark.parametrize("mixed_precision", [False, True], ids=["float32", "mixed-precision"])
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(token_files, tmp_path, mixed_precision):
    settings = TrainSettings(**{**SETTINGS.__dict__, "mixed_precision": mixed_precision})
    whole_model = fresh_model()
    whole = Trainer(whole_model, *token_files, settings, out_dir=tmp_path / "whole", log=None).run()
    assert sorted(whole.losses) == list(range(1, 9)) and sorted(whole.val_losses) == [3, 6, 8]

    # Ctrl-C in the middle of step 5 (its second micro-batch: call 10): step 5 is abandoned, step 4 saved
    logged = []
    first = Trainer(fresh_model(), *token_files, settings, out_dir=tmp_path / "run", log=logged.append,
                    loss_and_grads=interrupt_at(10)).run()
    assert first.interrupted and first.step == 4 and latest_checkpoint(tmp_path / "run").name == "step-00000004"
    assert "interrupted after step 4: checkpoint saved to" in logged[-1]

    model = fresh_model(seed=1)                                    # other weights: the checkpoint must restore them
    resumed = Trainer(model, *token_files, settings, out_dir=tmp_path / "run", log=None)
    assert resumed.resume() and resumed.step == 4
    second = resumed.run()
    assert second.losses == whole.losses                           # every step's loss, bit for bit
    assert second.val_losses == whole.val_losses
    assert second.skipped == whole.skipped
    final, expected = weights(model), weights(whole_model)
    for name in expected:
        np.testing.assert_array_equal(final[name], expected[name], err_msg=name)


def test_ctrl_c_during_the_update_finishes_the_step_first(token_files, tmp_path):
    whole = Trainer(fresh_model(), *token_files, SETTINGS, log=None).run()
    trainer = Trainer(fresh_model(), *token_files, SETTINGS, out_dir=tmp_path, log=None)
    real_step, updated = trainer.optimizer.step, []

    def step_with_ctrl_c(grads):
        if trainer.optimizer.step_count == 2:                      # the 3rd update: Ctrl-C arrives while it runs
            os.kill(os.getpid(), signal.SIGINT)
        real_step(grads)
        updated.append(trainer.optimizer.step_count)

    trainer.optimizer.step = step_with_ctrl_c
    result = trainer.run()
    assert result.interrupted and result.step == 3 and updated == [1, 2, 3]
    resumed = Trainer(fresh_model(seed=5), *token_files, SETTINGS, out_dir=tmp_path, log=None)
    resumed.resume()
    assert resumed.run().losses == whole.losses


class SimulatedKill(BaseException):
    """The process dying mid-write: nothing after it runs, no cleanup (not an Exception, not KeyboardInterrupt)."""


@pytest.mark.parametrize("where", ["weights", "optimizer", "state", "pointer"])
def test_a_kill_during_a_checkpoint_write_leaves_the_last_good_one(token_files, tmp_path, monkeypatch, where):
    settings = TrainSettings(**{**SETTINGS.__dict__, "checkpoint_every": 2, "steps": 6})
    whole = Trainer(fresh_model(), *token_files, settings, log=None).run()
    writes = {"count": 0}

    def kill_on_second(kind, real):
        def wrapped(*args, **kwargs):
            if kind == where:
                writes["count"] += 1
                if writes["count"] == 2:                           # the checkpoint of step 4
                    raise SimulatedKill
            return real(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(loop, "save_model", kill_on_second("weights", loop.save_model))
    monkeypatch.setattr(loop, "save_file", kill_on_second("optimizer", loop.save_file))
    real_atomic_write = loop.atomic_write

    def atomic_write(path, mode="w"):
        kind = "pointer" if path.name == loop.LATEST else "state"
        return kill_on_second(kind, real_atomic_write)(path, mode)

    monkeypatch.setattr(loop, "atomic_write", atomic_write)
    with pytest.raises(SimulatedKill):
        Trainer(fresh_model(), *token_files, settings, out_dir=tmp_path, log=None).run()
    monkeypatch.undo()

    current = latest_checkpoint(tmp_path)
    assert current.name == "step-00000002"
    assert scratch.models.load(current).config == CONFIG            # the model folder is whole
    resumed = Trainer(fresh_model(seed=3), *token_files, settings, out_dir=tmp_path, log=None)
    assert resumed.resume() and resumed.step == 2
    assert resumed.run().losses == whole.losses
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step-00000004", "step-00000006"]    # the partial write is gone, 2 kept


def test_a_non_finite_loss_stops_naming_the_step(token_files):
    calls = []

    def nan_from_step_3(model, input_ids, targets, **kwargs):
        calls.append(1)
        loss, grads = train.loss_and_grads(model, input_ids, targets, **kwargs)
        return (float("nan") if len(calls) >= 5 else loss), grads   # micro-batches 5, 6 are step 3's

    trainer = Trainer(fresh_model(), *token_files, SETTINGS, log=None, loss_and_grads=nan_from_step_3)
    before = weights(trainer.model)
    with pytest.raises(NonFiniteLossError, match="step 3: the training loss is nan"):
        trainer.run()
    assert trainer.step == 2 and sorted(trainer.result.losses) == [1, 2]
    assert any(not np.array_equal(before[n], a) for n, a in weights(trainer.model).items())   # 2 steps were taken


def test_non_finite_gradients_stop_before_the_update(token_files):
    def nan_gradient(model, input_ids, targets, **kwargs):
        loss, grads = train.loss_and_grads(model, input_ids, targets, **kwargs)
        grads[next(iter(grads))][0, 0] = np.nan
        return loss, grads

    trainer = Trainer(fresh_model(), *token_files, SETTINGS, log=None, loss_and_grads=nan_gradient)
    before = weights(trainer.model)
    with pytest.raises(NonFiniteLossError, match="step 1: the gradient norm is nan"):
        trainer.run()
    after = weights(trainer.model)
    assert trainer.step == 0 and all(np.array_equal(before[n], after[n]) for n in before)


def test_the_update_sees_gradients_clipped_to_max_grad_norm(token_files):
    # AdamW's first steps hardly depend on the gradient's scale (m / sqrt(v)), so a run's losses cannot show whether
    # clipping happened: look at what reaches the optimizer. Unclipped, these gradients have norms near 1.
    settings = dataclasses.replace(SETTINGS, steps=2, max_grad_norm=1e-3)
    trainer = Trainer(fresh_model(), *token_files, settings, log=None)
    seen, optimizer_step = [], trainer.optimizer.step

    def recording_step(grads):
        seen.append(math.sqrt(sum(float(np.sum(np.asarray(g, dtype=np.float64) ** 2)) for g in grads.values())))
        return optimizer_step(grads)

    trainer.optimizer.step = recording_step
    trainer.run()
    np.testing.assert_allclose(seen, [1e-3, 1e-3], rtol=1e-4)


def test_mixed_precision_skips_overflowing_steps_and_stops_when_they_persist(token_files):
    settings = TrainSettings(**{**SETTINGS.__dict__, "mixed_precision": True, "steps": 4, "eval_every": 0,
                                "max_skipped_steps": 2})
    calls = []

    def overflow(model, input_ids, targets, **kwargs):
        calls.append(1)
        loss, grads = train.loss_and_grads(model, input_ids, targets, **kwargs)
        if len(calls) in (3, 7, 9):                                # a micro-batch of steps 2, 4 and 5
            first = next(iter(grads))
            grads[first][...] = np.inf                              # a float16 gradient that overflowed
        return loss, grads

    lines = []
    trainer = Trainer(fresh_model(), *token_files, settings, log=lines.append, loss_and_grads=overflow)
    result = trainer.run()
    assert result.skipped == [2, 4] and sorted(result.losses) == [1, 2, 3, 4]
    assert "step 2/4 | skipped: the float16 gradients overflowed; loss scale now 32768" in lines
    assert trainer.amp.scaler.get_scale() == 2.0**14                # halved twice

    def always_overflow(model, input_ids, targets, **kwargs):
        loss, grads = train.loss_and_grads(model, input_ids, targets, **kwargs)
        grads[next(iter(grads))][...] = np.inf
        return loss, grads

    trainer = Trainer(fresh_model(), *token_files, settings, log=None, loss_and_grads=always_overflow)
    with pytest.raises(NonFiniteLossError, match="step 2: 2 mixed-precision steps in a row overflowed"):
        trainer.run()


def test_learning_rate_follows_warmup_and_cosine(token_files):
    trainer = Trainer(fresh_model(), *token_files, SETTINGS, log=None)
    seen = []
    real_step = trainer.optimizer.step
    trainer.optimizer.step = lambda grads: (seen.append(trainer.optimizer.lr), real_step(grads))
    trainer.run()
    s = SETTINGS
    assert seen == [train.warmup_cosine_lr(k, s.lr, s.steps, s.warmup_steps, s.min_lr) for k in range(s.steps)]
    assert seen[1] == s.lr and seen[-1] > s.min_lr


def test_progress_lines(token_files):
    lines = []
    Trainer(fresh_model(), *token_files, SETTINGS, log=lines.append).run()
    first = lines[0]
    for part in ("step 1/8", "loss ", "lr 1.50e-03", "tok/s", "ETA "):
        assert part in first, (part, first)
    assert "step 3/8 | val loss" in lines[lines.index(next(line for line in lines if line.startswith("step 3/8"))) + 1]


@pytest.mark.parametrize("config", [CONFIG, LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=48,
                                                        num_hidden_layers=2, num_attention_heads=4,
                                                        num_key_value_heads=2, max_position_embeddings=32)],
                         ids=["gpt2", "llama-gqa"])
def test_saved_weights_load_with_scratch_models(tmp_path, config):
    model = fresh_model(seed=7, config=config)
    save_model(model, tmp_path)
    loaded = scratch.models.load(tmp_path)
    ids = np.arange(10).reshape(1, 10) % V
    np.testing.assert_array_equal(np.asarray(loaded(ids)), np.asarray(model(ids)))


def test_a_tiny_model_learns_the_pattern(token_files):
    settings = TrainSettings(steps=40, batch_size=4, seq_len=16, lr=1e-2, min_lr=1e-3, warmup_steps=4,
                             eval_every=40, eval_batches=2, log_every=0)
    result = Trainer(fresh_model(), *token_files, settings, log=None).run()
    assert result.losses[1] > 4.0 and result.val_losses[40] < 2.5    # ln 64 = 4.16 at the start


def test_bad_settings_and_mismatched_resume_raise(token_files, tmp_path):
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainSettings(steps=5, warmup_steps=6)
    with pytest.raises(ValueError, match="seq_len 64 exceeds the model's context of 32"):
        Trainer(fresh_model(), *token_files, TrainSettings(seq_len=64))
    one_step = TrainSettings(**{**SETTINGS.__dict__, "steps": 1, "warmup_steps": 0})
    Trainer(fresh_model(), *token_files, one_step, out_dir=tmp_path, log=None).run()
    other = Trainer(fresh_model(), *token_files, TrainSettings(**{**one_step.__dict__, "lr": 1e-2}),
                    out_dir=tmp_path, log=None)
    with pytest.raises(ValueError, match=r"other settings \(lr differ\)"):
        other.resume()
