"""Beam search and beam sampling: keep the num_beams best partial sequences of each prompt.

transformers 5's `_beam_search`, matched token for token and score for score, in its named steps: choose candidates
(the best K = max(2, 1 + #EOS) * num_beams of all num_beams * V one-token continuations by summed log-probability;
beam sampling draws them), keep running beams (the best num_beams candidates that did not end), finish hypotheses
(ended candidates among the top num_beams join a per-prompt list scored sum_logprobs / generated ** length_penalty).
All beams share one model call and one KV cache (reordered once per step); selection runs on the backend, the (B, K)
bookkeeping in float32 NumPy on the host. Not here: diverse (group) beam search (group_beam.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np  # host side only: the (B, K) candidates' bookkeeping, token ids and masks

import backends
from scratch.generate.output import GenerateOutput, last_scores, new_record, record_step, recorded_outputs
from scratch.generate.processors import apply
from scratch.generate.prompt import new_token_budget, processors_for
from scratch.generate.sampling import sample_from_probs
from scratch.generate.selection import top_k
from scratch.generate.stopping import any_stop, build_stopping
from scratch.nn import log_softmax, softmax

__all__ = ["beam_search", "beam_sample", "BeamModel", "beam_output", "length_divisor", "NEG"]

NEG = np.float32(-1.0e9)  # transformers' "impossible" score: added, never compared with ==, so float32 is fine


def beam_search(model, prompt, config, decode=None):
    """Beam search (num_beams > 1, no sampling): see the module docstring. Returns a GenerateOutput with
    sequences (B * num_return_sequences, T_out) and sequences_scores (B * num_return_sequences,) float32.
    `decode` (ids -> text) is needed for config.stop_strings: a candidate whose text ends a stop string is finished
    like one that ends with EOS, as transformers 5 asks its stopping criteria about every candidate."""
    return _beam(model, prompt, config, rng=None, decode=decode)


def beam_sample(model, prompt, config, rng=None, decode=None):
    """Beam sampling: beam search where each step DRAWS the K continuations (without replacement, probability
    softmax of the accumulated, warped log-probabilities) from the host generator `rng`, instead of taking the
    best K. The same seed gives the same tokens on every backend; not the same tokens as torch's sampler."""
    return _beam(model, prompt, config, rng=backends.rng(config.seed) if rng is None else rng, decode=decode)


def _beam(model, prompt, config, rng, decode):
    """The loop shared by beam search (rng None) and beam sampling."""
    max_new = new_token_budget(prompt, config, model, rows=prompt.batch_size * config.num_beams)
    if config.num_return_sequences > config.num_beams:
        raise ValueError(f"num_return_sequences ({config.num_return_sequences}) must be <= num_beams "
                         f"({config.num_beams})")
    B, T, num_beams = prompt.batch_size, prompt.length, config.num_beams
    K = max(2, 1 + len(config.eos_token_ids)) * num_beams   # enough that num_beams go on even if many ended
    # The repetition penalty skips each beam's left padding, as transformers 5 does (after expanding the mask).
    processors = processors_for(config, prompt.repeat(num_beams))
    stopping = build_stopping(config, T, decode, starts=np.repeat(T - prompt.lengths, K))   # asked per candidate
    record = new_record(config)

    running = _start(prompt, num_beams, max_new)     # the prompt num_beams times; only beam 0 may expand at first
    finished = _no_hypotheses(running)               # num_beams empty slots (score -1e9) per prompt
    improvable = np.ones(B, dtype=bool)              # is_early_stop_heuristic_unsatisfied
    beams = BeamModel(model, prompt, num_beams, max_new)
    scores = beams.first_scores                      # (B * num_beams, V)
    for step in range(max_new):
        cur = T + step                               # tokens so far; the candidates write column cur
        logp = _log_probs(model.backend, processors, scores, running, cur, record, config)   # (B * num_beams, V)
        candidates = _choose_candidates(model.backend, logp, running, K, cur, step, rng)      # (B, K) best first
        ended = any_stop(stopping, candidates.sequences[:, :, :cur + 1].reshape(B * K, cur + 1)).reshape(B, K)
        running, parents = _keep_running_beams(candidates, ended, num_beams, step)
        finished = _finish_hypotheses(finished, candidates, ended, improvable, step + 1, config)
        improvable = _still_improvable(improvable, running, finished, step + 1, max_new, config)
        if not _any_unfinished(improvable, finished, ended, config):
            break
        scores = beams.advance(parents, running.sequences[:, :, cur].reshape(-1))
    return beam_output(prompt, finished.sequences, finished.scores, finished.lengths, config.num_return_sequences,
                       finished.beam_rows, record, config)


