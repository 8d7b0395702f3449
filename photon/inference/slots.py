"""Continuous batching on the project's decoders: sequences join and leave between steps.

A decoder built for a batch of B holds preallocated caches of B rows. `Slots` turns those
rows into slots: the first `active` rows decode at every step, the others are free. Between
two steps
- `admit` prefills new prompts straight into free rows (a decoder of the same class whose
  caches are views of those rows, so nothing is allocated or copied), appends their
  per-sequence state after the running rows, and copies a prompt's prefilled rows into more
  slots when it asks for several samples (n > 1 prefills once);
- `release` frees the rows of finished sequences at once: the last running rows move into
  the gaps (one cache-row copy each), so the active rows stay a prefix and a step costs what
  the running sequences cost, not what the slots would.

The same admission bounds a fresh decoder's prefill: `prefill` runs at most
`PREFILL_TOKENS` prompt tokens per pass, so its workspace (activations of the whole prompt,
every layer) is that of one pass, whatever the batch, and memory per sequence is its caches.

A decoder class provides `ROW_STATE` (the names of its per-sequence attributes: batch-first
tensors, lists of them, or None), `_prefill` (prefill all its rows in one pass), `flush()`
(apply the tokens of the last step that it would otherwise apply lazily at the next one)
and `_slot_caches` / `_use_caches` (its KV caches).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from photon.errors import CacheFullError
from photon.inference.cache import KVCache

RowState = Tensor | list[Tensor] | None
# Prompt tokens one prefill pass takes at most (one prompt at least): enough rows for large
# matmuls, few enough that the pass's workspace stays far below the caches of the batch.
PREFILL_TOKENS = {"cpu": 2048, "cuda": 32768}


def prefill_rows(prompt_len: int, device: torch.device) -> int:
    """Prompts of `prompt_len` tokens that one prefill pass takes on `device`."""
    return max(1, PREFILL_TOKENS.get(device.type, PREFILL_TOKENS["cuda"]) // max(prompt_len, 1))


def take_rows(x: RowState, order: list[int]) -> RowState:
    """Rows `order` of a per-sequence value (a tensor, a list of tensors, or None)."""
    if x is None:
        return None
    if isinstance(x, list):
        return [take_rows(t, order) for t in x]
    return x[torch.tensor(order, dtype=torch.long, device=x.device)]


def cat_rows(a: RowState, b: RowState) -> RowState:
    """Rows of `a` then rows of `b`. Tensors whose last dimension differs (the known prompt
    tokens of prompts of different lengths) are right-padded with zeros to the wider."""
    if a is None or b is None:
        assert a is None and b is None, "per-sequence state present for some rows only"
        return None
    if isinstance(a, list):
        return [cat_rows(x, y) for x, y in zip(a, b, strict=True)]
    if a.dim() > 1 and a.shape[-1] != b.shape[-1]:
        width = max(a.shape[-1], b.shape[-1])
        a, b = (F.pad(t, (0, width - t.shape[-1])) for t in (a, b))
    return torch.cat((a, b))


class Slots:
    """Slot operations shared by `FlatDecoder` and `PhotonDecoder` (see the module doc)."""

    ROW_STATE: tuple[str, ...] = ()

    def _slot_caches(self) -> list[KVCache | None]:
        raise NotImplementedError

    def _use_caches(self, caches: list[KVCache | None]) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        raise NotImplementedError

    def _prefill(self, ids: Tensor, lengths: Tensor) -> None:
        raise NotImplementedError

    def prefill(self, ids: Tensor, lengths: Tensor) -> None:
        """Prefill prompts `ids` [B, T] (right-padded, `lengths` [B]) into a fresh decoder,
        `prefill_rows` prompts per pass (admitted as slots when that takes several)."""
        rows = prefill_rows(ids.shape[1], ids.device)
        if len(ids) <= rows:
            return self._prefill(ids, lengths)
        self.open_slots()
        for start in range(0, len(ids), rows):
            part = slice(start, start + rows)
            self.admit(ids[part], lengths[part], [1] * len(ids[part]))

    def open_slots(self) -> None:
        """Start continuous batching on a freshly built decoder: every row is a free slot."""
        self._slots = self._slot_caches()
        self.n_slots = next(c for c in self._slots if c is not None).lengths.shape[0]
        self.active = 0
        for name in self.ROW_STATE:
            setattr(self, name, None)
        self._narrow(0, 0)

    @property
    def free_slots(self) -> int:
        return self.n_slots - self.active

    def _narrow(self, start: int, stop: int) -> list[KVCache | None]:
        views = [None if c is None else c.rows(start, stop) for c in self._slots]
        self._use_caches(views)
        return views

    @torch.no_grad()
    def admit(self, ids: Tensor, lengths: Tensor, copies: list[int]) -> list[int]:
        """Prefill prompts `ids` [k, T] (right-padded, `lengths` [k]) into free slots after
        the running rows; prompt i takes `copies[i]` >= 1 slots (one prefill, its rows
        copied). Returns, for each new row in order, the index of its prompt."""
        k, n, total = len(ids), self.active, sum(copies)
        if total > self.free_slots:
            raise CacheFullError(f"{total} sequences do not fit the {self.free_slots} free "
                                 f"slots")
        if n:  # the running rows' last step enters their caches before the state joins
            self.flush()
        newcomers = copy.copy(self)
        for view in newcomers._narrow(n, n + k):
            if view is not None:
                view.reset()
        newcomers._prefill(ids, lengths)
        extra = [i for i, c in enumerate(copies) for _ in range(c - 1)]
        for cache in self._slots:
            if cache is not None:
                cache.copy_rows([n + i for i in extra], list(range(n + k, n + total)))
        order = list(range(k)) + extra
        for name in self.ROW_STATE:
            new = take_rows(getattr(newcomers, name), order)
            setattr(self, name, new if n == 0 else cat_rows(getattr(self, name), new))
        self.active = n + total
        self._narrow(0, self.active)
        return order

    @torch.no_grad()
    def release(self, rows: Iterable[int]) -> list[int]:
        """Free the slots of rows `rows` now. The last running rows move into the gaps;
        returns, for each remaining row in order, the row it held before."""
        gone = set(rows)
        n = self.active
        m = n - len(gone)
        holes = sorted(r for r in gone if r < m)
        movers = [r for r in range(m, n) if r not in gone]
        for cache in self._slots:
            if cache is not None:
                cache.copy_rows(movers, holes)
        order = list(range(m))
        for hole, mover in zip(holes, movers, strict=True):
            order[hole] = mover
        for name in self.ROW_STATE:
            setattr(self, name, take_rows(getattr(self, name), order))
        self.active = m
        self._narrow(0, m)
        return order
