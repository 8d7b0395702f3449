"""How close a decode runs to this machine's limits, measured in the same run as the
benchmark: torch's matmul rate at the decode step's own dominant shapes (the MLP's and the
LM head's at the benchmark's batch), and the copy bandwidth that bounds a flat model's
reads of its KV cache and weights."""

from __future__ import annotations

import time

import torch

from photon.inference.workload import analytic_cache_bytes, weight_bytes
from photon.model.flops import decode_flops_per_token, head_flops
from photon.model.lm import Model


def _rate(fn, work: float, seconds: float) -> float:
    """work / second of fn(), repeated for about `seconds` after a warm-up."""
    for _ in range(3):
        fn()
    runs, started = 0, time.perf_counter()
    while True:
        fn()
        runs += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return work * runs / elapsed


@torch.inference_mode()
def matmul_rate(m: int, k: int, n: int, device: torch.device, dtype: torch.dtype,
                seconds: float = 0.3) -> float:
    """FLOP/s of torch's [m, k] x [k, n] matmul on `device`."""
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    return _rate(lambda: (a @ b, sync()), 2 * m * k * n, seconds)


@torch.inference_mode()
def copy_bandwidth(device: torch.device, nbytes: int = 128 << 20,
                   seconds: float = 0.3) -> float:
    """Bytes/s read and written by copying a large tensor (each copy moves 2 x nbytes)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    return _rate(lambda: (dst.copy_(src), sync()), 2 * nbytes, seconds)


def decode_matmuls(model: Model, batch: int) -> dict[str, tuple[int, int, int]]:
    """(m, k, n) of a decode step's dominant matmuls: every layer's MLP and the LM head, over
    one position of every sequence (PHOTON decodes one token chunk of each at a time)."""
    c = model.config
    return {"mlp": (batch, c.d_model, c.d_ff), "head": (batch, c.d_model, c.vocab_size)}


def roofline(model: Model, mode: str, batch: int, context: float, tokens_per_s: float
             ) -> dict[str, float]:
    """The achieved decode FLOP/s (analytic FLOPs per token at the mean `context`) against
    what torch's matmuls reach on the same work: the head's FLOPs at the rate of the head's
    shape, the rest at the MLP's (a harmonic mean by FLOPs). For a flat model also the
    bytes/s its step reads (weights once per step, each sequence's K and V) against the
    copy bandwidth."""
    p = next(model.parameters())
    c = model.config
    matmul, attention = decode_flops_per_token(c, mode, int(context))
    total = matmul + attention
    head = head_flops(c)
    rates = {name: matmul_rate(*shape, p.device, p.dtype)
             for name, shape in decode_matmuls(model, batch).items()}
    peak = total / (head / rates["head"] + (total - head) / rates["mlp"])
    achieved = tokens_per_s * total
    out = {"decode_flops_per_token": total, "decode_gflops": achieved / 1e9,
           "matmul_gflops": peak / 1e9, "matmul_fraction": achieved / peak,
           "mlp_gflops": rates["mlp"] / 1e9, "head_gflops": rates["head"] / 1e9}
    if c.kind == "vanilla":
        cache = analytic_cache_bytes(model, mode, int(context), p.dtype)
        out["read_gbs"] = tokens_per_s * (weight_bytes(model) / batch + cache) / 1e9
        out["copy_gbs"] = copy_bandwidth(p.device) / 1e9
    return out
