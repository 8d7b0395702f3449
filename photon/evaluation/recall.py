"""Multi-query associative recall (MQAR): what a model's memory recalls exactly.

The task of Zoology (Arora et al. 2023; HazyResearch/zoology, `zoology/data/multiquery_ar.py`).
A sequence of T tokens opens with K key-value pairs: keys from the lower half of the
vocabulary, values from the upper half, all distinct. Later each key is asked once, followed by
its value; the query slots (two tokens each, after the block) are drawn without replacement
with Zoology's power law p(g) ∝ g^(a-1), a = 0.01, so most queries come soon after the block
and a few far from it. Only the values after the queries are scored (every other label is
-100, which the loss ignores); the rest of the sequence is filler. Two differences from
Zoology, both so that a sequence reads as text a model generates: the value follows its query
in the input (Zoology's input has filler there), and filler never repeats a key of its
sequence (a key's one earlier occurrence is its pair).

`distance=d` places the queries at a chosen distance instead: key j (at position 2j) is asked
at position 2j + d, so accuracy can be read by distance.

Zoology's query slots sit on the block's grid of pairs (a key at an even position, its value
at the odd one after), so with even chunk sizes a query and its value always share a chunk:
a hierarchical model must then answer from the summary of earlier chunks alone. `shift=1`
moves the slots one token later (a key at an odd position), so a query's key can end a chunk
and its value open the next, where the model's top stream has read the key.

A sequence is a function of (seed, stream, index) alone: training reads stream `TRAIN`, the
validation during training `VALIDATION`, final scores `TEST`, each held out from the others.
`photon train --data mqar:K=8,16,32` trains on the task (`MQAR.parse`); `recall_scores`
scores a model as each decoding mode generates: the prompt ends after the key-value block,
the rest is teacher-forced through the decoding path (`decoded_logits`), and a value counts
as recalled when it is the argmax of its prediction.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from photon.data.tokenizer import Tokenizer
from photon.errors import ConfigError
from photon.evaluation.validation import Processes
from photon.inference.decoders import make_decoder
from photon.inference.scoring import sequential_logits
from photon.model.lm import Model, PhotonLM

PREFIX = "mqar:"
IGNORE = -100  # the label the loss skips
POWER = 0.01  # Zoology's power_a
TRAIN, VALIDATION, TEST = 0, 1, 2  # streams of sequences
FILLS = ("noise", "queries")  # what follows the K queries of a training sequence


def is_task(data: str) -> bool:
    """Whether a `--data` value names the synthetic task rather than text."""
    return str(data).startswith(PREFIX)


@dataclass
class RecallBatch:
    """Sequences of the task: ids, labels (the value after each query, -100 elsewhere) and
    the key-to-query distance in tokens at each scored label (0 elsewhere), all [B, T]."""

    ids: Tensor
    labels: Tensor
    distance: Tensor


def mqar_example(rng: np.random.Generator, seq_len: int, pairs: int, vocab: int,
                 power: float = POWER, distance: int | None = None, dense: bool = False,
                 shift: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One sequence (ids, labels, distance), each [seq_len]; see the module doc. `dense`
    fills every query slot the K queries leave free with a query of a random key of the
    block (and its value), each scored; `shift` moves the power-law query slots that many
    tokens later."""
    half, block = vocab // 2, 2 * pairs
    first_slot = block + (shift if distance is None else 0)  # where the query slots start
    keys = rng.choice(half, pairs, replace=False)
    values = half + rng.choice(half, pairs, replace=False)
    if distance is None:
        slots = np.arange(1, (seq_len - first_slot) // 2 + 1, dtype=np.float64)
        weights = slots ** (power - 1)
        queries = first_slot + 2 * rng.choice(len(slots), pairs, replace=False,
                                              p=weights / weights.sum())
    else:
        queries = 2 * np.arange(pairs) + distance
    asked = np.arange(pairs)  # the pair each query asks for
    if dense:
        free = np.setdiff1d(np.arange(first_slot, seq_len - 1, 2), queries)
        queries = np.concatenate([queries, free])
        asked = np.concatenate([asked, rng.integers(0, pairs, len(free))])
    ids = rng.choice(np.setdiff1d(np.arange(vocab), keys), seq_len)  # filler
    ids[0:block:2], ids[1:block:2] = keys, values
    ids[queries], ids[queries + 1] = keys[asked], values[asked]
    labels = np.full(seq_len, IGNORE)
    labels[queries + 1] = values[asked]
    distances = np.zeros(seq_len, dtype=np.int64)
    distances[queries + 1] = queries - 2 * asked
    return ids, labels, distances


@dataclass(frozen=True)
class MQAR:
    """The task: the pair counts K it mixes (sequence i has `pairs[i % len(pairs)]`), the
    vocabulary, the power law's exponent, and what fills the training sequences after their
    K queries: filler (`noise`, Zoology's task) or more queries (`queries`: every free slot
    asks a random key again, which gives a model many times the scored values per sequence
    to learn from). Validation and test sequences are always Zoology's."""

    pairs: tuple[int, ...] = (8, 16, 32)
    vocab: int = 1024
    power: float = POWER
    fill: str = "noise"
    shift: int = 0

    def __post_init__(self) -> None:
        if not self.pairs or any(k < 1 for k in self.pairs):
            raise ConfigError(f"--data {self.spec}: K must be one or more positive pair counts")
        if self.vocab % 2 or not 4 <= self.vocab <= 65536:
            raise ConfigError(f"--data {self.spec}: vocab must be even, in [4, 65536]")
        if max(self.pairs) > self.vocab // 2:
            raise ConfigError(f"--data {self.spec}: K={max(self.pairs)} needs a vocab of at least "
                              f"{2 * max(self.pairs)} (distinct keys and distinct values)")
        if not 0 < self.power <= 1:
            raise ConfigError(f"--data {self.spec}: power must be in (0, 1] (1: uniform distances)")
        if self.fill not in FILLS:
            raise ConfigError(f"--data {self.spec}: fill is one of {', '.join(FILLS)}")
        if self.shift not in (0, 1):
            raise ConfigError(f"--data {self.spec}: shift is 0 (Zoology's slots) or 1")

    @classmethod
    def parse(cls, spec: str) -> MQAR:
        """`mqar:K=8,16,32,vocab=1024,power=0.01,fill=noise,shift=0` (all but K optional): a field
        is `name=value`, and values that follow without a name extend K."""
        fields: dict[str, list[str]] = {}
        last = None
        for item in spec.removeprefix(PREFIX).split(","):
            name, sep, value = item.partition("=")
            if sep:
                last = name.strip()
                fields.setdefault(last, []).append(value)
            elif last == "K" and item:
                fields["K"].append(item)
            else:
                raise ConfigError(f"--data {spec}: expected mqar:K=8,16,32[,vocab=N][,power=A]"
                                  "[,fill=noise|queries][,shift=0|1]")
        once = ("vocab", "power", "fill", "shift")
        if set(fields) - {"K", *once} or any(len(fields.get(f, [])) > 1 for f in once):
            raise ConfigError(f"--data {spec}: fields are K, vocab, power, fill and shift, "
                              "each once")
        try:
            pairs = tuple(int(v) for v in fields.get("K", [8, 16, 32]))
            vocab = int(fields.get("vocab", [1024])[0])
            power = float(fields.get("power", [POWER])[0])
            shift = int(fields.get("shift", [0])[0])
        except ValueError:
            raise ConfigError(f"--data {spec}: K, vocab and shift are integers, power a "
                              "number") from None
        return cls(pairs, vocab, power, fields.get("fill", ["noise"])[0], shift)

    @property
    def spec(self) -> str:
        """The canonical `--data` value of this task."""
        pairs = ",".join(map(str, self.pairs))
        fill = "" if self.fill == "noise" else f",fill={self.fill}"
        shift = f",shift={self.shift}" if self.shift else ""
        return f"{PREFIX}K={pairs},vocab={self.vocab},power={self.power:g}{fill}{shift}"

    def check_length(self, seq_len: int, pairs: int | None = None) -> None:
        """K (by default every K of the task) must fit: its block and its queries with their
        values, 4K tokens (and the shift)."""
        pairs = pairs or max(self.pairs)
        if 4 * pairs + self.shift > seq_len:
            raise ConfigError(f"--data {self.spec}: K={pairs} needs sequences of at least "
                              f"{4 * pairs + self.shift} tokens, got --seq-len {seq_len}")

    def tokenizer(self) -> Tokenizer:
        """Keys spelled k0, k1, ..., values v0, v1, ... (filler is any of them)."""
        half = self.vocab // 2
        return Tokenizer.words([f"k{i}" for i in range(half)] + [f"v{i}" for i in range(half)])

    def batch(self, indices: list[int], seq_len: int, seed: int, stream: int = TRAIN,
              pairs: int | None = None, distance: int | None = None) -> RecallBatch:
        """Sequences `indices` of `stream`: each from its own generator seeded with (seed,
        stream, index); K as the task mixes them unless `pairs` is given. A `distance` must
        leave every query after the block and its value inside the sequence."""
        self.check_length(seq_len, pairs)
        if distance is not None and (pairs is None or
                                     not 2 * pairs <= distance <= seq_len - 2 * pairs):
            raise ConfigError(f"distance {distance} needs a K with 2K <= distance <= T - 2K "
                              f"(K={pairs}, T={seq_len})")
        dense = self.fill == "queries" and stream == TRAIN
        rows = [mqar_example(np.random.default_rng([seed, stream, i]), seq_len,
                             pairs or self.pairs[i % len(self.pairs)], self.vocab, self.power,
                             distance, dense, self.shift) for i in indices]
        return RecallBatch(*(torch.from_numpy(np.stack(column)) for column in zip(*rows,
                                                                                 strict=True)))


class SequenceSampler:
    """The training order of a generated task: sequences 0, 1, 2, ... Its whole state is
    how many were handed out (as `photon.data.shards.WindowSampler`'s)."""

    def __init__(self, consumed: int = 0) -> None:
        self.consumed = consumed

    def next(self, count: int) -> list[int]:
        self.consumed += count
        return list(range(self.consumed - count, self.consumed))

    def state_dict(self) -> dict[str, int]:
        return {"consumed": self.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.consumed = int(state["consumed"])


def value_scores(logits: Tensor, labels: Tensor) -> tuple[float, int, int]:
    """(nats, recalled, scored) summed over the values: logits [B, T or T-1, V] where
    [:, i] predicts token i + 1, labels [B, T]; a value is recalled when it is the argmax."""
    target = labels[:, 1:]
    logits = logits[:, :target.shape[1]].float()
    scored = target != IGNORE
    nats = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=IGNORE,
                           reduction="sum")
    recalled = (logits.argmax(-1) == target) & scored
    return nats.item(), int(recalled.sum()), int(scored.sum())


@torch.no_grad()
def recall_validation(model: Model, task: MQAR, seq_len: int, sequences: int, seed: int,
                      autocast: Callable[[], AbstractContextManager], processes: Processes
                      ) -> dict[str, float]:
    """Loss (nats per value) and accuracy at the values of `sequences` sequences of the
    validation stream, through the forward pass: what training reports. Processes split the
    sequences and add up the sums."""
    batch = max(8192 // seq_len, 2)
    nats = hits = count = 0.0
    model.eval()
    for start in range(processes.rank * batch, sequences, batch * processes.world):
        b = task.batch(list(range(start, min(start + batch, sequences))), seq_len, seed,
                       VALIDATION)
        ids, labels = b.ids.to(processes.device), b.labels.to(processes.device)
        with autocast():
            logits = model(ids).logits
        scores = value_scores(logits, labels)
        nats, hits, count = (a + b for a, b in zip((nats, hits, count), scores, strict=True))
    model.train()
    nats, hits, count = processes.sum([nats, hits, count])
    return {"val_loss": nats / max(count, 1), "val_accuracy": hits / max(count, 1)}


@torch.no_grad()
def decoded_logits(model: Model, ids: Tensor, prompt_len: int, mode: str) -> Tensor:
    """Teacher-forced logits [B, T-1, V] ([:, i] predicts token i + 1) as generation
    computes them after a prompt of `prompt_len` >= 1 tokens: PHOTON meta-context by
    meta-context in `mode` (`sequential_logits`), a flat model token by token through its
    KV cache (a ring for a sliding window)."""
    T = ids.shape[1]
    if isinstance(model, PhotonLM):
        return sequential_logits(model, ids, prompt_len, mode)[:, :T - 1]
    decoder = make_decoder(model, "hiergen", len(ids), T)
    decoder.prefill(ids[:, :prompt_len], torch.full((len(ids),), prompt_len))
    steps = [decoder.step(None, forced=ids[:, p:p + 1])[2] for p in range(prompt_len, T)]
    head = model(ids[:, :prompt_len - 1]).logits if prompt_len > 1 else steps[0][:, :0]
    return torch.cat([head, *steps], dim=1)


@torch.no_grad()
def recall_scores(model: Model, task: MQAR, seq_len: int, mode: str, seed: int,
                  sequences: int, distances: dict[int, list[int]] | None = None,
                  batch_size: int = 16) -> dict:
    """Accuracy and loss (nats per value) at the values as `mode` generates, on the test
    stream: for each K of the task, `sequences` sequences with power-law queries
    ("by_pairs"; "accuracy" pools them), and `sequences` more at each distance of
    `distances[K]` ("by_distance"). Every sequence is scored after a prompt that ends with
    its key-value block."""
    device = next(model.parameters()).device
    model.eval()

    def score(pairs: int, distance: int | None) -> dict:
        nats = recalled = values = 0
        for start in range(0, sequences, batch_size):
            b = task.batch(list(range(start, min(start + batch_size, sequences))), seq_len,
                           seed, TEST, pairs, distance)
            ids, labels = b.ids.to(device), b.labels.to(device)
            n, r, v = value_scores(decoded_logits(model, ids, 2 * pairs, mode), labels)
            nats, recalled, values = nats + n, recalled + r, values + v
        return {"pairs": pairs, "accuracy": recalled / values, "loss": nats / values,
                "recalled": recalled, "values": values}

    by_pairs = [score(k, None) for k in task.pairs]
    by_distance = [{**score(k, d), "distance": d}
                   for k in task.pairs for d in (distances or {}).get(k, [])]
    recalled, values = (sum(r[key] for r in by_pairs) for key in ("recalled", "values"))
    return {"mode": mode, "accuracy": recalled / values, "values": values,
            "by_pairs": by_pairs, "by_distance": by_distance}
