"""What the command-line tests of `scratch train` and `scratch finetune` share: a small seeded corpus, and a Ctrl-C
delivered inside a chosen training step."""
from __future__ import annotations

import random

from scratch.train.loop import Trainer

WORDS = "the cat sat on a mat and the dog ran in the park while small birds sang over green hills".split()


def write_corpus(folder, lengths) -> list[str]:
    """One text file per entry of `lengths`, that many words drawn from WORDS (seeded), in `folder`; -> the paths."""
    rng = random.Random(0)
    files = []
    for index, length in enumerate(lengths):
        files.append(folder / f"text{index}.txt")
        files[-1].write_text(" ".join(rng.choice(WORDS) for _ in range(length)), encoding="utf-8")
    return [str(f) for f in files]


def ctrl_c_in_step(monkeypatch, step: int) -> None:
    """Make Trainer.train_step raise KeyboardInterrupt on its `step`-th call, as Ctrl-C there would (the steps before
    it run for real); monkeypatch.undo() takes it back."""
    real_step, calls = Trainer.train_step, []

    def train_step(self):
        calls.append(1)
        if len(calls) == step:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", train_step)
