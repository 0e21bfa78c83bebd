"""`scratch demo` (also `python -m scratch demo`): the bundled model's tour -- tokens, sizes, five decoding
strategies streamed, the KV cache's effect, the backend -- in a few seconds (scratch.demo)."""
from __future__ import annotations

import argparse

__all__ = ["register"]


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="tokens, sizes, decoding strategies and the KV cache on the bundled model")
    p.add_argument("--backend", default=None, help="numpy, strict, cupy or auto (default: $SCRATCH_BACKEND, else numpy)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling draws (default 0)")
    p.add_argument("--max-new-tokens", type=int, default=40, metavar="N", help="tokens per strategy (default 40)")
    p.add_argument("--prompt", default=None, help="the text to complete (default: 'def fibonacci(n):')")
    p.set_defaults(handler=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from scratch.demo import PROMPT, run_demo

    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    run_demo(backend=args.backend, seed=args.seed, max_new_tokens=args.max_new_tokens,
             prompt=args.prompt if args.prompt is not None else PROMPT)
    return 0
