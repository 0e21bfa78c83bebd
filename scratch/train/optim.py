"""Optimizers and the helpers around a training step: AdamW, SGD with momentum, global-norm gradient clipping, the
warmup + cosine learning-rate schedule, gradient accumulation and weight-decay groups.

Parameters and gradients are dicts {name: array}. An optimizer updates the parameter arrays IN PLACE, so the model
holding them sees the new values, and keeps its state (moments) as arrays of each parameter's dtype on its backend.
The update rules are torch.optim's, operation for operation, so N steps here equal N steps there: AdamW is
Loshchilov & Hutter 2019 (decoupled weight decay) on Adam (Kingma & Ba 2015, with bias correction); SGD is
torch.optim.SGD (L2 weight decay added to the gradient, momentum, dampening, Nesterov).
Not here: AMSGrad, fused or multi-tensor kernels, ZeRO sharding, loss scaling for float16.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

import backends
from scratch.train.model_grads import trainable_parameters  # a dict, or a model's parameters by checkpoint name

__all__ = [
    "trainable_parameters", "EMBEDDING_NAMES", "default_decay_rule", "decay_groups",
    "Optimizer", "AdamW", "SGD", "clip_grad_norm", "warmup_cosine_lr", "GradientAccumulator",
]


# --- weight-decay groups -----------------------------------------------------------------------------------------

# Name components that mark an embedding table (GPT-2's wte/wpe, Llama's embed_tokens, BERT's three tables).
EMBEDDING_NAMES = ("wte", "wpe", "embed_tokens", "word_embeddings", "position_embeddings", "token_type_embeddings")


def default_decay_rule(name: str, param) -> bool:
    """True when weight decay applies: matrices (2-D and up) that are not embedding tables.

    So norms' gains and biases (1-D) and the embeddings (a component of the name in EMBEDDING_NAMES) are not decayed;
    the projections, the MLP weights, an untied lm_head and LoRA's A and B are. nanoGPT and llm.c decay every tensor
    of 2 or more dims, the (tied) embedding included; we leave embeddings out, as the issue asks: decay pulls every
    row of a table toward 0, including rows of tokens the batch never saw. Pass `decay_rule=lambda name, p: True`
    to decay everything, as a single torch parameter group does.
    """
    return param.ndim >= 2 and not any(part in EMBEDDING_NAMES for part in name.split("."))


def decay_groups(params, decay_rule: Callable = default_decay_rule) -> tuple[list[str], list[str]]:
    """(names decayed, names not decayed) under `decay_rule`, in the parameters' order -- for a log line."""
    params = trainable_parameters(params)
    decayed = [name for name, p in params.items() if decay_rule(name, p)]
    return decayed, [name for name in params if name not in set(decayed)]


# --- the optimizers --------------------------------------------------------------------------------------------

