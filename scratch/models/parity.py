"""The parity report: every component run twice with the same inputs -- on two backends, and in two precisions.

Portability: each component in float32 on every backend named, against the first (on a CPU, numpy vs
array-api-strict, which wraps NumPy: exact agreement, and the proof is that the code ran there at all; with a GPU,
numpy vs cupy, whose kernels sum in another order). Precision: each component in float32 and float16 (where the
backend has it) against a float64 run of the same code, inputs and weights rounded to the dtype as a stored model's
are; a contrast row runs RMSNorm in float16 throughout, to show why the layers upcast (scratch/nn/precision.py).
Components: the layers of `scratch.nn`, RoPE, masked attention, cached decoding and tiny GPT-2/Llama logits (and a
model folder's). Errors are relative to the output's scale; `scratch parity` prints the report, exit 1 if a row fails.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import backends
from scratch import nn
from scratch.models.config import GPT2Config, LlamaConfig, RopeScaling

__all__ = ["Check", "ParityRow", "default_backends", "precision_backends", "run_parity", "format_table",
           "TINY_GPT2", "TINY_LLAMA"]


@dataclass(frozen=True)
class ParityRow:
    component: str
    backend: str          # what was compared with the reference: another backend ("strict") or a dtype ("float16")
    max_abs: float        # max |other - reference|
    max_rel: float        # max |other - reference| / max |reference|
    tolerance: float | None   # the bound on max_rel; None for a contrast row (shown, not judged)
    passed: bool
    section: str = "portability"   # "portability" (backend vs backend) or "precision" (dtype vs float64)
    reference: str = "numpy"       # what it was compared against: the first backend, or "<backend> float64"


@dataclass(frozen=True)
class Check:
    """One component: `run(backend, dtype)` computes it from inputs drawn on the host (rounded to `dtype` on the way
    to the backend) and returns an array of that backend or a host array. Tolerances bound max_rel:
    `tolerance` backend vs backend in float32; `float32` and `float16` each dtype against float64 (None: the
    dtype is not run). `contrast`: shown for comparison, not judged, and run in the precision section only."""

    name: str
    run: Callable
    tolerance: float
    float32: float | None = None
    float16: float | None = None
    contrast: bool = False


def default_backends() -> list[str]:
    """numpy vs cupy with a GPU, else numpy vs strict."""
    available = backends.available()
    return ["numpy", "cupy"] if "cupy" in available else ["numpy", "strict"]


def precision_backends(names: list[str]) -> list[str]:
    """The backends the precision section runs on: each one named except strict, which is NumPy underneath (its
    float32 numbers are numpy's, as the portability section proves) and has no float16."""
    chosen = [name for name in dict.fromkeys(names) if name != "strict"]
    return chosen or [names[0]]


# Tiny models for the whole-model rows; weights are drawn on the host, so every backend gets the same model.
TINY_GPT2 = GPT2Config(vocab_size=101, n_positions=64, n_embd=64, n_layer=2, n_head=4)
TINY_LLAMA = LlamaConfig(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         rope_scaling=RopeScaling(rope_type="llama3", factor=8.0, original_max_position_embeddings=16))

# Tolerances on max_rel. float32 vs float32 on two backends: a different summation order moves each output by a few
# ulps of the largest term, 1e-5 for a layer and 1e-4 for a whole model. Against float64: a float32 layer rounds
# each product once (eps32 = 1.2e-7; a sum of C terms drifts by ~sqrt(C) of those), so 1e-5 holds a layer and 1e-4 a
# model; float16 (eps16 = 9.8e-4, inputs rounded too) loses about three decimal digits per layer, so 1e-2 holds a
# layer (measured: 3e-4 to 3e-3) and a 2-layer model too.
LAYER, MODEL = 1e-5, 1e-4
LAYER16, MODEL16 = 1e-2, 1e-2


# --- the checks: each runs one component on (backend, dtype) ----------------------------------------------------

def _layer_checks(rng: np.random.Generator) -> list[Check]:
    """The layer functions, RoPE and attention. Inputs are drawn once, here, on the host, in float64."""
    B, T, C, F, H, Hkv, D, V = 2, 11, 32, 48, 4, 2, 8, 50

    def n(*shape, std=1.0):
        return rng.standard_normal(shape) * std

    x, w, b = n(B, T, C), n(C, F, std=0.2), n(F)
    table, ids = n(V, C), rng.integers(0, V, (B, T))
    ln_w, ln_b = n(C) + 1.0, n(C)
    w_fc, b_fc, w_proj, b_proj, w_up = n(C, F, std=0.2), n(F), n(F, C, std=0.2), n(C), n(C, F, std=0.2)
    logits = n(B, T, V, std=3.0)
    q, k, v = n(B, H, T, D), n(B, Hkv, T, D), n(B, Hkv, T, D)
    pad = np.ones((B, T), dtype=np.int64)
    pad[1, :4] = 0
    positions = np.arange(T) + 37                       # positions past the first wavelengths
    # A residual stream with an outlier channel, as trained LLMs have (values in the hundreds): its squares pass
    # float16's largest value, 65504.
    outliers = n(B, T, C)
    outliers[..., 3] *= 400.0
    vocab_logits = n(2, 32000, std=2.0)                 # one next-token row of a Llama 2-sized vocabulary, twice

    def on(be, dtype, *arrays):
        return [be.asarray(a, dtype=dtype) for a in arrays]

    def gelu_mlp(be, dt):     # GPT-2's MLP: down(gelu_tanh(up(x)))
        x_, up, up_b, down, down_b = on(be, dt, x, w_fc, b_fc, w_proj, b_proj)
        return nn.linear(nn.gelu_tanh(nn.linear(x_, up, up_b)), down, down_b)

    def swiglu_mlp(be, dt):   # Llama's MLP: down(silu(gate(x)) * up(x))
        x_, gate, up, down = on(be, dt, x, w_fc, w_up, w_proj)
        return nn.linear(nn.silu(nn.linear(x_, gate)) * nn.linear(x_, up), down)

    def rope(be, dt, layout, scaling):
        # As Llama does it: frequencies and angles in float32 (float64 for the float64 run), cos/sin in the dtype.
        inv = nn.rope_inv_freq(D, 10000.0, scaling, xp=be.xp, dtype="float64" if dt == "float64" else "float32")
        cos, sin = nn.rope_cos_sin(inv, be.asarray(positions, dtype="int64"), dtype=be.dtype(dt))
        return nn.apply_rope(be.asarray(q, dtype=dt), cos, sin, layout=layout)

    def rms_norm_float16_throughout(be, dt):   # the formula with no float32 inside: x * x overflows to inf
        x_, weight = on(be, dt, outliers, ln_w)
        with np.errstate(over="ignore"):          # the overflow is the point of this row
            return weight * (x_ / be.xp.sqrt(be.xp.mean(x_ * x_, axis=-1, keepdims=True) + 1e-6))

    llama3 = RopeScaling(rope_type="llama3", factor=8.0, original_max_position_embeddings=16)
    return [
        Check("linear", lambda be, dt: nn.linear(*on(be, dt, x, w, b)), LAYER, LAYER, LAYER16),
        Check("embedding", lambda be, dt: nn.embedding(be.asarray(ids, dtype="int64"), be.asarray(table, dtype=dt)),
              0.0, LAYER, LAYER16),
        Check("layer_norm", lambda be, dt: nn.layer_norm(*on(be, dt, x, ln_w, ln_b), 1e-5), LAYER, LAYER, LAYER16),
        Check("rms_norm", lambda be, dt: nn.rms_norm(*on(be, dt, x, ln_w), 1e-6), LAYER, LAYER, LAYER16),
        Check("rms_norm, outlier channel", lambda be, dt: nn.rms_norm(*on(be, dt, outliers, ln_w), 1e-6),
              LAYER, LAYER, LAYER16),
        Check("  rms_norm, float16 throughout", rms_norm_float16_throughout, LAYER, None, LAYER16, contrast=True),
        Check("gelu (erf)", lambda be, dt: nn.gelu(be.asarray(x, dtype=dt)), LAYER, LAYER, LAYER16),
        Check("gelu_tanh", lambda be, dt: nn.gelu_tanh(be.asarray(x, dtype=dt)), LAYER, LAYER, LAYER16),
        Check("silu", lambda be, dt: nn.silu(be.asarray(x, dtype=dt)), LAYER, LAYER, LAYER16),
        Check("relu", lambda be, dt: nn.relu(be.asarray(x, dtype=dt)), 0.0, LAYER, LAYER16),
        Check("softmax", lambda be, dt: nn.softmax(be.asarray(logits, dtype=dt)), LAYER, LAYER, LAYER16),
        Check("softmax, 32,000 tokens", lambda be, dt: nn.softmax(be.asarray(vocab_logits, dtype=dt)),
              LAYER, LAYER, LAYER16),
        Check("mlp (gelu_tanh)", gelu_mlp, LAYER, LAYER, LAYER16),
        Check("mlp (swiglu)", swiglu_mlp, LAYER, LAYER, LAYER16),
        Check("rope half (default)", lambda be, dt: rope(be, dt, "half", None), LAYER, LAYER, LAYER16),
        Check("rope interleaved, llama3 scaling", lambda be, dt: rope(be, dt, "interleaved", llama3),
              LAYER, LAYER, LAYER16),
        Check("attention causal GQA",
              lambda be, dt: nn.attention(*on(be, dt, q, k, v), mask=nn.causal_mask(T, T, be.xp)),
              LAYER, LAYER, LAYER16),
        Check("attention left-padded",
              lambda be, dt: nn.attention(*on(be, dt, q, k, v),
                                          mask=nn.causal_padding_mask(be.asarray(pad, dtype="int64"), T)),
              LAYER, LAYER, LAYER16),
    ]


def _cached_decode(model, ids: np.ndarray, prefill: int):
    """Logits of a prefill then one-token cached steps, concatenated along T (host array)."""
    cache = model.new_cache(ids.shape[0], ids.shape[1])
    parts = [model.backend.to_numpy(model(ids[:, :prefill], cache=cache))]
    for t in range(prefill, ids.shape[1]):
        parts.append(model.backend.to_numpy(model(ids[:, t:t + 1], cache=cache)))
    return np.concatenate(parts, axis=1)


def _model_checks(rng: np.random.Generator, folder: Path | None) -> list[Check]:
    from scratch.models.loader import from_config, load

    ids = rng.integers(0, 101, (2, 24))
    pad = np.ones_like(ids)
    pad[0, :7] = 0

    def tiny(config, be, dt):
        return from_config(config, backend=be, seed=1, dtype=dt)

    checks = [
        Check("gpt2 logits", lambda be, dt: tiny(TINY_GPT2, be, dt)(ids), MODEL, MODEL, MODEL16),
        Check("gpt2 logits, left-padded",
              lambda be, dt: be.to_numpy(tiny(TINY_GPT2, be, dt)(ids, attention_mask=pad)) * pad[..., None],
              MODEL, MODEL, MODEL16),
        Check("gpt2 cached decode", lambda be, dt: _cached_decode(tiny(TINY_GPT2, be, dt), ids, 16),
              MODEL, MODEL, MODEL16),
        Check("llama logits", lambda be, dt: tiny(TINY_LLAMA, be, dt)(ids), MODEL, MODEL, MODEL16),
        Check("llama cached decode", lambda be, dt: _cached_decode(tiny(TINY_LLAMA, be, dt), ids, 16),
              MODEL, MODEL, MODEL16),
    ]
    if folder is not None:
        def folder_logits(be, dt):
            model = load(folder, backend=be, dtype=dt)
            size = getattr(model.config, "vocab_size", 100)
            sample = np.random.default_rng(0).integers(0, size, (1, 16))
            out = model(sample)
            if hasattr(out, "last_hidden_state"):         # an encoder (BERT) returns an output object
                return out.last_hidden_state if out.logits is None else out.logits
            return out

        checks.append(Check(f"{Path(folder).name} output", folder_logits, MODEL, MODEL, MODEL16))
    return checks


# --- running and comparing ----------------------------------------------------------------------------------------

def _host(be, out) -> np.ndarray:
    return out if isinstance(out, np.ndarray) else be.to_numpy(out)


def _compare(check: Check, out: np.ndarray, ref: np.ndarray, tolerance: float | None, compared: str,
             section: str, reference: str) -> ParityRow:
    """One row: max abs and max relative error of `out` against `ref` (both host arrays)."""
    if out.shape != ref.shape:
        return ParityRow(check.name, compared, float("inf"), float("inf"), tolerance, False, section, reference)
    ref = ref.astype(np.float64)
    out = out.astype(np.float64)
    scale = max(float(np.max(np.abs(ref))), np.finfo(np.float32).tiny) if ref.size else 1.0
    finite = np.isfinite(out) & np.isfinite(ref)
    err = float(np.max(np.abs(out - ref), initial=0.0, where=finite)) if ref.size else 0.0
    if not (np.isfinite(out) == np.isfinite(ref)).all():     # an overflow (inf or nan) where the reference is finite
        err = float("inf")
    rel = err / scale
    passed = True if tolerance is None else bool(rel <= tolerance)
    return ParityRow(check.name, compared, err, rel, tolerance, passed, section, reference)


def _has_float16(be) -> bool:
    try:
        be.dtype("float16")
    except (TypeError, ValueError, AttributeError):
        return False
    return True


def run_parity(backend_names: list[str] | None = None, model_folder=None, seed: int = 0,
               precision: bool = True, extra_checks: list[Check] = ()) -> list[ParityRow]:
    """Run every check on each backend in float32 and compare each with the first (section "portability"); with
    `precision`, also run each check in float32 and float16 against float64 on the backends of
    `precision_backends` (section "precision"). `extra_checks` come from layers above the models (the training
    gradients of scratch.train.parity, which this module may not import). Returns one row per comparison."""
    names = list(backend_names) if backend_names else default_backends()
    if len(names) < 2:
        raise ValueError(f"parity compares at least two backends, got {names!r}")
    bes = [backends.get(name) for name in names]
    folder = None if model_folder is None else Path(model_folder)
    if folder is not None and not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    checks = _layer_checks(backends.rng(seed)) + _model_checks(backends.rng(seed + 1), folder) + list(extra_checks)
    rows = []
    for check in checks:
        if check.contrast:
            continue
        outs = [_host(be, check.run(be, "float32")) for be in bes]
        for be, out in zip(bes[1:], outs[1:]):
            rows.append(_compare(check, out, outs[0], check.tolerance, be.name, "portability", bes[0].name))
    if not precision:
        return rows
    for name in precision_backends(names):
        be = backends.get(name)
        for check in checks:
            ref = None
            for dtype in ("float32", "float16"):
                tolerance = getattr(check, dtype)
                if tolerance is None or (dtype == "float16" and not _has_float16(be)):
                    continue
                if ref is None:
                    ref = _host(be, check.run(be, "float64"))
                out = _host(be, check.run(be, dtype))
                rows.append(_compare(check, out, ref, None if check.contrast else tolerance, dtype, "precision",
                                     f"{be.name} float64"))
    return rows


def format_table(rows: list[ParityRow], reference: str) -> str:
    """Fixed-width tables, one per section: component, compared, max abs err, max rel err, tolerance, result."""
    width = max([len("component")] + [len(r.component) for r in rows])
    lines = []
    titles = {
        "portability": f"Portability: the same code in float32 on each backend, against {reference}",
        "precision": "Precision: float32 and float16 against a float64 run of the same code "
                     "(inputs and weights rounded to the dtype)",
    }
    for section in ("portability", "precision"):
        part = [r for r in rows if r.section == section]
        if not part:
            continue
        against = "vs " + part[0].reference if section == "portability" else "dtype"
        head = (f"{'component':<{width}}  {against:<12} {'max abs err':>11} {'max rel err':>11} {'tolerance':>9}  "
                "result")
        if lines:
            lines.append("")
        lines += [titles[section], head, "-" * len(head)]
        shown_on = None
        for r in part:
            if section == "precision" and r.reference != shown_on and len({p.reference for p in part}) > 1:
                lines.append(f"on {r.reference.removesuffix(' float64')}:")
            shown_on = r.reference
            tolerance = "-" if r.tolerance is None else f"{r.tolerance:.0e}"
            result = "shown" if r.tolerance is None else "PASS" if r.passed else "FAIL"
            lines.append(f"{r.component:<{width}}  {r.backend:<12} {r.max_abs:>11.2e} {r.max_rel:>11.2e} "
                         f"{tolerance:>9}  {result}")
    judged = [r for r in rows if r.tolerance is not None]
    failed = sum(not r.passed for r in judged)
    lines.append("")
    lines.append(f"{len(judged) - failed} passed, {failed} failed (max rel err = max |error| / max |reference "
                 "output|; 'shown' rows compute in float16 with no float32 inside, the reason the layers upcast)")
    return "\n".join(lines)
