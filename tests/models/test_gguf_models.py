"""Models from and to GGUF: tiny random Llama and GPT-2 models (transformers, saved to tmp_path) written as GGUF in
F32, F16, Q8_0 and Q4_0 -- by our save_gguf and, independently, by the gguf package's GGUFWriter following
llama.cpp's converter -- load with logits equal to transformers' own GGUF loading of the same file; metadata that
disagrees with the tensors raises GGUFError naming the field. The opt-in `realmodel` test does the same for
SmolLM2-135M-Instruct Q4_1 (SCRATCH_REAL_GGUF=path)."""
from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import transformers
from gguf import quants as reference

import scratch.models
from scratch.formats import GGUFError, read_gguf, write_gguf
from scratch.models import LlamaConfig, RopeScaling, save_gguf
from scratch.models.gguf import config_from_gguf
from scratch.tokenizer.bpe import BPETokenizer

ATOL = 1e-5  # float32 on both sides, matmuls summed in another order: measured <= 1.2e-6 on logits up to ~2.8
DTYPES = ("f32", "f16", "q8_0", "q4_0")
IDS = np.array([[1, 5, 9, 33, 2, 17, 80, 4, 11, 12, 13, 14, 90, 91, 3, 3, 7]])


def _transformers_logits(path: Path, ids=IDS) -> np.ndarray:
    """transformers' own GGUF loading (gguf package dequantization, its own name/permutation mapping)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


def _hf_logits(folder: Path, ids=IDS) -> np.ndarray:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    """Untied head, grouped-query attention (4 heads, 2 kv heads), head dim 16."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      rms_norm_eps=1e-5, rope_theta=500.0, tie_word_embeddings=False)
    folder = tmp_path_factory.mktemp("llama")
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizer():
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    return BPETokenizer.train(text, 300, pattern="gpt2", special_tokens=["<|endoftext|>"])


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    # transformers' GGUF loader takes GPT-2's vocabulary size from the token list and keeps n_positions at 1024
    # (it maps gpt2.context_length to n_ctx), so the tiny GPT-2 has 300 tokens (a tokenizer) and 1024 positions.
    torch.manual_seed(1)
    config = transformers.GPT2Config(vocab_size=300, n_embd=64, n_layer=2, n_head=4, n_positions=1024,
                                     bos_token_id=299, eos_token_id=299)
    folder = tmp_path_factory.mktemp("gpt2")
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("dtype", DTYPES)
def test_llama_save_gguf_load_equals_transformers(llama_folder, dtype):
    ours = scratch.models.load(llama_folder)
    path = save_gguf(ours, None, llama_folder / f"llama-{dtype}.gguf", dtype=dtype)
    loaded = scratch.models.load(path)
    assert loaded.config == ours.config
    logits = np.asarray(loaded(IDS))
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, _transformers_logits(path), atol=ATOL, rtol=0)
    if dtype == "f32":  # lossless: equal to the original model too
        np.testing.assert_allclose(logits, _hf_logits(llama_folder), atol=ATOL, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gpt2_save_gguf_load_equals_transformers(gpt2_folder, tokenizer, dtype):
    ours = scratch.models.load(gpt2_folder)
    path = save_gguf(ours, tokenizer, gpt2_folder / f"gpt2-{dtype}.gguf", dtype=dtype)
    loaded = scratch.models.load(path)
    assert loaded.config == ours.config
    logits = np.asarray(loaded(IDS))
    np.testing.assert_allclose(logits, _transformers_logits(path), atol=ATOL, rtol=0)
    if dtype == "f32":
        np.testing.assert_allclose(logits, _hf_logits(gpt2_folder), atol=ATOL, rtol=0)


@pytest.mark.parametrize("dtype", ["q4_k", "q6_k"])
def test_llama_k_quants_equal_transformers(tmp_path, dtype):
    """k-quant blocks hold 256 weights: a Llama whose rows are 256 wide is written all in the k-quant."""
    torch.manual_seed(2)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=256, intermediate_size=256, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                      rms_norm_eps=1e-5, tie_word_embeddings=True)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    path = save_gguf(scratch.models.load(tmp_path), None, tmp_path / f"k-{dtype}.gguf", dtype=dtype)
    assert read_gguf(path).tensors["blk.0.ffn_down.weight"].type_name == dtype.upper()
    ids = IDS % 64
    np.testing.assert_allclose(np.asarray(scratch.models.load(path)(ids)), _transformers_logits(path, ids),
                               atol=ATOL, rtol=0)


