"""What every decoding strategy starts from: the merged config, the checked and left-padded prompt, its token budget.

`make_config` merges a GenerationConfig with keyword arguments (transformers' names; the pad id falls back to the
first EOS id); `prepare_prompt` checks the prompt ids (a (B, T) array with an attention mask, or lists of
different lengths) and left-pads them into a `Prompt`; `new_token_budget` is the one length check (at least one
new token, all within the model's context); `processors_for` builds the processors for a padded batch. Not here:
any decoding loop -- the strategies (decode_loop.py, beam.py, ...) import this module, never the other way.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np  # host side only: prompts are checked and padded on the host

import backends
from scratch.generate.config import GenerationConfig
from scratch.generate.processors import build_processors
from scratch.nn import kv_cache

__all__ = ["Prompt", "make_config", "pad_id_of", "left_pad", "prepare_prompt", "new_token_budget",
           "processors_for"]


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



def make_config(config: GenerationConfig | None = None, **kwargs) -> GenerationConfig:
    """`config` with `kwargs` applied on top (kwargs win, as in transformers' generate). Unknown names raise. With
    no pad_token_id, the first EOS id pads (transformers' fallback)."""
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
        config = GenerationConfig(**kwargs)
    elif kwargs:
        config = config.replace(**kwargs)
    if config.pad_token_id is None and config.eos_token_ids:
        config = config.replace(pad_token_id=config.eos_token_ids[0])   # transformers' fallback, made explicit
    return config


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
    if all(isinstance(token, (int, np.integer)) and not isinstance(token, bool) for token in input_ids):
        return [list(input_ids)]
    rows = []
    for r, row in enumerate(input_ids):
        if isinstance(row, np.ndarray):
            row = row.tolist()
        if not isinstance(row, (list, tuple)):
            raise ValueError(f"input_ids must be a (B, T) array or a list of token-id lists; row {r} is {row!r}")
        for token in row:
            if isinstance(token, bool) or not isinstance(token, (int, np.integer)):
                raise ValueError(f"input_ids must hold integer token ids; row {r} holds {token!r}")
        rows.append([int(token) for token in row])
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
    in [0, V); whether the prompt fits the model's context is `new_token_budget`'s check.
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
        _check_ids(ids, mask_rows.astype(bool), model.n_vocab)   # before the cast: a uint64 id stays itself
        ids = ids.astype(np.int64)

    _check_special_ids(config, pad, model.n_vocab)
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

    _check_ids(ids, mask_rows.astype(bool), model.n_vocab)
    return Prompt(ids, mask_rows, pad)


def _check_ids(ids: np.ndarray, real: np.ndarray, vocab: int) -> None:
    """ValueError naming the first real token id outside [0, vocab)."""
    bad = ids[real & ((ids < 0) | (ids >= vocab))]
    if bad.size:
        raise ValueError(f"input_ids holds token id {int(bad[0])}, outside the model's vocabulary [0, {vocab})")


def _check_special_ids(config: GenerationConfig, pad: int, vocab: int) -> None:
    """Up front, the ids generation itself will write or look for: EOS, the pad id, BOS (for empty prompts). An id
    outside the vocabulary would otherwise fail mid-generation, blaming input_ids."""
    named = [("eos_token_id", token) for token in config.eos_token_ids]
    if config.pad_token_id is not None:
        named.append(("pad_token_id", config.pad_token_id))
    elif config.eos_token_ids:
        named.append(("pad_token_id (the first eos_token_id, transformers' fallback)", pad))
    if config.bos_token_id is not None:
        named.append(("bos_token_id", config.bos_token_id))
    for name, token in named:
        if not 0 <= token < vocab:
            raise ValueError(f"{name} {token} is outside the model's vocabulary [0, {vocab})")


def new_token_budget(prompt: Prompt, config: GenerationConfig, model, draft_model=None,
                     rows: int | None = None) -> int:
    """The number of new tokens to generate at most (the config's limit minus the prompt); errors when it is < 1,
    when prompt + new tokens exceed the context of `model` (or of `draft_model`, which must hold them too), or when
    the KV caches for `rows` sequences (default: the prompt's batch; beam search holds B * num_beams) of that many
    positions cannot fit in the memory available -- before anything is allocated."""
    T = prompt.length
    total = config.resolved_max_length(T)
    if total <= T:
        raise ValueError(f"max_length ({total}) must exceed the prompt length ({T}); use max_new_tokens to count "
                         f"only new tokens")
    # Decision: overrunning the context is an error, not a silent truncation (GPT-2 has no positions past it).
    for name, checked in (("model", model), ("draft_model", draft_model)):
        if checked is not None and T > checked.max_length:
            raise ValueError(f"the prompt has {T} tokens, longer than the {name}'s context of {checked.max_length}")
        if checked is not None and total > checked.max_length:
            raise ValueError(f"prompt ({T} tokens) + {total - T} new tokens = {total} exceed the {name}'s context "
                             f"of {checked.max_length}; lower max_new_tokens")
    rows = prompt.batch_size if rows is None else rows
    # (a model without cache_bytes_per_token -- a test double -- is not checked here; KVCache checks again)
    per_position = sum(getattr(checked, "cache_bytes_per_token", lambda: 0)() for checked in (model, draft_model)
                       if checked is not None)
    needed, available = rows * total * per_position, kv_cache.available_memory(model.backend.xp)
    if available is not None and needed > available:
        raise ValueError(f"max_new_tokens={total - T:,}: the KV cache of {rows} sequence(s) x {total:,} positions "
                         f"(prompt + new tokens) needs {needed / 2 ** 30:.2f} GiB, but only "
                         f"{available / 2 ** 30:.2f} GiB of memory is available; lower max_new_tokens")
    return total - T


def processors_for(config: GenerationConfig, prompt: Prompt) -> list:
    """build_processors(config, T); the repetition penalty skips each row's left padding, as transformers' does."""
    padding = (prompt.length - prompt.lengths).tolist() if prompt.has_padding else None
    return build_processors(config, prompt_length=prompt.length, padding_lengths=padding)
