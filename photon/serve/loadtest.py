"""Run `photon serve` in a subprocess, and a load generator for it.

`ServerProcess` starts the server on a free loopback port and stops it with SIGTERM (a
graceful drain). `run_load` sends a fixed list of requests with at most `concurrency` in
flight, each bounded by a timeout and the whole run by a deadline, so it always stops by
itself. Both are meant for this machine only (127.0.0.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import httpx
import numpy as np

CONNECTIONS_PER_CLIENT = 32


@dataclass
class LoadResult:
    requests: int
    ok: int  # 200 with a body
    lost: int  # no HTTP answer: connection error, timeout, or cut by the deadline
    server_errors: int  # 5xx answers
    status: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    p50_s: float = 0.0
    p99_s: float = 0.0
    completion_tokens: int = 0
    tokens_per_s: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


async def _send(clients: asyncio.Queue, body: dict) -> tuple[int | None, float, int]:
    """(status or None if lost, seconds, completion tokens) of one request."""
    client = await clients.get()  # one of the clients' free connections
    started = time.monotonic()
    try:
        response = await client.post("/v1/completions", json=body)
    except httpx.HTTPError:
        return None, time.monotonic() - started, 0
    finally:
        clients.put_nowait(client)
    elapsed = time.monotonic() - started
    tokens = 0
    if response.status_code == 200:
        try:
            tokens = response.json()["usage"]["completion_tokens"]
        except (ValueError, KeyError):
            return None, elapsed, 0  # an answer that is not a completion counts as lost
    return response.status_code, elapsed, tokens


async def _run(base_url: str, bodies: list[dict], concurrency: int, timeout: float,
               deadline: float, api_key: str | None) -> LoadResult:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    # httpcore's pool does work quadratic in its connections at every response (a pool of
    # 1,000 spends seconds of CPU per wave of answers, taken from the server it measures),
    # so the connections are spread over clients of at most CONNECTIONS_PER_CLIENT each.
    n_clients = math.ceil(concurrency / CONNECTIONS_PER_CLIENT)
    limits = httpx.Limits(max_connections=CONNECTIONS_PER_CLIENT,
                          max_keepalive_connections=CONNECTIONS_PER_CLIENT)
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(
            httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits,
                              timeout=timeout)) for _ in range(n_clients)]
        free: asyncio.Queue = asyncio.Queue()  # one entry per allowed request in flight
        for i in range(concurrency):
            free.put_nowait(clients[i % n_clients])
        started = time.monotonic()
        tasks = [asyncio.ensure_future(_send(free, body)) for body in bodies]
        await asyncio.wait(tasks, timeout=deadline)
        wall = time.monotonic() - started
        for task in tasks:
            task.cancel()
        results = [t.result() if t.done() and not t.cancelled() and t.exception() is None
                   else (None, 0.0, 0) for t in tasks]
    codes = [code for code, _, _ in results]
    latencies = [s for code, s, _ in results if code == 200]
    tokens = sum(t for _, _, t in results)
    return LoadResult(
        requests=len(bodies), ok=codes.count(200), lost=codes.count(None),
        server_errors=sum(1 for c in codes if c is not None and c >= 500),
        status={str(c): n for c, n in sorted(Counter(codes).items(), key=str)},
        wall_s=wall,
        p50_s=float(np.percentile(latencies, 50)) if latencies else float("nan"),
        p99_s=float(np.percentile(latencies, 99)) if latencies else float("nan"),
        completion_tokens=tokens, tokens_per_s=tokens / wall)


def run_load(base_url: str, bodies: list[dict], concurrency: int = 1000,
             timeout: float = 600.0, deadline: float = 1800.0,
             api_key: str | None = None) -> LoadResult:
    """Send `bodies` to POST /v1/completions, `concurrency` at a time; a request is lost
    after `timeout` seconds, and whatever is unanswered after `deadline` seconds too."""
    return asyncio.run(_run(base_url, bodies, concurrency, timeout, deadline, api_key))


class ServerProcess:
    """`photon serve CHECKPOINT --port 0 ARGS` in a subprocess; a context manager that
    yields itself once the server answers /health (`url`, `proc`)."""

    def __init__(self, checkpoint: str, *args: str, env: dict | None = None,
                 startup_timeout: float = 600.0) -> None:
        self.command = [sys.executable, "-m", "photon.cli", "serve", str(checkpoint),
                        "--host", "127.0.0.1", "--port", "0", *args]
        self.env, self.startup_timeout = env, startup_timeout
        self.url = ""
        self.summary = ""

    def __enter__(self) -> ServerProcess:
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=self._stderr,
                                     text=True, env={**os.environ, **(self.env or {})})
        lines = []
        while not self.url:
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait()
                raise RuntimeError(f"photon serve exited with {self.proc.returncode}:\n"
                                   f"{''.join(lines)}{self.stderr()}")
            lines.append(line)
            if match := re.search(r"listening on (http://\S+)", line):
                self.url = match.group(1)
        self.summary = lines[0].strip()
        started = time.monotonic()
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() - started > self.startup_timeout or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"photon serve did not come up:\n{self.stderr()}")
            time.sleep(0.1)

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (drain), then SIGKILL if it has not exited after `timeout` seconds."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __exit__(self, *exc) -> None:
        self.stop()
        self.proc.stdout.close()
        self._stderr.close()
