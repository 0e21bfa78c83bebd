"""`scratch train`: a small language model from text files, end to end; `scratch finetune`: LoRA adapters for a model.

    scratch train --corpus FILE [FILE ...] --config SMALL_CONFIG --out DIR [--tokenizer PATH | --vocab-size N]
                  [--steps N --batch-size B --seq-len T --lr LR ...] [--mixed-precision] [--checkpointing] [--resume]

The steps: 1 train a byte-level BPE tokenizer on the corpus (or reuse one with --tokenizer), 2 tokenize the corpus
into DIR/data (scratch.train.data's token files, a validation split at the end of every file), 3 build the model of
SMALL_CONFIG (a name below, a model preset, or a config.json) with the tokenizer's vocabulary, 4 train it
(scratch.train.loop: checkpoints in DIR/checkpoints), 5 save DIR as a model folder that scratch.models.load and
load_tokenizer read (config.json, model.safetensors, tokenizer.json). Ctrl-C saves a checkpoint and exits with 130;
the same command with --resume continues exactly where it stopped. A Recipe bundles everything a run needs (corpus,
config, tokenizer, hyperparameters), so a named recipe -- a `--preset` -- is one Recipe value handed to run_recipe.

    scratch finetune --model DIR --data FILE [FILE ...] --out ADAPTER_DIR [--lora-r 8 --lora-alpha 16
                     --target-modules q_proj,v_proj --lora-dropout 0] [training flags as above] [--resume]

tokenizes the data with the model folder's tokenizer into ADAPTER_DIR/data, attaches LoRA adapters
(scratch.train.lora), trains only them (checkpoints hold the adapter; Ctrl-C and --resume as above) and writes the
final adapter in PEFT's format into ADAPTER_DIR: PeftModel.from_pretrained and scratch.models.load(DIR,
adapter=ADAPTER_DIR) read it. The model folder is only read.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from scratch.models.config import GPT2Config, LlamaConfig

# Small configs to train on a CPU in minutes; the vocabulary size is always the tokenizer's.
SMALL_CONFIGS = {
    "gpt2-tiny": GPT2Config(vocab_size=256, n_positions=128, n_embd=64, n_layer=2, n_head=4),          # ~0.1M + V C
    "gpt2-mini": GPT2Config(vocab_size=256, n_positions=256, n_embd=128, n_layer=4, n_head=4),         # ~0.8M + V C
    "llama-tiny": LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128),
    # The bundled model (--preset stdlib-small): 4 heads of D = 48 sharing 2 kv heads (GQA), F = 8/3 C rounded up
    # to 64, the head tied to the embedding (untied it would add a third). 2.4M parameters at V = 4096.
    "llama-stdlib": LlamaConfig(vocab_size=4096, hidden_size=192, intermediate_size=512, num_hidden_layers=4,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                rms_norm_eps=1e-5, tie_word_embeddings=True),
}


@dataclass(frozen=True)
class Recipe:
    """Everything one training run needs: corpus files, the model config (a name or a config.json path), the
    tokenizer (a path, or None to train one of `vocab_size` ids on the corpus) and the loop's settings."""

    corpus: tuple[str, ...]
    config: str
    tokenizer: str | None = None
    vocab_size: int = 512
    val_fraction: float = 0.1
    settings: dict = field(default_factory=dict)       # TrainSettings fields; missing ones take their defaults


# --- the steps ---------------------------------------------------------------------------------------------------

