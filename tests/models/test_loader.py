"""The loader: architecture dispatch (GPT2LMHeadModel, GPT2Model, LlamaForCausalLM, BERT), sharded folders, dtype
on load, from_config by config type, and the errors -- missing tensor, wrong shape, unknown architecture,
truncated safetensors file, missing files -- each naming what is wrong."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers

import scratch.models
from scratch.models import BertConfig, GPT2Config, LlamaConfig, bert, gpt2, llama
from scratch.models.safetensors import load_folder, save_file, save_folder

GPT2_KW = dict(vocab_size=60, n_positions=16, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
LLAMA_CONFIG = LlamaConfig(vocab_size=60, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("gpt2")
    transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2_KW)).save_pretrained(folder)
    return folder


def _copy_folder(src, dst, edit_config=None, edit_weights=None):
    """A model folder rewritten: config.json through edit_config(dict), tensors through edit_weights(dict)."""
    dst.mkdir(exist_ok=True)
    config = json.loads((src / "config.json").read_text())
    weights = {k: np.array(v) for k, v in load_folder(src).items()}
    if edit_config:
        edit_config(config)
    if edit_weights:
        edit_weights(weights)
    (dst / "config.json").write_text(json.dumps(config))
    save_file(weights, dst / "model.safetensors", {"format": "pt"})
    return dst


def test_gpt2_dispatch_and_base_model_names(gpt2_folder, tmp_path):
    model = scratch.models.load(gpt2_folder)
    assert isinstance(model, gpt2.GPT2)
    # the weights are the model's own memory, not views of the memory-mapped file
    assert model.token_embedding.columns.flags.owndata and model.layers[0].qkv_w.flags.owndata
    ids = np.arange(12).reshape(1, 12)

    def strip(w):  # GPT2Model saves the same tensors without the "transformer." prefix
        for name in list(w):
            w[name.removeprefix("transformer.")] = w.pop(name)

    def base(c):
        c["architectures"] = ["GPT2Model"]

    bare = scratch.models.load(_copy_folder(gpt2_folder, tmp_path / "base", base, strip))
    np.testing.assert_array_equal(bare(ids), model(ids))


def test_llama_and_bert_dispatch(tmp_path):
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA_CONFIG.to_hf())).save_pretrained(tmp_path / "l")
    assert isinstance(scratch.models.load(tmp_path / "l"), llama.Llama)
    transformers.BertModel(transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1,
                                                   num_attention_heads=2, intermediate_size=32,
                                                   max_position_embeddings=16)).save_pretrained(tmp_path / "b")
    assert isinstance(scratch.models.load(tmp_path / "b"), bert.Bert)


def test_sharded_folder_and_dtype(tmp_path):
    ref = llama.from_config(LLAMA_CONFIG, seed=1)
    weights = {}
    for i, layer in enumerate(ref.layers):   # back to Hugging Face names and torch (out, in) layouts
        q, k, v = np.split(layer.qkv_w, [4 * 8, 6 * 8], axis=1)
        gate, up = np.split(layer.gate_up_w, 2, axis=1)
        p = f"model.layers.{i}."
        weights.update({p + "self_attn.q_proj.weight": q.T, p + "self_attn.k_proj.weight": k.T,
                        p + "self_attn.v_proj.weight": v.T, p + "self_attn.o_proj.weight": layer.o_w.T,
                        p + "mlp.gate_proj.weight": gate.T, p + "mlp.up_proj.weight": up.T,
                        p + "mlp.down_proj.weight": layer.down_w.T, p + "input_layernorm.weight": layer.attn_norm_w,
                        p + "post_attention_layernorm.weight": layer.mlp_norm_w})
    weights.update({"model.embed_tokens.weight": ref.embed, "model.norm.weight": ref.norm_w,
                    "lm_head.weight": ref.lm_head})
    save_folder(weights, tmp_path, max_shard_bytes=20_000)
    assert (tmp_path / "model.safetensors.index.json").is_file()
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_CONFIG.to_hf()))
    ids = np.arange(20).reshape(2, 10)
    np.testing.assert_array_equal(scratch.models.load(tmp_path)(ids), ref(ids))
    half = scratch.models.load(tmp_path, dtype="float16")
    assert half.dtype == "float16" and half.embed.dtype == np.float16 and half(ids).dtype == np.float16


def test_from_config_dispatches_on_the_config_type():
    assert isinstance(scratch.models.from_config(GPT2Config(**{k: v for k, v in GPT2_KW.items()})), gpt2.GPT2)
    assert isinstance(scratch.models.from_config(LLAMA_CONFIG), llama.Llama)
    tiny_bert = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=16)
    assert isinstance(scratch.models.from_config(tiny_bert), bert.Bert)
    with pytest.raises(ValueError, match="dict"):
        scratch.models.from_config({"model_type": "gpt2"})


def test_missing_tensor_is_named(gpt2_folder, tmp_path):
    folder = _copy_folder(gpt2_folder, tmp_path / "m", edit_weights=lambda w: w.pop("transformer.h.1.mlp.c_fc.bias"))
    with pytest.raises(ValueError, match=r"missing tensor 'transformer\.h\.1\.mlp\.c_fc\.bias'"):
        scratch.models.load(folder)


def test_wrong_shape_is_named(gpt2_folder, tmp_path):
    def shrink(w):
        w["transformer.h.0.attn.c_attn.weight"] = w["transformer.h.0.attn.c_attn.weight"][:, :90]

    folder = _copy_folder(gpt2_folder, tmp_path / "s", edit_weights=shrink)
    with pytest.raises(ValueError, match=r"'transformer\.h\.0\.attn\.c_attn\.weight' has shape \(32, 90\), "
                                         r"expected \(32, 96\)"):
        scratch.models.load(folder)


def test_untied_llama_without_lm_head_is_named(tmp_path):
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA_CONFIG.to_hf())).save_pretrained(tmp_path / "a")
    folder = _copy_folder(tmp_path / "a", tmp_path / "b", edit_weights=lambda w: w.pop("lm_head.weight"))
    with pytest.raises(ValueError, match="'lm_head.weight'"):
        scratch.models.load(folder)


def test_the_first_listed_architecture_is_the_one_loaded():
    from scratch.models.loader import architecture_of

    assert architecture_of({"architectures": ["GPT2Model", "GPT2LMHeadModel"]}) == "GPT2Model"
    assert architecture_of({"architectures": ["LlamaForCausalLM", "GPT2LMHeadModel"]}) == "LlamaForCausalLM"
    with pytest.raises(ValueError, match="GPT2ForSequenceClassification"):
        architecture_of({"architectures": ["GPT2ForSequenceClassification", "GPT2LMHeadModel"]})


def test_unknown_architecture_is_named(gpt2_folder, tmp_path):
    def rename(c):
        c["architectures"] = ["GPT2ForSequenceClassification"]

    with pytest.raises(ValueError, match="GPT2ForSequenceClassification"):
        scratch.models.load(_copy_folder(gpt2_folder, tmp_path / "u", edit_config=rename))

    def unknown_type(c):
        del c["architectures"]
        c["model_type"] = "mamba"

    with pytest.raises(ValueError, match="mamba"):
        scratch.models.load(_copy_folder(gpt2_folder, tmp_path / "t", edit_config=unknown_type))


def test_truncated_safetensors_is_named(gpt2_folder, tmp_path):
    folder = _copy_folder(gpt2_folder, tmp_path / "x")
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(ValueError, match="model.safetensors"):
        scratch.models.load(folder)


def test_missing_files_are_named(gpt2_folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scratch.models.load(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="config.json"):
        scratch.models.load(tmp_path)
    (tmp_path / "config.json").write_text((gpt2_folder / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        scratch.models.load(tmp_path)
