"""The generation loop: prompt in, tokens out -- greedy and multinomial sampling, batched, one token per step.

`generate(model, input_ids, ...)` follows transformers' `generate`: it builds a GenerationConfig (a `config=` and/or
keyword arguments with transformers' names), checks and left-pads the prompt (`Prompt`), then runs one strategy.
Greedy and sampling live here: allocate the KV cache once, prefill the whole prompt once, then feed one token per
step; processors and warpers (`build_processors`) reshape the last position's scores, `greedy` or `sample` (with a
uniform drawn on the host) picks the token, and the stopping rules (EOS, stop strings, length) finish rows one by
one -- a finished row gets the pad id from then on, exactly as transformers pads it. Beam search, group beam search,
contrastive search and speculative decoding live in beam.py, contrastive.py and speculative.py and are called from
`generate` with the same `Prompt`. Not here: recording per-step scores (`GenerateOutput.scores` stays None) or
attentions, assistant-model heuristics, caches that grow.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np  # host side only: prompt preparation, the token ids copied back each step, stopping

import backends
from scratch.generate.config import GenerationConfig
from scratch.generate.processors import apply, build_processors
from scratch.generate.sampling import greedy, sample
from scratch.generate.stopping import StopStrings

__all__ = ["GenerateOutput", "Prompt", "generate", "prepare_prompt", "make_config", "decode_steps",
           "processors_for"]


@dataclass(frozen=True)
class GenerateOutput:
    """What `generate` returns. Every array is on the host.

    sequences: (B * num_return_sequences, T_total) int64, prompt + generated ids; rows that finished early are
        filled with the pad id after their end (and left-padded prompts keep their padding).
    sequences_scores: (B * num_return_sequences,) float32 length-penalised log-probabilities (beam search only).
    scores: with output_scores=True (greedy decoding and sampling), one (B * num_return_sequences, V) float32 array
        per generated step: the scores after every processor and warper, the ones the token was picked from
        (transformers' `scores`; -inf marks what the warpers removed). Otherwise None.
    logits: with output_logits=True, the same for the model's raw logits (transformers' `logits`), float32.
        Beam search and beam sampling record them too, (B * num_beams, V) per step, one row per running beam: scores
        are the processed log-probabilities before the beam's running sum is added, as transformers records them.
    beam_indices: with output_scores or output_logits in beam search, (B * num_return_sequences, generated) int64:
        the running-beam row each returned hypothesis continued at each step (-1 after it ended), so
        scores[t][beam_indices[i, t], sequences[i, T + t]] is the log-probability of its t-th token. Rows of beams
        that are already dead (running score -1e9: fewer live candidates than beams, e.g. after many stop-string
        hits) are unspecified: transformers' topk breaks the ties among them in another order.
    """

    sequences: np.ndarray
    sequences_scores: np.ndarray | None = None
    scores: tuple | None = None
    logits: tuple | None = None
    beam_indices: np.ndarray | None = None


@dataclass
class Prompt:
    """A checked batch of prompts, what every strategy receives.

    input_ids: (B, T) host int64, LEFT-padded with `pad_token_id` (so every row's last column is a real token).
    attention_mask: (B, T) host int64, 1 on real tokens, 0 on padding.
    pad_token_id: the id used for padding (config.pad_token_id, else the first EOS id, else 0).
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    pad_token_id: int

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def length(self) -> int:
        """T, the padded prompt length (transformers' input_ids.shape[-1])."""
        return int(self.input_ids.shape[1])

    @property
    def lengths(self) -> np.ndarray:
        """(B,) real tokens per row."""
        return self.attention_mask.sum(axis=1)

    @property
    def has_padding(self) -> bool:
        """False when every row is full length: the model then needs no attention mask at all."""
        return bool((self.attention_mask == 0).any())

    def model_mask(self, extra: int = 0):
        """The mask to pass the model for the prompt plus `extra` generated positions (B, T + extra) host int64,
        or None when there is no padding (positions are then 0..S-1 in every row and no mask is needed)."""
        if not self.has_padding:
            return None
        ones = np.ones((self.batch_size, extra), dtype=np.int64)
        return np.concatenate([self.attention_mask, ones], axis=1)

    def repeat(self, times: int) -> "Prompt":
        """Each row repeated `times` times in place (rows 0,0,1,1,...), as transformers expands for
        num_return_sequences (repeat_interleave)."""
        if times == 1:
            return self
        return Prompt(np.repeat(self.input_ids, times, axis=0), np.repeat(self.attention_mask, times, axis=0),
                      self.pad_token_id)


# ---------------------------------------------------------------------------------------------------------------
# Configuration and prompt checks
# ---------------------------------------------------------------------------------------------------------------

def make_config(config: GenerationConfig | None = None, **kwargs) -> GenerationConfig:
    """`config` with `kwargs` applied on top (kwargs win, as in transformers' generate). Unknown names raise."""
    if config is not None and not isinstance(config, GenerationConfig):
        raise TypeError(f"config must be a GenerationConfig, got {type(config).__name__}")
    names = set(GenerationConfig.field_names())
    unknown = sorted(set(kwargs) - names)
    if unknown:
        hint = (" (not needed here: generate always returns a GenerateOutput with .sequences, and .scores / "
                ".logits when output_scores / output_logits are set)" if "return_dict_in_generate" in unknown else "")
        raise ValueError(f"unknown generation parameter(s) {', '.join(unknown)}{hint}; GenerationConfig knows "
                         f"{', '.join(sorted(names))}")
    if config is None:
        return GenerationConfig(**kwargs)
    return config.replace(**kwargs) if kwargs else config


def pad_id_of(config: GenerationConfig) -> int:
    """The id written into padding: pad_token_id, else the first EOS id (transformers' fallback), else 0."""
    if config.pad_token_id is not None:
        return config.pad_token_id
    return config.eos_token_ids[0] if config.eos_token_ids else 0


def _is_int_array(a: np.ndarray) -> bool:
    return a.dtype.kind in "iu"


def _rows_from_lists(input_ids) -> list[list[int]]:
    """A list of prompts (each a list of ints) or a single flat list of ints -> list of rows."""
    if len(input_ids) == 0:
        return [[]]
    if all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in input_ids):
        return [list(input_ids)]
    rows = []
    for r, row in enumerate(input_ids):
        if isinstance(row, np.ndarray):
            row = row.tolist()
        if not isinstance(row, (list, tuple)):
            raise ValueError(f"input_ids must be a (B, T) array or a list of token-id lists; row {r} is {row!r}")
        for t in row:
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
                raise ValueError(f"input_ids must hold integer token ids; row {r} holds {t!r}")
        rows.append([int(t) for t in row])
    return rows


