"""The shared decoder plumbing: the vocabulary matrix's fast (C, V) layout against the plain (V, C) one it stands in
for, alone (hypothesis) and inside GPT-2 and Llama; the input checks every model and generation share."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import backends
import scratch.models
from scratch.models import GPT2Config, LlamaConfig
from scratch.models.decoder import TransposedVocabMatrix, VocabMatrix, vocab_matrix
from scratch.models.inputs import check_ids_in_range, check_length

# One row takes BLAS's matrix-vector kernel, whose summation order depends on the layout: float32 rounding apart.
RTOL, ATOL = 1e-5, 1e-5


@pytest.mark.parametrize("backend_name", backends.available())
@given(V=st.integers(1, 200), C=st.integers(1, 48), B=st.integers(1, 3), T=st.integers(1, 9),
       seed=st.integers(0, 2 ** 16))
def test_transposed_layout_computes_what_the_plain_one_does(backend_name, V, C, B, T, seed):
    backend = backends.get(backend_name)
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((V, C)).astype(np.float32)                     # (V, C) as checkpoints store it
    ids = rng.integers(0, V, (B, T))
    x = rng.standard_normal((B, T, C)).astype(np.float32)
    plain = VocabMatrix(backend.asarray(weight))
    fast = vocab_matrix(backend, weight, "float32")
    assert isinstance(fast, TransposedVocabMatrix) and fast.shape == plain.shape == (V, C)
    np.testing.assert_array_equal(backend.to_numpy(fast.weight), weight)
    embedded = backend.to_numpy(fast.embed(backend.asarray(ids)))
    np.testing.assert_array_equal(embedded, backend.to_numpy(plain.embed(backend.asarray(ids))))   # a copy: exact
    np.testing.assert_array_equal(embedded, weight[ids])
    logits = backend.to_numpy(fast.logits(backend.asarray(x)))
    assert logits.shape == (B, T, V) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, backend.to_numpy(plain.logits(backend.asarray(x))), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(logits, x.astype(np.float64) @ weight.T.astype(np.float64), rtol=1e-4, atol=1e-4)


def test_the_embedding_is_row_major_and_the_matrix_owned():
    """The lookup hands the first block a row-major copy (a strided view would be summed in another order
    downstream), and a memory-mapped checkpoint matrix is copied into memory the model owns."""
    weight = np.arange(12, dtype=np.float32).reshape(4, 3)
    matrix = vocab_matrix(backends.get("numpy"), weight, "float32")
    assert matrix.columns.shape == (3, 4) and matrix.columns.flags.c_contiguous and matrix.columns.flags.owndata
    out = matrix.embed(np.array([[3, 0], [1, 1]]))
    assert out.flags.c_contiguous and out.shape == (2, 2, 3)


TINY = {
    "gpt2": GPT2Config(vocab_size=61, n_positions=32, n_embd=32, n_layer=2, n_head=4),
    "llama": LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32),
    "llama-tied": LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                              tie_word_embeddings=True),
}


def _plain(matrix):
    """The same matrix in the plain layout: a (V, C) contiguous copy."""
    return None if matrix is None else VocabMatrix(np.ascontiguousarray(matrix.weight))


@pytest.mark.parametrize("name", TINY)
def test_the_layout_does_not_change_the_models_logits(name):
    """GPT-2 and Llama (tied and untied) with every vocabulary matrix swapped for the plain layout: same logits,
    full forward and a cached decode (one row a step, the head's matrix-vector case)."""
    model = scratch.models.from_config(TINY[name], seed=3)
    swaps = {"token_embedding": _plain(model.token_embedding)}
    if hasattr(model, "untied_head"):
        assert (model.untied_head is None) == (name != "llama")
        swaps["untied_head"] = _plain(model.untied_head)
    plain = dataclasses.replace(model, **swaps)
    ids = np.random.default_rng(0).integers(0, 61, (2, 12))
    full = model(ids)
    np.testing.assert_allclose(plain(ids), full, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(plain.hidden_states(ids), model.hidden_states(ids))   # the layout is only at the ends
    cache = plain.new_cache(2, 12)
    steps = [plain(ids[:, :4], cache=cache)] + [plain(ids[:, t:t + 1], cache=cache) for t in range(4, 12)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=RTOL, atol=ATOL)


# --- the input checks every model (and generation) uses -----------------------------------------------------------

def test_ids_in_range_names_the_first_bad_id():
    check_ids_in_range(np.array([[0, 4]]), 5)
    with pytest.raises(ValueError, match=r"input_ids holds 5, outside \[0, 5\)"):
        check_ids_in_range(np.array([[0, 5, -1]]), 5)
    with pytest.raises(ValueError, match=r"token_type_ids holds -1, outside \[0, 2\)"):
        check_ids_in_range(np.array([[0, -1]]), 2, "token_type_ids")
    real = np.array([[False, True, True]])
    check_ids_in_range(np.array([[99, 1, 2]]), 5, where=real)        # padding is not checked
    with pytest.raises(ValueError, match="holds 7"):
        check_ids_in_range(np.array([[99, 7, 2]]), 5, where=real)


def test_length_check_says_what_is_cached_and_new():
    check_length(10, 6, 16, "GPT2")
    with pytest.raises(ValueError, match="GPT2: 10 cached . 7 new positions exceed the model's context of 16"):
        check_length(10, 7, 16, "GPT2")
    with pytest.raises(ValueError, match="BERT: 17 positions exceed the model's context of 16"):
        check_length(0, 17, 16, "BERT")
