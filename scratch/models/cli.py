"""`scratch parity`: the parity report of every layer and model component across backends (see parity.py).

Prints one row per component -- max absolute and relative error against the first backend, the tolerance, PASS or
FAIL -- and exits with status 1 when any row fails, 0 otherwise. Not here: timing (bench/bench_models.py does that).
"""
from __future__ import annotations

import argparse


def _cmd_parity(args: argparse.Namespace) -> int:
    from scratch.models.parity import default_backends, format_table, run_parity

    names = args.backends or default_backends()
    rows = run_parity(names, model_folder=args.model, seed=args.seed)
    print(format_table(rows, reference=names[0]))
    return 0 if all(row.passed for row in rows) else 1


def register(subparsers) -> None:
    parity = subparsers.add_parser("parity", help="run every layer and model on two backends and compare the outputs")
    parity.add_argument("--backends", nargs="+", metavar="NAME",
                        help="backends to compare, the first is the reference (default: numpy cupy with a GPU, "
                             "else numpy strict)")
    parity.add_argument("--model", metavar="FOLDER", help="also compare a Hugging Face model folder's outputs")
    parity.add_argument("--seed", type=int, default=0, help="seed of the host generator that draws the inputs")
    parity.set_defaults(handler=_cmd_parity)
