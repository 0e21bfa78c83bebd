"""Chat templates: a conversation (a list of {"role", "content"} messages) -> the one text an instruct model reads.

Every instruct model was trained on conversations written in its own markup -- ChatML's "<|im_start|>user\\n...
<|im_end|>", Llama 3's "<|start_header_id|>user<|end_header_id|>\\n\\n...<|eot_id|>" -- and the model's files ship
that markup as a Jinja template (a GGUF's `tokenizer.chat_template`, a folder's `chat_template.jinja`, or
`tokenizer_config.json`'s "chat_template"). `apply_chat_template` renders it with transformers' name, arguments and
result; the rendering environment is the one transformers documents: jinja2's immutable sandbox (templates are
untrusted code from the hub), trim_blocks and lstrip_blocks, loop controls, a `{% generation %}` block that only
marks text, `raise_exception(message)`, `strftime_now(format)` and a `tojson` that does not escape HTML.
Not here: a template engine (jinja2 is an optional dependency, the `chat` extra), tool-call parsing.
"""
from __future__ import annotations

import copy
import json
from dataclasses import replace
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import regex

from scratch.safe_read import read_json

__all__ = ["ChatTemplateMixin", "render_chat_template", "read_folder_chat_template", "with_folder_chat_template",
           "select_template", "encode_with_special_tokens", "MISSING_JINJA"]

MISSING_JINJA = ("chat templates are Jinja templates and need the jinja2 package (>= 3.1.6): "
                 "pip install 'scratch-llm[chat]' (or pip install jinja2)")
_SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "  # marks the end of a message to continue; cut off after rendering


# ---------------------------------------------------------------------------------------------------------------
# The Jinja environment
# ---------------------------------------------------------------------------------------------------------------

def _jinja():
    try:
        import jinja2
        import jinja2.ext
        import jinja2.sandbox
    except ImportError:
        raise ImportError(MISSING_JINJA) from None
    version = tuple(int(part) for part in regex.findall(r"\d+", jinja2.__version__)[:3])
    if version < (3, 1, 6):  # older sandboxes have known escapes, and templates come from strangers' files
        raise ImportError(f"chat templates need jinja2 >= 3.1.6 (found {jinja2.__version__}): "
                          "pip install -U 'scratch-llm[chat]'")
    return jinja2


