"""The key/value cache for autoregressive decoding: preallocated buffers and one owner of the current length.

A decoder's keys and values for positions already processed never change, so each step computes K and V for the T
new tokens only, writes them at [length, length + T) of a buffer allocated once, and attends over [0, length + T).
This is the cache of Meta's reference Llama (slices written at start_pos), not a list grown by concatenation
(which copies the whole prefix every step). Not here: paged/block caches, quantised caches, sliding windows,
eviction. Left padding needs nothing from the cache: it stores every position; the model's (B, S) attention mask
says which are real.
"""
from __future__ import annotations

import numbers

__all__ = ["KVCache", "kv_bytes_per_token", "available_memory"]


class KVCache:
    """Per-layer K and V buffers, each (B, Hkv, S_max, D), and the number of positions filled, `length`.

    KVCache(xp, n_layers, batch_size, n_kv_heads, max_length, head_dim, dtype): `xp` is the namespace to allocate
    in; `dtype` a dtype of that namespace or a name ("float32"). Buffers are allocated once with xp.zeros.

    The protocol of one forward step over T new tokens (the rule that keeps `length` advancing exactly once):
      1. every layer i calls `k, v = cache.update(i, k_new, v_new)` with its (B, Hkv, T, D) keys and values; it
         writes positions [length, length + T) and returns views over [0, length + T) to attend over;
      2. after the last layer the model calls `cache.advance(T)`, which checks that every layer wrote exactly T
         positions this step and then moves `length` forward. `update` never moves it.
    Before a step, `cache.length` is the position offset of the new tokens (RoPE positions, causal mask offset).
    """

    def __init__(self, xp, n_layers: int, batch_size: int, n_kv_heads: int, max_length: int, head_dim: int,
                 dtype="float32"):
        for name, value in (("n_layers", n_layers), ("batch_size", batch_size), ("n_kv_heads", n_kv_heads),
                            ("max_length", max_length), ("head_dim", head_dim)):
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"KVCache: {name} must be a positive integer, got {value!r}")
        if isinstance(dtype, str):
            if not hasattr(xp, dtype):
                raise ValueError(f"KVCache: dtype {dtype!r} is not a dtype of {xp.__name__}")
            dtype = getattr(xp, dtype)
        self.xp = xp
        self.n_layers, self.n_kv_heads = int(n_layers), int(n_kv_heads)
        self.max_length, self.head_dim = int(max_length), int(head_dim)
        self.dtype = dtype
        shape = (batch_size, n_kv_heads, max_length, head_dim)      # (B, Hkv, S_max, D)
        _check_fits(xp, batch_size * max_length * self.bytes_per_token(),
                    f"a KV cache of {batch_size} row(s) x max_length={max_length:,} positions")
        self._k = [xp.zeros(shape, dtype=dtype) for _ in range(n_layers)]
        self._v = [xp.zeros(shape, dtype=dtype) for _ in range(n_layers)]
        self._length = 0
        self._step = None            # T of the step in progress (between the first update and advance), or None
        self._written = set()        # layers that wrote in the step in progress

    # --- one step ------------------------------------------------------------------------------------------------
    def update(self, layer: int, k_new, v_new):
        """Write (B, Hkv, T, D) keys/values at [length, length + T) of `layer`; return views over [0, length + T)."""
        T = self._check_write(layer, k_new, v_new)
        start, end = self._length, self._length + T
        self._k[layer][:, :, start:end, :] = k_new
        self._v[layer][:, :, start:end, :] = v_new
        self._step = T
        self._written.add(layer)
        return self._k[layer][:, :, :end, :], self._v[layer][:, :, :end, :]   # (B, Hkv, length + T, D) views

    def advance(self, T: int) -> None:
        """End the step: every layer must have written exactly T positions; `length` grows by T."""
        if self._step is None:
            raise ValueError(f"KVCache.advance({T}): no layer wrote since the last advance")
        if T != self._step:
            raise ValueError(f"KVCache.advance({T}): the layers wrote T={self._step} positions this step")
        if len(self._written) != self.n_layers:
            missing = sorted(set(range(self.n_layers)) - self._written)
            raise ValueError(f"KVCache.advance({T}): layers {missing} did not write this step")
        self._length += T
        self._step, self._written = None, set()

    def get(self, layer: int):
        """Views of `layer`'s filled keys and values, each (B, Hkv, length, D)."""
        return self._k[layer][:, :, :self._length, :], self._v[layer][:, :, :self._length, :]

    # --- state ---------------------------------------------------------------------------------------------------
    @property
    def length(self) -> int:
        """Positions filled in every layer (the only record of it; read-only -- change it with advance/crop/reset)."""
        return self._length

    @property
    def batch_size(self) -> int:
        return self._k[0].shape[0]

    @property
    def remaining(self) -> int:
        return self.max_length - self._length

    @property
    def nbytes(self) -> int:
        """Bytes held by all buffers (allocated capacity, not just the filled part)."""
        return 2 * self.n_layers * self.batch_size * self.n_kv_heads * self.max_length * self.head_dim * \
            _itemsize(self.xp, self.dtype)

    def bytes_per_token(self) -> int:
        """Bytes one more position costs for one sequence: 2 * n_layers * Hkv * D * bytes_per_element."""
        return kv_bytes_per_token(self.n_layers, self.n_kv_heads, self.head_dim, _itemsize(self.xp, self.dtype))

    def __repr__(self) -> str:
        return (f"KVCache(layers={self.n_layers}, B={self.batch_size}, Hkv={self.n_kv_heads}, "
                f"length={self._length}/{self.max_length}, D={self.head_dim}, "
                f"dtype={getattr(self.dtype, '__name__', self.dtype)})")

    # --- between steps -------------------------------------------------------------------------------------------
    def _between_steps(self, what: str) -> None:
        if self._step is not None:
            raise ValueError(f"KVCache.{what}: a step is in progress (layers {sorted(self._written)} wrote "
                             f"T={self._step}); call advance() first")

    def reorder(self, indices) -> None:
        """Beam search: row b of the new cache is row indices[b] of the old one, in every layer.

        indices: (B_new,) integers (array of this backend, or a list); B_new may differ from B (e.g. expanding one
        prompt into several beams). Only the `length` positions written so far are gathered and copied: a step
        costs what has been generated, not what max_length reserved (once they fill half of it, one gather of the
        whole buffer moves fewer bytes than a gather and a write back).
        """
        self._between_steps("reorder")
        xp = self.xp
        if not hasattr(indices, "shape"):
            indices = xp.asarray(indices, dtype=xp.int64)
        if indices.ndim != 1 or indices.shape[0] == 0:
            raise ValueError(f"KVCache.reorder: indices must be a non-empty 1-D array, "
                             f"got shape {tuple(indices.shape)}")
        if indices.shape[0] != self.batch_size:
            _check_fits(xp, int(indices.shape[0]) * self.max_length * self.bytes_per_token(),
                        f"KVCache.reorder to {int(indices.shape[0])} rows x max_length={self.max_length:,} positions")
        self._k = [self._gather_written(buf, indices) for buf in self._k]
        self._v = [self._gather_written(buf, indices) for buf in self._v]

    def _gather_written(self, buf, indices):
        """buf (B, Hkv, S_max, D) -> (B_new, Hkv, S_max, D) whose rows are buf's rows `indices` on [0, length)."""
        xp, written = self.xp, self._length
        if 2 * written >= buf.shape[2]:       # gathering the written part and writing it back would move more bytes
            return xp.take(buf, indices, axis=0)                           # than one copy of the whole buffer
        rows = xp.take(buf[:, :, :written, :], indices, axis=0)           # (B_new, Hkv, length, D), a copy
        if indices.shape[0] != buf.shape[0]:                                # a new batch size: new buffers
            # empty, not zeros: nothing past `length` is ever read, so the reserved part costs no writing either
            buf = xp.empty((indices.shape[0],) + tuple(buf.shape[1:]), dtype=buf.dtype)
        buf[:, :, :written, :] = rows
        return buf

    def crop(self, length: int) -> None:
        """Speculative decoding: forget positions >= length (0 <= length <= self.length). The data stays; later
        writes overwrite it."""
        self._between_steps("crop")
        if not isinstance(length, numbers.Integral) or not 0 <= length <= self._length:
            raise ValueError(f"KVCache.crop: length must be in 0..{self._length}, got {length!r}")
        self._length = int(length)

    def reset(self) -> None:
        """Empty the cache for a new sequence (buffers are kept, not zeroed: nothing past `length` is ever read)."""
        self._length = 0
        self._step, self._written = None, set()

    # --- checks -------------------------------------------------------------------------------------------------
    def _check_write(self, layer: int, k_new, v_new) -> int:
        """T of a write by `layer`, after checking its shapes, dtype, the room left and the one-write-per-step rule."""
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"KVCache.update: layer {layer} out of range 0..{self.n_layers - 1}")
        expected = (self.batch_size, self.n_kv_heads)
        if k_new.ndim != 4 or tuple(k_new.shape[:2]) != expected or k_new.shape[3] != self.head_dim:
            raise ValueError(f"KVCache.update: k_new shape {tuple(k_new.shape)} is not (B, Hkv, T, D) = "
                             f"({expected[0]}, {expected[1]}, T, {self.head_dim})")
        if tuple(v_new.shape) != tuple(k_new.shape):
            raise ValueError(f"KVCache.update: v_new shape {tuple(v_new.shape)} != k_new shape {tuple(k_new.shape)}")
        if k_new.dtype != self.dtype or v_new.dtype != self.dtype:
            raise TypeError(f"KVCache.update: k/v dtypes {k_new.dtype}/{v_new.dtype} differ from the cache's "
                            f"{self.dtype}")
        T = k_new.shape[2]
        if self._length + T > self.max_length:
            raise ValueError(f"KVCache.update: writing T={T} positions at length={self._length} exceeds "
                             f"max_length={self.max_length}")
        if self._step is not None and T != self._step:
            raise ValueError(f"KVCache.update: layer {layer} writes T={T} but this step writes T={self._step}; "
                             f"call advance() between steps")
        if layer in self._written:
            raise ValueError(f"KVCache.update: layer {layer} already wrote this step; call advance({self._step}) "
                             f"after the last layer")
        return T


