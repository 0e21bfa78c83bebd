"""BERT (Devlin et al. 2019, arXiv:1810.04805): the encoder-only transformer, equal to transformers' BertModel and
BertForMaskedLM.

Every token sees every other token (bidirectional attention; only padding is masked), so one call turns a whole
sequence into contextual vectors -- there is no generation loop and no KV cache. The blocks are post-norm, as in
the original transformer (Vaswani et al. 2017): x = LayerNorm(x + sublayer(x)), eps 1e-12, exact-erf GELU.
On top sit two optional heads: the pooler (tanh(dense(first token)), trained by next-sentence prediction) and the
masked-LM head (dense, GELU, LayerNorm, then the word-embedding matrix again as the output projection, plus a bias).
Not here: training, next-sentence prediction logits, relative position embeddings, BERT used as a decoder.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

import backends
from scratch.models.config import BertConfig
from scratch.models.inputs import check_length, token_ids
from scratch.models.weights import WeightReader, check_dtype, put
from scratch.nn import activation, attention, embedding, layer_norm, linear, merge_heads, padding_mask, split_heads

__all__ = ["Bert", "BertOutput", "BertWeights", "BertLayerWeights", "from_weights", "from_config"]


# --- the model -----------------------------------------------------------------------------------------------------

def forward(model: Bert, input_ids, attention_mask=None, token_type_ids=None) -> BertOutput:
    """input_ids (B, T) ints; attention_mask (B, T) 0/1 (None = no padding); token_type_ids (B, T) segment ids
    (None = all segment 0). Host NumPy inputs are moved to the backend here, at the edge."""
    config, weights, xp = model.config, model.weights, model.backend.xp
    ids, types, mask = model.checked_inputs(input_ids, attention_mask, token_type_ids)   # mask (B, 1, 1, T) or None
    T = ids.shape[1]

    # 1. embeddings: word + segment + position, then LayerNorm (the sum order is transformers', for exactness).
    x = embedding(ids, weights.word_embeddings) + embedding(types, weights.token_type_embeddings)   # (B, T, C)
    x = x + embedding(xp.arange(T, dtype=xp.int64), weights.position_embeddings)   # + (T, C) broadcast over B
    x = layer_norm(x, weights.emb_ln_w, weights.emb_ln_b, config.layer_norm_eps)

    # 2. the encoder: post-norm blocks, no causal mask.
    for layer in weights.layers:
        x = block(config, layer, x, mask)                                            # (B, T, C)

    # 3. the heads.
    pooled = None
    if model.has_pooler:
        pooled = xp.tanh(linear(x[:, 0, :], weights.pooler_w, weights.pooler_b))    # (B, C) from the [CLS] token
    logits = None
    if model.has_mlm_head:
        h = activation(config.hidden_act)(linear(x, weights.mlm_dense_w, weights.mlm_dense_b))   # (B, T, C)
        h = layer_norm(h, weights.mlm_ln_w, weights.mlm_ln_b, config.layer_norm_eps)
        # tied output projection: the (V, C) embedding table read transposed, no copy.
        decoder = weights.mlm_decoder_w
        if decoder is None:
            decoder = xp.permute_dims(weights.word_embeddings, (1, 0))                # (C, V)
        logits = linear(h, decoder, weights.mlm_bias)                                # (B, T, V)
    return BertOutput(last_hidden_state=x, pooler_output=pooled, logits=logits)


def block(config: BertConfig, layer: BertLayerWeights, x, mask):
    """One post-norm block: x = LN(x + Attn(x)); x = LN(x + MLP(x)). x (B, T, C) -> (B, T, C)."""
    C, H, eps = config.hidden_size, config.num_attention_heads, config.layer_norm_eps
    qkv = linear(x, layer.qkv_w, layer.qkv_b)                                         # (B, T, 3C)
    q = split_heads(qkv[..., :C], H)                                                  # (B, H, T, D)
    k = split_heads(qkv[..., C:2 * C], H)                                             # (B, H, T, D)
    v = split_heads(qkv[..., 2 * C:], H)                                              # (B, H, T, D)
    y = merge_heads(attention(q, k, v, mask=mask))                                    # (B, T, C)
    # post-norm: the LayerNorm comes AFTER the residual add (GPT-2 and Llama normalise before the sublayer).
    x = layer_norm(x + linear(y, layer.attn_out_w, layer.attn_out_b), layer.attn_ln_w, layer.attn_ln_b, eps)
    h = activation(config.hidden_act)(linear(x, layer.fc_w, layer.fc_b))             # (B, T, F)
    return layer_norm(x + linear(h, layer.proj_w, layer.proj_b), layer.mlp_ln_w, layer.mlp_ln_b, eps)


# --- weights -------------------------------------------------------------------------------------------------------

INIT_STD = 0.02  # BERT's initializer_range: every weight matrix and embedding starts as N(0, 0.02^2)
HF_PREFIX = "bert."  # what BertForMaskedLM / BertForPreTraining put before the encoder's tensor names


@dataclass(frozen=True)
class BertLayerWeights:
    """One post-norm encoder block. Linear weights are (C_in, C_out); Q, K, V are fused into one (C, 3C) matmul."""

    qkv_w: Any        # (C, 3C): columns [query | key | value]
    qkv_b: Any        # (3C,)
    attn_out_w: Any   # (C, C)
    attn_out_b: Any   # (C,)
    attn_ln_w: Any    # (C,) LayerNorm after the attention residual
    attn_ln_b: Any    # (C,)
    fc_w: Any         # (C, F) "intermediate.dense"
    fc_b: Any         # (F,)
    proj_w: Any       # (F, C) "output.dense"
    proj_b: Any       # (C,)
    mlp_ln_w: Any     # (C,) LayerNorm after the MLP residual
    mlp_ln_b: Any     # (C,)


@dataclass(frozen=True)
class BertWeights:
    word_embeddings: Any        # (V, C); also the masked-LM output projection (tied)
    position_embeddings: Any    # (P, C), P = max_position_embeddings: learned, absolute
    token_type_embeddings: Any  # (type_vocab_size, C): segment A / B
    emb_ln_w: Any               # (C,)
    emb_ln_b: Any               # (C,)
    layers: tuple[BertLayerWeights, ...]
    pooler_w: Any = None        # (C, C), None when the checkpoint has no pooler (BertForMaskedLM)
    pooler_b: Any = None        # (C,)
    mlm_dense_w: Any = None     # (C, C), None when the checkpoint has no masked-LM head (BertModel)
    mlm_dense_b: Any = None     # (C,)
    mlm_ln_w: Any = None        # (C,)
    mlm_ln_b: Any = None        # (C,)
    mlm_bias: Any = None        # (V,) the output-only bias
    mlm_decoder_w: Any = None   # (C, V) only for an untied checkpoint; None means "word_embeddings, transposed"


@dataclass(frozen=True)
class BertOutput:
    last_hidden_state: Any        # (B, T, C) the final block's output, one vector per token
    pooler_output: Any = None     # (B, C) tanh(dense(first token)), or None without a pooler
    logits: Any = None            # (B, T, V) masked-LM scores, or None without the masked-LM head


class Bert:
    """A BERT encoder with optional pooler and masked-LM head. Call it: `model(input_ids, attention_mask,
    token_type_ids) -> BertOutput`. Build it with `from_weights` (a checkpoint) or `from_config` (random)."""

    def __init__(self, config: BertConfig, weights: BertWeights, backend: backends.Backend, dtype: str = "float32"):
        self.config = config
        self.weights = weights
        self.backend = backend
        self.dtype = dtype

    def __repr__(self) -> str:
        c = self.config
        heads = [name for name, present in (("pooler", self.has_pooler), ("mlm", self.has_mlm_head)) if present]
        return (f"<Bert L={c.num_hidden_layers} C={c.hidden_size} H={c.num_attention_heads} V={c.vocab_size} "
                f"heads={'+'.join(heads) or 'none'} on {self.backend.name} {self.dtype}>")

    @property
    def has_pooler(self) -> bool:
        return self.weights.pooler_w is not None

    @property
    def has_mlm_head(self) -> bool:
        return self.weights.mlm_dense_w is not None

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None) -> BertOutput:
        return forward(self, input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)

    def checked_inputs(self, input_ids, attention_mask=None, token_type_ids=None):
        """(ids (B, T), token types (B, T), mask (B, 1, 1, T) bool or None), checked and on the backend."""
        c, xp = self.config, self.backend.xp
        ids = token_ids(self.backend, input_ids, c.vocab_size)                       # (B, T)
        B, T = ids.shape
        if T == 0 or B == 0:
            raise ValueError(f"input_ids must hold at least one sequence of at least one token, got shape {(B, T)}")
        check_length(0, T, c.max_position_embeddings, "BERT")
        if token_type_ids is None:
            types = xp.zeros((B, T), dtype=xp.int64)
        else:
            types = token_ids(self.backend, token_type_ids, c.type_vocab_size, "token_type_ids")
            if tuple(types.shape) != (B, T):
                raise ValueError(f"token_type_ids has shape {tuple(types.shape)} but input_ids has shape {(B, T)}")
        mask = None if attention_mask is None else self._mask(attention_mask, (B, T))
        return ids, types, mask

    def _mask(self, attention_mask, shape):
        """(B, T) 0/1 or boolean -> (B, 1, 1, T) boolean, True = a real token every query may attend to."""
        if isinstance(attention_mask, (list, tuple)) or backends.array_kind(attention_mask) in (None, "numpy"):
            host = np.asarray(attention_mask)
            if host.dtype != np.bool_:
                if host.size and not np.isin(host, (0, 1)).all():
                    raise ValueError(f"attention_mask must hold 0/1, got values {np.unique(host)[:5].tolist()}")
                host = host != 0
            attention_mask = self.backend.asarray(host, dtype="bool")
        else:
            self.backend.check_owned(attention_mask)
        if tuple(attention_mask.shape) != shape:
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids has shape {shape}")
        return padding_mask(attention_mask)


# --- checkpoint names ----------------------------------------------------------------------------------------------

def _layer_names(i: int) -> dict[str, str]:
    """Our BertLayerWeights field (before fusing Q, K, V) -> the Hugging Face name of layer i, without prefix."""
    p = f"encoder.layer.{i}."
    return {
        "q_w": p + "attention.self.query.weight", "q_b": p + "attention.self.query.bias",
        "k_w": p + "attention.self.key.weight", "k_b": p + "attention.self.key.bias",
        "v_w": p + "attention.self.value.weight", "v_b": p + "attention.self.value.bias",
        "attn_out_w": p + "attention.output.dense.weight", "attn_out_b": p + "attention.output.dense.bias",
        "attn_ln_w": p + "attention.output.LayerNorm.weight", "attn_ln_b": p + "attention.output.LayerNorm.bias",
        "fc_w": p + "intermediate.dense.weight", "fc_b": p + "intermediate.dense.bias",
        "proj_w": p + "output.dense.weight", "proj_b": p + "output.dense.bias",
        "mlp_ln_w": p + "output.LayerNorm.weight", "mlp_ln_b": p + "output.LayerNorm.bias",
    }


def _shapes(config: BertConfig) -> dict[str, tuple[int, ...]]:
    """Field -> shape as PyTorch stores it (nn.Linear weights are (C_out, C_in); we transpose them once at load).
    Every field not listed (the other biases and all LayerNorm parameters) is (C,)."""
    C, F, V = config.hidden_size, config.intermediate_size, config.vocab_size
    return {
        "word_embeddings": (V, C), "position_embeddings": (config.max_position_embeddings, C),
        "token_type_embeddings": (config.type_vocab_size, C),
        "q_w": (C, C), "k_w": (C, C), "v_w": (C, C), "attn_out_w": (C, C), "pooler_w": (C, C), "mlm_dense_w": (C, C),
        "fc_w": (F, C), "fc_b": (F,), "proj_w": (C, F), "mlm_bias": (V,), "mlm_decoder_w": (V, C),
    }


_EMBEDDING_NAMES = {
    "word_embeddings": "embeddings.word_embeddings.weight",
    "position_embeddings": "embeddings.position_embeddings.weight",
    "token_type_embeddings": "embeddings.token_type_embeddings.weight",
    "emb_ln_w": "embeddings.LayerNorm.weight", "emb_ln_b": "embeddings.LayerNorm.bias",
}
_POOLER_NAMES = {"pooler_w": "pooler.dense.weight", "pooler_b": "pooler.dense.bias"}
_MLM_NAMES = {
    "mlm_dense_w": "cls.predictions.transform.dense.weight", "mlm_dense_b": "cls.predictions.transform.dense.bias",
    "mlm_ln_w": "cls.predictions.transform.LayerNorm.weight", "mlm_ln_b": "cls.predictions.transform.LayerNorm.bias",
    "mlm_bias": "cls.predictions.bias",
}
_MLM_BIAS_ALIAS = "cls.predictions.decoder.bias"    # the bias the decoder adds (tied to cls.predictions.bias)
_MLM_DECODER = "cls.predictions.decoder.weight"     # present only in checkpoints that saved the tied copy


def _canonical(name: str) -> str:
    # subtle: checkpoints converted from Google's TensorFlow release name LayerNorm parameters gamma/beta;
    # transformers renames them on load, and so do we.
    if name.endswith("LayerNorm.gamma"):
        return name[: -len("gamma")] + "weight"
    if name.endswith("LayerNorm.beta"):
        return name[: -len("beta")] + "bias"
    return name


def _is_linear_weight(field: str) -> bool:
    return field.endswith("_w") and "ln" not in field


# --- building a model ----------------------------------------------------------------------------------------------

def _check_config(config) -> BertConfig:
    if isinstance(config, dict):
        config = BertConfig.from_hf(config)
    if not isinstance(config, BertConfig):
        raise TypeError(f"expected a BertConfig, got {type(config).__name__}")
    return config


def _assemble(config: BertConfig, get, backend, dtype: str, with_pooler: bool, with_mlm: bool,
              decoder=None) -> Bert:
    """Build the model from `get(field, hf_name) -> host array in OUR layout` (linear weights (C_in, C_out))."""
    def on_backend(host: np.ndarray):
        return put(backend, host, dtype)

    emb = {field: on_backend(get(field, name)) for field, name in _EMBEDDING_NAMES.items()}
    layers = []
    for i in range(config.num_hidden_layers):
        host = {field: get(field, name) for field, name in _layer_names(i).items()}
        layers.append(BertLayerWeights(
            qkv_w=on_backend(np.concatenate([host["q_w"], host["k_w"], host["v_w"]], axis=1)),   # (C, 3C)
            qkv_b=on_backend(np.concatenate([host["q_b"], host["k_b"], host["v_b"]], axis=0)),   # (3C,)
            **{field: on_backend(host[field]) for field in ("attn_out_w", "attn_out_b", "attn_ln_w", "attn_ln_b",
                                                            "fc_w", "fc_b", "proj_w", "proj_b", "mlp_ln_w",
                                                            "mlp_ln_b")}))
    heads = {}
    if with_pooler:
        heads.update({field: on_backend(get(field, name)) for field, name in _POOLER_NAMES.items()})
    if with_mlm:
        heads.update({field: on_backend(get(field, name)) for field, name in _MLM_NAMES.items()})
        if decoder is not None:
            heads["mlm_decoder_w"] = on_backend(decoder)
    weights = BertWeights(**emb, layers=tuple(layers), **heads)
    return Bert(config, weights, backend, dtype)


def from_weights(config: BertConfig, weights: dict[str, np.ndarray], backend="numpy", dtype="float32") -> Bert:
    """A Bert from Hugging Face tensors (host NumPy arrays by name), as BertModel, BertForMaskedLM or
    BertForPreTraining save them, with or without the "bert." prefix.

    The pooler is built when `pooler.dense.weight` is present, the masked-LM head when
    `cls.predictions.transform.dense.weight` is. Other tensors (the next-sentence head, the position_ids buffer
    older checkpoints saved) are ignored. A missing tensor or a wrong shape raises ValueError naming it.
    """
    config = _check_config(config)
    backend = backends.get(backend)
    dtype = check_dtype(backend, dtype)
    named = WeightReader({_canonical(name): array for name, array in weights.items()}, (HF_PREFIX, ""), "BERT")
    extra_layer = f"encoder.layer.{config.num_hidden_layers}.attention.self.query.weight"
    if extra_layer in named:
        raise ValueError(f"the checkpoint has more encoder layers than config.num_hidden_layers "
                         f"({config.num_hidden_layers}): found {extra_layer!r}")
    shapes = _shapes(config)

    def get(field: str, name: str) -> np.ndarray:
        if name == _MLM_NAMES["mlm_bias"] and _MLM_BIAS_ALIAS in named:
            # subtle: the forward pass adds decoder.bias. Tied checkpoints hold the same values under both names;
            # an untied one (tie_word_embeddings=False) keeps cls.predictions.bias as an unused leftover.
            name = _MLM_BIAS_ALIAS
        array = named(name, shapes.get(field, (config.hidden_size,)))
        return array.T if _is_linear_weight(field) else array   # torch (C_out, C_in) -> ours (C_in, C_out)

    decoder = None
    with_mlm = _MLM_NAMES["mlm_dense_w"] in named
    if with_mlm and _MLM_DECODER in named:
        untied = get("mlm_decoder_w", _MLM_DECODER)                               # (C, V) after the transpose
        if not np.array_equal(untied.T, get("word_embeddings", _EMBEDDING_NAMES["word_embeddings"])):
            decoder = untied                                                      # truly untied: keep its own copy
    return _assemble(config, get, backend, dtype, with_pooler=_POOLER_NAMES["pooler_w"] in named,
                     with_mlm=with_mlm, decoder=decoder)


def from_config(config: BertConfig, backend="numpy", seed: int | None = 0, dtype="float32",
                pooler: bool = True, mlm_head: bool = True) -> Bert:
    """A randomly initialised Bert (BERT's init: N(0, 0.02^2) weights and embeddings, zero biases, LayerNorm weight
    one and bias zero). Draws come from the host generator `backends.rng(seed)` in a fixed order, so every backend
    gets the same model for the same seed. Both heads are present unless switched off."""
    config = _check_config(config)
    backend = backends.get(backend)
    dtype = check_dtype(backend, dtype)
    rng = backends.rng(seed)
    shapes = _shapes(config)

    def get(field: str, name: str) -> np.ndarray:
        shape = shapes.get(field, (config.hidden_size,))
        if field.endswith("ln_w"):
            return np.ones(shape, dtype=np.float32)
        if field.endswith("_b") or field == "mlm_bias":
            return np.zeros(shape, dtype=np.float32)
        # drawn in torch's (C_out, C_in) layout and transposed like a checkpoint's, on the host until Q, K, V fuse
        draw = rng.standard_normal(shape, dtype=np.float32) * np.float32(INIT_STD)
        return draw.T if _is_linear_weight(field) else draw

    return _assemble(config, get, backend, dtype, with_pooler=pooler, with_mlm=mlm_head)