# ---------------------------------------------------------------------------------------------------------------
# The named steps
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class _Beams:
    """n sequences per prompt, host arrays (transformers' names in the comments): the running beams, this step's
    candidates, or the finished hypotheses.

    sequences (B, n, max_length) int64, pad-filled past the end (running_sequences / sequences);
    scores (B, n) float32: summed log-probabilities, length-penalised for finished ones (running_beam_scores /
        beam_scores); -1e9 marks a dead beam or an empty slot;
    beam_rows (B, n, max_new) int64: the flat running row (b * num_beams + beam) continued at each step, -1 after
        (running_beam_indices / beam_indices);
    lengths (B, n) int64 generated tokens, and is_finished (B, n) bool (is_sent_finished): finished ones only.
    """

    sequences: np.ndarray
    scores: np.ndarray
    beam_rows: np.ndarray
    lengths: np.ndarray | None = None
    is_finished: np.ndarray | None = None

    def take(self, index: np.ndarray) -> "_Beams":
        """The beams index (B, m) picks in each prompt."""
        return _Beams(*(None if a is None else _gather(a, index) for a in self._arrays()))

    def join(self, other: "_Beams") -> "_Beams":
        """Both sets side by side, (B, n + m)."""
        return _Beams(*(np.concatenate([a, b], axis=1) for a, b in zip(self._arrays(), other._arrays())))

    def _arrays(self):
        return self.sequences, self.scores, self.beam_rows, self.lengths, self.is_finished


def _log_probs(backend, processors, scores, running: _Beams, cur: int, record, config):
    """The next token's log-probabilities for every running beam (B * num_beams, V): log-softmax, then the
    processors (and warpers when sampling) on them, as transformers 5 does; recorded before the beam sums."""
    logp = log_softmax(scores)                                      # (B * num_beams, V) float32
    if processors:
        B, num_beams = running.scores.shape
        context = backend.asarray(running.sequences[:, :, :cur].reshape(B * num_beams, cur), dtype="int64")
        logp = apply(processors, context, logp)
    if record is not None:   # transformers' `logits` and `scores`: (B * num_beams, V) per step
        record_step(record, backend, config, scores, logp)
    return logp


def _choose_candidates(backend, logp, running: _Beams, K: int, cur: int, step: int, rng) -> _Beams:
    """Choose candidates: of each prompt's num_beams * V continuations, the K with the best running score + logp
    (beam sampling: K drawn), best first, on the host. Candidate c continues beam c // V with token c % V, written
    at column `cur` of its sequence (generation step `step`)."""
    xp = backend.xp
    B, num_beams = running.scores.shape
    V = logp.shape[-1]
    total = logp + backend.asarray(running.scores.reshape(B * num_beams, 1), dtype="float32")
    total = xp.reshape(total, (B, num_beams * V))
    if rng is None:
        values, flat = top_k(total, K)
    else:
        values, flat = _sample_without_replacement(rng, backend, total, K)
    values = backend.to_numpy(values).astype(np.float32, copy=False)          # (B, K) the one sync per step
    flat = backend.to_numpy(flat).astype(np.int64, copy=False)
    parent, token = flat // V, flat % V                                       # (B, K)
    candidates = running.take(parent)
    candidates.sequences[:, :, cur] = token
    candidates.beam_rows[:, :, step] = np.arange(B)[:, None] * num_beams + parent
    candidates.scores = values
    return candidates


def _keep_running_beams(candidates: _Beams, ended: np.ndarray, num_beams: int, step: int):
    """Keep running beams: the best num_beams candidates that did not end (an ended one scores -1e9 more). Returns
    them and parents (B * num_beams,), the flat running row each new beam continues (for the cache reorder)."""
    alive = _Beams(candidates.sequences, candidates.scores + ended.astype(np.float32) * NEG, candidates.beam_rows)
    _, keep = top_k(alive.scores, num_beams)                                 # (B, num_beams)
    running = alive.take(keep)
    return running, running.beam_rows[:, :, step].reshape(-1)


