"""scratch.train.model_grads: whole-model gradients of tiny random GPT-2 and Llama models against PyTorch autograd.

Each model is a transformers GPT2LMHeadModel / LlamaForCausalLM saved with save_pretrained and loaded with
scratch.models.load, so both sides hold the same weights. Checked on numpy and strict: parameter names, order,
shapes and views (named_parameters); the training forward equals model(ids) bit for bit; loss and every gradient
equal torch's (float64 to 1e-8 relative, float32 to 1e-4) on a batch with ignored (-100) targets -- GPT-2 with both
GELUs, Llama with GQA + llama3 RoPE + tied head, MQA + untied head + head_dim != C/H, MHA + biases + linear RoPE +
a tanh-GELU gate; checkpointing gives identical gradients (==); loss_scale scales them exactly; 10 AdamW steps give
torch's losses step by step; blocked causal attention equals one masked call (hypothesis); the memory formula is
the tape past one attention block; bad input is refused with a message naming it.
"""
from __future__ import annotations

import copy
import types

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import torch.nn.functional as TF
import transformers

import scratch.models
from scratch import train
from scratch.models import BertConfig
from scratch.nn import causal_mask
from scratch.train import decoder, layers, memory, model_grads
from tests.models.causal_lm import perturb_and_save

# initializer_range 0.1 and randomised 1-D parameters, so every term (biases, norm gains) matters.
GPT2_KW = dict(vocab_size=67, n_positions=32, n_embd=32, n_layer=2, n_head=4, initializer_range=0.1,
               bos_token_id=0, eos_token_id=0)
