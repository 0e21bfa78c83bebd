"""Command line for decoding: `scratch generate` streams a continuation, `scratch compare-decoding` lines up strategies.

`scratch generate [--model FOLDER --tokenizer PATH_OR_NAME] [--strategy ...] [options] "prompt"` prints the text as
it is produced (greedy and sampling stream token by token; beam, contrastive and speculative decoding print once at
the end). `scratch compare-decoding ... "prompt"` runs the same prompt through several strategies (greedy, sampling,
top-k, top-p, min-p, beam search, contrastive search) and prints one line per strategy. Options use transformers'
names with dashes. EOS is the model config's eos_token_id when it lies inside the vocabulary. BOS (--bos auto):
a Llama prompt starts with the config's bos_token_id, as Hugging Face's Llama tokenizers add it and the checkpoints
were trained with it; a GPT-2 prompt does not (GPT2Tokenizer adds nothing). Without --model, the bundled model
(scratch.bundled) and its tokenizer are used. Not here: chat templates, interactive sessions.
"""
from __future__ import annotations

import argparse
import sys

__all__ = ["register", "printable", "add_decoding_options"]

STRATEGIES = ("greedy", "sample", "beam", "contrastive", "speculative")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", help="the prompt text")
    p.add_argument("--model", metavar="FOLDER",
                   help="a Hugging Face model folder (GPT-2 or Llama); default: the bundled model (scratch.bundled)")
    p.add_argument("--tokenizer", metavar="PATH_OR_NAME",
                   help="a tokenizer file or folder (see `scratch tokenizer`), or a name such as cl100k_base "
                        "(default: the --model folder's)")
    add_decoding_options(p)
    p.add_argument("--bos", choices=("auto", "yes", "no"), default="auto",
                   help="start the prompt with the model's bos_token_id: auto (default) for Llama, not for GPT-2")


def add_decoding_options(p: argparse.ArgumentParser) -> None:
    """Backend, length, seed, warpers, penalties and stop strings: the flags `scratch generate` and `scratch chat`
    share (transformers' names with dashes)."""
    p.add_argument("--backend", default=None,
                   help="numpy, strict, cupy or auto (default: $SCRATCH_BACKEND, else numpy)")
    p.add_argument("--dtype", default="float32", help="float32 (default), float16 or float64")
    p.add_argument("--max-new-tokens", type=int, default=50, metavar="N",
                   help="new tokens at most (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the host generator for sampling (default 0)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (0 = greedy)")
    p.add_argument("--top-k", type=int, default=None, help="keep the k most probable tokens (0 disables)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus: keep the top tokens with this much mass")
    p.add_argument("--min-p", type=float, default=None, help="keep tokens with p >= min_p * max p")
    p.add_argument("--repetition-penalty", type=float, default=None, help="CTRL repetition penalty (> 1 punishes)")
    p.add_argument("--no-repeat-ngram-size", type=int, default=None, metavar="N", help="ban repeated n-grams")
    p.add_argument("--stop", action="append", default=None, metavar="TEXT", help="a stop string (repeatable)")


def register(subparsers) -> None:
    g = subparsers.add_parser("generate", help="generate a continuation of a prompt, streamed to stdout")
    _add_model_options(g)
    g.add_argument("--strategy", choices=STRATEGIES, default="greedy", help="decoding strategy (default greedy)")
    g.add_argument("--num-beams", type=int, default=4, help="beams for --strategy beam (default 4)")
    g.add_argument("--length-penalty", type=float, default=None, help="beam search length penalty")
    g.add_argument("--penalty-alpha", type=float, default=0.6, help="contrastive search degeneration penalty")
    g.add_argument("--draft-model", metavar="FOLDER", help="the draft model for --strategy speculative")
    g.set_defaults(handler=_cmd_generate)

    c = subparsers.add_parser("compare-decoding", help="run one prompt through several decoding strategies")
    _add_model_options(c)
    c.add_argument("--num-beams", type=int, default=4, help="beams for beam search (default 4)")
    c.set_defaults(handler=_cmd_compare)


