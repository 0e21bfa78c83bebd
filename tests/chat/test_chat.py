"""The chat session and `scratch chat`, with a tiny random Llama saved by transformers and a small BPE tokenizer
(trained here, ChatML special tokens, a ChatML chat template) in one tmp_path folder.

The cross-turn cache must change nothing but the work: every reply equals what `generate` -- and transformers'
generate -- gives for the whole conversation's ids, and equals the replies of a session that re-prefills the whole
conversation each turn; only the prefilled token counts differ. The command line is driven through main() for the
one-shot mode and through stdin of a subprocess for the interactive mode (/reset, /exit, Ctrl-C -> 130).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import scratch.models
from scratch.chat import ChatSession
from scratch.cli import main
from scratch.generate import generate
from scratch.tokenizer import BPETokenizer, load_tokenizer
from scratch.tokenizer.hf import to_hf
from tests.conftest import RESTORE_SIGINT

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[2]
V = 300
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
TURNS = ["hello there", "tell me about the lazy dog", "and the quick fox?", "why", "thanks, bye"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A model folder that is also its tokenizer folder, as Hugging Face checkpoints are."""
    root = tmp_path_factory.mktemp("chat_model")
    text = "the quick brown fox jumps over the lazy dog. hello there! tell me about it, thanks. " * 6
    tokenizer = BPETokenizer.train(text, vocab_size=V, pattern="gpt2", special_tokens=["<|im_start|>", "<|im_end|>"])
    to_hf(tokenizer, root)
    (root / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML, "eos_token": "<|im_end|>"}))
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.3, bos_token_id=None,
        eos_token_id=tokenizer.special_tokens["<|im_end|>"], pad_token_id=None)).save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def model(folder):
    return scratch.models.load(folder)


@pytest.fixture(scope="module")
def tokenizer(folder):
    return load_tokenizer(folder)


def _conversation_replies(session: ChatSession, turns=TURNS) -> list[str]:
    return [session.ask(text) for text in turns]


def test_replies_equal_generate_on_the_whole_conversation(model, tokenizer, folder):
    session = ChatSession(model, tokenizer, system="be brief", max_new_tokens=8)
    hf = transformers.LlamaForCausalLM.from_pretrained(folder)
    for turn, text in enumerate(TURNS):
        prompt = session.prompt_ids(session.messages + [{"role": "user", "content": text}])
        reply = session.ask(text)
        ours = generate(model, [prompt], max_new_tokens=8, eos_token_id=model.config.eos_token_id)
        new = [t for t in ours.sequences[0, len(prompt):].tolist() if t != model.config.eos_token_id]
        assert reply == tokenizer.decode(new), turn
        with torch.no_grad():
            theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, attention_mask=None)
        assert theirs[0, len(prompt):].tolist()[:len(new)] == new, turn
        stats = session.history[-1]
        assert stats.prompt_tokens == len(prompt) and stats.new_tokens >= len(new)
        assert stats.prefilled_tokens + stats.reused_tokens == len(prompt)
        if turn:   # everything the model saw up to the previous prompt is reused: only the new turn is prefilled
            assert stats.reused_tokens >= session.history[-2].prompt_tokens
    assert session.messages[0] == {"role": "system", "content": "be brief"}
    assert [m["role"] for m in session.messages[1:]] == ["user", "assistant"] * len(TURNS)


@pytest.mark.parametrize("sampling", [{}, {"do_sample": True, "top_k": 20, "temperature": 1.3, "seed": 5,
                                           "repetition_penalty": 1.2}])
def test_the_cross_turn_cache_changes_only_the_work(model, tokenizer, sampling):
    cached = ChatSession(model, tokenizer, max_new_tokens=10, **sampling)
    fresh = ChatSession(model, tokenizer, max_new_tokens=10, reuse_cache=False, **sampling)
    assert _conversation_replies(cached) == _conversation_replies(fresh)
    assert [t.prompt_tokens for t in cached.history] == [t.prompt_tokens for t in fresh.history]
    assert all(t.reused_tokens == 0 for t in fresh.history)
    assert sum(t.prefilled_tokens for t in cached.history) < sum(t.prefilled_tokens for t in fresh.history) / 2