GPT2_VARIANTS = {"gelu_new": dict(activation_function="gelu_new"), "gelu": dict(activation_function="gelu")}
LLAMA_KW = dict(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.1)
LLAMA_VARIANTS = {
    # llama3 scaling with a short original context, so all three wavelength bands (kept, blended, divided) occur.
    "gqa-llama3-tied": dict(tie_word_embeddings=True, rope_scaling=dict(
        rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=8)),
    "mqa-untied-head_dim10": dict(tie_word_embeddings=False, head_dim=10, num_key_value_heads=1),
    "mha-biases-linear-gelu_tanh": dict(tie_word_embeddings=False, num_key_value_heads=4, attention_bias=True,
                                        mlp_bias=True, rope_scaling=dict(rope_type="linear", factor=2.0),
                                        hidden_act="gelu_pytorch_tanh"),
}
B, T = 2, 12
# The backend fixture is stateless, so reusing it across hypothesis examples is safe.
FD_SETTINGS = settings(max_examples=15, deadline=None,
                       suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
# float64 agrees to ~1e-13; float32 to ~1e-6 (summation order inside matmuls). scratch.nn's erf is float32-accurate
# (~1e-7) even in float64, so the exact-GELU GPT-2 is held to 1e-6 in float64.
TOL = {"float64": 1e-8, "float32": 1e-4}
ERF_TOL = 1e-6


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """torch on one thread: these models are tiny, and on a busy machine its threads wait on each other (measured:
    10 training steps 0.3 s on one thread, 5 s on two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    """build(family, variant) -> (transformers model, folder it was saved to, variant), each built once."""
    built = {}

    def build(family: str, variant: str):
        if (family, variant) not in built:
            torch.manual_seed(0)
            if family == "gpt2":
                config = transformers.GPT2Config(**{**GPT2_KW, **GPT2_VARIANTS[variant]})
                model = transformers.GPT2LMHeadModel(config)
            else:
                config = transformers.LlamaConfig(**{**LLAMA_KW, **LLAMA_VARIANTS[variant]})
                model = transformers.LlamaForCausalLM(config)
            folder = tmp_path_factory.mktemp(f"{family}-{variant}")
            built[family, variant] = (perturb_and_save(model, folder), folder, variant)
        return built[family, variant]

    return build


@pytest.fixture(params=list(GPT2_VARIANTS))
def hf_gpt2(request, hf_models):
    return hf_models("gpt2", request.param)


@pytest.fixture(params=list(LLAMA_VARIANTS))
def hf_llama(request, hf_models):
    return hf_models("llama", request.param)


@pytest.fixture(params=[("gpt2", "gelu_new"), ("llama", "gqa-llama3-tied")], ids=["gpt2", "llama"])
def hf_any(request, hf_models):
    """One model of each family: for the checks that need not run on every variant."""
    return hf_models(*request.param)


def batch(vocab_size: int, seed: int = 0):
    """ids (B, T) and next-token targets with -100 in them: the last position of each row and a few others."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab_size, (B, T))
    targets = np.concatenate([ids[:, 1:], np.full((B, 1), -100)], axis=1)
    targets[0, 3] = targets[1, 7] = -100
    return ids, targets


def torch_model(hf, dtype: str, ours=None):
    """A copy of `hf` in `dtype` (hf itself is not touched), made a true float64 reference where transformers
    computes in float32 whatever the model's dtype: its LlamaRMSNorm upcasts to float32 (in float64 it rounds TO
    float32: a 1e-7 error), and its RoPE tables are float32. RMSNorm is computed in the model's dtype here, and,
    given our model, RoPE uses OUR cos/sin tables (both sides make them in float32, where NumPy's and torch's cos
    and inv_freq differ by an ulp: a difference of the forward's inputs, not of the backward)."""
    model = copy.deepcopy(hf).to(getattr(torch, dtype))
    if not isinstance(model, transformers.LlamaForCausalLM):
        return model

    def rms_norm(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    for module in model.modules():
        if type(module).__name__ == "LlamaRMSNorm":
            module.forward = types.MethodType(rms_norm, module)
    if ours is not None:
        def our_tables(x, position_ids):
            cos, sin = ours.rope_cos_sin(0, position_ids.shape[-1])               # (1, 1, T, D)
            return tuple(torch.tensor(ours.backend.to_numpy(t)[:, 0], dtype=x.dtype) for t in (cos, sin))
        model.model.rotary_emb.forward = our_tables                               # (1, T, D) each, as HF's
    return model


def counting_batch(vocab_size: int, seed: int):
    """Rows that count up from a random start (mod V): a pattern a few steps can learn, so the losses fall."""
    start = np.random.default_rng(seed).integers(0, vocab_size, (B, 1))
    ids = (start + np.arange(T + 1)) % vocab_size                             # (B, T + 1)
    return ids[:, :-1], ids[:, 1:]


def torch_loss_and_grads(hf, ids, targets, dtype: str, ours=None):
    """torch's loss and gradients {name: array} on torch_model(hf, dtype, ours)."""
    model = torch_model(hf, dtype, ours)
    logits = model(torch.tensor(ids)).logits                                  # (B, T, V)
    loss = TF.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.tensor(targets).reshape(-1),
                            ignore_index=-100)
    loss.backward()
    return loss.item(), {name: p.grad.numpy() for name, p in model.named_parameters()}


def assert_grads_close(ours: dict, reference: dict, backend, tol: float):
    assert list(ours) == list(reference)                                      # names and order: torch's
    for name, ref in reference.items():
        grad = backend.to_numpy(ours[name])
        assert grad.shape == ref.shape, name
        scale = np.abs(ref).max()
        error = np.abs(grad - ref).max()
        assert error <= tol * scale, f"{name}: max error {error:.3g} vs max |grad| {scale:.3g}"


# --- parameters ----------------------------------------------------------------------------------------------------

def test_named_parameters_are_torch_names_and_the_models_arrays(hf_any, backend):
    hf, folder, _ = hf_any
    model = scratch.models.load(folder, backend=backend)
    params = train.named_parameters(model)
    reference = dict(hf.named_parameters())
    assert list(params) == list(reference)                                    # a tied head appears once
    for name, p in params.items():
        backend.check_owned(p)
        np.testing.assert_array_equal(backend.to_numpy(p), reference[name].detach().numpy(), err_msg=name)
    assert list(train.trainable_parameters(model)) == list(params)


def test_named_parameters_are_views_writing_changes_the_model():
    """Writing into a fused or transposed view (Llama's k_proj inside qkv, the (V, C) embedding of a (C, V)
    matrix) writes into the model: its logits change, and the same name reads the new value back."""
    config = scratch.models.LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    model = scratch.models.from_config(config)
    ids = np.arange(8).reshape(1, 8)
    before = model(ids)
    params = train.named_parameters(model)
    params["model.layers.0.self_attn.k_proj.weight"][3, :] += 1.0            # (out, in): row 3 = kv channel 3
    params["model.embed_tokens.weight"][5, :] = 0.0                           # token 5's vector
    assert np.all(model.layers[0].qkv_w[:, 16 + 3] == params["model.layers.0.self_attn.k_proj.weight"][3, :])
    assert np.all(model.embed[5] == 0.0)
    assert not np.allclose(model(ids), before)
    again = train.named_parameters(model)
    assert np.all(again["model.embed_tokens.weight"][5] == 0.0)


# --- the forward ---------------------------------------------------------------------------------------------------

def test_training_forward_equals_the_inference_forward(hf_any, backend):
    """Same operations on the same arrays: the logits are identical, bit for bit."""
    hf, folder, _ = hf_any
    model = scratch.models.load(folder, backend=backend)
    ids, _ = batch(model.n_vocab)
    logits, _ = model_grads.forward(model, backend.asarray(ids, dtype="int64"))
    np.testing.assert_array_equal(backend.to_numpy(logits), backend.to_numpy(model(ids)))


def test_training_forward_past_one_attention_block_equals_the_inference_forward():
    """Past ATTENTION_BLOCK tokens the training forward runs attention in causal query blocks and the model in its
    own (PREFILL_BLOCK) blocks: the same values to float32 rounding."""
    config = scratch.models.GPT2Config(vocab_size=50, n_positions=160, n_embd=32, n_layer=2, n_head=4)
    model = scratch.models.from_config(config)
    ids = np.random.default_rng(3).integers(0, 50, (2, 150))
    logits, _ = model_grads.forward(model, model.backend.asarray(ids, dtype="int64"))
    np.testing.assert_allclose(logits, model(ids), rtol=0, atol=2e-5)


@FD_SETTINGS
@given(T=st.integers(1, 40), block=st.integers(1, 17), heads=st.sampled_from([(4, 4), (4, 2), (3, 1)]),
       seed=st.integers(0, 2**16))
def test_blocked_causal_attention_equals_one_masked_call(backend, T, block, heads, seed):
    """decoder.causal_attention_* (query blocks, each against the keys it may see) against the oracle: one
    layers.attention_forward/backward call with the full causal mask. float64, to rounding."""
    H, Hkv = heads
    rng = np.random.default_rng(seed)
    q, k, v, dout = (backend.asarray(rng.standard_normal(shape), dtype="float64")
                     for shape in ((2, H, T, 8), (2, Hkv, T, 8), (2, Hkv, T, 8), (2, H, T, 8)))
    out, cache = decoder.causal_attention_forward(q, k, v, block=block)
    ref, ref_cache = layers.attention_forward(q, k, v, mask=causal_mask(T, T, backend.xp))
    np.testing.assert_allclose(backend.to_numpy(out), backend.to_numpy(ref), rtol=0, atol=1e-13)
    for grad, ref_grad in zip(decoder.causal_attention_backward(dout, cache),
                              layers.attention_backward(dout, ref_cache)):
        assert tuple(grad.shape) == tuple(ref_grad.shape)
        np.testing.assert_allclose(backend.to_numpy(grad), backend.to_numpy(ref_grad), rtol=0, atol=1e-12)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_memory_formula_is_the_tape_past_one_attention_block(family):
    """scratch.train.memory's stored_bytes_per_token counts the blocked softmax (and GELU's kept tanh): the tape
    of a 192-token batch (three blocks) holds exactly that."""
    if family == "gpt2":
        config = scratch.models.GPT2Config(vocab_size=64, n_positions=192, n_embd=32, n_layer=2, n_head=4)
    else:
        config = scratch.models.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2,
                                            max_position_embeddings=192)
    model = scratch.models.from_config(config)
    measured = memory.measured_tape_bytes(model, 2, 192)
    assert measured["layers"] == 2 * 192 * memory.stored_bytes_per_token(config, 192)["layers"]


