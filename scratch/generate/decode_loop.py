"""Greedy decoding and sampling: the decode loop, one token per step for a batch of prompts.

Prefill the prompt once through a KV cache allocated once, then each step: the last position's logits, the
processors and warpers (`build_processors`), argmax or a sample at a uniform drawn on the host, append, and ask the
stopping criteria (EOS, stop strings, the length limit) which rows are done -- a finished row gets the pad id from
then on, as transformers pads it. This is transformers' `_sample` loop (do_sample False or True). Not here: beam
search, contrastive search, speculative decoding (their own modules); recording attentions; caches that grow.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np  # host side only: the token ids copied back each step, stopping

import backends
from scratch.generate.config import GenerationConfig
from scratch.generate.output import GenerateOutput, last_scores, new_record, record_step, recorded_outputs
from scratch.generate.processors import apply
from scratch.generate.prompt import Prompt, new_token_budget, processors_for
from scratch.generate.sampling import greedy, sample
from scratch.generate.stopping import any_stop, build_stopping

__all__ = ["decode_steps", "greedy_or_sample"]


def decode_steps(model, prompt: Prompt, config: GenerationConfig, rng: np.random.Generator | None = None,
                 decode: Callable[[list[int]], str] | None = None,
                 record: list | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Greedy or sampling, one step at a time: yields (tokens (B,) host int64, finished (B,) host bool) per step.

    `tokens` is what each row appended this step (the pad id for rows that had already finished); `finished` says
    which rows are done after it (all of them at the length limit, where the generator returns). `record`: a list
    that receives (raw logits, processed scores) per step (see `record_step`). `decode` is for stop strings.
    """
    backend, xp = model.backend, model.backend.xp
    B, T = prompt.batch_size, prompt.length
    max_new = new_token_budget(prompt, config, model)
    processors = processors_for(config, prompt)
    stopping = build_stopping(config, T, decode, starts=T - prompt.lengths)
    uniforms = _uniforms(backend, config, rng, B, max_new)        # (B, max_new) when sampling, else None
    host_ids, dev_ids = _sequences(backend, prompt, max_new, on_device=bool(processors))
    mask = _model_mask(backend, prompt, max_new)                   # (B, T + max_new), None without padding

    cache = model.new_cache(B, T + max_new)                        # allocated once: never grows
    # Prefill once; only the last position's logits are read, so only they go through the head.
    logits = model(backend.asarray(prompt.input_ids, dtype="int64"), cache=cache,
                   attention_mask=None if mask is None else mask[:, :T], logits_to_keep=1)   # (B, 1, V)
    finished = np.zeros(B, dtype=bool)
    for step in range(max_new):
        cur = T + step                                             # tokens so far
        raw = scores = last_scores(xp, logits)                     # (B, V) float32
        if processors:
            scores = apply(processors, dev_ids[:, :cur], scores)
        if record is not None:
            record_step(record, backend, config, raw, scores)
        tokens = greedy(scores) if uniforms is None else sample(scores, uniforms[:, step])   # (B,) on the backend
        host = backend.to_numpy(tokens).astype(np.int64, copy=False)   # the one device-to-host copy per step
        if finished.any():                                         # a finished row appends the pad id
            host = np.where(finished, prompt.pad_token_id, host)
            tokens = backend.asarray(host, dtype="int64")
        host_ids[:, cur] = host
        if dev_ids is not None:
            dev_ids[:, cur] = tokens
        # transformers' order: append, then ask the criteria; a finished row stays finished.
        finished = any_stop(stopping, host_ids[:, :cur + 1], finished)
        yield host, finished.copy()
        if finished.all():
            return
        logits = model(xp.reshape(tokens, (B, 1)), cache=cache,
                       attention_mask=None if mask is None else mask[:, :cur + 1])   # (B, 1, V)


def greedy_or_sample(model, prompt: Prompt, config: GenerationConfig, rng=None, decode=None,
                     streamer=None) -> GenerateOutput:
    """`decode_steps` to the end: a GenerateOutput of the prompts (repeated num_return_sequences times when
    sampling) and their generated tokens. `streamer.put(tokens)` is called after each step, `streamer.end()` last."""
    prompt = prompt.repeat(config.num_return_sequences) if config.is_sampling else prompt
    columns = []
    record = new_record(config)
    for tokens, _finished in decode_steps(model, prompt, config, rng, decode, record):
        columns.append(tokens)
        if streamer is not None:
            streamer.put(tokens)
    if streamer is not None:
        streamer.end()
    generated = np.stack(columns, axis=1) if columns else np.zeros((prompt.batch_size, 0), dtype=np.int64)
    return GenerateOutput(sequences=np.concatenate([prompt.input_ids, generated], axis=1),
                          **recorded_outputs(record, config))


# ---------------------------------------------------------------------------------------------------------------
# The loop's setup
# ---------------------------------------------------------------------------------------------------------------

def _uniforms(backend, config: GenerationConfig, rng, batch: int, max_new: int):
    """One uniform per row per step, drawn up front as a (B, max_new) table on the backend, or None for greedy.

    Row b's draws are the b-th run of max_new numbers, so row 0 of a batch samples from the same draws as that
    prompt alone, whatever the batch size, and no step pays a host-to-device transfer."""
    if not config.is_sampling:
        return None
    rng = backends.rng(config.seed) if rng is None else rng
    return backend.random_uniform(rng, (batch, max_new), dtype="float32")


def _sequences(backend, prompt: Prompt, max_new: int, on_device: bool):
    """The sequences so far, written one column per step (allocated once): (B, T + max_new) host int64 (needed for
    stop strings), and the same ids on the backend only when `on_device` (processors read the context), else None."""
    B, T = prompt.batch_size, prompt.length
    host_ids = np.full((B, T + max_new), prompt.pad_token_id, dtype=np.int64)
    host_ids[:, :T] = prompt.input_ids
    dev_ids = None
    if on_device:
        dev_ids = backend.xp.zeros((B, T + max_new), dtype=backend.xp.int64)
        dev_ids[:, :T] = backend.asarray(prompt.input_ids, dtype="int64")
    return host_ids, dev_ids


def _model_mask(backend, prompt: Prompt, max_new: int):
    """The attention mask for prompt + max_new positions on the backend (moved once, then sliced: no per-step
    transfer), or None when no row is padded."""
    mask = prompt.model_mask(max_new)                              # (B, T + max_new) host or None
    if mask is not None and backend.name != "numpy":
        mask = backend.asarray(mask, dtype="int64")
    return mask
