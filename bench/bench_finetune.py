"""Benchmark: one fine-tuning step (loss + gradients + AdamW) of a ~10M-parameter GPT-2, ours against PyTorch eager +
transformers on the same weights and batch, float32.

Config: 6 layers, width 320, 5 heads, vocabulary 8192, 256 positions; batch 8 x 256 tokens. The transformers model
(GPT2LMHeadModel, dropout off, its default SDPA attention) is saved with save_pretrained and ours is loaded from the
same folder. Ours: train.loss_and_grads + train.AdamW; PyTorch: forward, F.cross_entropy, backward,
torch.optim.AdamW; same hyperparameters and weight-decay groups. On the CPU (--backend numpy) both use 2 threads; with
--backend cupy ours runs on CuPy and PyTorch on CUDA. Printed:
  (a) step time and tokens/s of ours, ours with gradient checkpointing, and PyTorch, timed in alternating rounds
      (the median of each, and of the per-round ratios: on shared cores single timings are noisy); and LoRA r=8 on
      c_attn (PEFT's default for GPT-2): ours (train.add_lora) and PyTorch + PEFT, with their trainable parameters;
  (b) the fraction of the matmul library's GFLOP/s reached: the step's matmul FLOPs (6 x matmul parameters x tokens,
      plus attention's 12 B H T^2 D per layer, no causal skipping) over its time, against one (B T, C) @ (C, 4C)
      product (the MLP's first) timed here with the same library;
  (c) peak memory of one step beyond the loaded model, each in a fresh process, optimizer state included. CPU: the
      high-water mark of resident memory (VmHWM, reset after loading) for both, and tracemalloc's peak for ours
      (NumPy reports its buffers to it). GPU: the peak of bytes handed out by each library's memory pool (a CuPy
      memory hook; torch.cuda.max_memory_allocated).
Run:  python bench/bench_finetune.py [--rounds 5] [--quick] [--backend numpy|cupy]
"""
from __future__ import annotations

import argparse
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
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):   # before NumPy is imported
    os.environ[_name] = str(THREADS)

