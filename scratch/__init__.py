"""scratch: the internals of large language models, written from scratch in NumPy and run unchanged on CuPy.

What is here, in reading order: the byte-level BPE tokenizer (`scratch.tokenizer`), transformer layers, models
(GPT-2, Llama, BERT), decoding strategies and fine-tuning. Model code gets its array namespace `xp` from the
backend (`backends.get(...)`) or from its inputs -- never a bare `numpy` call on model data -- so the same code runs
on NumPy (reference), array-api-strict (portability proof) and CuPy (GPU).

Shape letters, used in every comment that annotates a shape (one glossary for the whole project):
    B  batch size                    T  time (sequence length of this call)
    C  channels (model width)        V  vocabulary size
    H  attention heads               Hkv  key/value heads (H for multi-head, 1 for multi-query, between for GQA)
    D  head dimension (C // H)       S  cache length (positions held in the KV cache)
    F  feed-forward (MLP hidden) width
"""

__version__ = "0.1.0"

# The components, for `scratch info`: (name, module, what it is).
COMPONENTS = (
    ("backends", "backends", "one Array API code path for NumPy, array-api-strict and CuPy"),
    ("tokenizer", "scratch.tokenizer", "byte-level BPE: train, encode, decode, real vocabularies"),
    ("layers", "scratch.nn", "embeddings, norms, attention, MLPs, RoPE, KV cache"),
    ("models", "scratch.models", "GPT-2, Llama 2/3.x, BERT loaded from Hugging Face folders"),
    ("generation", "scratch.generate", "greedy, beam search and sampling strategies"),
    ("fine-tuning", "scratch.train", "backward passes, AdamW, LoRA, checkpointing, mixed precision, training loop"),
    ("formats", "scratch.formats", "GGUF read and written, quantization, model ids from the hub cache"),
    ("chat", "scratch.chat", "chat templates and a conversation that keeps its KV cache across turns"),
)
