"""`scratch chat`: talk to an instruct model through its chat template, the reply streamed as it is generated.

`scratch chat --model PATH_OR_ID` reads a GGUF file, a Hugging Face folder or a hub model id (owner/name), and its
tokenizer and chat template from the same place (or --tokenizer / --chat-template); without --model, the bundled
model (scratch.bundled), whose template only joins the turns as lines of code. Interactive: each line read is
a user message; `/reset` starts over (keeping --system), `/exit` (or end of input) leaves. One-shot for scripts:
`--prompt TEXT` (repeatable: one turn each) prints the replies and exits. After each reply a line on stderr says
how many prompt tokens were prefilled and how many the cross-turn KV cache saved (--quiet hides it). Decoding flags
are `scratch generate`'s (greedy by default; --strategy sample with --temperature/--top-k/--top-p/--min-p). Ctrl-C
leaves quietly with status 130.
"""
from __future__ import annotations

import sys

from scratch.generate.cli import add_decoding_options, check_tokenizer_fits

__all__ = ["register"]

COMMANDS = {"/exit": "leave", "/quit": "leave", "/reset": "start a new conversation (the system prompt stays)"}


def register(subparsers) -> None:
    c = subparsers.add_parser("chat", help="talk to an instruct model through its chat template (streamed)")
    c.add_argument("--model", metavar="PATH_OR_ID",
                   help="a GGUF file, a Hugging Face folder (GPT-2 or Llama) or a hub model id owner/name; default: "
                        "the bundled model, which completes Python (each message is a line of code it continues)")
    c.add_argument("--tokenizer", metavar="PATH_OR_NAME", help="the tokenizer (default: the model's own)")
    c.add_argument("--chat-template", metavar="FILE", help="a Jinja chat template file (default: the tokenizer's)")
    c.add_argument("--system", metavar="TEXT", help="a system message that starts the conversation")
    c.add_argument("--prompt", action="append", metavar="TEXT",
                   help="one-shot: send this message, print the reply, exit (repeat for several turns)")
    c.add_argument("--strategy", choices=("greedy", "sample"), default="greedy", help="decoding (default greedy)")
    c.add_argument("--no-cache-reuse", action="store_true",
                   help="prefill the whole conversation every turn (to measure what the cross-turn cache saves)")
    c.add_argument("--quiet", action="store_true", help="no prefill/cache line on stderr after each reply")
    add_decoding_options(c)
    c.set_defaults(handler=_cmd_chat, max_new_tokens=256)


def _generation_kwargs(args) -> dict:
    kwargs = dict(max_new_tokens=args.max_new_tokens, seed=args.seed)
    warpers = {name: getattr(args, name) for name in ("temperature", "top_k", "top_p", "min_p")
               if getattr(args, name) is not None}
    if args.strategy == "sample":
        kwargs.update(do_sample=True, **warpers)
    elif any(name != "temperature" for name in warpers) or warpers.get("temperature", 0) > 0:
        raise ValueError("--temperature/--top-k/--top-p/--min-p shape sampling: use --strategy sample")
    if args.repetition_penalty is not None:
        kwargs["repetition_penalty"] = args.repetition_penalty
    if args.no_repeat_ngram_size is not None:
        kwargs["no_repeat_ngram_size"] = args.no_repeat_ngram_size
    if args.stop:
        kwargs["stop_strings"] = tuple(args.stop)
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    return kwargs


def _session(args):
    import backends
    import scratch.models
    from scratch.chat.session import ChatSession
    from scratch.models.cli import announce_load
    from scratch.tokenizer import load_tokenizer

    if args.model is None:                            # no --model: the model that ships in the package
        import scratch.bundled

        args.model = scratch.bundled.FOLDER
        print("(the bundled model: it completes Python and is no instruct model -- its chat template writes each "
              "message as a line of code for it to continue; --model PATH_OR_ID for a real chat model)",
              file=sys.stderr)
    template = None
    if args.chat_template:
        with open(args.chat_template, encoding="utf-8") as handle:
            template = handle.read()
    tokenizer = load_tokenizer(args.tokenizer or args.model)
    announce_load(args.model)
    model = scratch.models.load(args.model, backend=backends.get(args.backend), dtype=args.dtype)
    check_tokenizer_fits(tokenizer, model, args.tokenizer or args.model, args.model)
    return ChatSession(model, tokenizer, system=args.system, chat_template=template,
                       reuse_cache=not args.no_cache_reuse, **_generation_kwargs(args))


def _turn(session, text: str, out, quiet: bool) -> None:
    for piece in session.send(text):
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()
    if not quiet:
        print(session.history[-1].describe(), file=sys.stderr, flush=True)


def _interactive(session, args, out) -> int:
    from jinja2.exceptions import TemplateError

    tty = sys.stdin.isatty()
    if tty:
        print("(type a message; /reset starts over, /exit or Ctrl-D leaves)", file=sys.stderr)
    while True:
        if tty:
            out.write("> ")
            out.flush()
        line = sys.stdin.readline()
        if not line:  # end of input
            return 0
        text = line.rstrip("\r\n")
        command = text.strip()
        if command in ("/exit", "/quit"):
            return 0
        if command == "/reset":
            session.reset()
            print("(new conversation)", file=sys.stderr, flush=True)
            continue
        if not command:
            continue
        if command.startswith("/") and " " not in command:
            known = ", ".join(f"{name} ({what})" for name, what in COMMANDS.items())
            print(f"unknown command {command}; commands: {known}", file=sys.stderr, flush=True)
            continue
        try:
            _turn(session, text, out, args.quiet)
        except (ValueError, TemplateError) as error:  # this turn failed; the conversation is as it was
            print(f"scratch chat: error: {error}", file=sys.stderr, flush=True)


def _cmd_chat(args) -> int:
    out = sys.stdout
    try:
        session = _session(args)
        if args.prompt:
            for text in args.prompt:
                _turn(session, text, out, args.quiet)
            return 0
        return _interactive(session, args, out)
    except KeyboardInterrupt:  # Ctrl-C: leave quietly, as a shell expects (128 + SIGINT)
        out.flush()
        print(file=sys.stderr)
        return 130
    except ImportError as error:  # an optional dependency (jinja2, huggingface_hub) is missing
        print(f"scratch chat: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        if type(error).__module__.startswith("jinja2"):  # a template's raise_exception or syntax error
            print(f"scratch chat: error: chat template: {error}", file=sys.stderr)
            return 2
        raise

