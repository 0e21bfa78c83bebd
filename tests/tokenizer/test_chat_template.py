"""Chat templates render exactly as transformers renders them, and encode to the same ids.

Each real-world template (SmolLM2's ChatML, Llama 3's, Llama 2's with raise_exception, Zephyr's multi-line one
that depends on trim_blocks/lstrip_blocks, and one that uses tojson, namespace, loop controls and the
{% generation %} block) is written into a tmp_path folder beside a small tokenizer.json; transformers'
AutoTokenizer and our load_tokenizer read the same folder, and single- and multi-turn conversations, with and
without a system message, must give the same text (tokenize=False) and the same ids (tokenize=True).
"""
from __future__ import annotations

import json

import jinja2
import pytest

from scratch.tokenizer import BPETokenizer, load_tokenizer
from scratch.tokenizer.chat_template import (MISSING_JINJA, encode_with_special_tokens, read_folder_chat_template,
                                             render_chat_template)
from scratch.tokenizer.hf import to_hf

transformers = pytest.importorskip("transformers")

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|eot_id|>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]

SMOLLM2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>"
           "system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
           "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
           "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
          "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
          "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
          "{% endif %}")
LLAMA2 = ("{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
          "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}"
          "{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
          "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
          "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
          "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
          "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
          "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
          "{% endfor %}")
ZEPHYR = """{% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>\n' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>\n' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>\n'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}"""
# tojson (no HTML escaping, indent), namespace, loop controls, {% generation %}, a variable passed by the caller
TOOLS = """{%- set ns = namespace(turns=0, last_user='') -%}
{%- for message in messages -%}
    {%- if message['role'] == 'user' -%}{%- set ns.turns = ns.turns + 1 -%}{%- set ns.last_user = message['content'] -%}{%- endif -%}
{%- endfor -%}
{%- if tools %}<|im_start|>system
Tools: {{ tools | tojson(indent=2) }}
Compact: {{ tools | tojson }}<|im_end|>
{% endif -%}
{%- for message in messages -%}
    {%- if message['role'] == 'system' -%}{%- continue -%}{%- endif -%}
    {%- if message['content'] == 'STOP' -%}{%- break -%}{%- endif -%}
<|im_start|>{{ message['role'] }}
{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] }}<|im_end|>{% endgeneration %}
{% else %}{{ message['content'] }}<|im_end|>
{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt %}<|im_start|>assistant
{% if enable_thinking is defined and not enable_thinking %}<think>

</think>

{% endif %}{% endif %}turns={{ ns.turns }} last={{ ns.last_user | length }}"""

TEMPLATES = {"smollm2": SMOLLM2, "llama3": LLAMA3, "llama2": LLAMA2, "zephyr": ZEPHYR, "tools": TOOLS}

SYSTEM = {"role": "system", "content": "You are terse. Answer in <= 5 words & use \"quotes\"."}
CONVERSATIONS = {
    "single": [{"role": "user", "content": "Hello! What's 2+2?"}],
    "single_with_system": [SYSTEM, {"role": "user", "content": "Hello! What's 2+2?"}],
    "multi": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": " Hello!  How can I help?\n"},
              {"role": "user", "content": "Tell me a joke about caf\u00e9s \U0001f999"}],
    "multi_with_system": [SYSTEM, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey."},
                          {"role": "user", "content": "  padded  "}, {"role": "assistant", "content": "ok"},
                          {"role": "user", "content": "Bye <|im_end|> now"}],
}


@pytest.fixture(scope="module")
def base_tokenizer():
    text = ("Hello there! How can I help you today? Tell me a joke about cafes. You are a helpful assistant. "
            "system user assistant tools turns ") * 4
    return BPETokenizer.train(text, vocab_size=256 + 40 + len(SPECIALS), pattern="gpt2", special_tokens=SPECIALS)


