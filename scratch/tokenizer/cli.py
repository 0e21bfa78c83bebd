"""`scratch tokenizer ...`: train a byte-level BPE vocabulary, encode, decode, and view how text splits into tokens.

    scratch tokenizer train --corpus FILE [FILE ...] --vocab-size N --out tok.json [--pattern gpt4] [--special T ...]
    scratch tokenizer encode --tokenizer PATH_OR_NAME [TEXT]      (reads stdin without TEXT; prints ids)
    scratch tokenizer decode --tokenizer PATH_OR_NAME ID [ID ...]
    scratch tokenizer view   --tokenizer PATH_OR_NAME TEXT        ([15339 'hello'] [1917 ' world'])

PATH_OR_NAME is anything `load_tokenizer` reads (our JSON, a tiktoken rank file, a Hugging Face tokenizer.json or
folder, a SentencePiece .model) or the name cl100k_base. This is only argument handling; the work is in bpe.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _load(name: str):
    from scratch.tokenizer import load_tokenizer

    return load_tokenizer(name)


def read_corpus(corpus: str) -> str:
    """The text of one corpus file. A binary file (NUL bytes) or one that is not UTF-8 is refused, naming it: BPE
    would learn its bytes as happily as text, and the vocabulary would be wasted on them."""
    path = Path(corpus)
    if not path.is_file():
        raise FileNotFoundError(f"corpus file not found: {corpus}")
    data = path.read_bytes()
    nul = data.find(b"\0")
    if nul >= 0:
        raise ValueError(f"corpus file {corpus} looks binary (it holds NUL bytes, the first at offset {nul:,}); "
                         "give UTF-8 text files")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"corpus file {corpus} is not UTF-8 text (byte 0x{data[error.start]:02x} at offset "
                         f"{error.start:,} is invalid); convert it first, e.g. iconv -t UTF-8") from None


def _cmd_train(args: argparse.Namespace) -> int:
    from scratch.tokenizer import BPETokenizer

    if not Path(args.out).parent.is_dir() or Path(args.out).is_dir():  # before training, not after it
        raise FileNotFoundError(f"--out {args.out}: " + ("it is a folder" if Path(args.out).is_dir() else
                                                          f"the folder {Path(args.out).parent} does not exist"))
    texts = [read_corpus(corpus) for corpus in args.corpus]
    specials = args.special or ()
    tokenizer = BPETokenizer.train(texts, args.vocab_size, pattern=args.pattern, special_tokens=specials,
                                   progress=not args.quiet)
    tokenizer.save(args.out)
    wanted = args.vocab_size - 256 - len(specials)
    if len(tokenizer.merges) < wanted:   # the corpus ran out of pairs: say so, whatever --quiet says
        print(f"scratch tokenizer train: note: asked for {args.vocab_size:,} tokens, got {tokenizer.n_vocab:,} "
              f"(256 bytes + {len(tokenizer.merges):,} merges + {len(specials)} special): after "
              f"{len(tokenizer.merges):,} merges every chunk of the corpus is a single token, so no pair is left to "
              f"merge (merges never cross the pre-tokenizer's chunks). Give more text or a smaller --vocab-size.",
              file=sys.stderr)
    if not args.quiet:
        print(f"wrote {args.out}: {tokenizer.n_vocab} tokens ({len(tokenizer.merges)} merges, "
              f"{len(tokenizer.special_tokens)} special)")
    return 0


def _encode(tokenizer, text: str, allow_special: bool) -> list[int]:
    if not hasattr(tokenizer, "special_tokens"):  # e.g. SentencePiece: no special-token text rules
        return tokenizer.encode(text)
    try:  # a BPETokenizer: tiktoken's special-token rules
        return tokenizer.encode(text, allowed_special="all" if allow_special else frozenset())
    except ValueError:
        found = [token for token in tokenizer.special_tokens if token in text]
        if not found:
            raise
        raise ValueError(f"the text contains the special token {found[0]!r}; pass --allow-special to encode it as "
                         "that token") from None


def _cmd_encode(args: argparse.Namespace) -> int:
    tokenizer = _load(args.tokenizer)
    text = args.text if args.text is not None else sys.stdin.read()
    print(" ".join(map(str, _encode(tokenizer, text, args.allow_special))))
    return 0


def _cmd_decode(args: argparse.Namespace) -> int:
    tokenizer = _load(args.tokenizer)
    ids = []
    for item in args.ids:
        for part in item.replace(",", " ").split():
            try:
                ids.append(int(part))
            except ValueError:
                raise ValueError(f"token ids must be integers, got {part!r}") from None
    sys.stdout.write(tokenizer.decode(ids))
    if not args.no_newline:
        sys.stdout.write("\n")
    return 0


def _cmd_view(args: argparse.Namespace) -> int:
    tokenizer = _load(args.tokenizer)
    if hasattr(tokenizer, "split_view"):
        pieces = tokenizer.split_view(args.text)
    elif hasattr(tokenizer, "id_to_piece"):  # SentencePiece: its pieces, "▁" for a space
        pieces = [(token_id, tokenizer.id_to_piece(token_id)) for token_id in tokenizer.encode(args.text)]
    else:
        pieces = [(token_id, tokenizer.decode([token_id])) for token_id in tokenizer.encode(args.text)]
    token_bytes = getattr(tokenizer, "token_bytes", None)

    def show(token_id: int, text: str) -> str:
        if token_bytes is not None and "\ufffd" in text:  # part of a UTF-8 character: show the raw bytes
            return f"[{token_id} {token_bytes(token_id)!r}]"
        return f"[{token_id} {text!r}]"

    print(" ".join(show(token_id, text) for token_id, text in pieces))
    print(f"{len(pieces)} tokens, {len(args.text)} characters")
    return 0


TOKENIZER_HELP = ("a tokenizer file or folder (our JSON, a tiktoken rank file, a Hugging Face tokenizer.json or "
                  "folder, a SentencePiece .model) or the name cl100k_base")


def register(subparsers) -> None:
    parser = subparsers.add_parser("tokenizer", help="train, encode, decode and view byte-level BPE tokenizers")
    commands = parser.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND", required=True)

    train = commands.add_parser("train", help="learn a BPE vocabulary from text files, save it as JSON")
    train.add_argument("--corpus", nargs="+", required=True, metavar="FILE",
                       help="UTF-8 text files (binary or non-UTF-8 files are refused)")
    train.add_argument("--vocab-size", type=int, required=True, metavar="N",
                       help="256 byte tokens + merges + special tokens")
    train.add_argument("--out", required=True, metavar="PATH", help="where to write the tokenizer JSON")
    train.add_argument("--pattern", default="gpt4", help="pre-tokenizer: gpt2, gpt4, o200k, llama3 or a regex")
    train.add_argument("--special", nargs="*", metavar="TOKEN", help="special tokens, e.g. '<|endoftext|>'")
    train.add_argument("--quiet", action="store_true", help="no progress lines")
    train.set_defaults(handler=_cmd_train)

    encode = commands.add_parser("encode", help="print the token ids of TEXT (or of stdin)")
    encode.add_argument("--tokenizer", required=True, metavar="PATH_OR_NAME", help=TOKENIZER_HELP)
    encode.add_argument("--allow-special", action="store_true",
                        help="encode special-token text as special tokens (otherwise it is an error)")
    encode.add_argument("text", nargs="?", help="text to encode; stdin if omitted")
    encode.set_defaults(handler=_cmd_encode)

    decode = commands.add_parser("decode", help="print the text of token ids")
    decode.add_argument("--tokenizer", required=True, metavar="PATH_OR_NAME", help=TOKENIZER_HELP)
    decode.add_argument("--no-newline", action="store_true", help="do not end the output with a newline")
    decode.add_argument("ids", nargs="+", help="token ids (space or comma separated)")
    decode.set_defaults(handler=_cmd_decode)

    view = commands.add_parser("view", help="show how TEXT splits into tokens")
    view.add_argument("--tokenizer", required=True, metavar="PATH_OR_NAME", help=TOKENIZER_HELP)
    view.add_argument("text", help="the text to split")
    view.set_defaults(handler=_cmd_view)
