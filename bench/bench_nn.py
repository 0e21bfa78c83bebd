"""Benchmark: what each fast path kept in scratch/nn buys, against its plain version, alone and end to end.

  (a) erf/erfc's in-place Chebyshev evaluation (error_function._erfc_nonnegative_in_place) vs the plain Horner loop:
      exact GELU on a BERT-base MLP activation (1024, 3072), and a whole BERT-base forward on (8, 128) tokens.
  (b) linear's one 2-D BLAS product, (B*T, C) @ (C, N), vs NumPy's batched (B, T, C) @ (C, N): one call on a B = 16
      decoding step's (16, 1, 768) @ (768, 3072), and a whole GPT-2 124M decoding step for 16 sequences.
A fast path stays only while it buys a clear gain end to end (the project's rule: ~10%, or more than the 5% a change
may cost). Times are CPU seconds of this process (time.process_time), the fastest of several repeats, with NumPy's
BLAS on one thread: other processes on the cores then disturb the figures far less than wall-clock times.
Run:  python bench/bench_nn.py [--quick]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from anywhere: the repo root is importable


def _fastest(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def _swapped(old, new):
    """Point every loaded module's global `old` (e.g. a model's `from scratch.nn import linear`) at `new`."""
    swapped = []
    for module in list(sys.modules.values()):
        for name, value in list(getattr(module, "__dict__", {}).items()):
            if value is old:
                setattr(module, name, new)
                swapped.append((module, name))
    return swapped


def _restore(swapped, old) -> None:
    for module, name in swapped:
        setattr(module, name, old)


def _row(label: str, fast: float, plain: float) -> None:
    print(f"    {label:<44} fast {fast * 1e3:8.1f} ms   plain {plain * 1e3:8.1f} ms   plain/fast {plain / fast:5.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    args = parser.parse_args(argv)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")           # before NumPy is imported

    import numpy as np

    import backends
    from scratch import nn
    from scratch.models import bert, gpt2
    from scratch.models.config import BertConfig, GPT2Config
    from scratch.nn import error_function, functional

    repeats = 2 if args.quick else 5
    rng = np.random.default_rng(0)
    print(f"CPU time, fastest of {repeats}; NumPy {np.__version__}, BLAS threads {os.environ['OPENBLAS_NUM_THREADS']}; "
          f"load average {os.getloadavg()[0]:.1f}")

    # (a) erfc in place vs plain
    print("(a) erf/erfc: Chebyshev fit evaluated in place vs the plain Horner loop")
    activation = rng.standard_normal((1024, 3072)).astype(np.float32)
    model = bert.from_config(BertConfig(), seed=0, pooler=False, mlm_head=False)
    ids = rng.integers(0, 30000, (8, 128))
    fast_gelu = _fastest(lambda: nn.gelu(activation), repeats * 3)
    fast_bert = _fastest(lambda: model(ids), repeats)
    fast_fit = error_function._erfc_nonnegative_in_place
    error_function._erfc_nonnegative_in_place = error_function._erfc_nonnegative   # erf/erfc look it up per call
    try:
        plain_gelu = _fastest(lambda: nn.gelu(activation), repeats * 3)
        plain_bert = _fastest(lambda: model(ids), repeats)
    finally:
        error_function._erfc_nonnegative_in_place = fast_fit
    _row("gelu (1024, 3072)", fast_gelu, plain_gelu)
    _row("BERT-base forward (8, 128)", fast_bert, plain_bert)

    # (b) linear: one 2-D product vs the batched matmul
    print("(b) linear: one (B*T, C) @ (C, N) BLAS product vs the batched (B, T, C) @ (C, N)")

    def batched_linear(x, w, b=None):
        xp = backends.namespace_of(x, w, b)
        y = xp.matmul(x, w)                                       # (B, T, C) @ (C, N): B products
        return y if b is None else y + b

    batch, prompt = 16, 16
    x_step = rng.standard_normal((batch, 1, 768)).astype(np.float32)
    w_fc, b_fc = rng.standard_normal((768, 3072)).astype(np.float32), rng.standard_normal(3072).astype(np.float32)
    gpt = gpt2.from_config(GPT2Config(), seed=0)
    tokens = rng.integers(0, 50257, (batch, prompt + 1))

    def decode_step():
        cache = gpt.new_cache(batch, prompt + 1)
        gpt(tokens[:, :prompt], cache=cache)
        return lambda: (cache.crop(prompt), gpt(tokens[:, prompt:], cache=cache))

    fast_call = _fastest(lambda: functional.linear(x_step, w_fc, b_fc), repeats * 20)
    fast_step = _fastest(decode_step(), repeats * 4)
    old = functional.linear
    swapped = _swapped(old, batched_linear)
    try:
        plain_call = _fastest(lambda: batched_linear(x_step, w_fc, b_fc), repeats * 20)
        plain_step = _fastest(decode_step(), repeats * 4)
    finally:
        _restore(swapped, old)
    _row(f"one call, ({batch}, 1, 768) @ (768, 3072)", fast_call, plain_call)
    _row(f"GPT-2 124M decoding step, B = {batch}", fast_step, plain_step)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