def test_saved_file_is_what_llama_cpp_expects(llama_folder):
    """Read back by the gguf package: llama.cpp's tensor names and types (vectors F32, matrices quantized), and its
    metadata keys with the value types its loader checks."""
    path = save_gguf(scratch.models.load(llama_folder), None, llama_folder / "check.gguf", dtype="q8_0")
    reader = gguf.GGUFReader(path)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["token_embd.weight"] == "Q8_0" and types["output.weight"] == "Q8_0"
    assert types["blk.1.attn_q.weight"] == "Q8_0" and types["blk.0.ffn_down.weight"] == "Q8_0"
    assert types["blk.0.attn_norm.weight"] == "F32" and types["output_norm.weight"] == "F32"
    assert len(types) == 3 + 2 * 9
    field_types = {k: [t.name for t in f.types] for k, f in reader.fields.items()}
    for key in ("llama.context_length", "llama.embedding_length", "llama.block_count", "llama.feed_forward_length",
                "llama.attention.head_count", "llama.attention.head_count_kv", "llama.rope.dimension_count",
                "general.file_type", "general.quantization_version"):
        assert field_types[key] == ["UINT32"], key
    assert field_types["llama.rope.freq_base"] == ["FLOAT32"]
    assert field_types["llama.attention.layer_norm_rms_epsilon"] == ["FLOAT32"]
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["general.file_type"].contents() == 7  # LLAMA_FTYPE_MOSTLY_Q8_0


def test_tokenizer_is_written_as_llama_cpp_gpt2_vocabulary(gpt2_folder, tokenizer):
    """Our BPE tokenizer in a GGUF is read by transformers' GGUF tokenizer loader into the same ids."""
    path = save_gguf(scratch.models.load(gpt2_folder), tokenizer, gpt2_folder / "tok.gguf", dtype="f16")
    metadata = read_gguf(path).metadata
    assert metadata["tokenizer.ggml.model"] == "gpt2" and metadata["tokenizer.ggml.pre"] == "gpt-2"
    assert len(metadata["tokenizer.ggml.tokens"]) == 300
    assert metadata["tokenizer.ggml.tokens"][32] == "Ġ" and metadata["tokenizer.ggml.token_type"][299] == 3
    assert len(metadata["tokenizer.ggml.merges"]) == len(tokenizer.merges)
    assert metadata["tokenizer.ggml.bos_token_id"] == metadata["tokenizer.ggml.eos_token_id"] == 299
    theirs = transformers.AutoTokenizer.from_pretrained(gpt2_folder, gguf_file=path.name)
    for text in ("Hello tokenizer, the model is here", "  spaces\n\nand 12345 numbers!", "<|endoftext|>é x"):
        assert theirs.encode(text) == tokenizer.encode(text, allowed_special="all"), text