def kv_bytes_per_token(n_layers: int, n_kv_heads: int, head_dim: int, bytes_per_element: int) -> int:
    """Cache memory for one token of one sequence: K and V (2) for every layer, kv head and head channel."""
    return 2 * n_layers * n_kv_heads * head_dim * bytes_per_element


def _itemsize(xp, dtype) -> int:
    """Bytes per element from the standard's finfo/iinfo (the standard has no `itemsize`)."""
    try:
        return xp.finfo(dtype).bits // 8
    except (TypeError, ValueError):
        return xp.iinfo(dtype).bits // 8


# --- memory --------------------------------------------------------------------------------------------------------

def available_memory(xp) -> int | None:
    """Bytes a new allocation in namespace `xp` can take now, or None when it cannot be told.

    CuPy: the device's free memory plus what CuPy's pool holds unused. Otherwise host memory: Linux's MemAvailable
    (free memory plus what the page cache would give back), lowered to a cgroup's limit (a container's) if tighter.
    """
    if xp.__name__.startswith("cupy"):
        free, _total = xp.cuda.runtime.memGetInfo()
        return int(free) + int(xp.get_default_memory_pool().free_bytes())
    available = None
    try:
        with open("/proc/meminfo", "rb") as handle:
            for line in handle:
                if line.startswith(b"MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        return None
    try:
        with open("/sys/fs/cgroup/memory.max", "rb") as limit, open("/sys/fs/cgroup/memory.current", "rb") as used:
            room = int(limit.read()) - int(used.read())           # "max" (no limit) fails int(): skipped
        available = room if available is None else min(available, room)
    except (OSError, ValueError):
        pass
    return available


def _check_fits(xp, nbytes: int, what: str) -> None:
    """ValueError before allocating `nbytes` that the memory available cannot hold (the allocation would fail, or
    swap and be killed, long after the call that asked for it)."""
    available = available_memory(xp)
    if available is not None and nbytes > available:
        raise ValueError(f"{what} needs {_gib(nbytes)} but only {_gib(available)} of memory is available")


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2 ** 30:.2f} GiB" if nbytes >= 2 ** 26 else f"{nbytes / 2 ** 20:.1f} MiB"
