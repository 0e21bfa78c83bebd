"""scratch.train.lora against PEFT, on tiny random GPT-2 (every projection: fused c_attn, both c_proj, c_fc; rsLoRA
scaling) and Llama (GQA, tied head, llama3 RoPE; q/k/v inside the fused qkv, o, gate/up inside the fused gate_up,
down) saved with save_pretrained.

Checked: the adapter pair against finite differences (float64, hypothesis shapes, with and without a dropout mask,
numpy and strict); the model is unchanged at init (logits equal, bit for bit), the base stays frozen (every base
array and the file on disk bit for bit after training), only the adapters are trainable, A is drawn the same on every
backend and B is zero; the gradients of A and B equal PyTorch autograd through PEFT's model (float64 1e-8, float32
1e-4); four AdamW steps equal PEFT + torch.optim.AdamW from our step-0 adapter (float64); PEFT loads our saved adapter
and we load PEFT's (scratch.models.load(folder, adapter=...) and load_adapter) with equal logits; merge/unmerge round
trip; dropout masks are reused by checkpointing's recomputation and absent from evaluation; LoraTrainer with mixed
precision; bad input (unknown target, r <= 0, base shapes that disagree, unsupported PEFT features) names itself.
"""
from __future__ import annotations

import copy
import hashlib
import json

import numpy as np
import peft
import pytest
import torch
import torch.nn.functional as TF
import transformers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import backends
import scratch.models
from scratch import train
from scratch.models.safetensors import read_header
from scratch.train import decoder, lora, model_grads
from scratch.train.data import write_tokens
from tests.models.causal_lm import perturb_and_save
from tests.train.test_model_grads import GPT2_KW, LLAMA_KW, LLAMA_VARIANTS, TOL, batch, counting_batch, torch_model
from tests.train.test_model_grads import one_torch_thread  # noqa: F401  (autouse: torch on one thread here too)

FD_SETTINGS = settings(max_examples=10, deadline=None,
                       suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
# Every projection each family has, so each code path (fused parts, Conv1D layout) carries an adapter.
TARGETS = {"llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
           "gpt2": ["c_attn", "c_proj", "c_fc"]}
RSLORA = {"llama": False, "gpt2": True}
R, ALPHA = 4, 8


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    """{family: (transformers model, folder)}: random weights, 1-D parameters perturbed so every term matters."""
    built = {}
    torch.manual_seed(0)
    for family in ("llama", "gpt2"):
        if family == "llama":
            hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA_KW,
                                                                        **LLAMA_VARIANTS["gqa-llama3-tied"]))
        else:
            hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2_KW, activation_function="gelu_new"))
        folder = tmp_path_factory.mktemp(family)
        built[family] = (perturb_and_save(hf, folder), folder)
    return built


@pytest.fixture(params=["llama", "gpt2"])
def family(request):
    return request.param


def peft_config(family: str, **overrides) -> peft.LoraConfig:
    kwargs = dict(r=R, lora_alpha=ALPHA, target_modules=TARGETS[family], lora_dropout=0.0,
                  use_rslora=RSLORA[family], fan_in_fan_out=family == "gpt2")
    return peft.LoraConfig(**{**kwargs, **overrides})


def attach(model, family: str, seed: int = 0, **kwargs):
    return train.add_lora(model, r=R, lora_alpha=ALPHA, target_modules=TARGETS[family], seed=seed,
                          use_rslora=RSLORA[family], **kwargs)


def randomise_b(state, backend, seed: int = 1):
    """B = 0 at init makes dA = 0; tests of A's gradient give B values first (host-drawn, the same everywhere)."""
    rng = np.random.default_rng(seed)
    for adapter in state.modules.values():
        adapter.B[...] = backend.asarray(rng.standard_normal(tuple(adapter.B.shape)) * 0.1, dtype=state.dtype)


def host(backend, params: dict) -> dict:
    return {name: np.array(backend.to_numpy(a), copy=True) for name, a in params.items()}


def peft_model(hf, family: str, dtype: str, ours, adapters: dict | None = None, **overrides):
    """PEFT around torch_model(hf, dtype, ours) (the exact float64 reference), with our adapter values loaded."""
    model = peft.get_peft_model(torch_model(hf, dtype, ours), peft_config(family, **overrides))
    if adapters is not None:
        result = peft.set_peft_model_state_dict(model, {k: torch.from_numpy(v) for k, v in adapters.items()})
        assert not result.unexpected_keys
    return model


