"""What every decoding strategy returns, and the per-step scores it records on the way.

`GenerateOutput` mirrors transformers' GenerateDecoderOnlyOutput / GenerateBeamDecoderOnlyOutput (sequences,
sequences_scores, scores, logits, beam_indices), every array on the host. `last_scores` turns a forward's logits into
the (B, V) float32 scores a step works on; `record_step` / `recorded_outputs` keep the copies that output_scores and
output_logits ask for. Not here: the strategies (decode_loop.py, beam.py, ...), which all import this module.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np  # host side only: the returned arrays and the recorded copies

__all__ = ["GenerateOutput", "last_scores", "new_record", "record_step", "recorded_outputs"]


@dataclass(frozen=True)
class GenerateOutput:
    """What `generate` returns. Every array is on the host.

    sequences: (B * num_return_sequences, T_total) int64, prompt + generated ids; rows that finished early are
        filled with the pad id after their end (and left-padded prompts keep their padding).
    sequences_scores: (B * num_return_sequences,) float32 length-penalised log-probabilities (beam search only).
    scores: with output_scores=True (greedy decoding and sampling), one (B * num_return_sequences, V) float32 array
        per generated step: the scores after every processor and warper, the ones the token was picked from
        (transformers' `scores`; -inf marks what the warpers removed). Otherwise None.
    logits: with output_logits=True, the same for the model's raw logits (transformers' `logits`), float32.
        Beam search and beam sampling record them too, (B * num_beams, V) per step, one row per running beam: scores
        are the processed log-probabilities before the beam's running sum is added, as transformers records them.
    beam_indices: with output_scores or output_logits in beam search, (B * num_return_sequences, generated) int64:
        the running-beam row each returned hypothesis continued at each step (-1 after it ended), so
        scores[t][beam_indices[i, t], sequences[i, T + t]] is the log-probability of its t-th token. Rows of beams
        that are already dead (running score -1e9: fewer live candidates than beams, e.g. after many stop-string
        hits) are unspecified: transformers' topk breaks the ties among them in another order.
    """

    sequences: np.ndarray
    sequences_scores: np.ndarray | None = None
    scores: tuple | None = None
    logits: tuple | None = None
    beam_indices: np.ndarray | None = None


def last_scores(xp, logits):
    """The last position's logits (B, T, V) -> (B, V) float32 (a half model's too: transformers processes in
    float32). With left padding the last column is a real token in every row."""
    last = logits[:, -1, :]
    return last if last.dtype == xp.float32 else xp.astype(last, xp.float32)


def record_step(record: list, backend, config, raw, processed) -> None:
    """Append one step's (raw logits, processed scores) to `record` as host copies, each only if the config asks
    for it (output_logits, output_scores) -- the only per-step (rows, V) transfers to the host."""
    record.append((np.array(backend.to_numpy(raw)) if config.output_logits else None,
                   np.array(backend.to_numpy(processed)) if config.output_scores else None))


def recorded_outputs(record: list | None, config) -> dict:
    """GenerateOutput's `scores` and `logits` fields from a record (None for what was not asked for)."""
    if record is None:
        return {}
    return {"scores": tuple(s for _, s in record) if config.output_scores else None,
            "logits": tuple(raw for raw, _ in record) if config.output_logits else None}


def new_record(config) -> list | None:
    """An empty per-step record when the config asks for scores or logits, else None (nothing is copied)."""
    return [] if (config.output_scores or config.output_logits) else None
