"""scratch.train.amp: GradScaler step by step against torch.amp.GradScaler("cpu") on scripted sequences of finite and
non-finite gradients (scale, growth tracker, skipped steps and parameters after each step, with and without clipping
after unscaling); the float32 growth cap; state_dict round trip; misuse errors. MixedPrecision on a tiny GPT-2:
the float16 copy follows the float32 master, an overflowing scale skips the step and halves, and a few mixed-precision
steps track float32 training."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import backends
from scratch import train
from scratch.train.amp import GradScaler, MixedPrecision, all_finite
from tests.conftest import backend_or_skip, backend_params

SHAPES = {"w": (3, 4), "b": (4,)}
# Per step: the true gradient's magnitude, and whether to plant a NaN. 1e36 * 65536 overflows float32 to inf in the
# scaled gradient, as a float16 backward overflows in real use; small values stay finite.
SCRIPT = [(1.0, False), (1.0, False), (1e36, False), (1.0, False), (1.0, True), (1.0, False), (1.0, False),
          (1.0, False), (1.0, False), (1e36, False), (1e36, False), (1.0, False), (1.0, False), (1.0, False),
          (1.0, False)]


def scripted_grads(seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    steps = []
    for magnitude, plant_nan in SCRIPT:
        grads = {name: rng.standard_normal(shape) * magnitude for name, shape in SHAPES.items()}
        if plant_nan:
            grads["b"][1] = np.nan
        steps.append(grads)
    return steps


def scaled(grad: np.ndarray, scale: float) -> np.ndarray:
    """The gradient of scale * loss as a float32 backward produces it (overflow -> inf)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return (grad * scale).astype(np.float32)


