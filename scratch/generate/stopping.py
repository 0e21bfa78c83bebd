"""Stopping criteria: after each step, which rows of a batch are done. Rows finish independently.

Each criterion maps input_ids (B, T) -- the prompt plus everything generated so far, on any backend -- to a host
(B,) bool array: True where that row should stop now. They mirror transformers' `stopping_criteria.py`:
EOS (one id or several), a length limit (total `max_length`, or `max_new_tokens` after the prompt) and stop
strings matched on decoded text, across token boundaries. The answer is needed on the host anyway (the loop must
decide whether to run another step): the loops pass host ids, a backend array is copied. Every decoding loop
asks `any_stop(criteria, ids, finished)` after appending and keeps the sticky mask; beam search asks per candidate.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence

import numpy as np

import backends

__all__ = ["EosToken", "MaxLength", "MaxNewTokens", "StopStrings", "any_stop", "build_stopping"]


def _host_ids(input_ids) -> np.ndarray:
    """The (B, T) ids on the host, whatever backend holds them (one device-to-host copy)."""
    if isinstance(input_ids, np.ndarray):
        ids = input_ids
    else:
        ids = backends.of(input_ids).to_numpy(input_ids)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be (B, T), got shape {ids.shape}")
    return ids


class EosToken:
    """A row is done when its last token is an end-of-sequence id (any of several, e.g. Llama 3's <|eot_id|> and
    <|end_of_text|>). Matches EosTokenCriteria."""

    def __init__(self, eos_token_id: int | Iterable[int]):
        ids = [eos_token_id] if isinstance(eos_token_id, (int, np.integer)) else list(eos_token_id)
        if not ids or any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 0 for i in ids):
            raise ValueError(f"eos_token_id must be a non-negative token id or a non-empty list of them, "
                             f"got {eos_token_id!r}")
        self.eos_token_ids = tuple(int(i) for i in ids)

    def __call__(self, input_ids, undecided=None) -> np.ndarray:
        ids = _host_ids(input_ids)
        if ids.shape[1] == 0:
            return np.zeros(ids.shape[0], dtype=bool)
        return np.isin(ids[:, -1], self.eos_token_ids)


class MaxLength:
    """Every row is done once the sequence (prompt included) holds `max_length` tokens. Matches MaxLengthCriteria."""

    def __init__(self, max_length: int):
        if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < 1:
            raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
        self.max_length = int(max_length)

    def __call__(self, input_ids, undecided=None) -> np.ndarray:
        batch, length = input_ids.shape[0], input_ids.shape[1]
        return np.full(batch, length >= self.max_length, dtype=bool)


class MaxNewTokens(MaxLength):
    """Every row is done once `max_new_tokens` tokens follow a prompt of `prompt_length` tokens."""

    def __init__(self, prompt_length: int, max_new_tokens: int):
        if isinstance(prompt_length, bool) or not isinstance(prompt_length, (int, np.integer)) or prompt_length < 0:
            raise ValueError(f"prompt_length must be a non-negative integer, got {prompt_length!r}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) \
                or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        super().__init__(int(prompt_length) + int(max_new_tokens))


class StopStrings:
    """A row is done when its decoded text contains a stop string that the newest token helped complete.

    Rule (transformers' StopStringCriteria): the stop string must overlap the final token. "stop" fires for the
    token pieces ["st", "op"], ["las", "topper"] or ["s", "to", "pped"], but not for ["stop", "at"], where it was
    already complete a token earlier (that step fired then). Here the rule is applied to text: decode the row with
    and without its last token; the stop string must occur somewhere that ends past their common prefix. Decoding
    the text, rather than matching token strings, also handles tokens that are partial UTF-8 characters.

    `decode` maps a list of token ids to a string (a tokenizer's decode). Only the tokens from `start` on are
    decoded (0: the whole row, like transformers, so a stop string may begin in the prompt; one start per row skips
    each row's left padding). Cost: two decodes of the row per step, only for the rows asked (`undecided`).
    """

    def __init__(self, stop_strings: str | Sequence[str], decode: Callable[[list[int]], str],
                 start: int | Sequence[int] = 0):
        strings = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings)
        if not strings or any(not isinstance(s, str) or not s for s in strings):
            raise ValueError(f"stop_strings must be a non-empty string or a non-empty list of them, "
                             f"got {stop_strings!r}")
        if not callable(decode):
            raise ValueError(f"decode must be a function from a list of token ids to text, got {decode!r}")
        self.stop_strings = tuple(strings)
        self.decode = decode
        self.start = int(start) if isinstance(start, (int, np.integer)) else np.asarray(start, dtype=np.int64)

    def row_stops(self, tokens: list[int]) -> bool:
        """The rule for one row's tokens (host ints)."""
        if not tokens:
            return False
        text = self.decode(tokens)
        before = self.decode(tokens[:-1])
        fresh_from = len(os.path.commonprefix([before, text]))  # text[fresh_from:] is what the last token changed
        # An occurrence ending after fresh_from starts at or after fresh_from - len(s) + 1.
        return any(s in text[max(0, fresh_from - len(s) + 1):] for s in self.stop_strings)

    def __call__(self, input_ids, undecided=None) -> np.ndarray:
        """(B,) bool; `undecided` (B,) bool, when given, names the rows to check (the others answer False)."""
        ids = _host_ids(input_ids)
        rows = range(ids.shape[0]) if undecided is None else np.nonzero(undecided)[0]
        starts = np.broadcast_to(self.start, (ids.shape[0],))
        done = np.zeros(ids.shape[0], dtype=bool)
        for row in rows:
            done[row] = self.row_stops(ids[row, starts[row]:].tolist())
        return done


def any_stop(criteria, input_ids, finished=None) -> np.ndarray:
    """(B,) bool: True where the row was already `finished` or at least one criterion says it is done now.

    Each criterion is asked only about the rows still undecided (the cheap ones come first in `build_stopping`;
    a stop-string check decodes text). Every criterion takes (input_ids, undecided) and returns (B,) bool.
    """
    done = np.zeros(input_ids.shape[0], dtype=bool) if finished is None else np.array(finished, dtype=bool)
    for criterion in criteria:
        if done.all():
            break
        done |= criterion(input_ids, ~done)
    return done


def build_stopping(config, prompt_length: int, decode: Callable[[list[int]], str] | None = None,
                   starts: int | Sequence[int] = 0) -> list:
    """The criteria a GenerationConfig asks for: the length limit (max_new_tokens, else max_length, else
    transformers' default total of 20), EOS when eos_token_id is set, stop strings when set (they need `decode`;
    `starts`, the first real column of each row, keeps left padding out of the decoded text)."""
    criteria: list = [MaxLength(config.resolved_max_length(prompt_length))]
    if config.eos_token_ids:
        criteria.append(EosToken(config.eos_token_ids))
    if config.stop_strings is not None:
        if decode is None:
            raise ValueError(f"stop_strings {config.stop_strings!r} are matched on decoded text: pass tokenizer= "
                             f"to generate (build_stopping needs its decode function, token ids -> text)")
        criteria.append(StopStrings(config.stop_strings, decode, start=starts))
    return criteria