def _finish_hypotheses(finished: _Beams, candidates: _Beams, ended: np.ndarray, improvable: np.ndarray,
                       generated: int, config) -> _Beams:
    """Finish hypotheses: the ended candidates among the top num_beams join each prompt's finished list, scored
    sum_logprobs / generated ** length_penalty (generated counts the EOS token, not the prompt); the list keeps its
    num_beams best. It no longer changes once it is final (early_stopping=True and full) or cannot improve."""
    B, K = ended.shape
    num_beams = finished.scores.shape[1]
    just_finished = ended & (np.arange(K) < num_beams)[None, :]
    normalised = candidates.scores / np.float32(length_divisor(generated, config.length_penalty))
    full = finished.is_finished.all(axis=1, keepdims=True) & (config.early_stopping is True)
    normalised = normalised + full.astype(np.float32) * NEG
    normalised = normalised + (~improvable[:, None]).astype(np.float32) * NEG
    normalised = normalised + (~just_finished).astype(np.float32) * NEG
    entering = _Beams(candidates.sequences, normalised, candidates.beam_rows, np.full((B, K), generated),
                      just_finished)
    merged = finished.join(entering)                                         # (B, num_beams + K)
    _, best = top_k(merged.scores, num_beams)
    return merged.take(best)


def _still_improvable(improvable, running: _Beams, finished: _Beams, generated: int, max_new: int, config):
    """(B,) bool: can a running beam still beat the worst finished hypothesis? Sticky: once False, stays False.

    The best running beam's score, length-normalised by a guess at its final length:
    - early_stopping False: its current generated length (exact when length_penalty <= 0, a heuristic otherwise);
    - early_stopping "never": the longest it may become (max_new) when length_penalty > 0 -- the only guess that
      never stops too early; else its current length.
    A prompt with a free finished slot is always improvable. (early_stopping True stops once num_beams hypotheses
    are finished, in `_any_unfinished`.)
    """
    length_penalty = config.length_penalty
    best_length = max_new if (config.early_stopping == "never" and length_penalty > 0) else generated
    best_running = running.scores[:, :1] / np.float32(length_divisor(best_length, length_penalty))   # (B, 1)
    worst_finished = np.where(finished.is_finished, finished.scores.min(axis=1, keepdims=True), NEG)
    return improvable & (best_running > worst_finished).any(axis=1)


def _any_unfinished(improvable, finished: _Beams, ended: np.ndarray, config) -> bool:
    """Is any prompt still going? (transformers runs the whole batch until none is.)"""
    final = finished.is_finished.all() and config.early_stopping is True
    return bool(improvable.any()) and not final and not ended.all()


# ---------------------------------------------------------------------------------------------------------------
# Helpers: the starting beams, beam sampling's draw, the model side, the output
# ---------------------------------------------------------------------------------------------------------------

def _start(prompt, num_beams: int, max_new: int) -> _Beams:
    """The running beams before the first step: the prompt num_beams times, pad-filled to max_length. The beams
    start equal, so only beam 0 may expand (the others score -1e9): else one token would be chosen num_beams times."""
    B, T = prompt.batch_size, prompt.length
    sequences = np.full((B, num_beams, T + max_new), prompt.pad_token_id, dtype=np.int64)
    sequences[:, :, :T] = prompt.input_ids[:, None, :]
    scores = np.zeros((B, num_beams), dtype=np.float32)
    scores[:, 1:] = NEG
    return _Beams(sequences, scores, np.full((B, num_beams, max_new), -1, dtype=np.int64))


def _no_hypotheses(running: _Beams) -> _Beams:
    """The finished list before the first step: num_beams empty slots per prompt (score -1e9, not finished)."""
    B, num_beams = running.scores.shape
    return _Beams(running.sequences.copy(), np.full((B, num_beams), NEG, dtype=np.float32),
                  running.beam_rows.copy(), np.zeros((B, num_beams), dtype=np.int64),
                  np.zeros((B, num_beams), dtype=bool))