# --- gradients against torch ---------------------------------------------------------------------------------------

def _check_against_torch(hf, folder, backend, dtype, tol):
    model = scratch.models.load(folder, backend=backend, dtype=dtype)
    ids, targets = batch(model.n_vocab)
    loss, grads = train.loss_and_grads(model, ids, targets)
    ref_loss, ref_grads = torch_loss_and_grads(hf, ids, targets, dtype, ours=model)
    assert isinstance(loss, float)
    assert abs(loss - ref_loss) <= tol * abs(ref_loss)
    for name, grad in grads.items():
        backend.check_owned(grad)
        assert grad.dtype == backend.dtype(dtype), name
    assert_grads_close(grads, ref_grads, backend, tol)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gpt2_gradients_equal_torch(hf_gpt2, backend, dtype):
    hf, folder, variant = hf_gpt2
    tol = ERF_TOL if variant == "gelu" and dtype == "float64" else TOL[dtype]
    _check_against_torch(hf, folder, backend, dtype, tol)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_llama_gradients_equal_torch(hf_llama, backend, dtype):
    hf, folder, _ = hf_llama
    _check_against_torch(hf, folder, backend, dtype, TOL[dtype])


# --- checkpointing and loss scaling --------------------------------------------------------------------------------

def test_checkpointing_gives_identical_gradients(hf_any, backend):
    hf, folder, _ = hf_any
    model = scratch.models.load(folder, backend=backend)
    ids, targets = batch(model.n_vocab, seed=1)
    loss, grads = train.loss_and_grads(model, ids, targets)
    loss_ckpt, grads_ckpt = train.loss_and_grads(model, ids, targets, checkpointing=True)
    assert loss_ckpt == loss
    assert list(grads_ckpt) == list(grads)
    xp = backend.xp
    for name in grads:
        assert bool(xp.all(grads_ckpt[name] == grads[name])), name


