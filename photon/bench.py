"""The paper's throughput protocol (docs/PHOTON.md §6), run for every model on the same machine.

For each model and workload (PF: prompt 2048, generate 128; DE: prompt 128, generate 2048;
random prompts, greedy, no EOS):
- per-sample memory is the slope of peak memory between two batch sizes (activations and
  caches, not only KV); on CUDA from `torch.cuda.max_memory_allocated`, on the CPU from the
  profiler's allocation trace of the same run;
- the batch is the largest whose predicted peak (weights + intercept + slope · batch) fits
  the memory budget;
- throughput is generated tokens per second over the whole batch, prefill included;
- TPM = throughput / per-sample memory, in K tokens/s/GiB.
The flat baseline decodes with a preallocated KV cache and SDPA, the same cache class and
attention PHOTON uses, so the comparison isolates the architecture.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from photon.inference.generate import FlatDecoder, PhotonDecoder, make_sampler
from photon.model.config import PhotonConfig
from photon.model.lm import Model, PhotonLM

GIB = 1024**3
WORKLOADS = {"PF": (2048, 128), "DE": (128, 2048)}
QUICK_WORKLOADS = {"PF": (128, 16), "DE": (16, 128)}


def kind_of(model: Model) -> str:
    """'vanilla' (flat), 'block' (one level) or 'photon' (two or more levels)."""
    if not isinstance(model, PhotonLM):
        return "vanilla"
    return "block" if model.config.n_levels == 1 else "photon"


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


def analytic_cache_bytes(model: Model, mode: str, capacity: int, dtype: torch.dtype) -> int:
    """Bytes of global KV cache one sequence of `capacity` tokens needs, from the config."""
    c = model.config
    entry = 2 * c.d_model * torch.finfo(dtype).bits // 8  # keys and values of one layer
    if not isinstance(c, PhotonConfig):
        return entry * c.n_layers * capacity
    metas = math.ceil(capacity / c.meta_len)
    return sum(entry * c.encoder_layers[level - 1] * metas * (c.meta_len
               // c.tokens_per_position(level)) for level in c.cached_levels(mode))


def make_decoder(model: Model, mode: str, batch: int, capacity: int):
    if isinstance(model, PhotonLM):
        return PhotonDecoder(model, batch, capacity, mode)
    return FlatDecoder(model, batch, capacity)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_workload(model: Model, mode: str, batch: int, prompt_len: int, gen_len: int,
                 max_steps: int | None = None, seed: int = 0) -> tuple[float, float, object]:
    """Prefill random prompts and decode greedily: (prefill seconds, total seconds, decoder)."""
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt_len), generator=g).to(device)
    decoder = make_decoder(model, mode, batch, prompt_len + gen_len)
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
        for _ in range(steps):
            decoder.step(greedy)
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


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes of tensors allocated while `fn` runs, above what was live before."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events
              if e.get("name") == "[memory]" and "Total Allocated" in e.get("args", {})]
    return max(totals, default=0)


def memory_profile(model: Model, mode: str, prompt_len: int, gen_len: int,
                   batches: tuple[int, int]) -> tuple[float, float]:
    """(bytes per sample, bytes at batch 0) from peak memory at two batch sizes. A few
    decode steps reach the steady state: caches are preallocated at prefill."""
    device = next(model.parameters()).device
    peaks = [peak_bytes(lambda b=b: run_workload(model, mode, b, prompt_len, gen_len,
                                                 max_steps=2), device) for b in batches]
    slope = (peaks[1] - peaks[0]) / (batches[1] - batches[0])
    return slope, peaks[0] - slope * batches[0]


def weight_bytes(model: Model) -> int:
    return sum(p.nbytes for p in model.parameters())


def batch_for_budget(model: Model, mode: str, prompt_len: int, gen_len: int,
                     budget_gib: float, max_batch: int, batches: tuple[int, int] = (2, 8)
                     ) -> tuple[int, float]:
    """(batch, bytes per sample): the largest batch whose predicted peak (weights +
    intercept + slope * batch) fits the budget, capped at `max_batch`."""
    slope, intercept = memory_profile(model, mode, prompt_len, gen_len, batches)
    room = budget_gib * GIB - weight_bytes(model) - max(intercept, 0)
    return int(max(1, min(max_batch, room // max(slope, 1)))), slope


def measure(name: str, model: Model, mode: str, workload: str, prompt_len: int, gen_len: int,
            budget_gib: float, max_batch: int, batches: tuple[int, int]) -> Row:
    """One row of the table: memory slope, the batch that fits, and its throughput."""
    batch, slope = batch_for_budget(model, mode, prompt_len, gen_len, budget_gib, max_batch,
                                    batches)
    prefill_s, total_s, decoder = run_workload(model, mode, batch, prompt_len, gen_len)
    tokens_per_s = batch * gen_len / total_s
    mem_gib = slope / GIB
    dtype = next(model.parameters()).dtype
    return Row(model=name, kind=kind_of(model),
               mode=mode if isinstance(model, PhotonLM) else "-", workload=workload,
               prompt_len=prompt_len, gen_len=gen_len, batch=batch,
               mem_per_sample_gib=mem_gib, cache_bytes_per_sample=decoder.cache_bytes // batch,
               analytic_cache_bytes_per_sample=analytic_cache_bytes(
                   model, mode, prompt_len + gen_len, dtype),
               tokens_per_s=tokens_per_s, tpm=tokens_per_s / 1000 / mem_gib,
               prefill_s=prefill_s)


def add_ratios(rows: list[Row]) -> None:
    """TPM of each row relative to the vanilla and block rows of the same workload."""
    for row in rows:
        for attr, kind in (("vs_vanilla", "vanilla"), ("vs_block", "block")):
            ref = next((r for r in rows if r.workload == row.workload and r.kind == kind),
                       None)
            setattr(row, attr, row.tpm / ref.tpm if ref else None)


DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def device_and_dtype(device: str | None, dtype: str | None) -> tuple[torch.device, torch.dtype]:
    """The `--device` and `--dtype` flags of the CLI: CUDA when there is one, bf16 on CUDA
    and fp32 on the CPU unless given."""
    resolved = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return resolved, DTYPES[dtype] if dtype else (
        torch.bfloat16 if resolved.type == "cuda" else torch.float32)


def environment(device: torch.device, dtype: torch.dtype) -> dict:
    info = {"device": str(device), "dtype": str(dtype).removeprefix("torch."),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "machine": platform.machine()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        try:
            with open("/proc/cpuinfo") as f:
                info["cpu"] = next(line.split(":", 1)[1].strip() for line in f
                                   if line.startswith("model name"))
        except (OSError, StopIteration):
            info["cpu"] = platform.processor()
    return info


def format_table(rows: list[Row]) -> str:
    head = (f"{'model':<16}{'mode':<9}{'wl':<4}{'batch':>6}{'MiB/sample':>12}"
            f"{'cache B/sample':>16}{'tok/s':>11}{'TPM':>11}{'prefill s':>10}"
            f"{'vs vanilla':>11}{'vs block':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = lambda x: "-" if x is None else f"{x:.1f}x"
        lines.append(f"{r.model:<16}{r.mode:<9}{r.workload:<4}{r.batch:>6}"
                     f"{r.mem_per_sample_gib * 1024:>12.3f}{r.cache_bytes_per_sample:>16,}"
                     f"{r.tokens_per_s:>11.1f}{r.tpm:>11.2f}{r.prefill_s:>10.3f}"
                     f"{ratio(r.vs_vanilla):>11}{ratio(r.vs_block):>9}")
    return "\n".join(lines)


def rows_json(rows: list[Row], env: dict) -> str:
    return json.dumps({**env, "rows": [asdict(r) for r in rows]})


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
                  gen_len: int) -> list[SweepPoint]:
    """Per-sample memory and decode time per token as the prompt grows, at a fixed batch."""
    points = []
    for context in contexts:
        slope, _ = memory_profile(model, mode, context, gen_len, (batch, 2 * batch))
        prefill_s, total_s, decoder = run_workload(model, mode, batch, context, gen_len)
        points.append(SweepPoint(
            model=name, mode=mode if isinstance(model, PhotonLM) else "-", context=context,
            batch=batch, mem_per_sample_gib=slope / GIB,
            cache_bytes_per_sample=decoder.cache_bytes // batch,
            ms_per_token=1000 * (total_s - prefill_s) / gen_len,
            tpm=batch * gen_len / total_s / 1000 / (slope / GIB)))
    return points


def label(name: str, mode: str) -> str:
    return name if mode == "-" else f"{name} ({mode})"


def plot_sweep(points: list[SweepPoint], path: str) -> None:
    """Per-sample memory, decode time per token and TPM against context, one line a model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    series = sorted({(p.model, p.mode) for p in points}, key=lambda s: label(*s))
    for name, mode in series:
        pts = sorted((p for p in points if (p.model, p.mode) == (name, mode)),
                     key=lambda p: p.context)
        x = [p.context for p in pts]
        for ax, y in zip(axes, ([p.mem_per_sample_gib * 1024 for p in pts],
                                [p.ms_per_token for p in pts], [p.tpm for p in pts]),
                         strict=True):
            ax.plot(x, y, marker="o", label=label(name, mode))
    for ax, title in zip(axes, ("memory per sample (MiB)", "decode time per token (ms)",
                                "TPM (K tok/s/GiB)"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context (prompt tokens)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points (tpm, bpb) not dominated by another with higher TPM and lower bpb."""
    front, best = [], math.inf
    for tpm, bpb in sorted(points, key=lambda p: (-p[0], p[1])):
        if bpb < best:
            front.append((tpm, bpb))
            best = bpb
    return front


def plot_tradeoff(entries: list[dict], path: str, workload: str) -> None:
    """TPM against validation bpb (lower is better), with the Pareto frontier."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    markers = {"vanilla": "s", "block": "^", "photon": "o"}
    for e in entries:
        ax.scatter(e["tpm"], e["bpb"], s=60, marker=markers.get(e.get("kind"), "o"),
                   label=e["label"], zorder=3)
    front = pareto_front([(e["tpm"], e["bpb"]) for e in entries])
    # Rings mark the frontier's points; the dashed steps join them (one point is a ring).
    ax.scatter([p[0] for p in front], [p[1] for p in front], s=220, facecolors="none",
               edgecolors="k", zorder=2, label="Pareto frontier")
    ax.step([p[0] for p in front], [p[1] for p in front], "k--", lw=1, where="post")
    ax.set_xscale("log")
    ax.set_xlabel(f"TPM, {workload} (K tokens/s/GiB, higher is better)")
    ax.set_ylabel("validation bits per byte (lower is better)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def modes_of(model: Model, modes: list[str]) -> list[str]:
    """The decoding modes a model is benchmarked in (one for flat and one-level models)."""
    if kind_of(model) != "photon":
        return ["hiergen"]
    return modes


def load_models(names: list[str], device: torch.device, dtype: torch.dtype,
                compile_stacks: bool) -> list[tuple[str, Model]]:
    """Presets (randomly initialised: speed does not depend on the weights) or checkpoints."""
    from photon.model.layers import Stack
    from photon.model.lm import build_model

    models = []
    for name in names:
        if os.path.exists(name):
            from photon.checkpoint import load_model

            model, _ = load_model(name, device=device)
            name = os.path.basename(os.path.normpath(name))
        else:
            torch.manual_seed(0)
            model = build_model(name, device=device)
        model = model.to(dtype).eval()
        if compile_stacks:
            for module in model.modules():
                if isinstance(module, Stack):
                    module.compile(dynamic=True)
        models.append((name, model))
    return models
