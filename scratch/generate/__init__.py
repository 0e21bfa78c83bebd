"""Decoding: the model-independent half of generation -- configuration, logits processors/warpers, samplers.

`GenerationConfig` names every knob (transformers' names); `build_processors(config)` turns it into the list of
(input_ids (B, T), scores (B, V)) -> scores functions transformers would apply, in the same order; `apply` runs
them; `greedy` and `sample` pick the next token (the uniform draw is passed in); `build_stopping` says which rows
are done. `generate` runs the loop (greedy, sampling, and the beam/contrastive/speculative strategies);
`stream_generate` yields text pieces as they are produced. See docs/decoding.md.
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
    log_softmax,
    softmax,
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
# The loop comes last: it imports the pieces above. (Subtle: `generate` the function shadows the submodule
# scratch.generate.generate as an attribute of this package; import the module by its full name if needed.)
from scratch.generate.generate import GenerateOutput, Prompt, generate  # noqa: E402
from scratch.generate.stream import StreamEvent, stream_generate  # noqa: E402

__all__ = [
    "generate", "GenerateOutput", "Prompt", "stream_generate", "StreamEvent",
    "GenerationConfig", "build_processors", "apply", "softmax", "log_softmax", "token_counts",
    "RepetitionPenalty", "FrequencyPresencePenalty", "NoRepeatNGram", "MinLength", "MinNewTokens",
    "SuppressTokens", "SuppressTokensAtBegin", "SequenceBias", "NoBadWords",
    "Temperature", "TopK", "TopP", "MinP", "Typical", "Epsilon", "Eta",
    "greedy", "draw_uniforms", "sample_from_probs", "sample", "sample_multinomial_reference",
    "EosToken", "MaxLength", "MaxNewTokens", "StopStrings", "any_stop", "build_stopping",
]
