"""The training rows of `scratch parity`: whole-model gradients (loss_and_grads) on every backend and in float32
against float64, next to the forward rows of scratch/models/parity.py (which may not import this package).

Each row runs one training step's backward pass on a tiny random GPT-2 or Llama (the same weights on every
backend: they are drawn on the host) and returns every gradient, flattened and concatenated in the order of
`named_parameters`, so one max-error figure covers all of them. Not here: optimizer steps (their arithmetic is
elementwise, checked against torch.optim in tests/train).
"""
from __future__ import annotations

import numpy as np

import backends
from scratch.models.loader import from_config
from scratch.models.parity import MODEL, TINY_GPT2, TINY_LLAMA, Check
from scratch.train.model_grads import loss_and_grads

__all__ = ["gradient_checks"]


def _all_gradients(config, ids: np.ndarray, targets: np.ndarray, backend, dtype: str) -> np.ndarray:
    """Every gradient of one batch's mean cross-entropy, on the host, one flat float64 vector."""
    model = from_config(config, backend=backend, seed=1, dtype=dtype)
    _, grads = loss_and_grads(model, ids, targets)
    return np.concatenate([np.asarray(backend.to_numpy(grads[name]), dtype=np.float64).ravel()
                           for name in grads])


def gradient_checks(seed: int = 2) -> list[Check]:
    """Checks for run_parity's `extra_checks`: GPT-2 and Llama (GQA, llama3 RoPE) gradients, with ignored targets.

    Tolerances are the whole-model ones (MODEL: a backward pass is about twice the forward's work and its errors
    are of the same order). float16 is not judged here: training in half precision needs loss scaling
    (scratch.train.amp), without which small gradients underflow by design.
    """
    rng = backends.rng(seed)
    ids = rng.integers(0, 101, (2, 20))
    targets = np.roll(ids, -1, axis=1)
    targets[:, -1] = -100                     # the last position has no next token: ignored, as in training
    targets[0, :3] = -100
    return [
        Check("gpt2 gradients (all weights)",
              lambda be, dt: _all_gradients(TINY_GPT2, ids, targets, be, dt), MODEL, MODEL),
        Check("llama gradients (all weights)",
              lambda be, dt: _all_gradients(TINY_LLAMA, ids, targets, be, dt), MODEL, MODEL),
    ]
