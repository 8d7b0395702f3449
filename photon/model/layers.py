"""LLaMA-style building blocks shared by every model.

Pre-norm blocks of RMSNorm, multi-head causal attention with rotary position embeddings
(`attend`), and a SwiGLU MLP, without biases. A `Stack` is blocks plus a final norm; it runs
either over a whole sequence (training, `cache=None`) or incrementally against a KV cache
(see `photon.inference.cache`).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from photon.errors import CacheFullError
from photon.model.attention import attend, window_mask


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalise in fp32: under bf16 autocast the mean of squares loses too many bits.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


class Rotary(nn.Module):
    """Rotary position embeddings evaluated at arbitrary (per-sequence) positions."""

    def __init__(self, head_dim: int, base: float) -> None:
        super().__init__()
        self.head_dim, self.base = head_dim, base
        self.register_buffer("inv_freq", self._frequencies(), persistent=False)

    def _frequencies(self, device: torch.device | str | None = None) -> Tensor:
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device)
        return 1.0 / self.base ** (exponents / self.head_dim)

    def _apply(self, fn, recurse: bool = True):
        # A cast of the model (`.to(torch.bfloat16)`) must not round the frequencies or the
        # positions: in bf16, positions 1,000, 1,001 and 1,002 all get the same angles.
        super()._apply(fn, recurse)
        self.inv_freq = self._frequencies(self.inv_freq.device)
        return self

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """cos and sin in fp32, of shape [B or 1, 1, T, head_dim/2], for positions [B or 1,
        T]."""
        angles = positions.float()[..., None] * self.inv_freq
        return angles.cos()[:, None], angles.sin()[:, None]


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x1, x2) of the two halves of the head dimension of x [B, H, T, Dh]."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).type_as(x)


class LayerCache(Protocol):
    """What attention needs from a KV cache: store this step's keys/values, return all, and
    the attention kernel to read them with (None: `attend`'s own rule)."""

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]: ...

    def kernel_for(self, n_queries: int) -> str | None: ...


class Attention(nn.Module):
    """Multi-head attention. With `self_only` every position attends to itself alone (a
    window of 1): the output is its own value, so there are no query and key weights, and
    no cache is needed."""

    def __init__(self, d_model: int, n_heads: int, layer_idx: int,
                 self_only: bool = False) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.layer_idx = layer_idx
        self.self_only = self_only
        if not self_only:
            self.wq = nn.Linear(d_model, d_model, bias=False)
            self.wk = nn.Linear(d_model, d_model, bias=False)
        self.wv = nn.Linear(d_model, d_model, bias=False)
        self.wo = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: LayerCache | None,
                mask: Tensor | None) -> Tensor:
        if self.self_only:
            return self.wo(self.wv(x))
        B, T, D = x.shape
        q, k, v = (w(x).view(B, T, self.n_heads, -1).transpose(1, 2)
                   for w in (self.wq, self.wk, self.wv))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        y = attend(q, k, v, mask, cache.kernel_for(T) if cache is not None else None)
        return self.wo(y.transpose(1, 2).reshape(B, T, D))


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(d_model, d_ff, bias=False)
        self.w3 = nn.Linear(d_model, d_ff, bias=False)
        self.w2 = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_ff: int, layer_idx: int,
                 self_only: bool = False) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(d_model)
        self.attn = Attention(d_model, n_heads, layer_idx, self_only)
        self.mlp_norm = RMSNorm(d_model)
        self.mlp = SwiGLU(d_model, d_ff)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: LayerCache | None,
                mask: Tensor | None) -> Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, mask)
        return x + self.mlp(self.mlp_norm(x))


class StreamCache(LayerCache, Protocol):
    """A cache for a whole stack: per-sequence positions and masks for the next T inputs."""

    def prepare(self, T: int, device: torch.device, window: int = 0
                ) -> tuple[Tensor, Tensor | None]: ...

    def advance(self, n: int | Tensor) -> None: ...


class Stack(nn.Module):
    """`n_layers` pre-norm blocks and a final RMSNorm: one causal Transformer.

    `window` > 0 limits every attention to the last `window` positions (sliding-window
    attention), in training and decoding alike; a window of 1 needs no KV cache at all.
    """

    def __init__(self, n_layers: int, d_model: int, n_heads: int, d_ff: int,
                 rope_base: float, window: int = 0) -> None:
        super().__init__()
        self.n_layers = n_layers
        self.window = window
        self.rotary = Rotary(d_model // n_heads, rope_base)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, d_ff, i, self_only=window == 1)
                                    for i in range(n_layers))
        self.norm = RMSNorm(d_model)

    def forward(self, x: Tensor, cache: StreamCache | None = None,
                advance: int | Tensor | None = None) -> Tensor:
        """Run x [B, T, D]; with a cache, positions continue where the cache ends.

        `advance` is how many of the T inputs each sequence keeps in the cache (default all
        T); right-padded prefill of prompts of different lengths passes their lengths.
        """
        T = x.shape[1]
        if self.window == 1:  # each position reads only itself: nothing to cache
            cache = None
        if cache is None:
            positions = torch.arange(T, device=x.device)[None]
            mask = window_mask(positions, T, self.window) if self.window > 1 else None
        else:
            positions, mask = cache.prepare(T, x.device, self.window)
        cos, sin = self.rotary(positions)
        for block in self.blocks:
            x = block(x, cos, sin, cache, mask)
        if cache is not None:
            cache.advance(T if advance is None else advance)
        return self.norm(x)


class LocalKVCache:
    """One chunk's window of a local decoder: at most `capacity` (R + C) entries, thrown
    away at every chunk. It grows by concatenation, which keeps it differentiable, so
    training (where level >= 2 decoders feed back their own outputs) uses it as well."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.length = 0
        self.k: dict[int, Tensor] = {}
        self.v: dict[int, Tensor] = {}

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in (*self.k.values(), *self.v.values()))

    def prepare(self, T: int, device: torch.device, window: int = 0
                ) -> tuple[Tensor, Tensor | None]:
        if self.length + T > self.capacity:
            raise CacheFullError(
                f"local window of {self.capacity} exceeded ({self.length} + {T})")
        positions = torch.arange(self.length, self.length + T, device=device)[None]
        n_keys = self.length + T
        plain = (T == 1 or self.length == 0) and (not window or n_keys <= window)
        mask = None if plain else window_mask(positions, n_keys, window)
        return positions, mask

    def kernel_for(self, n_queries: int) -> None:
        return None  # a window is small: attend's own rule

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if layer in self.k:
            k = torch.cat((self.k[layer], k), dim=2)
            v = torch.cat((self.v[layer], v), dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v

    def advance(self, n: int | Tensor) -> None:
        self.length += int(n)