def _load_causal_lm(folder, args):
    """A decoder (GPT-2, Llama) on the chosen backend (--backend, else $SCRATCH_BACKEND, else numpy)."""
    import backends
    import scratch.models
    from scratch.models.cli import announce_load

    announce_load(folder)                   # a large model: one stderr line (path, format, size) before the wait
    model = scratch.models.load(folder, backend=backends.get(args.backend), dtype=args.dtype)
    if not hasattr(model, "new_cache"):  # BERT: an encoder has no next-token distribution to decode from
        raise ValueError(f"{folder} holds a {type(model).__name__} model, which cannot generate text "
                         f"(generation needs a causal LM: GPT-2 or Llama)")
    return model


def _load(args):
    from scratch.tokenizer import load_tokenizer

    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.model is None:                            # no --model: the model that ships in the package
        import scratch.bundled

        args.model = scratch.bundled.FOLDER
    tokenizer = load_tokenizer(args.tokenizer if args.tokenizer is not None else args.model)
    model = _load_causal_lm(args.model, args)
    check_tokenizer_fits(tokenizer, model, args.tokenizer or args.model, args.model)
    ids = tokenizer.encode(args.prompt)
    bos = _bos_id(args.bos, model)
    if bos is not None and ids[:1] != [bos]:
        ids = [bos] + ids
    if not ids:
        raise ValueError("the prompt is empty: give some text to continue")
    return model, tokenizer, ids


def check_tokenizer_fits(tokenizer, model, tokenizer_name, model_name) -> None:
    """Refuse a tokenizer that can produce ids the model has no embedding for (they belong to different models).
    A model vocabulary padded beyond the tokenizer's, as many checkpoints have (GPT-2's 50,257 padded to 50,304),
    is normal: those ids are simply never produced."""
    if tokenizer.n_vocab > model.n_vocab:
        raise ValueError(f"the tokenizer {tokenizer_name} produces ids up to {tokenizer.n_vocab - 1:,}, but the "
                         f"model {model_name} has only {model.n_vocab:,} tokens (ids 0..{model.n_vocab - 1:,}): "
                         f"they do not belong together; pass the model's own tokenizer")


def _bos_id(choice: str, model) -> int | None:
    """The id to put first in the prompt, or None: --bos yes/no, or auto (Llama yes, GPT-2 no)."""
    from scratch.models.llama import Llama

    bos = getattr(model.config, "bos_token_id", None)
    if choice == "no" or (choice == "auto" and not isinstance(model, Llama)):
        return None
    if bos is None or not 0 <= bos < model.n_vocab:
        if choice == "yes":
            raise ValueError(f"--bos yes: the model config's bos_token_id ({bos!r}) is not an id of its "
                             f"{model.n_vocab}-token vocabulary")
        return None
    return bos


def _base_kwargs(args, model) -> dict:
    """Generation parameters shared by every strategy: length, EOS from the model config, processors, seed."""
    kwargs = dict(max_new_tokens=args.max_new_tokens, seed=args.seed)
    eos = getattr(model.config, "eos_token_id", None)
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    eos = [e for e in eos if 0 <= e < model.n_vocab]
    if eos:
        kwargs["eos_token_id"] = eos if len(eos) > 1 else eos[0]
    if args.repetition_penalty is not None:
        kwargs["repetition_penalty"] = args.repetition_penalty
    if args.no_repeat_ngram_size is not None:
        kwargs["no_repeat_ngram_size"] = args.no_repeat_ngram_size
    if args.stop:
        kwargs["stop_strings"] = args.stop
    return kwargs


def _warpers(args) -> dict:
    names = ("temperature", "top_k", "top_p", "min_p")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _eos_ids(kwargs) -> set:
    eos = kwargs.get("eos_token_id")
    return set() if eos is None else ({eos} if isinstance(eos, int) else set(eos))


