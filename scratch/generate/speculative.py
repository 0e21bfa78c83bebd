"""Speculative decoding: a small draft model proposes k tokens, the target model checks them all in one forward.

Leviathan et al. 2023 ("Fast Inference from Transformers via Speculative Decoding") and Chen et al. 2023
("Accelerating LLM Decoding with Speculative Sampling"). Each round: 1 the draft samples d_1..d_k from its
distributions q_1..q_k; 2 the target scores the context plus all k drafts at once, giving p_1..p_{k+1}; 3 draft i
is accepted with probability min(1, p_i(d_i) / q_i(d_i)), in order; at the first rejection the token is drawn from
norm(max(0, p_i - q_i)) instead, and if all k are accepted a bonus token comes from p_{k+1}; 4 both KV caches are
cropped back to the accepted tokens. The emitted tokens are distributed exactly as the target's own samples; with
greedy decoding (do_sample=False) "accepted" means "the target's argmax", so the output is the target's greedy
output. Processors and warpers shape p and q alike. Not here: transformers' adaptive number of draft tokens, tree
drafts, draft models with another vocabulary.
"""
from __future__ import annotations

import numpy as np  # host side only: token ids, the accept decisions, stopping

import backends
from scratch.generate.output import GenerateOutput
from scratch.generate.processors import apply, build_processors
from scratch.generate.prompt import new_token_budget
from scratch.generate.sampling import sample_from_probs
from scratch.generate.stopping import EosToken, MaxNewTokens, any_stop
from scratch.nn import softmax

__all__ = ["speculative_generate", "verify_drafts", "verify_drafts_greedy", "NUM_DRAFT_TOKENS"]

NUM_DRAFT_TOKENS = 4   # k: drafts per round (transformers starts at 20 and adapts it; a fixed k is easier to read)


def verify_drafts(p, q, drafts, accept_uniforms, resample_uniforms):
    """The acceptance rule of speculative sampling, for N independent rounds at once.

    p: (N, k+1, V) target probabilities at the k draft positions and one past them; q: (N, k, V) draft
    probabilities; drafts: (N, k) int64 tokens drawn from q; accept_uniforms: (N, k) and resample_uniforms: (N,)
    uniforms in [0, 1). Returns (accepted (N,) int64: how many leading drafts stand, token (N,) int64: the one
    token that follows them). Draft i stands when u_i * q_i(d_i) < p_i(d_i) -- that is u_i < p_i / q_i, so with
    probability min(1, p_i(d_i) / q_i(d_i)). The next token is drawn from norm(max(0, p_n - q_n)) after a
    rejection at n, or from p_k when all k stand.
    """
    xp = backends.namespace_of(p, q)
    N, k = drafts.shape[0], drafts.shape[1]
    V = p.shape[-1]
    at_draft = xp.reshape(drafts, (N, k, 1))
    p_d = xp.take_along_axis(p[:, :k, :], at_draft, axis=-1)[:, :, 0]          # (N, k)
    q_d = xp.take_along_axis(q, at_draft, axis=-1)[:, :, 0]                    # (N, k)
    stands = accept_uniforms * q_d < p_d                                        # (N, k)
    accepted = _leading_true(xp, stands)                                        # (N,)
    where = xp.reshape(accepted, (N, 1, 1))
    p_n = xp.take_along_axis(p, xp.broadcast_to(where, (N, 1, V)), axis=1)[:, 0, :]          # (N, V)
    q_ext = xp.concat([q, xp.zeros((N, 1, V), dtype=q.dtype)], axis=1)                       # q_{k+1} = 0
    q_n = xp.take_along_axis(q_ext, xp.broadcast_to(where, (N, 1, V)), axis=1)[:, 0, :]
    residual = xp.maximum(p_n - q_n, xp.zeros_like(p_n))                        # (N, V); = p_k after all stand
    mass = xp.sum(residual, axis=-1, keepdims=True)
    # subtle: p_n == q_n leaves no residual mass, but then every draft stands (u * q < q): fall back to p_n.
    residual = xp.where(mass > 0, residual / xp.where(mass > 0, mass, xp.ones_like(mass)), p_n)
    return accepted, sample_from_probs(residual, resample_uniforms)


