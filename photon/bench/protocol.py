"""The paper's throughput protocol (docs/PHOTON.md §6), run for every model on the same machine.

For each model and workload (PF: prompt 2048, generate 128; DE: prompt 128, generate 2048;
random prompts, greedy, no EOS):
- per-sample memory is the slope of the decode's peak memory between two batch sizes
  (`photon.inference.workload.memory_profile`);
- the batch is the largest whose predicted peak (weights + intercept + slope · batch) fits
  the memory budget;
- throughput is generated tokens per second over the whole batch, prefill included;
- TPM = throughput / per-sample memory, in K tokens/s/GiB.
The flat baseline decodes with a preallocated KV cache, the same cache class and attention
PHOTON uses: each global cache reads through the faster of SDPA and explicit matmuls, timed
on the machine at hand for its own shapes (`photon.model.attention.fastest_kernel`), so the
comparison isolates the architecture.
"""

from __future__ import annotations

from dataclasses import dataclass

from photon.bench.roofline import roofline
from photon.device import GIB
from photon.inference.decoders import DecodeOptions
from photon.inference.modes import FLAT, mode_label
from photon.inference.workload import (
    analytic_cache_bytes,
    batch_for_budget,
    memory_profile,
    run_workload,
)
from photon.model.lm import Model

WORKLOADS = {"PF": (2048, 128), "DE": (128, 2048)}
QUICK_WORKLOADS = {"PF": (128, 16), "DE": (16, 128)}


@dataclass
class Row:
    model: str
    kind: str
    mode: str
    workload: str
    prompt_len: int
    gen_len: int
    batch: int
    mem_per_sample_gib: float
    cache_bytes_per_sample: int
    analytic_cache_bytes_per_sample: int
    tokens_per_s: float
    tpm: float
    prefill_s: float
    vs_vanilla: float | None = None
    vs_block: float | None = None
    # How close the decode is to the machine (photon.bench.roofline), same run:
    mem_to_cache: float | None = None  # per-sample memory / cache bytes per sequence
    decode_flops_per_token: float | None = None  # analytic, at the mean context
    decode_gflops: float | None = None  # achieved: tokens/s x FLOPs per token
    matmul_gflops: float | None = None  # torch's matmuls on the same work (MLP and head)
    matmul_fraction: float | None = None
    mlp_gflops: float | None = None  # torch's matmul at the MLP's shape at this batch
    head_gflops: float | None = None  # ... and at the LM head's
    read_gbs: float | None = None  # flat model: weights and KV read per second
    copy_gbs: float | None = None  # flat model: this machine's copy bandwidth
    # The kernel of each global cache (photon.model.attention): sdpa, matmul, or rule
    # (attend's own, for a cache too small to time).
    attention: str | None = None


def measure(name: str, model: Model, mode: str, workload: str, prompt_len: int, gen_len: int,
            budget_gib: float, max_batch: int, batches: tuple[int, int],
            options: DecodeOptions | None = None) -> Row:
    """One row of the table: memory slope, the batch that fits, and its throughput;
    `options` as `photon.inference.decoders.make_decoder`."""
    p = next(model.parameters())
    cache = analytic_cache_bytes(model, mode, prompt_len + gen_len, p.dtype)
    batch, slope = batch_for_budget(model, mode, prompt_len, gen_len, budget_gib, max_batch,
                                    batches, options=options)
    batch = max(batch, 1)  # a budget below one sequence still measures one
    # Untimed: a compiled model compiles this batch's shapes here, not in the timed run.
    run_workload(model, mode, batch, prompt_len, gen_len, max_steps=2, options=options)
    prefill_s, total_s, decoder = run_workload(model, mode, batch, prompt_len, gen_len,
                                               options=options)
    tokens_per_s = batch * gen_len / total_s
    mem_gib, cache_row = slope / GIB, decoder.cache_bytes // batch
    return Row(model=name, kind=model.config.kind, mode=mode_label(model.config, mode),
               workload=workload,
               prompt_len=prompt_len, gen_len=gen_len, batch=batch,
               mem_per_sample_gib=mem_gib, cache_bytes_per_sample=cache_row,
               analytic_cache_bytes_per_sample=cache,
               tokens_per_s=tokens_per_s, tpm=tokens_per_s / 1000 / mem_gib,
               prefill_s=prefill_s, mem_to_cache=slope / max(cache_row, 1),
               attention=",".join(kernel or "rule" for kernel in decoder.kernels),
               **roofline(model, mode, batch, prompt_len + gen_len / 2, tokens_per_s))


def add_ratios(rows: list[Row]) -> None:
    """TPM of each row relative to the vanilla and block rows of the same workload."""
    for row in rows:
        for attr, kind in (("vs_vanilla", "vanilla"), ("vs_block", "block")):
            ref = next((r for r in rows if r.workload == row.workload and r.kind == kind),
                       None)
            setattr(row, attr, row.tpm / ref.tpm if ref else None)


def format_table(rows: list[Row]) -> str:
    head = (f"{'model':<22}{'mode':<9}{'wl':<4}{'batch':>6}{'MiB/sample':>12}"
            f"{'cache B/sample':>16}{'mem/cache':>10}{'tok/s':>11}{'TPM':>11}{'prefill s':>10}"
            f"{'vs vanilla':>11}{'vs block':>9}{'GFLOP/s':>9}{'of mm':>7}  attention")
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = lambda x: "-" if x is None else f"{x:.1f}x"
        lines.append(f"{r.model:<22}{r.mode:<9}{r.workload:<4}{r.batch:>6}"
                     f"{r.mem_per_sample_gib * 1024:>12.3f}{r.cache_bytes_per_sample:>16,}"
                     f"{r.mem_to_cache:>10.2f}{r.tokens_per_s:>11.1f}{r.tpm:>11.2f}"
                     f"{r.prefill_s:>10.3f}{ratio(r.vs_vanilla):>11}{ratio(r.vs_block):>9}"
                     f"{r.decode_gflops:>9.1f}{r.matmul_fraction:>7.0%}  {r.attention}")
    return "\n".join(lines)


@dataclass
class SweepPoint:
    model: str
    mode: str
    context: int
    batch: int
    mem_per_sample_gib: float
    cache_bytes_per_sample: int
    ms_per_token: float
    tpm: float


def context_sweep(name: str, model: Model, mode: str, contexts: list[int], batch: int,
                  gen_len: int, options: DecodeOptions | None = None) -> list[SweepPoint]:
    """Per-sample memory and decode time per token as the prompt grows, at a fixed batch."""
    points = []
    for context in contexts:
        slope, _ = memory_profile(model, mode, context, gen_len, (batch, 2 * batch),
                                  options=options)
        prefill_s, total_s, decoder = run_workload(model, mode, batch, context, gen_len,
                                                   options=options)
        points.append(SweepPoint(
            model=name, mode=mode_label(model.config, mode), context=context,
            batch=batch, mem_per_sample_gib=slope / GIB,
            cache_bytes_per_sample=decoder.cache_bytes // batch,
            ms_per_token=1000 * (total_s - prefill_s) / gen_len,
            tpm=batch * gen_len / total_s / 1000 / (slope / GIB)))
    return points


def label(name: str, mode: str) -> str:
    """A row's name in tables and plots: the model, and its mode where it has one."""
    return name if mode == FLAT else f"{name} ({mode})"
