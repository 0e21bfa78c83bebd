"""Logits processors and warpers: the functions (input_ids (B, T), scores (B, V)) -> scores (B, V) of decoding.

Each class here mirrors one class of transformers' `generation/logits_process.py` and is tested to put -inf in
exactly the same places and to leave every other score equal (float32 tolerance): processors first (penalties,
n-gram and bad-word bans, length rules, suppression, biases), then the warpers that reshape the distribution before
sampling (temperature, top-k, top-p, min-p, typical, epsilon, eta). Frequency and presence penalties follow the
OpenAI/vLLM definitions (transformers has none). This is not a generation loop and not a sampler
(`scratch.generate.sampling`). Every class works on any backend: it takes `xp` from its inputs; the softmax is
`scratch.nn`'s and the k-th largest score `scratch.generate.selection`'s.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np  # host-side only: validating token ids and building constant bias tables, never on scores

import backends
from scratch.generate.selection import kth_largest
from scratch.nn import log_softmax, softmax

__all__ = [
    "RepetitionPenalty", "FrequencyPresencePenalty", "NoRepeatNGram", "MinLength", "MinNewTokens", "SuppressTokens",
    "SuppressTokensAtBegin", "SequenceBias", "NoBadWords", "Temperature", "TopK", "TopP", "MinP", "Typical",
    "Epsilon", "Eta", "apply", "build_processors", "token_counts", "cumulative_probs",
]


# ---------------------------------------------------------------------------------------------------------------
# Shared helpers (all Array API, all on the inputs' backend)
# ---------------------------------------------------------------------------------------------------------------

def _namespace(input_ids, scores):
    xp = backends.namespace_of(input_ids, scores)
    if scores.ndim != 2 or input_ids.ndim != 2 or input_ids.shape[0] != scores.shape[0]:
        raise ValueError(f"expected input_ids (B, T) and scores (B, V) with the same B, got shapes "
                         f"{tuple(input_ids.shape)} and {tuple(scores.shape)}")
    return xp


def _neg_inf(xp, scores):
    return xp.asarray(-math.inf, dtype=scores.dtype)


def cumulative_probs(probs):
    """Running sums along the last axis, accumulated in float64 and rounded once to the input dtype.

    subtle: this is what torch.cumsum does on the CPU (its float32 accumulator type there is double), so top-p and
    typical agree with transformers at thresholds such as 0.75 = 15 * 0.05, where a float32 running sum lands
    one ulp above. It also makes the result nearly independent of summation order, so a GPU scan rounds the same.
    """
    xp = backends.namespace_of(probs)
    return xp.astype(xp.cumulative_sum(xp.astype(probs, xp.float64), axis=-1), probs.dtype)


def _first_places(xp, values, sorted_values, count):
    """(B, V) bool: the entries that fill the first `count` (B, 1) places of each row's STABLE ascending order.

    `sorted_values` is xp.sort(values). Everything below the value at place `count` is in; of the entries equal to
    it, the lowest indices are in (that is where a stable sort puts them), as many as places remain. One running
    count replaces a stable argsort and its inverse permutation, which cost far more than a plain sort.
    """
    count = xp.clip(count, 0, values.shape[-1])                                   # (B, 1) int64
    pivot = xp.take_along_axis(sorted_values, xp.maximum(count - 1, 0), axis=-1)  # (B, 1) the last value in
    below, at = values < pivot, values == pivot                                   # (B, V)
    quota = count - xp.sum(xp.astype(below, xp.int64), axis=-1, keepdims=True)   # places left for ties
    ties = xp.sum(xp.astype(at, xp.int64), axis=-1, keepdims=True)               # (B, 1) entries at the pivot
    if bool(xp.all((ties <= quota) | (count <= 0))):   # (a row with count 0 keeps nothing anyway)
        # The usual case (one entry at the pivot): every tie fits, no rank needed -- and the running count, a
        # sequential scan over B*V entries, is the slowest step of top-p.
        return (below | at) & (count > 0)
    tie_rank = xp.cumulative_sum(xp.astype(at, xp.int64), axis=-1)               # 1, 2, ... along the ties
    return (below | (at & (tie_rank <= quota))) & (count > 0)


def token_counts(input_ids, vocab_size: int):
    """How often each token id occurs in each row: (B, T) ids -> (B, V) int64 counts. Ids outside [0, V) are ignored.

    A one-hot sum would cost B*T*V; instead every row is offset into its own block of V+1 bins, the whole batch is
    sorted once, and each bin's count is the width of its run (two binary searches). Standard operations only, so it
    runs on every backend without a scatter.
    """
    xp = backends.namespace_of(input_ids)
    batch = input_ids.shape[0]
    width = vocab_size + 1  # column V is a spare bin for ids outside the vocabulary
    ids = xp.astype(input_ids, xp.int64)
    ids = xp.where((ids >= 0) & (ids < vocab_size), ids, xp.asarray(vocab_size, dtype=xp.int64))
    offsets = xp.arange(batch, dtype=xp.int64)[:, None] * width          # (B, 1)
    flat = xp.sort(xp.reshape(ids + offsets, (-1,)))                      # (B*T,)
    bins = xp.arange(batch * width, dtype=xp.int64)                       # (B*(V+1),)
    counts = xp.searchsorted(flat, bins, side="right") - xp.searchsorted(flat, bins, side="left")
    return xp.reshape(xp.astype(counts, xp.int64), (batch, width))[:, :vocab_size]


def _vocab_mask(xp, vocab_size: int, token_ids: Sequence[int]):
    """(V,) bool: True at each id in `token_ids` (ids >= V ignored, as torch.isin ignores them)."""
    vocab = xp.arange(vocab_size, dtype=xp.int64)
    if len(token_ids) == 0:
        return vocab < 0
    ids = xp.asarray(list(token_ids), dtype=xp.int64)
    return xp.any(vocab[:, None] == ids[None, :], axis=1)


def _check_token_ids(name: str, token_ids) -> tuple[int, ...]:
    if isinstance(token_ids, (int, np.integer)) and not isinstance(token_ids, bool):
        token_ids = [token_ids]
    try:
        ids = tuple(token_ids)
    except TypeError:
        raise ValueError(f"{name} must be a token id or a list of token ids, got {token_ids!r}") from None
    for token in ids:
        if isinstance(token, bool) or not isinstance(token, (int, np.integer)) or token < 0:
            raise ValueError(f"{name} must hold non-negative integer token ids, got {token!r} in {token_ids!r}")
    return tuple(int(t) for t in ids)


def _check_positive_int(name: str, value, allow_zero=False) -> int:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        kind = "a non-negative" if allow_zero else "a positive"
        raise ValueError(f"{name} must be {kind} integer, got {value!r}")
    return int(value)


def _check_probability(name: str, value, low_open: bool, high_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    low_ok = value > 0 if low_open else value >= 0
    high_ok = value < 1 if high_open else value <= 1
    if not (low_ok and high_ok):
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------------------------
# Processors: rules that ban or penalise tokens given the context
# ---------------------------------------------------------------------------------------------------------------

class RepetitionPenalty:
    """Penalise every token already present in `input_ids` (prompt included) -- CTRL's repetition penalty.

    Rule: for a seen token, score / penalty if score >= 0, else score * penalty. Subtle: dividing a negative logit
    would *raise* it, so negatives are multiplied instead; a penalty > 1 always pushes a seen token down, < 1 pulls
    it up. A token counts once however often it occurred. `prompt_ignore_length` (transformers' name) skips the
    first positions: one int for every row, or one per row -- transformers' generate passes each row's number of
    left-padding positions, so pad tokens are not penalised. Matches RepetitionPenaltyLogitsProcessor.
    """

    def __init__(self, penalty: float, prompt_ignore_length: int | Sequence[int] | None = None):
        if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not penalty > 0 \
                or not math.isfinite(penalty):
            raise ValueError(f"repetition_penalty must be a finite number > 0, got {penalty!r}")
        self.penalty = float(penalty)
        if prompt_ignore_length is None or isinstance(prompt_ignore_length, (int, np.integer)):
            self.prompt_ignore_length = None if prompt_ignore_length is None else \
                _check_positive_int("prompt_ignore_length", prompt_ignore_length, allow_zero=True)
        else:
            self.prompt_ignore_length = tuple(_check_positive_int("prompt_ignore_length", n, allow_zero=True)
                                              for n in prompt_ignore_length)

    def __call__(self, input_ids, scores):
        xp = _namespace(input_ids, scores)
        if isinstance(self.prompt_ignore_length, int):
            input_ids = input_ids[:, self.prompt_ignore_length:]
        elif self.prompt_ignore_length is not None:
            if len(self.prompt_ignore_length) != input_ids.shape[0]:
                raise ValueError(f"prompt_ignore_length has {len(self.prompt_ignore_length)} rows, input_ids has "
                                 f"{input_ids.shape[0]}")
            skip = xp.asarray(list(self.prompt_ignore_length), dtype=xp.int64)[:, None]           # (B, 1)
            position = xp.arange(input_ids.shape[1], dtype=xp.int64)[None, :]                      # (1, T)
            input_ids = xp.where(position < skip, xp.asarray(-1, dtype=xp.int64),                  # -1: not counted
                                 xp.astype(input_ids, xp.int64))
        seen = token_counts(input_ids, scores.shape[-1]) > 0                  # (B, V)
        penalised = xp.where(scores < 0, scores * self.penalty, scores / self.penalty)
        return xp.where(seen, penalised, scores)


class FrequencyPresencePenalty:
    """OpenAI/vLLM frequency and presence penalties, counted over the generated tokens only.

    Rule: score - frequency_penalty * count - presence_penalty * (count > 0), where count is how often the token
    occurs in input_ids[:, prompt_length:]. Unlike the repetition penalty this is additive in logit space and grows
    with every repetition. Transformers has no such class; the tests compare with a plain NumPy formula.
    """

    def __init__(self, frequency_penalty: float = 0.0, presence_penalty: float = 0.0, prompt_length: int = 0):
        for name, value in (("frequency_penalty", frequency_penalty), ("presence_penalty", presence_penalty)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        self.frequency_penalty = float(frequency_penalty)
        self.presence_penalty = float(presence_penalty)
        self.prompt_length = _check_positive_int("prompt_length", prompt_length, allow_zero=True)

    def __call__(self, input_ids, scores):
        xp = _namespace(input_ids, scores)
        counts = token_counts(input_ids[:, self.prompt_length:], scores.shape[-1])   # (B, V)
        frequency = xp.astype(counts, scores.dtype)
        presence = xp.astype(counts > 0, scores.dtype)
        # vLLM's order: the frequency term, then the presence term (float32 rounding follows it).
        scores = scores - self.frequency_penalty * frequency
        return scores - self.presence_penalty * presence


class NoRepeatNGram:
    """Ban every token that would complete an n-gram already present in the row (Paulus et al., 2017).

    Rule: let the prefix be the last n-1 tokens; every earlier window of n tokens whose first n-1 tokens equal the
    prefix bans its last token. With n == 1 every token seen so far is banned. Nothing is banned while the row is
    shorter than n. Matches NoRepeatNGramLogitsProcessor.
    """

    def __init__(self, ngram_size: int):
        self.ngram_size = _check_positive_int("no_repeat_ngram_size", ngram_size)

    def __call__(self, input_ids, scores):
        xp = _namespace(input_ids, scores)
        n, length = self.ngram_size, input_ids.shape[1]
        if length < n:
            return scores
        windows = length - n + 1                                            # W windows of n tokens
        prefix = input_ids[:, length - n + 1:]                              # (B, n-1)
        matches = xp.ones((input_ids.shape[0], windows), dtype=xp.bool)     # (B, W)
        for k in range(n - 1):
            matches = matches & (input_ids[:, k:k + windows] == prefix[:, k:k + 1])
        last = xp.astype(input_ids[:, n - 1:n - 1 + windows], xp.int64)     # (B, W): each window's last token
        banned_ids = xp.where(matches, last, xp.asarray(-1, dtype=xp.int64))  # -1 is ignored by token_counts
        banned = token_counts(banned_ids, scores.shape[-1]) > 0
        return xp.where(banned, _neg_inf(xp, scores), scores)


class MinLength:
    """Forbid the end-of-sequence token(s) while the whole row (prompt included) is shorter than `min_length`.

    Matches MinLengthLogitsProcessor; note it counts the prompt, which is why `MinNewTokens` exists.
    """

    def __init__(self, min_length: int, eos_token_id):
        self.min_length = _check_positive_int("min_length", min_length, allow_zero=True)
        self.eos_token_ids = _check_token_ids("eos_token_id", eos_token_id)

    def __call__(self, input_ids, scores):
        xp = _namespace(input_ids, scores)
        if input_ids.shape[1] >= self.min_length:
            return scores
        eos = _vocab_mask(xp, scores.shape[-1], self.eos_token_ids)
        return xp.where(eos[None, :], _neg_inf(xp, scores), scores)


class MinNewTokens:
    """Forbid the end-of-sequence token(s) until `min_new_tokens` tokens follow the prompt.

    Rule: EOS gets -inf while T - prompt_length < min_new_tokens. Matches MinNewTokensLengthLogitsProcessor.
    """

    def __init__(self, prompt_length: int, min_new_tokens: int, eos_token_id):
        self.prompt_length = _check_positive_int("prompt_length", prompt_length, allow_zero=True)
        self.min_new_tokens = _check_positive_int("min_new_tokens", min_new_tokens, allow_zero=True)
        self.eos_token_ids = _check_token_ids("eos_token_id", eos_token_id)

    def __call__(self, input_ids, scores):
        xp = _namespace(input_ids, scores)
        if input_ids.shape[1] - self.prompt_length >= self.min_new_tokens:
            return scores
        eos = _vocab_mask(xp, scores.shape[-1], self.eos_token_ids)
        return xp.where(eos[None, :], _neg_inf(xp, scores), scores)


class SuppressTokens:
    """Give the listed tokens -inf at every step. Ids >= V are ignored. Matches SuppressTokensLogitsProcessor."""

    def __init__(self, suppress_tokens: Iterable[int]):
        self.suppress_tokens = _check_token_ids("suppress_tokens", suppress_tokens)

    def __call__(self, input_ids, scores):
        xp = _namespace(input_ids, scores)
        mask = _vocab_mask(xp, scores.shape[-1], self.suppress_tokens)
        return xp.where(mask[None, :], _neg_inf(xp, scores), scores)


class SuppressTokensAtBegin:
    """Give the listed tokens -inf only at the first generated step, i.e. when T == begin_index (the prompt length).

    Used by Whisper to stop a transcript starting with a blank or EOS. Matches SuppressTokensAtBeginLogitsProcessor.
    """

    def __init__(self, begin_suppress_tokens: Iterable[int], begin_index: int):
        self.begin_suppress_tokens = _check_token_ids("begin_suppress_tokens", begin_suppress_tokens)
        self.begin_index = _check_positive_int("begin_index", begin_index, allow_zero=True)

    def __call__(self, input_ids, scores):
        xp = _namespace(input_ids, scores)
        if input_ids.shape[1] != self.begin_index:
            return scores
        mask = _vocab_mask(xp, scores.shape[-1], self.begin_suppress_tokens)
        return xp.where(mask[None, :], _neg_inf(xp, scores), scores)


def _sequence_bias_items(sequence_bias) -> dict[tuple[int, ...], float]:
    """Normalise {(ids...): bias} or [[ids, bias], ...] into an ordered dict, validating every entry."""
    if isinstance(sequence_bias, dict):
        items = list(sequence_bias.items())
    elif isinstance(sequence_bias, (list, tuple)):
        items = []
        for entry in sequence_bias:
            if not isinstance(entry, (list, tuple)) or len(entry) != 2:
                raise ValueError(f"sequence_bias entries must be [token_ids, bias] pairs, got {entry!r}")
            items.append((entry[0], entry[1]))
    else:
        raise ValueError(f"sequence_bias must be a dict {{(ids...): bias}} or a list of [ids, bias] pairs, "
                         f"got {sequence_bias!r}")
    if not items:
        raise ValueError("sequence_bias must not be empty")
    result: dict[tuple[int, ...], float] = {}
    for ids, bias in items:
        ids = _check_token_ids("sequence_bias key", ids)
        if not ids:
            raise ValueError(f"sequence_bias keys must be non-empty token sequences, got {ids!r}")
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or math.isnan(bias):
            raise ValueError(f"sequence_bias values must be numbers, got {bias!r} for {ids!r}")
        result[ids] = float(bias)  # a repeated key keeps its last bias, as a dict literal would
    return result


class SequenceBias:
    """Add a bias to a token's score, or to the last token of a sequence whose other tokens end the context.

    Rule: a single-token entry (t,): b always adds b to score[t]. A longer entry (t1, ..., tn): b adds b to
    score[tn] only in rows whose last n-1 tokens are t1..tn-1 (a multi-token "logit bias"). Entries that hit the
    same token add up. Matches SequenceBiasLogitsProcessor (same float32 summation order: single-token biases
    first, then longer entries grouped by length in order of first appearance).
    """

    parameter = "sequence_bias"  # the generation parameter this processor comes from, for its error messages

    def __init__(self, sequence_bias):
        self._setup(_sequence_bias_items(sequence_bias))

    def _setup(self, sequence_bias: dict[tuple[int, ...], float]):
        self.sequence_bias = sequence_bias
        self._single_cache: dict[tuple[str, int], object] = {}
        groups: dict[int, list[tuple[tuple[int, ...], float]]] = {}
        for ids, bias in self.sequence_bias.items():
            if len(ids) > 1:
                groups.setdefault(len(ids) - 1, []).append((ids, bias))
        self._multi = [entry for group in groups.values() for entry in group]

    def _single_bias(self, scores, vocab_size: int):
        """(V,) float32 single-token bias, built on the host once per backend and vocabulary size (a constant)."""
        backend = backends.of(scores)
        key = (backend.name, vocab_size)
        if key not in self._single_cache:
            host = np.zeros(vocab_size, dtype=np.float32)
            for ids, bias in self.sequence_bias.items():
                if len(ids) == 1:
                    host[ids[0]] = bias
            self._single_cache[key] = backend.asarray(host, dtype="float32")
        return self._single_cache[key]

    def __call__(self, input_ids, scores):
        xp = _namespace(input_ids, scores)
        vocab_size, length = scores.shape[-1], input_ids.shape[1]
        out_of_vocab = sorted({t for ids in self.sequence_bias for t in ids if t >= vocab_size})
        if out_of_vocab:
            raise ValueError(f"the vocabulary has {vocab_size} tokens, but {self.parameter} names token ids "
                             f"{out_of_vocab}")
        bias = xp.zeros(scores.shape, dtype=scores.dtype) + xp.astype(self._single_bias(scores, vocab_size),
                                                                      scores.dtype)
        vocab = xp.arange(vocab_size, dtype=xp.int64)
        zero = xp.asarray(0.0, dtype=scores.dtype)
        for ids, value in self._multi:
            prefix_length = len(ids) - 1
            if prefix_length > length:  # the context is shorter than the prefix: cannot match
                continue
            prefix = xp.asarray(list(ids[:-1]), dtype=xp.int64)
            match = xp.all(xp.astype(input_ids[:, length - prefix_length:], xp.int64) == prefix[None, :], axis=1)
            hit = match[:, None] & (vocab == ids[-1])[None, :]                # (B, V)
            bias = bias + xp.where(hit, xp.asarray(value, dtype=scores.dtype), zero)
        return scores + bias


class NoBadWords(SequenceBias):
    """Ban token sequences: a bias of -inf on the last token of each listed sequence whose prefix ends the context.

    A single-token entry is banned everywhere; [a, b, c] bans c only right after a, b. Subtle: an entry that is
    exactly one EOS id is dropped (banning EOS outright would make generation endless), as transformers does.
    Matches NoBadWordsLogitsProcessor.
    """

    parameter = "bad_words_ids"

    def __init__(self, bad_words_ids, eos_token_id=None):
        if not isinstance(bad_words_ids, (list, tuple)) or len(bad_words_ids) == 0:
            raise ValueError(f"bad_words_ids must be a non-empty list of token-id lists, got {bad_words_ids!r}")
        sequences = []
        for entry in bad_words_ids:
            if not isinstance(entry, (list, tuple)):
                raise ValueError(f"bad_words_ids must be a list of lists of token ids, got entry {entry!r}")
            sequences.append(_check_token_ids("bad_words_ids", entry))
        eos = _check_token_ids("eos_token_id", eos_token_id) if eos_token_id is not None else ()
        sequences = [s for s in sequences if not (len(s) == 1 and s[0] in eos)]
        self.bad_words_ids = tuple(sequences)
        # (If every entry was an EOS id nothing is left to ban and this is the identity; transformers raises.)
        self._setup({s: -math.inf for s in sequences})


# ---------------------------------------------------------------------------------------------------------------
# Warpers: reshape the distribution before sampling (transformers applies them only when do_sample=True)
# ---------------------------------------------------------------------------------------------------------------

class Temperature:
    """Divide every score by the temperature: < 1 sharpens the distribution, > 1 flattens it.

    Temperature 0 is not a division: it means greedy decoding, and the caller (the config) chooses argmax instead
    of building this warper. Matches TemperatureLogitsWarper.
    """

    def __init__(self, temperature: float):
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0 \
                or not math.isfinite(temperature):
            raise ValueError(f"temperature must be a finite number > 0 here (0 means greedy: use argmax), "
                             f"got {temperature!r}")
        self.temperature = float(temperature)

    def __call__(self, input_ids, scores):
        _namespace(input_ids, scores)
        return scores / self.temperature


class TopK:
    """Keep the k highest scores; the rest get -inf (Fan et al., 2018).

    Rule: remove every score strictly below the k-th largest. Subtle: ties at the boundary are all KEPT, so more
    than k tokens can survive (scores [3, 2, 2, 1] with k=2 keep three), and -inf entries never count against k.
    k is raised to min_tokens_to_keep and capped at V. Matches TopKLogitsWarper.
    """

    def __init__(self, top_k: int, min_tokens_to_keep: int = 1):
        self.top_k = _check_positive_int("top_k", top_k)
        self.min_tokens_to_keep = _check_positive_int("min_tokens_to_keep", min_tokens_to_keep)

    def __call__(self, input_ids, scores):
        xp = _namespace(input_ids, scores)
        kth = kth_largest(scores, max(self.top_k, self.min_tokens_to_keep))       # (B, 1)
        return xp.where(scores < kth, _neg_inf(xp, scores), scores)


class TopP:
    """Nucleus sampling: keep the smallest set of most-probable tokens whose total probability reaches top_p.

    Rule (computed as transformers does, from the bottom): sort ascending, cumulate the softmax, and remove the
    tokens whose cumulative probability is <= 1 - top_p. Subtle: the token that crosses the threshold is KEPT, so
    the kept mass is >= top_p; the min_tokens_to_keep most probable tokens always survive. Ties at the boundary
    are broken by a stable sort (the lower index is removed first), which is what torch.sort does for rows of up
    to 16 entries; for longer rows torch's order among equal scores is unspecified, so there transformers agrees
    with this class only up to which of the equal tokens survive. Matches TopPLogitsWarper.
    """

    def __init__(self, top_p: float, min_tokens_to_keep: int = 1):
        self.top_p = _check_probability("top_p", top_p, low_open=False, high_open=False)
        self.min_tokens_to_keep = _check_positive_int("min_tokens_to_keep", min_tokens_to_keep)

    def __call__(self, input_ids, scores):
        xp = _namespace(input_ids, scores)
        vocab_size = scores.shape[-1]
        sorted_scores = xp.sort(scores, axis=-1)                              # (B, V) ascending
        cumulative = cumulative_probs(softmax(sorted_scores))                 # (B, V), ends near 1
        # subtle: 1 - top_p is formed in float64 and rounded once to the scores' dtype, as torch does.
        threshold = xp.asarray(1.0 - self.top_p, dtype=scores.dtype)
        # The cumulative sum only grows, so the removed places are a prefix of the ascending order: count them.
        removed = xp.sum(xp.astype(cumulative <= threshold, xp.int64), axis=-1, keepdims=True)   # (B, 1)
        removed = xp.minimum(removed, xp.asarray(max(vocab_size - self.min_tokens_to_keep, 0), dtype=xp.int64))
        remove = _first_places(xp, scores, sorted_scores, removed)
        return xp.where(remove, _neg_inf(xp, scores), scores)


class MinP:
    """Min-p sampling: keep tokens whose probability is at least min_p times the top token's probability.

    Rule: remove p < min_p * max(p). The threshold scales with the model's confidence: a sharp distribution keeps
    few tokens, a flat one keeps many. The min_tokens_to_keep most probable tokens always survive (ties broken by
    lower index). Matches MinPLogitsWarper.
    """

    def __init__(self, min_p: float, min_tokens_to_keep: int = 1):
        self.min_p = _check_probability("min_p", min_p, low_open=False, high_open=False)
        self.min_tokens_to_keep = _check_positive_int("min_tokens_to_keep", min_tokens_to_keep)

    def __call__(self, input_ids, scores):
        xp = _namespace(input_ids, scores)
        probs = softmax(scores)
        top = xp.max(probs, axis=-1, keepdims=True)                           # (B, 1)
        remove = probs < self.min_p * top
        keep = min(self.min_tokens_to_keep, scores.shape[-1])
        if keep > 1:  # with one token to keep, the top token already passes (min_p <= 1)
            # The `keep` most probable tokens are the first places of the ascending order of -p.
            top_places = _first_places(xp, -probs, xp.sort(-probs, axis=-1),
                                       xp.full((probs.shape[0], 1), keep, dtype=xp.int64))
            remove = remove & ~top_places
        return xp.where(remove, _neg_inf(xp, scores), scores)


class Typical:
    """Locally typical sampling (Meister et al., 2022): keep tokens whose surprise is closest to the entropy.

    Rule: sort tokens by |-log p - H| ascending, and keep them until their cumulative probability reaches `mass`;
    the token that crosses it is kept, and so is every token tied with it on |-log p - H|. The first
    min_tokens_to_keep tokens of that order always survive. Matches TypicalLogitsWarper (stable-sort ties, as TopP),
    except that two tokens whose |-log p - H| differ only by rounding error may be ordered differently: the last bit
    of exp and log differs between torch and NumPy.
    """

    def __init__(self, mass: float, min_tokens_to_keep: int = 1):
        self.mass = _check_probability("typical_p", mass, low_open=True, high_open=True)
        self.min_tokens_to_keep = _check_positive_int("min_tokens_to_keep", min_tokens_to_keep)

    def __call__(self, input_ids, scores):
        xp = _namespace(input_ids, scores)
        vocab_size = scores.shape[-1]
        logp = log_softmax(scores)
        p = xp.exp(logp)
        # subtle: a -inf logit gives -inf * 0 = nan, which torch.nansum drops; zeroing -inf first drops it too.
        finite_logp = xp.where(xp.isinf(logp), xp.asarray(0.0, dtype=scores.dtype), logp)
        entropy = -xp.sum(finite_logp * p, axis=-1, keepdims=True)             # (B, 1)
        surprise_gap = xp.abs(-logp - entropy)                                 # (B, V)
        order = xp.argsort(surprise_gap, axis=-1, stable=True)                  # (B, V) most typical first
        sorted_gap = xp.take_along_axis(surprise_gap, order, axis=-1)
        cumulative = cumulative_probs(softmax(xp.take_along_axis(scores, order, axis=-1)))
        last = xp.sum(xp.astype(cumulative < self.mass, xp.int64), axis=-1, keepdims=True)
        last = xp.minimum(last, xp.asarray(vocab_size - 1, dtype=xp.int64))    # (B, 1) the place that crosses
        # Kept: every token whose gap is <= the crossing token's (ties with it included), and at least the first
        # min_tokens_to_keep places -- together a prefix of the order, of this length:
        kept = xp.sum(xp.astype(sorted_gap <= xp.take_along_axis(sorted_gap, last, axis=-1), xp.int64),
                      axis=-1, keepdims=True)
        kept = xp.maximum(kept, xp.asarray(min(self.min_tokens_to_keep, vocab_size), dtype=xp.int64))
        remove = ~_first_places(xp, surprise_gap, sorted_gap, kept)
        return xp.where(remove, _neg_inf(xp, scores), scores)


class Epsilon:
    """Epsilon sampling (Hewitt et al., 2022): remove tokens whose probability is below a fixed epsilon.

    The min_tokens_to_keep highest scores (ties at the boundary all kept) always survive. Matches
    EpsilonLogitsWarper.
    """

    def __init__(self, epsilon: float, min_tokens_to_keep: int = 1):
        self.epsilon = _check_probability("epsilon_cutoff", epsilon, low_open=True, high_open=True)
        self.min_tokens_to_keep = _check_positive_int("min_tokens_to_keep", min_tokens_to_keep)

    def __call__(self, input_ids, scores):
        xp = _namespace(input_ids, scores)
        remove = (softmax(scores) < self.epsilon) & (scores < kth_largest(scores, self.min_tokens_to_keep))
        return xp.where(remove, _neg_inf(xp, scores), scores)


class Eta:
    """Eta sampling (Hewitt et al., 2022): an epsilon cutoff that adapts to the entropy H of the distribution.

    Rule: remove p < eta with eta = min(epsilon, sqrt(epsilon) * exp(-H)): a confident (low-entropy) distribution
    gets the full epsilon, a flat one a smaller cutoff. The min_tokens_to_keep highest scores always survive.
    Matches EtaLogitsWarper (epsilon held as a float32 scalar, as there).
    """

    def __init__(self, epsilon: float, min_tokens_to_keep: int = 1):
        self.epsilon = _check_probability("eta_cutoff", epsilon, low_open=True, high_open=True)
        self.min_tokens_to_keep = _check_positive_int("min_tokens_to_keep", min_tokens_to_keep)

    def __call__(self, input_ids, scores):
        xp = _namespace(input_ids, scores)
        probs = softmax(scores)
        logp = log_softmax(scores)
        # subtle: -inf log-probabilities are clamped to the dtype's most negative value (0 * finite = 0), as
        # torch.distributions.Categorical.entropy does.
        logp = xp.maximum(logp, xp.asarray(xp.finfo(scores.dtype).min, dtype=scores.dtype))
        entropy = -xp.sum(logp * probs, axis=-1, keepdims=True)                  # (B, 1)
        epsilon = xp.asarray(self.epsilon, dtype=scores.dtype)
        eta = xp.minimum(epsilon, xp.sqrt(epsilon) * xp.exp(-entropy))
        remove = (probs < eta) & (scores < kth_largest(scores, self.min_tokens_to_keep))
        return xp.where(remove, _neg_inf(xp, scores), scores)


# ---------------------------------------------------------------------------------------------------------------
# Composition
# ---------------------------------------------------------------------------------------------------------------

def apply(processors, input_ids, scores):
    """Run `processors` in order: each maps (input_ids (B, T), scores (B, V)) -> scores (B, V)."""
    for processor in processors:
        scores = processor(input_ids, scores)
    return scores


def build_processors(config, prompt_length: int | None = None, padding_lengths: Sequence[int] | None = None) -> list:
    """The processors and warpers a GenerationConfig asks for, in transformers' `_get_logits_processor` order.

    Order: sequence bias, repetition penalty, (frequency/presence penalty -- not in transformers, placed next to
    its sibling), no-repeat n-gram, bad words, min length, min new tokens, suppress tokens, begin-suppress tokens;
    then, only when sampling: temperature, top-k, top-p, min-p, typical, epsilon, eta. `prompt_length` (T of the
    prompt) is needed by min_new_tokens, begin_suppress_tokens and the frequency/presence penalties.
    `padding_lengths` (one per row: the number of left-padding positions) keeps pads out of the repetition
    penalty, as transformers' generate does when it is given an attention mask.
    Greedy decoding (do_sample=False, or temperature 0) gets no warpers, as in transformers.
    """
    def need_prompt(name):
        if prompt_length is None:
            raise ValueError(f"build_processors needs prompt_length when {name} is set")
        return prompt_length

    eos = config.eos_token_ids
    processors: list = []
    if config.sequence_bias is not None:
        processors.append(SequenceBias(dict(config.sequence_bias)))
    if config.repetition_penalty != 1.0:
        processors.append(RepetitionPenalty(config.repetition_penalty, prompt_ignore_length=padding_lengths))
    if config.frequency_penalty != 0.0 or config.presence_penalty != 0.0:
        processors.append(FrequencyPresencePenalty(config.frequency_penalty, config.presence_penalty,
                                                   need_prompt("frequency_penalty/presence_penalty")))
    if config.no_repeat_ngram_size > 0:
        processors.append(NoRepeatNGram(config.no_repeat_ngram_size))
    if config.bad_words_ids is not None:
        processors.append(NoBadWords([list(s) for s in config.bad_words_ids], eos or None))
    if config.min_length > 0 and eos:
        processors.append(MinLength(config.min_length, eos))
    if config.min_new_tokens > 0 and eos:
        processors.append(MinNewTokens(need_prompt("min_new_tokens"), config.min_new_tokens, eos))
    if config.suppress_tokens is not None:
        processors.append(SuppressTokens(config.suppress_tokens))
    if config.begin_suppress_tokens is not None:
        processors.append(SuppressTokensAtBegin(config.begin_suppress_tokens, need_prompt("begin_suppress_tokens")))
    if not config.is_sampling:
        return processors
    # Beam sampling keeps one token more than there are EOS ids, so some beam can always continue.
    keep = (len(eos) + 1 if eos else 2) if config.num_beams > 1 else 1
    if config.temperature != 1.0:
        processors.append(Temperature(config.temperature))
    if config.top_k != 0:
        processors.append(TopK(config.top_k, keep))
    if config.top_p < 1.0:
        processors.append(TopP(config.top_p, keep))
    if config.min_p is not None:
        processors.append(MinP(config.min_p, keep))
    if config.typical_p < 1.0:
        processors.append(Typical(config.typical_p, keep))
    if 0.0 < config.epsilon_cutoff < 1.0:
        processors.append(Epsilon(config.epsilon_cutoff, keep))
    if 0.0 < config.eta_cutoff < 1.0:
        processors.append(Eta(config.eta_cutoff, keep))
    return processors
