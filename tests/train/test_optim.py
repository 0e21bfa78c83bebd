"""scratch.train.optim against torch.optim: AdamW and SGD parameters after N steps (float64 to 1e-12, float32 to
1e-6), with weight-decay groups, clipping, the warmup + cosine schedule and gradient accumulation; state_dict round
trips continue identically; parameters are updated in place on every backend."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import backends
from scratch import train

SHAPES = {                                   # GPT-2-like names: what the default decay rule sees
    "transformer.wte.weight": (7, 4),        # embedding: not decayed
    "transformer.h.0.ln_1.weight": (4,),     # norm gain: not decayed
    "transformer.h.0.attn.c_attn.weight": (4, 12),
    "transformer.h.0.attn.c_attn.bias": (12,),
    "transformer.h.0.mlp.c_fc.weight": (4, 6),
}
DECAYED = {"transformer.h.0.attn.c_attn.weight", "transformer.h.0.mlp.c_fc.weight"}


def host_params(rng, dtype):
    return {name: rng.standard_normal(shape).astype(dtype) for name, shape in SHAPES.items()}


def grad_sequence(rng, steps, dtype, scale=1.0):
    return [{name: (rng.standard_normal(shape) * scale).astype(dtype) for name, shape in SHAPES.items()}
            for _ in range(steps)]


def torch_groups(host, weight_decay):
    tensors = {name: torch.tensor(a, requires_grad=True) for name, a in host.items()}
    groups = [{"params": [tensors[n] for n in host if n in DECAYED], "weight_decay": weight_decay},
              {"params": [tensors[n] for n in host if n not in DECAYED], "weight_decay": 0.0}]
    return tensors, groups


def torch_run(tensors, optimizer, grads, lrs=None, max_norm=None):
    for step, step_grads in enumerate(grads):
        for name, tensor in tensors.items():
            tensor.grad = torch.tensor(step_grads[name])
        if max_norm is not None:
            torch.nn.utils.clip_grad_norm_(list(tensors.values()), max_norm)
        if lrs is not None:
            for group in optimizer.param_groups:
                group["lr"] = lrs[step]
        optimizer.step()
    return {name: t.detach().numpy() for name, t in tensors.items()}


def our_run(backend, params, optimizer, grads, lrs=None, max_norm=None):
    for step, step_grads in enumerate(grads):
        device_grads = {name: backend.asarray(g) for name, g in step_grads.items()}
        if max_norm is not None:
            train.clip_grad_norm(device_grads, max_norm)
        if lrs is not None:
            optimizer.lr = lrs[step]
        optimizer.step(device_grads)
    return {name: backend.to_numpy(p) for name, p in params.items()}


def assert_params_close(ours, reference, rtol):
    for name in reference:
        np.testing.assert_allclose(ours[name], reference[name], rtol=rtol, atol=rtol, err_msg=name)


TOL = {"float64": 1e-12, "float32": 1e-6}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("variant", ["plain", "clipped_and_scheduled"])
def test_adamw_matches_torch(backend, dtype, variant):
    rng = np.random.default_rng(0)
    host, steps = host_params(rng, dtype), 8
    grads = grad_sequence(rng, steps, dtype, scale=3.0)
    hyper = dict(lr=3e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    lrs = max_norm = None
    if variant == "clipped_and_scheduled":
        lrs = [train.warmup_cosine_lr(s, max_lr=3e-2, total_steps=steps, warmup_steps=3, min_lr=3e-3)
               for s in range(steps)]
        max_norm = 5.0                                            # grads have norm ~25: every step is clipped
    tensors, groups = torch_groups(host, hyper["weight_decay"])
    reference = torch_run(tensors, torch.optim.AdamW(groups, foreach=False, **hyper), grads, lrs, max_norm)
    params = {name: backend.asarray(a) for name, a in host.items()}
    optimizer = train.AdamW(params, **hyper)
    assert {n for n, decayed in optimizer.decayed.items() if decayed} == DECAYED
    ours = our_run(backend, params, optimizer, grads, lrs, max_norm)
    assert_params_close(ours, reference, TOL[dtype])
    for name, state in optimizer.state.items():
        assert all(s.dtype == backend.dtype(dtype) for s in state.values()), name


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("momentum,dampening,nesterov,weight_decay",
                         [(0.0, 0.0, False, 0.0), (0.9, 0.0, False, 0.01), (0.8, 0.3, False, 0.0),
                          (0.9, 0.0, True, 0.05)], ids=["plain", "momentum", "dampening", "nesterov"])
def test_sgd_matches_torch(backend, dtype, momentum, dampening, nesterov, weight_decay):
    rng = np.random.default_rng(1)
    host, grads = host_params(rng, dtype), grad_sequence(rng, 6, dtype)
    tensors, groups = torch_groups(host, weight_decay)
    hyper = dict(lr=0.05, momentum=momentum, dampening=dampening, nesterov=nesterov)
    reference = torch_run(tensors, torch.optim.SGD(groups, foreach=False, **hyper), grads)
    params = {name: backend.asarray(a) for name, a in host.items()}
    ours = our_run(backend, params, train.SGD(params, weight_decay=weight_decay, **hyper), grads)
    assert_params_close(ours, reference, TOL[dtype])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("max_norm", [0.5, 1e3], ids=["clips", "leaves"])
def test_clip_grad_norm_matches_torch(backend, dtype, max_norm):
    rng = np.random.default_rng(2)
    host = grad_sequence(rng, 1, dtype)[0]
    tensors = [torch.zeros(g.shape, dtype=getattr(torch, dtype)) for g in host.values()]
    for tensor, g in zip(tensors, host.values()):
        tensor.grad = torch.tensor(g)
    reference_total = torch.nn.utils.clip_grad_norm_(tensors, max_norm).item()
    grads = {name: backend.asarray(g) for name, g in host.items()}
    total = train.clip_grad_norm(grads, max_norm)
    assert total.ndim == 0 and total.dtype == backend.dtype(dtype)
    np.testing.assert_allclose(float(backend.to_numpy(total)), reference_total, rtol=TOL[dtype])
    for (name, g), tensor in zip(grads.items(), tensors):
        np.testing.assert_allclose(backend.to_numpy(g), tensor.grad.numpy(), rtol=TOL[dtype], atol=TOL[dtype])
    if max_norm > 1e2:                                            # below the limit: untouched (times exactly 1.0)
        for name, g in grads.items():
            np.testing.assert_array_equal(backend.to_numpy(g), host[name])


# --- the schedule -------------------------------------------------------------------------------------------------

def test_warmup_cosine_matches_torch_schedulers():
    """LinearLR from max_lr/W over W-1 steps, then CosineAnnealingLR down to min_lr: the same rates, step by step."""
    max_lr, min_lr, warmup, total = 6e-4, 6e-5, 10, 50
    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=max_lr)
    warm = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / warmup, total_iters=warmup - 1)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total - warmup, eta_min=min_lr)
    scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [warm, cosine], milestones=[warmup])
    for step in range(total + 1):
        ours = train.warmup_cosine_lr(step, max_lr=max_lr, total_steps=total, warmup_steps=warmup, min_lr=min_lr)
        assert ours == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-12, abs=1e-15), step
        optimizer.step()
        scheduler.step()


def test_warmup_cosine_landmarks():
    def lr(step):
        return train.warmup_cosine_lr(step, max_lr=1.0, total_steps=110, warmup_steps=10, min_lr=0.1)
    assert lr(0) == pytest.approx(0.1) and lr(9) == 1.0 and lr(10) == 1.0      # warmup: (step + 1) / W
    assert lr(60) == pytest.approx(0.55)                                        # halfway: the mean of the ends
    assert lr(110) == lr(10_000) == 0.1                                         # after the end: min_lr
    rates = [lr(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))                        # monotone decay
    assert train.warmup_cosine_lr(0, max_lr=1.0, total_steps=5) == 1.0          # no warmup: starts at max_lr
    with pytest.raises(ValueError, match="warmup_steps"):
        train.warmup_cosine_lr(0, max_lr=1.0, total_steps=5, warmup_steps=6)


# --- gradient accumulation ----------------------------------------------------------------------------------------

def tiny_model_grads(w, x, targets):
    """Gradients of cross_entropy(x @ w) with our layers: the accumulation tests need real per-batch gradients."""
    logits, cache = train.linear_forward(x, w)
    loss, loss_cache = train.cross_entropy_forward(logits, targets)
    return loss, {"w": train.linear_backward(train.cross_entropy_backward(1.0, loss_cache), cache)[1]}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_accumulated_step_matches_torch(backend, dtype):
    """4 micro-batches, averaged, then AdamW == torch with loss / 4 backward() per micro-batch, then AdamW."""
    rng = np.random.default_rng(3)
    w0 = rng.standard_normal((5, 7)).astype(dtype)
    xs = rng.standard_normal((4, 2, 3, 5)).astype(dtype)
    ts = rng.integers(0, 7, (4, 2, 3))
    w_torch = torch.tensor(w0, requires_grad=True)
    torch_opt = torch.optim.AdamW([w_torch], lr=0.1, weight_decay=0.1, foreach=False)
    for x, t in zip(xs, ts):
        (TF.cross_entropy(torch.tensor(x).reshape(-1, 5) @ w_torch, torch.tensor(t).reshape(-1)) / 4).backward()
    reference_grad = w_torch.grad.numpy().copy()
    torch_opt.step()
    params = {"w": backend.asarray(w0)}
    optimizer = train.AdamW(params, lr=0.1, weight_decay=0.1)
    accumulator = train.GradientAccumulator()
    for x, t in zip(xs, ts):
        accumulator.add(tiny_model_grads(params["w"], backend.asarray(x), backend.asarray(t))[1])
    grads = accumulator.take()
    assert grads["w"].dtype == backend.dtype(dtype) and not accumulator.sums
    np.testing.assert_allclose(backend.to_numpy(grads["w"]), reference_grad, rtol=TOL[dtype], atol=TOL[dtype])
    optimizer.step(grads)
    np.testing.assert_allclose(backend.to_numpy(params["w"]), w_torch.detach().numpy(), rtol=TOL[dtype],
                               atol=TOL[dtype])


def test_token_weighted_accumulation_is_the_full_batch_gradient():
    """Micro-batches with different numbers of counted targets, each weighted by its count: the full batch's mean."""
    rng = np.random.default_rng(4)
    w = rng.standard_normal((5, 7))
    x, t = rng.standard_normal((6, 4, 5)), rng.integers(0, 7, (6, 4))
    t[:2, 1:] = -100                                              # the first micro-batch counts only 2 targets
    _, full = tiny_model_grads(w, x, t)
    accumulator = train.GradientAccumulator()
    for rows in (slice(0, 2), slice(2, 6)):
        first = tiny_model_grads(w, x[rows], t[rows])[1]
        accumulator.add(first, weight=float(np.sum(t[rows] != -100)))
    np.testing.assert_allclose(accumulator.take()["w"], full["w"], rtol=1e-12, atol=1e-14)
    summed = train.GradientAccumulator()
    grads = {"w": np.ones(3)}
    summed.add(grads)
    summed.add(grads)
    assert summed.take(average=False)["w"].tolist() == [2.0, 2.0, 2.0] and grads["w"].tolist() == [1.0] * 3


