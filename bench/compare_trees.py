"""Benchmark: the same workloads on two checkouts of this project, side by side -- did a change make anything slower?

Each workload (tokenizer encode and training, GPT-2 124M prefill, cached decode at 1 and 8 rows, beam search with 4
beams) runs in a fresh subprocess whose `scratch` comes from one tree, with one BLAS thread, timed in CPU seconds of
that process (time.process_time): on a machine shared with other jobs, CPU time moves far less than wall time. The
trees alternate round after round, and the fastest round of each counts, so a burst of load hits both alike.
Prints each workload's time in both trees and the ratio new/old (above 1 = the new tree is slower).
Only public names that both trees have are used (the model weights are random, seed 0, the same in both).
Run:  python bench/compare_trees.py OLD_TREE NEW_TREE [--rounds 3] [--only encode,train,prefill,...]
      e.g. git worktree add /tmp/old HEAD~20 && python bench/compare_trees.py /tmp/old .
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "corpora" / "corpus_mixed.txt"

# Each workload: setup code (untimed) and the timed statement. `REPEAT` timings, the fastest is reported.
WORKLOADS = {
    "encode": ("""
from scratch.tokenizer import BPETokenizer
from scratch.tokenizer.tiktoken_format import CL100K_SPECIAL_TOKENS, bundled_file
text = open(CORPUS, encoding="utf-8").read()[:1_000_000]
def run():
    tok = BPETokenizer.from_tiktoken(bundled_file("cl100k_base"), "gpt4", CL100K_SPECIAL_TOKENS)
    tok.encode_ordinary(text)                       # cold chunk cache
    tok.encode_ordinary(text)                       # warm
""", 2),
    "train": ("""
try:
    from scratch.tokenizer.train_fast import train_merges
except ImportError:
    from scratch.tokenizer.train import train_merges
from scratch.tokenizer.train import count_chunks
text = open(CORPUS, encoding="utf-8").read()[:1_000_000]
blocks = [text[i:i + 16384] for i in range(0, len(text), 16384)]
def run():
    train_merges(count_chunks(blocks, "gpt4"), 2048 - 256)
""", 2),
    "prefill": ("""
import numpy as np
from scratch.models.config import GPT2Config
from scratch.models.gpt2 import from_config
model = from_config(GPT2Config(), seed=0)
ids = np.random.default_rng(0).integers(0, 50257, (1, 256))
def run():
    model(ids)
""", 3),
    "decode_b1": ("""
import numpy as np
from scratch.models.config import GPT2Config
from scratch.models.gpt2 import from_config
model = from_config(GPT2Config(), seed=0)
ids = np.random.default_rng(0).integers(0, 50257, (1, 16))
def run():
    cache = model.new_cache(1, 64)
    logits = model(ids, cache=cache, logits_to_keep=1)
    for step in range(16):
        nxt = np.asarray(logits[:, -1, :]).argmax(-1)[:, None]
        logits = model(nxt, cache=cache)
""", 3),
    "greedy_b8": ("""
import numpy as np
from scratch.generate import generate
from scratch.models.config import GPT2Config
from scratch.models.gpt2 import from_config
model = from_config(GPT2Config(), seed=0)
ids = np.random.default_rng(0).integers(0, 50257, (8, 16))
def run():
    generate(model, ids, max_new_tokens=16, eos_token_id=None, pad_token_id=0)
""", 3),
    "beam4": ("""
import numpy as np
from scratch.generate import generate
from scratch.models.config import GPT2Config
from scratch.models.gpt2 import from_config
model = from_config(GPT2Config(), seed=0)
ids = np.random.default_rng(0).integers(0, 50257, (1, 16))
def run():
    generate(model, ids, max_new_tokens=16, num_beams=4, eos_token_id=None, pad_token_id=0)
""", 3),
}

CHILD = """
import json, sys, time
CORPUS = {corpus!r}
{setup}
run()                                              # warm-up: first-touch page faults, caches
best = float("inf")
for _ in range({repeat}):
    start = time.process_time()
    run()
    best = min(best, time.process_time() - start)
import scratch
print(json.dumps({{"seconds": best, "file": scratch.__file__}}))
"""


def time_in_tree(tree: Path, name: str) -> float:
    setup, repeat = WORKLOADS[name]
    # one hash seed for both trees: set and dict orders (the BPE trainer's tie candidates) then match
    env = dict(os.environ, PYTHONPATH=str(tree), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    code = CHILD.format(corpus=str(CORPUS), setup=setup, repeat=repeat)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(tree), capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{name} failed in {tree}:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if not Path(result["file"]).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"{name}: scratch came from {result['file']}, not from {tree}")
    return result["seconds"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path, help="the checkout to compare against")
    parser.add_argument("new", type=Path, help="the checkout with the change")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per workload (fastest counts)")
    parser.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workloads")
    args = parser.parse_args()
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in names if name not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workloads {unknown}; known: {', '.join(WORKLOADS)}")
    print(f"old: {args.old}   new: {args.new}   CPU seconds, 1 BLAS thread, fastest of {args.rounds} alternating "
          f"rounds; load average {os.getloadavg()[0]:.1f}")
    print(f"  {'workload':<10} {'old (s)':>9} {'new (s)':>9} {'new/old':>8}")
    for name in names:
        old = new = float("inf")
        for _ in range(args.rounds):
            old = min(old, time_in_tree(args.old, name))
            new = min(new, time_in_tree(args.new, name))
        print(f"  {name:<10} {old:9.3f} {new:9.3f} {new / old:8.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