def torch_loss(model, ids, targets):
    logits = model(torch.tensor(ids)).logits                                 # (B, T, V)
    return TF.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.tensor(targets).reshape(-1),
                            ignore_index=-100)


def peft_grads(model) -> dict:
    """{PEFT's saved name: grad}: named_parameters carry the adapter name ("lora_A.default.weight")."""
    return {name.replace(".default", ""): p.grad.numpy() for name, p in model.named_parameters() if p.requires_grad}


def assert_close(ours, reference, tol: float, what: str):
    scale = max(float(np.abs(reference).max()), 1e-30)
    error = float(np.abs(np.asarray(ours) - reference).max())
    assert error <= tol * scale, f"{what}: max error {error:.3g} vs max |reference| {scale:.3g}"


def file_digest(folder) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


# --- the adapter's forward/backward pair ------------------------------------------------------------------------------

@FD_SETTINGS
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 3), T=st.integers(1, 4), C_in=st.integers(1, 6),
       out=st.integers(1, 6), r=st.integers(1, 3), dropout=st.booleans())
def test_lora_pair_matches_finite_differences(backend, seed, rows, T, C_in, out, r, dropout):
    rng = np.random.default_rng(seed)
    x, A, B = rng.standard_normal((rows, T, C_in)), rng.standard_normal((r, C_in)), rng.standard_normal((out, r))
    mask = (rng.random((rows, T, C_in)) >= 0.3) / 0.7 if dropout else None
    scaling = 1.7
    cotangent = rng.standard_normal((rows, T, out))

    def loss(x, A, B):
        y = decoder.lora_forward(backend.asarray(x), backend.asarray(A), backend.asarray(B), scaling,
                                 None if mask is None else backend.asarray(mask))[0]
        return float(np.sum(backend.to_numpy(y) * cotangent))

    y, cache = decoder.lora_forward(backend.asarray(x), backend.asarray(A), backend.asarray(B), scaling,
                                    None if mask is None else backend.asarray(mask))
    x_in = x if mask is None else x * mask
    np.testing.assert_allclose(backend.to_numpy(y), scaling * (x_in @ A.T) @ B.T, rtol=1e-12, atol=1e-12)
    grads = decoder.lora_backward(backend.asarray(cotangent), cache)
    inputs, h = [x, A, B], 1e-6
    for index, grad in enumerate(grads):
        assert tuple(grad.shape) == inputs[index].shape and grad.dtype == backend.xp.float64
        u = rng.standard_normal(inputs[index].shape)
        plus, minus = list(inputs), list(inputs)
        plus[index], minus[index] = inputs[index] + h * u, inputs[index] - h * u
        numeric = (loss(*plus) - loss(*minus)) / (2 * h)
        analytic = float(np.sum(backend.to_numpy(grad) * u))
        assert abs(numeric - analytic) <= 1e-6 * (1 + abs(analytic)), (index, numeric, analytic)


# --- at init, frozen base, what is trainable ----------------------------------------------------------------------

def test_unchanged_at_init_base_frozen_only_adapters_train(hf_models, family, backend):
    hf, folder = hf_models[family]
    digest = file_digest(folder)
    model = scratch.models.load(folder, backend=backend, dtype="float32")
    base = host(backend, train.named_parameters(model))
    ids, targets = counting_batch(model.n_vocab, 0)
    before = backend.to_numpy(model(ids))
    state = attach(model, family)

    np.testing.assert_array_equal(backend.to_numpy(lora.logits(model, ids)), before)   # B = 0: unchanged
    names = list(state.parameters())
    assert list(train.trainable_parameters(model)) == names
    assert all(".lora_A.weight" in n or ".lora_B.weight" in n for n in names)
    assert len(names) == 2 * len(model.layers) * (7 if family == "llama" else 4)
    for adapter in state.modules.values():
        A, B = backend.to_numpy(adapter.A), backend.to_numpy(adapter.B)
        assert A.dtype == B.dtype == np.float32
        assert not B.any() and 0 < np.abs(A).max() <= 1 / np.sqrt(A.shape[1])   # kaiming-uniform(a=sqrt(5)) bound
    optimizer = train.AdamW(model, lr=1e-2, weight_decay=0.1)
    assert list(optimizer.params) == names                                      # AdamW(model) steps only them
    losses = []
    for step in range(3):
        loss, grads = train.loss_and_grads(model, ids, targets)
        assert list(grads) == names
        optimizer.step(grads)
        losses.append(loss)
    assert losses[-1] < losses[0]
    for name, array in train.named_parameters(model).items():                   # the base: bit for bit
        np.testing.assert_array_equal(backend.to_numpy(array), base[name], err_msg=name)
    assert any(backend.to_numpy(a.B).any() for a in state.modules.values())
    assert file_digest(folder) == digest                                         # and on disk


