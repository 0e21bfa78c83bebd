"""Beam search, beam sampling and diverse (group) beam search: keep the num_beams best partial sequences per prompt.

Beam search (as in transformers 5's `_beam_search`, which this file matches token for token and score for score):
every step scores all num_beams * V one-token continuations by their summed log-probability, keeps the best K =
max(2, 1 + #EOS) * num_beams, moves those that just ended (EOS, a stop string, the length limit) among the top
num_beams to a per-prompt list of finished hypotheses scored sum_logprobs / generated_length ** length_penalty, and
continues with the best num_beams that did not end. `early_stopping` says when a prompt is done (see
`_still_improvable`). Beam sampling draws the K continuations instead of taking the best. Group beam search
(Vijayakumar et al. 2016, "Diverse Beam Search") splits the beams into groups that penalise tokens the earlier
groups chose this step; it left transformers' core in v5, so it follows transformers 4's `_group_beam_search` and is
tested on its properties. All B * num_beams beams go through the model in one call; the KV cache is reordered once
per step (not at all when no beam changed parent). Selection runs on the model's backend; the few surviving
candidates (B, K) are copied to the host, where the bookkeeping and the stopping rules (which need the ids anyway)
run in float32 NumPy.
"""
from __future__ import annotations

import math

import numpy as np  # host side only: the (B, K) survivors' bookkeeping, token ids and masks

import backends
from scratch.generate.generate import (GenerateOutput, last_scores, processors_for, record_step,
                                       recorded_outputs)
from scratch.generate.processors import apply, build_processors, log_softmax, softmax
from scratch.generate.sampling import sample_from_probs
from scratch.generate.stopping import StopStrings

__all__ = ["beam_search", "beam_sample", "group_beam_search", "top_k", "top_k_reference"]

NEG = np.float32(-1.0e9)  # transformers' "impossible" score: added, never compared with ==, so float32 is fine


# ---------------------------------------------------------------------------------------------------------------
# Selecting the best k of each row: a plain oracle and the fast path
# ---------------------------------------------------------------------------------------------------------------

def top_k_reference(scores, k: int):
    """The k largest entries of each row and their indices, best first; equal scores: the lower index first.

    scores (B, N) -> values (B, k), indices (B, k) int64. One stable sort of the whole row: the oracle.
    """
    xp = backends.namespace_of(scores)
    order = xp.argsort(-scores, axis=-1, stable=True)[:, :k]
    return xp.take_along_axis(scores, order, axis=-1), xp.astype(order, xp.int64)


def top_k(scores, k: int):
    """`top_k_reference`, faster: a partial selection (argpartition, O(N)) where the namespace has one (NumPy,
    CuPy), then a sort of the k chosen only. Ties exactly at the k-th place may pick a different index."""
    xp = backends.namespace_of(scores)
    n = scores.shape[-1]
    if not hasattr(xp, "argpartition") or k >= n:
        return top_k_reference(scores, k)
    chosen = xp.sort(xp.argpartition(-scores, k - 1, axis=-1)[:, :k], axis=-1)   # (B, k) in index order
    values = xp.take_along_axis(scores, chosen, axis=-1)
    order = xp.argsort(-values, axis=-1, stable=True)                           # best first, ties by index
    return xp.take_along_axis(values, order, axis=-1), xp.astype(xp.take_along_axis(chosen, order, axis=-1),
                                                                  xp.int64)


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
    for _ in range(k):
        mass = xp.sum(probs, axis=-1, keepdims=True)                            # (B, 1)
        safe = xp.where(mass > 0, mass, xp.ones_like(mass))
        drawn = sample_from_probs(probs / safe, backend.random_uniform(rng, (B,), dtype="float32"))
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


# ---------------------------------------------------------------------------------------------------------------
# Shared plumbing
# ---------------------------------------------------------------------------------------------------------------

