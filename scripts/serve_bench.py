"""`photon serve` under load, reproducibly, on this machine (127.0.0.1 only).

1. Load: N concurrent requests (mixed prompt lengths, lengths to generate, greedy and seeded
   sampling) against one live server: lost requests, 5xx answers, p50/p99 latency, generated
   tokens/s.
2. Same memory budget, one server per model: the slots each gets (how many sequences it
   decodes at once), the most it ran at once, and served tokens/s with the slots kept full
   (FILL x slots requests, prompt P tokens, G generated, EOS ignored, greedy).
3. Engine overhead: the server's tokens/s over the turns that began with every slot busy
   (its `photon_full_batch_*` counters: decode step, sampling, text, delivery and HTTP all
   included; the ramp-up of arriving requests excluded) against `photon bench`'s decoder at
   that batch and workload, decode steps only, run --repeats times in this process with the
   server stopped (target: served >= 80 % of the decoder). A shared machine's speed drifts
   by tens of percent from one minute to the next, so both sides are measured alike: the
   decoder's fastest run against the server's fastest stretch of full-batch turns as long as
   one decoder run (the counters are read twice a second); the whole-run means are reported
   next to them.

    python scripts/serve_bench.py                  # the README's run (several minutes, idle CPU)
    python scripts/serve_bench.py --quick          # a reduced run, about a minute or two

Presets get random weights (speed does not depend on them) and a byte-level BPE trained on
shakespeare; checkpoint folders are served as they are. Results: OUT/serve_bench.json, a
Markdown table on stdout, and with --json one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from pathlib import Path

import httpx
import torch
from prometheus_client.parser import text_string_to_metric_families

from photon import bench
from photon.checkpoint import load_model, save_checkpoint
from photon.data.corpus import get_tokenizer
from photon.errors import PhotonError
from photon.model.lm import build_model
from photon.serve.loadtest import ServerProcess, run_load


def checkpoint(name: str, out: Path) -> Path:
    """A checkpoint folder as given, or a preset saved once with random weights."""
    if Path(name).exists():
        return Path(name)
    path = out / "checkpoints" / name
    if not (path / "config.json").exists():
        torch.manual_seed(0)
        vocab = build_model(name, device="meta").config.vocab_size
        tokenizer = get_tokenizer("shakespeare", "bpe", vocab)
        model = build_model(name, vocab_size=tokenizer.vocab_size)
        save_checkpoint(path, model, tokenizer)
    return path


def fixed_bodies(count: int, prompt_len: int, gen_len: int, vocab: int, seed: int = 0
                 ) -> list[dict]:
    """Greedy requests of exactly `prompt_len` prompt tokens and `gen_len` new ones."""
    rng = random.Random(seed)
    return [{"model": "m", "prompt": [rng.randrange(1, vocab) for _ in range(prompt_len)],
             "max_tokens": gen_len, "temperature": 0, "ignore_eos": True}
            for _ in range(count)]


def mixed_bodies(count: int, prompt_len: int, gen_len: int, vocab: int, seed: int = 1
                 ) -> list[dict]:
    """Requests of random lengths, half greedy, half sampled with a seed (some top-k)."""
    rng = random.Random(seed)
    bodies = []
    for i in range(count):
        body = {"model": "m", "prompt": [rng.randrange(1, vocab)
                                         for _ in range(rng.randint(1, prompt_len))],
                "max_tokens": rng.randint(1, gen_len)}
        if i % 2:
            body.update(temperature=0.8, seed=i, top_k=None if i % 4 == 1 else 50)
        else:
            body["temperature"] = 0
        bodies.append(body)
    return bodies


def serve(ckpt: Path, mode: str, args, *extra: str) -> ServerProcess:
    threads = ["--threads", str(args.threads)] if args.threads else []
    return ServerProcess(ckpt, "--model-name", "m", "--mode", mode, "--memory-budget",
                         str(args.budget_gib), *threads, *extra)


def load_phase(ckpt: Path, vocab: int, args) -> dict:
    with serve(ckpt, args.load_mode, args) as server:
        bodies = mixed_bodies(args.requests, args.prompt_len, args.gen_len, vocab)
        result = run_load(server.url, bodies, concurrency=args.requests,
                          timeout=args.timeout, deadline=args.deadline).as_dict()
        health = httpx.get(f"{server.url}/health").json()
        result.update(slots=health["slots"], peak_running=health["peak_running"])
    return result


def server_metrics(url: str) -> dict[str, float]:
    """The server's Prometheus samples (unlabelled ones), by name."""
    text = httpx.get(f"{url}/metrics", timeout=60).text
    return {sample.name: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if not sample.labels}