def left_pad(rows, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Prompts of different lengths -> (ids, attention_mask), both (B, T) host int64, padding on the left so every
    row's last token sits in the last column (where generation appends)."""
    T = max(len(r) for r in rows)
    ids = np.full((len(rows), T), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), T), dtype=np.int64)
    for b, r in enumerate(rows):
        ids[b, T - len(r):] = r
        mask[b, T - len(r):] = 1
    return ids, mask


def prepare_prompt(model, input_ids, config: GenerationConfig, attention_mask=None) -> Prompt:
    """Check the prompt and left-pad it into a `Prompt`.

    input_ids: a (B, T) integer array (host or the model's backend) with an optional (B, T) 0/1 `attention_mask`
    (left padding only), a list of token-id lists of different lengths (left-padded here), or one flat list / 1-D
    array (one prompt). An empty prompt starts from `bos_token_id` when it is set, else it is an error. Ids must lie
    in [0, V) and the prompt must fit the model's context.
    """
    pad = pad_id_of(config)
    if isinstance(input_ids, (list, tuple)):
        if attention_mask is not None:
            raise ValueError("attention_mask is only taken with a (B, T) array; a list of prompts is padded here")
        rows = _rows_from_lists(input_ids)
        mask_rows = None
    else:
        if backends.array_kind(input_ids) not in (None, "numpy"):
            input_ids = backends.of(input_ids).to_numpy(input_ids)
        ids = np.asarray(input_ids)
        if ids.ndim == 1:
            ids = ids[None, :]
        if ids.ndim != 2:
            raise ValueError(f"input_ids must be (B, T), got shape {ids.shape}")
        if ids.size and not _is_int_array(ids):
            raise ValueError(f"input_ids must hold integer token ids, got dtype {ids.dtype}")
        rows = None
        if attention_mask is not None:
            if backends.array_kind(attention_mask) not in (None, "numpy"):
                attention_mask = backends.of(attention_mask).to_numpy(attention_mask)
            mask = np.asarray(attention_mask)
            if mask.shape != ids.shape:
                raise ValueError(f"attention_mask shape {mask.shape} differs from input_ids shape {ids.shape}")
            if not np.isin(mask, (0, 1)).all():
                raise ValueError("attention_mask must hold only 0 and 1")
            mask = mask.astype(np.int64)
            # Left padding only: once a row has a 1, it has no 0 after it (the last column must be real).
            if (np.diff(mask, axis=1) < 0).any():
                bad = int(np.nonzero((np.diff(mask, axis=1) < 0).any(axis=1))[0][0])
                raise ValueError(f"attention_mask row {bad} is not left-padded (a 0 follows a 1); generation "
                                 f"appends after the last column, so padding must come first")
            mask_rows = mask
        else:
            mask_rows = np.ones(ids.shape, dtype=np.int64)
        ids = ids.astype(np.int64)

    if rows is not None:
        if any(len(r) == 0 for r in rows):
            if config.bos_token_id is None:
                empty = next(i for i, r in enumerate(rows) if not r)
                raise ValueError(f"prompt {empty} is empty and no bos_token_id is set: give at least one token, "
                                 f"or set bos_token_id to start from it")
            rows = [r if r else [config.bos_token_id] for r in rows]
        ids, mask_rows = left_pad(rows, pad)
    else:
        empty_rows = np.nonzero(mask_rows.sum(axis=1) == 0)[0] if ids.shape[1] else np.arange(ids.shape[0])
        if len(empty_rows):
            if config.bos_token_id is None:
                raise ValueError(f"prompt {int(empty_rows[0])} is empty and no bos_token_id is set: give at least "
                                 f"one token, or set bos_token_id to start from it")
            if ids.shape[1] == 0:
                ids = np.full((ids.shape[0], 1), config.bos_token_id, dtype=np.int64)
                mask_rows = np.ones(ids.shape, dtype=np.int64)
            else:
                ids[empty_rows, -1] = config.bos_token_id
                mask_rows[empty_rows, -1] = 1
    if ids.shape[0] == 0:
        raise ValueError("input_ids holds no prompt (batch size 0)")

    vocab = model.n_vocab
    real = mask_rows.astype(bool)
    bad = ids[real & ((ids < 0) | (ids >= vocab))]
    if bad.size:
        raise ValueError(f"input_ids holds token id {int(bad[0])}, outside the model's vocabulary [0, {vocab})")
    if ids.shape[1] > model.max_length:
        raise ValueError(f"the prompt has {ids.shape[1]} tokens, longer than the model's context of "
                         f"{model.max_length}")
    return Prompt(ids, mask_rows, pad)