@lru_cache(maxsize=16)
def compile_template(source: str):
    """A jinja2 Template for `source`, compiled once per process (templates are a few kB and reused every turn)."""
    jinja2 = _jinja()

    class GenerationBlock(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}` marks the assistant's text for training masks; it renders its
        body unchanged (templates that use it fail to parse without it)."""
        tags = {"generation"}

        def parse(self, parser):
            line = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(line)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # jinja2's own tojson escapes <, >, & and ' for HTML; chat templates want the JSON as it is
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    class Namespace(jinja2.utils.Namespace):
        """`namespace(...)` that refuses underscore names (a way out of the sandbox through attributes)."""

        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            for name in dict(*args, **kwargs):
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, *args, **kwargs)

        def __setitem__(self, name, value):
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"a chat template may not set the attribute {name!r}")

    environment = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, jinja2.ext.loopcontrols])
    environment.filters["tojson"] = tojson
    environment.globals.update(raise_exception=raise_exception, strftime_now=strftime_now,
                               namespace=Namespace, dict=lambda *args, **kwargs: dict(*args, **kwargs))
    return environment.from_string(source)


def _plain(value: Any) -> Any:
    """The value as plain JSON-like data (str, int, float, bool, None, lists, dicts): the only things a template
    sees, so no object's methods are reachable from inside the sandbox."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    for kind in (bool, str, int, float):  # subclasses (enums, NumPy scalars) lose their extra methods
        if isinstance(value, kind):
            return kind(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "shape", None) == ():
        return _plain(value.item())
    if isinstance(value, dict):
        return {_plain(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return f"<{type(value).__name__}>"


def _messages(conversation) -> list[dict]:
    messages = []
    for index, message in enumerate(conversation):
        if not isinstance(message, dict):
            raise TypeError(f"message {index} must be a dict with 'role' and 'content', got {message!r}")
        # keys set to None are dropped (as transformers does): templates test `'key' in message`, not its value
        messages.append(_plain({key: value for key, value in message.items() if value is not None}))
    return messages


def render_chat_template(template: str, conversation: list[dict], *, add_generation_prompt: bool = False,
                         continue_final_message: bool | str = False, tools: list[dict] | None = None,
                         documents: list[dict] | None = None, **variables) -> str:
    """The text of one conversation under `template` (a Jinja source).

    The template sees `messages`, `tools`, `documents`, `add_generation_prompt` and `variables` (the special
    tokens such as bos_token, and any extra names a template reads, e.g. enable_thinking). continue_final_message
    leaves the last message open (no end-of-turn markup after it), so the model continues it; give the field name
    (e.g. "reasoning_content") to continue another field than "content".
    """
    if not conversation:
        raise ValueError("cannot apply a chat template to an empty conversation: give at least one message")
    messages = _messages(conversation)
    field = None
    if continue_final_message:
        if add_generation_prompt:
            raise ValueError("continue_final_message and add_generation_prompt exclude each other: the first "
                             "continues the last message, the second opens a new assistant message")
        field = continue_final_message if isinstance(continue_final_message, str) else "content"
        final = messages[-1].get(field)
        if not isinstance(final, str):
            raise ValueError(f"continue_final_message: the last message has no text {field!r} to continue")
        messages[-1][field] = final + _CONTINUE_TAG
    text = compile_template(template).render(
        messages=messages, tools=_plain(tools), documents=_plain(documents),
        add_generation_prompt=add_generation_prompt, **_plain(variables))
    if field is not None:
        # Cut at the tag: the rendered end-of-message markup after it goes. A template that strips the message
        # also strips the tag's trailing space, and then the message's own trailing space is gone too.
        tag = _CONTINUE_TAG.strip()
        if tag not in text or final.strip() not in text:
            raise ValueError(f"continue_final_message: the template drops the final message's {field!r}")
        at = text.rindex(tag)
        text = text[:at] if text[at:at + len(_CONTINUE_TAG)] == _CONTINUE_TAG else text[:at].rstrip()
    return text


# ---------------------------------------------------------------------------------------------------------------
# Where templates come from
# ---------------------------------------------------------------------------------------------------------------

def _token_text(value) -> str | None:
    """A special token as tokenizer_config.json writes it: "<s>" or {"content": "<s>", ...} (an AddedToken)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _read_json(path: Path) -> dict:
    data = read_json(path, "json")  # a regular file of sane size, UTF-8, not nested absurdly deep
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _named_templates(value, source: str) -> str | dict[str, str]:
    """tokenizer_config.json's "chat_template": a string, or a list of {"name": ..., "template": ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {}
        for entry in value:
            if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)
                    and isinstance(entry.get("template"), str)):
                raise ValueError(f"{source}: chat_template list entries need a 'name' and a 'template' string, "
                                 f"got {entry!r}")
            named[entry["name"]] = entry["template"]
        return named
    raise ValueError(f"{source}: chat_template must be a string or a list of named templates, got "
                     f"{type(value).__name__}")


def read_folder_chat_template(folder: str | Path) -> tuple[str | dict[str, str] | None, dict[str, str]]:
    """(chat template, special tokens by name) from a Hugging Face folder.

    The template: `chat_template.jinja` (the current layout; `additional_chat_templates/NAME.jinja` add named
    ones), else tokenizer_config.json's "chat_template" (a string, or a list of named templates -> a dict), else
    a `chat_template.json` {"chat_template": ...}; None when the folder has none. The special tokens
    (bos_token, eos_token, ...) come from special_tokens_map.json, overridden by tokenizer_config.json.
    """
    folder = Path(folder)
    config = _read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    token_map = folder / "special_tokens_map.json"
    specials: dict[str, str] = {}
    for entries in (_read_json(token_map) if token_map.is_file() else {}, config):  # the config wins
        for name in _SPECIAL_NAMES:
            text = _token_text(entries.get(name))
            if text is not None:
                specials[name] = text
    template: str | dict[str, str] | None = None
    if (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
        extra = folder / "additional_chat_templates"
        if extra.is_dir():
            named = {path.stem: path.read_text(encoding="utf-8") for path in sorted(extra.glob("*.jinja"))}
            template = {"default": template, **named}
    elif config.get("chat_template") is not None:
        template = _named_templates(config["chat_template"], str(folder / "tokenizer_config.json"))
    elif (folder / "chat_template.json").is_file():
        value = _read_json(folder / "chat_template.json").get("chat_template")
        template = _named_templates(value, str(folder / "chat_template.json")) if value is not None else None
    return template, specials


def select_template(templates: str | dict[str, str] | None, chat_template: str | None = None,
                    tools=None) -> str:
    """The template source to render: `chat_template` given as a Jinja source or as the name of one of the
    tokenizer's templates; else the tokenizer's own (of several named ones: "tool_use" when tools are given and
    it exists, else "default")."""
    if isinstance(templates, dict):
        if chat_template is not None and chat_template in templates:
            return templates[chat_template]
        if chat_template is None:
            if tools is not None and "tool_use" in templates:
                return templates["tool_use"]
            if "default" in templates:
                return templates["default"]
            raise ValueError(f"this tokenizer has several chat templates and none is named 'default': pass "
                             f"chat_template= one of {sorted(templates)}")
    if chat_template is not None:
        return chat_template
    if templates is None:
        raise ValueError("this tokenizer has no chat template (none in the GGUF's tokenizer.chat_template, the "
                         "folder's chat_template.jinja or tokenizer_config.json): pass chat_template= a Jinja "
                         "template")
    return templates


# ---------------------------------------------------------------------------------------------------------------
# Encoding a rendered chat: special tokens written by the template become their ids
# ---------------------------------------------------------------------------------------------------------------

def encode_with_special_tokens(text: str, special_ids: dict[str, int], encode_first, encode_rest=None
                               ) -> list[int]:
    """Ids of `text` where every special token's text (longest first) is its id and the text between them is
    encoded as ordinary text: `encode_first` for the piece at the start of the text, `encode_rest` (default the
    same) for pieces after a special token -- SentencePiece adds its "▁" prefix only at the start of the text,
    as Hugging Face's Metaspace(prepend_scheme="first") and llama.cpp do."""
    encode_rest = encode_rest or encode_first
    if not special_ids:
        return encode_first(text)
    pattern = _special_pattern(tuple(sorted(special_ids, key=lambda token: (-len(token), token))))
    ids: list[int] = []
    start = 0
    for match in pattern.finditer(text):
        if match.start() > start:
            ids.extend((encode_first if start == 0 else encode_rest)(text[start:match.start()]))
        ids.append(special_ids[match.group()])
        start = match.end()
    if start < len(text):
        ids.extend((encode_first if start == 0 else encode_rest)(text[start:]))
    return ids


@lru_cache(maxsize=8)
def _special_pattern(tokens: tuple[str, ...]) -> regex.Pattern:
    return regex.compile("|".join(regex.escape(token) for token in tokens))


class ChatTemplateMixin:
    """`apply_chat_template` for our tokenizers (BPETokenizer, HFTokenizer, SentencePieceBPE and their GGUF
    variants). A tokenizer gets its template and special-token names from the loader (`set_chat_template`); the
    class attributes below are what a tokenizer without one has."""

    chat_template: str | dict[str, str] | None = None
    special_tokens_map: dict[str, str] = {}  # bos_token, eos_token, ... -> token text (never mutated in place)

    def set_chat_template(self, template: str | dict[str, str] | None,
                          special_tokens_map: dict[str, str] | None = None) -> None:
        self.chat_template = template
        if special_tokens_map is not None:
            self.special_tokens_map = dict(special_tokens_map)

    def chat_special_ids(self) -> dict[str, int]:
        """Text -> id of the tokens that a rendered chat writes as markup (matched whole when it is encoded)."""
        found = dict(getattr(self, "special_tokens", {}) or {})  # BPE family: tiktoken specials / HF added tokens
        pieces, types = getattr(self, "pieces", None), getattr(self, "types", None)
        if pieces is not None and types is not None:  # SentencePiece: unknown (2), control (3), user-defined (4)
            found.update((piece, index) for index, (piece, _, kind) in enumerate(pieces) if kind in (2, 3, 4))
        return found

    def encode_chat(self, text: str) -> list[int]:
        """Ids of a rendered chat: the special tokens it writes become their ids, no BOS/EOS is added (the
        template writes them), as transformers encodes it (add_special_tokens=False)."""
        if hasattr(self, "encode_ordinary"):  # byte-level BPE: no prefix space, so every piece encodes alike
            return encode_with_special_tokens(text, self.chat_special_ids(), self.encode_ordinary)
        return encode_with_special_tokens(text, self.chat_special_ids(), self.encode,
                                          self.continuation_encoder().encode)

    def continuation_encoder(self):
        """SentencePiece: the same tokenizer without the dummy "▁" prefix, for text that follows a special token
        (a shallow copy with another normalizer spec, made once)."""
        found = self.__dict__.get("_continuation")
        if found is None:
            found = self
            if getattr(self.normalizer, "add_dummy_prefix", False):
                found = copy.copy(self)
                found.normalizer = replace(self.normalizer, add_dummy_prefix=False)
            self.__dict__["_continuation"] = found
        return found

    def apply_chat_template(self, conversation, tools: list[dict] | None = None,
                            documents: list[dict] | None = None, chat_template: str | None = None,
                            add_generation_prompt: bool = False, continue_final_message: bool | str = False,
                            tokenize: bool = True, return_dict: bool = False, **kwargs):
        """A conversation through the tokenizer's chat template, as transformers' `apply_chat_template`.

        conversation: a list of {"role": ..., "content": ...} messages, or a list of such lists (a batch).
        add_generation_prompt: end with the markup that opens the assistant's reply (what to generate from).
        tokenize: False -> the rendered text; True -> its token ids (special tokens the template writes become
            their ids; no BOS is added beyond what the template writes). return_dict=True (with tokenize) gives
            {"input_ids": ..., "attention_mask": ...} instead of the ids (transformers 5's default; ids are
            transformers 4's and ours).
        chat_template: a Jinja source, or the name of one of the tokenizer's templates. Other keyword arguments
            are template variables (e.g. enable_thinking=False); the special tokens (bos_token, ...) are set.
        A template's raise_exception(...) raises jinja2.exceptions.TemplateError, as in transformers.
        """
        template = select_template(self.chat_template, chat_template, tools)
        batched = bool(conversation) and isinstance(conversation[0], (list, tuple))
        variables = {**self.special_tokens_map, **kwargs}
        texts = [render_chat_template(template, chat, add_generation_prompt=add_generation_prompt,
                                      continue_final_message=continue_final_message, tools=tools,
                                      documents=documents, **variables)
                 for chat in (conversation if batched else [conversation])]
        if not tokenize:
            return texts if batched else texts[0]
        ids = [self.encode_chat(text) for text in texts]
        if return_dict:
            ids_out = ids if batched else ids[0]
            mask = [[1] * len(row) for row in ids] if batched else [1] * len(ids[0])
            return {"input_ids": ids_out, "attention_mask": mask}
        return ids if batched else ids[0]


def with_folder_chat_template(tokenizer, folder: str | Path):
    """`tokenizer` with the chat template and special-token names of the Hugging Face folder it came from."""
    template, specials = read_folder_chat_template(folder)
    if template is not None or specials:
        tokenizer.set_chat_template(template, specials)
    return tokenizer
