"""`photon serve` under load, reproducibly, on this machine (127.0.0.1 only).

1. Load: N concurrent requests (mixed prompt lengths, lengths to generate, greedy and seeded
   sampling) against one live server: lost requests, 5xx answers, p50/p99 latency, generated
   tokens/s.
2. Same memory budget, one server per model: the slots each gets (how many sequences it
   decodes at once), the most it ran at once, and served tokens/s with the slots kept full
   (FILL x slots requests, prompt P tokens, G generated, EOS ignored, greedy).
3. Engine overhead: the server's tokens/s over the turns that began with every slot busy
   (its `photon_full_batch_*` counters: the whole turn of the engine loop, from taking the
   queue's lock through the decode step, sampling, text and handing outputs to the HTTP
   thread, which shares the cores with it and the load generator; the ramp-up of arriving
   requests excluded) against `photon bench`'s decoder at
   that batch and workload, decode steps only, run in this process while the server idles
   (target: served >= 80 % of the decoder). A shared machine's speed drifts by tens of
   percent from one minute to the next, so the two alternate: decoder, load, decoder, load,
   ..., decoder (--rounds loads), each load against the mean of the decoder runs on either
   side of it; the median round is the result, the range next to it.

    python scripts/serve_bench.py                  # the measured run (about 25 minutes, idle CPU)
                                                   # of experiments/2026-11-29-serving-under-load
    python scripts/serve_bench.py --quick          # a reduced run, about three minutes

Presets get random weights (speed does not depend on them) and a byte-level BPE trained on
shakespeare; checkpoint folders are served as they are. Results: OUT/serve_bench.json, a
Markdown table on stdout, and with --json one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections import Counter
from pathlib import Path

import httpx
import torch
from prometheus_client.parser import text_string_to_metric_families

from photon import device as devices
from photon.checkpoint import load_model, resolve_checkpoint, save_checkpoint
from photon.data.corpus import tokenizer_for
from photon.data.tokenizer import Tokenizer
from photon.errors import PhotonError
from photon.inference.modes import MODES, modes_of
from photon.inference.workload import run_workload
from photon.model.lm import Model, build_model
from photon.serve.loadtest import LoadResult, ServerProcess, run_load


def checkpoint(name: str, out: Path) -> Path:
    """A checkpoint folder as given, or a preset saved once with random weights."""
    if Path(name).exists():
        return Path(name)
    path = out / "checkpoints" / name
    if not (path / "config.json").exists():
        torch.manual_seed(0)
        vocab = build_model(name, device="meta").config.vocab_size
        tokenizer = tokenizer_for("shakespeare", "bpe", vocab)
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
                         str(args.budget_gib), "--device", args.device, "--dtype", args.dtype,
                         *threads, *extra)


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


def decoder_run(model: Model, mode: str, batch: int, args) -> tuple[float, float]:
    """`photon bench`'s decoder alone at this batch and workload: (tokens/s, seconds) of its
    decode steps."""
    prefill_s, total_s, _ = run_workload(model, mode, batch, args.prompt_len, args.gen_len)
    return batch * args.gen_len / (total_s - prefill_s), total_s - prefill_s


def full_batch_counters(url: str) -> tuple[float, float]:
    """(tokens, seconds) the server has counted over turns that began with every slot busy."""
    m = server_metrics(url)
    return m["photon_full_batch_tokens_total"], m["photon_full_batch_seconds_total"]


def load_round(url: str, bodies: list[dict], args) -> tuple[LoadResult, float, float]:
    """One round of load; (its result, full-batch tokens, full-batch seconds) it added."""
    tokens_0, seconds_0 = full_batch_counters(url)
    result = run_load(url, bodies, concurrency=len(bodies), timeout=args.timeout,
                      deadline=args.deadline)
    tokens_1, seconds_1 = full_batch_counters(url)
    return result, tokens_1 - tokens_0, seconds_1 - seconds_0


def compare_phase(name: str, ckpt: Path, model: Model, mode: str, vocab: int, args) -> dict:
    """Slots at the budget; served tokens/s with them kept full (FILL x slots requests), end
    to end and over the turns with every slot busy, in --rounds rounds; the decoder alone at
    that batch before the first round and after each, in this process while the server idles.

    A shared machine's speed drifts by tens of percent within minutes, so each round's
    full-batch tokens/s is set against the mean of the decoder runs on either side of it (a
    drift that is linear in time cancels), and the median round counts."""
    # Every request waits in the queue rather than being refused (429), and a step admits
    # up to --prefill-tokens of prompts: the server's default (8,192: 128 prompts of 64) caps
    # PHOTON, whose requests live 8 steps, at 1,024 running sequences.
    with serve(ckpt, mode, args, "--max-queue", str(1 << 20),
               "--prefill-tokens", str(args.prefill_tokens)) as server:
        slots = httpx.get(f"{server.url}/health").json()["slots"]
        bodies = fixed_bodies(args.fill * slots, args.prompt_len, args.gen_len, vocab)
        decoder = [decoder_run(model, mode, slots, args)]
        rounds = []
        for i in range(args.rounds):
            load, tokens, seconds = load_round(server.url, bodies, args)
            decoder.append(decoder_run(model, mode, slots, args))
            rounds.append(round_result(load, tokens, seconds, decoder[-2:], i + 1))
        peak = httpx.get(f"{server.url}/health").json()["peak_running"]
    ratios = [r["served_vs_decoder"] for r in rounds if r["served_vs_decoder"] is not None]
    full_tokens = sum(r["full_batch_tokens"] for r in rounds)
    full_s = sum(r["full_batch_seconds"] for r in rounds)
    full = full_tokens / full_s if full_s else None
    decoder_mean = statistics.mean(tokens_per_s for tokens_per_s, _ in decoder)
    loads = [r["load"] for r in rounds]
    return {"model": name, "mode": mode, "slots": slots, "peak_running": peak,
            "requests": sum(r["requests"] for r in loads), "lost": sum(r["lost"] for r in loads),
            "server_errors": sum(r["server_errors"] for r in loads),
            "status": dict(sum((Counter(r["status"]) for r in loads), Counter())),
            "served_tokens_per_s": statistics.median(r["tokens_per_s"] for r in loads),
            "full_batch_tokens_per_s": full,
            "full_batch_seconds": full_s, "decoder_tokens_per_s": decoder_mean,
            "decoder_runs_tokens_per_s": [tokens_per_s for tokens_per_s, _ in decoder],
            "rounds": rounds,
            "served_vs_decoder": statistics.median(ratios) if ratios else None,
            "served_vs_decoder_range": [min(ratios), max(ratios)] if ratios else None,
            "served_vs_decoder_pooled": full / decoder_mean if full else None}


def round_result(load: LoadResult, tokens: float, seconds: float,
                 decoder: list[tuple[float, float]], number: int) -> dict:
    """A round's numbers against the decoder runs (tokens/s, seconds) before and after it;
    no ratio without full-batch turns."""
    around = [tokens_per_s for tokens_per_s, _ in decoder]
    run_s = statistics.mean(run_s for _, run_s in decoder)
    full = tokens / seconds if seconds else None
    ratio = full / statistics.mean(around) if full else None
    line = f"  round {number}: {load.ok}/{load.requests} ok, {load.lost} lost; "
    if full is None:
        line += "no turn had every slot busy (more --fill?)"
    else:  # how long each side ran says how far to trust the ratio
        line += (f"full batch {full:,.0f} tok/s over {seconds:.1f} s; decoder {around[0]:,.0f} "
                 f"before, {around[1]:,.0f} after (runs of {run_s:.1f} s): {ratio:.0%}")
    print(line, flush=True)
    return {"load": load.as_dict(), "full_batch_tokens": tokens, "full_batch_seconds": seconds,
            "full_batch_tokens_per_s": full, "decoder_before_after_tokens_per_s": around,
            "decoder_run_seconds": run_s, "served_vs_decoder": ratio}


def percent(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def table(rows: list[dict]) -> str:
    lines = ["| model | mode | slots | peak running | served tok/s, end to end | "
             "served tok/s, full batch | decoder tok/s, photon bench | "
             "full batch / decoder: median round (range) | pooled |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        low, high = r["served_vs_decoder_range"] or (None, None)
        full = r["full_batch_tokens_per_s"]
        lines.append(f"| {r['model']} | {r['mode']} | {r['slots']} | {r['peak_running']} | "
                     f"{r['served_tokens_per_s']:,.0f} | {'-' if full is None else f'{full:,.0f}'}"
                     f" | {r['decoder_tokens_per_s']:,.0f} | {percent(r['served_vs_decoder'])} "
                     f"({percent(low)}-{percent(high)}) | "
                     f"{percent(r['served_vs_decoder_pooled'])} |")
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
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of load per compared server, each between two runs of "
                             "the decoder benchmark; the median round counts")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per request")
    parser.add_argument("--deadline", type=float, default=1800, help="seconds per phase")
    parser.add_argument("--threads", type=int,
                        help="CPU threads of the servers and of the decoder benchmark (default: "
                             "torch's); 1 on a machine shared with other jobs, where a "
                             "multi-threaded run spends its time waiting for busy cores")
    parser.add_argument("--device", default="cpu",
                        help="device of the servers and of the decoder benchmark (cpu, cuda)")
    parser.add_argument("--dtype", choices=["bf16", "fp32"],
                        help="of the servers and of the decoder benchmark (default: fp32 on "
                             "the CPU, bf16 on CUDA)")
    parser.add_argument("--quick", action="store_true",
                        help="200 requests, budget 0.25 GiB, prompt 32, generate 64: a smoke "
                             "test (at such small batches the ratios say little)")
    parser.add_argument("--out", default="runs/serve_bench")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON line")
    args = parser.parse_args()
    for name in ("requests", "fill", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    modes = args.modes.split(",")
    if unknown := sorted(set(modes + [args.load_mode]) - set(MODES)):
        parser.error(f"unknown mode(s) {', '.join(unknown)}; modes are {', '.join(MODES)}")
    if args.quick:
        args.requests, args.budget_gib, args.prompt_len, args.gen_len = 200, 0.25, 32, 64
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device, dtype = devices.device_and_dtype(args.device, args.dtype)
    args.dtype = {v: k for k, v in devices.DTYPES.items()}[dtype]  # the servers' --dtype
    env = devices.environment(device, dtype)
    print("  ".join(f"{k}={v}" for k, v in env.items()), flush=True)

    started = time.monotonic()
    try:  # every checkpoint first: a typo fails at once, not after minutes of load
        load_ckpt = checkpoint(args.load_model, out)
        compared = {name: checkpoint(name, out) for name in args.models}
    except PhotonError as e:
        parser.error(str(e))
    vocab = Tokenizer.load(resolve_checkpoint(load_ckpt)).vocab_size
    print(f"load: {args.requests} concurrent requests to {args.load_model} ({args.load_mode}), "
          f"budget {args.budget_gib} GiB ...", flush=True)
    load = load_phase(load_ckpt, vocab, args)
    print(f"  {load['ok']} ok, {load['lost']} lost, {load['server_errors']} 5xx, status "
          f"{load['status']}; latency p50 {load['p50_s']:.2f} s, p99 {load['p99_s']:.2f} s; "
          f"{load['tokens_per_s']:,.0f} generated tokens/s over {load['wall_s']:.1f} s; "
          f"{load['slots']} slots, at most {load['peak_running']} running", flush=True)

    rows = []
    for name, ckpt in compared.items():
        model, tokenizer = load_model(ckpt, device=device)
        model = model.to(dtype)
        for mode in modes_of(model.config, modes):
            label = mode if model.config.kind == "photon" else "-"
            print(f"compare: {name} ({label}) at {args.budget_gib} GiB ...", flush=True)
            rows.append(compare_phase(name, ckpt, model, mode, tokenizer.vocab_size, args))
            rows[-1]["mode"] = label
        del model
    print(table(rows))
    results = {**env, "args": vars(args), "load": load, "compare": rows,
               "wall_s": time.monotonic() - started}
    (out / "serve_bench.json").write_text(json.dumps(results, indent=1))
    print(f"results: {out / 'serve_bench.json'} ({results['wall_s']:.0f} s)")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
