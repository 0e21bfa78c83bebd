"""Benchmark: loading a GGUF checkpoint to a float32 model, ours against transformers' GGUF loading, same file.

The file is SmolLM2-135M-Instruct in Q4_1 (get it with ../shared/tools/get-smollm2; its token embedding is Q8_0).
  (a) load: `scratch.models.load(path, dtype="float32")` vs `AutoModelForCausalLM.from_pretrained(folder,
      gguf_file=name, dtype=float32)`, each in a fresh process (imports done before the clock starts), median of
      --repeats runs; peak resident memory of the load above the process's memory after its imports.
  (b) dequantization alone: every tensor to float32, ours (scratch.formats) vs the gguf package's numpy code
      (which transformers calls).
  (c) error of every quantization type on a real tensor: token_embd.weight (stored Q8_0, the file's most precise
      matrix), columns 16..527 so that no block lines up with a stored Q8_0 block, quantized and dequantized
      again (the figures in docs/quantization.md).
The page cache is warmed first (the file is read once), so both sides read from memory. 2 threads.
Run:  python bench/bench_gguf.py [--gguf PATH] [--repeats 3]     (default PATH: $SCRATCH_REAL_GGUF)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from anywhere: the repo root is importable
sys.path.insert(0, str(ROOT / "bench"))

THREADS = 2


def _worker(side: str, path: Path) -> None:
    """One load in this (fresh) process; prints {"seconds", "cpu_seconds", "baseline_mb", "peak_mb"} as JSON."""
    from bench_models import _peak_mb, _rss_mb

    if side == "ours":
        import scratch.models

        def load():
            return scratch.models.load(path, dtype="float32")
    else:
        import torch
        import transformers

        torch.set_num_threads(THREADS)
        transformers.logging.set_verbosity_error()

        def load():
            return transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                                     dtype=torch.float32)
    baseline = _rss_mb()
    start, start_cpu = time.perf_counter(), time.process_time()
    model = load()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    del model
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "baseline_mb": baseline,
                      "peak_mb": _peak_mb()}))


def _run(side: str, path: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "OPENBLAS_NUM_THREADS": str(THREADS),
           "MKL_NUM_THREADS": str(THREADS), "TQDM_DISABLE": "1"}
    out = subprocess.run([sys.executable, __file__, "--worker", side, "--gguf", str(path)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _dequantize_all(path: Path) -> tuple[float, float]:
    """Seconds to turn every tensor into float32: ours, then the gguf package's."""
    import gguf
    import numpy as np

    from scratch.formats import read_gguf

    start = time.perf_counter()
    for tensor in read_gguf(path).tensors.values():
        tensor.to_numpy()
    ours = time.perf_counter() - start
    start = time.perf_counter()
    for tensor in gguf.GGUFReader(path).tensors:
        np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
    return ours, time.perf_counter() - start


def _error_table(path: Path) -> None:
    import numpy as np

    from scratch.formats import read_gguf
    from scratch.formats.quants import TYPES, dequantize, quantize

    reference = read_gguf(path).tensors["token_embd.weight"].to_numpy()[:, 16:528]  # (V, 512)
    reference = np.ascontiguousarray(reference)
    print(f"quantization error on {path.name} token_embd.weight[:, 16:528] {reference.shape} "
          f"(stored Q8_0, taken as the float32 reference):")
    print("  type   bits/weight  relative RMS error  max |error| / max |w|")
    scale = np.sqrt(np.mean(reference.astype(np.float64) ** 2))
    for name in ("F16", "BF16", "Q8_0", "Q6_K", "Q5_1", "Q5_K", "Q5_0", "Q4_1", "Q4_K", "Q4_0", "Q3_K", "Q2_K"):
        back = dequantize(quantize(reference, name).reshape(-1), name, reference.shape).astype(np.float64)
        error = back - reference
        print(f"  {name:5s} {TYPES[name].bits_per_weight:8.4f}     {np.sqrt(np.mean(error ** 2)) / scale:10.5f}"
              f"          {np.abs(error).max() / np.abs(reference).max():10.5f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gguf", default=os.environ.get("SCRATCH_REAL_GGUF"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--errors-only", action="store_true", help="only (c), the quantization error table")
    parser.add_argument("--worker", choices=("ours", "transformers"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.gguf or not Path(args.gguf).is_file():
        sys.exit("bench_gguf: no GGUF file: pass --gguf PATH or set SCRATCH_REAL_GGUF (../shared/tools/get-smollm2)")
    path = Path(args.gguf)
    if args.worker:
        _worker(args.worker, path)
        return
    if args.errors_only:
        _error_table(path)
        return
    path.read_bytes()  # warm the page cache: both sides then read the file from memory
    print(f"GGUF load to float32: {path.name} ({path.stat().st_size / 2**20:.0f} MiB), {THREADS} threads, "
          f"median of {args.repeats} fresh processes")
    results = {}
    for side in ("ours", "transformers"):
        runs = [_run(side, path) for _ in range(args.repeats)]
        seconds = sorted(r["seconds"] for r in runs)[len(runs) // 2]
        cpu_seconds = sorted(r["cpu_seconds"] for r in runs)[len(runs) // 2]
        extra = min(r["peak_mb"] - r["baseline_mb"] for r in runs)
        peak = min(r["peak_mb"] for r in runs)
        results[side] = (seconds, cpu_seconds, extra, peak)
        print(f"  {side:13s} load {seconds:6.2f} s wall, {cpu_seconds:6.2f} s CPU   peak memory of the load "
              f"{extra:5.0f} MiB (process peak {peak:.0f} MiB)")
    ours, theirs = results["ours"], results["transformers"]
    # CPU time too: on a shared machine wall time swings with the other processes, CPU time much less.
    print(f"  ratio (transformers / ours): wall time {theirs[0] / ours[0]:.1f}x, CPU time {theirs[1] / ours[1]:.1f}x, "
          f"load's peak memory {theirs[2] / ours[2]:.2f}x, process peak {theirs[3] / ours[3]:.2f}x")
    ours_dq, theirs_dq = _dequantize_all(path)
    print(f"dequantize every tensor to float32: ours {ours_dq:.2f} s, gguf package {theirs_dq:.2f} s "
          f"({theirs_dq / ours_dq:.1f}x)")
    _error_table(path)


if __name__ == "__main__":
    main()
