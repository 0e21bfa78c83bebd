"""The training loop: steps of AdamW on random batches, with the warmup + cosine learning rate, gradient accumulation,
clipping, optional mixed precision, periodic validation, a progress line, atomic checkpoints and exact resume.

One step (nanoGPT's and llm.c's loop, written out):
    1. lr = warmup_cosine_lr(step)                          5. clip the gradients' global norm
    2. for each micro-batch: draw (B, T) ids, loss + grads  6. AdamW step (mixed precision: on the float32 master,
    3. average the micro-batches' gradients                    skipped when the scaled gradients overflowed)
    4. a non-finite loss stops the run, naming the step     7. every few steps: log, validate, checkpoint
A checkpoint holds everything the next step reads -- weights, AdamW's moments and step count, the data generator's
state, the loss scale -- so a run stopped after step k and resumed computes the same losses, bit for bit, as one
that never stopped. Each checkpoint is written into a new folder and then made current by rewriting one small
pointer file atomically: a kill at any moment leaves the previous checkpoint whole. Ctrl-C saves one and returns.
Not here: data-parallel training, learning-rate finders, early stopping, schedules other than warmup + cosine.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np

import backends
from scratch.atomic import atomic_write
from scratch.models.config import save_config
from scratch.models.safetensors import load_file, save_file, save_folder
from scratch.train import model_grads
from scratch.train.amp import GradScaler, MixedPrecision
from scratch.train.data import TokenFile
from scratch.train.layers import cross_entropy_forward
from scratch.train.optim import AdamW, GradientAccumulator, clip_grad_norm, warmup_cosine_lr

__all__ = ["TrainSettings", "Trainer", "TrainResult", "NonFiniteLossError", "CHECKPOINT_FORMAT", "latest_checkpoint",
           "save_model"]

CHECKPOINT_FORMAT, CHECKPOINT_VERSION = "scratch-checkpoint", 1
LATEST = "latest"                 # the pointer file in the checkpoints folder: the name of the current checkpoint
PARTIAL = ".partial"              # suffix of a checkpoint folder still being written (never read)


class NonFiniteLossError(ArithmeticError):
    """The loss became inf or NaN: training stops; the message names the step."""


@dataclass(frozen=True)
class TrainSettings:
    """The hyperparameters of a run (saved in every checkpoint; a resume continues with the saved ones)."""

    steps: int = 100                  # optimizer steps in the whole run
    batch_size: int = 8               # B sequences per micro-batch
    seq_len: int = 64                 # T tokens per sequence
    grad_accum: int = 1               # micro-batches per step: B * T * grad_accum tokens per step
    lr: float = 1e-3                  # peak learning rate, reached at the end of the warmup
    min_lr: float = 1e-4              # the cosine's floor, reached at `steps`
    warmup_steps: int = 10
    weight_decay: float = 0.1         # decoupled (AdamW); matrices only, not norms, biases or embeddings
    beta1: float = 0.9
    beta2: float = 0.95               # GPT-3's and nanoGPT's choice for LM training (torch's default is 0.999)
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0  # global-norm clipping; None turns it off
    eval_every: int = 50              # validation loss every that many steps (0: never), and after the last
    eval_batches: int = 4             # micro-batches per validation (the same ones every time)
    log_every: int = 10               # a progress line every that many steps, and after the first and last
    checkpoint_every: int = 0         # a checkpoint every that many steps (0: only at the end or on Ctrl-C)
    keep_checkpoints: int = 2         # older checkpoints are deleted once a newer one is current
    seed: int = 0                     # the batch generator's seed (validation uses seed + 1)
    mixed_precision: bool = False     # float16 compute copy, float32 master weights, dynamic loss scaling
    checkpointing: bool = False       # recompute each block's activations in the backward (less memory)
    max_skipped_steps: int = 25       # mixed precision: that many overflowing steps IN A ROW stop the run

    def __post_init__(self):
        for name in ("steps", "batch_size", "seq_len", "grad_accum", "eval_batches", "keep_checkpoints",
                     "max_skipped_steps"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"TrainSettings.{name} must be an int >= 1, got {value!r}")
        for name in ("warmup_steps", "eval_every", "log_every", "checkpoint_every", "seed"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 0):
                raise ValueError(f"TrainSettings.{name} must be an int >= 0, got {value!r}")
        if self.warmup_steps > self.steps:
            raise ValueError(f"TrainSettings.warmup_steps ({self.warmup_steps}) exceeds steps ({self.steps})")
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr):
            raise ValueError(f"TrainSettings: need lr > 0 and 0 <= min_lr <= lr, got {self.lr} and {self.min_lr}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"TrainSettings.max_grad_norm must be > 0 or None, got {self.max_grad_norm}")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len * self.grad_accum

    @classmethod
    def from_dict(cls, d: dict) -> TrainSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training settings {unknown}; known: {sorted(known)}")
        return cls(**d)


@dataclass
class TrainResult:
    """What a run did: the mean training loss of every step taken (1-based step -> loss, the resumed part of a run
    included), validation losses by step, the last step, and whether Ctrl-C stopped it."""

    losses: dict[int, float] = field(default_factory=dict)
    val_losses: dict[int, float] = field(default_factory=dict)
    skipped: list[int] = field(default_factory=list)      # mixed precision: steps the scaler skipped
    step: int = 0
    interrupted: bool = False
    checkpoint: Path | None = None                        # the last checkpoint written


# --- the model's parameters on disk --------------------------------------------------------------------------------

def _host(array) -> np.ndarray:
    return np.asarray(backends.of(array).to_numpy(array))


def save_model(model, folder, parameters: Callable | None = None) -> Path:
    """Write a model folder that scratch.models.load reads: config.json + model.safetensors (Hugging Face names,
    the model's dtype). `parameters` defaults to model_grads.named_parameters."""
    parameters = parameters or model_grads.named_parameters
    folder = Path(folder)
    save_folder({name: _host(array) for name, array in parameters(model).items()}, folder)
    save_config(model.config, folder)
    return folder


# --- Ctrl-C ----------------------------------------------------------------------------------------------------------

@contextmanager
def _sigint_deferred():
    """Hold back Ctrl-C while the model's arrays are being updated in place: an interrupt in the middle would leave
    half the parameters stepped. A Ctrl-C that arrives inside is raised as KeyboardInterrupt on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield                                        # signals reach the main thread only: nothing to defer here
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


# --- the trainer -----------------------------------------------------------------------------------------------------

class Trainer:
    """Trains `model` (a GPT-2 or Llama, float32 -- or float64 for exactness tests) on token files.

        trainer = Trainer(model, train_file, val_file, TrainSettings(steps=200), out_dir="run")
        trainer.resume()          # optional: continue from run/checkpoints/latest if there is one
        result = trainer.run()    # TrainResult; Ctrl-C saves a checkpoint and returns with interrupted=True

    `parameters(model)` (all weights, for saving) and `loss_and_grads(model, ids, targets, checkpointing=,
    loss_scale=)` default to scratch.train's; the optimizer steps `trainable(model)` (scratch.train's
    trainable_parameters: every weight, or only LoRA's adapters once they are attached). `log` receives each
    progress line.
    """

    def __init__(self, model, train_data: TokenFile, val_data: TokenFile | None = None,
                 settings: TrainSettings | None = None, out_dir=None, log: Callable[[str], None] | None = print,
                 parameters: Callable | None = None, trainable: Callable | None = None,
                 loss_and_grads: Callable | None = None):
        self.model = model
        self.train_data, self.val_data = train_data, val_data
        self.settings = settings or TrainSettings()
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.log = log or (lambda line: None)
        self.parameters = parameters or model_grads.named_parameters
        self.trainable = trainable or model_grads.trainable_parameters
        self._loss_and_grads = loss_and_grads or model_grads.loss_and_grads
        s = self.settings
        vocab = getattr(model, "n_vocab", None)
        for name, data in (("train", train_data), ("validation", val_data)):
            if data is not None and vocab is not None and data.vocab_size > vocab:
                raise ValueError(f"the {name} token file has a vocabulary of {data.vocab_size}, larger than the "
                                 f"model's {vocab}")
        max_length = getattr(model, "max_length", None)
        if max_length is not None and s.seq_len > max_length:
            raise ValueError(f"seq_len {s.seq_len} exceeds the model's context of {max_length} positions")
        if s.mixed_precision:
            self.amp = self.mixed_precision(model)
            params = {name: self.amp.master[name] for name in self.trainable(model)}
        else:
            self.amp = None
            params = self.trainable(model)
        self.optimizer = AdamW(params, lr=s.lr, betas=(s.beta1, s.beta2), eps=s.eps, weight_decay=s.weight_decay)
        self.rng = backends.rng(s.seed)              # draws every training batch, in order
        self.step = 0                                # optimizer steps done (skipped mixed-precision steps count)
        self.result = TrainResult()
        self._skipped_in_a_row = 0

    def mixed_precision(self, model) -> MixedPrecision:
        """The float16 compute copy, float32 master and loss scaler of a mixed-precision run (LoraTrainer overrides
        it to copy the frozen base once and keep only the adapters as master weights)."""
        return MixedPrecision(model, scaler=GradScaler(), parameters=self.parameters,
                              loss_and_grads=self._loss_and_grads)

    def logits(self, model, input_ids):
        """(B, T, V) logits for validation: model(input_ids) (LoraTrainer: with the adapters)."""
        return model(input_ids)

    # ---------------------------------------------------------------- one step
    def lr_at(self, step: int) -> float:
        s = self.settings
        return warmup_cosine_lr(step, s.lr, s.steps, s.warmup_steps, s.min_lr)

    def _micro_batch(self, input_ids, targets):
        if self.amp is not None:
            return self.amp.loss_and_grads(input_ids, targets, checkpointing=self.settings.checkpointing)
        return self._loss_and_grads(self.model, input_ids, targets, checkpointing=self.settings.checkpointing)

    def train_step(self) -> float:
        """One optimizer step (steps 1-6 of the module docstring); returns the mean loss of its micro-batches."""
        s = self.settings
        step = self.step + 1                                        # 1-based, as the progress line counts
        self.optimizer.lr = self.lr_at(self.step)
        accumulator = GradientAccumulator()
        losses = []
        for _ in range(s.grad_accum):
            input_ids, targets = self.train_data.batch(self.rng, s.batch_size, s.seq_len)   # (B, T) each
            loss, grads = self._micro_batch(input_ids, targets)
            losses.append(loss)
            accumulator.add(grads)
        grads = accumulator.take()                                  # the mean over micro-batches
        loss = sum(losses) / len(losses)
        with _sigint_deferred():                                    # the arrays change in place from here on
            if self.amp is not None:
                stepped, _ = self.amp.step(self.optimizer, grads, s.max_grad_norm)
                self._skipped_in_a_row = 0 if stepped else self._skipped_in_a_row + 1
                if not stepped:
                    self.result.skipped.append(step)
                    if self._skipped_in_a_row >= s.max_skipped_steps:
                        raise NonFiniteLossError(
                            f"step {step}: {self._skipped_in_a_row} mixed-precision steps in a row overflowed "
                            f"(loss {loss}, loss scale now {self.amp.scaler.get_scale():g}); the float16 forward "
                            f"itself overflows -- train in float32")
            else:
                if not math.isfinite(loss):
                    raise NonFiniteLossError(f"step {step}: the training loss is {loss}; stopping (lower the "
                                             f"learning rate, or resume from the last checkpoint)")
                if s.max_grad_norm is not None:
                    norm = float(clip_grad_norm(grads, s.max_grad_norm))   # one read back, as the loss's
                    if not math.isfinite(norm):                 # a finite loss, but inf/NaN gradients: the update
                        raise NonFiniteLossError(f"step {step}: the gradient norm is {norm}; stopping before the "
                                                 f"update would spread it into the weights")
                self.optimizer.step(grads)
            self.step = step
            self.result.losses[step] = loss
            self.result.step = step
        return loss

    def evaluate(self) -> float:
        """Mean loss over `eval_batches` validation batches -- the same batches every time (generator seed + 1), so
        validation losses of one run compare. Forward only."""
        if self.val_data is None:
            raise ValueError("evaluate: no validation data")
        s = self.settings
        rng = backends.rng(s.seed + 1)
        model = self.amp.compute_model if self.amp is not None else self.model
        total = 0.0
        for _ in range(s.eval_batches):
            input_ids, targets = self.val_data.batch(rng, s.batch_size, s.seq_len)
            logits = self.logits(model, input_ids)                               # (B, T, V)
            loss, _ = cross_entropy_forward(logits, model.backend.asarray(targets))
            total += float(loss)
        return total / s.eval_batches

    # ---------------------------------------------------------------- the loop
    def run(self) -> TrainResult:
        """Train until `settings.steps`, logging, validating and checkpointing on the way. Ctrl-C: the step in
        progress is abandoned (its batches will be drawn again), a checkpoint of the last finished step is written,
        and the result comes back with interrupted=True. A non-finite loss raises NonFiniteLossError."""
        s = self.settings
        start_time, start_step = time.perf_counter(), self.step
        window_time, window_step = start_time, self.step
        try:
            while self.step < s.steps:
                rng_state, step_before = self.rng.bit_generator.state, self.step
                try:
                    loss = self.train_step()
                except KeyboardInterrupt:
                    if self.step == step_before:               # abandoned before its update: draw its batches again
                        self.rng.bit_generator.state = rng_state
                    raise                                      # (else it finished: Ctrl-C came during the update)
                last = self.step == s.steps
                if self.result.skipped and self.result.skipped[-1] == self.step:
                    self.log(f"step {self.step:>{len(str(s.steps))}}/{s.steps} | skipped: the float16 gradients "
                             f"overflowed; loss scale now {self.amp.scaler.get_scale():g}")
                if s.log_every and (self.step % s.log_every == 0 or self.step == start_step + 1 or last):
                    now = time.perf_counter()
                    rate = (self.step - window_step) * s.tokens_per_step / max(now - window_time, 1e-9)
                    eta = (now - start_time) / (self.step - start_step) * (s.steps - self.step)
                    self.log(self._progress_line(loss, rate, eta))
                    window_time, window_step = now, self.step
                if self.val_data is not None and s.eval_every and (self.step % s.eval_every == 0 or last):
                    val = self.evaluate()
                    self.result.val_losses[self.step] = val
                    self.log(f"step {self.step:>{len(str(s.steps))}}/{s.steps} | val loss {val:.4f}")
                if self.out_dir is not None and ((s.checkpoint_every and self.step % s.checkpoint_every == 0)
                                                 or last):
                    self.save_checkpoint()
        except KeyboardInterrupt:
            if self.out_dir is None:
                self.log(f"interrupted after step {self.step} (no out_dir: nothing saved)")
            else:
                path = self.save_checkpoint()
                self.log(f"interrupted after step {self.step}: checkpoint saved to {path}")
            self.result.interrupted = True
        return self.result

    def _progress_line(self, loss: float, tokens_per_second: float, eta_seconds: float) -> str:
        s = self.settings
        eta = time.strftime("%H:%M:%S", time.gmtime(eta_seconds)) if eta_seconds < 86400 else f"{eta_seconds:.0f}s"
        line = (f"step {self.step:>{len(str(s.steps))}}/{s.steps} | loss {loss:.4f} | lr {self.optimizer.lr:.2e} | "
                f"{tokens_per_second:,.0f} tok/s | ETA {eta}")
        if self.amp is not None:
            line += f" | scale {self.amp.scaler.get_scale():g}"
        return line

    # ---------------------------------------------------------------- checkpoints
    @property
    def checkpoints_dir(self) -> Path:
        if self.out_dir is None:
            raise ValueError("this trainer has no out_dir to keep checkpoints in")
        return self.out_dir / "checkpoints"

    def save_weights(self, folder: Path) -> None:
        """The model's weights as a loadable folder (config.json + model.safetensors); with mixed precision, the
        float32 master weights. (A LoRA trainer overrides this to save its adapters.)"""
        save_model(self.model, folder, self.parameters)

    def load_weights(self, folder: Path) -> None:
        """Copy saved weights into the model's own arrays (save_weights' inverse)."""
        saved = load_file(Path(folder) / "model.safetensors")
        for name, array in self.parameters(self.model).items():
            if name not in saved:
                raise ValueError(f"checkpoint {folder} has no weight {name!r}")
            array[...] = backends.of(array).asarray(np.asarray(saved[name]), dtype=array.dtype)
        if self.amp is not None:
            self.amp.refresh()

    def state(self) -> dict:
        """The trainer's state apart from arrays: what trainer.json holds."""
        optimizer = self.optimizer.state_dict()
        return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": self.step,
                "settings": asdict(self.settings),
                "optimizer": {key: optimizer[key] for key in ("optimizer", "step", "hyperparameters", "decayed")},
                "rng": self.rng.bit_generator.state,
                "scaler": None if self.amp is None else self.amp.scaler.state_dict(),
                "skipped_in_a_row": self._skipped_in_a_row,
                "losses": [[step, loss] for step, loss in self.result.losses.items()],
                "val_losses": [[step, loss] for step, loss in self.result.val_losses.items()],
                "skipped": self.result.skipped}

    def save_checkpoint(self) -> Path:
        """Write checkpoints/step-NNNNNNNN (weights, optimizer.safetensors, trainer.json) into a new folder, then
        make it current by rewriting checkpoints/latest atomically; older ones beyond keep_checkpoints go."""
        root = self.checkpoints_dir
        root.mkdir(parents=True, exist_ok=True)
        name = f"step-{self.step:08d}"
        final = root / name
        if not (final.is_dir() and latest_checkpoint(self.out_dir) == final):  # (this very state is already saved)
            for stale in root.glob(f"*{PARTIAL}*"):                 # left by a run killed while writing
                shutil.rmtree(stale, ignore_errors=True)
            partial = root / f"{name}{PARTIAL}-{os.getpid()}"
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir()
            self.save_weights(partial)
            moments = self.optimizer.state_dict()["state"]
            save_file({f"{param}/{key}": array for param, state in moments.items() for key, array in state.items()},
                      partial / "optimizer.safetensors")
            with atomic_write(partial / "trainer.json") as handle:
                json.dump(self.state(), handle, indent=1)
            if final.exists():                                      # an older save of this step number: replace it
                shutil.rmtree(final)
            os.replace(partial, final)                              # the folder is complete under its real name
        with atomic_write(root / LATEST) as handle:                 # the switch: one small atomic write
            handle.write(name + "\n")
        kept = sorted(p for p in root.glob("step-*") if p.is_dir() and PARTIAL not in p.name)
        for old in kept[:-self.settings.keep_checkpoints]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        self.result.checkpoint = final
        return final

    def resume(self, checkpoint=None) -> bool:
        """Load `checkpoint` (a folder), or out_dir's latest if None: weights, optimizer moments and step, the
        generator's state, the loss scale, the loss history. Returns False when there is nothing to resume from.
        The settings must equal the saved ones (a different run would not continue the same curve)."""
        folder = Path(checkpoint) if checkpoint is not None else (
            latest_checkpoint(self.out_dir) if self.out_dir is not None else None)
        if folder is None:
            return False
        state = read_trainer_state(folder)
        saved = TrainSettings.from_dict(state["settings"])
        if saved != self.settings:
            changed = [f.name for f in fields(TrainSettings)
                       if getattr(saved, f.name) != getattr(self.settings, f.name)]
            raise ValueError(f"checkpoint {folder} was trained with other settings ({', '.join(changed)} differ); "
                             f"resume with the saved ones (TrainSettings.from_dict of its trainer.json)")
        self.load_weights(folder)
        arrays = load_file(folder / "optimizer.safetensors")
        moments: dict = {}
        for key, array in arrays.items():
            param, _, which = key.rpartition("/")
            moments.setdefault(param, {})[which] = np.asarray(array)
        self.optimizer.load_state_dict({**state["optimizer"], "state": moments})
        self.rng.bit_generator.state = state["rng"]
        if self.amp is not None:
            self.amp.scaler.load_state_dict(state["scaler"])
        self._skipped_in_a_row = int(state.get("skipped_in_a_row", 0))
        self.step = int(state["step"])
        self.result = TrainResult(losses={int(k): float(v) for k, v in state["losses"]},
                                  val_losses={int(k): float(v) for k, v in state["val_losses"]},
                                  skipped=[int(k) for k in state["skipped"]], step=self.step, checkpoint=folder)
        return True


def latest_checkpoint(out_dir) -> Path | None:
    """The current checkpoint folder of a run (what checkpoints/latest names), or None if there is none yet."""
    root = Path(out_dir) / "checkpoints"
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text(encoding="utf-8").strip()
    folder = root / name
    if not name.startswith("step-") or not folder.is_dir():
        raise ValueError(f"{pointer} names {name!r}, which is not a checkpoint folder in {root}")
    return folder


def read_trainer_state(folder) -> dict:
    """A checkpoint's trainer.json, checked."""
    path = Path(folder) / "trainer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a checkpoint: no trainer.json")
    state = json.loads(path.read_text(encoding="utf-8"))
    if state.get("format") != CHECKPOINT_FORMAT or state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: not a {CHECKPOINT_FORMAT} version {CHECKPOINT_VERSION} file")
    return state
