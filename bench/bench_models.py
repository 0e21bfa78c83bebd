"""Benchmark: GPT-2 124M, ours (NumPy) against PyTorch + transformers, same random weights, float32, 2 threads.

One run, side by side. The transformers model is `GPT2LMHeadModel(GPT2Config())` (random init, seed 0), saved with
save_pretrained to a temporary folder; ours is loaded from that folder, so both hold the same weights.
  (a) prefill: logits for 512 tokens in one call, ours vs PyTorch (bar: ours within 1.3x).
  (b) decode: one token per step with the KV cache after a 64-token prompt, ours vs transformers' forward loop with
      its own cache (bar: ours >= 1.5x faster), and the fraction of the memory roofline reached: each step streams
      every weight once (~495 MB of float32), so time >= bytes / bandwidth, bandwidth measured here with a large
      matrix-vector product (the same access pattern).
  (c) ours: time per new token with the cache vs without it (a full forward over the context) as the context
      grows from 64 to 1,024 tokens.
  (d) ours: resident memory (RSS) through a 1,024-token decode in a fresh process: flat after the cache is
      allocated (no per-step growth), and its peak.
  (e) ours: what the (C, V) layout of the vocabulary matrix buys -- decode steps at 1 and 8 rows (batched decoding,
      beam search) with the layout the models use against the plain (V, C) one (scratch.models.decoder).
Timings are noisy when other processes share the cores; each figure is the median of several repeats.
Run:  python bench/bench_models.py [--quick] [--backend numpy|cupy]
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from anywhere: the repo root is importable

THREADS = 2


def _median_time(fn, repeats: int, sync=lambda: None) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    """The high-water mark of resident memory (VmHWM). Not ru_maxrss: Linux carries that over from the parent
    across fork and exec, so a child started by a 2 GB parent would report 2 GB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _rss_child(folder: str, steps: int, backend: str) -> None:
    """(d), in its own process so the peak RSS is ours alone: print JSON with RSS samples along the decode."""
    import numpy as np

    import scratch.models

    model = scratch.models.load(folder, backend=backend)
    after_load = _rss_mb()
    load_peak = _peak_mb()
    try:  # reset the high-water mark, so the peak below is the decode's (Linux >= 4.0; best effort)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    cache = model.new_cache(1, steps)
    token = np.array([[464]])
    samples = {}
    for step in range(steps):
        logits = model(token, cache=cache)
        if step in (0, 63, steps // 4 - 1, steps // 2 - 1, steps - 1):
            samples[step + 1] = round(_rss_mb(), 1)
    model.backend.to_numpy(logits)
    print(json.dumps({"after_load": round(after_load, 1), "load_peak": round(load_peak, 1), "samples": samples,
                      "peak": round(_peak_mb(), 1), "cache_mb": round(cache.nbytes / 2**20, 1),
                      "cache_mb_per_token": cache.bytes_per_token() / 2**20}))


def _bandwidth_gbs(np, repeats: int) -> float:
    """Achievable read bandwidth for a matrix-vector product over 512 MB of float32 (the decode access pattern)."""
    w = np.ones((8192, 16384), dtype=np.float32)
    x = np.ones((1, 8192), dtype=np.float32)
    seconds = _median_time(lambda: x @ w, repeats)
    return w.nbytes / seconds / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and shorter contexts (a smoke run)")
    parser.add_argument("--backend", default="numpy", help="our backend (numpy, or cupy on a GPU)")
    parser.add_argument("--blas-threads", type=int, default=None, metavar="N",
                        help="threads of NumPy's BLAS (default: its own default, one per core). Set before NumPy "
                             "is imported; with other processes on the cores, 1 can beat 2 (OpenBLAS threads wait "
                             "for each other at every call)")
    parser.add_argument("--rss-child", nargs=2, metavar=("FOLDER", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.blas_threads is not None:   # must happen before the first `import numpy` (child processes inherit it)
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(args.blas_threads)
    if args.rss_child:
        _rss_child(args.rss_child[0], int(args.rss_child[1]), args.backend)
        return 0

    import numpy as np
    import torch
    import transformers

    import scratch.models
    from scratch.models.decoder import VocabMatrix

    torch.set_num_threads(THREADS)
    repeats = 3 if args.quick else 7
    prefill_len, prompt_len, decode_steps = (128, 16, 8) if args.quick else (512, 64, 32)
    contexts = (64, 128) if args.quick else (64, 128, 256, 512, 1024)
    rss_steps = 128 if args.quick else 1024

    blas = args.blas_threads if args.blas_threads is not None else f"default ({os.cpu_count()} cores)"
    print(f"GPT-2 124M, float32; PyTorch {THREADS} threads, NumPy BLAS threads {blas} (torch {torch.__version__}, "
          f"transformers {transformers.__version__}, numpy {np.__version__}); ours on {args.backend}; "
          f"load average {os.getloadavg()[0]:.1f} (other processes share the cores: figures are noisy)")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)
        ours = scratch.models.load(folder, backend=args.backend)
        be = ours.backend
        weight_bytes = 4 * (ours.parameter_count() - ours.wpe.shape[0] * ours.wpe.shape[1])  # wpe: one row a step
        ids = np.random.default_rng(0).integers(0, 50257, (1, max(prefill_len, contexts[-1]) + decode_steps))
        tids = torch.tensor(ids)

        # Same weights, same answer (a 64-token check before timing anything).
        with torch.no_grad():
            ref = hf(tids[:, :64]).logits.numpy()
        err = float(np.max(np.abs(be.to_numpy(ours(ids[:, :64])) - ref)))
        print(f"max |logits ours - transformers| on 64 tokens: {err:.2e}")

        # (a) prefill, ours and PyTorch alternating (a burst of load from other processes then hits both alike)
        def timed(fn):
            start = time.perf_counter()
            fn()
            be.synchronize()
            return time.perf_counter() - start

        ours_pre, torch_pre = [], []
        with torch.no_grad():
            hf(tids[:, :prefill_len])
            ours(ids[:, :prefill_len])
            for _ in range(repeats):
                ours_pre.append(timed(lambda: ours(ids[:, :prefill_len])))
                torch_pre.append(timed(lambda: hf(tids[:, :prefill_len])))
        t_ours, t_torch = float(np.median(ours_pre)), float(np.median(torch_pre))
        print(f"\n(a) prefill {prefill_len} tokens (median of {repeats}, fastest in brackets): "
              f"ours {t_ours * 1e3:.0f} ms ({min(ours_pre) * 1e3:.0f}), PyTorch {t_torch * 1e3:.0f} ms ({min(torch_pre) * 1e3:.0f}), "
              f"ours/PyTorch = {t_ours / t_torch:.2f}x, fastest/fastest = {min(ours_pre) / min(torch_pre):.2f}x "
              f"(bar: <= 1.3x)")

        # (b) decode with the cache. Per-step times of both, in alternating rounds (so a burst of load from other
        # processes hits both alike); the median step is reported, the fastest alongside it.
        def decode_ours(steps):
            cache = ours.new_cache(1, prompt_len + steps)
            ours(ids[:, :prompt_len], cache=cache)
            times = []
            for t in range(prompt_len, prompt_len + steps):
                start = time.perf_counter()
                be.to_numpy(ours(ids[:, t:t + 1], cache=cache)[:, :, :1])   # one value back: forces the step
                times.append(time.perf_counter() - start)
            return times

        # transformers 5 calls the cache argument (and output) `cache`; 4 called it `past_key_values`.
        key = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"

        def decode_hf(steps):
            times = []
            with torch.no_grad():
                out = hf(tids[:, :prompt_len], use_cache=True)
                for t in range(prompt_len, prompt_len + steps):
                    start = time.perf_counter()
                    out = hf(tids[:, t:t + 1], use_cache=True, **{key: getattr(out, key)})
                    times.append(time.perf_counter() - start)
            return times

        ours_steps, hf_steps = [], []
        for _ in range(max(2, repeats // 2)):
            ours_steps += decode_ours(decode_steps)
            hf_steps += decode_hf(decode_steps)
        per_ours, per_hf = float(np.median(ours_steps)), float(np.median(hf_steps))
        bandwidth = _bandwidth_gbs(np, repeats)
        roofline = weight_bytes / (bandwidth * 1e9)
        print(f"(b) decode, per token (B=1, after {prompt_len} tokens; median of {len(ours_steps)} steps, fastest in "
              f"brackets): ours {per_ours * 1e3:.1f} ms ({min(ours_steps) * 1e3:.1f}), transformers "
              f"{per_hf * 1e3:.1f} ms ({min(hf_steps) * 1e3:.1f}), speedup {per_hf / per_ours:.2f}x (bar: >= 1.5x)")
        print(f"    roofline: {weight_bytes / 1e6:.0f} MB of weights per token at {bandwidth:.1f} GB/s measured "
              f"(matrix-vector) = {roofline * 1e3:.1f} ms/token; ours reaches {roofline / per_ours:.0%} of it")

        # (c) with vs without the cache as the context grows
        print("\n(c) ours, time per new token as the context grows (fastest of 8 steps / of 2-3 full forwards):")
        print(f"    {'context':>8} {'with cache (ms)':>16} {'without (ms)':>13} {'ratio':>7}")
        for n in contexts:
            steps = 8
            cache = ours.new_cache(1, n)
            ours(ids[:, :n - steps], cache=cache)
            times = []
            for t in range(n - steps, n):       # the steps that bring the context to n
                start = time.perf_counter()
                be.to_numpy(ours(ids[:, t:t + 1], cache=cache)[:, :, :1])
                times.append(time.perf_counter() - start)
            # the fastest of the repeats: the least disturbed by other processes (as timeit reports)
            cached = min(times)
            uncached = min(timed(lambda: ours(ids[:, :n])) for _ in range(2 if n >= 512 else 3))
            print(f"    {n:>8} {cached * 1e3:>16.1f} {uncached * 1e3:>13.0f} {uncached / cached:>6.0f}x")

        # (d) memory through a long decode, in a fresh process
        child = subprocess.run([sys.executable, __file__, "--backend", args.backend, "--rss-child", folder,
                                str(rss_steps)], capture_output=True, text=True, check=True)
        rss = json.loads(child.stdout.strip().splitlines()[-1])
        samples = rss["samples"]
        first, last = min(samples, key=int), max(samples, key=int)
        growth = samples[last] - samples[first]
        # The cache is allocated once (zeros), but the OS maps its pages on first write: RSS rises by exactly the
        # bytes written into it. Anything beyond that would be per-step allocation.
        touched = rss["cache_mb_per_token"] * (int(last) - int(first))
        print(f"\n(d) ours, RSS through a {rss_steps}-token decode (fresh process): after load "
              f"{rss['after_load']:.0f} MB (peak while loading {rss['load_peak']:.0f} MB: file pages + owned copy); "
              + ", ".join(f"step {k}: {v:.0f} MB" for k, v in samples.items()))
        print(f"    growth step {first} -> {last}: {growth:+.1f} MB, of which cache pages first written: "
              f"{touched:.1f} MB -> per-step growth beyond the cache: {growth - touched:+.1f} MB; "
              f"peak during decode {rss['peak']:.0f} MB (cache capacity {rss['cache_mb']:.0f} MB)")

        # (e) the vocabulary matrix's layout: the same model with the plain (V, C) matrix, alternating rounds
        plain = dataclasses.replace(ours, token_embedding=VocabMatrix(be.asarray(np.ascontiguousarray(
            be.to_numpy(ours.wte)))))

        def decode_rows(model, rows, steps):
            batch = np.repeat(ids[:, :prompt_len + steps], rows, axis=0)        # (rows, prompt + steps)
            cache = model.new_cache(rows, prompt_len + steps)
            model(batch[:, :prompt_len], cache=cache, logits_to_keep=1)
            times = []
            for t in range(prompt_len, prompt_len + steps):
                start = time.perf_counter()
                be.to_numpy(model(batch[:, t:t + 1], cache=cache)[:, :, :1])
                times.append(time.perf_counter() - start)
            return times

        print("\n(e) ours, decode step by vocabulary layout (median of the steps of alternating rounds):")
        for rows in (1, 8):
            fast_steps, plain_steps = [], []
            for _ in range(max(2, repeats // 2)):
                fast_steps += decode_rows(ours, rows, decode_steps)
                plain_steps += decode_rows(plain, rows, decode_steps)
            fast, slow = float(np.median(fast_steps)), float(np.median(plain_steps))
            print(f"    {rows} row{'s' if rows > 1 else ' '}: (C, V) {fast * 1e3:.1f} ms, plain (V, C) "
                  f"{slow * 1e3:.1f} ms -> the (C, V) layout is {slow / fast:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