def resolve_config(name_or_path: str, vocab_size: int, eos_id: int | None):
    """SMALL_CONFIGS name, scratch.models.presets name, or a config.json (or a folder holding one), with the
    tokenizer's vocabulary size and end-of-text id (GPT-2's convention: bos = eos = <|endoftext|>)."""
    from scratch.models.config import config_from_hf, read_config_json
    from scratch.models.presets import PRESETS

    path = Path(name_or_path)
    if name_or_path in SMALL_CONFIGS:
        config = SMALL_CONFIGS[name_or_path]
    elif name_or_path in PRESETS:
        config = PRESETS[name_or_path]
    elif path.is_dir():
        config = config_from_hf(read_config_json(path))
    elif path.is_file():
        try:
            config = config_from_hf(json.loads(path.read_text(encoding="utf-8")))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from None
    else:
        raise ValueError(f"unknown config {name_or_path!r}: give a config.json path or one of "
                         f"{', '.join(SMALL_CONFIGS)} (or a model preset: {', '.join(PRESETS)})")
    if not isinstance(config, (GPT2Config, LlamaConfig)):
        raise ValueError(f"scratch train trains GPT-2 and Llama models, not {type(config).__name__}")
    return dataclasses.replace(config, vocab_size=vocab_size, bos_token_id=eos_id, eos_token_id=eos_id)


def prepare_tokenizer(recipe: Recipe, out: Path, log):
    """The run's tokenizer, saved as out/tokenizer.json (Hugging Face format): trained on the corpus, or loaded."""
    from scratch.tokenizer import BPETokenizer, load_tokenizer
    from scratch.tokenizer.hf import to_hf
    from scratch.train.data import END_OF_TEXT

    saved = out / "tokenizer.json"
    if recipe.tokenizer is not None:
        tokenizer = load_tokenizer(recipe.tokenizer)
        log(f"tokenizer: {recipe.tokenizer} ({tokenizer.n_vocab} ids)")
    else:
        texts = [_read_text(file) for file in recipe.corpus]
        tokenizer = BPETokenizer.train(texts, recipe.vocab_size, special_tokens=[END_OF_TEXT])
        log(f"tokenizer: trained on {len(texts)} files, {tokenizer.n_vocab} ids ({len(tokenizer.merges)} merges)")
    if not isinstance(tokenizer, BPETokenizer):
        raise ValueError(f"scratch train saves byte-level BPE tokenizers; {recipe.tokenizer} is a "
                         f"{type(tokenizer).__name__}")
    to_hf(tokenizer, saved)
    return tokenizer


def _read_text(file: str) -> str:
    path = Path(file)
    if not path.is_file():
        raise FileNotFoundError(f"corpus file not found: {file}")
    return path.read_text(encoding="utf-8", errors="replace")


def run_recipe(recipe: Recipe, out, backend=None, resume: bool = False, log=print):
    """Steps 1-5 of the module docstring. Returns the TrainResult (interrupted=True after Ctrl-C, with a
    checkpoint saved). With resume=True the tokenizer, token files and settings of the earlier run in `out` are
    reused and training continues from its latest checkpoint."""
    import backends
    import scratch.models
    from scratch.tokenizer import load_tokenizer
    from scratch.train.data import END_OF_TEXT, read_tokens, tokenize_files
    from scratch.train.loop import Trainer, TrainSettings, latest_checkpoint, read_trainer_state, save_model

    out = Path(out)
    checkpoint = latest_checkpoint(out) if resume and out.is_dir() else None
    if resume and checkpoint is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {out / 'checkpoints'} to resume from")
    out.mkdir(parents=True, exist_ok=True)
    if checkpoint is not None:                                      # everything as the interrupted run had it
        tokenizer = load_tokenizer(out / "tokenizer.json")
        train_file, val_file = read_tokens(out / "data" / "train"), read_tokens(out / "data" / "val")
        settings = TrainSettings.from_dict(read_trainer_state(checkpoint)["settings"])
        log(f"resuming from {checkpoint} (step {read_trainer_state(checkpoint)['step']}) with its settings")
    else:
        for file in recipe.corpus:
            _read_text(file)                                        # a missing file fails before any work
        tokenizer = prepare_tokenizer(recipe, out, log)
        train_file, val_file = tokenize_files(tokenizer, recipe.corpus, out / "data", recipe.val_fraction)
        log(f"data: {len(train_file):,} training and {len(val_file):,} validation tokens in {out / 'data'}")
        settings = TrainSettings.from_dict(recipe.settings)
    specials = getattr(tokenizer, "special_tokens", {}) or {}
    config = resolve_config(recipe.config, tokenizer.n_vocab, specials.get(END_OF_TEXT))
    model = scratch.models.from_config(config, backend=backends.get(backend), seed=settings.seed, dtype="float32")
    log(f"model: {model!r}, {model.parameter_count():,} parameters")
    trainer = Trainer(model, train_file, val_file, settings, out_dir=out, log=log)
    if checkpoint is not None:
        trainer.resume(checkpoint)
    result = trainer.run()
    if not result.interrupted:
        save_model(model, out)                                      # out is now a model folder
        log(f"saved {out}: config.json, model.safetensors, tokenizer.json")
    return result