def _new_text(tokenizer, sequence, prompt_len: int, eos: set, stops=None) -> str:
    """The generated part of one output row as text, cut at its first EOS, or after the first stop string it
    completes (a row that ended there is padded after it, and the pad id may be a real token's)."""
    ids = [int(token) for token in sequence[prompt_len:]]
    for position, token in enumerate(ids):
        if token in eos:
            ids = ids[:position]
            break
    text = tokenizer.decode(ids)
    ends = [text.find(s) + len(s) for s in (stops or ()) if s in text]
    return text[:min(ends)] if ends else text


def _cmd_generate(args) -> int:
    from scratch.generate import generate, stream_generate

    model, tokenizer, ids = _load(args)
    kwargs = _base_kwargs(args, model)
    eos = _eos_ids(kwargs)
    out = sys.stdout
    if args.strategy in ("greedy", "sample"):
        kwargs.update(_warpers(args))
        if args.strategy == "sample":
            kwargs["do_sample"] = True
        elif any(k in kwargs for k in ("top_k", "top_p", "min_p")) or kwargs.get("temperature", 0) > 0:
            raise ValueError("--temperature/--top-k/--top-p/--min-p shape sampling: use --strategy sample")
        for event in stream_generate(model, tokenizer, [ids], **kwargs):
            if event.token is not None and event.token in eos:
                continue
            out.write(event.text)
            out.flush()
        out.write("\n")
        return 0
    draft = None
    if args.strategy == "beam":
        kwargs.update(num_beams=args.num_beams)
        if args.length_penalty is not None:
            kwargs["length_penalty"] = args.length_penalty
    elif args.strategy == "contrastive":
        kwargs.update(penalty_alpha=args.penalty_alpha, top_k=args.top_k if args.top_k is not None else 4)
        if not (kwargs["penalty_alpha"] > 0 and kwargs["top_k"] > 1):  # else generate() would decode greedily
            raise ValueError(f"--strategy contrastive needs --penalty-alpha > 0 and --top-k >= 2, got "
                             f"{args.penalty_alpha} and {kwargs['top_k']}")
    else:  # speculative
        if not args.draft_model:
            raise ValueError("--strategy speculative needs --draft-model FOLDER")
        draft = _load_causal_lm(args.draft_model, args)
        kwargs.update(_warpers(args))
        kwargs["do_sample"] = bool(_warpers(args))
    result = generate(model, [ids], draft_model=draft, tokenizer=tokenizer, **kwargs)
    out.write(_new_text(tokenizer, result.sequences[0], len(ids), eos, args.stop) + "\n")
    return 0


def _comparisons(args) -> list[tuple[str, dict]]:
    return [
        ("greedy", {}),
        ("sample", dict(do_sample=True, top_k=0)),
        ("top-k 50", dict(do_sample=True, top_k=50)),
        ("top-p 0.9", dict(do_sample=True, top_k=0, top_p=0.9)),
        ("min-p 0.1", dict(do_sample=True, top_k=0, min_p=0.1)),
        (f"beam {args.num_beams}", dict(num_beams=args.num_beams)),
        ("contrastive", dict(penalty_alpha=0.6, top_k=4)),
    ]


def printable(text: str) -> str:
    """One line of text: newlines, tabs and other unprintable characters written as escapes (\\n, \\x1c, ...)."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _cmd_compare(args) -> int:
    from scratch.generate import generate

    model, tokenizer, ids = _load(args)
    base = _base_kwargs(args, model)
    eos = _eos_ids(base)
    warpers = _warpers(args)
    comparisons = _comparisons(args)
    width = max(len(name) for name, _ in comparisons)
    # Each strategy's line is printed as soon as it finishes (a large model takes seconds per strategy).
    print(f"prompt: {args.prompt!r}", flush=True)
    for name, extra in comparisons:
        kwargs = {**base, **extra}
        if kwargs.get("do_sample"):
            kwargs.update(warpers)
        if "stop_strings" in kwargs and "penalty_alpha" in kwargs:
            text = "(skipped: contrastive search takes no stop strings)"
        else:
            result = generate(model, [ids], tokenizer=tokenizer, **kwargs)
            text = printable(_new_text(tokenizer, result.sequences[0], len(ids), eos, args.stop))
        print(f"{name:<{width}} | {text}", flush=True)
    return 0
