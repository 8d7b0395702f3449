"""What the experiment sweeps (scripts/frontier.py, scripts/recall.py) share: a pinned checkout
runs every command, each command's last stdout line is its JSON result, and each finished run
is one JSON committed into the experiment log at once, so a sweep resumes from what is
committed on any machine."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import torch

from photon.device import environment
from photon.inference.workload import analytic_cache_bytes
from photon.model.config import ModelConfig
from photon.model.lm import build_model

ROOT = Path(__file__).resolve().parent.parent


def pinned_commit(checkout: Path) -> str:
    """The commit a sweep's checkout is at."""
    return subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()


def run_env(checkout: Path, threads: int) -> dict[str, str]:
    """The environment of a run: the checkout's code, `threads` threads, no progress bars."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(checkout),
            "TQDM_DISABLE": "1"}


def machine(threads: int) -> dict:
    """The CPU, its cores and the software versions a run's numbers come from."""
    env = environment(torch.device("cpu"), torch.float32)
    with open("/proc/cpuinfo") as f:
        flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")),
                     [])
    return {"cpu": env["cpu"], "cores": os.cpu_count(), "torch": env["torch"],
            "python": env["python"], "threads_per_run": threads,
            "bf16": any(f in flags for f in ("avx512_bf16", "amx_bf16"))}


def committed(folder: Path) -> dict[str, dict]:
    """The finished runs in `folder`, by name."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def last_json(cmd: list[str], log: Path, env: dict[str, str], cwd: Path) -> dict:
    """Run `cmd` (its stderr appended to `log`) and parse the last line of its stdout."""
    with log.open("a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, text=True, env=env,
                                cwd=cwd)
    if result.returncode:
        raise RuntimeError(f"{' '.join(cmd[1:5])} failed ({result.returncode}); see {log}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def record_run(path: Path, record: dict, message: str, commit: bool = True,
               tries: int = 5) -> None:
    """Write a run's JSON and commit it alone; retried, as another process may hold the git
    index for a moment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    if not commit:
        return
    for attempt in range(tries):
        added = subprocess.run(["git", "-C", str(ROOT), "add", "--", str(path)])
        if added.returncode == 0 and subprocess.run(
                ["git", "-C", str(ROOT), "commit", "-q", "-m", message, "--", str(path)]
        ).returncode == 0:
            return
        time.sleep(2 + 2 * attempt)
    raise RuntimeError(f"could not commit {path}: commit it by hand")


def equal_memory_window(flat: ModelConfig, hierarchical: ModelConfig, context: int) -> int:
    """The sliding window whose ring holds, for the flat model, the bytes of the hierarchical
    model's caches at `context` tokens (fp32, the analytic count): the flat baseline of equal
    decode memory."""
    def cache_bytes(config: ModelConfig, tokens: int) -> int:
        model = build_model(config, device="meta")
        return analytic_cache_bytes(model, "hiergen", tokens, torch.float32)
    return max(2, round(cache_bytes(hierarchical, context) / cache_bytes(flat, 1)))