def _check(model, prompt, config, what: str, decode=None) -> int:
    """Checks shared by the beam strategies; returns the number of new tokens at most. Stop strings are for beam
    search and beam sampling (with `decode`); group beam search follows transformers 4, which had none."""
    nb = config.num_beams
    if isinstance(nb, bool) or not isinstance(nb, int) or nb < 1:
        raise ValueError(f"num_beams must be an integer >= 1, got {nb!r}")
    if config.num_return_sequences > nb:
        raise ValueError(f"num_return_sequences ({config.num_return_sequences}) must be <= num_beams ({nb})")
    if nb % config.num_beam_groups:
        raise ValueError(f"num_beams ({nb}) must be divisible by num_beam_groups ({config.num_beam_groups})")
    if config.stop_strings is not None and what == "group beam search":
        raise ValueError(f"stop_strings are not supported by {what} (EOS ids and length limits are)")
    if config.stop_strings is not None and decode is None:
        raise ValueError(f"stop_strings {config.stop_strings!r} need a tokenizer: pass tokenizer= to generate")
    T = prompt.length
    total = config.resolved_max_length(T)
    if total <= T:
        raise ValueError(f"max_length ({total}) must exceed the prompt length ({T})")
    if total > model.max_length:
        raise ValueError(f"prompt ({T} tokens) + {total - T} new tokens exceed the model's context of "
                         f"{model.max_length}; lower max_new_tokens")
    return total - T


