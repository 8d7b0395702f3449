"""The global KV caches.

`KVCache` is the preallocated cache of a global stream (every layer of the flat model, each
context encoder of PHOTON); `RingKVCache` is the flat model's under a sliding window, a ring
buffer of the last W positions (Mistral's rolling buffer), so its memory does not grow. Each
sequence of the batch has its own length, so prompts of different lengths share one batch;
entries past a sequence's length are masked out.

By default attention reads the filled part only (`[:end]`, the longest sequence's length):
the fastest eager path. A `static` cache always returns its whole capacity with a mask,
and keeps the lengths on the device as well, so a step has the same shapes every time and
reads nothing back from the host: what `torch.compile` / CUDA graphs capture once
(gpt-fast's static cache). Its capacity is checked by the decoder, on the host.

A decode step's few queries read a cache through the kernel chosen for it
(`photon.model.attention.choose_kernel`); a prefill's long passes take `attend`'s own rule.

A local decoder's window (at most R + C entries, thrown away at every chunk) is
`photon.model.layers.LocalKVCache`: training uses it too.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from photon.errors import CacheFullError
from photon.model.attention import KERNELS, window_mask
from photon.model.config import ModelConfig, PhotonConfig


@dataclass(frozen=True)
class CacheShape:
    """One global cache of a decoder: its layers, its positions per sequence, the most
    positions one decode step adds to it, and its sliding window (0: none; then the cache is
    a ring of `capacity` = window positions)."""

    n_layers: int
    capacity: int
    queries: int
    window: int = 0

    @property
    def mean_keys(self) -> int:
        """Keys a decode step reads on average while the cache fills: half of it, or the
        whole window of a ring (full after its first W positions)."""
        return self.capacity if self.window else self.capacity // 2


def global_caches(config: ModelConfig, mode: str, capacity: int) -> list[CacheShape | None]:
    """The global KV caches of decoding up to `capacity` tokens in `mode`: the flat model's
    one (a ring of its window, if it has one), or one per PHOTON level (None where a level
    keeps none; `cached_levels`)."""
    if not isinstance(config, PhotonConfig):
        if config.window:
            return [CacheShape(config.n_layers, config.window, 1, config.window)]
        return [CacheShape(config.n_layers, capacity, 1)]
    metas = math.ceil(capacity / config.meta_len)
    cached = config.cached_levels(mode)
    return [CacheShape(config.encoder_layers[level - 1],
                       metas * config.positions_per_meta(level), config.positions_per_meta(level))
            if level in cached else None
            for level in range(1, config.n_levels + 1)]

class KVCache:
    """Preallocated keys and values [layers, B, heads, capacity, head_dim]."""

    def __init__(self, n_layers: int, batch: int, n_heads: int, head_dim: int, capacity: int,
                 device: torch.device | str, dtype: torch.dtype, static: bool = False,
                 kernel: str | None = None, queries: int = 1) -> None:
        """`kernel`: what a step of at most `queries` new positions per sequence attends
        through, one of `photon.model.attention.KERNELS` or None for `attend`'s own rule
        (`choose_kernel` picks it)."""
        if kernel is not None and kernel not in KERNELS:
            raise ValueError(f"attention kernel {kernel!r}: expected one of {KERNELS}")
        shape = (n_layers, batch, n_heads, capacity, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.capacity = capacity
        self.static = static
        self.kernel, self.queries = kernel, queries
        self.lengths = torch.zeros(batch, dtype=torch.long)  # on the host: no device sync
        # A static cache's positions come from the device copy: a step reads no host value.
        self.device_lengths = torch.zeros(batch, dtype=torch.long, device=device) \
            if static else None
        if static:  # buffers a captured step updates in place, at fixed addresses (gpt-fast)
            for t in (self.k, self.v, self.device_lengths):
                torch._dynamo.mark_static_address(t)
        self._start: int | None = 0
        self._positions: Tensor | None = None
        self._rows: Tensor | None = None
        self._end = 0

    @property
    def nbytes(self) -> int:
        """Bytes allocated for keys and values."""
        return self.k.nbytes + self.v.nbytes

    def bytes_per_entry(self) -> int:
        """Bytes one position of one sequence takes across all layers."""
        _, batch, _, capacity, _ = self.k.shape
        return self.nbytes // (batch * capacity)

    def prepare(self, T: int, device: torch.device, window: int = 0
                ) -> tuple[Tensor, Tensor | None]:
        if self.static:
            if not torch.compiler.is_compiling():  # a compiled step is checked before it
                self.check_room(T)
            return self._ragged(self.device_lengths, T, self.capacity, device, window)
        lo, hi = self._host_span(T)
        if lo != hi:
            return self._ragged(self.lengths.to(device), T, hi + T, device, window)
        # Every sequence at the same length: write and read by slicing.
        self._start, self._end = lo, hi + T
        positions = torch.arange(lo, lo + T, device=device)[None]
        # A single query, or queries from position 0, need no mask unless the window hides
        # some of the keys.
        plain = (T == 1 or lo == 0) and (not window or self._end <= window)
        return positions, None if plain else window_mask(positions, self._end, window)

    def _ragged(self, lengths: Tensor, T: int, end: int, device: torch.device, window: int
                ) -> tuple[Tensor, Tensor]:
        """Each sequence at its own length (`lengths` on the device): positions per sequence,
        a mask over the first `end` keys, and writes by index (the rows once per step)."""
        self._start, self._end = None, end
        self._positions = lengths[:, None] + torch.arange(T, device=device)
        self._rows = torch.arange(len(lengths), device=device)[:, None]
        return self._positions, window_mask(self._positions, end, window)

    @torch.compiler.disable
    def _host_span(self, T: int) -> tuple[int, int]:
        """(shortest, longest) sequence, once T more positions are known to fit: host
        values, read outside a compiled step (a dynamic-shape step breaks its graph here)."""
        lo, hi = int(self.lengths.min()), int(self.lengths.max())
        self._raise_if_full(hi, T)
        return lo, hi

    def check_room(self, T: int) -> None:
        """Raise `CacheFullError` unless every sequence has room for T more positions."""
        self._raise_if_full(int(self.lengths.max()) if len(self.lengths) else 0, T)

    def _raise_if_full(self, hi: int, T: int) -> None:
        if hi + T > self.capacity:
            raise CacheFullError(
                f"KV cache full: {hi} + {T} positions exceed its capacity of {self.capacity}")

    def kernel_for(self, n_queries: int) -> str | None:
        """The kernel of a step of `n_queries` new positions per sequence; a longer pass (a
        prefill) takes `attend`'s own rule."""
        return self.kernel if n_queries <= self.queries else None

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self._start is not None:
            s = self._start
            self.k[layer, :, :, s:s + k.shape[2]] = k
            self.v[layer, :, :, s:s + k.shape[2]] = v
        else:
            self.k[layer][self._rows, :, self._positions] = k.transpose(1, 2)
            self.v[layer][self._rows, :, self._positions] = v.transpose(1, 2)
        return self.k[layer, :, :, :self._end], self.v[layer, :, :, :self._end]

    def advance(self, n: int | Tensor) -> None:
        if self.static:
            self.device_lengths += n.to(self.device_lengths.device) if isinstance(n, Tensor) \
                else n
        self._advance_host(n)

    @torch.compiler.disable
    def _advance_host(self, n: int | Tensor) -> None:
        # Host bookkeeping (capacity checks, slots) stays out of a compiled step.
        self.lengths += n.cpu() if isinstance(n, Tensor) else n

    # --- slots: the rows of a cache reused by different sequences over time ---------------------

    def rows(self, start: int, stop: int) -> KVCache:
        """Sequences start..stop-1 as a cache of their own that shares this one's memory:
        writes and advances through it land in these rows, nothing is allocated."""
        view = copy.copy(self)
        view.k, view.v = self.k[:, start:stop], self.v[:, start:stop]
        view.lengths = self.lengths[start:stop]
        if self.static:
            view.device_lengths = self.device_lengths[start:stop]
        return view

    def reset(self) -> None:
        """Forget every sequence (lengths 0); the memory is reused as it is."""
        self.lengths.zero_()
        if self.static:
            self.device_lengths.zero_()

    def copy_rows(self, src: Sequence[int], dst: Sequence[int]) -> None:
        """Copy sequence src[i] into row dst[i] (keys, values, length); only the filled
        positions move. Sources are read before any row is written."""
        if not len(src):
            return
        end = int(self.lengths[list(src)].max())
        index = torch.tensor(src, device=self.k.device)
        rows = torch.tensor(dst, device=self.k.device)
        self.k[:, rows, :, :end] = self.k[:, index, :, :end]
        self.v[:, rows, :, :end] = self.v[:, index, :, :end]
        self.lengths[list(dst)] = self.lengths[list(src)]
        if self.static:
            self.device_lengths[rows] = self.device_lengths[index]


