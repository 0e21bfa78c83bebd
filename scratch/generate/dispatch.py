"""`generate`: the entry point -- prompt in, tokens out -- that picks a decoding strategy, as transformers' `generate`.

It merges the GenerationConfig with keyword arguments (transformers' names), checks and left-pads the prompt
(`Prompt`), checks that the options fit the strategy, and hands over to one strategy module: greedy decoding and
sampling (decode_loop.py), beam search and beam sampling (beam.py), group beam search (group_beam.py), contrastive
search (contrastive.py), speculative decoding (speculative.py). Every one of them imports only the modules below
it (prompt.py, output.py, processors, samplers, stopping criteria), never this one. Not here: any decoding loop.
"""
from __future__ import annotations

import backends
from scratch.generate.beam import beam_sample, beam_search
from scratch.generate.config import GenerationConfig
from scratch.generate.contrastive import contrastive_search
from scratch.generate.decode_loop import greedy_or_sample
from scratch.generate.group_beam import group_beam_search
from scratch.generate.output import GenerateOutput
from scratch.generate.prompt import make_config, prepare_prompt
from scratch.generate.speculative import speculative_generate

__all__ = ["generate"]

STEP_BY_STEP = ("greedy_search", "sample", "beam_search", "beam_sample")   # modes that record scores, stop strings


def generate(model, input_ids, config: GenerationConfig | None = None, *, attention_mask=None, draft_model=None,
             tokenizer=None, streamer=None, **kwargs) -> GenerateOutput:
    """Generate continuations of `input_ids` with `model` -- transformers' `generate`, on host and backend arrays.

    config: a GenerationConfig; keyword arguments with GenerationConfig's names override its fields.
    input_ids: (B, T) integer array (+ `attention_mask` for left padding), or a list of token-id lists.
    draft_model: a small model of the same vocabulary -> speculative decoding.
    tokenizer: needed for stop_strings (anything with `decode(ids) -> str`).
    streamer: an object with `put(tokens (B,) host int64)` called after each step and `end()` at the end
        (greedy and sampling only); for text, see `scratch.generate.stream.stream_generate`.
    Returns a GenerateOutput; `sequences` is (B * num_return_sequences, T_total), padded with the pad id.
    Strategy (as transformers picks it): num_beams > 1 -> beam search (beam sampling with do_sample, group beam
    search with num_beam_groups > 1); penalty_alpha > 0 with top_k > 1 -> contrastive search; a draft model ->
    speculative decoding; else sampling when do_sample (and temperature > 0), else greedy.
    """
    config = make_config(config, **kwargs)
    decode = None if tokenizer is None else tokenizer.decode
    if decode is None and config.stop_strings is not None:
        raise ValueError(f"stop_strings {config.stop_strings!r} are matched on decoded text: pass tokenizer= "
                         f"to generate")
    prompt = prepare_prompt(model, input_ids, config, attention_mask)
    _check_options(config, streamer, draft_model)
    rng = backends.rng(config.seed)
    mode = config.mode
    if draft_model is not None:
        return speculative_generate(model, draft_model, prompt, config, rng)
    if mode == "beam_search":
        return beam_search(model, prompt, config, decode)
    if mode == "beam_sample":
        return beam_sample(model, prompt, config, rng, decode)
    if mode == "group_beam_search":
        return group_beam_search(model, prompt, config)
    if mode == "contrastive_search":
        return contrastive_search(model, prompt, config)
    return greedy_or_sample(model, prompt, config, rng, decode, streamer)


def _check_options(config: GenerationConfig, streamer, draft_model) -> None:
    """Options that only some strategies take: a streamer, recorded scores and stop strings, a draft model."""
    mode = config.mode
    with_draft = " with a draft model" if draft_model is not None else ""
    if streamer is not None and (mode not in ("greedy_search", "sample") or draft_model is not None):
        raise ValueError(f"streamer works with greedy decoding and sampling, not with {mode}{with_draft}")
    step_by_step = mode in STEP_BY_STEP and draft_model is None
    recorded = [name for name in ("output_scores", "output_logits") if getattr(config, name)]
    if recorded and not step_by_step:
        raise ValueError(f"{' and '.join(recorded)}: recorded for greedy decoding, sampling and beam search, not "
                         f"for {mode}{with_draft}")
    if config.stop_strings is not None and not step_by_step:
        raise ValueError(f"stop_strings work with greedy decoding, sampling and beam search, not with {mode}"
                         f"{with_draft}")
    if draft_model is not None and mode not in ("greedy_search", "sample"):
        raise ValueError(f"speculative decoding (draft_model=) works with greedy decoding and sampling, not with "
                         f"{mode}")