def run_finetune(model_dir, data, out, lora: dict | None = None, settings: dict | None = None,
                 tokenizer: str | None = None, val_fraction: float = 0.1, backend=None, resume: bool = False,
                 log=print):
    """`scratch finetune`: tokenize `data` with the model folder's tokenizer (or `tokenizer`), add_lora(model,
    **lora) with the run's seed, train the adapters with LoraTrainer (checkpoints in out/checkpoints) and save the
    adapter into `out`. Returns the TrainResult. With resume=True the token files, settings and adapter
    configuration of the run in `out` are reused and training continues from its latest checkpoint."""
    import backends
    import scratch.models
    from scratch.tokenizer import load_tokenizer
    from scratch.train.data import read_tokens, tokenize_files
    from scratch.train.lora import LoraTrainer, add_lora, load_adapter, save_adapter
    from scratch.train.loop import TrainSettings, latest_checkpoint, read_trainer_state

    out = Path(out)
    checkpoint = latest_checkpoint(out) if resume and out.is_dir() else None
    if resume and checkpoint is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {out / 'checkpoints'} to resume from")
    model = scratch.models.load(model_dir, backend=backends.get(backend), dtype="float32")
    log(f"model: {model!r} from {model_dir}")
    if checkpoint is not None:                                      # everything as the interrupted run had it
        train_file, val_file = read_tokens(out / "data" / "train"), read_tokens(out / "data" / "val")
        settings = TrainSettings.from_dict(read_trainer_state(checkpoint)["settings"])
        load_adapter(model, checkpoint)                             # its rank, alpha, targets (values: resume)
        log(f"resuming from {checkpoint} (step {read_trainer_state(checkpoint)['step']}) with its settings")
    else:
        for file in data:
            _read_text(file)                                        # a missing file fails before any work
        settings = TrainSettings.from_dict(settings or {})
        add_lora(model, seed=settings.seed, **(lora or {}))         # bad targets or rank fail before tokenizing
        tok = load_tokenizer(tokenizer if tokenizer is not None else model_dir)
        out.mkdir(parents=True, exist_ok=True)
        train_file, val_file = tokenize_files(tok, data, out / "data", val_fraction)
        log(f"data: {len(train_file):,} training and {len(val_file):,} validation tokens in {out / 'data'}")
    trainer = LoraTrainer(model, train_file, val_file, settings, out_dir=out, log=log)
    trainable = sum(int(a.size) for a in trainer.optimizer.params.values())
    log(f"LoRA: {trainable:,} trainable parameters ({100 * trainable / model.parameter_count():.2f}% of "
        f"{model.parameter_count():,})")
    if checkpoint is not None:
        trainer.resume(checkpoint)
    result = trainer.run()
    if not result.interrupted:
        save_adapter(model, out, base_model_name_or_path=str(model_dir))
        log(f"saved {out}: adapter_config.json, adapter_model.safetensors (PEFT's format)")
    return result


# --- the command -------------------------------------------------------------------------------------------------

_SETTING_FLAGS = ("steps", "batch_size", "seq_len", "grad_accum", "lr", "min_lr", "warmup_steps", "weight_decay",
                  "max_grad_norm", "eval_every", "eval_batches", "log_every", "checkpoint_every", "seed",
                  "mixed_precision", "checkpointing")


