"""Record what transformers 4 did for group (diverse) beam search, which transformers 5 no longer ships.
tests/generate/test_beam_recorded.py compares scratch with these recordings.

transformers 4.55 is the last release whose `generate` ran group beam search itself (`_group_beam_search`, from
4.56 on it lives in a hub repository); its beam sampling is `_beam_search` with torch.multinomial. This script needs
that version, in a virtual environment of its own (the project's test environment has transformers 5):

    python3 -m venv /tmp/tf4 && /tmp/tf4/bin/pip install "transformers==4.55.4" torch numpy safetensors
    /tmp/tf4/bin/python tests/data/record_beam_tf4.py

It writes tests/data/beam_tf4/: the tiny random models (config.json + model.safetensors, built from fixed torch
seeds and stored, so that a later torch with another initialisation cannot change them) and recorded.json, one entry
per group beam search setting with its sequences and sequences_scores. The third model, "small" (12 tokens), also
serves the beam sampling tests. Beam sampling is not recorded: transformers 5 still ships it (and changed it -- 4.x finished
the first num_beams candidates in the order torch.multinomial drew them, 5 sorts the drawn candidates by score
first, as scratch does), so the tests compare with transformers 5 directly.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import transformers

OUT = Path(__file__).resolve().parent / "beam_tf4"
PROMPTS = [[5, 6, 7, 8, 9], [1, 1, 11, 12, 13]]       # row 1 left-padded with pad id 1
SMALL_PROMPTS = [[3, 4, 5, 6, 7], [1, 1, 8, 9, 10]]    # the same shape for the 12-token model
MASK = [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]
PAD = 1
MAX_NEW = 10


def build_models() -> dict:
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4, initializer_range=0.2,
        bos_token_id=0, eos_token_id=0)).eval()
    torch.manual_seed(1)
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=113, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.2, bos_token_id=0,
        eos_token_id=0, pad_token_id=None)).eval()
    torch.manual_seed(2)
    # A 12-token vocabulary: every distribution of a few sampled tokens has few enough cells for a chi-square test.
    small = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=12, n_positions=16, n_embd=16, n_layer=1, n_head=2, initializer_range=0.6,
        bos_token_id=0, eos_token_id=0)).eval()
    return {"gpt2": gpt2, "llama": llama, "small": small}


def frequent_tokens(hf, prompts, count: int) -> list[int]:
    """Tokens greedy decoding produces most often: as EOS ids they end some beams early."""
    with torch.no_grad():
        out = hf.generate(torch.tensor(prompts), attention_mask=torch.tensor(MASK), do_sample=False,
                          max_new_tokens=MAX_NEW, pad_token_id=PAD, eos_token_id=None)
    generated = out.numpy()[:, len(PROMPTS[0]):].ravel()
    values, counts = np.unique(generated[generated != PAD], return_counts=True)
    return [int(v) for v in values[np.argsort(-counts, kind="stable")][:count]]


# (num_beams, num_beam_groups, diversity_penalty, length_penalty, early_stopping, num_return_sequences,
#  which frequent token is EOS or None)
GROUP_CASES = {
    "gpt2": [(4, 2, 0.5, 1.0, False, 4, 0), (4, 2, 1.0, 0.0, True, 2, 1), (6, 3, 0.7, 2.0, "never", 3, 0),
             (4, 4, 2.0, 1.0, False, 4, None), (6, 2, 0.3, -1.0, False, 6, 1), (4, 2, 0.1, 1.0, "never", 4, 0),
             (6, 3, 5.0, 1.0, True, 6, 2), (4, 2, 0.5, 1.0, "never", 4, 2), (6, 2, 1.5, 0.5, False, 4, 0)],
    "llama": [(4, 2, 0.5, 1.0, False, 4, 0), (6, 3, 1.0, 0.0, "never", 6, 1), (4, 2, 2.0, 2.0, True, 2, 0)],
    # 12 tokens: every token, 0 included (the value of an empty slot), is a candidate of most steps.
    "small": [(4, 2, 0.5, 1.0, False, 4, None), (4, 2, 1.0, 1.0, False, 4, 0), (6, 3, 0.7, 0.0, "never", 6, 1),
              (4, 2, 2.0, 2.0, True, 4, None)],
}

def main() -> None:
    assert transformers.__version__.startswith("4."), "record with transformers 4 (see the docstring)"
    models = build_models()
    OUT.mkdir(exist_ok=True)
    for name, hf in models.items():
        hf.save_pretrained(OUT / name)
    record = {"transformers": transformers.__version__, "torch": torch.__version__, "mask": MASK, "pad": PAD,
              "max_new_tokens": MAX_NEW, "group": {}}
    for name in ("gpt2", "llama", "small"):
        hf = models[name]
        prompts = SMALL_PROMPTS if name == "small" else PROMPTS
        frequent = frequent_tokens(hf, prompts, 3)
        entries = []
        for beams, groups, diversity, length_penalty, early_stopping, nrs, eos in GROUP_CASES[name]:
            kw = dict(num_beams=beams, num_beam_groups=groups, diversity_penalty=diversity,
                      length_penalty=length_penalty, early_stopping=early_stopping, num_return_sequences=nrs,
                      eos_token_id=None if eos is None else frequent[eos])
            with torch.no_grad():
                out = hf.generate(torch.tensor(prompts), attention_mask=torch.tensor(MASK), do_sample=False,
                                  max_new_tokens=MAX_NEW, pad_token_id=PAD, output_scores=True,
                                  return_dict_in_generate=True, **kw)
            entries.append({"kwargs": kw, "sequences": out.sequences.tolist(),
                            "sequences_scores": [float(s) for s in out.sequences_scores.float()]})
        record["group"][name] = {"prompts": prompts, "frequent_tokens": frequent, "cases": entries}
    (OUT / "recorded.json").write_text(json.dumps(record, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
