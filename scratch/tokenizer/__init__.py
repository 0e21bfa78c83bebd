"""Byte-level BPE tokenizer (work in progress: see pretokenize.py)."""
