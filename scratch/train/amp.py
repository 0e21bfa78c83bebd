"""Mixed-precision training: float32 master weights, a float16 compute copy, and dynamic loss scaling.

Micikevicius et al. 2018, "Mixed Precision Training": run the forward and backward passes in float16 (half the
memory traffic, fast tensor cores on a GPU) while the optimizer updates a float32 "master" copy of the weights, since
an update lr * grad is often below float16's resolution next to the weight. Small gradients underflow float16
(smallest normal 6.1e-5), so the loss is multiplied by a scale S before the backward pass and the float32 gradients
are divided by S again ("unscaled") before clipping and the update. The scale is dynamic, with the rules and defaults
of torch.amp.GradScaler: a step whose gradients hold an inf or NaN is skipped and S halves; after growth_interval
finite steps in a row, S doubles. On NumPy this is for correctness; on CuPy it is for speed. Not here: bfloat16
autocast (bfloat16 keeps float32's range and needs no scaling), per-op precision lists, fused kernels.
"""
from __future__ import annotations

import math

import numpy as np

import backends
import scratch.models
from scratch.train import model_grads
from scratch.train.optim import clip_grad_norm

__all__ = ["GradScaler", "MixedPrecision", "all_finite"]


def all_finite(grads: dict) -> bool:
    """True when every gradient entry is finite: one boolean read back from the device for all of them."""
    arrays = list(grads.values())
    xp = backends.namespace_of(*arrays)
    finite = [xp.all(xp.isfinite(g)) for g in arrays]          # 0-d booleans, still on the device
    return bool(xp.all(xp.stack(finite)))


class GradScaler:
    """Dynamic loss scaling, step for step as torch.amp.GradScaler (same defaults, same float32 scale):

        loss, grads = train.loss_and_grads(model, x, y, loss_scale=scaler.get_scale())   # grads of S * loss
        scaler.unscale_(grads)              # grads *= 1/S in place, and note whether any was inf/NaN
        train.clip_grad_norm(grads, 1.0)    # clip AFTER unscaling: the threshold is in true gradient units
        scaler.step(optimizer, grads)       # optimizer.step(grads) only if every gradient was finite
        scaler.update()                     # inf/NaN: S *= backoff_factor, growth tracker back to 0;
                                            # else the tracker counts up, and at growth_interval S *= growth_factor

    unscale_ is optional: step() unscales first if it was not called. The scale is kept as a float32 number, as
    torch keeps it in a float32 tensor, so a growth that would overflow float32 is not applied.
    """

    def __init__(self, init_scale: float = 2.0**16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, enabled: bool = True):
        if not growth_factor > 1.0:
            raise ValueError(f"GradScaler: growth_factor must be > 1, got {growth_factor}")
        if not 0.0 < backoff_factor < 1.0:
            raise ValueError(f"GradScaler: backoff_factor must be in (0, 1), got {backoff_factor}")
        if not (isinstance(growth_interval, int) and growth_interval > 0):
            raise ValueError(f"GradScaler: growth_interval must be a positive int, got {growth_interval!r}")
        if not (math.isfinite(init_scale) and init_scale > 0.0):
            raise ValueError(f"GradScaler: init_scale must be a positive finite number, got {init_scale}")
        self.growth_factor, self.backoff_factor = float(growth_factor), float(backoff_factor)
        self.growth_interval, self.enabled = growth_interval, bool(enabled)
        self._scale = np.float32(init_scale)
        self._growth_tracker = 0          # finite steps in a row since the last growth or backoff
        self._found_inf: bool | None = None   # this iteration's verdict, set by unscale_, consumed by update

    def get_scale(self) -> float:
        """The current scale S (1.0 when disabled)."""
        return float(self._scale) if self.enabled else 1.0

    @property
    def growth_tracker(self) -> int:
        return self._growth_tracker

    def unscale_(self, grads: dict) -> bool:
        """Multiply every gradient by 1/S in place and return whether any entry was inf or NaN.

        As torch: 1/S is computed in float64 and rounded to float32, the check reads the still-scaled values, and
        a second call before update() is an error (it would divide twice)."""
        if self._found_inf is not None:
            raise RuntimeError("GradScaler.unscale_ was already called since the last update()")
        if not self.enabled:
            self._found_inf = False
            return False
        self._found_inf = not all_finite(grads)
        inv_scale = float(np.float32(1.0 / np.float64(self._scale)))   # torch: scale.double().reciprocal().float()
        for g in grads.values():
            g *= backends.namespace_of(g).asarray(inv_scale, dtype=g.dtype)
        return self._found_inf

    def step(self, optimizer, grads: dict) -> bool:
        """optimizer.step(grads) unless the gradients held an inf/NaN; unscales first if unscale_ was not called.
        Returns whether the step was taken."""
        if self._found_inf is None:
            self.unscale_(grads)
        if self._found_inf:
            return False
        optimizer.step(grads)
        return True

    def update(self) -> None:
        """Adjust the scale after a step (torch's _amp_update_scale_): back off on inf/NaN, grow after
        growth_interval finite steps in a row. Needs this iteration's unscale_ (or step)."""
        if self._found_inf is None:
            raise RuntimeError("GradScaler.update: no inf check was recorded (call unscale_ or step first)")
        found_inf, self._found_inf = self._found_inf, None
        if not self.enabled:
            return
        if found_inf:
            self._scale = np.float32(np.float64(self._scale) * self.backoff_factor)
            self._growth_tracker = 0
            return
        successful = self._growth_tracker + 1
        if successful == self.growth_interval:
            with np.errstate(over="ignore"):
                grown = np.float32(np.float64(self._scale) * self.growth_factor)
            if np.isfinite(grown):                                # float32 overflow: keep the old scale
                self._scale = grown
            self._growth_tracker = 0
        else:
            self._growth_tracker = successful

    def state_dict(self) -> dict:
        """JSON-ready state, with torch's key names."""
        return {"scale": float(self._scale), "growth_factor": self.growth_factor,
                "backoff_factor": self.backoff_factor, "growth_interval": self.growth_interval,
                "_growth_tracker": self._growth_tracker, "enabled": self.enabled}

    def load_state_dict(self, state: dict) -> None:
        self._scale = np.float32(state["scale"])
        self.growth_factor, self.backoff_factor = float(state["growth_factor"]), float(state["backoff_factor"])
        self.growth_interval, self._growth_tracker = int(state["growth_interval"]), int(state["_growth_tracker"])
        self.enabled = bool(state.get("enabled", True))
        self._found_inf = None