def _interleave(rows: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's converter's Q/K permutation, written from its definition (not from our save path)."""
    return rows.reshape(n_heads, 2, rows.shape[0] // n_heads // 2, *rows.shape[1:]).swapaxes(1, 2) \
        .reshape(rows.shape)


def _write_with_gguf_writer(folder: Path, path: Path, qtype: str, tied: bool) -> None:
    """A Llama GGUF written the way llama.cpp's convert_hf_to_gguf.py writes it, with the gguf package."""
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"] if hasattr(config, "rope_parameters")
                              and config.rope_parameters else config.rope_theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    names = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output",
             "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        data = tensor.numpy()
        base = name.rsplit(".", 1)[0]
        if base.startswith("model.layers."):
            _, _, i, rest = base.split(".", 3)
            gguf_name = f"blk.{i}.{names[rest]}.weight"
        else:
            gguf_name = f"{names[base]}.weight"
        if "q_proj" in name:
            data = _interleave(data, config.num_attention_heads)
        elif "k_proj" in name:
            data = _interleave(data, config.num_key_value_heads)
        if data.ndim == 1 or qtype == "F32":
            writer.add_tensor(gguf_name, data.astype(np.float32))
        elif qtype == "F16":
            writer.add_tensor(gguf_name, data.astype(np.float16))
        else:
            kind = gguf.GGMLQuantizationType[qtype]
            writer.add_tensor(gguf_name, reference.quantize(data, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("qtype", ["F32", "Q4_1"])
def test_llama_written_by_gguf_writer_equals_transformers(llama_folder, tmp_path, qtype):
    """A file our writer did not make: the loader's name mapping and Q/K un-permutation are checked on their own."""
    path = llama_folder / f"theirs-{qtype}.gguf"
    _write_with_gguf_writer(llama_folder, path, qtype, tied=False)
    logits = np.asarray(scratch.models.load(path)(IDS))
    np.testing.assert_allclose(logits, _transformers_logits(path), atol=ATOL, rtol=0)
    if qtype == "F32":
        np.testing.assert_allclose(logits, _hf_logits(llama_folder), atol=ATOL, rtol=0)


def test_llama_without_output_weight_is_tied(llama_folder):
    path = llama_folder / "tied.gguf"
    _write_with_gguf_writer(llama_folder, path, "F16", tied=True)
    model = scratch.models.load(path)
    assert model.config.tie_word_embeddings and model.lm_head is None
    np.testing.assert_allclose(np.asarray(model(IDS)), _transformers_logits(path), atol=ATOL, rtol=0)


def test_load_on_every_backend_and_dtype(llama_folder, backend):
    path = save_gguf(scratch.models.load(llama_folder), None, llama_folder / "backend.gguf", dtype="q4_0")
    reference_logits = np.asarray(scratch.models.load(path)(IDS))
    model = scratch.models.load(path, backend=backend)
    logits = model(IDS)
    backend.check_owned(logits)
    assert logits.dtype == backend.xp.float32
    np.testing.assert_allclose(backend.to_numpy(logits), reference_logits, atol=1e-5, rtol=0)
    if backend.name != "strict":  # array-api-strict has no float16
        half = scratch.models.load(path, backend=backend, dtype="float16")
        assert half.dtype == "float16"


@pytest.mark.parametrize("scaling", [RopeScaling(rope_type="linear", factor=2.0),
                                     RopeScaling(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                 high_freq_factor=4.0, original_max_position_embeddings=8192)])
def test_rope_scaling_round_trips(tmp_path, scaling):
    """Linear scaling travels as llama.*.rope.scaling metadata; Llama 3's as the rope_freqs.weight tensor of
    per-frequency divisors llama.cpp writes (transformers' GGUF loader reads neither, so we compare with ourselves).
    """
    config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16384, rope_theta=500000.0,
                         rms_norm_eps=1e-5, rope_scaling=scaling)
    model = scratch.models.from_config(config)
    path = save_gguf(model, None, tmp_path / "scaled.gguf")
    assert ("rope_freqs.weight" in read_gguf(path).tensors) == (scaling.rope_type == "llama3")
    loaded = scratch.models.load(path)
    assert loaded.config.rope_scaling == scaling
    ids = np.arange(40)[None] % 64
    np.testing.assert_allclose(np.asarray(loaded(ids)), np.asarray(model(ids)), atol=1e-6, rtol=0)


# --- metadata that disagrees with the tensors ----------------------------------------------------------------------

def _rewrite(source: Path, target: Path, change_metadata=None, drop=(), rename=None) -> Path:
    """A copy of a GGUF with some metadata changed / tensors dropped or renamed (tensor bytes copied as they are)."""
    original = read_gguf(source)
    metadata = dict(original.metadata)
    for key, value in (change_metadata or {}).items():
        if value is None:
            metadata.pop(key, None)
        else:
            metadata[key] = value
    tensors = {}
    for name, tensor in original.tensors.items():
        if name in drop:
            continue
        data = tensor.to_numpy(dtype=None) if tensor.type_name in ("F32", "F16") else \
            tensor.raw().reshape(*tensor.shape[:-1], -1)
        tensors[(rename or {}).get(name, name)] = (tensor.type_name, data)
    write_gguf(target, metadata, tensors)
    return target


BAD_MODELS = {
    "shape disagrees (kv heads)": ({"llama.attention.head_count_kv": np.uint32(4)}, (), None,
                                   "tensor 'blk.0.attn_k.weight' has shape \\(32, 64\\), but the metadata "
                                   "\\(.*llama.attention.head_count_kv=4.*\\) needs \\(64, 64\\)"),
    "shape disagrees (width)": ({"llama.feed_forward_length": np.uint32(128)}, (), None,
                                "tensor 'blk.0.ffn_gate.weight' has shape \\(96, 64\\), .*feed_forward_length=128"),
    "more layers than tensors": ({"llama.block_count": np.uint32(3)}, (), None,
                                 "missing tensor 'blk.2.attn_norm.weight' .*llama.block_count=3"),
    "tensors past block_count": ({"llama.block_count": np.uint32(1)}, (), None,
                                 "tensors this LlamaConfig does not use: 'blk.1.attn_norm.weight'"),
    "missing tensor": ({}, ("blk.1.ffn_up.weight",), None, "missing tensor 'blk.1.ffn_up.weight'"),
    "unknown tensor": ({}, (), {"blk.0.attn_q.weight": "blk.0.attn_q_norm.weight"},
                       "missing tensor 'blk.0.attn_q.weight'"),
    "missing size": ({"llama.context_length": None}, (), None, "metadata llama.context_length is missing"),
    "bad size": ({"llama.embedding_length": "64"}, (), None,
                 "metadata llama.embedding_length must be a positive integer, got '64'"),
    "heads do not divide": ({"llama.attention.head_count": np.uint32(3)}, (), None,
                            "invalid llama model: LlamaConfig.hidden_size \\(64\\) must be divisible"),
    "unsupported architecture": ({"general.architecture": "qwen2"}, (), None,
                                 "general.architecture 'qwen2' is not supported; supported: llama, gpt2"),
    "yarn scaling": ({"llama.rope.scaling.type": "yarn"}, (), None,
                     "llama.rope.scaling.type 'yarn' is not supported"),
}


@pytest.mark.parametrize("case", BAD_MODELS)
def test_metadata_that_disagrees_raises_naming_the_field(llama_folder, tmp_path, case):
    change, drop, rename, message = BAD_MODELS[case]
    good = save_gguf(scratch.models.load(llama_folder), None, tmp_path / "good.gguf", dtype="f16")
    bad = _rewrite(good, tmp_path / "bad.gguf", change, drop, rename)
    with pytest.raises(GGUFError, match=message):
        scratch.models.load(bad)


def test_gpt2_untied_output_is_refused(gpt2_folder, tmp_path):
    good = save_gguf(scratch.models.load(gpt2_folder), None, tmp_path / "g.gguf")
    original = read_gguf(good)
    tensors = {name: (t.type_name, t.to_numpy()) for name, t in original.tensors.items()}
    embedding = tensors["token_embd.weight"][1]
    write_gguf(tmp_path / "same.gguf", original.metadata, {**tensors, "output.weight": ("F32", embedding)})
    assert config_from_gguf(read_gguf(tmp_path / "same.gguf")).tie_word_embeddings  # llama.cpp's copy: fine
    scratch.models.load(tmp_path / "same.gguf")
    write_gguf(tmp_path / "untied.gguf", original.metadata, {**tensors, "output.weight": ("F32", embedding + 1)})
    with pytest.raises(GGUFError, match="'output.weight' differs from 'token_embd.weight'"):
        scratch.models.load(tmp_path / "untied.gguf")


def test_save_gguf_refuses_what_it_cannot_write(llama_folder, tmp_path):
    model = scratch.models.load(llama_folder)
    with pytest.raises(ValueError, match="dtype must be one of f32, f16, bf16, q8_0, q4_0"):
        save_gguf(model, None, tmp_path / "x.gguf", dtype="iq2_xxs")
    with pytest.raises(TypeError, match="save_gguf writes Llama and GPT-2 models, got str"):
        save_gguf("model", None, tmp_path / "x.gguf")
    with pytest.raises(TypeError, match="has no 'vocab'"):
        save_gguf(model, object(), tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


# --- a real checkpoint (opt-in) ------------------------------------------------------------------------------------

def _real_gguf() -> Path:
    from tests.conftest import require_real_gguf

    return require_real_gguf()


@pytest.mark.realmodel
def test_real_smollm2_q4_1_logits_equal_transformers():
    path = _real_gguf()
    model = scratch.models.load(path)
    assert model.config.num_hidden_layers == 30 and model.config.num_key_value_heads == 3
    assert model.config.tie_word_embeddings  # SmolLM2 ships no output.weight
    ids = np.array([[1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 2, 198, 1, 4093, 198, 19556, 28, 657]])
    np.testing.assert_allclose(np.asarray(model(ids)), _transformers_logits(path, ids), atol=1e-3, rtol=0)