def _check_lengths(model, prompt: Prompt, config: GenerationConfig) -> int:
    """The number of new tokens to generate at most; errors when it is < 1 or exceeds the context."""
    T = prompt.length
    total = config.resolved_max_length(T)
    if total <= T:
        raise ValueError(f"max_length ({total}) must exceed the prompt length ({T}); use max_new_tokens to count "
                         f"only new tokens")
    # Decision: overrunning the context is an error, not a silent truncation (GPT-2 has no positions past it).
    if total > model.max_length:
        raise ValueError(f"prompt ({T} tokens) + {total - T} new tokens = {total} exceed the model's context of "
                         f"{model.max_length}; lower max_new_tokens")
    return total - T


# ---------------------------------------------------------------------------------------------------------------
# Greedy and sampling: the loop
# ---------------------------------------------------------------------------------------------------------------

def processors_for(config: GenerationConfig, prompt: Prompt) -> list:
    """build_processors(config, T); the repetition penalty skips each row's left padding, as transformers' does."""
    padding = (prompt.length - prompt.lengths).tolist() if prompt.has_padding else None
    return build_processors(config, prompt_length=prompt.length, padding_lengths=padding)


def decode_steps(model, prompt: Prompt, config: GenerationConfig, rng: np.random.Generator | None = None,
                 decode: Callable[[list[int]], str] | None = None,
                 record: list | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Greedy or sampling, one step at a time: yields (tokens (B,) host int64, finished (B,) host bool) per step.

    `tokens` is what each row appended this step (the pad id for rows that had already finished); `finished` says
    which rows are done after it. The generator returns when every row is done or the length limit is reached.
    The work per step: one forward of B tokens through the cache, the configured processors on (B, V) scores,
    argmax or inverse-CDF sampling, and one copy of B token ids to the host (needed to decide whether to stop).
    `record`: a list that receives (raw logits, processed scores) once per step, each a (B, V) host copy or None
    when the config does not ask for it (output_logits / output_scores) -- the only per-step (B, V) transfers.
    Scores are float32 whatever the model's dtype, as transformers casts the last logits before processing.
    """
    backend = model.backend
    xp = backend.xp
    max_new = _check_lengths(model, prompt, config)
    B, T = prompt.batch_size, prompt.length
    pad = prompt.pad_token_id
    sampling = config.is_sampling
    uniforms = None
    if sampling:
        rng = backends.rng(config.seed) if rng is None else rng
        # One uniform per row per step, drawn up front as a (B, max_new) table: row b's draws are the b-th run of
        # max_new numbers, so row 0 of a batch samples from the same draws as that prompt alone, whatever the
        # batch size, and no step pays a host-to-device transfer.
        uniforms = backend.random_uniform(rng, (B, max_new), dtype="float32")
    processors = processors_for(config, prompt)
    eos = np.asarray(config.eos_token_ids, dtype=np.int64)
    stops = None
    if config.stop_strings is not None:
        if decode is None:
            raise ValueError(f"stop_strings {config.stop_strings!r} need a tokenizer: pass tokenizer= to generate")
        stops = StopStrings(config.stop_strings, decode)
    starts = T - prompt.lengths                                    # (B,) first real column of each row

    # Host record of the sequences (needed for stop strings) and, only when processors read the context, the same
    # ids on the backend, written one column per step (allocated once).
    host_ids = np.full((B, T + max_new), pad, dtype=np.int64)
    host_ids[:, :T] = prompt.input_ids
    dev_ids = None
    if processors:
        dev_ids = xp.zeros((B, T + max_new), dtype=xp.int64)
        dev_ids[:, :T] = backend.asarray(prompt.input_ids, dtype="int64")
    mask = prompt.model_mask(max_new)                              # (B, T + max_new) or None without padding
    if mask is not None and backend.name != "numpy":
        mask = backend.asarray(mask, dtype="int64")                # once, then sliced: no per-step transfer

    cache = model.new_cache(B, T + max_new)                        # allocated once: never grows
    # Prefill once; only the last position's logits are read, so only they go through the head.
    logits = model(backend.asarray(prompt.input_ids, dtype="int64"), cache=cache,
                   attention_mask=None if mask is None else mask[:, :T], logits_to_keep=1)   # (B, 1, V)
    scores = last_scores(xp, logits)                               # (B, V): left padding -> last column is real
    finished = np.zeros(B, dtype=bool)
    for step in range(max_new):
        cur = T + step                                             # tokens so far
        raw = scores
        if processors:
            scores = apply(processors, dev_ids[:, :cur], scores)
        if record is not None:
            record_step(record, backend, config, raw, scores)
        if sampling:
            tokens = sample(scores, uniforms[:, step])
        else:
            tokens = greedy(scores)                                # (B,) int64 on the backend
        host = backend.to_numpy(tokens).astype(np.int64, copy=False)   # the one device-to-host copy per step
        if finished.any():
            host = np.where(finished, pad, host)
            tokens = backend.asarray(host, dtype="int64")
        host_ids[:, cur] = host
        if dev_ids is not None:
            dev_ids[:, cur] = tokens
        # Stopping (transformers' order: append, then ask the criteria; a finished row stays finished).
        done = np.isin(host, eos) if eos.size else np.zeros(B, dtype=bool)
        if stops is not None:
            for b in np.nonzero(~finished & ~done)[0]:
                done[b] = stops.row_stops(host_ids[b, starts[b]:cur + 1].tolist())
        finished = finished | done
        yield host, finished.copy()
        if finished.all() or step == max_new - 1:
            return
        logits = model(xp.reshape(tokens, (B, 1)), cache=cache,
                       attention_mask=None if mask is None else mask[:, :cur + 1])   # (B, 1, V)
        scores = last_scores(xp, logits)


def last_scores(xp, logits):
    """The last position's logits (B, V) as float32 (a half model's too: transformers processes in float32)."""
    last = logits[:, -1, :]
    return last if last.dtype == xp.float32 else xp.astype(last, xp.float32)


def record_step(record: list, backend, config: GenerationConfig, raw, processed) -> None:
    """Append one step's (raw logits, processed scores) to `record` as host copies, each only if the config asks
    for it (output_logits, output_scores) -- the only per-step (rows, V) transfers to the host."""
    record.append((np.array(backend.to_numpy(raw)) if config.output_logits else None,
                   np.array(backend.to_numpy(processed)) if config.output_scores else None))


def recorded_outputs(record: list | None, config: GenerationConfig) -> dict:
    """GenerateOutput's `scores` and `logits` fields from a record (None for what was not asked for)."""
    if record is None:
        return {}
    return {"scores": tuple(s for _, s in record) if config.output_scores else None,
            "logits": tuple(raw for raw, _ in record) if config.output_logits else None}


