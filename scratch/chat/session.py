"""A conversation with an instruct model that keeps its KV cache from one turn to the next.

Each turn the whole conversation is rendered with the tokenizer's chat template and tokenized. The model has
already seen most of those ids: they are what it read and wrote in earlier turns, and their keys and values are
still in the cache. So only the ids after the longest common prefix of "what the cache holds" and "the new
prompt" -- the end-of-turn markup after the last reply and the new user message -- go through the model (the
prefill), then the reply is decoded one token at a time and streamed as text. Re-prefilling the whole
conversation instead would make turn n cost O(n) prompt tokens, O(n^2) over a conversation. Where the template
renders a reply differently from the ids that were generated (it strips it, or the text re-tokenizes otherwise),
the common prefix is shorter and the cache is cropped back to it: always correct, a little less saved.
The reply's ids are those `generate` gives for the whole conversation's ids (the cached keys and values are the
ones a fresh prefill computes, up to float rounding). Not here: several conversations in one batch, sliding the
context window when it fills up (the error says to /reset), beam search.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

import backends
from scratch.generate import GenerationConfig, StopStrings, apply, build_processors, greedy, sample
from scratch.generate.stream import PrefixDecoder

__all__ = ["ChatSession", "TurnStats", "end_of_turn_ids"]

DEFAULT_MAX_NEW_TOKENS = 256
MIN_CACHE_LENGTH = 256  # the first cache holds this many positions (or the first turn), then doubles as needed


@dataclass(frozen=True)
class TurnStats:
    """What one turn cost. prompt_tokens: the conversation so far with the template applied (what the model must
    have seen before replying); reused_tokens: those already in the cache; prefilled_tokens: those run through the
    model this turn before the first reply token (prompt - reused); new_tokens: the reply's tokens."""

    prompt_tokens: int
    reused_tokens: int
    prefilled_tokens: int
    new_tokens: int
    prefill_seconds: float
    decode_seconds: float

    @property
    def seconds(self) -> float:
        return self.prefill_seconds + self.decode_seconds

    def describe(self) -> str:
        """One line: how much of the prompt the cross-turn cache saved."""
        return (f"[prefilled {self.prefilled_tokens} of {self.prompt_tokens} prompt tokens ({self.reused_tokens} "
                f"reused from the cache), {self.new_tokens} new tokens, {self.seconds:.2f} s]")


