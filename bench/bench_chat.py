"""Benchmark: `scratch chat` turn latency with the cross-turn KV cache vs re-prefilling the whole conversation.

Two ChatSessions on the same model run the same scripted conversation (greedy, so both give the same replies):
one keeps its KV cache across turns and prefills only what is new (the end of the last reply's markup and the new
user message), the other (reuse_cache=False) prefills the whole conversation every turn. The turns are
interleaved (cached, full, cached, full, ...), so a burst of load from other processes hits both alike. Per turn:
prompt tokens, tokens prefilled, time to the first reply token (the prefill) and the whole turn; the issue's
figure is the ratio full / cached at turn 5.
Model: --model PATH_OR_ID (a GGUF, a Hugging Face folder or id with a chat template), default $SCRATCH_REAL_GGUF
(SmolLM2-135M-Instruct Q4_1: ../shared/tools/get-smollm2); without either, a random Llama of SmolLM2-135M's shape
(30 layers, width 576, 9 heads / 3 kv heads, MLP 1536) with a small ChatML tokenizer trained here.
Run:  python bench/bench_chat.py [--model PATH] [--turns 6] [--max-new-tokens 32] [--backend numpy|cupy]
      [--blas-threads 1]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from anywhere: the repo root is importable

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
QUESTIONS = [
    "Hi! I am planning a week-long trip to Portugal in the spring. Which cities would you suggest I visit first?",
    "That sounds lovely. How should I travel between Lisbon and Porto, and how long does the journey take?",
    "What are some traditional dishes I should try while I am there, especially near the coast?",
    "Could you suggest a day trip from Lisbon that is good for someone who likes history and castles?",
    "What is the weather usually like in April, and what kind of clothes should I pack for it?",
    "Thanks! Finally, can you summarise the whole plan in a few short bullet points for me?",
    "One more thing: which phrases in Portuguese would be most useful for a polite visitor?",
    "Great, that is everything. Thank you for your help and have a nice day!",
]


def random_model(backend: str):
    """A random Llama of SmolLM2-135M's shape and a small ChatML tokenizer (vocabulary 2,048) trained here."""
    import scratch.models
    from scratch.models import LlamaConfig
    from scratch.tokenizer import BPETokenizer

    text = " ".join(QUESTIONS) * 20
    tokenizer = BPETokenizer.train(text, vocab_size=2048, pattern="gpt2",
                                   special_tokens=["<|im_start|>", "<|im_end|>"])
    tokenizer.set_chat_template(CHATML, {"eos_token": "<|im_end|>"})
    config = LlamaConfig(vocab_size=tokenizer.n_vocab, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
                         tie_word_embeddings=True, eos_token_id=tokenizer.special_tokens["<|im_end|>"])
    return scratch.models.from_config(config, backend=backend, seed=0), tokenizer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.environ.get("SCRATCH_REAL_GGUF"), help="GGUF, folder or model id")
    parser.add_argument("--turns", type=int, default=6, help="turns to run (default 6; the figure is at turn 5)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="reply length at most (default 32)")
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--blas-threads", type=int, default=1,
                        help="BLAS threads (default 1: on shared cores, more threads spin against each other)")
    args = parser.parse_args()
    if not 5 <= args.turns <= len(QUESTIONS):
        parser.error(f"--turns must be in 5..{len(QUESTIONS)}")
    for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(args.blas_threads)   # before NumPy is imported (backends imports it)

    import backends
    import scratch.models
    from scratch.chat import ChatSession
    from scratch.tokenizer import load_tokenizer

    backend = backends.get(args.backend)
    if args.model:
        model, tokenizer, what = (scratch.models.load(args.model, backend=backend),
                                  load_tokenizer(args.model), args.model)
    else:
        model, tokenizer = random_model(backend)
        what = "random Llama, SmolLM2-135M's shape (no --model and no $SCRATCH_REAL_GGUF)"
    print(f"model: {what}; backend {backend.name}, {args.blas_threads} BLAS thread(s); greedy, at most "
          f"{args.max_new_tokens} new tokens per reply")
    kwargs = dict(system="You are a helpful travel assistant.", max_new_tokens=args.max_new_tokens)
    cached = ChatSession(model, tokenizer, **kwargs)
    full = ChatSession(model, tokenizer, reuse_cache=False, **kwargs)
    cached.ask("warm up")        # first calls pay for allocation and BLAS start-up; not part of the figures
    full.ask("warm up")
    cached.reset()
    full.reset()

    header = (f"{'turn':>4} {'prompt':>6} | {'prefilled':>9} {'first token':>11} {'turn':>7} | "
              f"{'prefilled':>9} {'first token':>11} {'turn':>7} | {'ratio first':>11} {'ratio turn':>10}")
    print(f"{'':>11} | {'cross-turn cache':^29} | {'re-prefill the conversation':^29} |")
    print(header)
    rows = []   # per turn: (cached TurnStats, its wall seconds, full TurnStats, its wall seconds)
    for turn, question in enumerate(QUESTIONS[:args.turns], 1):
        replies, walls = [], []
        for session in (cached, full):
            started = time.perf_counter()
            replies.append(session.ask(question))
            walls.append(time.perf_counter() - started)
        a, b = cached.history[-1], full.history[-1]
        rows.append((a, walls[0], b, walls[1]))
        if replies[0] != replies[1]:
            print(f"  note: turn {turn} replies differ (float rounding between the two prefills)")
        print(f"{turn:>4} {a.prompt_tokens:>6} | {a.prefilled_tokens:>9} {a.prefill_seconds * 1e3:>9.0f}ms "
              f"{walls[0]:>6.2f}s | {b.prefilled_tokens:>9} {b.prefill_seconds * 1e3:>9.0f}ms {walls[1]:>6.2f}s | "
              f"{b.prefill_seconds / a.prefill_seconds:>10.1f}x {walls[1] / walls[0]:>9.2f}x")
    a, wall_a, b, wall_b = rows[4]
    print(f"turn 5: re-prefilling takes {b.prefill_seconds / a.prefill_seconds:.1f}x as long to the first token "
          f"({b.prefilled_tokens} vs {a.prefilled_tokens} tokens prefilled) and {wall_b / wall_a:.2f}x as long for "
          f"the whole turn ({a.new_tokens} new tokens)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
