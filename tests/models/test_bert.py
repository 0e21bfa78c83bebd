"""BERT against transformers: tiny random BertModel / BertForMaskedLM saved with save_pretrained, loaded from the
safetensors file, compared in float32 (hidden states, pooler output, masked-LM logits) on every backend, with
padding and token types. Also: checkpoint name variants, named load errors, random init, input checks, and a
hypothesis property that padding never leaks into real tokens."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import transformers
from hypothesis import given
from hypothesis import strategies as st

import backends
from scratch.models import bert
from scratch.models.config import BertConfig
from scratch.models.safetensors import load_folder

# float32 against float32, matmuls summed in another order: measured <= 1.9e-6 on outputs up to ~4.6 (hidden states,
# pooler, logits); so 1e-5.
ATOL = 1e-5
# initializer_range 0.1, not BERT's 0.02: with 0.02 the pre-activations are so small that the tanh GELU and eps 1e-5
# move the logits by only ~2e-5, barely past ATOL; at 0.1 each is off by 2e-4 .. 1e-3, so the comparison tells them
# apart with room to spare (test_wrong_variants_are_caught proves it).
HF_KW = dict(vocab_size=200, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
             max_position_embeddings=32, type_vocab_size=3, initializer_range=0.1)
TINY = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                  max_position_embeddings=16, type_vocab_size=2)


def _inputs():
    """A padded batch: row 0 full, row 1 padded after 7 tokens, row 2 after 3; three segment ids in use."""
    rng = np.random.default_rng(1)
    ids = rng.integers(0, HF_KW["vocab_size"], (3, 11))
    types = rng.integers(0, HF_KW["type_vocab_size"], (3, 11))
    mask = np.ones((3, 11), dtype=np.int64)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    return ids, types, mask


def _save(cls, folder, **overrides):
    torch.manual_seed(0)
    model = cls(transformers.BertConfig(**{**HF_KW, **overrides})).eval()
    # untrained LayerNorms are exactly ones/zeros; perturb them so a swapped weight/bias would show
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    ids, types, mask = _inputs()
    with torch.no_grad():
        args = dict(attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types))
        base = model if cls is transformers.BertModel else model.bert
        out = base(torch.tensor(ids), **args)
        ref = {"hidden": out.last_hidden_state.numpy(),
               "hidden_plain": base(torch.tensor(ids)).last_hidden_state.numpy()}
        if cls is transformers.BertModel:
            ref["pooler"] = out.pooler_output.numpy()
        else:
            ref["logits"] = model(torch.tensor(ids), **args).logits.numpy()
    return ref


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{"BertModel" | "BertForMaskedLM" | "untied": (folder, transformers outputs)}, built once per module."""
    out = {}
    for key, cls, overrides in (("BertModel", transformers.BertModel, {}),
                                ("BertForMaskedLM", transformers.BertForMaskedLM, {}),
                                ("untied", transformers.BertForMaskedLM, {"tie_word_embeddings": False})):
        folder = tmp_path_factory.mktemp(key)
        out[key] = (folder, _save(cls, folder, **overrides))
    return out


def _load(folder, backend, **kwargs):
    config = BertConfig.from_hf(json.loads((folder / "config.json").read_text()))
    return bert.from_weights(config, load_folder(folder), backend, **kwargs)


def _host(backend, array):
    backend.check_owned(array)                  # MixedBackendError naming the array's kind if it left the backend
    assert array.dtype == backend.xp.float32
    return backend.to_numpy(array)


# --- exactness against transformers -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["BertModel", "BertForMaskedLM", "untied"])
def test_matches_transformers(saved, backend, kind):
    folder, ref = saved[kind]
    model = _load(folder, backend)
    ids, types, mask = _inputs()
    out = model(ids, attention_mask=mask, token_type_ids=types)
    hidden = _host(backend, out.last_hidden_state)
    assert hidden.shape == (3, 11, 64)
    np.testing.assert_allclose(hidden, ref["hidden"], rtol=0, atol=ATOL)
    if kind == "BertModel":
        assert model.has_pooler and not model.has_mlm_head and out.logits is None
        np.testing.assert_allclose(_host(backend, out.pooler_output), ref["pooler"], rtol=0, atol=ATOL)
    else:
        assert model.has_mlm_head and not model.has_pooler and out.pooler_output is None
        logits = _host(backend, out.logits)
        assert logits.shape == (3, 11, 200)
        np.testing.assert_allclose(logits, ref["logits"], rtol=0, atol=ATOL)