def verify_drafts_greedy(target_tokens, drafts):
    """Greedy: target_tokens (N, k+1) the target's argmax at each position, drafts (N, k). The leading drafts equal
    to the target's choice stand; the next token is the target's choice after them. Returns (accepted, token)."""
    xp = backends.namespace_of(target_tokens, drafts)
    N, k = drafts.shape[0], drafts.shape[1]
    accepted = _leading_true(xp, target_tokens[:, :k] == drafts)
    token = xp.take_along_axis(target_tokens, xp.reshape(accepted, (N, 1)), axis=1)[:, 0]
    return accepted, token


def _leading_true(xp, flags):
    """(N, k) bool -> (N,) int64 number of leading True values (the position of the first False, or k)."""
    N = flags.shape[0]
    stop = xp.concat([~flags, xp.ones((N, 1), dtype=xp.bool)], axis=1)         # a sentinel False at k
    return xp.astype(xp.argmax(xp.astype(stop, xp.int8), axis=1), xp.int64)


def _probabilities(processors, context, logits, sampling):
    """Processed scores at each of the P positions of `logits` (P, V); position i sees context[:, :L + i] (the
    processors read the tokens before it). Returns probabilities when sampling, else the processed scores."""
    xp = backends.namespace_of(logits)
    L = context.shape[1] - logits.shape[0] + 1
    rows = []
    for i in range(logits.shape[0]):
        scores = xp.astype(logits[i:i + 1, :], xp.float32)
        if processors:
            scores = apply(processors, context[:, :L + i], scores)
        rows.append(softmax(scores) if sampling else scores)
    return xp.concat(rows, axis=0)                                             # (P, V)


def speculative_generate(model, draft_model, prompt, config, rng=None, num_draft_tokens: int = NUM_DRAFT_TOKENS,
                         stats: dict | None = None):
    """Generate with `model` (the target), `draft_model` proposing num_draft_tokens tokens per round.

    Same contract as greedy/sampling in `generate`: a GenerateOutput whose sequences are the left-padded prompts
    followed by the generated tokens, padded with the pad id after a row's EOS. Rows are decoded one after another
    (each accepts a different number of drafts per round); a row's padding is dropped first, so processors that
    read the context (repetition penalty, no-repeat n-gram) see only its real tokens. `stats`, when given, receives
    the number of rounds, drafted and accepted tokens.
    """
    if draft_model.n_vocab != model.n_vocab:
        raise ValueError(f"draft_model's vocabulary ({draft_model.n_vocab}) differs from the model's "
                         f"({model.n_vocab}): speculative decoding compares their distributions token by token")
    if draft_model.backend.name != model.backend.name:
        raise ValueError(f"draft_model runs on {draft_model.backend.name}, the model on {model.backend.name}: "
                         f"put both on one backend")
    if config.num_beams != 1:
        raise ValueError(f"speculative decoding works with greedy decoding and sampling, not num_beams="
                         f"{config.num_beams}")
    if config.stop_strings is not None:
        raise ValueError("stop_strings are not supported by speculative decoding (EOS ids and length limits are)")
    if isinstance(num_draft_tokens, bool) or not isinstance(num_draft_tokens, int) or num_draft_tokens < 1:
        raise ValueError(f"num_draft_tokens must be an integer >= 1, got {num_draft_tokens!r}")
    if config.num_return_sequences != 1:
        raise ValueError(f"speculative decoding returns one sequence per prompt, got num_return_sequences="
                         f"{config.num_return_sequences}")
    T = prompt.length
    max_new = new_token_budget(prompt, config, model, draft_model)
    if rng is None:
        rng = backends.rng(config.seed)
    stats = {} if stats is None else stats
    stats.update(rounds=0, drafted=0, accepted=0)
    generated = []
    for b in range(prompt.batch_size):
        real = prompt.input_ids[b, prompt.attention_mask[b].astype(bool)]
        generated.append(_one_row(model, draft_model, real, max_new, config, rng, num_draft_tokens, stats))
    width = max(len(g) for g in generated)
    out = np.full((prompt.batch_size, T + width), prompt.pad_token_id, dtype=np.int64)
    out[:, :T] = prompt.input_ids
    for b, g in enumerate(generated):
        out[b, T:T + len(g)] = g
    return GenerateOutput(sequences=out)