def _gather(array: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """array (B, N, ...) gathered along axis 1 by indices (B, M) -> (B, M, ...)."""
    return array[np.arange(array.shape[0])[:, None], indices]


def length_divisor(length: int, length_penalty) -> float:
    """length ** length_penalty as transformers computes it (a Python number; the tensor division is float32)."""
    return length ** length_penalty


def _sample_without_replacement(rng, backend, scores, k: int):
    """k distinct indices per row drawn with probability softmax(scores), one after another (what
    torch.multinomial(replacement=False) does), then sorted best score first as transformers sorts them.

    Each draw inverts the CDF of the renormalised remaining mass at a host uniform. Subtle: when a row has fewer
    than k entries of non-zero probability, the rest are taken best score first (torch raises instead).
    """
    xp = backend.xp
    B, N = scores.shape
    probs = softmax(scores)                                                     # (B, N)
    columns = xp.reshape(xp.arange(N, dtype=xp.int64), (1, N))
    picked = []
    remaining = scores
    for pick in range(k):
        mass = xp.sum(probs, axis=-1, keepdims=True)                            # (B, 1)
        safe = xp.where(mass > 0, mass, xp.ones_like(mass))
        usable = probs / safe        # the first draw: a row with nothing to draw from raises in sample_from_probs
        if pick:  # a row whose mass is used up draws from a placeholder (its draw is not used); NaN still raises
            usable = xp.where(mass == 0, xp.full_like(probs, 1.0 / N), usable)
        drawn = sample_from_probs(usable, backend.random_uniform(rng, (B,), dtype="float32"))
        best_left = xp.astype(xp.argmax(remaining, axis=-1), xp.int64)
        index = xp.where(mass[:, 0] > 0, drawn, best_left)                      # (B,)
        picked.append(index)
        taken = columns == xp.reshape(index, (B, 1))
        probs = xp.where(taken, xp.zeros_like(probs), probs)
        remaining = xp.where(taken, xp.asarray(-math.inf, dtype=scores.dtype), remaining)
    indices = xp.stack(picked, axis=1)                                          # (B, k)
    values = xp.take_along_axis(scores, indices, axis=-1)
    order = xp.argsort(-values, axis=-1, stable=True)
    return xp.take_along_axis(values, order, axis=-1), xp.take_along_axis(indices, order, axis=-1)


class BeamModel:
    """The model side of a beam strategy: B prompts expanded to B * num_beams rows that share one cache.

    The prompt is run once per prompt (B rows, not B * num_beams: the beams start identical), and the first
    `advance` expands the cache while it reorders it. `advance(parents, tokens)` makes row r continue from row
    parents[r] with tokens[r] and returns the next scores (B * num_beams, V) float32.
    """

    def __init__(self, model, prompt, num_beams: int, max_new: int):
        self.model, self.backend = model, model.backend
        B, T = prompt.batch_size, prompt.length
        self.cache = model.new_cache(B, T + max_new)                    # reorder copies the written part only
        mask = prompt.model_mask(max_new)                               # (B, T + max_new) host or None
        self.mask = None
        if mask is not None:
            self.mask = self.backend.asarray(np.repeat(mask, num_beams, axis=0), dtype="int64")
        self.length = T
        logits = model(self.backend.asarray(prompt.input_ids, dtype="int64"), cache=self.cache,
                       attention_mask=None if mask is None else self.backend.asarray(mask[:, :T], dtype="int64"),
                       logits_to_keep=1)                                # (B, 1, V): the prompt's last position
        self.expanded = False
        self.rows_per_cache_row = num_beams          # before expanding, cache row b holds beams b * num_beams + j
        xp = self.backend.xp
        last = last_scores(xp, logits)                                  # (B, V)
        self.first_scores = xp.take(last, xp.asarray(np.repeat(np.arange(B), num_beams), dtype=xp.int64), axis=0)

    def advance(self, parents: np.ndarray, tokens: np.ndarray):
        """parents (B * num_beams,) host int: the row each new row continues; tokens (B * num_beams,) host int64."""
        if not self.expanded:
            self.cache.reorder(self.backend.asarray(parents // self.rows_per_cache_row, dtype="int64"))
            self.expanded = True
        elif not np.array_equal(parents, np.arange(parents.shape[0])):
            self.cache.reorder(self.backend.asarray(parents, dtype="int64"))
        self.length += 1
        mask = None if self.mask is None else self.mask[:, :self.length]
        logits = self.model(self.backend.asarray(tokens.reshape(-1, 1), dtype="int64"), cache=self.cache,
                            attention_mask=mask)
        return last_scores(self.backend.xp, logits)   # transformers scores in float32 whatever the model dtype


def beam_output(prompt, sequences: np.ndarray, scores: np.ndarray, lengths: np.ndarray, num_return: int,
                beam_rows: np.ndarray | None = None, record: list | None = None, config=None) -> GenerateOutput:
    """(B, n, T_max) finished hypotheses, best first -> GenerateOutput of the best num_return per prompt, cut to
    the prompt plus the longest returned generation. `beam_rows` (B, n, max_new): each hypothesis' beam row per
    step (-1 past its end), returned as beam_indices when there is a `record` (per step: raw logits, log-probs)."""
    B = sequences.shape[0]
    generated = int(lengths[:, :num_return].max())
    T_out = prompt.length + generated
    returned = sequences[:, :num_return, :T_out].reshape(B * num_return, T_out).copy()
    extra = recorded_outputs(record, config)
    if record is not None:
        extra["beam_indices"] = beam_rows[:, :num_return, :generated].reshape(B * num_return, generated).copy()
    return GenerateOutput(sequences=returned,
                          sequences_scores=scores[:, :num_return].reshape(-1).astype(np.float32), **extra)