def test_defaults_match_transformers(saved, backend):
    """No attention_mask means no padding; no token_type_ids means segment 0 everywhere."""
    folder, ref = saved["BertModel"]
    ids, _, _ = _inputs()
    out = _load(folder, backend)(ids)
    np.testing.assert_allclose(_host(backend, out.last_hidden_state), ref["hidden_plain"], rtol=0, atol=ATOL)


@pytest.mark.parametrize("change", [dict(hidden_act="gelu_new"), dict(layer_norm_eps=1e-5)])
def test_wrong_variants_are_caught(saved, change):
    """The comparison has teeth: GPT-2's tanh GELU or the common eps 1e-5 in place of BERT's exact GELU and 1e-12
    each move the logits by more than ATOL."""
    folder, ref = saved["BertForMaskedLM"]
    config = dataclasses.replace(BertConfig.from_hf(json.loads((folder / "config.json").read_text())), **change)
    ids, types, mask = _inputs()
    out = bert.from_weights(config, load_folder(folder), "numpy")(ids, attention_mask=mask, token_type_ids=types)
    assert np.abs(out.logits - ref["logits"]).max() > ATOL


def test_untied_decoder_is_kept(saved):
    model = _load(saved["untied"][0], "numpy")
    assert model.weights.mlm_decoder_w is not None and model.weights.mlm_decoder_w.shape == (64, 200)
    assert _load(saved["BertForMaskedLM"][0], "numpy").weights.mlm_decoder_w is None   # tied: no copy


@pytest.mark.parametrize("act", ["gelu_new", "relu"])
def test_other_activations_match_transformers(tmp_path, act):
    ref = _save(transformers.BertForMaskedLM, tmp_path, hidden_act=act)
    ids, types, mask = _inputs()
    out = _load(tmp_path, "numpy")(ids, attention_mask=mask, token_type_ids=types)
    np.testing.assert_allclose(out.logits, ref["logits"], rtol=0, atol=ATOL)


def test_backend_arrays_in_equal_host_arrays_in(saved, backend):
    model = _load(saved["BertForMaskedLM"][0], backend)
    ids, types, mask = _inputs()
    host = model(ids, attention_mask=mask, token_type_ids=types)
    moved = model(backend.asarray(ids, dtype="int64"), attention_mask=backend.asarray(mask, dtype="int64"),
                  token_type_ids=backend.asarray(types, dtype="int32"))
    np.testing.assert_array_equal(backend.to_numpy(moved.logits), backend.to_numpy(host.logits))
    boolean = model(ids.tolist(), attention_mask=mask.astype(bool), token_type_ids=types)
    np.testing.assert_array_equal(backend.to_numpy(boolean.logits), backend.to_numpy(host.logits))


def test_generic_loader_builds_bert(saved, backend):
    """scratch.models.load reads config.json, picks bert by "architectures", and gives the same numbers."""
    import scratch.models

    for kind in ("BertModel", "BertForMaskedLM"):
        folder, ref = saved[kind]
        model = scratch.models.load(folder, backend=backend)
        assert isinstance(model, bert.Bert)
        ids, types, mask = _inputs()
        out = model(ids, attention_mask=mask, token_type_ids=types)
        np.testing.assert_allclose(_host(backend, out.last_hidden_state), ref["hidden"], rtol=0, atol=ATOL)
    assert isinstance(scratch.models.from_config(TINY, backend=backend, seed=0), bert.Bert)


# --- checkpoint names ---------------------------------------------------------------------------------------------

def test_prefix_is_optional(saved):
    """BertForMaskedLM's tensors without "bert.", and BertModel's with it, load to the same model."""
    ids, types, mask = _inputs()
    for kind in ("BertModel", "BertForMaskedLM"):
        folder, ref = saved[kind]
        weights = load_folder(folder)
        if kind == "BertModel":
            renamed = {"bert." + name: array for name, array in weights.items()}
        else:
            renamed = {name.removeprefix("bert."): array for name, array in weights.items()}
        assert renamed.keys() != weights.keys()
        config = BertConfig.from_hf(json.loads((folder / "config.json").read_text()))
        out = bert.from_weights(config, renamed, "numpy")(ids, attention_mask=mask, token_type_ids=types)
        np.testing.assert_allclose(out.last_hidden_state, ref["hidden"], rtol=0, atol=ATOL)