def _one_row(model, draft, prompt_ids: np.ndarray, max_new: int, config, rng, k_max: int, stats: dict) -> list:
    """The rounds for one prompt (host int64 ids, no padding): the generated tokens, EOS included."""
    backend = model.backend
    xp = backend.xp
    sampling = config.is_sampling
    L0, V = prompt_ids.shape[0], model.n_vocab
    processors = build_processors(config, prompt_length=L0)
    # This row's own length limit (its padding dropped), then EOS.
    stopping = [MaxNewTokens(L0, max_new)] + ([EosToken(config.eos_token_ids)] if config.eos_token_ids else [])
    ids = [int(token) for token in prompt_ids]
    target_cache = model.new_cache(1, L0 + max_new)
    draft_cache = draft.new_cache(1, L0 + max_new)
    new = []
    while True:
        k = min(k_max, max_new - len(new) - 1)        # a round emits up to k + 1 tokens: never past max_new
        # 1. The draft proposes k tokens, feeding what it has not seen yet (1 or 2 tokens, the prompt at first).
        drafts, q_rows = [], []
        for _ in range(k):
            context = ids + drafts
            logits = draft(backend.asarray(np.array([context[draft_cache.length:]], dtype=np.int64), dtype="int64"),
                           cache=draft_cache)                      # (1, unseen, V): what it had not seen
            ctx = backend.asarray(np.array([context], dtype=np.int64), dtype="int64")
            q = _probabilities(processors, ctx, logits[0, -1:, :], sampling)        # (1, V)
            if sampling:
                token = sample_from_probs(q, backend.random_uniform(rng, (1,), dtype="float32"))
            else:
                token = xp.astype(xp.argmax(q, axis=-1), xp.int64)
            drafts.append(int(backend.to_numpy(token)[0]))
            q_rows.append(q)
        # 2. The target scores the unseen context and all k drafts in one forward: k + 1 distributions.
        context = ids + drafts
        logits = model(backend.asarray(np.array([context[target_cache.length:]], dtype=np.int64), dtype="int64"),
                       cache=target_cache)                          # (1, unseen, V): what it had not seen
        ctx = backend.asarray(np.array([context], dtype=np.int64), dtype="int64")
        p = _probabilities(processors, ctx, logits[0, -(k + 1):, :], sampling)      # (k+1, V)
        # 3. Accept a prefix of the drafts, then one more token.
        draft_ids = backend.asarray(np.array([drafts], dtype=np.int64).reshape(1, k), dtype="int64")
        if sampling:
            q_all = xp.concat(q_rows, axis=0) if k else xp.zeros((0, V), dtype=p.dtype)
            accepted, token = verify_drafts(
                xp.reshape(p, (1, k + 1, V)), xp.reshape(q_all, (1, k, V)), draft_ids,
                backend.random_uniform(rng, (1, k), dtype="float32"),
                backend.random_uniform(rng, (1,), dtype="float32"))
        else:
            target_tokens = xp.reshape(xp.astype(xp.argmax(p, axis=-1), xp.int64), (1, k + 1))
            accepted, token = verify_drafts_greedy(target_tokens, draft_ids)
        n = int(backend.to_numpy(accepted)[0])                                      # the one sync per round
        emitted = drafts[:n] + [int(backend.to_numpy(token)[0])]
        stats["rounds"] += 1
        stats["drafted"] += k
        stats["accepted"] += n
        # 4. Keep the accepted tokens; stop after an EOS or at the length limit.
        for token in emitted:
            new.append(token)
            ids.append(token)
            if any_stop(stopping, np.array([ids], dtype=np.int64))[0]:
                return new
        # The caches hold every token but the last (it is fed next round): forget rejected drafts.
        target_cache.crop(min(target_cache.length, len(ids) - 1))
        draft_cache.crop(min(draft_cache.length, len(ids) - 1))