def test_every_backend_gives_the_same_conversation(folder, model, tokenizer, backend):
    """The session's loop (cache, processors, sampling) is backend code: the same replies on every backend."""
    kwargs = dict(max_new_tokens=6, do_sample=True, top_k=30, seed=2, repetition_penalty=1.1)
    expected = _conversation_replies(ChatSession(model, tokenizer, **kwargs), TURNS[:3])
    on_backend = ChatSession(scratch.models.load(folder, backend=backend), tokenizer, **kwargs)
    assert _conversation_replies(on_backend, TURNS[:3]) == expected
    assert on_backend.history[-1].reused_tokens > 0


def test_reset_starts_over_and_keeps_the_system_message(model, tokenizer):
    session = ChatSession(model, tokenizer, system="sys", max_new_tokens=6)
    first = session.ask("hello there")
    session.ask("more")
    session.reset()
    assert session.messages == [{"role": "system", "content": "sys"}]
    assert session.ask("hello there") == first
    assert session.history[-1].reused_tokens == 0
    session.reset(system="other")
    assert session.messages == [{"role": "system", "content": "other"}]


def test_end_of_turn_and_stop_strings_end_the_reply(model, tokenizer):
    free = ChatSession(model, tokenizer, max_new_tokens=12)
    free.ask("hello there")
    ids = free.last_reply_ids
    assert len(ids) == 12 and free.messages[-1]["content"] == tokenizer.decode(ids)
    eos = ids[3]
    stopped = ChatSession(model, tokenizer, max_new_tokens=12, eos_token_id=eos)
    reply = stopped.ask("hello there")
    assert reply == tokenizer.decode(ids[:ids.index(eos)]) and stopped.end_ids == (eos,)
    full = free.messages[-1]["content"]
    stop = full[2:4]
    stopped = ChatSession(model, tokenizer, max_new_tokens=12, stop_strings=[stop])
    assert stopped.ask("hello there") == full[:full.find(stop) + len(stop)]


def test_an_interrupted_reply_leaves_the_conversation_as_it_was(model, tokenizer):
    session = ChatSession(model, tokenizer, max_new_tokens=10)
    session.ask("hello there")
    before = list(session.messages)
    stream = session.send("tell me more")
    next(stream)
    stream.close()                        # what Ctrl-C in the middle of a reply does to the generator
    assert session.messages == before
    reference = ChatSession(model, tokenizer, max_new_tokens=10)
    reference.ask("hello there")
    assert session.ask("why") == reference.ask("why")


def test_a_full_context_is_a_clear_error(model, tokenizer):
    session = ChatSession(model, tokenizer, max_new_tokens=4)
    with pytest.raises(ValueError, match=r"fills the model's context of 256: /reset"):
        session.ask("the lazy dog " * 200)


def test_the_cache_grows_by_copying_what_it_holds(model, tokenizer, monkeypatch):
    from scratch.chat import session as session_module

    monkeypatch.setattr(session_module, "MIN_CACHE_LENGTH", 8)
    small = ChatSession(model, tokenizer, max_new_tokens=6)
    big = ChatSession(model, tokenizer, max_new_tokens=6)
    monkeypatch.setattr(session_module, "MIN_CACHE_LENGTH", 256)
    assert _conversation_replies(small, TURNS[:3]) == _conversation_replies(big, TURNS[:3])
    assert small.history[-1].reused_tokens > 0


def test_encoder_models_cannot_chat(tokenizer):
    bert = scratch.models.from_config(scratch.models.BertConfig(vocab_size=V, hidden_size=8, num_hidden_layers=1,
                                                                num_attention_heads=2, intermediate_size=16))
    with pytest.raises(ValueError, match="needs a causal LM"):
        ChatSession(bert, tokenizer)


# --------------------------------------------------------------------------------------------------------------
# scratch chat
# --------------------------------------------------------------------------------------------------------------

def test_one_shot_prompts_print_the_replies(folder, model, tokenizer, capsys):
    session = ChatSession(model, tokenizer, system="be brief", max_new_tokens=7)
    expected = [session.ask(text) for text in TURNS[:2]]
    assert main(["chat", "--model", str(folder), "--system", "be brief", "--max-new-tokens", "7",
                 "--prompt", TURNS[0], "--prompt", TURNS[1]]) == 0
    captured = capsys.readouterr()
    assert captured.out == "".join(reply + "\n" for reply in expected)
    lines = captured.err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("[prefilled ") and "(0 reused from the cache)" in lines[0]
    assert f"({session.history[1].reused_tokens} reused from the cache)" in lines[1]