def _greedy_or_sample(model, prompt: Prompt, config: GenerationConfig, rng, decode, streamer) -> GenerateOutput:
    prompt = prompt.repeat(config.num_return_sequences) if config.is_sampling else prompt
    columns = []
    record = [] if (config.output_scores or config.output_logits) else None
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
# The entry point
# ---------------------------------------------------------------------------------------------------------------

def generate(model, input_ids, config: GenerationConfig | None = None, *, attention_mask=None, draft_model=None,
             tokenizer=None, streamer=None, **kwargs) -> GenerateOutput:
    """Generate continuations of `input_ids` with `model` -- transformers' `generate`, on host and backend arrays.

    config: a GenerationConfig; keyword arguments with GenerationConfig's names override its fields.
    input_ids: (B, T) integer array (+ `attention_mask` for left padding), or a list of token-id lists.
    draft_model: a small model of the same vocabulary -> speculative decoding.
    tokenizer: needed for stop_strings (anything with `decode(ids) -> str`).
    streamer: an object with `put(tokens (B,) host int64)` called after each step and `end()` at the end
        (greedy and sampling only); for text, see `scratch.generate.stream.stream_generate`.
    Returns a GenerateOutput; `sequences` is (B * num_return_sequences, T_total), padded with the pad id.
    Strategy (as transformers picks it): num_beams > 1 -> beam search (beam sampling with do_sample, group beam
    search with num_beam_groups > 1); penalty_alpha > 0 with top_k > 1 -> contrastive search; a draft model ->
    speculative decoding; else sampling when do_sample (and temperature > 0), else greedy.
    """
    config = make_config(config, **kwargs)
    if config.pad_token_id is None and config.eos_token_ids:
        config = config.replace(pad_token_id=config.eos_token_ids[0])   # transformers' fallback, made explicit
    decode = None
    if tokenizer is not None:
        decode = tokenizer.decode
    elif config.stop_strings is not None:
        raise ValueError(f"stop_strings {config.stop_strings!r} are matched on decoded text: pass tokenizer= "
                         f"to generate")
    prompt = prepare_prompt(model, input_ids, config, attention_mask)
    _check_lengths(model, prompt, config)
    mode = config.mode
    if streamer is not None and (mode not in ("greedy_search", "sample") or draft_model is not None):
        raise ValueError(f"streamer works with greedy decoding and sampling, not with {mode}"
                         f"{' and a draft model' if draft_model is not None else ''}")
    # Score recording and stop strings: greedy decoding, sampling and beam search (plain or sampled) only.
    step_by_step = mode in ("greedy_search", "sample", "beam_search", "beam_sample") and draft_model is None
    recorded = [name for name in ("output_scores", "output_logits") if getattr(config, name)]
    if recorded and not step_by_step:
        raise ValueError(f"{' and '.join(recorded)}: recorded for greedy decoding, sampling and beam search, not "
                         f"for {mode}{' with a draft model' if draft_model is not None else ''}")
    if config.stop_strings is not None and not step_by_step:
        raise ValueError(f"stop_strings work with greedy decoding, sampling and beam search, not with {mode}"
                         f"{' and a draft model' if draft_model is not None else ''}")
    rng = backends.rng(config.seed)
    if draft_model is not None:
        if mode not in ("greedy_search", "sample"):
            raise ValueError(f"speculative decoding (draft_model=) works with greedy decoding and sampling, "
                             f"not with {mode}")
        if draft_model.n_vocab != model.n_vocab:
            raise ValueError(f"draft_model's vocabulary ({draft_model.n_vocab}) differs from the model's "
                             f"({model.n_vocab})")
        from scratch.generate import speculative
        return speculative.speculative_generate(model, draft_model, prompt, config, rng)
    if mode == "beam_search":
        from scratch.generate import beam
        return beam.beam_search(model, prompt, config, decode)
    if mode == "beam_sample":
        from scratch.generate import beam
        return beam.beam_sample(model, prompt, config, rng, decode)
    if mode == "group_beam_search":
        from scratch.generate import beam
        return beam.group_beam_search(model, prompt, config)
    if mode == "contrastive_search":
        from scratch.generate import contrastive
        return contrastive.contrastive_search(model, prompt, config)
    return _greedy_or_sample(model, prompt, config, rng, decode, streamer)
