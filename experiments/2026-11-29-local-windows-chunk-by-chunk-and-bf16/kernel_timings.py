"""The kernel timings behind "Local windows, chunk by chunk, and bf16 on this CPU" (README.md):
attention at a local window's shapes and over a long cache (SDPA against
`photon.model.layers.attend`'s matmul path), greedy's `max` against `argmax`, and fp32
against bf16 matmuls at decoding's shapes. Microseconds per call, median of 5 timings.

Ran at commit afceb8a. It times `photon.model.layers.attend` and `SMALL_WINDOW` as that tree
defined them, so it runs from a checkout of that commit, where it sits at
docs/bench_memory/s7/kernels.py:

    git worktree add /tmp/photon-afceb8a afceb8a && cd /tmp/photon-afceb8a
    PYTHONPATH=. python docs/bench_memory/s7/kernels.py
"""

import statistics
import time

import torch
import torch.nn.functional as F

from photon.model.layers import SMALL_WINDOW, attend


def micros(fn, *args, seconds: float = 0.2, **kwargs) -> float:
    fn(*args, **kwargs)
    times = []
    for _ in range(5):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            fn(*args, **kwargs)
            n += 1
        times.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(times)


def matmul_attention(q, k, v):
    """`attend`'s matmul path, which it takes only up to SMALL_WINDOW keys."""
    scores = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    return (scores.softmax(-1) @ v.float()).to(v.dtype)


torch.set_grad_enabled(False)
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; attend's matmul path "
      f"below {SMALL_WINDOW + 1} keys")
for dtype in (torch.float32, torch.bfloat16):
    for T, S in ((1, 5), (1, 3), (2, 2)):
        q, k, v = (torch.randn(256, 8, n, 32, dtype=dtype) for n in (T, S, S))
        sdpa = micros(F.scaled_dot_product_attention, q, k, v, is_causal=T > 1)
        ours = micros(attend, q, k, v, None)
        print(f"{str(dtype)[6:]:>9} window: 256 sequences, {T} query, {S} keys: "
              f"SDPA {sdpa:6.0f} us, matmuls {ours:6.0f} us ({sdpa / ours:.2f}x)")
    cache = [torch.randn(52, 8, 2176, 32, dtype=dtype) for _ in range(2)]
    q, k, v = torch.randn(52, 8, 1, 32, dtype=dtype), *(c[:, :, :1024] for c in cache)
    sdpa = micros(F.scaled_dot_product_attention, q, k, v)
    ours = micros(matmul_attention, q, k, v)
    print(f"{str(dtype)[6:]:>9} cache: 52 sequences, 1 query, 1,024 of 2,176 keys (views): "
          f"SDPA {sdpa:6.0f} us, matmuls {ours:6.0f} us ({sdpa / ours:.2f}x)")
    logits = torch.randn(256, 4096, dtype=dtype)
    print(f"{str(dtype)[6:]:>9} greedy over 256 x 4,096: argmax "
          f"{micros(logits.argmax, -1):4.0f} us, max {micros(logits.max, -1):4.0f} us")
for m, k, n in ((256, 256, 640), (256, 640, 256), (256, 256, 4096)):
    rates = []
    for dtype in (torch.float32, torch.bfloat16):
        a, w = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
        rates.append(2 * m * k * n / micros(F.linear, a, w) / 1e3)
    print(f"matmul [{m}, {k}] x [{k}, {n}]: fp32 {rates[0]:.0f}, bf16 {rates[1]:.0f} GFLOP/s "
          f"({rates[1] / rates[0]:.1f}x)")
