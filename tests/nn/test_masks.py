"""scratch.nn.masks: the causal mask with a cache offset, padding masks and position ids for left-padded batches."""
from __future__ import annotations

import numpy as np
import pytest

from scratch.nn.masks import causal_mask, causal_padding_mask, padding_mask, position_ids_from_attention_mask


def test_causal_mask_with_cache_offset(backend):
    xp = backend.xp
    offset_mask = backend.to_numpy(causal_mask(2, 5, xp))
    # queries at absolute positions 3 and 4 against keys 0..4
    assert offset_mask.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    assert np.array_equal(backend.to_numpy(causal_mask(4, 4, xp)), np.tril(np.ones((4, 4), bool)))
    assert backend.to_numpy(causal_mask(1, 6, xp)).all()        # one decoding step sees every key
    assert causal_mask(3, 7, xp).dtype == xp.bool
    with pytest.raises(ValueError, match="T=5, S=4"):
        causal_mask(5, 4, xp)


def test_left_padding_masks_and_positions(backend):
    mask_host = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=np.int64)
    mask = backend.asarray(mask_host)
    pad = padding_mask(mask)
    assert tuple(pad.shape) == (2, 1, 1, 5) and pad.dtype == backend.xp.bool
    both = backend.to_numpy(causal_padding_mask(mask, 5))
    assert both.shape == (2, 1, 5, 5)
    expected = np.tril(np.ones((5, 5), bool)) & mask_host.astype(bool)[:, None, None, :]
    assert np.array_equal(both, expected)
    assert not both[0, 0, 0].any()                                 # a padding query sees nothing -> zero output
    positions = position_ids_from_attention_mask(mask)
    assert positions.dtype == backend.xp.int64
    assert backend.to_numpy(positions).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    # decoding one more token: the mask grows by one column, the new position is the last column
    longer = backend.asarray(np.concatenate([mask_host, np.ones((2, 1), np.int64)], axis=1))
    assert backend.to_numpy(position_ids_from_attention_mask(longer)[:, -1:]).tolist() == [[3], [5]]
    assert tuple(causal_padding_mask(longer, 1).shape) == (2, 1, 1, 6)


def test_causal_mask_is_built_in_the_namespace_given(backend):
    """The mask depends on no array, so it takes the namespace: the result is an array of that backend."""
    import backends
    assert backends.of(causal_mask(2, 3, backend.xp)) is backend