class Optimizer:
    """What AdamW and SGD share: the parameter dict, the learning rate `lr` (set it each step from a schedule), the
    decay flags, the step count, checks on the gradients, and state_dict / load_state_dict for an exact resume.

    Subclasses name their per-parameter state arrays in STATE_KEYS and implement `_update`.
    """

    STATE_KEYS: tuple[str, ...] = ()

    def __init__(self, params, lr: float, weight_decay: float, decay_rule: Callable):
        self.params = trainable_parameters(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: no parameters to optimize")
        if not lr >= 0.0:
            raise ValueError(f"{type(self).__name__}: lr must be >= 0, got {lr}")
        if not weight_decay >= 0.0:
            raise ValueError(f"{type(self).__name__}: weight_decay must be >= 0, got {weight_decay}")
        for name, param in self.params.items():
            xp = backends.namespace_of(param)
            floats = [getattr(xp, kind) for kind in ("float16", "float32", "float64") if hasattr(xp, kind)]
            if param.dtype not in floats:
                raise TypeError(f"{type(self).__name__}: parameter {name!r} has dtype {param.dtype}, not a float")
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.decayed = {name: bool(decay_rule(name, p)) for name, p in self.params.items()}
        self.step_count = 0
        # state arrays: zeros of the parameter's shape, dtype and backend (torch's first step reads zeros too)
        self.state = {name: {key: backends.namespace_of(p).zeros_like(p) for key in self.STATE_KEYS}
                      for name, p in self.params.items()}

    def _check_grads(self, grads: dict) -> None:
        missing = [name for name in self.params if name not in grads]
        unknown = [name for name in grads if name not in self.params]
        if missing or unknown:
            raise KeyError(f"{type(self).__name__}.step: grads must have one entry per parameter; "
                           f"missing {missing[:5]}, unknown {unknown[:5]}")
        for name, param in self.params.items():
            grad = grads[name]
            if tuple(grad.shape) != tuple(param.shape) or grad.dtype != param.dtype:
                raise ValueError(f"{type(self).__name__}.step: grad of {name!r} is {tuple(grad.shape)} {grad.dtype}, "
                                 f"the parameter is {tuple(param.shape)} {param.dtype}")

    def step(self, grads: dict) -> None:
        """One update of every parameter, in place, from grads {name: array} (same names, shapes and dtypes)."""
        self._check_grads(grads)
        self.step_count += 1
        for name, param in self.params.items():
            decay = self.weight_decay if self.decayed[name] else 0.0
            self._update(param, grads[name], self.state[name], decay)

    def _update(self, param, grad, state: dict, weight_decay: float) -> None:
        raise NotImplementedError

    def hyperparameters(self) -> dict:
        return {"lr": self.lr, "weight_decay": self.weight_decay}

    def state_dict(self) -> dict:
        """Everything a resume needs, on the host: step count, hyperparameters, decay flags and the state arrays as
        NumPy copies ({name: {key: array}})."""
        def host(array):
            return np.array(backends.of(array).to_numpy(array), copy=True)

        return {"optimizer": type(self).__name__, "step": self.step_count,
                "hyperparameters": self.hyperparameters(), "decayed": dict(self.decayed),
                "state": {name: {key: host(a) for key, a in s.items()} for name, s in self.state.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore a state_dict() into this optimizer (same parameter names and shapes): state arrays are copied into
        the existing buffers, hyperparameters and the step count are set, as torch's load_state_dict does."""
        if state.get("optimizer") != type(self).__name__:
            raise ValueError(f"load_state_dict: state is for {state.get('optimizer')!r}, not {type(self).__name__}")
        if set(state["state"]) != set(self.params):
            raise KeyError(f"load_state_dict: parameter names differ: saved {sorted(state['state'])[:5]}..., "
                           f"here {sorted(self.params)[:5]}...")
        if state["decayed"] != self.decayed:
            changed = [name for name in self.decayed if state["decayed"].get(name) != self.decayed[name]]
            raise ValueError(f"load_state_dict: weight-decay groups differ for {changed[:5]}")
        for name, buffers in self.state.items():
            for key, buffer in buffers.items():
                saved = state["state"][name][key]
                if tuple(saved.shape) != tuple(buffer.shape):
                    raise ValueError(f"load_state_dict: {name}.{key} is {tuple(saved.shape)}, "
                                     f"expected {tuple(buffer.shape)}")
                buffer[...] = backends.of(buffer).asarray(saved, dtype=buffer.dtype)
        for key, value in state["hyperparameters"].items():
            setattr(self, key, tuple(value) if isinstance(value, list) else value)
        self.step_count = int(state["step"])


class AdamW(Optimizer):
    """torch.optim.AdamW: Adam with bias correction and decoupled weight decay, per parameter (step t = 1, 2, ...):

        param *= 1 - lr * weight_decay                       (decoupled: not part of the gradient)
        m += (grad - m) * (1 - beta1)                        (m = beta1 m + (1 - beta1) grad, as torch's lerp)
        v  = beta2 v + (1 - beta2) grad^2
        param -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    weight_decay applies to the parameters `decay_rule` accepts (default: matrices that are not embeddings).
    Defaults are torch's. State: exp_avg (m) and exp_avg_sq (v), each like its parameter.
    """

    STATE_KEYS = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, decay_rule: Callable = default_decay_rule):
        beta1, beta2 = betas
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"AdamW: betas must be in [0, 1), got {betas}")
        if not eps >= 0.0:
            raise ValueError(f"AdamW: eps must be >= 0, got {eps}")
        super().__init__(params, lr, weight_decay, decay_rule)
        self.betas = (float(beta1), float(beta2))
        self.eps = float(eps)

    def hyperparameters(self) -> dict:
        return {**super().hyperparameters(), "betas": list(self.betas), "eps": self.eps}

    def _update(self, param, grad, state, weight_decay):
        beta1, beta2 = self.betas
        m, v = state["exp_avg"], state["exp_avg_sq"]
        if weight_decay != 0.0:
            param *= 1.0 - self.lr * weight_decay
        delta = grad - m
        delta *= 1.0 - beta1
        m += delta                                            # m.lerp_(grad, 1 - beta1)
        v *= beta2
        square = grad * (1.0 - beta2)
        square *= grad
        v += square                                           # v.mul_(beta2).addcmul_(grad, grad, 1 - beta2)
        bias_correction1 = 1.0 - beta1 ** self.step_count     # Python floats, as torch computes them
        bias_correction2 = 1.0 - beta2 ** self.step_count
        step_size = self.lr / bias_correction1
        xp = backends.namespace_of(v)
        denom = xp.sqrt(v)
        denom /= bias_correction2 ** 0.5
        denom += self.eps
        update = m * (-step_size)
        update /= denom
        param += update                                       # param.addcdiv_(m, denom, value=-step_size)


class SGD(Optimizer):
    """torch.optim.SGD: stochastic gradient descent with optional momentum, dampening and Nesterov momentum:

        g = grad + weight_decay * param                      (L2 decay, coupled with the gradient, as torch)
        buf = g on the first step, else momentum * buf + (1 - dampening) * g
        g = g + momentum * buf if nesterov else buf          (only when momentum != 0)
        param -= lr * g

    weight_decay applies to the parameters `decay_rule` accepts. State: momentum_buffer (when momentum != 0).
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False, decay_rule: Callable = default_decay_rule):
        if not momentum >= 0.0:
            raise ValueError(f"SGD: momentum must be >= 0, got {momentum}")
        if nesterov and (momentum <= 0.0 or dampening != 0.0):
            raise ValueError(f"SGD: nesterov needs momentum > 0 and dampening 0, got {momentum} and {dampening}")
        self.STATE_KEYS = ("momentum_buffer",) if momentum != 0.0 else ()
        super().__init__(params, lr, weight_decay, decay_rule)
        self.momentum, self.dampening, self.nesterov = float(momentum), float(dampening), bool(nesterov)

    def hyperparameters(self) -> dict:
        return {**super().hyperparameters(), "momentum": self.momentum, "dampening": self.dampening,
                "nesterov": self.nesterov}

    def _update(self, param, grad, state, weight_decay):
        if weight_decay != 0.0:
            grad = grad + weight_decay * param                # grad.add(param, alpha=weight_decay)
        if self.momentum != 0.0:
            buf = state["momentum_buffer"]
            if self.step_count == 1:
                buf[...] = grad                               # torch: buf = grad.clone() on the first step
            else:
                buf *= self.momentum
                buf += grad * (1.0 - self.dampening)          # buf.mul_(momentum).add_(grad, alpha=1 - dampening)
            grad = grad + self.momentum * buf if self.nesterov else buf
        param += grad * (-self.lr)                            # param.add_(grad, alpha=-lr)


# --- clipping, schedule, accumulation ----------------------------------------------------------------------------

def clip_grad_norm(grads: dict, max_norm: float):
    """Scale every gradient, in place, by min(1, max_norm / (total + 1e-6)), total = the L2 norm of all gradients
    seen as one vector: torch.nn.utils.clip_grad_norm_. Returns total (0-d array, float32 at least, the norm BEFORE
    clipping) without reading it back to the host; a NaN/inf total makes the gradients NaN, as torch's default."""
    if not grads:
        raise ValueError("clip_grad_norm: no gradients")
    arrays = list(grads.values())
    xp = backends.namespace_of(*arrays)
    wide = xp.float64 if any(g.dtype == xp.float64 for g in arrays) else xp.float32
    norms = []
    for g in arrays:                                          # one norm per tensor, then the norm of the norms
        g_wide = g if g.dtype == wide else xp.astype(g, wide)
        norms.append(xp.sqrt(xp.sum(g_wide * g_wide)))
    stacked = xp.stack(norms)                                 # (number of tensors,)
    total = xp.asarray(xp.sqrt(xp.sum(stacked * stacked)))   # 0-d array (NumPy would give a scalar)
    coef = max_norm / (total + 1e-6)
    coef = xp.minimum(coef, xp.ones_like(coef))               # multiplying by 1.0 avoids a host-side `if`
    for g in arrays:
        g *= xp.astype(coef, g.dtype)
    return total


def warmup_cosine_lr(step: int, max_lr: float, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0) -> float:
    """The learning rate at `step` (0-based): a linear warmup, then a half cosine from max_lr down to min_lr.

        step < warmup_steps:           max_lr * (step + 1) / warmup_steps
        warmup_steps <= step < total:  min_lr + (max_lr - min_lr) * (1 + cos(pi * p)) / 2,
                                       p = (step - warmup_steps) / (total_steps - warmup_steps)
        step >= total_steps:           min_lr

    The warmup is the line through 0 at step -1 (llm.c's form), so step 0 already learns and step warmup_steps - 1
    reaches max_lr; the cosine (Loshchilov & Hutter 2017, without restarts) starts at max_lr and reaches min_lr at
    total_steps, after which the rate stays at min_lr (as nanoGPT's get_lr).
    """
    if not (0 <= warmup_steps <= total_steps):
        raise ValueError(f"warmup_cosine_lr: need 0 <= warmup_steps <= total_steps, got {warmup_steps}, {total_steps}")
    if step < 0:
        raise ValueError(f"warmup_cosine_lr: step must be >= 0, got {step}")
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)       # 0 .. 1
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


