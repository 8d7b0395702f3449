"""Attention's two kernels and the one rule that chooses between them.

The same causal attention is computed by PyTorch's SDPA or by explicit matmuls with fp32
scores (`attend`). Which one runs is decided here and nowhere else:
- by default (`kernel=None`, "attend's own rule"), a read of a few keys on a CPU (a local
  decoder's window, at most `SMALL_WINDOW`) takes the matmuls, where SDPA's flash kernel costs
  more than the attention itself (256 sequences, 5 keys: about 1.5x in fp32 and 2.5x in bf16,
  experiments/2026-11-29-local-windows-chunk-by-chunk-and-bf16); everything else takes SDPA.
  Training and decoding share the rule, so a window's logits do not depend on whether
  gradients are on;
- a decoder's global KV cache is read by a step's few queries over many keys, where neither
  kernel wins everywhere (on one CPU the matmuls are faster in fp32 and SDPA up to 3.6x faster
  in bf16): under "auto" each cache times both on its own shape (`fastest_kernel`) and reads
  through the faster; a static (compiled) cache, whose every step reads its whole capacity
  under a mask, keeps the rule (`choose_kernel`).
"""

from __future__ import annotations

import functools
import math
import time

import torch
import torch.nn.functional as F
from torch import Tensor

KERNELS = ("sdpa", "matmul")
OPTIONS = ("auto", *KERNELS)  # what a user may ask a decoder's caches to read through
SMALL_WINDOW = 16


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
           kernel: str | None = None) -> Tensor:
    """Causal attention of q [B, H, T, Dh] over k, v [B, H, S, Dh]: the boolean `mask`
    [B or 1, 1, T, S] says which keys each query sees; without one, keys and queries are
    the same positions (or a single query sees every key), so the plain causal rule is
    exact. `kernel` is one of `KERNELS`; None takes the matmuls for a small window on a
    CPU, SDPA otherwise."""
    T, S = q.shape[2], k.shape[2]
    if kernel is None:
        kernel = "matmul" if q.device.type == "cpu" and S <= SMALL_WINDOW else "sdpa"
    if kernel == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                              is_causal=mask is None and T > 1)
    # In fp32 throughout, as SDPA accumulates: bf16 scores would lose what softmax needs
    # (and fp32 matmuls are the faster ones at these sizes).
    scores = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    if mask is None and T > 1:
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf)
    return (scores.softmax(-1) @ v.float()).to(v.dtype)


def window_mask(positions: Tensor, n_keys: int, window: int = 0) -> Tensor:
    """Boolean mask [B, 1, T, n_keys]: the query at position p sees keys 0..p, or with a
    `window` > 0 only the last `window` of them, p - window + 1..p."""
    keys = torch.arange(n_keys, device=positions.device)[None, None, :]
    seen = keys <= positions[:, :, None]
    if window:
        seen &= keys > positions[:, :, None] - window
    return seen[:, None]


def check_option(attention: str) -> None:
    """Refuse a kernel option that is not one of `OPTIONS`."""
    if attention not in OPTIONS:
        raise ValueError(f"attention {attention!r}: expected one of {OPTIONS}")


def choose_kernel(attention: str, n_heads: int, head_dim: int, keys: int, queries: int,
                  device: torch.device, dtype: torch.dtype, static: bool = False) -> str | None:
    """The kernel a cache read of `queries` new positions over `keys` cached ones (on average)
    goes through under the option `attention`: the kernel it names; under "auto" the
    `fastest_kernel` for that shape, except for a `static` cache, which keeps `attend`'s own
    rule (None), as the timing is of the eager path."""
    check_option(attention)
    if attention != "auto":
        return attention
    if static:
        return None
    return fastest_kernel(n_heads, head_dim, keys, queries, device, dtype)


# The kernel is timed for up to this many sequences, whatever the decoder's batch: both
# kernels' costs grow in proportion to it, and one choice per shape keeps a decode's numbers
# (and the memory probes' small batches) those of the batch it serves. Fewer where their
# keys and values would take more than TIMING_BYTES.
TIMING_BATCH = 64
TIMING_BYTES = 256 << 20
# Under this many bytes of keys and values (one layer, TIMING_BATCH sequences) a read costs
# microseconds through either kernel: a timing would measure noise, so `attend`'s own rule
# stays (None).
TIMED_BYTES = 4 << 20
BLOCK_S = 0.02  # seconds of calls per timed block


@functools.cache
def fastest_kernel(n_heads: int, head_dim: int, keys: int, queries: int,
                   device: torch.device, dtype: torch.dtype) -> str | None:
    """The faster of `KERNELS` for `queries` new positions of a sequence attending over
    `keys` cached positions, or None (`attend`'s own rule) where that read is too small to
    time.

    Timed once per shape in a process, on the eager path: up to `TIMING_BATCH` sequences of
    random values (from a generator of its own) read as a cache is, the filled part of a
    longer buffer; each kernel's mean time per call over blocks of about `BLOCK_S` seconds,
    the two kernels alternated, the best of three blocks each. Its tensors are freed on
    return."""
    keys = max(keys, queries)
    per_sequence = 2 * n_heads * (keys + 1) * head_dim * dtype.itemsize  # keys and values
    if TIMING_BATCH * per_sequence < TIMED_BYTES:
        return None
    batch = max(1, min(TIMING_BATCH, TIMING_BYTES // per_sequence))
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(batch, n_heads, queries, head_dim, device=device, dtype=dtype, generator=g)
    k, v = (torch.randn(batch, n_heads, keys + 1, head_dim, device=device, dtype=dtype,
                        generator=g)[:, :, :keys] for _ in range(2))
    mask = window_mask(torch.arange(keys - queries, keys, device=device)[None], keys) \
        if queries > 1 else None

    def seconds_per_call(kernel: str, calls: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        for _ in range(calls):
            attend(q, k, v, mask, kernel)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - started) / calls

    with torch.inference_mode():
        for kernel in KERNELS:  # warm-up: first calls load and allocate
            seconds_per_call(kernel, 1)
        calls = {kernel: max(1, round(BLOCK_S / seconds_per_call(kernel, 2)))
                 for kernel in KERNELS}
        best = dict.fromkeys(KERNELS, float("inf"))
        for _ in range(3):  # alternated: a drift of the machine's speed hits both
            for kernel in KERNELS:
                best[kernel] = min(best[kernel], seconds_per_call(kernel, calls[kernel]))
    return min(KERNELS, key=best.__getitem__)