def test_same_adapters_on_every_backend(backend):
    config = scratch.models.LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    ours = train.add_lora(scratch.models.from_config(config, backend=backend), r=3, target_modules="all-linear",
                          seed=5)
    reference = train.add_lora(scratch.models.from_config(config), r=3, target_modules="all-linear", seed=5)
    assert list(ours.modules) == list(reference.modules)
    for module, adapter in ours.modules.items():
        np.testing.assert_array_equal(backend.to_numpy(adapter.A), reference.modules[module].A, err_msg=module)


# --- gradients and steps against PEFT -----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gradients_equal_peft_autograd(hf_models, family, backend, dtype):
    hf, folder = hf_models[family]
    model = scratch.models.load(folder, backend=backend, dtype=dtype)
    state = attach(model, family)
    randomise_b(state, backend)
    ids, targets = batch(model.n_vocab)
    loss, grads = train.loss_and_grads(model, ids, targets)

    reference = peft_model(hf, family, dtype, model, host(backend, state.parameters()))
    torch_value = torch_loss(reference, ids, targets)
    torch_value.backward()
    expected = peft_grads(reference)
    assert list(grads) == list(expected)                                          # PEFT's names, PEFT's order
    assert abs(loss - torch_value.item()) <= TOL[dtype] * abs(torch_value.item())
    for name, grad in grads.items():
        assert grad.dtype == backend.dtype(dtype)
        assert_close(backend.to_numpy(grad), expected[name], TOL[dtype], name)


def test_adamw_steps_equal_peft_and_torch_adamw(hf_models, family):
    """Four steps from our step-0 adapter (B = 0, so the first step moves only B), float64."""
    hf, folder = hf_models[family]
    model = scratch.models.load(folder, dtype="float64")
    state = attach(model, family)
    reference = peft_model(hf, family, "float64", model, host(backends.get("numpy"), state.parameters()))
    hyper = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    optimizer = train.AdamW(model, **hyper)
    torch_optimizer = torch.optim.AdamW([p for p in reference.parameters() if p.requires_grad], **hyper)
    for step in range(4):
        ids, targets = counting_batch(model.n_vocab, step)
        loss, grads = train.loss_and_grads(model, ids, targets)
        optimizer.step(grads)
        torch_optimizer.zero_grad()
        torch_value = torch_loss(reference, ids, targets)
        torch_value.backward()
        torch_optimizer.step()
        assert abs(loss - torch_value.item()) <= 1e-10 * abs(loss), (step, loss, torch_value.item())
    expected = {n.replace(".default", ""): p.detach().numpy() for n, p in reference.named_parameters()
                if p.requires_grad}
    for name, array in state.parameters().items():
        assert_close(array, expected[name], 1e-8, name)


# --- PEFT's files, both ways --------------------------------------------------------------------------------------

def test_peft_loads_our_adapter(hf_models, family, tmp_path):
    hf, folder = hf_models[family]
    model = scratch.models.load(folder, dtype="float32")
    state = attach(model, family)
    randomise_b(state, model.backend)
    ids, _ = batch(model.n_vocab)
    ours = model.backend.to_numpy(lora.logits(model, ids))
    out = train.save_adapter(model, tmp_path / "adapter", base_model_name_or_path=str(folder))

    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["peft_type"], config["task_type"], config["bias"]) == ("LORA", "CAUSAL_LM", "none")
    assert (config["r"], config["lora_alpha"], config["use_rslora"]) == (R, ALPHA, RSLORA[family])
    assert config["target_modules"] == sorted(TARGETS[family]) and config["lora_dropout"] == 0.0
    assert config["fan_in_fan_out"] == (family == "gpt2") and config["base_model_name_or_path"] == str(folder)
    header = read_header(out / "adapter_model.safetensors")
    assert {k for k in header if k != "__metadata__"} == set(state.parameters())
    assert {info["dtype"] for k, info in header.items() if k != "__metadata__"} == {"F32"}   # the model's dtype

    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(hf).float(), out)
    with torch.no_grad():
        theirs = loaded(torch.tensor(ids)).logits.numpy()
    assert_close(ours, theirs, 1e-4, "PEFT with our adapter")
    merged = scratch.models.load(folder, dtype="float32", adapter=out)                  # base + adapter, merged
    assert_close(merged.backend.to_numpy(merged(ids)), theirs, 1e-4, "scratch.models.load(adapter=)")


