"""Mutation check: plant one small plausible bug at a time and see whether the tests notice.

Each mutation replaces one exact piece of library code (an off-by-one, a wrong sign, swapped blend weights, `<` for
`<=`) in a throw-away COPY of the repository, runs the tests that ought to catch it, and reports the mutant as
  caught (value)  a test's value check failed: an assert, numpy.testing, pytest.raises that saw no error;
  caught (crash)  some other exception (an IndexError, a shape error, an import error) or the time limit;
  survived        every test passed: the tests cannot tell the bug from the code.
The working tree itself is never touched (other people edit it); the copy holds its tracked and untracked files,
and the shared test data is found through SCRATCH_SHARED_DATA. Hypothesis runs under the deterministic "ci" profile,
so a report reproduces. Not part of CI (it takes ~20-40 minutes on two cores): run it before closing an issue that
touches an algorithm, and put the summary in the closing note. Each run first checks that every pattern still occurs
exactly once (a refactor that moves the code makes the mutation stale: the report says so) and that the unmutated
test subsets pass.

Run:  python bench/mutations.py [--jobs 2] [--only NAME_OR_AREA ...] [--list] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    name: str
    area: str            # tokenizer, nn, models, generate, train, formats, chat
    path: str            # the file, relative to the repository root
    old: str             # must occur exactly once in the file
    new: str
    tests: tuple         # pytest arguments: the tests that should catch it, most specific first
    why: str = ""        # what the bug is, in words
    extra: tuple = field(default=())   # further (old, new) replacements in the same file, for one logical bug


def M(name, area, path, old, new, tests, why="", extra=()):
    return Mutation(name, area, path, old, new, tuple(tests.split()), why, tuple(extra))


T_BPE = "tests/tokenizer/test_bpe.py tests/tokenizer/test_tiktoken_exact.py"
T_HF = "tests/tokenizer/test_shared_vocabularies.py tests/tokenizer/test_hf.py"
T_TRAIN = "tests/tokenizer/test_train.py"
T_FUNC = "tests/nn/test_functional.py"
T_ROPE = "tests/nn/test_rope.py"
T_BEAM = "tests/generate/test_beam.py tests/generate/test_beam_recorded.py"
T_PROC = "tests/generate/test_processors.py tests/generate/test_sampling.py"
T_SPEC = "tests/generate/test_speculative.py"

MUTATIONS = [
    # ---- tokenizer ---------------------------------------------------------------------------------------------
    M("bpe-merge-rightmost-tie", "tokenizer", "scratch/tokenizer/bpe.py",
      "at = ranks.index(best)", "at = len(ranks) - 1 - ranks[::-1].index(best)", T_BPE,
      "the plain merge loop takes the rightmost of equal ranks"),
    M("bpe-fast-stale-entry", "tokenizer", "scratch/tokenizer/bpe_fast.py",
      "if after >= size or ids[at] != left or ids[after] != right:", "if after >= size or ids[at] != left:",
      T_BPE, "the heap uses an entry whose right neighbour changed since the push"),
    M("bpe-special-shortest-first", "tokenizer", "scratch/tokenizer/bpe.py",
      "alternatives = sorted(tokens, key=lambda token: (-len(token), token))",
      "alternatives = sorted(tokens, key=lambda token: (len(token), token))", T_BPE,
      "special tokens matched shortest first (a prefix wins over the longer token)"),
    M("hf-merges-drop-last-10pct", "tokenizer", "scratch/tokenizer/hf.py",
      "        merges.append((parts[0], parts[1]))\n    return merges",
      "        merges.append((parts[0], parts[1]))\n    return merges[:len(merges) * 9 // 10]",
      "tests/tokenizer/test_shared_vocabularies.py::test_agrees_with_tokenizers_running_the_model_pre_tokenizer "
      + T_HF, "reading merges.txt loses its last 10% of merges"),
    M("hf-byte-table-off-by-one", "tokenizer", "scratch/formats/byte_alphabet.py",
      "table[byte] = chr(256 + extra)", "table[byte] = chr(257 + extra)", T_HF,
      "GPT-2's byte-to-unicode stand-ins shifted by one"),
    M("train-tie-largest-right", "tokenizer", "scratch/tokenizer/train.py",
      "key=lambda candidate: (-pair_counts[candidate], candidate))",
      "key=lambda candidate: (-pair_counts[candidate], candidate[::-1]))", T_TRAIN,
      "the reference trainer breaks count ties by the right id first"),
    M("train-fast-left-neighbour", "tokenizer", "scratch/tokenizer/train_fast.py",
      "                if i > 0:\n                    before = ids[i - 1]",
      "                if i > 1:\n                    before = ids[i - 1]", T_TRAIN,
      "the fast trainer forgets to patch the left neighbour's pair at position 1"),
    M("train-merge-overlapping", "tokenizer", "scratch/tokenizer/train.py",
      "            merged.append(new_id)\n            i += 2", "            merged.append(new_id)\n            i += 1",
      T_TRAIN, "a merge re-reads the pair's right token (overlapping merges)"),
    M("tiktoken-split-order", "tokenizer", "scratch/tokenizer/tiktoken_format.py",
      "        if len(splits) > 1:\n            splits.sort()", "        if len(splits) > 1:\n            splits.reverse()",
      "tests/tokenizer/test_tiktoken_exact.py " + T_BPE, "a token's splits listed in another order"),
    M("pretokenize-trailing-whitespace", "tokenizer", "scratch/tokenizer/pretokenize.py",
      "if first_trailing < len(chunks) - 1:", "if first_trailing < len(chunks) - 2:",
      "tests/tokenizer/test_pretokenize.py tests/tokenizer/test_tiktoken_exact.py",
      "cl100k's fast splitter joins trailing whitespace only from three chunks on"),
    M("sentencepiece-score-tie", "tokenizer", "scratch/tokenizer/sentencepiece.py",
      "self.scores[piece_id] > best_score", "self.scores[piece_id] >= best_score",
      "tests/tokenizer/test_sentencepiece.py", "SentencePiece merges the rightmost of equal scores"),
    M("chat-template-specials-shortest", "tokenizer", "scratch/tokenizer/chat_template.py",
      "key=lambda token: (-len(token), token))))", "key=lambda token: (len(token), token))))",
      "tests/tokenizer/test_chat_template.py tests/tokenizer/test_gguf_tokenizer.py",
      "special tokens in a chat matched shortest first"),
    M("gguf-vocab-missing-id", "tokenizer", "scratch/tokenizer/gguf_vocab.py",
      "0 <= value < len(tokens) else -1", "0 < value < len(tokens) else -1",
      "tests/tokenizer/test_gguf_tokenizer.py", "token id 0 read as 'no such token'"),
    # ---- nn -----------------------------------------------------------------------------------------------------
    M("layer-norm-eps-outside-sqrt", "nn", "scratch/nn/functional.py",
      "centred / xp.sqrt(variance + eps)", "centred / (xp.sqrt(variance) + eps)", T_FUNC,
      "LayerNorm divides by sqrt(var) + eps"),
    M("rms-norm-eps-outside-sqrt", "nn", "scratch/nn/functional.py",
      "x32 / xp.sqrt(mean_square + eps)", "x32 / (xp.sqrt(mean_square) + eps)", T_FUNC,
      "RMSNorm divides by sqrt(mean square) + eps"),
    M("gelu-tanh-constant", "nn", "scratch/nn/functional.py",
      "0.044715 * (x * x * x)", "0.04472 * (x * x * x)", T_FUNC, "GELU's cubic coefficient rounded"),
    M("gelu-erf-sign", "nn", "scratch/nn/functional.py",
      "0.5 * (x * erfc(-x * _INV_SQRT_2))", "0.5 * (x * erfc(x * _INV_SQRT_2))", T_FUNC, "x Phi(-x) for x Phi(x)"),
    M("softmax-no-max-shift", "nn", "scratch/nn/functional.py",
      "exps = xp.exp(x - _finite_max(xp, x, axis))", "exps = xp.exp(x)", T_FUNC,
      "softmax without subtracting the row max (overflows)"),
    M("silu-branch-swap", "nn", "scratch/nn/functional.py",
      "xp.where(x >= 0.0, 1.0 / (1.0 + exp_neg_abs), exp_neg_abs / (1.0 + exp_neg_abs))",
      "xp.where(x < 0.0, 1.0 / (1.0 + exp_neg_abs), exp_neg_abs / (1.0 + exp_neg_abs))", T_FUNC,
      "the stable sigmoid's two branches swapped"),
    M("half-not-upcast", "nn", "scratch/nn/precision.py",
      "        return xp.astype(x, xp.float32), x.dtype", "        return x, x.dtype", T_FUNC,
      "float16 computed in float16 inside softmax, norms and activations"),
    M("erfc-chebyshev-coefficient", "nn", "scratch/nn/error_function.py",
      "0.27886807, -1.13520398", "0.27886807, -1.13520498", "tests/nn/test_error_function.py " + T_FUNC,
      "one digit of the Chebyshev fit"),
    M("rope-rotate-half-sign", "nn", "scratch/nn/rope.py",
      "rotated = xp.concat([-x[..., half:], x[..., :half]], axis=-1)",
      "rotated = xp.concat([x[..., half:], -x[..., :half]], axis=-1)", T_ROPE, "rotate_half with the sign swapped"),
    M("rope-interleaved-sign", "nn", "scratch/nn/rope.py",
      "out_odd = even * pair_sin + odd * pair_cos", "out_odd = -even * pair_sin + odd * pair_cos", T_ROPE,
      "Meta's interleaved rotation with the wrong sign"),
    M("rope-frequency-off-by-one", "nn", "scratch/nn/rope.py",
      "np.arange(0, head_dim, 2, dtype=np.float64) / head_dim", "np.arange(1, head_dim, 2, dtype=np.float64) / head_dim",
      T_ROPE, "theta^(-(2i+1)/D) instead of theta^(-2i/D)"),
    M("rope-llama3-blend-swapped", "nn", "scratch/nn/rope.py",
      "blended = (1.0 - smooth) * inv_freq / factor + smooth * inv_freq",
      "blended = smooth * inv_freq / factor + (1.0 - smooth) * inv_freq", T_ROPE,
      "Llama 3's smooth interpolation with its blend weights swapped"),
    M("causal-mask-diagonal", "nn", "scratch/nn/masks.py",
      "return key_pos <= query_pos", "return key_pos < query_pos", "tests/nn/test_masks.py tests/nn/test_attention.py",
      "a query may not see its own key"),
    M("causal-mask-offset", "nn", "scratch/nn/masks.py",
      "xp.arange(S - T, S, dtype=xp.int64), (T, 1))", "xp.arange(S - T + 1, S + 1, dtype=xp.int64), (T, 1))",
      "tests/nn/test_masks.py tests/nn/test_attention.py", "the cache offset off by one: each query sees one future key"),
    M("position-ids-from-one", "nn", "scratch/nn/masks.py",
      "return xp.clip(counts - 1, 0, None)", "return xp.clip(counts, 0, None)", "tests/nn/test_masks.py",
      "a left-padded row's positions start at 1"),
    M("attention-scale", "nn", "scratch/nn/dot_product_attention.py",
      "    scale = 1.0 / math.sqrt(D) if scale is None else scale", "    scale = 1.0 / D if scale is None else scale",
      "tests/nn/test_attention.py", "scores scaled by 1/D instead of 1/sqrt(D)"),
    M("kv-cache-reorder-keys-only", "nn", "scratch/nn/kv_cache.py",
      "        self._v = [self._gather_written(buf, indices) for buf in self._v]\n", "",
      "tests/nn/test_kv_cache.py", "reorder moves the keys but not the values"),
    M("linear-bias-sign", "nn", "scratch/nn/functional.py",
      "return y if b is None else y + b", "return y if b is None else y - b", T_FUNC, "the bias subtracted"),
    # ---- models -------------------------------------------------------------------------------------------------
    M("decoder-mask-from-three-tokens", "models", "scratch/models/decoder.py",
      "return None, (causal_mask(T, S, backend.xp) if T > 1 else None)",
      "return None, (causal_mask(T, S, backend.xp) if T > 2 else None)",
      "tests/models/test_cache_consistency.py tests/models/test_gpt2.py tests/models/test_llama.py",
      "a two-token call runs unmasked (the first token sees the second)"),
    M("decoder-blocked-prefill-edge", "models", "scratch/models/decoder.py",
      "visible = S - T + end ", "visible = S - T + end - 1 ",
      "tests/models/test_gpt2.py tests/models/test_llama.py tests/models/test_decoder.py",
      "a query block misses its last key in a long prefill"),
    M("gpt2-residual-skips-attention", "models", "scratch/models/gpt2.py",
      "    h = layer_norm(x, layer.ln_2_w, layer.ln_2_b, config.layer_norm_epsilon)",
      "    h = layer_norm(x - linear(merge_heads(y), layer.attn_proj_w, layer.attn_proj_b), layer.ln_2_w, "
      "layer.ln_2_b, config.layer_norm_epsilon)",
      "tests/models/test_gpt2.py", "the second LayerNorm reads the block input, not the attention residual"),
    M("llama-gate-up-swapped", "models", "scratch/models/llama.py",
      "act(gate_up[..., :F]) * gate_up[..., F:]", "act(gate_up[..., F:]) * gate_up[..., :F]",
      "tests/models/test_llama.py", "SwiGLU's activation on the up projection instead of the gate"),
    M("bert-pooler-no-tanh", "models", "scratch/models/bert.py",
      "pooled = xp.tanh(linear(x[:, 0, :], weights.pooler_w, weights.pooler_b))",
      "pooled = linear(x[:, 0, :], weights.pooler_w, weights.pooler_b)", "tests/models/test_bert.py",
      "BERT's pooler without its tanh"),
    M("gguf-llama-qk-not-permuted", "models", "scratch/models/gguf.py",
      '"attn_k.weight": self.config.num_key_value_heads,', '"attn_k.weightX": self.config.num_key_value_heads,',
      "tests/models/test_gguf_models.py", "llama.cpp's interleaved K rows left interleaved"),
    M("safetensors-bf16-shift", "models", "scratch/models/safetensors.py",
      "return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)",
      "return (bits.astype(np.uint32) << np.uint32(15)).view(np.float32)", "tests/models/test_safetensors.py",
      "bfloat16 widened with the wrong shift"),
    M("safetensors-bf16-round-down", "models", "scratch/models/safetensors.py",
      "(np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))", "(np.uint32(0x7FFF))",
      "tests/models/test_safetensors.py", "float32 -> bfloat16 rounds ties up instead of to even"),
    M("inputs-context-limit", "models", "scratch/models/inputs.py",
      "    if past + T > limit:", "    if past + T >= limit:",
      "tests/models/test_gpt2.py tests/models/test_llama.py tests/models/test_cache_consistency.py",
      "a sequence exactly as long as the context is refused"),
    M("weights-shape-unchecked", "models", "scratch/models/weights.py",
      "        if tuple(array.shape) != tuple(shape):", "        if len(array.shape) != len(shape):",
      "tests/models/test_loader.py tests/models/test_gpt2.py tests/models/test_llama.py tests/models/test_bert.py",
      "a tensor of the wrong shape (same rank) is accepted"),
    M("presets-kv-cache-heads", "models", "scratch/models/presets.py",
      "layers, kv_heads, head_dim = config.num_hidden_layers, config.num_key_value_heads, config.head_dim",
      "layers, kv_heads, head_dim = config.num_hidden_layers, config.num_attention_heads, config.head_dim",
      "tests/models/test_presets.py", "the KV cache counted with every query head (GQA ignored)"),
    M("config-head-dim", "models", "scratch/models/config.py",
      'object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)',
      'object.__setattr__(self, "head_dim", self.hidden_size // self.num_key_value_heads)',
      "tests/models/test_config.py tests/models/test_llama.py", "Llama's default head_dim from the kv heads"),
    M("loader-architecture-first-ignored", "models", "scratch/models/loader.py",
      "        name = names[0]\n", "        name = names[-1]\n", "tests/models/test_loader.py",
      "the last of config.json's architectures is taken"),
    M("parity-tolerance-ignored", "models", "scratch/models/parity.py",
      "passed = True if tolerance is None else bool(rel <= tolerance)", "passed = True",
      "tests/models/test_parity.py", "the parity report passes every row"),
    # ---- generate -----------------------------------------------------------------------------------------------
    M("beam-never-bound-short", "generate", "scratch/generate/beam.py",
      'best_length = max_new if (config.early_stopping == "never"',
      'best_length = max_new - 1 if (config.early_stopping == "never"', T_BEAM,
      "early_stopping='never' bounds the best running beam one token short of the longest it may become"),
    M("beam-finish-rank-le", "generate", "scratch/generate/beam.py",
      "just_finished = ended & (np.arange(K) < num_beams)[None, :]",
      "just_finished = ended & (np.arange(K) <= num_beams)[None, :]", T_BEAM,
      "an ended candidate just outside the top num_beams becomes a hypothesis"),
    M("beam-length-penalty-count", "generate", "scratch/generate/beam.py",
      "finished = _finish_hypotheses(finished, candidates, ended, improvable, step + 1, config)",
      "finished = _finish_hypotheses(finished, candidates, ended, improvable, step + 2, config)", T_BEAM,
      "a hypothesis' length counted one token long"),
    M("beam-sample-unrenormalised", "generate", "scratch/generate/beam.py",
      "usable = probs / safe", "usable = probs", T_BEAM,
      "beam sampling draws from the remaining mass without renormalising it"),
    M("group-beam-rank-le", "generate", "scratch/generate/group_beam.py",
      "if rank < group_size:", "if rank <= group_size:", T_BEAM,
      "an ended candidate just outside the group's best counts as a hypothesis"),
    M("group-beam-hamming-own-group", "generate", "scratch/generate/group_beam.py",
      "chosen[b * num_beams:b * num_beams + g * group_size]", "chosen[b * num_beams:b * num_beams + (g + 1) * group_size]",
      T_BEAM, "the Hamming penalty counts the group's own (not yet chosen) slots"),
    M("group-beam-done-strict", "generate", "scratch/generate/group_beam.py",
      "return self.worst >= best_sum_logprobs / length_divisor(length, length_penalty)",
      "return self.worst > best_sum_logprobs / length_divisor(length, length_penalty)", T_BEAM,
      "a group is done only when its worst hypothesis is strictly better (a tie goes on)"),
    M("top-p-boundary", "generate", "scratch/generate/processors.py",
      "xp.astype(cumulative <= threshold, xp.int64)", "xp.astype(cumulative < threshold, xp.int64)", T_PROC,
      "top-p keeps a token whose cumulative probability equals 1 - top_p"),
    M("typical-boundary", "generate", "scratch/generate/processors.py",
      "xp.astype(cumulative < self.mass, xp.int64)", "xp.astype(cumulative <= self.mass, xp.int64)", T_PROC,
      "typical-p keeps one more token when the mass is reached exactly"),
    M("min-p-boundary", "generate", "scratch/generate/processors.py",
      "remove = probs < self.min_p * top", "remove = probs <= self.min_p * top", T_PROC,
      "min-p removes a token exactly at the bar"),
    M("epsilon-boundary", "generate", "scratch/generate/processors.py",
      "(softmax(scores) < self.epsilon)", "(softmax(scores) <= self.epsilon)", T_PROC,
      "epsilon removes a token exactly at epsilon"),
    M("eta-entropy-sign", "generate", "scratch/generate/processors.py",
      "eta = xp.minimum(epsilon, xp.sqrt(epsilon) * xp.exp(-entropy))",
      "eta = xp.minimum(epsilon, xp.sqrt(epsilon) * xp.exp(entropy))", T_PROC, "eta's bar grows with the entropy"),
    M("top-k-min-keep", "generate", "scratch/generate/processors.py",
      "kth = kth_largest(scores, max(self.top_k, self.min_tokens_to_keep))",
      "kth = kth_largest(scores, min(self.top_k, self.min_tokens_to_keep))", T_PROC,
      "min_tokens_to_keep caps k instead of raising it"),
    M("repetition-penalty-direction", "generate", "scratch/generate/processors.py",
      "xp.where(scores < 0, scores * self.penalty, scores / self.penalty)",
      "xp.where(scores < 0, scores / self.penalty, scores * self.penalty)", T_PROC,
      "the repetition penalty raises seen tokens"),
    M("no-repeat-ngram-short-prefix", "generate", "scratch/generate/processors.py",
      "        for k in range(n - 1):\n            matches = matches", "        for k in range(n - 2):\n            matches = matches",
      T_PROC, "the n-gram match ignores the prefix's last token"),
    M("presence-penalty-sign", "generate", "scratch/generate/processors.py",
      "return scores - self.presence_penalty * presence", "return scores + self.presence_penalty * presence",
      T_PROC, "the presence penalty added"),
    M("min-new-tokens-off-by-one", "generate", "scratch/generate/processors.py",
      "if input_ids.shape[1] - self.prompt_length >= self.min_new_tokens:",
      "if input_ids.shape[1] - self.prompt_length > self.min_new_tokens:", T_PROC,
      "EOS stays banned one token too long"),
    M("top-k-tie-fallback", "generate", "scratch/generate/selection.py",
      "if bool(xp.any(xp.count_nonzero(scores >= kth, axis=-1) > k)):",
      "if bool(xp.any(xp.count_nonzero(scores >= kth, axis=-1) > k + 1)):",
      "tests/generate/test_selection.py " + T_BEAM, "ties at the k-th place resolved by argpartition's whim"),
    M("kth-largest-off-by-one", "generate", "scratch/generate/selection.py",
      "place = n - max(1, min(k, n))", "place = n - max(1, min(k + 1, n))",
      "tests/generate/test_selection.py tests/generate/test_processors.py", "the (k+1)-th largest value"),
    M("sample-cdf-boundary", "generate", "scratch/generate/sampling.py",
      "index = xp.sum(xp.astype(cdf <= u, xp.int64), axis=-1)", "index = xp.sum(xp.astype(cdf < u, xp.int64), axis=-1)",
      "tests/generate/test_sampling.py", "inverse-CDF picks the first cdf >= u (a token of probability 0 at u = 0)"),
    M("speculative-ratio-inverted", "generate", "scratch/generate/speculative.py",
      "stands = accept_uniforms * q_d < p_d", "stands = accept_uniforms * p_d < q_d", T_SPEC,
      "a draft is accepted with probability q/p instead of p/q"),
    M("speculative-residual-swapped", "generate", "scratch/generate/speculative.py",
      "residual = xp.maximum(p_n - q_n, xp.zeros_like(p_n))", "residual = xp.maximum(q_n - p_n, xp.zeros_like(p_n))",
      T_SPEC, "after a rejection the token comes from max(0, q - p)"),
    M("speculative-cache-keeps-draft", "generate", "scratch/generate/speculative.py",
      "target_cache.crop(min(target_cache.length, len(ids) - 1))", "target_cache.crop(min(target_cache.length, len(ids)))",
      T_SPEC, "the target's cache keeps one position too many after a round"),
    M("stop-string-overlap", "generate", "scratch/generate/stopping.py",
      "text[max(0, fresh_from - len(s) + 1):]", "text[max(0, fresh_from - len(s)):]",
      "tests/generate/test_stopping.py", "a stop string completed a token earlier fires again"),
    M("decode-loop-stops-on-previous-token", "generate", "scratch/generate/decode_loop.py",
      "finished = any_stop(stopping, host_ids[:, :cur + 1], finished)",
      "finished = any_stop(stopping, host_ids[:, :cur], finished)",
      "tests/generate/test_generate.py tests/generate/test_generate_exact.py", "EOS noticed one step late"),
    M("contrastive-blend-swapped", "generate", "scratch/generate/contrastive.py",
      "score = (1.0 - alpha) * probs - alpha * penalty", "score = alpha * probs - (1.0 - alpha) * penalty",
      "tests/generate/test_contrastive.py", "model confidence and degeneration penalty weights swapped"),
    M("prompt-pads-penalised", "generate", "scratch/generate/prompt.py",
      "padding = (prompt.length - prompt.lengths).tolist() if prompt.has_padding else None", "padding = None",
      "tests/generate/test_generate_exact.py tests/generate/test_generate.py " + T_BEAM,
      "the repetition penalty counts left padding"),
    M("output-last-scores", "generate", "scratch/generate/output.py",
      "    last = logits[:, -1, :]", "    last = logits[:, 0, :]",
      "tests/generate/test_generate.py tests/generate/test_generate_exact.py", "a step reads the first position"),
    M("config-default-length", "generate", "scratch/generate/config.py",
      "return self.max_length if self.max_length is not None else 20",
      "return self.max_length if self.max_length is not None else 21",
      "tests/generate/test_config.py tests/generate/test_generate.py tests/generate/test_stopping.py",
      "transformers' default total length of 20 off by one"),
    M("dispatch-group-as-beam", "generate", "scratch/generate/dispatch.py",
      "    if mode == \"group_beam_search\":\n        return group_beam_search(model, prompt, config)",
      "    if mode == \"group_beam_search\":\n        return beam_search(model, prompt, config, decode)",
      T_BEAM + " tests/generate/test_generate.py", "group beam search silently runs plain beam search"),
    M("stream-holds-nothing-back", "generate", "scratch/generate/stream.py",
      'stable = text.rstrip("\\ufffd")', "stable = text", "tests/generate/test_stream.py",
      "streamed text emits the replacement character of a half-decoded character"),
    M("generate-cli-beam-count", "generate", "scratch/generate/cli.py",
      "        kwargs.update(num_beams=args.num_beams)", "        kwargs.update(num_beams=2)",
      "tests/generate/test_generate_cli.py", "--num-beams ignored by scratch generate"),
    # ---- train --------------------------------------------------------------------------------------------------
    M("layer-norm-backward-sign", "train", "scratch/train/layers.py",
      "    dx -= xhat * xp.mean(dxhat * xhat, axis=-1, keepdims=True)",
      "    dx += xhat * xp.mean(dxhat * xhat, axis=-1, keepdims=True)", "tests/train/test_layers.py",
      "LayerNorm's backward with the projection's sign flipped"),
    M("rope-backward-not-inverse", "train", "scratch/train/layers.py",
      "return apply_rope(dout, cos, -sin, layout=layout)", "return apply_rope(dout, cos, sin, layout=layout)",
      "tests/train/test_layers.py", "RoPE's backward rotates forward again"),
    M("cross-entropy-not-mean", "train", "scratch/train/layers.py",
      "row_scale = xp.where(cache.valid, dloss / cache.count,", "row_scale = xp.where(cache.valid, dloss,",
      "tests/train/test_layers.py", "the loss gradient not divided by the number of targets"),
    M("adamw-bias-correction", "train", "scratch/train/optim.py",
      "denom /= bias_correction2 ** 0.5", "denom /= bias_correction2", "tests/train/test_optim.py",
      "AdamW's second-moment correction without its square root"),
    M("warmup-from-zero", "train", "scratch/train/optim.py",
      "return max_lr * (step + 1) / warmup_steps", "return max_lr * step / warmup_steps", "tests/train/test_optim.py",
      "the warmup starts at 0 (step 0 learns nothing)"),
    M("clip-grows-gradients", "train", "scratch/train/optim.py",
      "coef = xp.minimum(coef, xp.ones_like(coef))", "coef = xp.maximum(coef, xp.ones_like(coef))",
      "tests/train/test_optim.py", "clipping scales small gradients up"),
    M("amp-growth-early", "train", "scratch/train/amp.py",
      "successful = self._growth_tracker + 1", "successful = self._growth_tracker + 2", "tests/train/test_amp.py",
      "the loss scale grows after half the interval"),
    M("data-last-window-never", "train", "scratch/train/data.py",
      "starts = rng.integers(0, n - seq_len, size=batch_size)", "starts = rng.integers(0, n - seq_len - 1, size=batch_size)",
      "tests/train/test_data.py", "the window that ends at the last token is never drawn"),
    M("blocked-attention-backward-overwrites", "train", "scratch/train/decoder.py",
      "            dk[:, :, :end, :] += dk_seen", "            dk[:, :, :end, :] = dk_seen",
      "tests/train/test_layers.py tests/train/test_model_grads.py",
      "a key's gradient keeps only the last query block that saw it"),
    M("gpt2-backward-residual", "train", "scratch/train/gpt2.py",
      "    dx += dout                                                         # the residual path",
      "    dx -= dout                                                         # the residual path",
      "tests/train/test_model_grads.py", "the residual gradient subtracted"),
    M("llama-train-rope-layout", "train", "scratch/train/llama.py",
      'q, rope_q = rope_forward(q, cos, sin, layout="half")', 'q, rope_q = rope_forward(q, cos, sin, layout="interleaved")',
      "tests/train/test_model_grads.py", "the training forward rotates Q in Meta's layout"),
    M("model-grads-loss-scale-dropped", "train", "scratch/train/model_grads.py",
      "backward(tape, cross_entropy_backward(loss_scale, loss_cache), grads)",
      "backward(tape, cross_entropy_backward(1.0, loss_cache), grads)",
      "tests/train/test_model_grads.py tests/train/test_amp.py", "loss_scale ignored by the backward"),
    M("memory-korthikanti-attention", "train", "scratch/train/memory.py",
      "per_layer = 34 * h + 5 * a * seq_len", "per_layer = 34 * h + 5 * seq_len", "tests/train/test_memory.py",
      "the attention term of the activation formula without its heads"),
    M("loop-no-clipping", "train", "scratch/train/loop.py",
      "norm = float(clip_grad_norm(grads, s.max_grad_norm))",
      "norm = float(clip_grad_norm(grads, 1e30 * s.max_grad_norm))", "tests/train/test_loop.py",
      "the loop's gradient clipping does nothing"),
    M("train-cli-eos", "train", "scratch/train/cli.py",
      "return dataclasses.replace(config, vocab_size=vocab_size, bos_token_id=eos_id, eos_token_id=eos_id)",
      "return dataclasses.replace(config, vocab_size=vocab_size, bos_token_id=eos_id, eos_token_id=None)",
      "tests/train/test_train_cli.py", "the trained model's config loses its end-of-text id"),
    # ---- formats ------------------------------------------------------------------------------------------------
    M("quants-q2k-offset-sign", "formats", "scratch/formats/quants.py",
      "return (scale * q - offset).reshape(N, 256)", "return (scale * q + offset).reshape(N, 256)",
      "tests/formats/test_quants.py", "Q2_K adds its minimum instead of subtracting it"),
    M("quants-k4-high-bits", "formats", "scratch/formats/quants.py",
      "(last & 0x0F) | ((first_scale >> 6) << 4)", "(last & 0x0F) | ((first_scale >> 6) << 3)",
      "tests/formats/test_quants.py", "Q4_K/Q5_K's upper scales with their top bits misplaced"),
    M("gguf-data-unaligned", "formats", "scratch/formats/gguf.py",
      "data_offset = -(-cursor.pos // alignment) * alignment", "data_offset = (cursor.pos // alignment) * alignment",
      "tests/formats/test_gguf.py", "the data section rounded down instead of up to the alignment"),
    M("hub-offline-ignored", "formats", "scratch/formats/hub.py",
      "def hub_offline() -> bool:\n", "def hub_offline() -> bool:\n    return False\n", "tests/test_hub.py",
      "HF_HUB_OFFLINE is ignored"),
    # ---- chat ---------------------------------------------------------------------------------------------------
    M("chat-prefix-one-too-long", "chat", "scratch/chat/session.py",
      "return limit if same.all() else int(np.argmin(same))", "return limit if same.all() else int(np.argmin(same)) + 1",
      "tests/chat/test_chat.py", "the cross-turn cache keeps one token that differs"),
    # ---- the modules the later issues added: adapters, bundled model, demo, atomic writes, untrusted reads ----------
    M("adapter-rslora-swapped", "models", "scratch/models/adapter.py",
      "return lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r",
      "return lora_alpha / r if use_rslora else lora_alpha / math.sqrt(r)",
      "tests/train/test_lora.py", "rsLoRA's alpha / sqrt(r) and plain LoRA's alpha / r are exchanged"),
    M("lora-merge-subtracts", "train", "scratch/train/lora.py",
      "        weight[:, start:end] += delta\n", "        weight[:, start:end] -= delta\n",
      "tests/train/test_lora.py", "merge_lora subtracts scaling * B A instead of adding it"),
    M("train-parity-drops-a-weight", "train", "scratch/train/parity.py",
      "                           for name in grads])", "                           for name in list(grads)[:-1]])",
      "tests/train/test_parity.py", "the gradient rows leave out the last weight"),
    M("presets-windows-do-not-overlap", "train", "scratch/train/presets.py",
      "    starts = np.arange(0, ids.size - 1, seq_len)", "    starts = np.arange(0, ids.size - 1, seq_len + 1)",
      "tests/test_bundled.py", "held-out windows skip one token between them (each window's first id never predicted)"),
    M("bundled-heldout-big-endian", "train", "scratch/bundled/__init__.py",
      'np.frombuffer(raw, dtype="<u2")', 'np.frombuffer(raw, dtype=">u2")',
      "tests/test_bundled.py", "the shipped held-out ids are read big-endian"),
    M("demo-no-cache-first-position", "train", "scratch/demo/__init__.py",
      "xp.argmax(logits[0, -1, :])", "xp.argmax(logits[0, 0, :])",
      "tests/test_demo.py", "the no-cache greedy loop reads the first position's logits, not the last"),
    M("atomic-temporary-left-behind", "formats", "scratch/atomic.py",
      "        tmp.unlink(missing_ok=True)\n        raise", "        raise",
      "tests/test_atomic.py", "a failed write leaves its temporary file in the folder"),
    M("safe-read-accepts-fifo", "formats", "scratch/safe_read.py",
      "    if not stat.S_ISREG(info.st_mode):", "    if stat.S_ISDIR(info.st_mode):",
      "tests/bad_inputs/test_cli.py tests/bad_inputs/test_weights.py tests/bad_inputs/test_tokenizer_files.py",
      "a FIFO or device is read as if it were a file"),
    M("chat-cli-sampling-flag", "chat", "scratch/chat/cli.py",
      "        kwargs.update(do_sample=True, **warpers)", "        kwargs.update(do_sample=False, **warpers)",
      "tests/chat/test_chat.py", "--strategy sample decodes greedily"),
]


# ---------------------------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------------------------

PROBE = '''
import json, os
import pytest

_VALUE = ("AssertionError", "Failed")   # numpy.testing raises AssertionError; pytest.fail / DID NOT RAISE: Failed
_record = {"failures": []}


def _kind(excinfo):
    exc = excinfo.value
    names = [type(exc).__name__]
    for sub in getattr(exc, "exceptions", ()) or ():       # hypothesis reports several failures as a group
        names.append(type(sub).__name__)
    return "value" if any(n in _VALUE for n in names) else "crash:" + names[0]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.excinfo is not None:
        _record["failures"].append({"test": item.nodeid, "when": report.when, "kind": _kind(call.excinfo)})


def pytest_collectreport(report):
    if report.failed:
        _record["failures"].append({"test": report.nodeid, "when": "collect", "kind": "crash:collection"})


def pytest_sessionfinish(session, exitstatus):
    with open(os.environ["MUTATION_PROBE_OUT"], "w") as f:
        json.dump(_record, f)
'''


def working_tree_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                         capture_output=True).stdout.decode()
    return [p for p in out.split("\0") if p and (ROOT / p).is_file()]


def make_copy(files: list[str], dest: Path) -> None:
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)


def check_patterns(mutations, root: Path = ROOT) -> dict[str, str]:
    """name -> problem, for mutations whose patterns do not occur exactly once (stale after a refactor)."""
    problems = {}
    for m in mutations:
        path = root / m.path
        if not path.is_file():
            problems[m.name] = f"{m.path} does not exist"
            continue
        text = path.read_text(encoding="utf-8")
        for old, _ in ((m.old, m.new),) + m.extra:
            count = text.count(old)
            if count != 1:
                problems[m.name] = f"pattern occurs {count} times in {m.path}: {old[:60]!r}"
                break
    return problems


def existing_tests(args: tuple) -> list[str]:
    """The pytest arguments whose file exists (a test file named in a mutation may not exist in older trees)."""
    return list(dict.fromkeys(a for a in args if a.startswith("-") or (ROOT / a.split("::")[0]).exists()))


def run_pytest(copy: Path, tests: list[str], timeout: float, shared: str | None, stop_first: bool = True,
               deselect: tuple = ()) -> dict:
    probe_dir = copy / ".mutation_probe"
    probe_dir.mkdir(exist_ok=True)
    (probe_dir / "mutation_probe.py").write_text(PROBE, encoding="utf-8")
    out = probe_dir / "result.json"
    env = dict(os.environ, PYTHONPATH=f"{copy}{os.pathsep}{probe_dir}", MUTATION_PROBE_OUT=str(out),
               HYPOTHESIS_PROFILE="ci", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("CI", None)
    if shared:
        env["SCRATCH_SHARED_DATA"] = shared
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "mutation_probe", "-o", "addopts=",
           *(["-x"] if stop_first else []), *[f"--deselect={node}" for node in deselect], *tests]
    start = time.time()
    try:
        proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "caught", "kind": "crash:timeout", "test": "", "seconds": time.time() - start,
                "failures": []}
    seconds = time.time() - start
    failures = json.loads(out.read_text())["failures"] if out.exists() else []
    if proc.returncode == 0:
        return {"status": "survived", "kind": "", "test": "", "seconds": seconds, "failures": []}
    if proc.returncode == 5:   # no tests collected
        return {"status": "error", "kind": "no tests ran", "test": "", "seconds": seconds, "failures": []}
    first = failures[0] if failures else {"test": "", "kind": f"crash:pytest exit {proc.returncode}"}
    return {"status": "caught", "kind": first["kind"], "test": first["test"], "seconds": seconds,
            "failures": failures, "tail": proc.stdout[-1500:] if not failures else ""}


def apply_mutation(copy: Path, m: Mutation) -> None:
    path = copy / m.path
    text = path.read_text(encoding="utf-8")
    for old, new in ((m.old, m.new),) + m.extra:
        assert text.count(old) == 1, (m.name, old)
        text = text.replace(old, new)
    path.write_text(text, encoding="utf-8")


def shared_data() -> str | None:
    override = os.environ.get("SCRATCH_SHARED_DATA")
    path = Path(override) if override else ROOT.parent / "shared" / "data"
    return str(path.resolve()) if path.is_dir() else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", default=None, help="mutation names or areas to run")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at once (each runs pytest single-threaded)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per mutant before it counts as caught")
    parser.add_argument("--list", action="store_true", help="list the mutations and check their patterns")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of each test subset")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copies (their path is printed)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)

    chosen = [m for m in MUTATIONS if args.only is None or m.name in args.only or m.area in args.only]
    names = Counter(m.name for m in MUTATIONS)
    assert max(names.values()) == 1, [n for n, c in names.items() if c > 1]
    stale = check_patterns(chosen)
    if args.list:
        for m in chosen:
            print(f"{m.area:10} {m.name:40} {m.path}" + (f"   STALE: {stale[m.name]}" if m.name in stale else ""))
        return 1 if stale else 0

    shared = shared_data()
    work = Path(tempfile.mkdtemp(prefix="scratch-mutations-"))
    # One snapshot of the working tree, taken now: every mutant is a copy of it, so edits other people make to
    # the tree while the check runs (half-done, maybe broken for a minute) cannot reach a mutant.
    snapshot = work / "snapshot"
    make_copy(working_tree_files(), snapshot)
    print(f"copies under {work}; shared data: {shared or 'none (tests that need it will skip)'}", flush=True)
    results: dict[str, dict] = {}
    try:
        stale = check_patterns(chosen, snapshot)
        runnable = [m for m in chosen if m.name not in stale]
        for m in chosen:
            if m.name in stale:
                results[m.name] = {"status": "stale", "kind": stale[m.name], "test": "", "seconds": 0.0}

        # Baseline: every test file the mutations name, once, unmutated. A test that fails there (another
        # engineer's unfinished work, a flaky timing test) is deselected from the mutant runs, and named.
        broken: tuple = ()
        if not args.no_baseline:
            files_run = sorted({a.split("::")[0] for m in runnable for a in existing_tests(m.tests)
                                if not a.startswith("-")})
            base = work / "baseline"
            shutil.copytree(snapshot, base)
            result = run_pytest(base, files_run, args.timeout * 4, shared, stop_first=False)
            shutil.rmtree(base, ignore_errors=True)
            broken = tuple(sorted({f["test"] for f in result["failures"]}))
            for node in broken:
                print(f"BASELINE FAILS (deselected from every mutant run): {node}", flush=True)
            print(f"baseline: {len(files_run)} test files, {result['seconds']:.0f} s", flush=True)

        def one(m: Mutation):
            subset = existing_tests(m.tests)
            copy = work / m.name
            shutil.copytree(snapshot, copy)
            apply_mutation(copy, m)
            result = run_pytest(copy, subset, args.timeout, shared, deselect=broken)
            if not args.keep:
                shutil.rmtree(copy, ignore_errors=True)
            return m, result

        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            for m, result in pool.map(one, runnable):
                results[m.name] = result
                print(f"{m.area:9} {m.name:40} {result['status']:9} {result['kind']:22} {result['seconds']:6.0f} s  "
                      f"{result['test']}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    report(chosen, results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0 if all(r["status"] == "caught" for r in results.values()) else 1


def report(chosen, results) -> None:
    print("\nmutation report (planted / caught by a value check / caught by a crash / survived / other)")
    areas = sorted({m.area for m in chosen}, key=[m.area for m in MUTATIONS].index)
    totals = Counter()
    for area in areas:
        rows = [results[m.name] for m in chosen if m.area == area and m.name in results]
        counts = Counter("value" if r["status"] == "caught" and r["kind"] == "value" else
                         "crash" if r["status"] == "caught" else
                         "survived" if r["status"] == "survived" else "other" for r in rows)
        totals.update(counts)
        totals["planted"] += len(rows)
        print(f"  {area:10} planted {len(rows):3}  value {counts['value']:3}  crash {counts['crash']:3}  "
              f"survived {counts['survived']:3}  other {counts['other']:3}")
    print(f"  {'total':10} planted {totals['planted']:3}  value {totals['value']:3}  crash {totals['crash']:3}  "
          f"survived {totals['survived']:3}  other {totals['other']:3}")
    for m in chosen:
        r = results.get(m.name)
        if r and r["status"] != "caught":
            print(f"  {r['status'].upper()}: {m.name} ({m.path}): {m.why} {r['kind']}")
        elif r and r["kind"] != "value":
            print(f"  crash only: {m.name}: {r['kind']} in {r['test']}")


if __name__ == "__main__":
    sys.exit(main())
