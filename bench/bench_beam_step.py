"""Benchmark: the time of one beam-search step as the token budget (max_new_tokens) grows: 100, 100k, 1M.

A beam step reorders the KV cache (every beam continues some parent beam) and runs the model on one token per beam.
The cache is allocated for prompt + budget positions once; what a step costs should depend on what has been written
(the prompt and the steps so far), not on the budget. A toy Llama (2 layers, C=16, 2 kv heads of D=8, context 2^21)
with 4 beams of one 16-token prompt; each figure is the median of the steps after the first (which expands the cache
from 1 to 4 rows). Run against another checkout (e.g. the code before a change) with --root PATH.
Run:  python bench/bench_beam_step.py [--root PATH] [--steps N]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(Path(__file__).resolve().parent.parent),
                        help="the checkout whose scratch package is measured (default: this one)")
    parser.add_argument("--steps", type=int, default=6, help="beam steps timed per budget")
    parser.add_argument("--budgets", type=int, nargs="+", default=[100, 100_000, 1_000_000])
    args = parser.parse_args()
    sys.path.insert(0, args.root)
    import scratch.generate.beam as beam
    import scratch.models
    from scratch.models import LlamaConfig

    beams_class = getattr(beam, "BeamModel", None) or getattr(beam, "_Beams")
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2 ** 21)
    model = scratch.models.from_config(config)
    num_beams, T = 4, 16

    class Prompt:  # what the beam model reads of a checked prompt (scratch.generate.prompt.Prompt)
        batch_size, length = 1, T
        input_ids = np.arange(T, dtype=np.int64)[None, :]

        @staticmethod
        def model_mask(extra):
            return None

    print(f"scratch from {args.root}: one beam step (4 beams, 16-token prompt), median of {args.steps - 1}")
    for budget in args.budgets:
        beams = beams_class(model, Prompt, num_beams, budget)
        parents = np.array([1, 0, 3, 2], dtype=np.int64)              # every step moves every beam
        tokens = np.array([5, 6, 7, 8], dtype=np.int64)
        times = []
        for step in range(args.steps):
            start = time.perf_counter()
            beams.advance(parents if step else np.zeros(num_beams, dtype=np.int64), tokens)
            times.append(time.perf_counter() - start)
        print(f"  budget {budget:>9,}: {1000 * statistics.median(times[1:]):8.2f} ms per step")
        del beams


if __name__ == "__main__":
    main()