class _Beams:
    """The model side of a beam strategy: B prompts expanded to B * num_beams rows that share one cache.

    The prompt is run once per prompt (B rows, not B * num_beams: the beams start identical), and the first
    `advance` expands the cache while it reorders it. `advance(parents, tokens)` makes row r continue from row
    parents[r] with tokens[r] and returns the next scores (B * num_beams, V) float32.
    """

    def __init__(self, model, prompt, num_beams: int, max_new: int):
        self.model, self.backend, self.nb = model, model.backend, num_beams
        B, T = prompt.batch_size, prompt.length
        self.cache = model.new_cache(B, T + max_new)                    # exactly as long as needed: reorder copies it
        mask = prompt.model_mask(max_new)                               # (B, T + max_new) host or None
        self.mask = None
        if mask is not None:
            self.mask = self.backend.asarray(np.repeat(mask, num_beams, axis=0), dtype="int64")
        self.length = T
        logits = model(self.backend.asarray(prompt.input_ids, dtype="int64"), cache=self.cache,
                       attention_mask=None if mask is None else self.backend.asarray(mask[:, :T], dtype="int64"),
                       logits_to_keep=1)                                # (B, 1, V): the prompt's last position
        self.expanded = False
        self.rows_per_cache_row = num_beams                             # cache row b holds beams b*nb .. b*nb+nb-1
        last = self._scores(logits)                                     # (B, V)
        xp = self.backend.xp
        self.first = xp.take(last, xp.asarray(np.repeat(np.arange(B), num_beams), dtype=xp.int64), axis=0)

    def _scores(self, logits):
        return last_scores(self.backend.xp, logits)   # transformers scores in float32 whatever the model dtype

    def advance(self, parents: np.ndarray, tokens: np.ndarray):
        """parents (B*nb,) host int: the row each new row continues; tokens (B*nb,) host int64."""
        if not self.expanded:
            self.cache.reorder(self.backend.asarray(parents // self.rows_per_cache_row, dtype="int64"))
            self.expanded = True
        elif not np.array_equal(parents, np.arange(parents.shape[0])):
            self.cache.reorder(self.backend.asarray(parents, dtype="int64"))
        self.length += 1
        mask = None if self.mask is None else self.mask[:, :self.length]
        logits = self.model(self.backend.asarray(tokens.reshape(-1, 1), dtype="int64"), cache=self.cache,
                            attention_mask=mask)
        return self._scores(logits)


def _output(prompt, sequences: np.ndarray, scores: np.ndarray, lengths: np.ndarray, num_return: int,
            indices: np.ndarray | None = None, recorded: list | None = None, config=None):
    """(B, n, T_max) finished hypotheses, best first -> GenerateOutput of the best num_return per prompt, cut to
    the prompt plus the longest returned generation. `indices` (B, n, max_new): each hypothesis' beam row per step
    (-1 past its end), returned as beam_indices; `recorded`: per step (raw logits, processed log-probs)."""
    B = sequences.shape[0]
    generated = int(lengths[:, :num_return].max())
    T_out = prompt.length + generated
    seqs = sequences[:, :num_return, :T_out].reshape(B * num_return, T_out).copy()
    extra = recorded_outputs(recorded, config)
    if recorded is not None:
        extra["beam_indices"] = indices[:, :num_return, :generated].reshape(B * num_return, generated).copy()
    return GenerateOutput(sequences=seqs,
                          sequences_scores=scores[:, :num_return].reshape(-1).astype(np.float32), **extra)


def _gather(array: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """array (B, N, ...) gathered along axis 1 by indices (B, M) -> (B, M, ...)."""
    return array[np.arange(array.shape[0])[:, None], indices]


def _top_host(values: np.ndarray, k: int) -> np.ndarray:
    """(B, N) float32 host -> (B, k) indices of the k largest per row, best first, ties by lower index."""
    return np.argsort(-values, axis=1, kind="stable")[:, :k]


def _divisor(length: int, length_penalty) -> float:
    """length ** length_penalty as transformers computes it (a Python number; the tensor division is float32)."""
    return length ** length_penalty


# ---------------------------------------------------------------------------------------------------------------
# Beam search and beam sampling
# ---------------------------------------------------------------------------------------------------------------

def beam_search(model, prompt, config, decode=None):
    """Beam search (num_beams > 1, no sampling): see the module docstring. Returns a GenerateOutput with
    sequences (B * num_return_sequences, T_out) and sequences_scores (B * num_return_sequences,) float32.
    `decode` (ids -> text) is needed for config.stop_strings: a candidate whose text ends a stop string is finished
    like one that ends with EOS, as transformers 5 asks its stopping criteria about every candidate."""
    return _beam(model, prompt, config, rng=None, decode=decode)


def beam_sample(model, prompt, config, rng, decode=None):
    """Beam sampling: beam search where each step DRAWS the K continuations (without replacement, probability
    softmax of the accumulated, warped log-probabilities) from the host generator `rng`, instead of taking the
    best K. The same seed gives the same tokens on every backend; not the same tokens as torch's sampler."""
    if rng is None:
        rng = backends.rng(config.seed)
    return _beam(model, prompt, config, rng=rng, decode=decode)


def _still_improvable(improvable, running_scores, finished_scores, is_finished, cur_len, max_length, T, config):
    """(B,) bool: can a running beam still beat the worst finished hypothesis? Sticky: once False, stays False.

    The best running beam's score, length-normalised by a guess at its final length:
    - early_stopping False: its current generated length (exact when length_penalty <= 0, a heuristic otherwise);
    - early_stopping "never": the longest it may become (max_length - T) when length_penalty > 0 -- the only
      guess that never stops too early; else its current length.
    A prompt with a free finished slot is always improvable. (early_stopping True stops once num_beams hypotheses
    are finished, elsewhere.)
    """
    lp = config.length_penalty
    if config.early_stopping == "never" and lp > 0:
        best_length = max_length - T
    else:
        best_length = cur_len - T
    best_running = running_scores[:, :1] / np.float32(_divisor(best_length, lp))            # (B, 1)
    worst_finished = np.where(is_finished, finished_scores.min(axis=1, keepdims=True), NEG)  # (B, nb)
    return improvable & (best_running > worst_finished).any(axis=1)


def _beam(model, prompt, config, rng, decode=None):
    what = "beam sampling" if rng is not None else "beam search"
    max_new = _check(model, prompt, config, what, decode)
    backend = model.backend
    xp = backend.xp
    B, T, nb, V = prompt.batch_size, prompt.length, config.num_beams, model.n_vocab
    max_length = T + max_new
    eos = np.asarray(config.eos_token_ids, dtype=np.int64)
    K = max(2, 1 + eos.size) * nb          # enough candidates that num_beams can go on even if many hit EOS
    # The repetition penalty skips each beam's left padding, as transformers 5 does (after expanding the mask).
    processors = processors_for(config, prompt.repeat(nb))
    lp, early = config.length_penalty, config.early_stopping
    pad = prompt.pad_token_id
    stops = None if config.stop_strings is None else StopStrings(config.stop_strings, decode)
    starts = T - prompt.lengths                                    # (B,) each row's first real column

    # Host state, transformers' names in the comments. Sequences are preallocated to max_length and padded.
    running = np.full((B, nb, max_length), pad, dtype=np.int64)   # running_sequences
    running[:, :, :T] = prompt.input_ids[:, None, :]
    running_scores = np.zeros((B, nb), dtype=np.float32)           # running_beam_scores: sum of log-probs
    running_scores[:, 1:] = NEG                                    # the beams start equal: only beam 0 may expand
    finished = running.copy()                                      # sequences: the best finished hypotheses
    finished_scores = np.full((B, nb), NEG, dtype=np.float32)      # beam_scores (length-penalised)
    finished_lengths = np.zeros((B, nb), dtype=np.int64)           # generated tokens of each finished hypothesis
    running_rows = np.full((B, nb, max_new), -1, dtype=np.int64)   # running_beam_indices: the flat beam row
    finished_rows = running_rows.copy()                            # (b * nb + beam) each step continued; -1 after
    recorded = [] if (config.output_scores or config.output_logits) else None
    is_finished = np.zeros((B, nb), dtype=bool)                    # is_sent_finished
    improvable = np.ones(B, dtype=bool)                            # is_early_stop_heuristic_unsatisfied
    in_top_nb = np.arange(K) < nb                                  # top_num_beam_mask
    rows = np.arange(B)[:, None]

    beams = _Beams(model, prompt, nb, max_new)
    scores = beams.first                                           # (B*nb, V)
    for cur in range(T, max_length):
        # b. log-probabilities, processed (warped too when sampling), added to each beam's running score.
        logp = log_softmax(scores)                                 # (B*nb, V) float32
        if processors:
            context = backend.asarray(running[:, :, :cur].reshape(B * nb, cur), dtype="int64")
            logp = apply(processors, context, logp)
        if recorded is not None:   # transformers' `logits` and `scores`: (B*nb, V) per step, before the beam sums
            record_step(recorded, backend, config, scores, logp)
        total = logp + backend.asarray(running_scores.reshape(B * nb, 1), dtype="float32")
        total = xp.reshape(total, (B, nb * V))                     # candidate c = beam * V + token
        # c. the K best (or K drawn) continuations of each prompt.
        if rng is None:
            values, flat = top_k(total, K)
        else:
            values, flat = _sample_without_replacement(rng, backend, total, K)
        values = backend.to_numpy(values).astype(np.float32, copy=False)          # (B, K) the one sync per step
        flat = backend.to_numpy(flat).astype(np.int64, copy=False)
        parent, token = flat // V, flat % V                        # (B, K)
        candidates = _gather(running, parent)                      # (B, K, max_length)
        candidates[:, :, cur] = token
        candidate_rows = _gather(running_rows, parent)             # (B, K, max_new)
        candidate_rows[:, :, cur - T] = rows * nb + parent
        # d. which candidates end here (transformers asks its stopping criteria: EOS, stop strings, the length limit).
        hits = np.isin(token, eos) if eos.size else np.zeros((B, K), dtype=bool)
        if stops is not None:                                      # the decoded text ends a stop string
            for b, k in zip(*np.nonzero(~hits)):
                hits[b, k] = stops.row_stops(candidates[b, k, starts[b]:cur + 1].tolist())
        if cur + 1 >= max_length:
            hits[:] = True
        # e. the best num_beams candidates that did not end go on.
        running_candidates = values + hits.astype(np.float32) * NEG
        keep = _top_host(running_candidates, nb)                   # (B, nb)
        running = _gather(candidates, keep)
        running_rows = _gather(candidate_rows, keep)
        running_scores = running_candidates[rows, keep]
        parents = (rows * nb + parent[rows, keep]).reshape(-1)     # (B*nb,) the flat row each new beam continues
        # f. the ended candidates among the top num_beams join the finished list if they beat its worst.
        just_finished = hits & in_top_nb[None, :]
        normalised = values / np.float32(_divisor(cur + 1 - T, lp))   # length counts the EOS token, not the prompt
        full = is_finished.all(axis=1, keepdims=True) & (early is True)
        normalised = normalised + full.astype(np.float32) * NEG          # early_stopping=True: a full list is final
        normalised = normalised + (~improvable[:, None]).astype(np.float32) * NEG
        normalised = normalised + (~just_finished).astype(np.float32) * NEG
        merged_scores = np.concatenate([finished_scores, normalised], axis=1)        # (B, nb + K)
        best = _top_host(merged_scores, nb)
        finished = _gather(np.concatenate([finished, candidates], axis=1), best)
        finished_rows = _gather(np.concatenate([finished_rows, candidate_rows], axis=1), best)
        finished_scores = merged_scores[rows, best]
        finished_lengths = np.concatenate([finished_lengths, np.full((B, K), cur + 1 - T)], axis=1)[rows, best]
        is_finished = np.concatenate([is_finished, just_finished], axis=1)[rows, best]
        # g. is any prompt still going? (transformers runs the batch until none is.)
        improvable = _still_improvable(improvable, running_scores, finished_scores, is_finished, cur + 1,
                                       max_length, T, config)
        open_beam = not (is_finished.all() and early is True)
        if not (improvable.any() and open_beam and not hits.all()):
            break
        scores = beams.advance(parents, running[:, :, cur].reshape(-1))
    return _output(prompt, finished, finished_scores, finished_lengths, config.num_return_sequences,
                   finished_rows, recorded, config)


# ---------------------------------------------------------------------------------------------------------------
# Diverse (group) beam search -- transformers 4 semantics (BeamSearchScorer + HammingDiversityLogitsProcessor)
# ---------------------------------------------------------------------------------------------------------------

class _Hypotheses:
    """The finished hypotheses of one prompt (one group): at most n, scored sum_logprobs / length ** penalty.

    transformers 4's BeamHypotheses: a new hypothesis enters while there is room or when it beats the worst.
    """

    def __init__(self, n: int, length_penalty: float, early_stopping, max_length: int):
        self.n, self.length_penalty, self.early_stopping, self.max_length = n, length_penalty, early_stopping, \
            max_length
        self.items: list[tuple[float, np.ndarray, int]] = []   # (score, tokens, generated length)
        self.worst = 1e9

    def add(self, tokens: np.ndarray, sum_logprobs: float, generated: int) -> None:
        score = float(np.float32(sum_logprobs) / np.float32(_divisor(generated, self.length_penalty)))
        if len(self.items) < self.n or score > self.worst:
            self.items.append((score, tokens, generated))
            if len(self.items) > self.n:
                worst = min(range(len(self.items)), key=lambda i: self.items[i][0])
                del self.items[worst]
            self.worst = min(s for s, _, _ in self.items)

    def is_done(self, best_sum_logprobs: float, cur_len: int, T: int) -> bool:
        """No running beam can beat the worst finished one (the same guesses as `_still_improvable`)."""
        if len(self.items) < self.n:
            return False
        if self.early_stopping is True:
            return True
        lp = self.length_penalty
        length = self.max_length - T if (self.early_stopping == "never" and lp > 0) else cur_len - T
        return self.worst >= best_sum_logprobs / _divisor(length, lp)


def group_beam_search(model, prompt, config):
    """Diverse beam search: num_beams split into num_beam_groups groups of num_beams / num_beam_groups beams.

    Each step the groups choose in order; group g's log-probabilities are lowered by diversity_penalty times the
    number of times each token was chosen this step by groups 0..g-1 of the same prompt (Hamming diversity), applied
    where transformers 4 applied it: after the sequence bias, before the other processors. Each group then does one
    step of beam search on its own beams (its best 2 * group_size candidates; ended ones among the top group_size
    become hypotheses of that group). A group whose
    hypotheses cannot improve is done (it then appends pad tokens). The result: the best num_return_sequences
    hypotheses over all groups of a prompt, with running beams added as hypotheses at the end.
    """
    max_new = _check(model, prompt, config, "group beam search")
    backend = model.backend
    xp = backend.xp
    B, T, nb, V = prompt.batch_size, prompt.length, config.num_beams, model.n_vocab
    G = config.num_beam_groups
    if G < 2:
        raise ValueError(f"group beam search needs num_beam_groups > 1, got {G}")
    if config.is_sampling:
        raise ValueError("group beam search does not sample: set do_sample=False (or num_beam_groups=1 for beam "
                         "sampling)")
    size = nb // G                                         # beams per group
    max_length = T + max_new
    eos = np.asarray(config.eos_token_ids, dtype=np.int64)
    K = max(2, 1 + eos.size) * size
    processors = build_processors(config, prompt_length=T)
    # transformers 4 put the Hamming diversity processor right after the sequence bias, before all the others.
    first = 1 if config.sequence_bias is not None else 0
    before, after = processors[:first], processors[first:]
    pad = prompt.pad_token_id
    penalty = np.float32(config.diversity_penalty)

    sequences = np.repeat(prompt.input_ids, nb, axis=0)    # (B*nb, cur) host, grows one column per step
    beam_scores = np.full((B, nb), NEG, dtype=np.float32)
    beam_scores[:, ::size] = 0.0                           # the first beam of each group starts
    beam_scores = beam_scores.reshape(-1)
    hyps = [[_Hypotheses(size, config.length_penalty, config.early_stopping, max_length) for _ in range(G)]
            for _ in range(B)]
    done = np.zeros((B, G), dtype=bool)

    beams = _Beams(model, prompt, nb, max_new)
    scores = beams.first
    for cur in range(T, max_length):
        logp_all = log_softmax(scores)                     # (B*nb, V)
        chosen = np.zeros(B * nb, dtype=np.int64)           # this step's token of every beam (current_tokens)
        parents = np.zeros(B * nb, dtype=np.int64)          # reordering_indices
        new_scores = beam_scores.copy()
        for g in range(G):
            rows = np.array([b * nb + g * size + j for b in range(B) for j in range(size)])   # (B*size,)
            rows_dev = backend.asarray(rows, dtype="int64")
            logp = xp.take(logp_all, rows_dev, axis=0)                                       # (B*size, V)
            context = backend.asarray(sequences[rows], dtype="int64")
            logp = apply(before, context, logp)
            if g > 0 and penalty > 0:   # Hamming diversity: tokens chosen by earlier groups of the prompt
                counts = np.zeros((B, V), dtype=np.float32)
                for b in range(B):
                    np.add.at(counts[b], chosen[b * nb:b * nb + g * size], 1.0)
                logp = logp - backend.asarray(np.repeat(counts * penalty, size, axis=0), dtype="float32")
            logp = apply(after, context, logp)
            total = logp + backend.asarray(beam_scores[rows].reshape(-1, 1), dtype="float32")
            values, flat = top_k(xp.reshape(total, (B, size * V)), K)
            values = backend.to_numpy(values).astype(np.float32, copy=False)
            flat = backend.to_numpy(flat).astype(np.int64, copy=False)
            for b in range(B):
                base = b * nb + g * size
                if done[b, g]:      # a finished group marks time with pad tokens
                    new_scores[base:base + size] = 0.0
                    chosen[base:base + size] = pad
                    parents[base:base + size] = np.arange(base, base + size)
                    continue
                filled = 0
                for rank in range(K):
                    parent, token = base + flat[b, rank] // V, flat[b, rank] % V
                    if eos.size and token in eos:
                        if rank < size:   # only an EOS among the group's best counts
                            ended = np.append(sequences[parent], token)     # the EOS token included
                            hyps[b][g].add(ended, float(values[b, rank]), cur + 1 - T)
                        continue
                    new_scores[base + filled] = values[b, rank]
                    chosen[base + filled] = token
                    parents[base + filled] = parent
                    filled += 1
                    if filled == size:
                        break
                done[b, g] = done[b, g] or hyps[b][g].is_done(float(values[b].max()), cur + 1, T)
        beam_scores = new_scores
        sequences = np.concatenate([sequences[parents], chosen[:, None]], axis=1)
        if done.all() or cur + 1 >= max_length:
            break
        scores = beams.advance(parents, chosen)

    # Running beams of unfinished groups become hypotheses; then the best over all groups of each prompt.
    n_out = config.num_return_sequences
    out = np.full((B, n_out, sequences.shape[1]), pad, dtype=np.int64)
    out_scores = np.zeros((B, n_out), dtype=np.float32)
    out_lengths = np.zeros((B, n_out), dtype=np.int64)
    for b in range(B):
        for g in range(G):
            if done[b, g]:
                continue
            for j in range(size):
                row = b * nb + g * size + j
                hyps[b][g].add(sequences[row].copy(), float(beam_scores[row]), sequences.shape[1] - T)
        pool = sorted((h for group in hyps[b] for h in group.items), key=lambda h: h[0], reverse=True)
        for i, (score, tokens, generated) in enumerate(pool[:n_out]):
            out[b, i, :tokens.shape[0]] = tokens
            out_scores[b, i] = score
            out_lengths[b, i] = generated
    return _output(prompt, out, out_scores, out_lengths, n_out)
