"""The device check: everything a session lent a GPU should run, in one script, with only what the device has.

The device machine has numpy, cupy, regex, pytest and hypothesis -- no torch, no transformers -- and a few minutes
of time, so this script needs nothing else and writes everything it measures to one report:

1. parity: `scratch parity` numpy vs the device backend -- every layer, RoPE, attention masks, a cached decode and
   whole-model logits (GPT-2, Llama), max absolute/relative error against a stated tolerance;
2. same tokens everywhere: greedy decoding, sampling (same seed) and beam search on tiny GPT-2 and Llama models give
   the same sequences on numpy and on the device (transformers is the reference on the CPU side; here the reference
   is numpy);
3. the device-backend cases of the test modules that import no reference library (backends, KV cache, cache
   consistency, streaming), through pytest;
4. speed on the device: GPT-2 124M (random weights) prefill of 512 tokens, one decoding step at batch 1 and 8, and
   generate() tokens/s for greedy, sampling, 4-beam search and batch 8, plus the small model of bench_generate.py.
   No peer runs here (PyTorch is not installed on the device): the CPU-side ratios come from bench_generate.py.

Run:  python bench/device_check.py [--backend cupy] [--out DIR] [--quick]
      (--backend strict runs the same script on a CPU-only machine, as a dry run of its logic.)
Exit status 1 if a parity row, a token comparison or a test fails.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from anywhere: the repo root is importable

TORCH_FREE_TESTS = ["tests/test_backends.py", "tests/nn/test_kv_cache.py", "tests/models/test_cache_consistency.py",
                    "tests/generate/test_stream.py", "tests/generate/test_selection.py"]


def parity(device: str, report: dict) -> bool:
    from scratch.models.parity import format_table, run_parity
    from scratch.train.parity import gradient_checks

    rows = run_parity(["numpy", device], extra_checks=gradient_checks())
    print(format_table(rows, "numpy"))
    report["parity"] = [dict(component=r.component, max_abs=r.max_abs, max_rel=r.max_rel, tolerance=r.tolerance,
                             passed=r.passed) for r in rows]
    return all(r.passed for r in rows)


def same_tokens(device: str, report: dict) -> bool:
    """Greedy, sampling and beam search: the sequences on numpy and on the device, for tiny GPT-2 and Llama."""
    import scratch.models
    from scratch.generate import generate
    from scratch.models.parity import TINY_GPT2, TINY_LLAMA

    prompts = [[5, 17, 33, 2, 9, 41], [7, 7, 60]]
    cases = {"greedy": dict(), "sample": dict(do_sample=True, top_k=20, top_p=0.9, seed=3),
             "beam 3": dict(num_beams=3, num_return_sequences=2),
             "beam sample": dict(num_beams=3, do_sample=True, seed=5)}
    ok = True
    report["same_tokens"] = {}
    for family, config in (("gpt2", TINY_GPT2), ("llama", TINY_LLAMA)):
        cpu = scratch.models.from_config(config, backend="numpy", seed=0)
        dev = scratch.models.from_config(config, backend=device, seed=0)
        for name, kwargs in cases.items():
            a = generate(cpu, prompts, max_new_tokens=12, pad_token_id=0, **kwargs).sequences
            b = generate(dev, prompts, max_new_tokens=12, pad_token_id=0, **kwargs).sequences
            same = a.shape == b.shape and bool((a == b).all())
            ok &= same
            report["same_tokens"][f"{family} {name}"] = same
            print(f"  {family:<6} {name:<11} numpy vs {device}: {'same tokens' if same else 'DIFFERENT'}")
    return ok


def torch_free_tests(device: str, report: dict, quick: bool) -> bool:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", device] + TORCH_FREE_TESTS
    env = dict(os.environ, PYTHONPATH=str(ROOT), HYPOTHESIS_PROFILE="ci" if quick else "dev")
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    tail = (done.stdout + done.stderr).strip().splitlines()[-1:]
    print("  " + (tail[0] if tail else f"pytest exited {done.returncode}"))
    report["tests"] = {"command": " ".join(cmd[1:]), "returncode": done.returncode, "summary": tail}
    return done.returncode == 0


def speed(device: str, report: dict, quick: bool) -> None:
    import numpy as np
    from bench_models import _median_time   # its module level imports only the standard library

    import scratch.models
    from scratch.generate import generate
    from scratch.models import GPT2Config

    repeats = 3 if quick else 5
    new_tokens = 16 if quick else 32
    report["speed"] = {}
    for name, config in (("124M", GPT2Config()),
                         ("small", GPT2Config(n_layer=4, n_embd=256, n_head=4, vocab_size=8192))):
        model = scratch.models.from_config(config, backend=device, seed=0)
        sync = model.backend.synchronize
        rng = np.random.default_rng(0)
        row = {}
        prefill_ids = rng.integers(0, config.vocab_size, (1, 512))

        def prefill():
            model(prefill_ids, cache=model.new_cache(1, 512), logits_to_keep=1)

        row["prefill 512 (ms)"] = _median_time(prefill, repeats, sync) * 1e3
        for batch in (1, 8):
            cache = model.new_cache(batch, 128)
            model(rng.integers(0, config.vocab_size, (batch, 64)), cache=cache)
            step_ids = model.backend.asarray(rng.integers(0, config.vocab_size, (batch, 1)), dtype="int64")

            def step():
                model(step_ids, cache=cache)
                cache.crop(64)

            row[f"decode step B={batch} at 64 (ms)"] = _median_time(step, repeats * 4, sync) * 1e3
        prompt = rng.integers(0, config.vocab_size, (8, 16)).tolist()
        for label, kwargs, rows in (("greedy B=1", dict(), 1), ("sample B=1", dict(do_sample=True, top_k=50,
                                    top_p=0.9, seed=0), 1), ("beam4 B=1", dict(num_beams=4), 1),
                                    ("greedy B=8", dict(), 8), ("sample B=8", dict(do_sample=True, top_k=50,
                                    top_p=0.9, seed=0), 8)):
            seconds = _median_time(lambda: generate(model, prompt[:rows], max_new_tokens=new_tokens, pad_token_id=0,
                                                    **kwargs), max(1, repeats // 2), sync)
            row[f"generate {label} (tok/s)"] = rows * new_tokens / seconds
        report["speed"][name] = row
        print(f"  {name}: " + "; ".join(f"{k} {v:.1f}" for k, v in row.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="cupy", help="the device backend (cupy; strict for a CPU dry run)")
    parser.add_argument("--out", default=None, metavar="DIR", help="also write report.json there")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, 16 new tokens, CI hypothesis profile")
    parser.add_argument("--skip", nargs="*", default=[], choices=("parity", "tokens", "tests", "speed"),
                        help="sections to leave out")
    args = parser.parse_args(argv)

    import backends

    reason = backends.unavailable_reason(args.backend)
    if reason is not None:
        print(f"device_check: the {args.backend} backend is unavailable here: {reason}", file=sys.stderr)
        return 2
    report: dict = {"backend": args.backend}
    if args.backend == "cupy":
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        report["device"] = f"{props['name'].decode()} (CuPy {cupy.__version__})"
    print(f"device check on {args.backend}" + (f": {report['device']}" if "device" in report else ""))
    ok = True

    def save() -> None:   # after every section: a one-shot device session keeps what finished before a failure
        if args.out:
            from scratch.atomic import atomic_write

            Path(args.out).mkdir(parents=True, exist_ok=True)
            with atomic_write(Path(args.out) / "report.json") as f:
                f.write(json.dumps(report, indent=1))

    sections = [("parity", "1. parity report, numpy vs device", lambda: parity(args.backend, report)),
                ("tokens", "2. same tokens on numpy and the device", lambda: same_tokens(args.backend, report)),
                ("tests", "3. device cases of the torch-free tests",
                 lambda: torch_free_tests(args.backend, report, args.quick)),
                ("speed", "4. speed on the device", lambda: speed(args.backend, report, args.quick) or True)]
    for key, title, run in sections:
        if key in args.skip:
            continue
        print(f"\n{title}")
        start = time.perf_counter()
        try:
            ok &= bool(run())
        except Exception:   # report it and go on: the other sections still run
            ok = False
            report.setdefault("errors", {})[key] = traceback.format_exc()
            print(traceback.format_exc(), end="")
        print(f"  ({time.perf_counter() - start:.0f} s)")
        report["passed"] = ok
        save()
    print(f"\ndevice check {'passed' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