class CounterPoller:
    """Reads the server's full-batch counters twice a second while a load runs."""

    def __init__(self, url: str, every: float = 0.5) -> None:
        self.url, self.every = url, every
        self.samples: list[tuple[float, float]] = []  # (tokens, seconds), cumulative
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                m = server_metrics(self.url)
            except httpx.HTTPError:  # a busy server answers late: skip this sample
                continue
            self.samples.append((m["photon_full_batch_tokens_total"],
                                 m["photon_full_batch_seconds_total"]))

    def __enter__(self) -> CounterPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def best_stretch(samples: list[tuple[float, float]], seconds: float) -> float:
    """Highest tokens/s over any stretch of at least `seconds` of counted time between two
    samples (cumulative (tokens, seconds)); 0 if the samples span less."""
    best = 0.0
    for i, (tokens_i, seconds_i) in enumerate(samples):
        for tokens_j, seconds_j in samples[i + 1:]:
            if seconds_j - seconds_i >= seconds:
                best = max(best, (tokens_j - tokens_i) / (seconds_j - seconds_i))
    return best


def compare_phase(name: str, ckpt: Path, mode: str, vocab: int, args) -> dict:
    """Slots at the budget; served tokens/s with them kept full (FILL x slots requests), end
    to end and over the turns with every slot busy; the decoder alone at that batch."""
    # Every request waits in the queue rather than being refused (429), and a step admits
    # up to --prefill-tokens of prompts: the server's default (8,192: 128 prompts of 64) caps
    # PHOTON, whose requests live 8 steps, at 1,024 running sequences.
    with serve(ckpt, mode, args, "--max-queue", str(1 << 20),
               "--prefill-tokens", str(args.prefill_tokens)) as server:
        slots = httpx.get(f"{server.url}/health").json()["slots"]
        bodies = fixed_bodies(args.fill * slots, args.prompt_len, args.gen_len, vocab)
        with CounterPoller(server.url) as poller:
            result = run_load(server.url, bodies, concurrency=len(bodies),
                              timeout=args.timeout, deadline=args.deadline)
        peak = httpx.get(f"{server.url}/health").json()["peak_running"]
        m = server_metrics(server.url)
    full_tokens, full_s = m["photon_full_batch_tokens_total"], m["photon_full_batch_seconds_total"]
    full = full_tokens / max(full_s, 1e-9)
    model, _ = load_model(ckpt)
    runs = []  # (tokens/s, decode seconds) of each decoder run
    for _ in range(args.repeats):
        prefill_s, total_s, _ = bench.run_workload(model, mode, slots, args.prompt_len,
                                                   args.gen_len)
        runs.append((slots * args.gen_len / (total_s - prefill_s), total_s - prefill_s))
    decoder, run_s = max(runs)
    decoder_mean = sum(r for r, _ in runs) / len(runs)
    # The counters start at 0 with the server. Full-batch turns shorter than one decoder
    # run in all: the whole run is the only stretch.
    full_best = best_stretch([(0.0, 0.0), *poller.samples, (full_tokens, full_s)], run_s) or full
    return {"model": name, "mode": mode, "slots": slots, "peak_running": peak,
            "lost": result.lost, "server_errors": result.server_errors, "status": result.status,
            "p50_s": result.p50_s, "p99_s": result.p99_s,
            "served_tokens_per_s": result.tokens_per_s,
            "full_batch_tokens_per_s": full, "full_batch_seconds": full_s,
            "full_batch_best_tokens_per_s": full_best, "decoder_tokens_per_s": decoder,
            "decoder_mean_tokens_per_s": decoder_mean,
            "decoder_runs_tokens_per_s": [r for r, _ in runs], "decoder_run_seconds": run_s,
            "served_vs_decoder": full_best / decoder,
            "served_vs_decoder_means": full / decoder_mean}


