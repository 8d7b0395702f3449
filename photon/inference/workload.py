"""Decoding a batch of random prompts, and the memory it takes: what `photon bench` times and
what `photon serve` sizes its slots with (both at run time, on the machine at hand).

Per-sample memory is the slope of peak memory between two batch sizes (caches and the
activations of a decode step, not only KV); on CUDA from `torch.cuda.max_memory_allocated`,
on the CPU from the profiler's allocation trace of the same run. The slope is taken over
the decode steps' peak: prefill runs a bounded number of prompts per pass
(`photon.inference.slots.prefill_rows`), so its peak is one pass's workspace above the
caches whatever the batch, and enters the intercept, not the slope.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable

import torch

from photon.device import GIB
from photon.inference.cache import global_caches
from photon.inference.decoders import DecodeOptions, attention_kernels, make_decoder
from photon.inference.sampling import make_sampler
from photon.model.lm import Model


def analytic_cache_bytes(model: Model, mode: str, capacity: int, dtype: torch.dtype) -> int:
    """Bytes of global KV cache one sequence of `capacity` tokens needs, from the config."""
    entry = 2 * model.config.d_model * torch.finfo(dtype).bits // 8  # K and V of one layer
    return sum(entry * shape.n_layers * shape.capacity
               for shape in global_caches(model.config, mode, capacity) if shape is not None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_workload(model: Model, mode: str, batch: int, prompt_len: int, gen_len: int,
                 max_steps: int | None = None, seed: int = 0, keep_logits: bool = False,
                 after_prefill: Callable[[], None] | None = None,
                 options: DecodeOptions | None = None
                 ) -> tuple[float, float, object]:
    """Prefill random prompts and decode greedily: (prefill seconds, total seconds, decoder).
    `keep_logits`: every step keeps every sequence's logits (as for logprobs);
    `after_prefill` is called between the two phases; `options` as `make_decoder`."""
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt_len), generator=g).to(device)
    decoder = make_decoder(model, mode, batch, prompt_len + gen_len, options)
    per_step = decoder.tokens_per_step
    # A prompt that ends inside a meta-context makes the first step yield fewer tokens.
    steps = math.ceil((gen_len + prompt_len % per_step) / per_step)
    if max_steps is not None:
        steps = min(steps, max_steps)
    greedy = make_sampler()
    with torch.inference_mode():
        _sync(device)
        t0 = time.perf_counter()
        decoder.prefill(ids, torch.full((batch,), prompt_len))
        _sync(device)
        t1 = time.perf_counter()
        if after_prefill is not None:
            after_prefill()
        for _ in range(steps):
            decoder.step(greedy, keep_logits=keep_logits)
        _sync(device)
        t2 = time.perf_counter()
    return t1 - t0, t2 - t0, decoder


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2: the profiler's C++ side logs every start and stop there."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def phase_peaks(fn: Callable[[Callable[[], None]], object], device: torch.device) -> list[int]:
    """Peak bytes of tensors allocated while `fn` runs, above what was live before, in each
    of its phases: `fn(mark)` calls `mark()` to end one phase and start the next."""
    peaks: list[int] = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)

        def mark() -> None:
            torch.cuda.synchronize(device)
            peaks.append(torch.cuda.max_memory_allocated(device) - base)
            torch.cuda.reset_peak_memory_stats(device)

        fn(mark)
        mark()
        return peaks
    from torch.profiler import ProfilerActivity, profile, record_function

    def mark_cpu() -> None:
        with record_function(_PHASE):
            pass

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(mark_cpu)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    bounds = sorted(e["ts"] for e in events if e.get("name") == _PHASE) + [math.inf]
    peaks = [0] * len(bounds)
    for e in events:
        if e.get("name") == "[memory]" and "Total Allocated" in e.get("args", {}):
            phase = next(i for i, end in enumerate(bounds) if e["ts"] < end)
            peaks[phase] = max(peaks[phase], e["args"]["Total Allocated"])
    return peaks


_PHASE = "photon.workload.phase"


SLOPE_BATCHES = (2, 8)  # the two batch sizes whose peak memory gives the per-sample slope


def memory_profile(model: Model, mode: str, prompt_len: int, gen_len: int,
                   batches: tuple[int, int] = SLOPE_BATCHES, keep_logits: bool = False,
                   options: DecodeOptions | None = None) -> tuple[float, float]:
    """(bytes per sample, bytes at batch 0) of a decode-heavy workload's peak memory.

    Bytes per sample are the slope, between two batch sizes, of the peak while decoding
    (caches, per-sequence state and a step's workspace; a few steps reach the steady state,
    caches are preallocated). The prefill's peak, one pass's workspace above the caches
    whatever the batch, enters the intercept: both peaks lie under slope * batch +
    intercept. `options` as `make_decoder`."""
    device = next(model.parameters()).device
    # The attention kernels are chosen (timed) here, before the profile: not the decode's.
    attention_kernels(model, mode, prompt_len + gen_len, options)
    peaks = [phase_peaks(lambda mark, b=b: run_workload(
        model, mode, b, prompt_len, gen_len, max_steps=2, keep_logits=keep_logits,
        after_prefill=mark, options=options), device) for b in batches]
    decode0, decode1 = (phase[-1] for phase in peaks)
    slope = (decode1 - decode0) / (batches[1] - batches[0])
    intercept = max(peak - slope * b for b, phase in zip(batches, peaks, strict=True)
                    for peak in phase)
    return slope, intercept


def weight_bytes(model: Model) -> int:
    return sum(p.nbytes for p in model.parameters())


def batch_for_budget(model: Model, mode: str, prompt_len: int, gen_len: int,
                     budget_gib: float, max_batch: int, batches: tuple[int, int] = SLOPE_BATCHES,
                     keep_logits: bool = False, options: DecodeOptions | None = None
                     ) -> tuple[int, float]:
    """(batch, bytes per sample): the largest batch whose predicted peak (weights +
    intercept + slope * batch) fits the budget, capped at `max_batch`; 0 when not even one
    sequence fits. `keep_logits`: sized for steps that keep every sequence's logits;
    `options` as `make_decoder`."""
    slope, intercept = memory_profile(model, mode, prompt_len, gen_len, batches, keep_logits,
                                      options)
    room = budget_gib * GIB - weight_bytes(model) - max(intercept, 0)
    return int(max(0, min(max_batch, room // max(slope, 1)))), slope
