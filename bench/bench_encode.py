"""Benchmark: encoding speed, ours (BPETokenizer) against tiktoken on the same cl100k_base vocabulary, one thread.

One run, side by side, on the benchmark corpus (../shared/data/corpora/corpus_mixed.txt, ~10 MB of English prose,
Python source and Korean): tiktoken `encode_ordinary`; `regex.findall` with the cl100k pattern alone (the floor
for any pure-Python encoder, since ours runs that same regex); ours `encode_ordinary` with a cold chunk cache (a
fresh tokenizer: every distinct chunk pays for BPE once), again with the cache warm, and `encode` (special-token
check included). Prints MB/s (UTF-8 bytes) and each one's ratio to tiktoken, and checks the ids are identical.
With --paths, also what each path of the fast encoder (scratch/tokenizer/bpe_fast.py) buys: a cold cache with the
cycle collector left running, a cold cache without NumPy batches (new chunks merged one by one), and the plain
encoder (`tokenizer.fast = None`: pretokenize + merge_chunk, no cache).
Speeds are per CPU second of this process (time.process_time: all of it is one thread), which stays meaningful
on a shared, busy machine; the wall-clock seconds are printed beside them.
Run:  python bench/bench_encode.py [--corpus PATH] [--limit-mb 10] [--paths]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere: the repo root is importable

DEFAULT_CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "corpora" / "corpus_mixed.txt"


WALL: dict[str, float] = {}


def timed(function, *args):
    """(result, CPU seconds); the wall-clock seconds go to WALL under the function's name."""
    start, start_wall = time.process_time(), time.perf_counter()
    result = function(*args)
    WALL[getattr(function, "__qualname__", str(function))] = time.perf_counter() - start_wall
    return result, time.process_time() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="UTF-8 text file")
    parser.add_argument("--limit-mb", type=float, default=None, help="use only the first N million characters")
    parser.add_argument("--paths", action="store_true", help="also time the encoder with each fast path turned off")
    args = parser.parse_args(argv)
    if not args.corpus.is_file():
        print(f"skipped: corpus not found: {args.corpus} (pass --corpus PATH)")
        return 0

    import regex
    import tiktoken
    import tiktoken.load

    from scratch.tokenizer import BPETokenizer
    from scratch.tokenizer.bpe_fast import FastEncoder
    from scratch.tokenizer.pretokenize import PATTERNS
    from scratch.tokenizer.tiktoken_format import CL100K_SPECIAL_TOKENS, bundled_file

    text = args.corpus.read_text(encoding="utf-8")
    if args.limit_mb is not None:
        text = text[: int(args.limit_mb * 1_000_000)]
    megabytes = len(text.encode("utf-8")) / 1e6
    path = bundled_file("cl100k_base")

    reference, load_tiktoken = timed(lambda: tiktoken.Encoding(
        name="cl100k_bench", pat_str=PATTERNS["gpt4"], mergeable_ranks=tiktoken.load.load_tiktoken_bpe(str(path)),
        special_tokens=CL100K_SPECIAL_TOKENS))
    ours, load_ours = timed(BPETokenizer.from_tiktoken, path, "gpt4", CL100K_SPECIAL_TOKENS)
    print(f"corpus: {args.corpus.name}, {megabytes:.2f} MB UTF-8, {len(text):,} characters; single thread")
    print(f"load cl100k_base: tiktoken {load_tiktoken:.2f} s, ours {load_ours:.2f} s")

    rows = []

    def run(name, function, *args):
        result, seconds = timed(function, *args)
        rows.append((name, seconds, WALL[getattr(function, "__qualname__", str(function))]))
        return result

    expected = run("tiktoken encode_ordinary", reference.encode_ordinary, text)
    chunks = run("regex.findall alone", regex.compile(PATTERNS["gpt4"]).findall, text)
    got_cold = run("ours encode_ordinary, cold cache", ours.encode_ordinary, text)
    got_warm = run("ours encode_ordinary, warm cache", ours.encode_ordinary, text)
    got_special = run("ours encode (special check), warm", ours.encode, text)
    identical = got_cold == expected and got_warm == expected and got_special == reference.encode(text)
    if args.paths:
        without_gc_pause = FastEncoder(ours)
        without_gc_pause.pause_gc = False
        without_batches = FastEncoder(ours)
        without_batches.batch_min = len(text) + 1
        for name, fast in [("  cold, cycle collector running", without_gc_pause),
                           ("  cold, no NumPy batches", without_batches), ("  plain (tokenizer.fast = None)", None)]:
            ours.fast = fast
            identical &= run(name, ours.encode_ordinary, text) == expected

    t_tiktoken = rows[0][1]
    print(f"{'':36} {'MB/s':>7} {'x tiktoken':>11} {'CPU s':>7} {'wall s':>7}")
    for name, seconds, wall in rows:
        print(f"{name:36} {megabytes / seconds:7.2f} {t_tiktoken / seconds:11.2f} {seconds:7.2f} {wall:7.2f}")
    print(f"{len(expected):,} tokens from {len(chunks):,} chunks ({len(set(chunks)):,} distinct); "
          f"ids identical to tiktoken: {identical}")
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
