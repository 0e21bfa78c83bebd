"""Make docs/figures/loss_curve.png, and loss_curve.json with its numbers, from a real run of scratch.train's loop.

A small GPT-2 (4 layers, width 128) learns this repository's own documentation: a byte-level BPE tokenizer of 512
ids is trained on docs/*.md and README.md, the text is tokenized into token files (the last 10% of each file for
validation), and the model is trained twice from the same seed -- in float32, and in mixed precision (float16
compute, float32 master weights, dynamic loss scaling). The figure shows both training curves, the validation
losses and the learning-rate schedule.

    python docs/make_loss_curve.py [--steps 300] [--backend cupy]    # train, write the JSON, plot if it can
    python docs/make_loss_curve.py --plot-only                       # plot the committed JSON again

Plotting needs matplotlib (pip install ".[docs]"); training does not, so the runs can happen on a GPU machine
without it. NumPy has no fast float16 matrix product, so the mixed-precision run wants CuPy (on NumPy it is ~80x
slower than float32: correct, but minutes per hundred steps).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))                    # run from a checkout without installing
FIGURES = ROOT / "docs" / "figures"
RUNS = {"float32": False, "mixed precision": True}


def train_runs(steps: int, backend: str | None) -> dict:
    import backends
    import scratch.models
    from scratch.tokenizer import BPETokenizer
    from scratch.train.cli import resolve_config
    from scratch.train.data import END_OF_TEXT, tokenize_files
    from scratch.train.loop import Trainer, TrainSettings
    from scratch.train.optim import warmup_cosine_lr

    files = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
    tokenizer = BPETokenizer.train([f.read_text(encoding="utf-8") for f in files], 512, special_tokens=[END_OF_TEXT])
    settings = TrainSettings(steps=steps, batch_size=8, seq_len=64, lr=3e-3, min_lr=3e-4, warmup_steps=steps // 15,
                             eval_every=steps // 10, eval_batches=8, log_every=steps // 10, seed=0)
    record = {"corpus": [f.relative_to(ROOT).as_posix() for f in files], "backend": backends.get(backend).name,
              "settings": settings.__dict__,
              "lr": [warmup_cosine_lr(k, settings.lr, steps, settings.warmup_steps, settings.min_lr)
                     for k in range(steps)], "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data = tokenize_files(tokenizer, files, Path(tmp))
        config = resolve_config("gpt2-mini", tokenizer.n_vocab, tokenizer.special_tokens[END_OF_TEXT])
        record.update(config=config.to_hf(), training_tokens=len(data[0]), validation_tokens=len(data[1]))
        print(f"{len(data[0]):,} training tokens, {len(data[1]):,} validation tokens, {config}")
        for name, mixed in RUNS.items():
            model = scratch.models.from_config(config, backend=backends.get(backend), seed=0, dtype="float32")
            run_settings = TrainSettings(**{**settings.__dict__, "mixed_precision": mixed})
            start = time.perf_counter()
            result = Trainer(model, *data, run_settings).run()
            seconds = time.perf_counter() - start
            record["runs"][name] = {"losses": [result.losses[k] for k in range(1, steps + 1)],
                                    "val_losses": {str(k): v for k, v in result.val_losses.items()},
                                    "skipped_steps": result.skipped, "seconds": round(seconds, 1),
                                    "tokens_per_second": round(steps * settings.tokens_per_step / seconds)}
    return record


def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (losses, rates) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [2.2, 1]})
    colors = {"float32": "tab:blue", "mixed precision": "tab:orange"}
    for name, run in record["runs"].items():
        steps = range(1, len(run["losses"]) + 1)
        losses.plot(steps, run["losses"], color=colors[name], alpha=0.45, linewidth=1, label=f"train, {name}")
        val_steps = sorted(int(k) for k in run["val_losses"])
        losses.plot(val_steps, [run["val_losses"][str(k)] for k in val_steps], "o-", color=colors[name],
                    markersize=4, linewidth=1.5, label=f"validation, {name}")
    config = record["config"]
    losses.set_xlabel("step")
    losses.set_ylabel("cross-entropy (nats per token)")
    losses.set_title(f"GPT-2, {config['n_layer']} layers x {config['n_embd']}, V={config['vocab_size']}, "
                     f"on this repository's docs ({record['backend']})", fontsize=10)
    losses.grid(alpha=0.3)
    losses.legend(fontsize=8)
    rates.plot(range(1, len(record["lr"]) + 1), record["lr"], color="tab:green")
    rates.set_xlabel("step")
    rates.set_ylabel("learning rate")
    rates.set_title("warmup + cosine", fontsize=10)
    rates.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--backend", default=None, help="numpy, cupy (default: $SCRATCH_BACKEND or numpy)")
    parser.add_argument("--json", type=Path, default=FIGURES / "loss_curve.json", help="where the numbers go")
    parser.add_argument("--plot-only", action="store_true", help="plot --json again, no training")
    args = parser.parse_args()
    if args.plot_only:
        record = json.loads(args.json.read_text(encoding="utf-8"))
    else:
        record = train_runs(args.steps, args.backend)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    try:
        plot(record, FIGURES / "loss_curve.png")
    except ModuleNotFoundError:
        print("matplotlib is not installed: run again with --plot-only where it is (pip install '.[docs]')")
        return
    print(f"wrote {FIGURES / 'loss_curve.png'}")


if __name__ == "__main__":
    main()