class RingKVCache(KVCache):
    """The KV cache of a sliding window of W positions: position p of a sequence lives in slot
    p mod W, so a sequence holds its last W positions and memory stays W entries whatever its
    length (Mistral's rolling buffer). A pass of T new positions attends over the ring and
    its own keys (W + T keys under a mask from the positions each slot holds); its entries
    are written into the ring once the stack knows how many each sequence keeps (`advance`),
    so a right-padded prefill never overwrites a kept position. Eager only: a static
    (compiled) decoder keeps `KVCache`."""

    def __init__(self, n_layers: int, batch: int, n_heads: int, head_dim: int, window: int,
                 device: torch.device | str, dtype: torch.dtype, kernel: str | None = None,
                 queries: int = 1) -> None:
        super().__init__(n_layers, batch, n_heads, head_dim, window, device, dtype,
                         kernel=kernel, queries=queries)
        self.window = window
        self._new: dict[int, tuple[Tensor, Tensor]] = {}  # this pass's keys, values by layer

    def prepare(self, T: int, device: torch.device, window: int = 0
                ) -> tuple[Tensor, Tensor]:
        W = self.window
        lengths = self.lengths.to(device)[:, None]
        positions = lengths + torch.arange(T, device=device)
        slots = torch.arange(W, device=device)
        # Slot s holds the latest position p < length with p = s (mod W); negative: never
        # written.
        held = slots + W * torch.div(lengths - 1 - slots, W, rounding_mode="floor")
        keys = torch.cat((held, positions), dim=1)[:, None, :]
        queries = positions[:, :, None]
        seen = (keys >= 0) & (keys <= queries) & (keys > queries - W)
        return positions, seen[:, None]

    def check_room(self, T: int) -> None:
        """A ring always has room."""

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        self._new[layer] = (k, v)
        return torch.cat((self.k[layer], k), dim=2), torch.cat((self.v[layer], v), dim=2)

    def advance(self, n: int | Tensor) -> None:
        """Write each sequence's first `n` new positions (the last W of them) into the ring."""
        T = next(iter(self._new.values()))[0].shape[2]
        kept = (n.cpu() if isinstance(n, Tensor) else torch.full_like(self.lengths, n))[:, None]
        offsets = torch.arange(T)
        rows, offset = ((offsets < kept) & (offsets >= kept - self.window)).nonzero(
            as_tuple=True)
        slots = (self.lengths[rows] + offset) % self.window
        rows, offset, slots = (t.to(self.k.device) for t in (rows, offset, slots))
        for layer, (k, v) in self._new.items():
            self.k[layer][rows, :, slots] = k[rows, :, offset]
            self.v[layer][rows, :, slots] = v[rows, :, offset]
        self._new.clear()
        self.lengths += kept[:, 0]

    def rows(self, start: int, stop: int) -> RingKVCache:
        view = super().rows(start, stop)
        view._new = {}
        return view
