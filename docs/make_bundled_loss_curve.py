"""Make docs/figures/bundled_loss_curve.png from the bundled model's own record (scratch/bundled/stdlib_small/
metrics.json, written by `scratch train --preset stdlib-small`): the training loss of every step, the validation
loss every few steps, the final held-out loss, and the compressors' figures on the same bytes turned into nats per
token (bits per byte x bytes per token x ln 2), so the lines compare on one axis.

    python docs/make_bundled_loss_curve.py          # needs matplotlib: pip install ".[docs]"
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))                    # run from a checkout without installing


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import scratch.bundled

    facts = scratch.bundled.metrics()
    train = facts["train_loss_history"]
    val = facts["val_loss_history"]
    bytes_per_token = facts["heldout_bytes"] / facts["heldout_tokens"]
    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=100)
    axes.plot([s for s, _ in train], [v for _, v in train], lw=0.8, color="tab:blue", alpha=0.7,
              label="training loss (each step's batch)")
    axes.plot([s for s, _ in val], [v for _, v in val], "o-", ms=3.5, color="tab:orange",
              label="validation loss (4 held-out batches)")
    last = train[-1][0]
    axes.scatter([last], [facts["heldout_loss"]], marker="*", s=120, color="black", zorder=5,
                 label=f"whole held-out slice: {facts['heldout_loss']:.3f} nats = "
                       f"{facts['heldout_bits_per_byte']:.3f} bits/byte")
    lines = [(f"{name}: {bpb:.3f} bits/byte", bpb, "--", color)
             for (name, bpb), color in zip(facts["compressors_bits_per_byte"].items(), ("tab:red", "tab:green"))]
    given = facts["compressors_given_training_text_bits_per_byte"]["lzma -9e"]
    lines.append((f"lzma -9e after the training text: {given:.3f} bits/byte", given, ":", "tab:green"))
    for label, bpb, style, color in lines:
        axes.axhline(bpb * bytes_per_token * math.log(2), ls=style, lw=1, color=color, label=label)
    axes.set_xlabel("optimizer step (8 x 256 tokens each)")
    axes.set_ylabel("nats per token (compressors: bits/byte x bytes/token x ln 2)")
    axes.set_title(f"scratch train --preset stdlib-small: {facts['parameters'] / 1e6:.1f}M-parameter Llama, "
                   f"Python {facts['python']} stdlib", fontsize=10)
    lowest = min(bpb for _, bpb, _, _ in lines) * bytes_per_token * math.log(2)
    axes.set_ylim(bottom=min(lowest, facts["heldout_loss"]) - 0.5, top=8.6)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    out = ROOT / "docs" / "figures" / "bundled_loss_curve.png"
    figure.savefig(out, dpi=100, metadata={"Software": None})   # no version string: same figure, same bytes
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
