"""The `scratch` command line: one entry point, one subcommand per capability.

Each capability keeps its own subcommands next to its code and registers them here through a module-level
`register(subparsers)` function, listed in SUBCOMMAND_MODULES; this file only wires them together. Errors that
come from bad input (a missing file, an unknown name) print one line to stderr and exit with status 2, never a
traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# Modules that add subcommands, in the order `scratch --help` lists them.
SUBCOMMAND_MODULES: list[str] = ["scratch.demo.cli", "scratch.tokenizer.cli", "scratch.models.cli",
                                 "scratch.generate.cli", "scratch.chat.cli", "scratch.train.cli"]


def _cmd_info(args: argparse.Namespace) -> int:
    import backends
    import scratch

    if not args.training and (args.lora is not None or args.lora_targets or args.checkpointing or args.gpus != 1
                              or args.zero or args.seq_len is not None or args.precision != "mixed"):
        raise ValueError("--lora, --checkpointing, --precision, --seq-len, --gpus and --zero describe training: "
                         "add --training")
    if args.name:
        try:
            presets = importlib.import_module("scratch.models.presets")
        except ModuleNotFoundError:
            raise SystemExit("scratch info NAME: model presets are not available in this version") from None
        if args.training:
            from scratch.train.memory import training_report

            name = presets.canonical_name(args.name)   # llama2-7b -> llama-2-7b
            print(training_report(name, presets.get_preset(name), lora_r=args.lora,
                                  lora_targets=args.lora_targets, checkpointing=args.checkpointing,
                                  precision=args.precision, seq_len=args.seq_len, gpus=args.gpus, zero=args.zero))
            return 0
        print(presets.describe(args.name))
        return 0
    if args.training:
        raise ValueError("--training needs a model NAME, e.g. scratch info llama-2-7b --training")
    print(f"scratch {scratch.__version__}")
    print("backends:")
    for name in backends.NAMES:
        reason = backends.unavailable_reason(name)
        if reason is None:
            print(f"  [x] {backends.get(name).describe()}")
        else:
            print(f"  [ ] {name}: {reason}")
    print("components:")
    for name, module, what in scratch.COMPONENTS:
        try:
            importlib.import_module(module)
            mark = "x"
        except ModuleNotFoundError:
            mark = " "
        print(f"  [{mark}] {name:<11} {what}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scratch", description="LLM internals from scratch in NumPy / CuPy.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = subparsers.add_parser("info", help="backends and components available here; with NAME, a model's sizes")
    from scratch.models.presets import list_presets

    info.add_argument("name", nargs="?", help="a model preset (case and dashes are free: llama2-7b = llama-2-7b): "
                                              + ", ".join(list_presets()))
    training = info.add_argument_group("training memory (with NAME --training; docs/finetuning.md)")
    training.add_argument("--training", action="store_true",
                          help="weights, gradients, AdamW states and activations of fine-tuning NAME")
    training.add_argument("--lora", type=int, metavar="R", help="LoRA: only rank-R adapters are trained")
    training.add_argument("--lora-targets", nargs="+", metavar="MODULE",
                          help="projections LoRA wraps (default PEFT's: c_attn; q_proj v_proj; query value)")
    training.add_argument("--checkpointing", action="store_true", help="gradient checkpointing (recompute blocks)")
    training.add_argument("--precision", choices=("mixed", "fp32"), default="mixed",
                          help="mixed: 16-bit compute + float32 master weights (default); fp32: float32 throughout")
    training.add_argument("--seq-len", type=int, metavar="T", help="tokens per sequence (default: context, <= 2048)")
    training.add_argument("--gpus", type=int, default=1, metavar="N", help="data-parallel GPUs for ZeRO")
    training.add_argument("--zero", type=int, choices=(0, 1, 2, 3), default=0,
                          help="ZeRO stage: 1 divides optimizer states, 2 also gradients, 3 also weights")
    info.set_defaults(handler=_cmd_info)
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command: its status, 2 with one line on stderr for bad input, 130 after Ctrl-C (no traceback)."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "handler", None):
            parser.print_help()
            return 2
        return _run(args)
    except KeyboardInterrupt:  # Ctrl-C: leave quietly, as a shell expects (128 + SIGINT)
        sys.stdout.flush()
        print(file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    import numpy as np

    import backends

    try:
        # Overflow and NaN are reported by the code that meets them (sampling refuses a NaN distribution); NumPy's
        # own RuntimeWarnings would only add lines naming our source files.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return int(args.handler(args) or 0)
    except BrokenPipeError:  # `scratch ... | head` closed the pipe: not an error (caught before OSError, its base)
        # Python flushes stdout again at exit and would complain about the closed pipe: point it at /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ValueError, KeyError, OSError, ImportError, MemoryError, backends.BackendError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        if isinstance(error, MemoryError):
            message = f"out of memory ({message or 'MemoryError'})"
        line = " ".join(str(message).splitlines())  # one line, whatever the message holds
        print(f"scratch {args.command}: error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