CONFIG = dict(vocab_size=8192, n_positions=256, n_embd=320, n_layer=6, n_head=5)
BATCH, SEQ = 8, 256
HYPER = dict(lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
LORA = dict(r=8, lora_alpha=16, target_modules=["c_attn"])     # PEFT's default target for GPT-2


# --- the two training steps ----------------------------------------------------------------------------------------

def make_batch(seq: int):
    import numpy as np

    ids = np.random.default_rng(0).integers(0, CONFIG["vocab_size"], (BATCH, seq + 1))
    return ids[:, :-1], ids[:, 1:]                                        # inputs, next-token targets (B, T)


def torch_model(folder, device: str):
    import transformers

    model = transformers.GPT2LMHeadModel.from_pretrained(folder, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return model.to(device).train()


def torch_lora(model):
    """The model wrapped by PEFT with LORA's adapters (only they require gradients)."""
    import peft

    return peft.get_peft_model(model, peft.LoraConfig(**LORA, lora_dropout=0.0, fan_in_fan_out=True))


def torch_optimizer(model):
    """torch.optim.AdamW with our decay groups (matrices that are not embeddings decay), trainable parameters only."""
    import torch

    from scratch import train

    named = {name: p for name, p in model.named_parameters() if p.requires_grad}
    decayed = [p for name, p in named.items() if train.default_decay_rule(name, p)]
    others = [p for name, p in named.items() if not train.default_decay_rule(name, p)]
    return torch.optim.AdamW([{"params": decayed}, {"params": others, "weight_decay": 0.0}], **HYPER)


def our_step_function(folder, backend: str, seq: int, lora: bool = False):
    """ours(checkpointing=False) -> loss: one training step, finished (synchronised) when it returns. lora: train
    only LORA's adapters."""
    import scratch.models
    from scratch import train

    model = scratch.models.load(folder, backend=backend)
    if lora:
        train.add_lora(model, **LORA)
    optimizer = train.AdamW(model, **HYPER)
    inputs, targets = make_batch(seq)
    inputs, targets = model.backend.asarray(inputs, dtype="int64"), model.backend.asarray(targets, dtype="int64")
    float32 = model.backend.xp.float32

    def step(checkpointing: bool = False) -> float:
        loss, grads = train.loss_and_grads(model, inputs, targets, checkpointing=checkpointing)
        assert all(g.dtype == float32 for g in grads.values()), "a gradient is not float32"
        optimizer.step(grads)
        model.backend.synchronize()
        return loss

    return step


def torch_step_function(folder, device: str, seq: int, lora: bool = False):
    import torch
    import torch.nn.functional as TF

    model = torch_lora(torch_model(folder, device)) if lora else torch_model(folder, device)
    optimizer = torch_optimizer(model)
    inputs, targets = (torch.tensor(a, device=device) for a in make_batch(seq))

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        logits = model(inputs).logits
        loss = TF.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        return loss.item()

    return step


# --- (c) memory, in a fresh process --------------------------------------------------------------------------------

def _peak_rss_mb() -> float:
    """The high-water mark of resident memory, VmHWM (not ru_maxrss, which a child inherits from its parent)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the next peak is the step's alone."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _cupy_peak_hook():
    """A CuPy memory hook that records the peak of bytes handed out by the memory pool (CuPy keeps no peak)."""
    import cupy

    class PeakHook(cupy.cuda.MemoryHook):
        name = "PeakHook"

        def __init__(self):
            self.current = self.peak = 0

        def malloc_postprocess(self, **kw):
            self.current += kw["mem_size"]
            self.peak = max(self.peak, self.current)

        def free_postprocess(self, **kw):
            self.current -= kw["mem_size"]

    return PeakHook()


def memory_child(folder: str, which: str, backend: str, seq: int) -> None:
    """One step of `which` (ours, ours-ckpt, ours-lora, torch, torch-lora) in this fresh process: print JSON
    {what: MB} beyond the loaded model. The optimizer is made inside the measured region (torch makes its state at
    the first step)."""
    import tracemalloc

    import torch

    from scratch import train

    torch.set_num_threads(THREADS)
    gpu = backend == "cupy"
    if which.startswith("torch"):
        import torch.nn.functional as TF

        device = "cuda" if gpu else "cpu"
        model = torch_model(folder, device)
        if which == "torch-lora":
            model = torch_lora(model)
        inputs, targets = (torch.tensor(a, device=device) for a in make_batch(seq))
        if gpu:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            _reset_peak_rss()
            base = _rss_mb()
        optimizer = torch_optimizer(model)
        logits = model(inputs).logits
        loss = TF.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        optimizer.step()
        if gpu:
            torch.cuda.synchronize()
            print(json.dumps({"GPU pool peak": (torch.cuda.max_memory_allocated() - base) / 2**20}))
        else:
            print(json.dumps({"VmHWM growth": _peak_rss_mb() - base}))
        return
    import scratch.models

    model = scratch.models.load(folder, backend=backend)
    if which == "ours-lora":
        train.add_lora(model, **LORA)
    inputs, targets = make_batch(seq)
    checkpointing = which == "ours-ckpt"
    if gpu:
        import cupy

        hook = _cupy_peak_hook()
        with hook:
            optimizer = train.AdamW(model, **HYPER)
            _, grads = train.loss_and_grads(model, inputs, targets, checkpointing=checkpointing)
            optimizer.step(grads)
            cupy.cuda.Device().synchronize()
        print(json.dumps({"GPU pool peak": hook.peak / 2**20}))
        return
    _reset_peak_rss()
    base = _rss_mb()
    tracemalloc.start()
    optimizer = train.AdamW(model, **HYPER)
    _, grads = train.loss_and_grads(model, inputs, targets, checkpointing=checkpointing)
    optimizer.step(grads)
    traced = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    print(json.dumps({"VmHWM growth": _peak_rss_mb() - base, "tracemalloc peak": traced}))


# --- (b) FLOPs -----------------------------------------------------------------------------------------------------

def matmul_flops(seq: int) -> float:
    """Matmul FLOPs of one training step: 2 per multiply-add, forward 1x and backward 2x (dx and dW)."""
    C, L, V, H = CONFIG["n_embd"], CONFIG["n_layer"], CONFIG["vocab_size"], CONFIG["n_head"]
    tokens = BATCH * seq
    matmul_params = L * 12 * C * C + V * C                 # c_attn 3C^2, c_proj C^2, c_fc 4C^2, mlp c_proj 4C^2; head
    attention = L * 12 * BATCH * H * seq * seq * (C // H)   # q k^T and P v forward; four products backward
    return 6 * matmul_params * tokens + attention


def matmul_gflops(xp, seq: int, repeats: int, sync) -> float:
    """GFLOP/s of the step's typical matmul, (B T, C) @ (C, 4C) float32 (the MLP's first product), on xp."""
    rows, C = BATCH * seq, CONFIG["n_embd"]
    a = xp.ones((rows, C), dtype=xp.float32)
    b = xp.ones((C, 4 * C), dtype=xp.float32)
    a @ b
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - start)
    return 2 * rows * C * 4 * C / sorted(times)[len(times) // 2] / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds (default 5)")
    parser.add_argument("--quick", action="store_true", help="64-token rows and 2 rounds (a smoke run)")
    parser.add_argument("--backend", default="numpy", help="ours on numpy (PyTorch on the CPU) or cupy (CUDA)")
    parser.add_argument("--memory-child", nargs=3, metavar=("FOLDER", "WHICH", "SEQ"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child[0], args.memory_child[1], args.backend, int(args.memory_child[2]))
        return 0
    seq, rounds = (64, 2) if args.quick else (SEQ, args.rounds)

    import numpy as np
    import torch
    import transformers

    import backends
    import scratch.models

    torch.set_num_threads(THREADS)
    gpu = args.backend == "cupy"
    device = "cuda" if gpu else "cpu"
    be = backends.get(args.backend)
    where = (f"ours on CuPy, PyTorch on CUDA ({torch.cuda.get_device_name()})" if gpu
             else f"{THREADS} threads each (OpenBLAS / torch)")
    print(f"GPT-2 {CONFIG}, batch {BATCH} x {seq}, float32; {where}; torch {torch.__version__}, "
          f"transformers {transformers.__version__}, numpy {np.__version__}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**CONFIG, bos_token_id=0, eos_token_id=0))
    print(f"parameters: {hf.num_parameters() / 1e6:.2f} M")
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)
        del hf
        ours_step = our_step_function(folder, args.backend, seq)
        torch_step = torch_step_function(folder, device, seq)
        first_ours, first_torch = ours_step(), torch_step()                  # warm-up, and the same loss
        print(f"first-step loss: ours {first_ours:.6f}, PyTorch {first_torch:.6f} "
              f"(difference {abs(first_ours - first_torch):.1e})")
        ours_step(checkpointing=True)
        ours_lora, torch_lora_step = (our_step_function(folder, args.backend, seq, lora=True),
                                      torch_step_function(folder, device, seq, lora=True))
        ours_lora(), torch_lora_step()

        # (a) alternating rounds
        steps = {"ours": ours_step, "ours, checkpointing": lambda: ours_step(True), "PyTorch": torch_step,
                 "ours, LoRA": ours_lora, "PyTorch + PEFT, LoRA": torch_lora_step}
        times = {name: [] for name in steps}
        for _ in range(rounds):
            for name, step in steps.items():
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
        tokens = BATCH * seq
        median = {name: float(np.median(t)) for name, t in times.items()}
        print(f"\n(a) one training step, median of {rounds} alternating rounds "
              f"(load average now {os.getloadavg()[0]:.1f}):")
        for name, seconds in median.items():
            print(f"    {name:<20} {seconds * 1e3:8.1f} ms   {tokens / seconds:9.0f} tokens/s")
        round_ratios = [t / o for o, t in zip(times["ours"], times["PyTorch"])]
        print(f"    ours / PyTorch tokens/s: {median['PyTorch'] / median['ours']:.2f}x (median of per-round "
              f"ratios {np.median(round_ratios):.2f}x, range {min(round_ratios):.2f}-{max(round_ratios):.2f}; "
              f"bar 0.8x)")
        print(f"    checkpointing: {median['ours, checkpointing'] / median['ours']:.2f}x the step time "
              f"(one more forward of every block)")
        from scratch import train

        lora_model = scratch.models.load(folder, backend=args.backend)
        total = sum(int(p.size) for p in train.named_parameters(lora_model).values())
        trainable = sum(int(p.size) for p in train.add_lora(lora_model, **LORA).parameters().values())
        print(f"    LoRA r={LORA['r']} on {', '.join(LORA['target_modules'])}: {trainable:,} trainable parameters of "
              f"{total:,} ({trainable / total:.2%}); step time {median['ours, LoRA'] / median['ours']:.2f}x full "
              f"fine-tuning's (ours), {median['PyTorch + PEFT, LoRA'] / median['PyTorch']:.2f}x (PyTorch); "
              f"ours / PEFT tokens/s {median['PyTorch + PEFT, LoRA'] / median['ours, LoRA']:.2f}x")

        # (b) fraction of the matmul library's GFLOP/s
        flops = matmul_flops(seq)
        ours_rate = matmul_gflops(be.xp, seq, 7, be.synchronize)
        library = "cuBLAS via CuPy" if gpu else "NumPy's BLAS"
        print(f"\n(b) matmul work per step {flops / 1e9:.1f} GFLOP; {library}, (B T, C) @ (C, 4C): "
              f"{ours_rate:.1f} GFLOP/s")
        for name in ("ours", "PyTorch"):
            rate = flops / median[name] / 1e9
            print(f"    {name:<20} {rate:8.1f} GFLOP/s = {rate / ours_rate:.0%} of that")

        # (c) peak memory, each in a fresh process
        print("\n(c) peak memory of one step beyond the loaded model (a fresh process each; optimizer state "
              "included):")
        for which, label in (("ours", "ours"), ("ours-ckpt", "ours, checkpointing"), ("torch", "PyTorch"),
                             ("ours-lora", "ours, LoRA"), ("torch-lora", "PyTorch + PEFT, LoRA")):
            child = subprocess.run([sys.executable, __file__, "--backend", args.backend, "--memory-child", folder,
                                    which, str(seq)], capture_output=True, text=True, check=True)
            result = json.loads(child.stdout.strip().splitlines()[-1])
            print(f"    {label:<20} " + ", ".join(f"{key} {mb:6.0f} MB" for key, mb in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