def test_legacy_names_load(saved):
    """TensorFlow-era names (LayerNorm gamma/beta), the bias under the decoder's name, a saved tied decoder, and
    extra tensors (next-sentence head, position_ids buffer) all load to the same logits."""
    folder, ref = saved["BertForMaskedLM"]
    weights = load_folder(folder)
    legacy = {}
    for name, array in weights.items():
        name = name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        legacy[name.replace("cls.predictions.bias", "cls.predictions.decoder.bias")] = array
    legacy["cls.predictions.decoder.weight"] = weights["bert.embeddings.word_embeddings.weight"].copy()
    legacy["cls.seq_relationship.weight"] = np.zeros((2, 64), dtype=np.float32)
    legacy["bert.embeddings.position_ids"] = np.arange(32)[None]
    config = BertConfig.from_hf(json.loads((folder / "config.json").read_text()))
    model = bert.from_weights(config, legacy, "numpy")
    assert model.weights.mlm_decoder_w is None       # equal to the embeddings, so recognised as tied
    ids, types, mask = _inputs()
    out = model(ids, attention_mask=mask, token_type_ids=types)
    np.testing.assert_allclose(out.logits, ref["logits"], rtol=0, atol=ATOL)


def test_load_errors_name_the_tensor(saved):
    folder, _ = saved["BertForMaskedLM"]
    weights = load_folder(folder)
    config = BertConfig.from_hf(json.loads((folder / "config.json").read_text()))
    name = "bert.encoder.layer.1.attention.self.key.bias"
    missing = {k: v for k, v in weights.items() if k != name}
    with pytest.raises(ValueError, match="encoder.layer.1.attention.self.key.bias"):
        bert.from_weights(config, missing, "numpy")
    no_bias = {k: v for k, v in weights.items() if k != "cls.predictions.bias"}
    with pytest.raises(ValueError, match="cls.predictions.bias"):
        bert.from_weights(config, no_bias, "numpy")
    wrong = dict(weights)
    wrong["bert.encoder.layer.0.intermediate.dense.weight"] = np.zeros((64, 128), dtype=np.float32)  # transposed
    with pytest.raises(ValueError, match=r"intermediate.dense.weight.*\(64, 128\).*\(128, 64\)"):
        bert.from_weights(config, wrong, "numpy")
    with pytest.raises(ValueError, match="more encoder layers"):
        bert.from_weights(BertConfig.from_hf({**config.to_hf(), "num_hidden_layers": 1}), weights, "numpy")
    with pytest.raises(ValueError, match="word_embeddings"):
        bert.from_weights(BertConfig.from_hf({**config.to_hf(), "vocab_size": 201}), weights, "numpy")


# --- random init --------------------------------------------------------------------------------------------------

def test_from_config_shapes_init_and_backends_agree(backend):
    model = bert.from_config(TINY, backend=backend, seed=3)
    out = model(np.array([[1, 2, 3, 4], [5, 6, 0, 0]]), attention_mask=np.array([[1, 1, 1, 1], [1, 1, 0, 0]]))
    assert _host(backend, out.last_hidden_state).shape == (2, 4, 32)
    assert _host(backend, out.pooler_output).shape == (2, 32)
    logits = _host(backend, out.logits)
    assert logits.shape == (2, 4, 50)
    w = model.weights
    np.testing.assert_array_equal(backend.to_numpy(w.layers[0].attn_ln_w), np.ones(32, dtype=np.float32))
    np.testing.assert_array_equal(backend.to_numpy(w.layers[1].fc_b), np.zeros(48, dtype=np.float32))
    std = float(np.std(backend.to_numpy(w.word_embeddings)))
    assert 0.015 < std < 0.025, std
    reference = bert.from_config(TINY, backend="numpy", seed=3)
    np.testing.assert_array_equal(backend.to_numpy(w.word_embeddings), reference.weights.word_embeddings)
    np.testing.assert_allclose(logits, reference(np.array([[1, 2, 3, 4], [5, 6, 0, 0]]),
                                                 attention_mask=np.array([[1, 1, 1, 1], [1, 1, 0, 0]])).logits,
                               rtol=0, atol=1e-5)