def _folder(tmp_path, tokenizer, config: dict, jinja: str | None = None):
    folder = tmp_path / "tok"
    folder.mkdir(exist_ok=True)
    to_hf(tokenizer, folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                              **config}), encoding="utf-8")
    if jinja is not None:
        (folder / "chat_template.jinja").write_text(jinja, encoding="utf-8")
    return folder


def _both(folder):
    return load_tokenizer(folder), transformers.AutoTokenizer.from_pretrained(str(folder))


def _hf_ids(hf, conversation, **kwargs):
    out = hf.apply_chat_template(conversation, tokenize=True, **kwargs)
    return list(out["input_ids"]) if hasattr(out, "keys") else list(out)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_renders_and_encodes_as_transformers(name, base_tokenizer, tmp_path):
    folder = _folder(tmp_path, base_tokenizer, {"chat_template": TEMPLATES[name], "bos_token": "<s>",
                                                "eos_token": "</s>", "unk_token": "<|endoftext|>"})
    ours, hf = _both(folder)
    checked = 0
    for conversation_name, conversation in CONVERSATIONS.items():
        if name == "llama2" and conversation_name.startswith("multi") and conversation[-1]["role"] != "user":
            continue
        for add_generation_prompt in (False, True):
            kwargs = dict(add_generation_prompt=add_generation_prompt)
            if name == "tools":
                kwargs.update(tools=[{"name": "add", "description": "a < b & c > d", "x": [1, 2.5, None, True]}],
                              enable_thinking=False)
            expected = hf.apply_chat_template(conversation, tokenize=False, **kwargs)
            assert ours.apply_chat_template(conversation, tokenize=False, **kwargs) == expected, conversation_name
            assert ours.apply_chat_template(conversation, tokenize=True, **kwargs) == _hf_ids(hf, conversation,
                                                                                              **kwargs)
            checked += 1
    assert checked >= 6


def test_the_template_in_chat_template_jinja_wins(base_tokenizer, tmp_path):
    # transformers' current layout: chat_template.jinja beside tokenizer_config.json (which may hold an old one)
    folder = _folder(tmp_path, base_tokenizer, {"chat_template": ZEPHYR, "eos_token": "</s>"}, jinja=SMOLLM2)
    ours, hf = _both(folder)
    conversation = CONVERSATIONS["multi"]
    text = ours.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    assert text == hf.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


def test_named_templates_from_tokenizer_config(base_tokenizer, tmp_path):
    folder = _folder(tmp_path, base_tokenizer, {"eos_token": "</s>", "bos_token": "<s>", "chat_template": [
        {"name": "default", "template": LLAMA3}, {"name": "tool_use", "template": TOOLS}]})
    ours, hf = _both(folder)
    conversation = CONVERSATIONS["single_with_system"]
    for kwargs in ({}, {"chat_template": "tool_use"}, {"tools": [{"name": "f"}]}, {"chat_template": SMOLLM2}):
        assert ours.apply_chat_template(conversation, tokenize=False, **kwargs) == \
            hf.apply_chat_template(conversation, tokenize=False, **kwargs), kwargs


def test_raise_exception_raises_template_error_as_transformers(base_tokenizer, tmp_path):
    folder = _folder(tmp_path, base_tokenizer, {"chat_template": LLAMA2, "bos_token": "<s>", "eos_token": "</s>"})
    ours, hf = _both(folder)
    wrong = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(jinja2.exceptions.TemplateError, match="must alternate") as theirs:
        hf.apply_chat_template(wrong, tokenize=False)
    with pytest.raises(jinja2.exceptions.TemplateError) as mine:
        ours.apply_chat_template(wrong, tokenize=False)
    assert str(mine.value) == str(theirs.value)


