"""Streaming generation: text pieces as the model produces them, for printing while it decodes.

`stream_generate(model, tokenizer, prompt, ...)` runs the same loop as `generate` (greedy or sampling, from
`decode_steps`) and yields a `StreamEvent` for every token a row appends, with the text that token completes. The
text comes from the tokenizer's streaming decoder (`tokenizer.stream_decoder()`: push(id) -> str, flush()), which
holds back the bytes of a character cut between tokens, so the pieces of a row joined equal `tokenizer.decode` of
its generated ids (a tokenizer without one gets `PrefixDecoder`, which decodes the growing row). Not here: beam
search or contrastive streaming (their tokens are only final at the end).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

import backends
from scratch.generate.config import GenerationConfig
from scratch.generate.decode_loop import decode_steps
from scratch.generate.prompt import make_config, prepare_prompt

__all__ = ["StreamEvent", "stream_generate", "PrefixDecoder"]


@dataclass(frozen=True)
class StreamEvent:
    """One piece of a stream. token is the id row `row` appended (None for the final flush of a row's decoder);
    text is what it adds to the row's text (may be "" while a multi-byte character is incomplete); finished is True
    on a row's last event."""

    row: int
    token: int | None
    text: str
    finished: bool = False


class PrefixDecoder:
    """The streaming decoder for a tokenizer without `stream_decoder()` (e.g. SentencePiece): decode the row's ids
    so far and emit what the text gained, holding back trailing U+FFFD (bytes of a character still incomplete).
    The pieces joined equal `decode(ids)` by construction; the cost is one decode of the row per token."""

    def __init__(self, tokenizer):
        self.decode, self.ids, self.sent = tokenizer.decode, [], ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.decode(self.ids)
        stable = text.rstrip("\ufffd")
        if not stable.startswith(self.sent):      # rare: a later token rewrote earlier text; wait for flush
            return ""
        piece, self.sent = stable[len(self.sent):], stable
        return piece

    def flush(self) -> str:
        text = self.decode(self.ids)
        if not text.startswith(self.sent):
            raise ValueError("the tokenizer's decode changed text already streamed; cannot stream it")
        piece, self.ids, self.sent = text[len(self.sent):], [], ""
        return piece


def _stream_decoder(tokenizer):
    make = getattr(tokenizer, "stream_decoder", None)
    return make() if make is not None else PrefixDecoder(tokenizer)


def _prompt_ids(tokenizer, prompt) -> list[list[int]]:
    """Text, a list of texts, a list of ids or a list of id lists -> a list of id rows."""
    if isinstance(prompt, str):
        return [tokenizer.encode(prompt)]
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
        return [tokenizer.encode(p) for p in prompt]
    if isinstance(prompt, np.ndarray):
        prompt = prompt.tolist()
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, (list, tuple)) for p in prompt):
        return [list(p) for p in prompt]
    if isinstance(prompt, (list, tuple)):
        return [list(prompt)]
    raise ValueError(f"prompt must be text, a list of texts, a list of token ids or a list of id lists, "
                     f"got {type(prompt).__name__}")


def stream_generate(model, tokenizer, prompt, config: GenerationConfig | None = None,
                    **kwargs) -> Iterator[StreamEvent]:
    """Yield StreamEvents while generating (greedy or sampling; kwargs as for `generate`).

    prompt: text (one row), a list of texts (a batch, left-padded), or token ids. Text is encoded as it is, with no
    BOS: a Llama model expects its bos_token_id first, so pass ids that start with it (`scratch generate` does
    this with --bos auto). For each step, each unfinished
    row yields its token and text piece; a row's last event has finished=True (after its EOS/stop string or at the
    length limit) and a final flush event (token None) follows when the decoder held back bytes.
    """
    config = make_config(config, **kwargs)
    if config.mode not in ("greedy_search", "sample"):
        raise ValueError(f"stream_generate works with greedy decoding and sampling, not with {config.mode}")
    if config.is_sampling and config.num_return_sequences > 1:
        raise ValueError(f"stream_generate streams one sequence per prompt; got num_return_sequences="
                         f"{config.num_return_sequences}")
    prompt = prepare_prompt(model, _prompt_ids(tokenizer, prompt), config)
    decoders = [_stream_decoder(tokenizer) for _ in range(prompt.batch_size)]
    done = np.zeros(prompt.batch_size, dtype=bool)
    rng = backends.rng(config.seed)
    for tokens, finished in decode_steps(model, prompt, config, rng, tokenizer.decode):
        for row in np.nonzero(~done)[0]:       # every row is finished at the length limit
            token = int(tokens[row])
            text = decoders[row].push(token)
            if finished[row]:
                tail = decoders[row].flush()
                yield StreamEvent(int(row), token, text, finished=not tail)
                if tail:
                    yield StreamEvent(int(row), None, tail, finished=True)
            else:
                yield StreamEvent(int(row), token, text)
        done = finished
