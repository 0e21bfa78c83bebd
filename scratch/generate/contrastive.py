"""Contrastive search (Su et al. 2022, "A Contrastive Framework for Neural Text Generation"): greedy decoding that
avoids repeating itself by looking at hidden states.

Each step takes the top_k most probable next tokens v, runs each through the model, and picks
    argmax_v (1 - alpha) * p(v) - alpha * max_j cos(h_v, h_j),
where h_v is v's last hidden state (after the final norm) and h_j are the hidden states of the tokens so far
(padding excluded): a candidate whose representation is close to something already said is penalised. alpha is
`penalty_alpha`, k is `top_k`; with alpha = 0 it is greedy decoding. Contrastive search left transformers' core in
v5 (it moved to the hub); this follows transformers 4's `_contrastive_search` (processors on the logits, the k
candidates batched as B * k rows over a copy of the cache, the chosen row kept) and is tested against a plain
uncached oracle. The hidden states come from the models' `hidden_states` (the forward without its output head).
"""
from __future__ import annotations

import math

import numpy as np  # host side only: token ids, masks, stopping

import backends
from scratch.generate.output import GenerateOutput, last_scores
from scratch.generate.processors import apply, build_processors
from scratch.generate.prompt import new_token_budget
from scratch.generate.selection import top_k
from scratch.generate.stopping import any_stop, build_stopping
from scratch.nn import softmax

__all__ = ["contrastive_search", "with_hidden_states", "degeneration_penalty"]


def with_hidden_states(model):
    """A function ids, cache, mask -> (hidden (B, T, C), logits (B, T, V)) for a GPT-2 or Llama model: one forward
    to the final-normed hidden states (`model.hidden_states`), then the very head product the model's own call does."""

    def run(ids, cache=None, attention_mask=None):
        hidden = model.hidden_states(ids, cache=cache, attention_mask=attention_mask)   # (B, T, C)
        return hidden, model.head(hidden)                                              # (B, T, C) -> (B, T, V)
    return run


def degeneration_penalty(context, candidates, context_mask):
    """max_j cos(candidate, context_j) over real context positions.

    context (N, S, C) hidden states so far, candidates (N, C), context_mask (N, S) bool (False on padding) ->
    (N,). Padding positions get -inf before the max (transformers adds the dtype's minimum instead)."""
    xp = backends.namespace_of(context, candidates)
    unit_context = context / xp.sqrt(xp.sum(context * context, axis=-1, keepdims=True))        # (N, S, C)
    unit_candidates = candidates / xp.sqrt(xp.sum(candidates * candidates, axis=-1, keepdims=True))
    cosine = xp.matmul(unit_context, unit_candidates[:, :, None])[:, :, 0]                   # (N, S)
    cosine = xp.where(context_mask, cosine, xp.asarray(-math.inf, dtype=cosine.dtype))
    return xp.max(cosine, axis=-1)


def contrastive_search(model, prompt, config):
    """Contrastive search: see the module docstring. Rows finish at EOS (then get the pad id) or at the length
    limit. Returns a GenerateOutput (sequences only). Needs 0 <= penalty_alpha <= 1 and top_k >= 1."""
    alpha, k = config.penalty_alpha, config.top_k
    if alpha is None or not 0 <= alpha <= 1:
        raise ValueError(f"penalty_alpha must be in [0, 1] for contrastive search, got {alpha!r}")
    if k < 1:
        raise ValueError(f"top_k must be >= 1 for contrastive search, got {k!r}")
    if config.num_beams != 1:
        raise ValueError(f"contrastive search works with num_beams=1, got num_beams={config.num_beams}")
    if config.stop_strings is not None:
        raise ValueError("stop_strings are not supported by contrastive search (EOS ids and length limits are)")
    backend = model.backend
    xp = backend.xp
    B, T = prompt.batch_size, prompt.length
    k = min(k, model.n_vocab)
    max_new = new_token_budget(prompt, config, model, rows=B * k)
    forward = with_hidden_states(model)
    processors = build_processors(config, prompt_length=T)
    stopping = build_stopping(config, T)                                # EOS and the length limit
    pad = prompt.pad_token_id

    ids = np.full((B, T + max_new), pad, dtype=np.int64)
    ids[:, :T] = prompt.input_ids
    mask = np.concatenate([prompt.attention_mask, np.ones((B, max_new), dtype=np.int64)], axis=1)
    use_mask = prompt.has_padding
    cache = model.new_cache(B, T + max_new)
    prompt_mask = backend.asarray(prompt.attention_mask, dtype="int64") if use_mask else None
    hidden, logits = forward(backend.asarray(prompt.input_ids, dtype="int64"), cache=cache,
                             attention_mask=prompt_mask)                    # prefill once per prompt
    context = hidden                                                    # (B, T, C) hidden states so far
    scores = last_scores(xp, logits)                                    # (B, V) float32
    expand = np.repeat(np.arange(B), k)                                 # row b*k + j <- prompt b
    cache.reorder(backend.asarray(expand, dtype="int64"))               # B -> B * k rows: the k candidates
    C = context.shape[-1]
    finished = np.zeros(B, dtype=bool)
    length = T
    for step in range(max_new):
        if processors:
            scores = apply(processors, backend.asarray(ids[:, :length], dtype="int64"), scores)
        probs, candidates = top_k(softmax(scores), k)                   # (B, k) best first
        # Every candidate through the model at once: row b*k + j continues prompt b with candidate j.
        cand_hidden, cand_logits = forward(
            xp.reshape(candidates, (B * k, 1)), cache=cache,
            attention_mask=backend.asarray(mask[expand, :length + 1], dtype="int64") if use_mask else None)
        cand_hidden = cand_hidden[:, 0, :]                              # (B*k, C)
        repeated = xp.take(context, backend.asarray(expand, dtype="int64"), axis=0)   # (B*k, S, C)
        real = backend.asarray(mask[expand, :length] != 0)              # (B*k, S)
        penalty = xp.reshape(degeneration_penalty(repeated, cand_hidden, real), (B, k))
        score = (1.0 - alpha) * probs - alpha * penalty                 # (B, k) float32
        chosen = xp.astype(xp.argmax(score, axis=-1), xp.int64)         # (B,) first maximum on ties
        token = xp.take_along_axis(candidates, xp.reshape(chosen, (B, 1)), axis=1)[:, 0]
        host_token = backend.to_numpy(token).astype(np.int64)           # the one sync per step
        host_token = np.where(finished, pad, host_token)
        ids[:, length] = host_token
        length += 1
        finished = any_stop(stopping, ids[:, :length], finished)
        if finished.all():                                              # every row ended, or the length limit
            break
        # Keep the chosen candidate: its hidden state joins the context, its logits are the next scores, and
        # its cache row is copied to every row of its prompt.
        rows = xp.arange(B, dtype=xp.int64) * k + chosen                # (B,)
        context = xp.concat([context, xp.reshape(xp.take(cand_hidden, rows, axis=0), (B, 1, C))], axis=1)
        scores = last_scores(xp, xp.take(cand_logits, rows, axis=0))   # (B, V) float32
        cache.reorder(xp.take(rows, backend.asarray(expand, dtype="int64"), axis=0))
    return GenerateOutput(sequences=ids[:, :length].copy())