def test_accumulator_checks_its_input():
    accumulator = train.GradientAccumulator()
    with pytest.raises(ValueError, match="nothing was added"):
        accumulator.take()
    accumulator.add({"a": np.ones(2)})
    with pytest.raises(KeyError, match="names differ"):
        accumulator.add({"b": np.ones(2)})
    with pytest.raises(ValueError, match="weight must be > 0"):
        accumulator.add({"a": np.ones(2)}, weight=0.0)


# --- state: in place, save, resume -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_state_dict_round_trip_continues_identically(backend, kind):
    rng = np.random.default_rng(5)
    host, grads = host_params(rng, "float32"), grad_sequence(rng, 6, "float32")

    def make(params):
        if kind == "adamw":
            return train.AdamW(params, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
        return train.SGD(params, lr=1e-2, momentum=0.9, nesterov=True, weight_decay=0.01)

    params = {name: backend.asarray(a) for name, a in host.items()}
    optimizer = make(params)
    our_run(backend, params, optimizer, grads[:3])
    optimizer.lr = 5e-3                                           # a changed rate is part of the state
    saved = optimizer.state_dict()
    saved_params = {name: backend.to_numpy(p).copy() for name, p in params.items()}
    snapshot = {name: {key: a.copy() for key, a in s.items()} for name, s in saved["state"].items()}
    uninterrupted = our_run(backend, params, optimizer, grads[3:])
    for name, state in snapshot.items():                          # the saved arrays are copies, not live views
        for key, array in state.items():
            np.testing.assert_array_equal(saved["state"][name][key], array)
    resumed_params = {name: backend.asarray(a) for name, a in saved_params.items()}
    resumed = make(resumed_params)
    resumed.load_state_dict(saved)
    assert resumed.step_count == 3 and resumed.lr == 5e-3
    for name, result in our_run(backend, resumed_params, resumed, grads[3:]).items():
        np.testing.assert_array_equal(result, uninterrupted[name], err_msg=name)


def test_load_state_dict_refuses_another_optimizer_or_other_parameters():
    params = {"w": np.zeros((2, 2), np.float32)}
    saved = train.AdamW(params).state_dict()
    with pytest.raises(ValueError, match="not SGD"):
        train.SGD(params, lr=0.1).load_state_dict(saved)
    with pytest.raises(KeyError, match="parameter names differ"):
        train.AdamW({"v": np.zeros((2, 2), np.float32)}).load_state_dict(saved)


def test_step_updates_the_given_arrays_in_place(backend):
    """A model holding the arrays sees the update: the dict's arrays are the same objects, with new values."""
    params = {"w": backend.asarray(np.ones((2, 3), np.float32)), "b": backend.asarray(np.ones(3, np.float32))}
    before = dict(params)
    optimizer = train.AdamW(params, lr=0.1, weight_decay=0.5)
    optimizer.step({name: backend.xp.ones_like(p) for name, p in params.items()})
    assert all(params[name] is before[name] for name in params)
    w, b = backend.to_numpy(params["w"]), backend.to_numpy(params["b"])
    assert params["w"].dtype == backend.xp.float32
    np.testing.assert_allclose(w, (1 - 0.1 * 0.5) - 0.1, rtol=1e-6)   # decayed, then one Adam step of size lr
    np.testing.assert_allclose(b, 1 - 0.1, rtol=1e-6)                 # 1-D: not decayed


def test_step_checks_the_gradients():
    params = {"w": np.zeros((2, 2), np.float32), "b": np.zeros(2, np.float32)}
    optimizer = train.AdamW(params)
    with pytest.raises(KeyError, match=r"missing \['b'\]"):
        optimizer.step({"w": np.zeros((2, 2), np.float32)})
    with pytest.raises(ValueError, match="grad of 'b' is \\(2,\\) float64"):
        optimizer.step({"w": np.zeros((2, 2), np.float32), "b": np.zeros(2)})
    with pytest.raises(ValueError, match="betas"):
        train.AdamW(params, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="nesterov"):
        train.SGD(params, lr=0.1, nesterov=True)
    with pytest.raises(TypeError, match="not a float"):
        train.SGD({"ids": np.zeros(2, np.int64)}, lr=0.1)


# --- parameters and decay groups ----------------------------------------------------------------------------------

class HasParameters:
    def __init__(self, params):
        self.params = params

    def trainable_parameters(self):
        return self.params


def test_trainable_parameters_accepts_a_dict_or_a_model():
    params = {"w": np.zeros((2, 2), np.float32)}
    assert train.trainable_parameters(params) is params
    assert train.trainable_parameters(HasParameters(params)) is params
    assert train.AdamW(HasParameters(params)).params is params
    with pytest.raises(TypeError, match="trainable_parameters\\(\\) method, got list"):
        train.trainable_parameters([np.zeros(2)])
    with pytest.raises(TypeError, match="must return a dict"):
        train.trainable_parameters(HasParameters([np.zeros(2)]))


def test_default_decay_rule_on_gpt2_and_llama_names():
    """Decay matrices; not norms, biases or embeddings (GPT-2 wte/wpe, Llama embed_tokens); lm_head and LoRA decay."""
    matrix, vector = np.zeros((2, 2)), np.zeros(2)
    decayed = {
        "transformer.wte.weight": False, "transformer.wpe.weight": False, "model.embed_tokens.weight": False,
        "transformer.h.0.ln_1.weight": False, "model.layers.0.input_layernorm.weight": False,
        "transformer.h.0.attn.c_attn.bias": False,
        "transformer.h.0.attn.c_attn.weight": True, "model.layers.0.mlp.down_proj.weight": True,
        "lm_head.weight": True, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": True,
    }
    for name, expected in decayed.items():
        param = vector if name.endswith("bias") or "norm" in name or "ln_" in name else matrix
        assert train.default_decay_rule(name, param) is expected, name
    groups = train.decay_groups({"a.weight": matrix, "a.bias": vector, "wte.weight": matrix})
    assert groups == (["a.weight"], ["a.bias", "wte.weight"])
    everything = train.AdamW({"wte.weight": matrix.astype(np.float32)}, decay_rule=lambda name, p: True)
    assert everything.decayed == {"wte.weight": True}


@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_clip_grad_norm_with_a_nonfinite_norm_makes_nan_like_torch():
    grads = {"a": np.array([np.inf, 1.0], np.float32)}
    total = train.clip_grad_norm(grads, 1.0)
    assert math.isinf(float(total)) and np.isnan(grads["a"]).any()


def test_optimizer_steps_are_deterministic():
    """Two runs from the same parameters and gradients give the same parameters bit for bit."""
    rng = backends.rng(6)
    host, grads = host_params(rng, "float32"), grad_sequence(rng, 3, "float32")
    results = []
    for _ in range(2):
        params = {name: a.copy() for name, a in host.items()}
        optimizer = train.AdamW(params)
        for step_grads in grads:
            optimizer.step(step_grads)
        results.append(params)
    for name in host:
        np.testing.assert_array_equal(results[0][name], results[1][name])
