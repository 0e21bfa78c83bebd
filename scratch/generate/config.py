"""GenerationConfig: every decoding knob in one frozen, validated dataclass, with transformers' parameter names.

The names and defaults are those of transformers' GenerationConfig (defaults as `_get_default_generation_params`
resolves them: top_k=50, temperature=1.0, ...), so a Hugging Face `generation_config.json` reads the same here.
Additions: frequency_penalty and presence_penalty (OpenAI semantics), seed. This is only configuration: the
processors it selects are built by `scratch.generate.processors.build_processors`. Bad values raise ValueError
naming the parameter and the value at construction, not halfway through generation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Union

__all__ = ["GenerationConfig"]

EarlyStopping = Union[bool, str]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _token_tuple(name: str, value, allow_empty=False) -> tuple[int, ...]:
    if _is_int(value):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a token id or a list of token ids, got {value!r}")
    if not value and not allow_empty:
        raise ValueError(f"{name} must not be empty, got {value!r}")
    for token in value:
        if not _is_int(token) or token < 0:
            raise ValueError(f"{name} must hold non-negative integer token ids, got {token!r} in {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class GenerationConfig:
    """How to decode. Unset (None) optional values mean "not used"; numbers default to "no effect".

    temperature == 0 means greedy decoding (argmax), whatever do_sample says -- transformers instead raises when
    sampling at temperature 0; here it is the conventional shorthand (OpenAI, vLLM, llama.cpp). Use
    `is_sampling` / `mode` rather than reading do_sample directly.
    """

    # Length. max_length counts the prompt; max_new_tokens does not. Give at most one of them.
    max_new_tokens: int | None = None
    max_length: int | None = None
    min_new_tokens: int = 0
    min_length: int = 0          # counts the prompt, as in transformers
    stop_strings: tuple[str, ...] | None = None

    # Strategy.
    do_sample: bool = False
    num_beams: int = 1
    num_beam_groups: int = 1
    diversity_penalty: float = 0.0
    penalty_alpha: float | None = None   # contrastive search when > 0 with top_k > 1 and no sampling
    num_return_sequences: int = 1

    # Warpers (sampling only).
    temperature: float = 1.0
    top_k: int = 50              # transformers' default; 0 disables top-k
    top_p: float = 1.0           # 1.0 disables
    min_p: float | None = None
    typical_p: float = 1.0       # 1.0 disables
    epsilon_cutoff: float = 0.0  # 0.0 disables
    eta_cutoff: float = 0.0      # 0.0 disables

    # Processors.
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0   # OpenAI: subtract penalty * count (over generated tokens)
    presence_penalty: float = 0.0    # OpenAI: subtract penalty once a token has been generated
    no_repeat_ngram_size: int = 0
    bad_words_ids: tuple[tuple[int, ...], ...] | None = None
    suppress_tokens: tuple[int, ...] | None = None
    begin_suppress_tokens: tuple[int, ...] | None = None
    sequence_bias: tuple[tuple[tuple[int, ...], float], ...] | None = None  # ((ids, bias), ...): a frozen dict

    # Beam search.
    length_penalty: float = 1.0      # finished beams score sum(logprobs) / generated_length ** length_penalty
    early_stopping: EarlyStopping = False

    # Special tokens.
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None

    # What the output records besides the sequences (greedy decoding and sampling).
    output_scores: bool = False      # out.scores: the processed scores each step, as the token was chosen from
    output_logits: bool = False      # out.logits: the model's raw logits each step

    seed: int | None = None

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)

        def need(condition, name, rule):
            if not condition:
                raise ValueError(f"{name} {rule}, got {getattr(self, name)!r}")

        # Length.
        for name in ("max_new_tokens", "max_length"):
            value = getattr(self, name)
            need(value is None or (_is_int(value) and value > 0), name, "must be a positive integer or None")
        if self.max_new_tokens is not None and self.max_length is not None:
            raise ValueError(f"give max_new_tokens or max_length, not both (got max_new_tokens="
                             f"{self.max_new_tokens!r}, max_length={self.max_length!r})")
        for name in ("min_new_tokens", "min_length", "no_repeat_ngram_size"):
            need(_is_int(getattr(self, name)) and getattr(self, name) >= 0, name, "must be a non-negative integer")
        if self.max_new_tokens is not None and self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"min_new_tokens ({self.min_new_tokens}) must not exceed max_new_tokens "
                             f"({self.max_new_tokens})")
        if self.stop_strings is not None:
            stops = (self.stop_strings,) if isinstance(self.stop_strings, str) else self.stop_strings
            need(isinstance(stops, (list, tuple)) and len(stops) > 0
                 and all(isinstance(s, str) and s for s in stops),
                 "stop_strings", "must be a non-empty string or a non-empty list of non-empty strings")
            set_("stop_strings", tuple(stops))

        # Strategy.
        need(isinstance(self.do_sample, bool), "do_sample", "must be True or False")
        for name in ("num_beams", "num_beam_groups", "num_return_sequences"):
            need(_is_int(getattr(self, name)) and getattr(self, name) >= 1, name, "must be an integer >= 1")
        if self.num_beams % self.num_beam_groups != 0:
            raise ValueError(f"num_beams ({self.num_beams}) must be divisible by num_beam_groups "
                             f"({self.num_beam_groups})")
        need(_is_number(self.diversity_penalty) and self.diversity_penalty >= 0
             and math.isfinite(self.diversity_penalty), "diversity_penalty", "must be a finite number >= 0")
        if self.diversity_penalty > 0 and self.num_beam_groups == 1:
            raise ValueError(f"diversity_penalty ({self.diversity_penalty}) only acts between beam groups: set "
                             f"num_beam_groups > 1")
        need(self.penalty_alpha is None or (_is_number(self.penalty_alpha) and 0 <= self.penalty_alpha <= 1),
             "penalty_alpha", "must be None or in [0, 1]")

        for name in ("output_scores", "output_logits"):
            need(isinstance(getattr(self, name), bool), name, "must be True or False")

        # Warpers.
        need(_is_number(self.temperature) and self.temperature >= 0 and math.isfinite(self.temperature),
             "temperature", "must be a finite number >= 0 (0 means greedy)")
        need(_is_int(self.top_k) and self.top_k >= 0, "top_k", "must be a non-negative integer (0 disables it)")
        need(_is_number(self.top_p) and 0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        need(self.min_p is None or (_is_number(self.min_p) and 0 <= self.min_p <= 1), "min_p",
             "must be None or in [0, 1]")
        need(_is_number(self.typical_p) and 0 < self.typical_p <= 1, "typical_p", "must be in (0, 1]")
        for name in ("epsilon_cutoff", "eta_cutoff"):
            need(_is_number(getattr(self, name)) and 0 <= getattr(self, name) < 1, name,
                 "must be in [0, 1) (0 disables it)")

        # Combinations (after the single values are known to be valid).
        if self.num_return_sequences > 1:
            if self.num_beams == 1 and not self.is_sampling:
                raise ValueError(f"greedy decoding returns one sequence per prompt; num_return_sequences="
                                 f"{self.num_return_sequences} needs do_sample=True or num_beams > 1")
            if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
                raise ValueError(f"num_return_sequences ({self.num_return_sequences}) must be <= num_beams "
                                 f"({self.num_beams}) in beam search")

        # Processors.
        need(_is_number(self.repetition_penalty) and self.repetition_penalty > 0
             and math.isfinite(self.repetition_penalty), "repetition_penalty", "must be a finite number > 0")
        for name in ("frequency_penalty", "presence_penalty"):
            # OpenAI's and vLLM's accepted range.
            need(_is_number(getattr(self, name)) and -2 <= getattr(self, name) <= 2, name, "must be in [-2, 2]")
        if self.bad_words_ids is not None:
            need(isinstance(self.bad_words_ids, (list, tuple)) and len(self.bad_words_ids) > 0
                 and all(isinstance(s, (list, tuple)) for s in self.bad_words_ids),
                 "bad_words_ids", "must be a non-empty list of token-id lists")
            set_("bad_words_ids", tuple(_token_tuple("bad_words_ids", s) for s in self.bad_words_ids))
        for name in ("suppress_tokens", "begin_suppress_tokens"):
            if getattr(self, name) is not None:
                set_(name, _token_tuple(name, getattr(self, name), allow_empty=True))
        if self.sequence_bias is not None:
            set_("sequence_bias", self._frozen_sequence_bias(self.sequence_bias))

        # Beam search.
        need(_is_number(self.length_penalty) and math.isfinite(self.length_penalty), "length_penalty",
             "must be a finite number")
        need(isinstance(self.early_stopping, bool) or self.early_stopping == "never", "early_stopping",
             "must be True, False or 'never'")

        # Special tokens.
        if self.eos_token_id is not None:
            ids = _token_tuple("eos_token_id", self.eos_token_id)
            set_("eos_token_id", ids[0] if _is_int(self.eos_token_id) else ids)
        for name in ("pad_token_id", "bos_token_id"):
            value = getattr(self, name)
            need(value is None or (_is_int(value) and value >= 0), name, "must be None or a non-negative integer")
        need(self.seed is None or (_is_int(self.seed) and self.seed >= 0), "seed",
             "must be None or a non-negative integer")

    @staticmethod
    def _frozen_sequence_bias(value):
        items = list(value.items()) if isinstance(value, dict) else list(value) if isinstance(value, (list, tuple)) \
            else None
        if not items:
            raise ValueError(f"sequence_bias must be a non-empty dict {{(ids...): bias}} or list of [ids, bias], "
                             f"got {value!r}")
        frozen = {}
        for entry in items:
            if not isinstance(entry, (list, tuple)) or len(entry) != 2:
                raise ValueError(f"sequence_bias entries must be (token_ids, bias) pairs, got {entry!r}")
            ids, bias = _token_tuple("sequence_bias", entry[0]), entry[1]
            if not _is_number(bias) or math.isnan(bias):
                raise ValueError(f"sequence_bias values must be numbers, got {bias!r} for {ids!r}")
            frozen[ids] = float(bias)
        return tuple(frozen.items())

    # ----- derived values --------------------------------------------------------------------------------------

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """The end-of-sequence ids as a tuple (empty when none is set)."""
        if self.eos_token_id is None:
            return ()
        return (self.eos_token_id,) if _is_int(self.eos_token_id) else tuple(self.eos_token_id)

    @property
    def is_sampling(self) -> bool:
        """True when tokens are drawn at random: do_sample and a temperature above 0."""
        return self.do_sample and self.temperature > 0

    @property
    def mode(self) -> str:
        """The decoding strategy, named as in transformers' GenerationMode: 'greedy_search', 'sample',
        'beam_search', 'beam_sample', 'group_beam_search' or 'contrastive_search'."""
        if self.num_beams == 1:
            if not self.is_sampling and self.penalty_alpha is not None and self.penalty_alpha > 0 and self.top_k > 1:
                return "contrastive_search"
            return "sample" if self.is_sampling else "greedy_search"
        if self.num_beam_groups > 1:
            return "group_beam_search"
        return "beam_sample" if self.is_sampling else "beam_search"

    def resolved_max_length(self, prompt_length: int) -> int:
        """The total length (prompt + new tokens) at which generation stops; transformers' default is 20."""
        if self.max_new_tokens is not None:
            return prompt_length + self.max_new_tokens
        return self.max_length if self.max_length is not None else 20

    @classmethod
    def from_dict(cls, values: dict) -> "GenerationConfig":
        """A config from a mapping such as a Hugging Face `generation_config.json`: known names are read, null values
        keep our default, and keys this class does not have (transformers_version, use_cache, ...) are ignored."""
        known = set(cls.field_names())
        return cls(**{k: v for k, v in values.items() if k in known and v is not None})

    def replace(self, **changes) -> "GenerationConfig":
        """A copy with some fields changed (and validated again)."""
        return replace(self, **changes)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.init)