def test_one_shot_sampling_and_flags(folder, model, tokenizer, capsys):
    expected = ChatSession(model, tokenizer, max_new_tokens=5, do_sample=True, seed=3, top_p=0.9).ask("hi")
    assert main(["chat", "--model", str(folder), "--max-new-tokens", "5", "--strategy", "sample", "--seed", "3",
                 "--top-p", "0.9", "--quiet", "--prompt", "hi"]) == 0
    captured = capsys.readouterr()
    assert captured.out == expected + "\n" and captured.err == ""
    assert main(["chat", "--model", str(folder), "--top-k", "5", "--prompt", "hi"]) == 2
    assert "use --strategy sample" in capsys.readouterr().err


def test_a_tokenizer_without_template_is_one_line(folder, tmp_path, capsys):
    tokenizer = load_tokenizer(folder)
    tokenizer.save(tmp_path / "tok.json")             # our own JSON: no chat template
    assert main(["chat", "--model", str(folder), "--tokenizer", str(tmp_path / "tok.json"), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no chat template" in err
    (tmp_path / "t.jinja").write_text("{{ messages[-1]['content'] }}")
    assert main(["chat", "--model", str(folder), "--tokenizer", str(tmp_path / "tok.json"), "--chat-template",
                 str(tmp_path / "t.jinja"), "--max-new-tokens", "3", "--quiet", "--prompt", "the quick"]) == 0
    (tmp_path / "bad.jinja").write_text("{{ raise_exception('no system messages here') }}")
    assert main(["chat", "--model", str(folder), "--chat-template", str(tmp_path / "bad.jinja"),
                 "--prompt", "x"]) == 2
    assert capsys.readouterr().err.strip().endswith("chat template: no system messages here")


def _run_chat(folder: Path, stdin: str | None = None, *extra: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "scratch", "chat", "--model", str(folder), "--max-new-tokens",
                             "6", *extra], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=REPO,
                            preexec_fn=RESTORE_SIGINT, **popen)


def test_interactive_through_stdin(folder, model, tokenizer):
    session = ChatSession(model, tokenizer, system="sys", max_new_tokens=6)
    first, second = session.ask("hello there"), session.ask("why")
    process = _run_chat(folder, None, "--system", "sys")
    out, err = process.communicate("hello there\nwhy\n/reset\n\n/nope\nhello there\n/exit\nnever read\n", timeout=120)
    assert process.returncode == 0, err
    assert out == f"{first}\n{second}\n{first}\n"
    assert "(new conversation)" in err and "unknown command /nope" in err
    assert err.count("[prefilled") == 3 and "Traceback" not in err


def test_ctrl_c_leaves_quietly_with_130(folder):
    process = _run_chat(folder)
    process.stdin.write("hello there\n")
    process.stdin.flush()
    process.stdout.readline()               # the first reply is out: the chat now waits for the next line
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


# --------------------------------------------------------------------------------------------------------------
# The real checkpoint (opt-in): SCRATCH_REAL_GGUF=$(../shared/tools/get-smollm2)
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.realmodel
def test_real_smollm2_greedy_chat_equals_transformers():
    from tests.conftest import require_real_gguf

    path = require_real_gguf()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                                 dtype=torch.float32)
    session = ChatSession(scratch.models.load(path), load_tokenizer(path), max_new_tokens=24)
    for question in ["What is the capital of France?", "And of Germany? Answer in one sentence."]:
        messages = session.messages + [{"role": "user", "content": question}]
        prompt = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        prompt = list(prompt["input_ids"]) if hasattr(prompt, "keys") else list(prompt)
        with torch.no_grad():
            out = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                    max_new_tokens=24, do_sample=False, eos_token_id=2, pad_token_id=2)
        expected = out[0, len(prompt):].tolist()
        expected = expected[:expected.index(2)] if 2 in expected else expected
        session.ask(question)
        assert session.history[-1].prompt_tokens == len(prompt)
        assert session.last_reply_ids == expected, (hf_tokenizer.decode(expected), session.messages[-1])
    assert session.history[-1].reused_tokens >= session.history[0].prompt_tokens
