"""`scratch parity`'s training rows: whole-model gradients agree across backends and with float64."""
from __future__ import annotations

import numpy as np

from scratch.models.parity import run_parity
from scratch.train.parity import gradient_checks


def test_gradient_rows_are_reported_and_pass():
    rows = [row for row in run_parity(["numpy", "strict"], extra_checks=gradient_checks())
            if "gradients" in row.component]
    assert {(row.component, row.backend) for row in rows} == {
        (name, compared) for name in ("gpt2 gradients (all weights)", "llama gradients (all weights)")
        for compared in ("strict", "float32")}
    assert all(row.passed and row.max_rel <= row.tolerance for row in rows), rows


def test_a_gradient_check_sees_every_weight():
    import backends
    check = gradient_checks()[1]
    be = backends.get("numpy")
    flat = check.run(be, "float64")
    from scratch.models.loader import from_config
    from scratch.models.parity import TINY_LLAMA
    from scratch.train import named_parameters
    sizes = sum(int(np.prod(p.shape)) for p in named_parameters(from_config(TINY_LLAMA, seed=1)).values())
    assert flat.shape == (sizes,) and np.abs(flat).max() > 0
