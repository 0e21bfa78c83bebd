"""`scratch parity`: the parity report of every layer and model component (see parity.py), and `announce_load`, the
line every command prints on stderr before it loads a large model.

`scratch parity` prints one row per comparison -- float32 on each backend against the first, then float32 and
float16 against a float64 run -- with max absolute and relative error, the tolerance and PASS or FAIL, and exits
with status 1 when any row fails, 0 otherwise. Not here: timing (bench/bench_models.py does that).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["register", "announce_load", "describe_model_source", "LARGE_MODEL_BYTES"]

# Weights this large take seconds to read (about 1 GB/s from a warm disk cache, less from a cold one): say what is
# being loaded before the wait. Smaller models load in a blink and print nothing.
LARGE_MODEL_BYTES = 100 * 2**20


def describe_model_source(source) -> tuple[str, int]:
    """(one-line description, bytes of weights) of what `scratch.models.load(source)` would read: a GGUF file, a
    Hugging Face folder (safetensors, sharded or not) or a hub model id. Reads file sizes only."""
    from scratch.formats.gguf import is_gguf
    from scratch.models.presets import format_bytes

    path = Path(source)
    if not path.exists():
        return f"{source} (a Hugging Face model id, from the hub cache)", 0
    if path.is_file():
        size = path.stat().st_size
        kind = "GGUF" if is_gguf(path) else "a file"
        return f"{path}: {kind}, {format_bytes(size)}", size
    shards = sorted(path.glob("*.safetensors"))
    size = sum(shard.stat().st_size for shard in shards)
    files = f"{len(shards)} safetensors file{'s' if len(shards) != 1 else ''}"
    return f"{path}: {files}, {format_bytes(size)}", size


def announce_load(source, file=None) -> None:
    """Print 'loading PATH: FORMAT, SIZE' on stderr (or `file`) when the weights are at least LARGE_MODEL_BYTES, so
    a long load is never silent. Called by the commands just before scratch.models.load."""
    try:
        text, size = describe_model_source(source)
    except OSError:          # unreadable: let load() raise its own, precise error
        return
    if size >= LARGE_MODEL_BYTES:
        print(f"loading {text}", file=file or sys.stderr, flush=True)


def _cmd_parity(args: argparse.Namespace) -> int:
    from scratch.models.parity import default_backends, format_table, run_parity
    from scratch.train.parity import gradient_checks

    names = args.backends or default_backends()
    if args.model is not None:
        announce_load(args.model)
    rows = run_parity(names, model_folder=args.model, seed=args.seed, precision=not args.portability_only,
                      extra_checks=gradient_checks(args.seed + 2))
    print(format_table(rows, reference=names[0]))
    return 0 if all(row.passed for row in rows) else 1


def register(subparsers) -> None:
    parity = subparsers.add_parser(
        "parity", help="run every layer and model on two backends, and in float32/float16 against float64",
        description="Run every layer and model component on two backends in float32 (portability), and in float32 "
                    "and float16 against float64 on the same backend (precision); print each one's error and "
                    "tolerance. Exit 1 if any row fails.")
    parity.add_argument("--backends", nargs="+", metavar="NAME",
                        help="backends to compare, the first is the reference (default: numpy cupy with a GPU, "
                             "else numpy strict)")
    parity.add_argument("--model", metavar="FOLDER", help="also compare a Hugging Face model folder's outputs")
    parity.add_argument("--seed", type=int, default=0, help="seed of the host generator that draws the inputs")
    parity.add_argument("--portability-only", action="store_true",
                        help="only the backend comparison, without the float32/float16 vs float64 section")
    parity.set_defaults(handler=_cmd_parity)
