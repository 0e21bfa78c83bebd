"""stream_generate: events as tokens are produced; the text pieces of a row joined equal the decoded output, also
when tokens cut multi-byte UTF-8 characters (the streaming decoder holds bytes back); batches stream per row."""
from __future__ import annotations

import pytest

import scratch.models
from scratch.generate import generate, stream_generate
from scratch.models import GPT2Config
from scratch.tokenizer import BPETokenizer

V = 300


@pytest.fixture(scope="module")
def tokenizer():
    text = ("the quick brown fox jumps over the lazy dog. " * 3 + "pack my box with five dozen liquor jugs! " * 3
            + "héllo wörld, naïve café, 日本語のテキスト. ")
    return BPETokenizer.train(text, vocab_size=V, pattern="gpt2")


@pytest.fixture(scope="module")
def model():
    return scratch.models.from_config(GPT2Config(vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=2), seed=3)


def _generated_ids(model, tokenizer, prompts, **kwargs):
    ids = [tokenizer.encode(p) for p in prompts]
    out = generate(model, ids, tokenizer=tokenizer, **kwargs).sequences
    return [row[out.shape[1] - (out.shape[1] - max(len(i) for i in ids)):].tolist() for row in out]


@pytest.mark.parametrize("kwargs", [dict(max_new_tokens=24), dict(max_new_tokens=24, do_sample=True, top_k=0,
                                                                   seed=5, temperature=1.5)])
def test_pieces_join_to_the_decoded_output(model, tokenizer, kwargs):
    events = list(stream_generate(model, tokenizer, "the quick", **kwargs))
    tokens = [e.token for e in events if e.token is not None]
    assert tokens == _generated_ids(model, tokenizer, ["the quick"], **kwargs)[0]
    assert "".join(e.text for e in events) == tokenizer.decode(tokens)
    assert events[-1].finished and not any(e.finished for e in events[:-1])
    assert all(e.row == 0 for e in events)


def test_multibyte_characters_are_held_back(model, tokenizer):
    """Sampling at a high temperature from a near-uniform model emits raw byte tokens that split characters: a
    piece never contains half a character, and pieces joined still equal decode (U+FFFD where bytes are invalid)."""
    seen_empty = False
    for seed in range(6):
        events = list(stream_generate(model, tokenizer, "héllo", max_new_tokens=30, do_sample=True, top_k=0,
                                      temperature=3.0, seed=seed))
        tokens = [e.token for e in events if e.token is not None]
        assert "".join(e.text for e in events) == tokenizer.decode(tokens)
        seen_empty |= any(e.text == "" for e in events)
    assert seen_empty, "no token ended inside a character; the test did not exercise the hold-back"


def test_batch_streams_each_row(model, tokenizer):
    prompts = ["the lazy dog", "pack"]
    generated = _generated_ids(model, tokenizer, prompts, max_new_tokens=10, eos_token_id=tokenizer.encode("o")[0])
    events = list(stream_generate(model, tokenizer, prompts, max_new_tokens=10,
                                  eos_token_id=tokenizer.encode("o")[0]))
    for row in range(2):
        mine = [e for e in events if e.row == row]
        tokens = [e.token for e in mine if e.token is not None]
        expected = generated[row]
        eos = tokenizer.encode("o")[0]
        if eos in expected:                         # a finished row streams up to its EOS, not the padding
            expected = expected[:expected.index(eos) + 1]
        assert tokens == expected
        assert "".join(e.text for e in mine) == tokenizer.decode(tokens)
        assert mine[-1].finished


def test_stop_string_ends_the_stream(model, tokenizer):
    """The stream ends on the token that completes the stop string (matched on prompt + text, as in generate)."""
    prompt = "the quick"
    plain = "".join(e.text for e in stream_generate(model, tokenizer, prompt, max_new_tokens=24))
    stop = plain[5:7]
    events = list(stream_generate(model, tokenizer, prompt, max_new_tokens=24, stop_strings=[stop]))
    text = "".join(e.text for e in events)
    assert text == plain[:len(text)] and len(text) < len(plain)
    assert stop in prompt + text
    last = [e for e in events if e.token is not None][-1]
    assert stop not in prompt + text[:len(text) - len(last.text)]


def test_streaming_refuses_beam_search(model, tokenizer):
    with pytest.raises(ValueError, match="greedy decoding and sampling"):
        list(stream_generate(model, tokenizer, "the", num_beams=2, max_new_tokens=3))


def test_tokenizer_without_a_stream_decoder(model, tokenizer):
    """Only encode/decode (as SentencePiece offers): the prefix decoder still joins to decode(tokens)."""
    class Plain:
        encode, decode = staticmethod(tokenizer.encode), staticmethod(tokenizer.decode)
    for seed in range(3):
        kwargs = dict(max_new_tokens=30, do_sample=True, top_k=0, temperature=3.0, seed=seed)
        events = list(stream_generate(model, Plain(), "héllo", **kwargs))
        tokens = [e.token for e in events if e.token is not None]
        assert tokens == [e.token for e in stream_generate(model, tokenizer, "héllo", **kwargs)
                          if e.token is not None]
        assert "".join(e.text for e in events) == tokenizer.decode(tokens)
        assert all("\ufffd" not in e.text[-1:] or e.finished or e.token is None for e in events)