def end_of_turn_ids(model, tokenizer, config: GenerationConfig) -> tuple[int, ...]:
    """The ids that end a reply: the config's eos_token_id if set, else the model config's EOS, the tokenizer's
    EOS / end-of-turn ids and its eos_token text (e.g. ChatML's "<|im_end|>"); only ids inside the vocabulary."""
    if config.eos_token_ids:
        return tuple(config.eos_token_ids)
    found: list[int] = []
    model_eos = getattr(model.config, "eos_token_id", None)
    found += [model_eos] if isinstance(model_eos, int) else list(model_eos or ())
    for name in ("eos_token_id", "eot_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            found.append(value)
    eos_text = (getattr(tokenizer, "special_tokens_map", None) or {}).get("eos_token")
    if eos_text is not None and hasattr(tokenizer, "chat_special_ids"):
        special = tokenizer.chat_special_ids().get(eos_text)
        if special is not None:
            found.append(special)
    return tuple(sorted({token for token in found if 0 <= token < model.n_vocab}))


def _common_prefix(a: list[int], b: list[int]) -> int:
    limit = min(len(a), len(b))
    same = np.asarray(a[:limit], dtype=np.int64) == np.asarray(b[:limit], dtype=np.int64)
    return limit if same.all() else int(np.argmin(same))


class ChatSession:
    """A conversation: `send(text)` streams the reply's text pieces, `ask(text)` returns the whole reply.

    model: a causal LM (GPT-2 or Llama, any backend); tokenizer: one with a chat template (`load_tokenizer` of a
    GGUF or a Hugging Face folder). system: an optional system message, kept by `reset()`. config / generation
    keyword arguments: as `generate`'s (greedy by default; do_sample=True with temperature, top_k, top_p, min_p;
    repetition_penalty, stop_strings, seed, max_new_tokens -- per reply, default 256). reuse_cache=False re-prefills
    the whole conversation every turn (the baseline the cross-turn cache is measured against).
    `history` holds a TurnStats per turn; `messages` the conversation as the template sees it.
    """

    def __init__(self, model, tokenizer, *, system: str | None = None, config: GenerationConfig | None = None,
                 reuse_cache: bool = True, chat_template: str | None = None, **generation):
        if not hasattr(model, "new_cache"):
            raise ValueError(f"{type(model).__name__} cannot chat: a conversation needs a causal LM (GPT-2, Llama)")
        config = config if config is not None else GenerationConfig()
        config = config.replace(**generation) if generation else config
        if config.max_new_tokens is None and config.max_length is None:
            config = config.replace(max_new_tokens=DEFAULT_MAX_NEW_TOKENS)
        if config.mode not in ("greedy_search", "sample"):
            raise ValueError(f"a chat decodes greedily or by sampling, not by {config.mode}")
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.system, self.reuse_cache, self.chat_template = system, reuse_cache, chat_template
        self.end_ids = end_of_turn_ids(model, tokenizer, config)
        self.messages: list[dict] = []
        self.history: list[TurnStats] = []
        self.last_reply_ids: list[int] = []  # the last reply's token ids (without its end-of-turn id)
        self._rng = backends.rng(config.seed)
        self._cache = None           # the KV cache, kept across turns (grown by doubling when a turn needs more)
        self._cached_ids: list[int] = []  # the ids whose keys/values the cache holds: exactly cache.length of them
        self.reset()

    # ---------------------------------------------------------------------------------------------------------
    def reset(self, system: str | None = None) -> None:
        """Start a new conversation (keeping the system message, or replacing it); the cache is emptied."""
        if system is not None:
            self.system = system
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        if self._cache is not None:
            self._cache.reset()
        self._cached_ids = []

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The ids the model reads before replying to `messages`: the template with the assistant's turn opened."""
        return list(self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template,
                                                       add_generation_prompt=True, tokenize=True))

    def ask(self, text: str) -> str:
        return "".join(self.send(text))

    def send(self, text: str) -> Iterator[str]:
        """Add the user's message and stream the reply's text; the reply joins the conversation when it ends
        (an interrupted reply is not kept, and the cache forgets it too)."""
        messages = self.messages + [{"role": "user", "content": text}]
        prompt = self.prompt_ids(messages)
        decoder = (self.tokenizer.stream_decoder() if hasattr(self.tokenizer, "stream_decoder")
                   else PrefixDecoder(self.tokenizer))
        reply_ids: list[int] = []
        stops = StopStrings(self.config.stop_strings, self.tokenizer.decode) if self.config.stop_strings else None
        finished = False
        tokens = self._reply(prompt)
        try:
            for token in tokens:
                if token in self.end_ids:
                    break
                reply_ids.append(token)
                piece = decoder.push(token)
                if piece:
                    yield piece
                if stops is not None and stops.row_stops(reply_ids):
                    break
            tail = decoder.flush()
            if tail:
                yield tail
            finished = True
        finally:
            tokens.close()    # ends the decode loop where it stopped (its statistics are recorded then)
            if not finished:  # interrupted (Ctrl-C, generator closed): the conversation stays as it was
                self._forget_after(len(prompt))
        self.last_reply_ids = reply_ids
        reply = self.tokenizer.decode(reply_ids)
        if stops is not None:  # the text ends after the stop string it completed
            ends = [reply.find(s) + len(s) for s in self.config.stop_strings if s in reply]
            reply = reply[:min(ends)] if ends else reply
        self.messages = messages + [{"role": "assistant", "content": reply}]

    # ---------------------------------------------------------------------------------------------------------
    def _forget_after(self, length: int) -> None:
        """Keep at most `length` cached positions. Interrupted inside a forward pass, the cache has a step half
        written (some layers updated, no advance): then it starts over empty, the next turn prefills it all."""
        if self._cache is None:
            return
        keep = min(length, len(self._cached_ids))
        try:
            self._cache.crop(keep)
            self._cached_ids = self._cached_ids[:keep]
        except ValueError:
            self._cache.reset()
            self._cached_ids = []

    def _prepare_cache(self, prompt: list[int], needed: int) -> int:
        """Make the cache hold the longest prefix of `prompt` it already has (at most len(prompt) - 1: the last
        prompt token must go through the model, its logits start the reply), with room for `needed` positions.
        Returns how many positions it keeps."""
        keep = _common_prefix(self._cached_ids, prompt) if self.reuse_cache else 0
        keep = min(keep, len(prompt) - 1)
        old = self._cache
        if old is not None:
            old.crop(min(keep, old.length))
        if old is None or old.max_length < needed:
            capacity = min(self.model.max_length, max(needed, MIN_CACHE_LENGTH,
                                                      2 * (old.max_length if old is not None else 0)))
            new = self.model.new_cache(1, capacity)
            if old is not None and keep:   # copy the kept positions once, layer by layer
                for layer in range(new.n_layers):
                    new.update(layer, *old.get(layer))
                new.advance(keep)
            self._cache = new
        self._cached_ids = self._cached_ids[:keep]
        return keep

    def _reply(self, prompt: list[int]) -> Iterator[int]:
        """The reply's token ids, one per step, ending with an end-of-turn id or at the length limit."""
        model, config = self.model, self.config
        backend = model.backend
        xp = backend.xp
        room = model.max_length - len(prompt)
        if room < 1:
            raise ValueError(f"the conversation ({len(prompt)} tokens) fills the model's context of "
                             f"{model.max_length}: /reset to start a new one")
        max_new = min(room, config.resolved_max_length(len(prompt)) - len(prompt))
        if max_new < 1:
            raise ValueError(f"max_length {config.max_length} leaves no room for a reply after {len(prompt)} tokens")
        started = time.perf_counter()
        reused = self._prepare_cache(prompt, len(prompt) + max_new)
        new_ids = backend.asarray(np.asarray([prompt[reused:]], dtype=np.int64), dtype="int64")    # (1, T_new)
        logits = model(new_ids, cache=self._cache, logits_to_keep=1)                                # (1, 1, V)
        self._cached_ids = list(prompt)
        scores = _last_scores(xp, logits)                                                           # (1, V)
        processors = build_processors(config, prompt_length=len(prompt))
        context = None
        if processors:   # the ids processors look at (repetition penalty, n-grams): the whole conversation
            context = xp.zeros((1, len(prompt) + max_new), dtype=xp.int64)
            context[:, :len(prompt)] = backend.asarray(np.asarray([prompt], dtype=np.int64), dtype="int64")
        uniforms = backend.random_uniform(self._rng, (1, max_new), dtype="float32") if config.is_sampling else None
        prefill_seconds, new_tokens, decode_started = 0.0, 0, None
        try:
            for step in range(max_new):
                if processors:
                    scores = apply(processors, context[:, :len(prompt) + step], scores)
                token = sample(scores, uniforms[:, step]) if config.is_sampling else greedy(scores)     # (1,)
                token_id = int(backend.to_numpy(token)[0])      # the one device-to-host copy per step
                if decode_started is None:
                    decode_started = time.perf_counter()
                    prefill_seconds = decode_started - started
                new_tokens += 1
                yield token_id
                if token_id in self.end_ids or step == max_new - 1:
                    return
                if context is not None:
                    context[:, len(prompt) + step] = token
                logits = model(xp.reshape(token, (1, 1)), cache=self._cache)                          # (1, 1, V)
                self._cached_ids.append(token_id)
                scores = _last_scores(xp, logits)
        finally:
            decode_seconds = time.perf_counter() - decode_started if decode_started is not None else 0.0
            self.history.append(TurnStats(len(prompt), reused, len(prompt) - reused, new_tokens,
                                          prefill_seconds, decode_seconds))


def _last_scores(xp, logits):
    """(B, 1, V) logits -> (B, V) float32 scores (a half-precision model's too, as transformers processes them)."""
    last = logits[:, -1, :]
    return last if last.dtype == xp.float32 else xp.astype(last, xp.float32)