class MixedPrecision:
    """A float32 model (the master weights the optimizer steps), its float16 compute copy, and a GradScaler.

        amp = MixedPrecision(model)                       # model: float32; amp.compute_model: float16 copy
        opt = train.AdamW(amp.master, lr=3e-4)            # the optimizer steps the float32 arrays
        loss, grads = amp.loss_and_grads(input_ids, targets)   # float16 forward/backward of S * loss,
                                                          # gradients widened to float32 (still scaled)
        stepped, norm = amp.step(opt, grads, max_grad_norm=1.0)  # unscale, clip, step, refresh the copy, update S

    `parameters(model)` and `loss_and_grads(model, ...)` default to model_grads' (the whole-model gradients);
    pass others to train something else the same way.
    """

    def __init__(self, model, compute_dtype: str = "float16", scaler: GradScaler | None = None,
                 parameters=None, loss_and_grads=None, compute_model=None):
        if model.dtype != "float32":
            raise ValueError(f"MixedPrecision: the master model must be float32, got {model.dtype}")
        if compute_dtype != "float16":
            raise ValueError(f"MixedPrecision: compute_dtype must be 'float16', got {compute_dtype!r}")
        parameters = parameters or model_grads.named_parameters
        loss_and_grads = loss_and_grads or model_grads.loss_and_grads
        self.model = model
        self.scaler = scaler if scaler is not None else GradScaler()
        self._parameters, self._loss_and_grads = parameters, loss_and_grads
        if compute_model is None:
            # a model of the same config in float16; its random weights are overwritten by refresh() below
            compute_model = scratch.models.from_config(model.config, backend=model.backend, seed=0,
                                                       dtype=compute_dtype)
        self.compute_model = compute_model
        self.master = parameters(model)                  # {name: float32 array}: what the optimizer updates
        self.compute = parameters(compute_model)         # {name: float16 array}: what forward/backward read
        if set(self.master) != set(self.compute):
            raise ValueError("MixedPrecision: the compute model's parameters do not match the master's")
        self.refresh()

    def refresh(self) -> None:
        """Copy the master weights into the float16 compute model (rounding to nearest)."""
        for name, master in self.master.items():
            target = self.compute[name]
            target[...] = backends.namespace_of(master).astype(master, target.dtype)

    def loss_and_grads(self, input_ids, targets, checkpointing: bool = False):
        """(loss, grads): the float16 model's loss (a float, unscaled) and the gradients of S * loss, widened to
        float32 and keyed like `master` -- to be summed over micro-batches, then passed to step()."""
        # an overflow here is expected and handled (the scaler skips the step): NumPy need not warn about it
        with np.errstate(over="ignore", invalid="ignore"):
            loss, grads = self._loss_and_grads(self.compute_model, input_ids, targets, checkpointing=checkpointing,
                                               loss_scale=self.scaler.get_scale())
        xp = backends.namespace_of(*grads.values())
        return loss, {name: xp.astype(g, xp.float32) for name, g in grads.items()}

    def step(self, optimizer, grads: dict, max_grad_norm: float | None = None):
        """Unscale, (clip), step the master weights and refresh the float16 copy -- or skip all of it when a
        gradient is inf/NaN -- then update the scale. Returns (stepped, grad_norm before clipping or None)."""
        found_inf = self.scaler.unscale_(grads)
        norm = None
        if not found_inf and max_grad_norm is not None:
            norm = clip_grad_norm(grads, max_grad_norm)
        stepped = self.scaler.step(optimizer, grads)
        if stepped:
            self.refresh()
        self.scaler.update()
        return stepped, norm
