"""Diverse (group) beam search (Vijayakumar et al. 2016, "Diverse Beam Search"): beams in groups that avoid each other.

The num_beams beams are split into num_beam_groups groups that choose in turn each step; group g's
log-probabilities are lowered by diversity_penalty times the number of times each token was chosen this step by
groups 0..g-1 of the same prompt (Hamming diversity). Each group then does one step of beam search on its own
beams. It left transformers' core in v5, so this follows transformers 4's `_group_beam_search` (BeamSearchScorer +
HammingDiversityLogitsProcessor) and is tested against outputs recorded from transformers 4.55. Not here: stop
strings (transformers 4 had none); plain beam search and the model side it shares with it (beam.py).
"""
from __future__ import annotations

import numpy as np  # host side only: the groups' bookkeeping, token ids

from scratch.generate.beam import NEG, BeamModel, beam_output, length_divisor
from scratch.generate.processors import apply, build_processors
from scratch.generate.prompt import new_token_budget
from scratch.generate.selection import top_k
from scratch.generate.stopping import EosToken, any_stop
from scratch.nn import log_softmax

__all__ = ["group_beam_search"]


def group_beam_search(model, prompt, config):
    """Diverse beam search: num_beams split into num_beam_groups groups of num_beams / num_beam_groups beams.

    Each step the groups choose in order; the Hamming diversity penalty is applied where transformers 4 applied it:
    after the sequence bias, before the other processors. Each group then keeps its best 2 * group_size
    candidates; ended ones among the top group_size become hypotheses of that group, the others run on. A group
    whose hypotheses cannot improve is done (it then appends pad tokens). The result: the best
    num_return_sequences hypotheses over all groups of a prompt, with running beams added as hypotheses at the end.
    """
    max_new = new_token_budget(prompt, config, model, rows=prompt.batch_size * config.num_beams)
    _check(config)
    backend, xp = model.backend, model.backend.xp
    B, T, num_beams, V = prompt.batch_size, prompt.length, config.num_beams, model.n_vocab
    groups = config.num_beam_groups
    group_size = num_beams // groups
    max_length = T + max_new
    K = max(2, 1 + len(config.eos_token_ids)) * group_size
    processors = build_processors(config, prompt_length=T)
    # transformers 4 put the Hamming diversity processor right after the sequence bias, before all the others.
    first = 1 if config.sequence_bias is not None else 0
    before, after = processors[:first], processors[first:]
    stopping = [EosToken(config.eos_token_ids)] if config.eos_token_ids else []   # asked per candidate
    pad = prompt.pad_token_id
    penalty = np.float32(config.diversity_penalty)

    sequences = np.repeat(prompt.input_ids, num_beams, axis=0)   # (B * num_beams, cur) host, one column per step
    beam_scores = np.full((B, num_beams), NEG, dtype=np.float32)
    beam_scores[:, ::group_size] = 0.0                           # the first beam of each group starts
    beam_scores = beam_scores.reshape(-1)
    hypotheses = [[_Hypotheses(group_size, config.length_penalty, config.early_stopping, max_length)
                   for _ in range(groups)] for _ in range(B)]
    done = np.zeros((B, groups), dtype=bool)

    beams = BeamModel(model, prompt, num_beams, max_new)
    scores = beams.first_scores
    for cur in range(T, max_length):
        logp_all = log_softmax(scores)                           # (B * num_beams, V)
        chosen = np.zeros(B * num_beams, dtype=np.int64)         # this step's token of every beam (current_tokens)
        parents = np.zeros(B * num_beams, dtype=np.int64)        # reordering_indices
        new_scores = beam_scores.copy()
        for g in range(groups):
            rows = np.array([b * num_beams + g * group_size + j for b in range(B) for j in range(group_size)])
            logp = xp.take(logp_all, backend.asarray(rows, dtype="int64"), axis=0)   # (B * group_size, V)
            context = backend.asarray(sequences[rows], dtype="int64")
            logp = apply(before, context, logp)
            if g > 0 and penalty > 0:   # Hamming diversity: tokens chosen by earlier groups of the prompt
                counts = np.zeros((B, V), dtype=np.float32)
                for b in range(B):
                    np.add.at(counts[b], chosen[b * num_beams:b * num_beams + g * group_size], 1.0)
                logp = logp - backend.asarray(np.repeat(counts * penalty, group_size, axis=0), dtype="float32")
            logp = apply(after, context, logp)
            total = logp + backend.asarray(beam_scores[rows].reshape(-1, 1), dtype="float32")
            values, flat = top_k(xp.reshape(total, (B, group_size * V)), K)
            values = backend.to_numpy(values).astype(np.float32, copy=False)   # (B, K)
            flat = backend.to_numpy(flat).astype(np.int64, copy=False)
            candidate_parents = rows.reshape(B, group_size)[np.arange(B)[:, None], flat // V]   # (B, K) flat rows
            candidate_ids = np.concatenate([sequences[candidate_parents.reshape(-1)],
                                            (flat % V).reshape(-1, 1)], axis=1)                # (B * K, cur + 1)
            ended = any_stop(stopping, candidate_ids).reshape(B, K)
            for b in range(B):
                base = b * num_beams + g * group_size
                if done[b, g]:      # a finished group marks time with pad tokens
                    new_scores[base:base + group_size] = 0.0
                    chosen[base:base + group_size] = pad
                    parents[base:base + group_size] = np.arange(base, base + group_size)
                    continue
                filled = 0
                for rank in range(K):
                    parent, token = candidate_parents[b, rank], flat[b, rank] % V
                    if ended[b, rank]:
                        if rank < group_size:   # only an ended candidate among the group's best counts
                            hypotheses[b][g].add(candidate_ids[b * K + rank], float(values[b, rank]), cur + 1 - T)
                        continue
                    new_scores[base + filled] = values[b, rank]
                    chosen[base + filled] = token
                    parents[base + filled] = parent
                    filled += 1
                    if filled == group_size:
                        break
                done[b, g] = done[b, g] or hypotheses[b][g].is_done(float(values[b].max()), cur + 1, T)
        beam_scores = new_scores
        sequences = np.concatenate([sequences[parents], chosen[:, None]], axis=1)
        if done.all() or cur + 1 >= max_length:
            break
        scores = beams.advance(parents, chosen)
    return _best_over_groups(prompt, sequences, beam_scores, hypotheses, done, config)


def _check(config) -> None:
    if config.num_beam_groups < 2:
        raise ValueError(f"group beam search needs num_beam_groups > 1, got {config.num_beam_groups}")
    if config.is_sampling:
        raise ValueError("group beam search does not sample: set do_sample=False (or num_beam_groups=1 for beam "
                         "sampling)")
    if config.stop_strings is not None:
        raise ValueError("stop_strings are not supported by group beam search (EOS ids and length limits are)")


class _Hypotheses:
    """The finished hypotheses of one prompt (one group): at most n, scored sum_logprobs / length ** penalty.

    transformers 4's BeamHypotheses: a new hypothesis enters while there is room or when it beats the worst.
    """

    def __init__(self, n: int, length_penalty: float, early_stopping, max_length: int):
        self.n, self.length_penalty, self.early_stopping = n, length_penalty, early_stopping
        self.max_length = max_length
        self.items: list[tuple[float, np.ndarray, int]] = []   # (score, tokens, generated length)
        self.worst = 1e9

    def add(self, tokens: np.ndarray, sum_logprobs: float, generated: int) -> None:
        # subtle: Python floats (float64), as transformers 4's BeamHypotheses: a float32 quotient can fall below the
        # float64 bound `is_done` compares it with, and a group that transformers stops would then run on.
        score = sum_logprobs / length_divisor(generated, self.length_penalty)
        if len(self.items) < self.n or score > self.worst:
            self.items.append((score, tokens, generated))
            if len(self.items) > self.n:
                worst = min(range(len(self.items)), key=lambda i: self.items[i][0])
                del self.items[worst]
            self.worst = min(s for s, _, _ in self.items)

    def is_done(self, best_sum_logprobs: float, cur_len: int, T: int) -> bool:
        """No running beam can beat the worst finished one (the same guesses as beam.py's `_still_improvable`)."""
        if len(self.items) < self.n:
            return False
        if self.early_stopping is True:
            return True
        length_penalty = self.length_penalty
        length = self.max_length - T if (self.early_stopping == "never" and length_penalty > 0) else cur_len - T
        return self.worst >= best_sum_logprobs / length_divisor(length, length_penalty)


def _best_over_groups(prompt, sequences, beam_scores, hypotheses, done, config):
    """Running beams of unfinished groups become hypotheses; then the best num_return_sequences over all groups of
    each prompt, as a GenerateOutput."""
    B, T, num_beams = prompt.batch_size, prompt.length, config.num_beams
    group_size = num_beams // config.num_beam_groups
    n_out = config.num_return_sequences
    out = np.full((B, n_out, sequences.shape[1]), prompt.pad_token_id, dtype=np.int64)
    out_scores = np.zeros((B, n_out), dtype=np.float32)
    out_lengths = np.zeros((B, n_out), dtype=np.int64)
    for b in range(B):
        for g in range(config.num_beam_groups):
            if done[b, g]:
                continue
            for j in range(group_size):
                row = b * num_beams + g * group_size + j
                hypotheses[b][g].add(sequences[row].copy(), float(beam_scores[row]), sequences.shape[1] - T)
        pool = sorted((h for group in hypotheses[b] for h in group.items), key=lambda h: h[0], reverse=True)
        for i, (score, tokens, generated) in enumerate(pool[:n_out]):
            out[b, i, :tokens.shape[0]] = tokens
            out_scores[b, i] = score
            out_lengths[b, i] = generated
    return beam_output(prompt, out, out_scores, out_lengths, n_out)
