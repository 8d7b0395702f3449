"""Where a hierarchy loses a key: linear read-outs of MQAR's pairs from PHOTON's encoder states.

A PHOTON model recalls a value asked in a later meta-context only through its top stream: the
pairs of the key-value block must survive in the state of the chunk that holds them at every
level, and the top encoder must carry them to the meta-contexts where they are asked. For each
level l and each pair j, a linear probe (a softmax classifier over the vocabulary's keys, and
one over its values) is fitted to the level-l state of the chunk holding the pair on one
stream of sequences and scored on another. The top level is also read at every later
meta-context, by how many meta-contexts after the pair's own: what the top stream carries
forward. Chance is 2 / vocab (one of the vocabulary's keys, or of its values).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from photon.errors import InputError
from photon.evaluation.recall import MQAR, TEST, VALIDATION
from photon.model.lm import Model, PhotonLM

PROBE_STEPS = 300  # full-batch Adam steps of a probe
PROBE_DECAY = 1e-3  # L2 on the probe's weights


def probe_accuracy(fit_x: Tensor, fit_y: Tensor, test_x: Tensor, test_y: Tensor,
                   classes: int, steps: int = PROBE_STEPS) -> float:
    """Accuracy on (test_x, test_y) of a linear softmax classifier over `classes` labels
    (0 .. classes-1) fitted on (fit_x, fit_y); inputs standardized with the fit's statistics."""
    mean, scale = fit_x.mean(0), fit_x.std(0).clamp_min(1e-6)
    fx, tx = (fit_x - mean) / scale, (test_x - mean) / scale
    probe = torch.nn.Linear(fx.shape[1], classes)
    torch.nn.init.zeros_(probe.weight)
    optimizer = torch.optim.Adam(probe.parameters(), lr=0.05)
    with torch.enable_grad():
        for _ in range(steps):
            loss = (torch.nn.functional.cross_entropy(probe(fx), fit_y)
                    + PROBE_DECAY * probe.weight.square().sum())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return float((probe(tx).argmax(-1) == test_y).double().mean())


@torch.no_grad()
def level_states(model: PhotonLM, task: MQAR, seq_len: int, pairs: int, sequences: int,
                 seed: int, stream: int) -> tuple[list[Tensor], Tensor]:
    """Encoder states of `sequences` sequences of a stream (K = pairs, Zoology's queries):
    per level [N, n_l, D] (float), and the sequences' ids [N, T]."""
    batch = task.batch(list(range(sequences)), seq_len, seed, stream, pairs)
    device = next(model.parameters()).device
    states = model.encode(batch.ids.to(device))
    return [s.float().cpu() for s in states], batch.ids


def key_readout(model: Model, task: MQAR, seq_len: int, pairs: int, seed: int = 0,
                fit_sequences: int = 2048, test_sequences: int = 512) -> dict:
    """Read-out accuracy of each pair's key and value, by level (the state of the chunk that
    holds the pair) and, for the top level, by meta-contexts after the pair's (see the module
    doc). Fitted on the validation stream, scored on the test stream."""
    if not isinstance(model, PhotonLM) or model.config.n_levels < 1:
        raise InputError("a read-out of encoder states needs a PHOTON model")
    task.check_length(seq_len, pairs)
    model.eval()
    c = model.config
    fit_states, fit_ids = level_states(model, task, seq_len, pairs, fit_sequences, seed,
                                       VALIDATION)
    test_states, test_ids = level_states(model, task, seq_len, pairs, test_sequences, seed,
                                         TEST)
    half = task.vocab // 2

    def read(fit_x: Tensor, test_x: Tensor, j: int) -> dict[str, float]:
        """Key j and value j (as labels 0 .. vocab/2 - 1) from the states given."""
        return {name: probe_accuracy(fit_x, fit_ids[:, pos] % half, test_x,
                                     test_ids[:, pos] % half, half)
                for name, pos in (("key", 2 * j), ("value", 2 * j + 1))}

    levels, top_by_distance = [], {}
    for level in range(1, c.n_levels + 1):
        span = math.prod(c.chunk_sizes[:level])
        per_pair = [read(fit_states[level - 1][:, (2 * j + 1) // span],
                         test_states[level - 1][:, (2 * j + 1) // span], j)
                    for j in range(pairs) if (2 * j + 1) // span < fit_states[level - 1].shape[1]]
        levels.append({"level": level, "span": span, "pairs": len(per_pair),
                       **{k: sum(p[k] for p in per_pair) / max(len(per_pair), 1)
                          for k in ("key", "value")}})
        if level == c.n_levels:
            n = fit_states[level - 1].shape[1]
            for j in range(pairs):
                own = (2 * j + 1) // span
                for later in range(own + 1, n):
                    scores = read(fit_states[level - 1][:, later],
                                  test_states[level - 1][:, later], j)
                    top_by_distance.setdefault(later - own, []).append(scores)
    return {"pairs": pairs, "seq_len": seq_len, "fit_sequences": fit_sequences,
            "test_sequences": test_sequences, "chance": 2 / task.vocab, "levels": levels,
            "top_by_distance": [
                {"meta_contexts_after": d, "readouts": len(rows),
                 **{k: sum(r[k] for r in rows) / len(rows) for k in ("key", "value")}}
                for d, rows in sorted(top_by_distance.items())]}