def test_loss_scale_scales_the_gradients_exactly(hf_any, backend):
    """A power-of-two scale commutes with every rounding of a linear backward: scaled grads are 1024 * grads."""
    hf, folder, _ = hf_any
    model = scratch.models.load(folder, backend=backend)
    ids, targets = batch(model.n_vocab, seed=2)
    loss, grads = train.loss_and_grads(model, ids, targets)
    loss_scaled, grads_scaled = train.loss_and_grads(model, ids, targets, loss_scale=1024.0)
    assert loss_scaled == loss                                                # the returned loss is unscaled
    xp = backend.xp
    for name in grads:
        assert bool(xp.all(grads_scaled[name] == grads[name] * 1024.0)), name


# --- training steps against torch ----------------------------------------------------------------------------------

HYPER = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)


def torch_losses(hf, batches, dtype):
    """transformers model + torch.optim.AdamW, decay groups by the same rule, one batch per step."""
    model = torch_model(hf, dtype).eval()                                      # eval: no dropout
    named = dict(model.named_parameters())
    decayed = [p for name, p in named.items() if train.default_decay_rule(name, p)]
    others = [p for name, p in named.items() if not train.default_decay_rule(name, p)]
    optimizer = torch.optim.AdamW([{"params": decayed}, {"params": others, "weight_decay": 0.0}], foreach=False,
                                  **HYPER)
    losses = []
    for ids, targets in batches:
        optimizer.zero_grad()
        logits = model(torch.tensor(ids)).logits
        loss = TF.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.tensor(targets).reshape(-1))
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_ten_adamw_steps_give_torchs_losses(hf_any, backend, dtype):
    hf, folder, _ = hf_any
    model = scratch.models.load(folder, backend=backend, dtype=dtype)
    batches = [counting_batch(model.n_vocab, seed=step) for step in range(10)]
    optimizer = train.AdamW(model, **HYPER)
    losses = []
    for ids, targets in batches:
        loss, grads = train.loss_and_grads(model, ids, targets)
        optimizer.step(grads)
        losses.append(loss)
    reference = torch_losses(hf, batches, dtype)
    assert reference[-1] < reference[0] - 0.1                                 # the steps do learn
    # subtle: GPT-2's key bias has a gradient that is 0 in exact arithmetic (softmax ignores a constant added to a
    # query's every logit), so Adam's m / sqrt(v) turns each side's rounding noise there into steps of +-lr, signs
    # differing between the two libraries; the loss sees the key bias only through rounding (~1e-9 by step 10).
    np.testing.assert_allclose(losses, reference, rtol={"float64": 1e-8, "float32": 1e-4}[dtype], atol=0)


# --- input checks --------------------------------------------------------------------------------------------------

def test_bad_input_is_refused_with_its_value():
    config = scratch.models.GPT2Config(vocab_size=30, n_positions=8, n_embd=8, n_layer=1, n_head=2)
    model = scratch.models.from_config(config)
    ids = np.zeros((2, 4), dtype=np.int64)
    with pytest.raises(ValueError, match=r"targets must have the shape of input_ids \(2, 4\), got \(2, 3\)"):
        train.loss_and_grads(model, ids, np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="targets must hold integers, got dtype float64"):
        train.loss_and_grads(model, ids, np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"a target is outside \[0, 30\)"):
        train.loss_and_grads(model, ids, np.full((2, 4), 30))
    with pytest.raises(ValueError, match=r"input_ids holds 31, outside \[0, 30\)"):
        train.loss_and_grads(model, np.full((2, 4), 31), ids)
    with pytest.raises(ValueError, match="9 positions exceed the model's context of 8"):
        train.loss_and_grads(model, np.zeros((1, 9), dtype=np.int64), np.zeros((1, 9), dtype=np.int64))
    bert = scratch.models.from_config(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1,
                                                 num_attention_heads=2, intermediate_size=16,
                                                 max_position_embeddings=8))
    with pytest.raises(TypeError, match="no training gradients for Bert.*supported: GPT2, Llama"):
        train.loss_and_grads(bert, ids, ids)