class GradientAccumulator:
    """Sums the gradients of several micro-batches, so a large batch can be processed in pieces.

        acc = GradientAccumulator()
        for micro_batch in pieces:
            loss, grads = ...; acc.add(grads)              # or acc.add(grads, weight=n_tokens)
        opt.step(acc.take())                               # the weighted mean; the accumulator starts over

    With equal weights the mean is the gradient of the mean of the micro-batch losses -- what torch gives when each
    micro-batch's loss is divided by their number before backward(). When micro-batches hold different numbers of
    target tokens, weight each by its count: the result is then the gradient of the mean over all tokens.
    """

    def __init__(self):
        self.sums: dict = {}
        self.total_weight = 0.0

    def add(self, grads: dict, weight: float = 1.0) -> None:
        """Add weight * grads (in place after the first call; the first grads are copied, never aliased)."""
        if not weight > 0.0:
            raise ValueError(f"GradientAccumulator.add: weight must be > 0, got {weight}")
        if not self.sums:
            self.sums = {name: (backends.namespace_of(g).astype(g, g.dtype) if weight == 1.0 else g * weight)
                         for name, g in grads.items()}                  # astype copies by default
        else:
            if set(grads) != set(self.sums):
                raise KeyError(f"GradientAccumulator.add: names differ from the first micro-batch's: "
                               f"{sorted(set(grads) ^ set(self.sums))[:5]}")
            for name, g in grads.items():
                self.sums[name] += g if weight == 1.0 else g * weight
        self.total_weight += weight

    def take(self, average: bool = True) -> dict:
        """The accumulated gradients -- divided by the total weight (average=True) or summed -- and a fresh start."""
        if not self.sums:
            raise ValueError("GradientAccumulator.take: nothing was added")
        grads, total = self.sums, self.total_weight
        if average and total != 1.0:
            for g in grads.values():
                g *= 1.0 / total
        self.sums, self.total_weight = {}, 0.0
        return grads