def test_from_config_options():
    a, b = bert.from_config(TINY, seed=0), bert.from_config(TINY, seed=1)
    assert not np.array_equal(a.weights.word_embeddings, b.weights.word_embeddings)
    bare = bert.from_config(TINY, seed=0, pooler=False, mlm_head=False)
    out = bare(np.array([[1, 2, 3]]))
    assert out.pooler_output is None and out.logits is None
    assert "heads=none" in repr(bare)
    wide = bert.from_config(TINY, seed=0, dtype="float64")(np.array([[1, 2, 3]]))
    assert wide.last_hidden_state.dtype == np.float64 and wide.logits.dtype == np.float64
    half = bert.from_config(TINY, seed=0, dtype="float16")(np.array([[1, 2, 3]]))
    full = bert.from_config(TINY, seed=0)(np.array([[1, 2, 3]]))
    assert half.logits.dtype == np.float16 and half.pooler_output.dtype == np.float16
    # float16 keeps ~3 decimal digits; hidden states are O(1) after the final LayerNorm
    np.testing.assert_allclose(half.last_hidden_state, full.last_hidden_state, rtol=0, atol=1e-2)
    with pytest.raises(ValueError, match="int32"):
        bert.from_config(TINY, dtype="int32")
    with pytest.raises(TypeError, match="BertConfig"):
        bert.from_config("bert-base-uncased")


# --- input checks -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(input_ids=[[1, 2, 50]]), r"input_ids holds 50, outside \[0, 50\)"),
    (dict(input_ids=[[1, -2]]), r"input_ids holds -2"),
    (dict(input_ids=[1, 2, 3]), r"input_ids must be \(B, T\)"),
    (dict(input_ids=[[1.0, 2.0]]), "must hold integers"),
    (dict(input_ids=np.zeros((2, 0), dtype=np.int64)), "at least one token"),
    (dict(input_ids=[list(range(17))]), "BERT: 17 positions exceed the model's context of 16"),
    (dict(input_ids=[[1, 2]], token_type_ids=[[0, 2]]), r"token_type_ids holds 2, outside \[0, 2\)"),
    (dict(input_ids=[[1, 2]], token_type_ids=[[0, 1, 1]]), r"token_type_ids has shape \(1, 3\)"),
    (dict(input_ids=[[1, 2]], attention_mask=[[1]]), r"attention_mask has shape \(1, 1\)"),
    (dict(input_ids=[[1, 2]], attention_mask=[[1, 2]]), "attention_mask must hold 0/1"),
])
def test_bad_inputs_raise(kwargs, message):
    model = bert.from_config(TINY, seed=0)
    with pytest.raises(ValueError, match=message):
        model(**kwargs)


def test_arrays_of_another_backend_raise():
    """Host NumPy input is moved to the model's backend; an array already on ANOTHER backend is an error."""
    model = bert.from_config(TINY, backend="numpy", seed=0)
    foreign = backends.get("strict").asarray(np.array([[1, 2]]), dtype="int64")
    with pytest.raises(backends.MixedBackendError):
        model(foreign)


# --- padding is invisible -----------------------------------------------------------------------------------------

_MODEL = bert.from_config(TINY, seed=7)


@given(lengths=st.lists(st.integers(1, 9), min_size=1, max_size=3),
       seed=st.integers(0, 2 ** 16), pad_id=st.integers(0, 49))
def test_padding_never_reaches_real_tokens(lengths, seed, pad_id):
    """Each row of a right-padded batch equals that row run alone without padding, whatever the pad ids are."""
    rng = np.random.default_rng(seed)
    T = max(lengths)
    ids = np.full((len(lengths), T), pad_id, dtype=np.int64)
    types = np.zeros_like(ids)
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(0, 50, n)
        types[row, :n] = rng.integers(0, 2, n)
        mask[row, :n] = 1
    batch = _MODEL(ids, attention_mask=mask, token_type_ids=types)
    for row, n in enumerate(lengths):
        alone = _MODEL(ids[row:row + 1, :n], token_type_ids=types[row:row + 1, :n])
        np.testing.assert_allclose(batch.last_hidden_state[row, :n], alone.last_hidden_state[0], rtol=0, atol=1e-5)
        np.testing.assert_allclose(batch.logits[row, :n], alone.logits[0], rtol=0, atol=1e-5)
        np.testing.assert_allclose(batch.pooler_output[row], alone.pooler_output[0], rtol=0, atol=1e-5)