def test_we_load_peft_s_adapter(hf_models, family, tmp_path):
    """PEFT with init_lora_weights=False (B not zero) saves; we merge it at load, or attach it, in float64."""
    hf, folder = hf_models[family]
    model = scratch.models.load(folder, dtype="float64")
    torch.manual_seed(7)
    reference = peft_model(hf, family, "float64", model, init_lora_weights=False)
    reference.save_pretrained(tmp_path / "theirs")
    ids, _ = batch(model.n_vocab)
    with torch.no_grad():
        theirs = reference(torch.tensor(ids)).logits.numpy()

    merged = scratch.models.load(folder, dtype="float64", adapter=tmp_path / "theirs")
    assert_close(merged(ids), theirs, 1e-8, "merged at load")
    state = train.load_adapter(model, tmp_path / "theirs")                              # attached, trainable
    assert list(state.parameters()) == list(peft_grads_names(reference))
    assert_close(lora.logits(model, ids), theirs, 1e-8, "load_adapter + lora.logits")


def peft_grads_names(model):
    return [name.replace(".default", "") for name, p in model.named_parameters() if p.requires_grad]


# --- merge and unmerge --------------------------------------------------------------------------------------------

def test_merge_unmerge_round_trip(hf_models, family, backend):
    _, folder = hf_models[family]
    model = scratch.models.load(folder, backend=backend, dtype="float32")
    base = host(backend, train.named_parameters(model))
    state = attach(model, family)
    randomise_b(state, backend)
    ids, targets = batch(model.n_vocab)
    adapted = backend.to_numpy(lora.logits(model, ids))
    train.merge_lora(model)
    assert_close(backend.to_numpy(model(ids)), adapted, 1e-5, "merged model(ids)")
    np.testing.assert_array_equal(backend.to_numpy(lora.logits(model, ids)), backend.to_numpy(model(ids)))
    with pytest.raises(ValueError, match="already merged"):
        train.merge_lora(model)
    with pytest.raises(ValueError, match="unmerge_lora"):
        train.loss_and_grads(model, ids, targets)
    train.unmerge_lora(model)
    for name, array in train.named_parameters(model).items():                    # within float32 rounding
        assert_close(backend.to_numpy(array), base[name], 1e-6, name)
    assert_close(backend.to_numpy(lora.logits(model, ids)), adapted, 1e-5, "unmerged")
    train.merge_lora(model)
    train.remove_lora(model)                                                       # merge_and_unload
    assert train.lora_state(model) is None and "lora" not in "".join(train.trainable_parameters(model))
    assert_close(backend.to_numpy(model(ids)), adapted, 1e-5, "merged, then adapters removed")


# --- dropout ------------------------------------------------------------------------------------------------------

def test_dropout_masks_are_seeded_reused_by_checkpointing_and_off_in_evaluation(hf_models, backend):
    _, folder = hf_models["llama"]
    ids, targets = batch(61)
    grads = {}
    for checkpointing in (False, True):
        model = scratch.models.load(folder, backend=backend, dtype="float64")
        randomise_b(attach(model, "llama", seed=3, lora_dropout=0.5), backend)
        grads[checkpointing] = train.loss_and_grads(model, ids, targets, checkpointing=checkpointing)
    assert grads[False][0] == grads[True][0]
    for name, grad in grads[False][1].items():                                   # the same masks, recomputed
        np.testing.assert_array_equal(backend.to_numpy(grads[True][1][name]), backend.to_numpy(grad))
    plain = scratch.models.load(folder, backend=backend, dtype="float64")
    randomise_b(attach(plain, "llama", seed=3), backend)
    plain_loss, _ = train.loss_and_grads(plain, ids, targets)
    assert plain_loss != grads[False][0]                                           # dropout was applied
    np.testing.assert_array_equal(backend.to_numpy(lora.logits(model, ids)),      # evaluation: no dropout
                                  backend.to_numpy(lora.logits(plain, ids)))
    state = train.lora_state(model)
    state.draw_dropout_masks((4, 50))
    mask = backend.to_numpy(state.masks["model.layers.0.self_attn.q_proj"])
    assert mask.shape == (4, 50, 32) and set(np.unique(mask)) == {0.0, 2.0}       # inverted dropout, p = 0.5
    assert abs((mask == 0).mean() - 0.5) < 0.05