def _settings_from_flags(args: argparse.Namespace) -> dict:
    """The loop flags given on the command line (_training_flags), as TrainSettings fields; --no-clip: no clipping."""
    settings = {name: getattr(args, name) for name in _SETTING_FLAGS if getattr(args, name) is not None}
    if args.no_clip:
        settings["max_grad_norm"] = None
    return settings


def _run_reporting(command: str, run) -> int:
    """Call run() (the command's whole work, returning the loop's result) -> the exit code: 0 done, 1 a non-finite
    loss, 130 Ctrl-C (before training: nothing saved; during it: where the checkpoint is, and how to resume)."""
    from scratch.train.loop import NonFiniteLossError

    try:
        result = run()
    except NonFiniteLossError as error:
        print(f"scratch {command}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:                         # before training started (model, tokenizer, data): nothing saved
        print(f"scratch {command}: interrupted before training started; nothing saved", file=sys.stderr)
        return 130
    if result.interrupted:
        print(f"scratch {command}: interrupted after step {result.step}; checkpoint {result.checkpoint}. "
              f"Run the same command with --resume to continue.", file=sys.stderr)
        return 130
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    settings = _settings_from_flags(args)
    if args.preset is not None:                       # a named Recipe; loop flags given here override its settings
        from scratch.train.presets import get_preset

        preset = get_preset(args.preset)
        recipe = Recipe(corpus=tuple(str(path) for path in preset.corpus()), config=preset.config,
                        vocab_size=preset.vocab_size, val_fraction=preset.val_fraction,
                        settings={**preset.settings, **settings})
    elif not args.corpus or not args.config:
        raise ValueError("give --corpus FILE... and --config SMALL_CONFIG, or --preset NAME")
    else:
        recipe = Recipe(corpus=tuple(args.corpus), config=args.config, tokenizer=args.tokenizer,
                        vocab_size=args.vocab_size, val_fraction=args.val_fraction, settings=settings)
    started = time.perf_counter()
    code = _run_reporting("train", lambda: run_recipe(recipe, args.out, backend=args.backend, resume=args.resume))
    if code != 0:
        return code
    if args.preset is not None:                       # the measured, shippable files (scratch/bundled's layout)
        from scratch.train.presets import export_bundle

        export_bundle(args.out, Path(args.out) / "bundled", seconds=time.perf_counter() - started)
        print(f"bundle: {Path(args.out) / 'bundled'} (copy its files into scratch/bundled/ to ship them)")
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    settings = _settings_from_flags(args)
    alpha = int(args.lora_alpha) if float(args.lora_alpha).is_integer() else args.lora_alpha   # 16, as PEFT writes it
    lora = {"r": args.lora_r, "lora_alpha": alpha, "lora_dropout": args.lora_dropout,
            "use_rslora": args.use_rslora}
    if args.target_modules:
        targets = [name.strip() for name in args.target_modules.split(",") if name.strip()]
        lora["target_modules"] = targets[0] if targets == ["all-linear"] else targets
    return _run_reporting("finetune", lambda: run_finetune(
        args.model, args.data, args.out, lora=lora, settings=settings, tokenizer=args.tokenizer,
        val_fraction=args.val_fraction, backend=args.backend, resume=args.resume))


def _training_flags(p) -> None:
    """The loop's hyperparameters, shared by `scratch train` and `scratch finetune`."""
    from scratch.train.loop import TrainSettings

    defaults = TrainSettings()
    loop = p.add_argument_group("training (defaults: scratch.train.TrainSettings)")
    loop.add_argument("--steps", type=int, help=f"optimizer steps ({defaults.steps})")
    loop.add_argument("--batch-size", type=int, help=f"sequences per micro-batch ({defaults.batch_size})")
    loop.add_argument("--seq-len", type=int, help=f"tokens per sequence ({defaults.seq_len})")
    loop.add_argument("--grad-accum", type=int, help=f"micro-batches per step ({defaults.grad_accum})")
    loop.add_argument("--lr", type=float, help=f"peak learning rate ({defaults.lr})")
    loop.add_argument("--min-lr", type=float, help=f"the cosine's floor ({defaults.min_lr})")
    loop.add_argument("--warmup-steps", type=int, help=f"linear warmup ({defaults.warmup_steps})")
    loop.add_argument("--weight-decay", type=float, help=f"AdamW's decoupled decay ({defaults.weight_decay})")
    loop.add_argument("--max-grad-norm", type=float, help=f"clip the global norm ({defaults.max_grad_norm})")
    loop.add_argument("--no-clip", action="store_true", help="no gradient clipping")
    loop.add_argument("--eval-every", type=int, help=f"validation every N steps, 0 never ({defaults.eval_every})")
    loop.add_argument("--eval-batches", type=int, help=f"batches per validation ({defaults.eval_batches})")
    loop.add_argument("--log-every", type=int, help=f"a progress line every N steps ({defaults.log_every})")
    loop.add_argument("--checkpoint-every", type=int, help="a checkpoint every N steps (0: at the end and on Ctrl-C)")
    loop.add_argument("--seed", type=int, help=f"model initialisation and batch order ({defaults.seed})")
    loop.add_argument("--mixed-precision", action="store_true", default=None,
                      help="float16 compute, float32 master weights, dynamic loss scaling")
    loop.add_argument("--checkpointing", action="store_true", default=None,
                      help="gradient checkpointing: recompute each block's activations in the backward")


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a small GPT-2 / Llama on text files (tokenizer, data, model)")
    p.add_argument("--corpus", nargs="+", metavar="FILE", help="UTF-8 text files, one document each")
    p.add_argument("--config", metavar="SMALL_CONFIG",
                   help=f"{', '.join(SMALL_CONFIGS)}, a model preset, or a config.json path")
    p.add_argument("--preset", metavar="NAME", help="a named recipe instead of --corpus/--config/--vocab-size/"
                   "--val-fraction (stdlib-small: the bundled model; scratch.train.presets)")
    p.add_argument("--out", required=True, metavar="DIR", help="the run's folder; a model folder when done")
    p.add_argument("--tokenizer", metavar="PATH", help="reuse this tokenizer instead of training one")
    p.add_argument("--vocab-size", type=int, default=512, metavar="N", help="vocabulary of the trained tokenizer")
    p.add_argument("--val-fraction", type=float, default=0.1, help="the end of each file kept for validation")
    p.add_argument("--backend", default=None, help="numpy, strict or cupy (default: $SCRATCH_BACKEND or numpy)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    _training_flags(p)
    p.set_defaults(handler=_cmd_train)

    p = subparsers.add_parser("finetune", help="train LoRA adapters for a model folder on text files (PEFT format)")
    p.add_argument("--model", required=True, metavar="DIR", help="the base model folder (config.json, safetensors, "
                   "tokenizer); only read")
    p.add_argument("--data", nargs="+", required=True, metavar="FILE", help="UTF-8 text files, one document each")
    p.add_argument("--out", required=True, metavar="ADAPTER_DIR",
                   help="the run's folder (data, checkpoints); the PEFT adapter when done")
    p.add_argument("--lora-r", type=int, default=8, metavar="R", help="adapter rank (8)")
    p.add_argument("--lora-alpha", type=float, default=16, help="scaling numerator: scaling = alpha / r (16)")
    p.add_argument("--lora-dropout", type=float, default=0.0, help="dropout on the adapters' inputs (0)")
    p.add_argument("--use-rslora", action="store_true", help="scaling = alpha / sqrt(r)")
    p.add_argument("--target-modules", metavar="NAMES",
                   help="comma-separated projections, e.g. q_proj,v_proj or c_attn, or all-linear "
                        "(default: PEFT's for the architecture)")
    p.add_argument("--tokenizer", metavar="PATH", help="tokenizer to use instead of the model folder's")
    p.add_argument("--val-fraction", type=float, default=0.1, help="the end of each file kept for validation")
    p.add_argument("--backend", default=None, help="numpy, strict or cupy (default: $SCRATCH_BACKEND or numpy)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    _training_flags(p)
    p.set_defaults(handler=_cmd_finetune)
