"""The prepared directory and its reader: what every training and evaluation reads.

A prepared directory (written by `photon.data.prepare`) holds

    manifest.json                          source, settings, tokenizer, split, counts, shards
    tokenizer.json, tokenizer_config.json  the tokenizer (`photon.data.tokenizer`)
    train-00000.bin, ...  val-00000.bin    uint16 (uint32 past 65,536 ids) tokens, every
                                           document followed by the end-of-document token

`manifest.json` is written last, atomically: a directory without it is unfinished, and
nothing reads it as data. The tokens of a split are read memory-mapped (`load_tokens`), cut
into documents (`stream_documents`) or into training windows in a seeded order
(`WindowSampler`, `read_windows`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from photon.errors import DataError, InputError

FORMAT = "photon-prepared-1"  # change when the layout changes; caches are then rebuilt
MANIFEST = "manifest.json"
PARTIAL = ".partial"  # the unfinished work of a prepare


def is_prepared(path: str | Path) -> bool:
    """Whether `path` is a finished prepared directory; an unfinished one is an error."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return read_manifest(path).get("format") == FORMAT
    if (path / PARTIAL).is_dir():
        raise DataError(f"{path}: an unfinished photon data prepare (no {MANIFEST}); run the "
                        "same prepare again to finish it")
    return False


def read_manifest(folder: str | Path) -> dict[str, Any]:
    try:
        return json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{folder}: unreadable {MANIFEST}: {e}") from None


class ShardedTokens:
    """The token shards of one split read as one array: `len()` and slicing, memory-mapped
    (nothing is read until indexed)."""

    def __init__(self, shards: list[np.memmap]) -> None:
        self.shards = shards
        self.ends = np.cumsum([len(s) for s in shards])

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def __getitem__(self, index: slice) -> np.ndarray:
        start, stop, step = index.indices(len(self))
        assert step == 1, "only contiguous slices"
        parts, first = [], int(np.searchsorted(self.ends, start, side="right"))
        for i in range(first, len(self.shards)):
            base = int(self.ends[i]) - len(self.shards[i])
            if base >= stop:
                break
            parts.append(self.shards[i][max(start - base, 0):stop - base])
        return np.concatenate(parts) if parts else np.zeros(0, self.shards[0].dtype)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.concatenate(self.shards).astype(dtype or self.shards[0].dtype, copy=False)


def load_tokens(folder: str | Path, split: str) -> np.ndarray | ShardedTokens:
    """The `split` ("train" or "val") tokens of a prepared directory, memory-mapped: the
    memmap itself when there is one shard (the common case), else `ShardedTokens`."""
    manifest = read_manifest(folder)
    shards = [np.memmap(Path(folder) / s["file"], dtype=manifest["dtype"], mode="r")
              for s in manifest[split]["shards"] if s["tokens"]]
    if not shards:
        return np.zeros(0, dtype=manifest["dtype"])
    return shards[0] if len(shards) == 1 else ShardedTokens(shards)


def stream_documents(tokens: np.ndarray, eos_id: int | None) -> Iterator[np.ndarray]:
    """The documents of a token stream of `photon data prepare` (every document followed by
    the end-of-document token), each as [eos, its tokens]: the form of
    `photon.evaluation.positions.text_documents`."""
    if eos_id is None:
        raise InputError("the tokenizer has no end-of-document token, so the documents of a "
                         "prepared directory cannot be told apart; evaluate its source files")
    tokens = np.asarray(tokens)
    stream = np.concatenate((np.array([eos_id], dtype=tokens.dtype), tokens))
    starts = np.flatnonzero(stream == eos_id).tolist()
    for a, b in zip(starts, [*starts[1:], len(stream)], strict=True):
        if b - a > 1:
            yield stream[a:b]


class WindowSampler:
    """Non-overlapping windows of `seq_len` tokens in a fresh seeded order every epoch.

    Its whole state is `consumed`, the number of windows handed out so far, so a restored
    sampler continues with exactly the windows an uninterrupted one would have given.
    """

    def __init__(self, n_tokens: int, seq_len: int, seed: int, consumed: int = 0) -> None:
        self.n_windows = n_tokens // seq_len
        if self.n_windows == 0:
            raise DataError(f"the training split has {n_tokens} tokens, fewer than one "
                            f"sequence of {seq_len}; use more text or a smaller --seq-len")
        self.seq_len, self.seed, self.consumed = seq_len, seed, consumed
        self._epoch, self._order = -1, None

    def _order_of(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            # Kept in the generator's range [0, 2**64), so that any --seed works; the modulo
            # changes nothing for seeds below 2**64 / 1,000,003.
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**64)
            self._epoch, self._order = epoch, torch.randperm(self.n_windows, generator=g)
        return self._order

    def next(self, count: int) -> list[int]:
        """Start offsets of the next `count` windows."""
        starts = []
        for i in range(self.consumed, self.consumed + count):
            epoch, index = divmod(i, self.n_windows)
            starts.append(int(self._order_of(epoch)[index]) * self.seq_len)
        self.consumed += count
        return starts

    def state_dict(self) -> dict[str, int]:
        return {"consumed": self.consumed, "seed": self.seed, "seq_len": self.seq_len}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.consumed = int(state["consumed"])


def read_windows(tokens: np.ndarray | ShardedTokens, starts: list[int],
                 seq_len: int) -> torch.Tensor:
    """Token windows [len(starts), seq_len] as int64 ids."""
    return torch.from_numpy(np.stack([np.asarray(tokens[s:s + seq_len], dtype=np.int64)
                                      for s in starts]))