# --- the trainer ----------------------------------------------------------------------------------------------------

def test_lora_trainer_with_mixed_precision(hf_models, tmp_path):
    """float16 compute copy of the frozen base, float32 adapters as master weights; checkpoints hold the adapter."""
    _, folder = hf_models["gpt2"]
    model = scratch.models.load(folder, dtype="float32")
    base = host(model.backend, train.named_parameters(model))
    attach(model, "gpt2")
    ids = np.random.default_rng(0).integers(0, model.n_vocab, 400)
    data = write_tokens([ids.tolist()], tmp_path / "tokens", model.n_vocab)
    settings = train.TrainSettings(steps=3, batch_size=2, seq_len=8, warmup_steps=1, eval_every=0, log_every=0,
                                   mixed_precision=True)
    trainer = train.LoraTrainer(model, data, None, settings, out_dir=tmp_path / "run", log=None)
    assert set(trainer.optimizer.params) == set(train.adapter_parameters(model))
    assert all(p.dtype == np.float32 for p in trainer.optimizer.params.values())
    result = trainer.run()
    assert len(result.losses) == 3 and all(np.isfinite(list(result.losses.values())))
    saved = result.checkpoint
    assert (saved / "adapter_model.safetensors").is_file() and not (saved / "model.safetensors").exists()
    for name, array in train.named_parameters(model).items():
        np.testing.assert_array_equal(array, base[name], err_msg=name)


# --- bad input ------------------------------------------------------------------------------------------------------

def test_bad_input_names_itself(hf_models, tmp_path):
    hf, folder = hf_models["gpt2"]
    model = scratch.models.load(folder)
    with pytest.raises(ValueError, match=r"'q_proj' matches no projection of GPT2.*attn\.c_attn"):
        train.add_lora(model, target_modules=["q_proj"])
    for r in (0, -2, 1.5):
        with pytest.raises(ValueError, match=f"rank r must be a positive integer, got {r}"):
            train.add_lora(model, r=r)
    with pytest.raises(ValueError, match="lora_dropout"):
        train.add_lora(model, lora_dropout=1.0)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        train.merge_lora(model)
    train.add_lora(model, r=2)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        train.add_lora(model, r=2)

    # an adapter whose base shapes disagree: trained on a wider MLP
    small = scratch.models.load(hf_models["llama"][1])
    train.add_lora(small, r=2, target_modules=["gate_proj"])
    train.save_adapter(small, tmp_path / "adapter")
    other = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**LLAMA_KW, "intermediate_size": 40}))
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match=r"module 'model\.layers\.0\.mlp\.gate_proj'.*\(40, 32\)"):
        scratch.models.load(tmp_path / "other", adapter=tmp_path / "adapter")
    with pytest.raises(ValueError, match=r"module 'model\.layers\.0\.mlp\.gate_proj'"):
        train.load_adapter(scratch.models.load(tmp_path / "other"), tmp_path / "adapter")
    with pytest.raises(ValueError, match=r"no weight for module 'model\.layers\.0\.mlp\.gate_proj'"):
        scratch.models.load(folder, adapter=tmp_path / "adapter")                      # a GPT-2 base

    config_path = tmp_path / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    for key, value in (("use_dora", True), ("peft_type", "IA3"), ("modules_to_save", ["lm_head"])):
        config_path.write_text(json.dumps({**config, key: value}))
        with pytest.raises(ValueError, match=key):
            scratch.models.load(hf_models["llama"][1], adapter=tmp_path / "adapter")
    with pytest.raises(FileNotFoundError, match="adapter_config.json is missing"):
        scratch.models.load(folder, adapter=tmp_path)
    config_path.write_text('{"peft_type": LORA}')                      # a stranger's file: read as config.json is
    with pytest.raises(ValueError, match="adapter_config.json: not valid JSON"):
        scratch.models.load(hf_models["llama"][1], adapter=tmp_path / "adapter")
    config_path.write_text("[" * 100_000)
    with pytest.raises(ValueError, match="nested too deeply"):
        scratch.models.load(hf_models["llama"][1], adapter=tmp_path / "adapter")
