"""scratch.train.data: token files round-trip (uint16 and uint32, memory-mapped, the JSON description), bad ids and
damaged files raise errors naming them, an interrupted write leaves the old file, tokenize_files splits every
document into train/val that decode back to the text, and random batches are seeded windows shifted by one."""
from __future__ import annotations

import json

import numpy as np
import pytest

from scratch.tokenizer import BPETokenizer
from scratch.train.data import END_OF_TEXT, random_batch, read_tokens, token_dtype, tokenize_files, write_tokens


@pytest.mark.parametrize("vocab_size, dtype", [(300, "uint16"), (65536, "uint16"), (65537, "uint32"),
                                               (128256, "uint32")])
def test_round_trip_picks_the_smallest_dtype(tmp_path, vocab_size, dtype):
    docs = [[0, 5, vocab_size - 1], [], [7, 7]]
    written = write_tokens(docs, tmp_path / "part", vocab_size, separator=1)
    assert token_dtype(vocab_size) == np.dtype(dtype)
    reread = read_tokens(tmp_path / "part.bin")
    for token_file in (written, reread):
        assert isinstance(token_file.ids, np.memmap) and token_file.ids.dtype == np.dtype(dtype)
        assert token_file.ids.tolist() == [0, 5, vocab_size - 1, 1, 1, 7, 7, 1]
        assert (token_file.vocab_size, token_file.documents, token_file.separator, len(token_file)) == (
            vocab_size, 3, 1, 8)
    meta = json.loads((tmp_path / "part.json").read_text())
    assert meta == {"format": "scratch-tokens", "version": 1, "dtype": dtype, "vocab_size": vocab_size,
                    "tokens": 8, "documents": 3, "separator": 1}
    assert (tmp_path / "part.bin").stat().st_size == 8 * np.dtype(dtype).itemsize
    assert (tmp_path / "part.bin").read_bytes()[:2] == b"\x00\x00"    # little-endian ids, no header in the .bin


def test_id_outside_the_vocabulary_names_the_document(tmp_path):
    with pytest.raises(ValueError, match="document 1 has token id 300"):
        write_tokens([[1, 2], [3, 300]], tmp_path / "bad", 300)
    with pytest.raises(ValueError, match="separator id 400"):
        write_tokens([[1]], tmp_path / "bad", 300, separator=400)


def test_damaged_files_raise_errors_naming_them(tmp_path):
    write_tokens([[1, 2, 3, 4]], tmp_path / "t", 300)
    with open(tmp_path / "t.bin", "r+b") as handle:
        handle.truncate(6)
    with pytest.raises(ValueError, match="truncated"):
        read_tokens(tmp_path / "t")
    (tmp_path / "u.json").write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="not a scratch-tokens file"):
        read_tokens(tmp_path / "u")
    with pytest.raises(FileNotFoundError, match="no token file description"):
        read_tokens(tmp_path / "missing")


def test_an_interrupted_write_leaves_the_previous_file(tmp_path):
    write_tokens([[1, 2, 3]], tmp_path / "t", 300)

    def documents():
        yield [4, 5]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_tokens(documents(), tmp_path / "t", 300)
    assert read_tokens(tmp_path / "t").ids.tolist() == [1, 2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.bin", "t.json"]     # no temporary file left


def test_tokenize_files_splits_every_document_and_decodes_back(tmp_path):
    texts = ["the cat sat on the mat. " * 20, "a dog ran in the park!\n" * 15]
    files = []
    for index, text in enumerate(texts):
        files.append(tmp_path / f"doc{index}.txt")
        files[-1].write_text(text, encoding="utf-8")
    tokenizer = BPETokenizer.train(texts, 300, special_tokens=[END_OF_TEXT])
    train_file, val_file = tokenize_files(tokenizer, files, tmp_path / "data", val_fraction=0.2)
    eot = tokenizer.special_tokens[END_OF_TEXT]
    assert train_file.separator == val_file.separator == eot and train_file.ids.dtype == np.uint16

    def split_docs(ids):
        docs, current = [], []
        for token in ids.tolist():
            if token == eot:
                docs.append(current)
                current = []
            else:
                current.append(token)
        assert current == []                        # every document ends with the separator
        return docs

    train_docs, val_docs = split_docs(train_file.ids), split_docs(val_file.ids)
    for text, head, tail in zip(texts, train_docs, val_docs):
        assert tokenizer.decode(head + tail) == text
        assert len(tail) == round(0.2 * (len(head) + len(tail)))


def test_corpus_text_that_looks_special_is_ordinary_text(tmp_path):
    (tmp_path / "a.txt").write_text(f"one {END_OF_TEXT} two", encoding="utf-8")
    tokenizer = BPETokenizer.train(["one two"], 260, special_tokens=[END_OF_TEXT])
    train_file, _ = tokenize_files(tokenizer, [tmp_path / "a.txt"], tmp_path / "data", val_fraction=0.0)
    ids = train_file.ids.tolist()
    assert ids[-1] == tokenizer.special_tokens[END_OF_TEXT] and ids.count(ids[-1]) == 1
    assert tokenizer.decode(ids[:-1]) == f"one {END_OF_TEXT} two"


def test_random_batch_is_seeded_windows_shifted_by_one():
    ids = np.arange(1000, dtype=np.uint16)
    inputs, targets = random_batch(ids, np.random.default_rng(3), batch_size=4, seq_len=16)
    assert inputs.shape == targets.shape == (4, 16) and inputs.dtype == targets.dtype == np.int64
    np.testing.assert_array_equal(targets, inputs + 1)               # consecutive ids: the shift is visible
    np.testing.assert_array_equal(inputs[:, 0], np.random.default_rng(3).integers(0, 1000 - 16, size=4))
    again, _ = random_batch(ids, np.random.default_rng(3), batch_size=4, seq_len=16)
    np.testing.assert_array_equal(again, inputs)
    only_window = random_batch(ids[:17], np.random.default_rng(0), 2, 16)   # T + 1 ids: one window fits
    np.testing.assert_array_equal(only_window[0], [ids[:16]] * 2)
    np.testing.assert_array_equal(only_window[1], [ids[1:17]] * 2)
    with pytest.raises(ValueError, match="fewer than seq_len"):
        random_batch(ids[:16], np.random.default_rng(0), 1, 16)
