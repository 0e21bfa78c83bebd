"""Benchmark: BPE training, ours (count_chunks + train_merges) against Hugging Face `tokenizers`, single thread.

For each vocabulary size both train on the same text, given as the same ~16 KiB line-aligned blocks: HF's ByteLevel
BPE (GPT-2 pre-tokenizer, 256-byte initial alphabet, RAYON_NUM_THREADS=1) and ours (gpt4 pattern, 256 + merges).
Timed for both: pre-tokenizing + counting + merging. Not timed: reading the file, splitting it into blocks.
Also: the plain reference trainer on a small slice (checked equal to the fast one) and the peak RSS of our
training on the whole corpus (ru_maxrss, measured by a first untimed run before HF or anything big has run).
Run:  python bench/bench_train.py [--corpus PATH] [--limit-mb 10] [--sizes 1024,4096,16384] [--repeat 1]
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

os.environ["RAYON_NUM_THREADS"] = "1"  # before tokenizers is imported: HF trains on one thread, as we do

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere: the repo root is importable

from scratch.tokenizer.train import count_chunks, train_merges_reference  # noqa: E402
from scratch.tokenizer.train_fast import train_merges  # noqa: E402

DEFAULT_CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "corpora" / "corpus_mixed.txt"
BLOCK_CHARS = 16 * 1024  # HF trains fastest on blocks of this size (lines: ~15% slower; 1 MiB blocks: ~40% slower)


def read_text(path: Path, limit_mb: float | None) -> str:
    text = path.read_text(encoding="utf-8")
    if limit_mb is not None:
        text = text[: int(limit_mb * 1_000_000)]
    return text


def line_blocks(text: str, size: int = BLOCK_CHARS) -> list[str]:
    """`text` cut after the first newline past every `size` characters; joining the blocks gives `text`."""
    blocks, start = [], 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        blocks.append(text[start:end])
        start = end
    return blocks


def train_hf(blocks: list[str], vocab_size: int) -> int:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(blocks, trainer=trainer)
    return tokenizer.get_vocab_size()


def train_ours(blocks: list[str], vocab_size: int) -> int:
    merges = train_merges(count_chunks(blocks, pattern="gpt4"), vocab_size - 256)
    return 256 + len(merges)


def best_time(function, *args, repeat: int = 1) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function(*args)
        best = min(best, time.perf_counter() - start)
    return best, result


def max_rss_mib() -> float:
    # ru_maxrss is KiB on Linux (bytes on macOS).
    scale = 1 / (1024 * 1024) if sys.platform == "darwin" else 1 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--limit-mb", type=float, default=None, help="use only the first N million characters")
    parser.add_argument("--sizes", default="1024,4096,16384", help="comma-separated vocabulary sizes (> 256)")
    parser.add_argument("--repeat", type=int, default=1, help="time each run this many times, report the best")
    parser.add_argument("--reference-kb", type=float, default=20, help="slice for the reference trainer (KB)")
    parser.add_argument("--reference-merges", type=int, default=300)
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    if any(size <= 256 for size in sizes):
        parser.error(f"--sizes must be vocabulary sizes above 256, got {args.sizes}")
    if not args.corpus.is_file():
        print(f"skipped: corpus not found: {args.corpus} (pass --corpus PATH)")
        return 0

    text = read_text(args.corpus, args.limit_mb)
    blocks = line_blocks(text)
    # Peak memory first, while nothing bigger has run in this process (ru_maxrss only ever grows; a child process
    # would not help: on Linux a spawned child starts from its parent's high-water mark).
    rss_before = max_rss_mib()
    train_ours(blocks, sizes[-1])
    rss_peak = max_rss_mib()
    import tokenizers  # noqa: F401  (imported here so that no timing below includes the import)

    print(f"corpus {args.corpus.name}: {len(text.encode('utf-8')) / 1e6:.1f} MB, {len(blocks)} blocks; "
          f"one thread; timed: pre-tokenize + count + merge (file reading excluded)")
    print(f"{'vocab':>7} {'HF tokenizers':>14} {'ours':>8} {'ours/HF':>8}")
    for size in sizes:
        hf_time, hf_vocab = best_time(train_hf, blocks, size, repeat=args.repeat)
        our_time, our_vocab = best_time(train_ours, blocks, size, repeat=args.repeat)
        note = "" if hf_vocab == our_vocab == size else f"  (vocab reached: HF {hf_vocab}, ours {our_vocab})"
        print(f"{size:>7} {hf_time:>13.2f}s {our_time:>7.2f}s {our_time / hf_time:>7.2f}x{note}")

    sample = text[: int(args.reference_kb * 1000)]
    counts = count_chunks(line_blocks(sample))
    ref_time, ref_merges = best_time(train_merges_reference, counts, args.reference_merges)
    fast_time, fast_merges = best_time(train_merges, counts, args.reference_merges)
    same = "identical" if ref_merges == fast_merges else "DIFFERENT"
    print(f"reference trainer, {args.reference_kb:g} KB at {args.reference_merges} merges: {ref_time:.2f}s "
          f"(fast: {fast_time:.3f}s; merge lists {same})")
    print(f"peak RSS of our training at vocab {sizes[-1]}: {rss_peak:.0f} MiB ({rss_before:.0f} MiB before it: "
          f"interpreter + text + blocks; so training added {rss_peak - rss_before:.0f} MiB)")
    print("note: one run each on a shared machine; timings are noisy (use --repeat N for the best of N)")
    return 0 if ref_merges == fast_merges else 1


if __name__ == "__main__":
    sys.exit(main())