def table(rows: list[dict]) -> str:
    lines = ["| model | mode | slots | peak running | served tok/s, end to end | "
             "served tok/s, full batch: best stretch (mean) | decoder tok/s, photon bench: "
             "best run (mean) | full batch / decoder: best (means) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['mode']} | {r['slots']} | {r['peak_running']} | "
                     f"{r['served_tokens_per_s']:,.0f} | {r['full_batch_best_tokens_per_s']:,.0f}"
                     f" ({r['full_batch_tokens_per_s']:,.0f}) | {r['decoder_tokens_per_s']:,.0f}"
                     f" ({r['decoder_mean_tokens_per_s']:,.0f}) | {r['served_vs_decoder']:.0%} "
                     f"({r['served_vs_decoder_means']:.0%}) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vanilla-small", "photon-small"],
                        help="presets or checkpoints compared at the same budget")
    parser.add_argument("--modes", default="hiergen,recgen", help="PHOTON decoding modes")
    parser.add_argument("--load-model", default="photon-small", help="model of the load phase")
    parser.add_argument("--load-mode", default="hiergen")
    parser.add_argument("--requests", type=int, default=1000,
                        help="concurrent requests of the load phase")
    parser.add_argument("--budget-gib", type=float, default=2.0, help="memory budget per server")
    parser.add_argument("--prompt-len", type=int, default=64, help="prompt tokens")
    parser.add_argument("--gen-len", type=int, default=128, help="tokens to generate")
    parser.add_argument("--fill", type=int, default=2,
                        help="requests per slot when keeping the slots full")
    parser.add_argument("--prefill-tokens", type=int, default=65536,
                        help="the compared servers' --prefill-tokens: prompt tokens admitted "
                             "per step, enough to fill the slots within a request's lifetime")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of the decoder benchmark; the fastest counts")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per request")
    parser.add_argument("--deadline", type=float, default=1800, help="seconds per phase")
    parser.add_argument("--threads", type=int,
                        help="CPU threads of the servers and of the decoder benchmark (default: "
                             "torch's); 1 on a machine shared with other jobs, where a "
                             "multi-threaded run spends its time waiting for busy cores")
    parser.add_argument("--quick", action="store_true",
                        help="200 requests, budget 0.25 GiB, prompt 32, generate 64")
    parser.add_argument("--out", default="runs/serve_bench")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON line")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.budget_gib, args.prompt_len, args.gen_len = 200, 0.25, 32, 64
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = bench.environment(torch.device("cpu"), torch.float32)
    print("  ".join(f"{k}={v}" for k, v in env.items()), flush=True)

    started = time.monotonic()
    try:  # every checkpoint first: a typo fails at once, not after minutes of load
        load_ckpt = checkpoint(args.load_model, out)
        compared = {name: checkpoint(name, out) for name in args.models}
    except PhotonError as e:
        parser.error(str(e))
    vocab = load_model(load_ckpt)[1].vocab_size
    print(f"load: {args.requests} concurrent requests to {args.load_model} ({args.load_mode}), "
          f"budget {args.budget_gib} GiB ...", flush=True)
    load = load_phase(load_ckpt, vocab, args)
    print(f"  {load['ok']} ok, {load['lost']} lost, {load['server_errors']} 5xx, status "
          f"{load['status']}; latency p50 {load['p50_s']:.2f} s, p99 {load['p99_s']:.2f} s; "
          f"{load['tokens_per_s']:,.0f} generated tokens/s over {load['wall_s']:.1f} s; "
          f"{load['slots']} slots, at most {load['peak_running']} running", flush=True)

    rows = []
    for name, ckpt in compared.items():
        model, tokenizer = load_model(ckpt)
        for mode in bench.modes_of(model, args.modes.split(",")):
            label = mode if bench.kind_of(model) == "photon" else "-"
            print(f"compare: {name} ({label}) at {args.budget_gib} GiB ...", flush=True)
            rows.append(compare_phase(name, ckpt, mode, tokenizer.vocab_size, args))
            rows[-1]["mode"] = label
            print(f"  status {rows[-1]['status']}, {rows[-1]['lost']} lost", flush=True)
    print(table(rows))
    results = {**env, "args": vars(args), "load": load, "compare": rows,
               "wall_s": time.monotonic() - started}
    (out / "serve_bench.json").write_text(json.dumps(results, indent=1))
    print(f"results: {out / 'serve_bench.json'} ({results['wall_s']:.0f} s)")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