def test_continue_final_message_and_batches_as_transformers(base_tokenizer, tmp_path):
    folder = _folder(tmp_path, base_tokenizer, {"chat_template": SMOLLM2, "eos_token": "<|im_end|>"})
    ours, hf = _both(folder)
    prefill = CONVERSATIONS["single"] + [{"role": "assistant", "content": "The answer is"}]
    kwargs = dict(tokenize=False, continue_final_message=True)
    assert ours.apply_chat_template(prefill, **kwargs) == hf.apply_chat_template(prefill, **kwargs)
    assert ours.apply_chat_template(prefill, **kwargs).endswith("The answer is")
    batch = [CONVERSATIONS["single"], CONVERSATIONS["multi"]]
    assert ours.apply_chat_template(batch, tokenize=False) == hf.apply_chat_template(batch, tokenize=False)
    assert ours.apply_chat_template(batch) == [_hf_ids(hf, c) for c in batch]
    as_dict = ours.apply_chat_template(batch[0], return_dict=True)
    assert as_dict["input_ids"] == _hf_ids(hf, batch[0]) and as_dict["attention_mask"] == [1] * len(
        as_dict["input_ids"])


def test_sandbox_refuses_attribute_escapes():
    escape = "{{ messages.__class__.__mro__ }}"
    with pytest.raises(jinja2.exceptions.SecurityError):
        render_chat_template(escape, [{"role": "user", "content": "x"}])
    with pytest.raises(jinja2.exceptions.SecurityError):
        render_chat_template("{% set ns = namespace(_x=1) %}", [{"role": "user", "content": "x"}])
    with pytest.raises(jinja2.exceptions.SecurityError):  # immutable: no appending to the messages
        render_chat_template("{{ messages.append(1) }}", [{"role": "user", "content": "x"}])


def test_tojson_and_strftime_now():
    text = render_chat_template("{{ messages | tojson }}|{{ strftime_now('%Y') }}",
                                [{"role": "user", "content": "<a> & 'b' \u00e9", "skip": None}])
    data, year = text.split("|")
    assert json.loads(data) == [{"role": "user", "content": "<a> & 'b' \u00e9"}]  # None-valued keys dropped
    assert "\u00e9" in data and "<a>" in data and len(year) == 4 and year.isdigit()


def test_no_template_and_empty_conversation_are_clear_errors(base_tokenizer):
    with pytest.raises(ValueError, match="no chat template"):
        base_tokenizer.apply_chat_template([{"role": "user", "content": "x"}])
    with pytest.raises(ValueError, match="empty conversation"):
        base_tokenizer.apply_chat_template([], chat_template=SMOLLM2)
    with pytest.raises(ValueError, match="exclude each other"):
        base_tokenizer.apply_chat_template([{"role": "user", "content": "x"}], chat_template=SMOLLM2,
                                           add_generation_prompt=True, continue_final_message=True)


def test_missing_jinja_says_what_to_install(monkeypatch):
    import sys

    from scratch.tokenizer import chat_template

    chat_template.compile_template.cache_clear()
    monkeypatch.setitem(sys.modules, "jinja2", None)
    with pytest.raises(ImportError) as error:
        render_chat_template("{{ 1 }}", [{"role": "user", "content": "x"}])
    assert str(error.value) == MISSING_JINJA and "scratch-llm[chat]" in MISSING_JINJA


def test_special_tokens_in_a_chat_match_longest_first():
    """A special token that is a prefix of another ("<|im|>" of "<|im|>end") loses to the longer one wherever
    both match; the first piece of text and the rest are encoded by their own functions."""
    specials = {"<|im|>": 100, "<|im|>end": 101}
    first = lambda text: [("first", text)]   # noqa: E731
    rest = lambda text: [("rest", text)]     # noqa: E731
    assert encode_with_special_tokens("a<|im|>endb<|im|>c", specials, first, rest) == \
        [("first", "a"), 101, ("rest", "b"), 100, ("rest", "c")]
    assert encode_with_special_tokens("<|im|>end", specials, first, rest) == [101]


def test_folder_reading(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": {"content": "<s>", "lstrip": False},
                                                               "chat_template": 3}))
    with pytest.raises(ValueError, match="must be a string or a list"):
        read_folder_chat_template(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": {"content": "<s>"}}))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<x>", "eos_token": "</s>"}))
    assert read_folder_chat_template(tmp_path) == (None, {"bos_token": "<s>", "eos_token": "</s>"})
