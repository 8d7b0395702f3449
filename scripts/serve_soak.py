"""Soak `photon serve` with hostile clients beside normal ones, on this machine only
(127.0.0.1), for a bounded time.

For --duration seconds, against one server started here with the limits given, at once:
- normal clients stream completions back to back: stream progress is the chunks received
  and the longest wait between two chunks of a stream;
- a prober GETs /health every 0.25 s: its latency;
- slow bodies: connections that send a request head, then a byte of the body a second;
- slow heads: connections that send a request head a byte a second;
- idle connections that send nothing;
- near-complete bodies: connections that send all but the last byte of a body of
  --max-body-mb and wait (memory a client could pin);
- oversized prompts: text just under --max-body-mb, to /v1/completions and /tokenize.
A hostile connection opens again a second after the server closes it or answers. The
server's resident memory (VmRSS) is sampled throughout. A line every --report seconds, a
summary at the end (with --json, one JSON line last).

    python scripts/serve_soak.py                       # 60 s against a random photon-tiny
    python scripts/serve_soak.py --duration 20 --json  # what the slow test runs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from photon.checkpoint import save_checkpoint
from photon.data.tokenizer import Tokenizer
from photon.model.lm import build_model
from photon.serve.loadtest import ServerProcess

HOSTILE = ("slow body", "slow head", "idle", "near-complete body")


@dataclass
class Window:
    """What one reporting interval saw."""

    health_s: list[float] = field(default_factory=list)
    health_failed: int = 0
    chunks: int = 0
    longest_gap_s: float = 0.0
    rss_mb: list[float] = field(default_factory=list)
    outcomes: Counter = field(default_factory=Counter)


class Soak:
    def __init__(self, url: str, pid: int, args: argparse.Namespace) -> None:
        self.url, self.pid, self.args = url, pid, args
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.window, self.windows = Window(), []
        self.stop = asyncio.Event()

    # --- normal clients

    async def prober(self) -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    ok = (await client.get(f"{self.url}/health")).status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    self.window.health_s.append(time.monotonic() - started)
                else:
                    self.window.health_failed += 1
                await asyncio.sleep(0.25)

    async def streamer(self, i: int) -> None:
        body = {"model": "m", "prompt": f"ROMEO {i}:", "max_tokens": self.args.max_tokens,
                "stream": True, "temperature": 0.8, "ignore_eos": True}
        async with httpx.AsyncClient(timeout=60) as client:
            while not self.stop.is_set():
                try:
                    async with client.stream("POST", f"{self.url}/v1/completions",
                                             json=body) as r:
                        self.window.outcomes[f"stream {r.status_code}"] += 1
                        last = time.monotonic()
                        async for line in r.aiter_lines():
                            if line.startswith("data: "):
                                now = time.monotonic()
                                self.window.chunks += 1
                                self.window.longest_gap_s = max(self.window.longest_gap_s,
                                                                now - last)
                                last = now
                except httpx.HTTPError as e:
                    self.window.outcomes[f"stream {type(e).__name__}"] += 1
                    await asyncio.sleep(1)

    async def oversized(self, path: str) -> None:
        text = "x" * (int(self.args.max_body_mb * 2**20) - 1024)
        body = {"model": "m", "prompt": text} if path == "/tokenize" else \
            {"model": "m", "prompt": text, "max_tokens": 4}
        async with httpx.AsyncClient(timeout=60) as client:
            while not self.stop.is_set():
                try:
                    code = (await client.post(f"{self.url}{path}", json=body)).status_code
                except httpx.HTTPError as e:
                    code = type(e).__name__
                self.window.outcomes[f"oversized {path} {code}"] += 1
                await asyncio.sleep(0.5)

    # --- hostile connections

    async def hostile(self, kind: str) -> None:
        while not self.stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                self.window.outcomes[f"{kind}: connect failed"] += 1
                await asyncio.sleep(1)
                continue
            try:
                outcome = await self.attack(kind, reader, writer)
            except OSError:
                outcome = "reset"
            finally:
                writer.close()
            self.window.outcomes[f"{kind}: {outcome}"] += 1
            await asyncio.sleep(1)

    async def attack(self, kind: str, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> str:
        """Send what `kind` sends, a byte a second where it dribbles, until the server
        answers or closes: the status it answered, "closed", or "open at the end"."""
        size = int(self.args.max_body_mb * 2**20)
        head = b"POST /v1/completions HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
        dribble = b""
        if kind == "slow body":
            writer.write(head + b"Content-Length: 1000\r\n\r\n")
            dribble = b"x" * 1000
        elif kind == "slow head":
            dribble = head + b"X-Slow: " + b"y" * 1000
        elif kind == "near-complete body":
            writer.write(head + b"Content-Length: %d\r\n\r\n" % size + b" " * (size - 1))
        while not self.stop.is_set():
            await writer.drain()
            try:
                answer = await asyncio.wait_for(reader.read(64), 1.0)
            except asyncio.TimeoutError:  # noqa: UP041 (Python 3.10: not the builtin)
                if dribble:
                    writer.write(dribble[:1])
                    dribble = dribble[1:]
                continue
            return answer[9:12].decode(errors="replace") if answer else "closed"
        return "open at the end"

    # --- memory and reports

    async def sampler(self) -> None:
        status = Path(f"/proc/{self.pid}/status")
        while not self.stop.is_set():
            for line in status.read_text().splitlines():
                if line.startswith("VmRSS:"):
                    self.window.rss_mb.append(int(line.split()[1]) / 1024)
            await asyncio.sleep(0.5)

    async def reporter(self) -> None:
        started = time.monotonic()
        while not self.stop.is_set():
            await asyncio.sleep(self.args.report)
            window, self.window = self.window, Window()
            self.windows.append(window)
            health = window.health_s or [float("nan")]
            print(f"{time.monotonic() - started:5.0f} s  /health max {max(health) * 1e3:6.0f} "
                  f"ms ({len(window.health_s)} ok, {window.health_failed} failed)  stream "
                  f"chunks {window.chunks:5d}, longest gap {window.longest_gap_s:5.2f} s  "
                  f"RSS {max(window.rss_mb, default=0):6.0f} MB  "
                  f"{dict(sorted(window.outcomes.items()))}", flush=True)

    async def run(self) -> None:
        a = self.args
        tasks = [self.prober(), self.sampler(), self.reporter(),
                 *(self.streamer(i) for i in range(a.streams)),
                 *(self.oversized(p) for p in ("/v1/completions", "/tokenize")
                   for _ in range(a.oversized)),
                 *(self.hostile(kind) for kind, n in zip(HOSTILE, (
                     a.slow_bodies, a.slow_heads, a.idle, a.near_complete), strict=True)
                   for _ in range(n))]
        running = [asyncio.ensure_future(t) for t in tasks]
        await asyncio.sleep(a.duration)
        self.stop.set()
        await asyncio.wait(running, timeout=10)
        for task in running:
            task.cancel()

    def summary(self) -> dict:
        health = [s for w in self.windows for s in w.health_s]
        rss = [m for w in self.windows for m in w.rss_mb]
        outcomes = sum((w.outcomes for w in self.windows), Counter())
        return {"health_ok": len(health),
                "health_failed": sum(w.health_failed for w in self.windows),
                "health_p50_ms": 1e3 * statistics.median(health) if health else None,
                "health_max_ms": 1e3 * max(health, default=float("nan")),
                "stream_chunks": sum(w.chunks for w in self.windows),
                "stream_longest_gap_s": max((w.longest_gap_s for w in self.windows),
                                            default=0.0),
                "rss_first_mb": rss[0] if rss else None, "rss_max_mb": max(rss, default=0),
                "rss_last_mb": rss[-1] if rss else None,
                "outcomes": dict(sorted(outcomes.items()))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="serve this checkpoint (default: a random "
                                        "photon-tiny with the byte tokenizer)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of soak")
    p.add_argument("--report", type=float, default=5.0, help="seconds between report lines")
    p.add_argument("--streams", type=int, default=4, help="normal streaming clients")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per normal completion")
    p.add_argument("--oversized", type=int, default=1,
                   help="clients sending oversized prompts, per endpoint")
    p.add_argument("--slow-bodies", type=int, default=100)
    p.add_argument("--slow-heads", type=int, default=100)
    p.add_argument("--idle", type=int, default=100)
    p.add_argument("--near-complete", type=int, default=40)
    p.add_argument("--max-body-mb", type=float, default=8.0, help="the server's flag")
    p.add_argument("--server-args", default="--header-timeout 5 --body-timeout 5 "
                                            "--max-batch 8",
                   help="more flags of photon serve")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint or save_checkpoint(
            Path(tmp) / "soak", build_model("photon-tiny").eval(), Tokenizer.bytes())
        with ServerProcess(ckpt, "--model-name", "m", "--max-body-mb", str(args.max_body_mb),
                           *args.server_args.split()) as server:
            print(server.summary, flush=True)
            soak = Soak(server.url, server.proc.pid, args)
            asyncio.run(soak.run())
    summary = soak.summary()
    print(json.dumps(summary) if args.json else json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
