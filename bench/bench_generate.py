"""Benchmark: decoding speed of scratch's generate() against transformers' generate(), same weights, CPU, float32.

Two models with random weights (transformers' init, seed 0), saved with save_pretrained and loaded by ours from the
same folder: GPT-2 124M (GPT2Config()) and a small GPT-2 (4 layers, width 256, vocab 8,192 -- where per-step
overhead, not the weights, dominates). For each: greedy, top-k + top-p sampling (top_k=50, top_p=0.9) and beam
search with 4 beams (batch 1); batch 1 and batch 8 (left-padded prompts of different lengths). Tokens/s = returned
new tokens (B x max_new_tokens; EOS is disabled so both run every step) / wall time of the whole call, prompt
prefill included. Each figure is the median of alternating rounds (ours, transformers, ours, ...), so a burst of
load from other processes hits both alike; timings are noisy on shared cores all the same.
The 124M batch-1 greedy step is also set against the memory roofline (weight bytes / measured bandwidth), and one
step's matrix products alone are timed with both BLAS libraries (CPU runs only). With --backend cupy on a machine
whose torch has CUDA, transformers runs on the GPU too: CuPy against PyTorch CUDA, the issue's GPU comparison.
Run:  python bench/bench_generate.py [--quick] [--only small|124m] [--backend numpy|cupy] [--blas-threads N]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from anywhere: the repo root is importable

THREADS = 2
BARS = {  # (model, strategy, batch) -> minimum ours/transformers tokens/s ratio (issue 5)
    ("124M", "greedy", 1): 1.5, ("124M", "sample", 1): 1.5, ("124M", "beam4", 1): 2.0,
    ("124M", "greedy", 8): 1.0, ("124M", "sample", 8): 1.0,
    ("small", "greedy", 1): 2.0, ("small", "sample", 1): 2.0, ("small", "greedy", 8): 2.0,
    ("small", "sample", 8): 2.0,
}
STRATEGIES = {
    "greedy": dict(do_sample=False),
    "sample": dict(do_sample=True, top_k=50, top_p=0.9, seed=0),
    "beam4": dict(num_beams=4, do_sample=False),
}


def _prompts(np, batch: int, vocab: int, length: int):
    """`batch` prompts of lengths length, length-3, ... (left padding when batch > 1), as (ids, mask) arrays."""
    rng = np.random.default_rng(0)
    lengths = [max(2, length - 3 * b) for b in range(batch)]
    ids = np.zeros((batch, length), dtype=np.int64)
    mask = np.zeros((batch, length), dtype=np.int64)
    for b, n in enumerate(lengths):
        ids[b, length - n:] = rng.integers(0, vocab, n)
        mask[b, length - n:] = 1
    return ids, mask


def _bandwidth_gbs(np) -> float:
    """Read bandwidth of a matrix-vector product over 256 MB of float32 (the access pattern of a decode step)."""
    w = np.ones((4096, 16384), dtype=np.float32)
    x = np.ones((1, 4096), dtype=np.float32)
    x @ w
    times = []
    for _ in range(5):
        start = time.perf_counter()
        x @ w
        times.append(time.perf_counter() - start)
    return w.nbytes / sorted(times)[2] / 1e9


def run_model(name: str, hf_config, args, np, torch, transformers, results: list) -> None:
    import scratch.models
    from scratch.generate import generate

    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    hf.generation_config.eos_token_id = None   # no early stop: both sides run every step
    hf.generation_config.pad_token_id = 0
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)
        ours = scratch.models.load(folder, backend=args.backend)
    sync = ours.backend.synchronize
    # On a GPU the peer is PyTorch CUDA (the comparison there): CuPy against torch on the same device.
    device = "cuda" if args.backend == "cupy" and torch.cuda.is_available() else "cpu"
    hf = hf.to(device)
    torch_sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    new_tokens = args.new_tokens
    print(f"\n{name}: {ours!r}, prompt {args.prompt_len} tokens, {new_tokens} new tokens per row; transformers on "
          f"{device}")
    print(f"  {'strategy':<8} {'B':>2} {'ours tok/s':>11} {'transformers':>13} {'ratio':>6} {'bar':>5}")
    for strategy, batch in [(s, b) for b in (1, 8) for s in STRATEGIES]:
        if (name, strategy, batch) not in BARS:
            continue
        ids, mask = _prompts(np, batch, hf_config.vocab_size, args.prompt_len)
        kwargs = STRATEGIES[strategy]

        def ours_once():
            start = time.perf_counter()
            out = generate(ours, ids, attention_mask=mask, max_new_tokens=new_tokens, pad_token_id=0, **kwargs)
            sync()
            assert out.sequences.shape[1] == args.prompt_len + new_tokens
            return time.perf_counter() - start

        hf_kwargs = {k: v for k, v in kwargs.items() if k != "seed"}

        def hf_once():
            start = time.perf_counter()
            with torch.no_grad():
                out = hf.generate(torch.tensor(ids, device=device), attention_mask=torch.tensor(mask, device=device),
                                  max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0, **hf_kwargs)
            torch_sync()
            assert out.shape[1] == args.prompt_len + new_tokens
            return time.perf_counter() - start

        ours_once(), hf_once()   # warm-up (first-call allocations, torch's lazy init)
        t_ours, t_hf = [], []
        for _ in range(args.rounds):
            t_ours.append(ours_once())
            t_hf.append(hf_once())
        t_ours, t_hf = float(np.median(t_ours)), float(np.median(t_hf))
        tps_ours, tps_hf = batch * new_tokens / t_ours, batch * new_tokens / t_hf
        bar = BARS[(name, strategy, batch)]
        ratio = tps_ours / tps_hf
        mark = "ok" if ratio >= bar else "BELOW"
        print(f"  {strategy:<8} {batch:>2} {tps_ours:>11.1f} {tps_hf:>13.1f} {ratio:>5.2f}x {bar:>4.1f}x {mark}")
        results.append((name, strategy, batch, tps_ours, tps_hf, ratio, bar))
        if name == "124M" and strategy == "greedy" and batch == 1 and args.backend == "numpy":
            matmul_floor(ours, hf, np, torch)
        if name == "124M" and strategy == "greedy" and batch == 1 and args.backend == "numpy":
            weight_bytes = 4 * (ours.parameter_count() - ours.wpe.shape[0] * ours.wpe.shape[1])
            bandwidth = _bandwidth_gbs(np)
            roofline_ms = weight_bytes / (bandwidth * 1e9) * 1e3
            per_token_ms = t_ours / new_tokens * 1e3
            print(f"  roofline: {weight_bytes / 1e6:.0f} MB of weights per step at {bandwidth:.1f} GB/s = "
                  f"{roofline_ms:.1f} ms/step; ours {per_token_ms:.1f} ms/token (prefill included) = "
                  f"{roofline_ms / per_token_ms:.0%} of the roofline")


def matmul_floor(ours, hf, np, torch, rounds: int = 3) -> None:
    """One decoding step's matrix products ALONE -- every weight matrix once, then the head -- for 1, 4 and 8 rows,
    with NumPy's BLAS (our weights) and PyTorch's (transformers' weights): what each library's BLAS needs just to
    stream the weights once per step. A generate() ratio cannot exceed this floor ratio by much, since both sides
    also pay everything else."""
    names = ("qkv_w", "attn_proj_w", "fc_w", "proj_w")
    ours_mats = [getattr(layer, n) for layer in ours.layers for n in names]                    # (C_in, C_out)
    ours_mats.append(ours.token_embedding.columns)                                            # the head, (C, V)
    hf_mats = [m.weight for block in hf.transformer.h
               for m in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj)]   # Conv1D (in, out)

    C, F = ours.config.n_embd, ours.config.n_inner

    def step_ms(matmul, mats, make):
        xs = {k: make(k) for k in (C, F)}                       # (rows, C_in) inputs; the head's C_in is C
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            for w in mats:
                matmul(xs[F if w.shape[0] == F else C], w)
            times.append(time.perf_counter() - start)
        return min(times) * 1e3

    print("  one step's matrix products alone (weights streamed once, then the head), ms -- ours NumPy/BLAS vs "
          "PyTorch:")
    with torch.no_grad():
        head = hf.lm_head.weight                                                                 # (V, C)
        for rows in (1, 4, 8):
            a = step_ms(lambda x, w: x @ w, ours_mats, lambda k: np.ones((rows, k), np.float32))
            b = step_ms(lambda x, w: x @ w if w is not head else torch.nn.functional.linear(x, w), hf_mats + [head],
                        lambda k: torch.ones(rows, k))
            print(f"    {rows} row{'s' if rows > 1 else ' '}: ours {a:6.1f}   PyTorch {b:6.1f}   PyTorch/ours "
                  f"{b / a:.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round, 16 new tokens")
    parser.add_argument("--only", choices=("small", "124m"), help="run one model only")
    parser.add_argument("--backend", default="numpy", help="our backend (numpy, or cupy on a GPU)")
    parser.add_argument("--new-tokens", type=int, default=None, help="new tokens per row (default 32, quick 16)")
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per figure (default 3, quick 1)")
    parser.add_argument("--blas-threads", type=int, default=None, metavar="N",
                        help="threads of NumPy's BLAS (default: one per core). With other processes on the cores, "
                             "1 can be several times faster than 2: OpenBLAS threads wait for each other every call")
    args = parser.parse_args(argv)
    if args.blas_threads is not None:   # must happen before the first `import numpy`
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(args.blas_threads)
    args.new_tokens = args.new_tokens or (16 if args.quick else 32)
    args.rounds = args.rounds or (1 if args.quick else 3)

    import numpy as np
    import torch
    import transformers

    torch.set_num_threads(THREADS)
    blas = args.blas_threads if args.blas_threads is not None else f"default ({os.cpu_count()} cores)"
    print(f"decoding bench: float32, PyTorch {THREADS} threads, NumPy BLAS threads {blas} (torch "
          f"{torch.__version__}, transformers {transformers.__version__}, numpy {np.__version__}); ours on "
          f"{args.backend}; load average "
          f"{os.getloadavg()[0]:.1f} (other processes share the cores: figures are noisy)")
    results: list = []
    if args.only in (None, "small"):
        run_model("small", transformers.GPT2Config(n_layer=4, n_embd=256, n_head=4, vocab_size=8192),
                  args, np, torch, transformers, results)
    if args.only in (None, "124m"):
        run_model("124M", transformers.GPT2Config(), args, np, torch, transformers, results)
    below = [r for r in results if r[5] < r[6]]
    print(f"\n{len(results) - len(below)} of {len(results)} figures meet their bar"
          + ("" if not below else ": below -- " + ", ".join(f"{r[0]} {r[1]} B={r[2]} {r[5]:.2f}x" for r in below)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
