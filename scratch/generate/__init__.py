"""Decoding: from a model's next-token scores to generated text -- configuration, processors, samplers, strategies.

`GenerationConfig` names every knob (transformers' names); `build_processors(config)` turns it into the list of
(input_ids (B, T), scores (B, V)) -> scores functions transformers would apply, in the same order; `apply` runs
them; `greedy` and `sample` pick the next token (the uniform draw is passed in); `build_stopping` lists the
criteria that say which rows are done. `generate` picks a strategy and runs it; `stream_generate` yields text
pieces as they are produced. See docs/decoding.md and docs/beam_search.md.

Modules, each importing only those above it (no cycles):
    config, selection (top-k), stopping      GenerationConfig; top_k / kth_largest; the stopping criteria
    processors, sampling                     logits processors and warpers; greedy and inverse-CDF sampling
    prompt, output                           prompt checks and padding, the token budget; GenerateOutput, recording
    decode_loop, beam, group_beam,           the strategies: greedy/sampling, beam search and beam sampling,
    contrastive, speculative                 diverse beam search, contrastive search, speculative decoding
    dispatch, stream                         generate(): picks the strategy; stream_generate()
"""
from scratch.generate.config import GenerationConfig
from scratch.generate.processors import (
    Epsilon,
    Eta,
    FrequencyPresencePenalty,
    MinLength,
    MinNewTokens,
    MinP,
    NoBadWords,
    NoRepeatNGram,
    RepetitionPenalty,
    SequenceBias,
    SuppressTokens,
    SuppressTokensAtBegin,
    Temperature,
    TopK,
    TopP,
    Typical,
    apply,
    build_processors,
    token_counts,
)
from scratch.generate.stopping import EosToken, MaxLength, MaxNewTokens, StopStrings, any_stop, build_stopping
from scratch.generate.sampling import (
    draw_uniforms,
    greedy,
    sample,
    sample_from_probs,
    sample_multinomial_reference,
)
from scratch.generate.output import GenerateOutput
from scratch.generate.prompt import Prompt
from scratch.generate.dispatch import generate
from scratch.generate.stream import StreamEvent, stream_generate

__all__ = [
    "generate", "GenerateOutput", "Prompt", "stream_generate", "StreamEvent",
    "GenerationConfig", "build_processors", "apply", "token_counts",
    "RepetitionPenalty", "FrequencyPresencePenalty", "NoRepeatNGram", "MinLength", "MinNewTokens",
    "SuppressTokens", "SuppressTokensAtBegin", "SequenceBias", "NoBadWords",
    "Temperature", "TopK", "TopP", "MinP", "Typical", "Epsilon", "Eta",
    "greedy", "draw_uniforms", "sample_from_probs", "sample", "sample_multinomial_reference",
    "EosToken", "MaxLength", "MaxNewTokens", "StopStrings", "any_stop", "build_stopping",
]
