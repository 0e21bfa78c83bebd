"""The parity report: every component run on two (or more) backends with the same inputs, errors side by side.

Each check draws its inputs on the host (one seeded generator), moves them to each backend, runs the same code and
brings the result back; the first backend is the reference. Checked: every layer function of `scratch.nn`, RoPE
(both layouts, llama3 frequencies), attention with causal, padding and grouped-query masks, the KV cache through a
cached decode, and the logits of tiny random GPT-2 and Llama models built with `from_config` (optionally a model
folder too). On a CPU-only machine this compares numpy with array-api-strict (a portability proof: the numbers
agree exactly); with a GPU, numpy with cupy (a numerics check: float32 kernels differ in summation order).
This is a report, not a test suite: `scratch parity` prints it and exits 1 if any row fails.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import backends
from scratch import nn
from scratch.models.config import GPT2Config, LlamaConfig, RopeScaling

__all__ = ["ParityRow", "default_backends", "run_parity", "format_table"]


@dataclass(frozen=True)
class ParityRow:
    component: str
    backend: str          # the backend compared against the reference
    max_abs: float        # max |other - reference|
    max_rel: float        # max |other - reference| / max |reference|
    tolerance: float      # the bound on max_rel (relative to the output's scale)
    passed: bool


def default_backends() -> list[str]:
    """numpy vs cupy with a GPU, else numpy vs strict."""
    available = backends.available()
    return ["numpy", "cupy"] if "cupy" in available else ["numpy", "strict"]


# --- the checks: each takes (backend, host inputs) and returns a host array ------------------------------------

# Tiny models for the whole-model rows; weights are drawn on the host, so every backend gets the same model.
TINY_GPT2 = GPT2Config(vocab_size=101, n_positions=64, n_embd=64, n_layer=2, n_head=4)
TINY_LLAMA = LlamaConfig(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         rope_scaling=RopeScaling(rope_type="llama3", factor=8.0, original_max_position_embeddings=16))


def _layer_checks(rng: np.random.Generator) -> list[tuple[str, float, Callable]]:
    """(name, relative tolerance, fn(backend) -> host array). Inputs are drawn once, here, on the host."""
    B, T, C, F, H, Hkv, D, V = 2, 11, 32, 48, 4, 2, 8, 50

    def n(*shape, std=1.0):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    x, w, b = n(B, T, C), n(C, F, std=0.2), n(F)
    table, ids = n(V, C), rng.integers(0, V, (B, T))
    ln_w, ln_b = n(C) + 1.0, n(C)
    w_fc, b_fc, w_proj, b_proj, w_up = n(C, F, std=0.2), n(F), n(F, C, std=0.2), n(C), n(C, F, std=0.2)
    logits = n(B, T, V, std=3.0)
    q, k, v = n(B, H, T, D), n(B, Hkv, T, D), n(B, Hkv, T, D)
    pad = np.ones((B, T), dtype=np.int64)
    pad[1, :4] = 0
    positions = np.arange(T)

    def on(be, *arrays):
        return [be.asarray(a) for a in arrays]

    def gelu_mlp(be):     # GPT-2's MLP: down(gelu_tanh(up(x)))
        x_, up, up_b, down, down_b = on(be, x, w_fc, b_fc, w_proj, b_proj)
        return nn.linear(nn.gelu_tanh(nn.linear(x_, up, up_b)), down, down_b)

    def swiglu_mlp(be):   # Llama's MLP: down(silu(gate(x)) * up(x))
        x_, gate, up, down = on(be, x, w_fc, w_up, w_proj)
        return nn.linear(nn.silu(nn.linear(x_, gate)) * nn.linear(x_, up), down)

    def rope(be, layout, scaling):
        inv = nn.rope_inv_freq(D, 10000.0, scaling, xp=be.xp)
        cos, sin = nn.rope_cos_sin(inv, be.asarray(positions + 37))   # positions past the first wavelengths
        return nn.apply_rope(be.asarray(q), cos, sin, layout=layout)

    llama3 = RopeScaling(rope_type="llama3", factor=8.0, original_max_position_embeddings=16)
    return [
        ("linear", 1e-5, lambda be: nn.linear(*on(be, x, w, b))),
        ("embedding", 0.0, lambda be: nn.embedding(be.asarray(ids, dtype="int64"), be.asarray(table))),
        ("layer_norm", 1e-5, lambda be: nn.layer_norm(*on(be, x, ln_w, ln_b), 1e-5)),
        ("rms_norm", 1e-5, lambda be: nn.rms_norm(*on(be, x, ln_w), 1e-6)),
        ("gelu (erf)", 1e-5, lambda be: nn.gelu(be.asarray(x))),
        ("gelu_tanh", 1e-5, lambda be: nn.gelu_tanh(be.asarray(x))),
        ("silu", 1e-5, lambda be: nn.silu(be.asarray(x))),
        ("softmax", 1e-5, lambda be: nn.softmax(be.asarray(logits))),
        ("relu", 0.0, lambda be: nn.relu(be.asarray(x))),
        ("mlp (gelu_tanh)", 1e-5, gelu_mlp),
        ("mlp (swiglu)", 1e-5, swiglu_mlp),
        ("rope half (default)", 1e-5, lambda be: rope(be, "half", None)),
        ("rope interleaved, llama3 scaling", 1e-5, lambda be: rope(be, "interleaved", llama3)),
        ("attention causal GQA", 1e-5,
         lambda be: nn.attention(*on(be, q, k, v), mask=nn.causal_mask(T, T, be.xp))),
        ("attention left-padded", 1e-5,
         lambda be: nn.attention(*on(be, q, k, v), mask=nn.causal_padding_mask(be.asarray(pad), T))),
    ]


def _cached_decode(model, ids: np.ndarray, prefill: int):
    """Logits of a prefill then one-token cached steps, concatenated along T (host array)."""
    cache = model.new_cache(ids.shape[0], ids.shape[1])
    parts = [model.backend.to_numpy(model(ids[:, :prefill], cache=cache))]
    for t in range(prefill, ids.shape[1]):
        parts.append(model.backend.to_numpy(model(ids[:, t:t + 1], cache=cache)))
    return np.concatenate(parts, axis=1)


def _model_checks(rng: np.random.Generator, folder: Path | None) -> list[tuple[str, float, Callable]]:
    from scratch.models.loader import from_config, load

    ids = rng.integers(0, 101, (2, 24))
    pad = np.ones_like(ids)
    pad[0, :7] = 0
    checks = [
        ("gpt2 logits", 1e-4, lambda be: from_config(TINY_GPT2, backend=be, seed=1)(ids)),
        ("gpt2 logits, left-padded", 1e-4,
         lambda be: be.to_numpy(from_config(TINY_GPT2, backend=be, seed=1)(ids, attention_mask=pad)) * pad[..., None]),
        ("gpt2 cached decode", 1e-4, lambda be: _cached_decode(from_config(TINY_GPT2, backend=be, seed=1), ids, 16)),
        ("llama logits", 1e-4, lambda be: from_config(TINY_LLAMA, backend=be, seed=1)(ids)),
        ("llama cached decode", 1e-4,
         lambda be: _cached_decode(from_config(TINY_LLAMA, backend=be, seed=1), ids, 16)),
    ]
    if folder is not None:
        def folder_logits(be):
            model = load(folder, backend=be)
            size = getattr(model.config, "vocab_size", 100)
            sample = np.random.default_rng(0).integers(0, size, (1, 16))
            out = model(sample)
            if hasattr(out, "last_hidden_state"):         # an encoder (BERT) returns an output object
                return out.last_hidden_state if out.logits is None else out.logits
            return out

        checks.append((f"{Path(folder).name} output", 1e-4, folder_logits))
    return checks


def run_parity(backend_names: list[str] | None = None, model_folder=None, seed: int = 0) -> list[ParityRow]:
    """Run every check on each backend; compare each to the first. Returns one row per (component, backend)."""
    names = list(backend_names) if backend_names else default_backends()
    if len(names) < 2:
        raise ValueError(f"parity compares at least two backends, got {names!r}")
    bes = [backends.get(name) for name in names]
    folder = None if model_folder is None else Path(model_folder)
    if folder is not None and not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    checks = _layer_checks(backends.rng(seed)) + _model_checks(backends.rng(seed + 1), folder)
    rows = []
    for name, tol, fn in checks:
        outs = []
        for be in bes:
            out = fn(be)
            outs.append(out if isinstance(out, np.ndarray) else be.to_numpy(out))
        ref = outs[0].astype(np.float64)
        scale = max(float(np.max(np.abs(ref))), np.finfo(np.float32).tiny) if ref.size else 1.0
        for be, out in zip(bes[1:], outs[1:]):
            if out.shape != ref.shape:
                rows.append(ParityRow(name, be.name, float("inf"), float("inf"), tol, False))
                continue
            err = float(np.max(np.abs(out.astype(np.float64) - ref))) if ref.size else 0.0
            rel = err / scale
            ok = bool(np.isfinite(out).all() == np.isfinite(ref).all()) and rel <= tol
            rows.append(ParityRow(name, be.name, err, rel, tol, ok))
    return rows


def format_table(rows: list[ParityRow], reference: str) -> str:
    """A fixed-width table: component, backend, max abs err, max rel err, tolerance, PASS/FAIL."""
    head = (f"{'component':<28} {'vs ' + reference:<10} {'max abs err':>12} {'max rel err':>12} "
            f"{'tolerance':>10}  result")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.component:<28} {r.backend:<10} {r.max_abs:>12.3e} {r.max_rel:>12.3e} {r.tolerance:>10.0e}  "
                     f"{'PASS' if r.passed else 'FAIL'}")
    failed = sum(not r.passed for r in rows)
    lines.append(f"{len(rows) - failed} passed, {failed} failed (max rel err = max |error| / max |reference output|)")
    return "\n".join(lines)