def run_torch(init: dict, steps: list, clip: float | None, **scaler_kwargs):
    params = {name: torch.tensor(a, requires_grad=True) for name, a in init.items()}
    optimizer = torch.optim.SGD(list(params.values()), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", **scaler_kwargs)
    trace = []
    for grads in steps:
        scaler.scale(torch.ones(()))               # the scaled loss; torch creates its scale tensor on first use
        scale = scaler.get_scale()
        for name, p in params.items():
            p.grad = torch.from_numpy(scaled(grads[name], scale))
        scaler.unscale_(optimizer)                 # in place: p.grad is now the true gradient
        unscaled = {name: p.grad.numpy().copy() for name, p in params.items()}
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(list(params.values()), clip)
        scaler.step(optimizer)
        scaler.update()
        trace.append((scaler.get_scale(), int(scaler._get_growth_tracker()),
                      {name: p.detach().numpy().copy() for name, p in params.items()}, unscaled))
    return trace


def run_ours(backend, init: dict, steps: list, clip: float | None, **scaler_kwargs):
    params = {name: backend.asarray(a) for name, a in init.items()}
    optimizer = train.SGD(params, lr=0.1)
    scaler = GradScaler(**scaler_kwargs)
    trace, taken = [], []
    for grads in steps:
        device_grads = {name: backend.asarray(scaled(g, scaler.get_scale())) for name, g in grads.items()}
        found_inf = scaler.unscale_(device_grads)
        unscaled = {name: backend.to_numpy(g).copy() for name, g in device_grads.items()}
        if clip is not None and not found_inf:   # (torch clips NaNs into every gradient; the step is skipped anyway)
            train.clip_grad_norm(device_grads, clip)
        taken.append(scaler.step(optimizer, device_grads))
        scaler.update()
        trace.append((scaler.get_scale(), scaler.growth_tracker,
                      {name: backend.to_numpy(p).copy() for name, p in params.items()}, unscaled))
    return trace, taken


@pytest.mark.parametrize("clip", [None, 0.5], ids=["no-clip", "clip-after-unscale"])
def test_grad_scaler_follows_torch_step_by_step(backend, clip):
    init = {name: np.random.default_rng(1).standard_normal(shape).astype(np.float32) for name, shape in SHAPES.items()}
    steps = scripted_grads()
    kwargs = dict(init_scale=2.0**16, growth_interval=3)
    expected = run_torch(init, steps, clip, **kwargs)
    ours, taken = run_ours(backend, init, steps, clip, **kwargs)
    assert taken == [magnitude < 1e30 and not nan for magnitude, nan in SCRIPT]
    for step, (mine, theirs) in enumerate(zip(ours, expected)):
        (scale, tracker, params, grads), (want_scale, want_tracker, want_params, want_grads) = mine, theirs
        assert (scale, tracker) == (want_scale, want_tracker), f"step {step}"
        for name in params:
            # the unscaled gradients, bit for bit (infinities and NaNs in the same places on skipped steps)
            np.testing.assert_array_equal(grads[name], want_grads[name], err_msg=f"step {step} {name}")
            # clipping's norm and SGD's update round differently from torch's kernels (test_optim: 1e-6)
            np.testing.assert_allclose(params[name], want_params[name], rtol=1e-6, atol=1e-7,
                                       err_msg=f"step {step} {name}")
    scales = [scale for scale, _, _, _ in ours]
    changes = [after / before for before, after in zip(scales, scales[1:])]
    assert 2.0 in changes and 0.5 in changes                   # the script both grows and backs off the scale


def test_defaults_are_torchs():
    ours, theirs = GradScaler(), torch.amp.GradScaler("cpu")
    assert ours.get_scale() == theirs.get_scale() == 65536.0
    assert (ours.growth_factor, ours.backoff_factor, ours.growth_interval) == (
        theirs.get_growth_factor(), theirs.get_backoff_factor(), theirs.get_growth_interval())


def test_growth_tracker_resets_on_a_skipped_step_and_grows_at_the_interval():
    scaler = GradScaler(init_scale=8.0, growth_interval=3)
    finite, infinite = {"g": np.ones(2, np.float32)}, {"g": np.array([1.0, np.inf], np.float32)}
    history = []
    for grads in (finite, finite, infinite, finite, finite, finite):
        scaler.unscale_({name: g.copy() for name, g in grads.items()})
        scaler.update()
        history.append((scaler.get_scale(), scaler.growth_tracker))
    assert history == [(8.0, 1), (8.0, 2), (4.0, 0), (4.0, 1), (4.0, 2), (8.0, 0)]


def test_growth_that_overflows_float32_is_not_applied():
    ours = GradScaler(init_scale=2.0**126, growth_interval=1)
    theirs = torch.amp.GradScaler("cpu", init_scale=2.0**126, growth_interval=1)
    param = torch.zeros(2, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=0.0)
    for _ in range(3):
        ours.unscale_({"g": np.zeros(2, np.float32)})
        ours.update()
        theirs.scale(torch.ones(()))
        param.grad = torch.zeros(2)
        theirs.step(optimizer)
        theirs.update()
        assert ours.get_scale() == theirs.get_scale()
    assert ours.get_scale() == 2.0**127


def test_unscale_divides_in_place_and_reports_non_finite(backend):
    scaler = GradScaler(init_scale=4.0)
    grads = {"a": backend.asarray(np.array([4.0, 8.0], np.float32)), "b": backend.asarray(np.array([2.0], np.float32))}
    assert scaler.unscale_(grads) is False
    np.testing.assert_array_equal(backend.to_numpy(grads["a"]), [1.0, 2.0])
    with pytest.raises(RuntimeError, match="already called"):
        scaler.unscale_(grads)
    scaler.update()
    bad = {"a": backend.asarray(np.array([np.nan], np.float32))}
    assert scaler.unscale_(bad) is True and not all_finite(bad)


def test_misuse_and_bad_settings_raise():
    with pytest.raises(RuntimeError, match="no inf check"):
        GradScaler().update()
    for kwargs, word in [({"growth_factor": 1.0}, "growth_factor"), ({"backoff_factor": 1.5}, "backoff_factor"),
                         ({"growth_interval": 0}, "growth_interval"), ({"init_scale": float("inf")}, "init_scale")]:
        with pytest.raises(ValueError, match=word):
            GradScaler(**kwargs)


def test_disabled_scaler_is_a_pass_through():
    scaler = GradScaler(enabled=False)
    grads = {"g": np.array([np.inf], np.float32)}
    assert scaler.get_scale() == 1.0 and scaler.unscale_(grads) is False
    scaler.update()
    assert scaler.get_scale() == 1.0


def test_state_dict_round_trip_continues_identically():
    steps = [{"g": np.full(2, value, np.float32)} for value in (1.0, np.inf, 1.0, 1.0, 1.0, np.nan, 1.0)]

    def drive(scaler, grads_list):
        out = []
        for grads in grads_list:
            scaler.unscale_({n: g.copy() for n, g in grads.items()})
            scaler.update()
            out.append((scaler.get_scale(), scaler.growth_tracker))
        return out

    whole = drive(GradScaler(growth_interval=2), steps)
    first = GradScaler(growth_interval=2)
    head = drive(first, steps[:3])
    resumed = GradScaler()
    resumed.load_state_dict(first.state_dict())
    assert head + drive(resumed, steps[3:]) == whole
    assert set(first.state_dict()) >= set(torch.amp.GradScaler("cpu").state_dict())   # torch's key names


# --- MixedPrecision on a tiny GPT-2 -------------------------------------------------------------------------------

def tiny_gpt2(backend, seed=0):
    import scratch.models
    from scratch.models import GPT2Config

    config = GPT2Config(vocab_size=48, n_positions=16, n_embd=32, n_layer=2, n_head=4)
    return scratch.models.from_config(config, backend=backend, seed=seed, dtype="float32")


@pytest.fixture(params=backend_params([name for name in backends.NAMES if name != "strict"]))
def half_backend(request) -> backends.Backend:
    """The backends that have float16 (array-api-strict has not: test_strict_refuses_mixed_precision)."""
    return backend_or_skip(request.param)


def test_strict_refuses_mixed_precision_naming_float16():
    with pytest.raises(TypeError, match="strict backend has no float16"):
        MixedPrecision(tiny_gpt2(backends.get("strict")))


def batch(seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 48, size=(2, 9))
    return ids[:, :-1], ids[:, 1:]


def test_float16_copy_follows_the_float32_master(half_backend):
    backend = half_backend
    model = tiny_gpt2(backend)
    amp = MixedPrecision(model)
    assert amp.compute_model.dtype == "float16" and amp.master.keys() == amp.compute.keys()
    for name, master in amp.master.items():
        np.testing.assert_array_equal(backend.to_numpy(amp.compute[name]),
                                      backend.to_numpy(master).astype(np.float16), err_msg=name)
    optimizer = train.AdamW(amp.master, lr=1e-2)
    before = {name: backend.to_numpy(p).copy() for name, p in amp.master.items()}
    loss, grads = amp.loss_and_grads(*batch())
    assert all(g.dtype == backend.xp.float32 for g in grads.values())
    stepped, norm = amp.step(optimizer, grads, max_grad_norm=1.0)
    assert stepped and float(norm) > 0 and np.isfinite(loss)
    for name, master in amp.master.items():
        host = backend.to_numpy(master)
        assert host.dtype == np.float32 and not np.array_equal(host, before[name]), name
        np.testing.assert_array_equal(backend.to_numpy(amp.compute[name]), host.astype(np.float16), err_msg=name)


def test_an_overflowing_scale_skips_the_step_and_backs_off(half_backend):
    backend = half_backend
    model = tiny_gpt2(backend)
    amp = MixedPrecision(model, scaler=GradScaler(init_scale=2.0**40))   # scaled gradients exceed float16's 65504
    optimizer = train.AdamW(amp.master, lr=1e-2)
    before = {name: backend.to_numpy(p).copy() for name, p in amp.master.items()}
    loss, grads = amp.loss_and_grads(*batch())
    stepped, _ = amp.step(optimizer, grads, max_grad_norm=1.0)
    assert not stepped and np.isfinite(loss) and amp.scaler.get_scale() == 2.0**39 and optimizer.step_count == 0
    for name, master in amp.master.items():
        np.testing.assert_array_equal(backend.to_numpy(master), before[name], err_msg=name)


def test_mixed_precision_steps_track_float32_training(half_backend):
    backend = half_backend
    fp32_model, amp_model = tiny_gpt2(backend), tiny_gpt2(backend)
    amp = MixedPrecision(amp_model)
    fp32_opt = train.AdamW(train.named_parameters(fp32_model), lr=1e-2)
    amp_opt = train.AdamW(amp.master, lr=1e-2)
    for step in range(4):
        ids, targets = batch(step)
        fp32_loss, grads = train.loss_and_grads(fp32_model, ids, targets)
        fp32_opt.step(grads)
        amp_loss, grads = amp.loss_and_grads(ids, targets)
        assert amp.step(amp_opt, grads)[0]
        assert abs(amp_loss - fp32_loss) < 5e-3, (step, amp_loss, fp32_loss)   # float16 forward: ~3 digits


def test_mixed_precision_needs_a_float32_master():
    import scratch.models
    from scratch.models import GPT2Config

    model = scratch.models.from_config(GPT2Config(vocab_size=16, n_positions=8, n_embd=8, n_layer=1, n_head=2),
                                       dtype="float64")
    with pytest.raises(ValueError, match="master model must be float32, got float64"):
        MixedPrecision(model)
