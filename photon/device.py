"""Where a model runs: the one resolver behind every `--device` / `--dtype` choice (the CLI
verbs, training, the harness and transformers integrations), and a description of the
machine that results are stored with.

`--dtype` left out (or "auto") is bf16 on a CUDA GPU. On the CPU there are two rules, one per
use, both in `choose_dtype`:

- training (`photon train`, bf16 autocast over fp32 weights) takes bf16 where the CPU runs it
  natively (AMX or AVX512-BF16) and fp32 elsewhere, where bf16 matmuls are emulated and
  slower (2.4x slower than fp32 on the Intel Xeon of the first runs; docs/training.md);
- inference (`photon generate`, `serve`, `bench` and scripts/serve_bench.py, which cast the
  model) stays in fp32: a comparison runs every model in one dtype, and on a CPU with
  AVX512-BF16 bf16 decodes PHOTON 2.1-2.4x as fast but the flat baseline 0.71x as fast (its
  long-cache attention through SDPA), so a bf16 default would handicap the baseline
  (experiments/2026-11-29-local-windows-chunk-by-chunk-and-bf16); `--dtype bf16` asks for it.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Literal

import torch

from photon.errors import InputError

GIB = 1024**3
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
DTYPE_HELP = ("default bf16 on CUDA, fp32 on the CPU; on a CPU with AVX512-BF16 or AMX, bf16 "
              "decodes PHOTON about twice as fast but the flat model's long-cache attention "
              "more slowly (docs/benchmark.md)")


def resolve_device(requested: str | torch.device | None = None) -> torch.device:
    """The device to run on: CUDA when there is one for None or "auto", else the CPU. A
    named device is checked, so a typo or CUDA on a machine without a GPU is one clear
    error instead of a failure deep inside the first tensor operation."""
    if requested is None or requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        raise InputError(f"unknown device {str(requested)!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {str(requested)!r} asked for, but this machine has no "
                             "CUDA GPU that torch can use; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"device {str(requested)!r}: only {torch.cuda.device_count()} "
                             "CUDA device(s)")
    elif device.type != "cpu":
        raise InputError(f"device {str(requested)!r} is not supported; use cpu or cuda")
    return device


def choose_dtype(requested: str | None, device: torch.device,
                 use: Literal["training", "inference"]) -> torch.dtype:
    """`--dtype`: "bf16" or "fp32" as given; None or "auto" by the rule of `use` (see the
    module docstring): bf16 on a CUDA GPU that supports it, and on the CPU bf16 for
    training where the CPU runs it natively, fp32 otherwise."""
    if requested is not None and requested != "auto":
        if requested not in DTYPES:
            raise InputError(f"unknown dtype {requested!r}; use one of {', '.join(DTYPES)}")
        return DTYPES[requested]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    native = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    return torch.bfloat16 if use == "training" and native else torch.float32


def device_and_dtype(device: str | None, dtype: str | None) -> tuple[torch.device, torch.dtype]:
    """The `--device` and `--dtype` flags of the inference verbs: CUDA when there is one, and
    the inference rule of `choose_dtype` (fp32 on the CPU) unless a dtype is given."""
    resolved = resolve_device(device)
    return resolved, choose_dtype(dtype, resolved, "inference")


def available_memory(device: torch.device) -> int:
    """Bytes that can still be allocated on `device`: free GPU memory on CUDA, the kernel's
    MemAvailable (free plus reclaimable) on the CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def source_commit() -> str | None:
    """The git commit photon runs from (with "+changes" when its files differ from it), or
    None outside a git checkout: results say which code measured them."""
    root = Path(__file__).resolve().parent.parent
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                                  text=True, timeout=10, check=True).stdout.strip()

        commit = git("rev-parse", "--short", "HEAD")
        return commit + ("+changes" if git("status", "--porcelain", "--", "photon") else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device, dtype: torch.dtype) -> dict:
    """Device, dtype, threads and versions: stored next to every measurement."""
    info = {"device": str(device), "dtype": str(dtype).removeprefix("torch."),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "machine": platform.machine(),
            "commit": source_commit()}
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
