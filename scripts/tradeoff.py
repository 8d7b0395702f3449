"""Quality next to speed, reproducibly.

Trains vanilla-small, block-small, photon-small (chunks 4x4 and 2x2, variants B and A, and
the latent-teacher-forcing option) and photon-small-bounded on shakespeare with the same
training FLOPs, evaluates each on the held-out split (bits per byte; PHOTON under HierGen
and RecGen), probes how much each hierarchy reads its top stream (photon probe), benchmarks
each with the paper's protocol, and plots TPM against bpb with the Pareto frontier.

    python scripts/tradeoff.py --flops 3e13 --train-jobs 2   # ~1.5 hours on 2 CPU cores
    python scripts/tradeoff.py --flops 1e14 --models block-small photon-small --no-bench
    python scripts/tradeoff.py --quick                       # tiny presets, a smoke test

Finished trainings are reused and killed ones resume: rerunning skips to evaluation.
`--train-jobs N` trains N models at once with the cores split between them (their wall times
then say nothing about speed; the benchmark always runs alone). Results go to
OUT/results.json, OUT/tradeoff_DE.png, OUT/tradeoff_PF.png, and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from photon.bench import plots, protocol
from photon.checkpoint import load_model
from photon.data.corpus import validation_text
from photon.data.prepare import packed_dir
from photon.data.shards import load_tokens
from photon.device import environment
from photon.evaluation.perplexity import evaluate_text
from photon.evaluation.probe import probe, unigram_logprobs
from photon.inference.modes import mode_label, modes_of
from photon.inference.workload import SLOPE_BATCHES
from photon.model.lm import PhotonLM

MODELS = ["vanilla-small", "block-small", "photon-small", "photon-small-bounded",
          "photon-small-tf", "photon-small-2x2", "photon-small-A"]
QUICK_MODELS = ["vanilla-tiny", "block-tiny", "photon-tiny"]


def train(preset: str, out: Path, flops: float, extra: list[str], threads: int | None) -> dict:
    """`photon train` in a subprocess, exactly as a user runs it; its JSON summary."""
    summary = out / "summary.json"
    if summary.exists():
        return json.loads(summary.read_text())
    cmd = [sys.executable, "-m", "photon.cli", "train", "--preset", preset, "--flops",
           str(flops), "--out", str(out), "--json", *extra]
    if any(out.glob("step-*")):  # a killed training continues where it stopped
        cmd += ["--resume", str(out)]
    print("$", " ".join(cmd[2:]), flush=True)
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    started = time.monotonic()
    result = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True, env=env)
    info = json.loads(result.stdout.strip().splitlines()[-1])
    info["wall_s"] = time.monotonic() - started
    summary.write_text(json.dumps(info, indent=1))
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flops", type=float, default=3e13, help="training FLOPs per model")
    parser.add_argument("--out", default="runs/tradeoff")
    parser.add_argument("--budget-gib", type=float, default=2.0, help="bench memory budget")
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--eval-bytes", type=int, default=None,
                        help="score only the first N bytes of the validation text")
    parser.add_argument("--quick", action="store_true", help="tiny presets, tiny budget")
    parser.add_argument("--models", nargs="+", help=f"presets (default: {' '.join(MODELS)})")
    parser.add_argument("--train-jobs", type=int, default=1,
                        help="models trained at once, the CPU cores split between them")
    parser.add_argument("--no-bench", action="store_true",
                        help="quality only: skip the throughput benchmark")
    args = parser.parse_args()

    started = time.monotonic()
    out = Path(args.out)
    models = args.models or (QUICK_MODELS if args.quick else MODELS)
    flops = 2e11 if args.quick else args.flops
    extra = ["--tokenizer", "bytes", "--seq-len", "128"] if args.quick else []
    workloads = protocol.QUICK_WORKLOADS if args.quick else protocol.WORKLOADS
    text = validation_text("shakespeare")
    if args.quick or args.eval_bytes:
        limit = args.eval_bytes or 20_000
        text = text.encode()[:limit].decode(errors="ignore")

    threads = max(1, (os.cpu_count() or 1) // args.train_jobs) if args.train_jobs > 1 else None
    with ThreadPoolExecutor(args.train_jobs) as pool:
        infos = dict(zip(models, pool.map(
            lambda preset: train(preset, out / preset, flops, extra, threads), models),
            strict=True))

    entries, rows, probes = [], [], {}
    for preset in models:
        run, info = out / preset, infos[preset]
        model, tokenizer = load_model(run)
        kind = model.config.kind
        if isinstance(model, PhotonLM):
            probes[preset] = context_use(model, tokenizer)
        for mode in modes_of(model.config):
            quality = evaluate_text(model, tokenizer, text, mode=mode, progress=True)
            row_label = protocol.label(preset, mode_label(model.config, mode))
            base = {"label": row_label, "model": preset, "kind": kind, "mode": mode,
                    "bpb": quality.bpb, "ppl": quality.ppl, "train_wall_s": info.get("wall_s"),
                    "train_tokens": info.get("tokens"), "train_flops": info.get("flops"),
                    "probe": probes.get(preset)}
            print(f"{row_label}: bpb {quality.bpb:.4f}", flush=True)
            if args.no_bench:
                entries.append({**base, "workload": None})
                continue
            for workload, (p, g) in workloads.items():
                row = protocol.measure(preset, model, mode, workload, p, g, args.budget_gib,
                                    args.max_batch, SLOPE_BATCHES)
                rows.append(row)
                entries.append({**base, "workload": workload, "tpm": row.tpm,
                                "tokens_per_s": row.tokens_per_s,
                                "mem_per_sample_gib": row.mem_per_sample_gib})
    report(entries, rows, workloads, flops, started, out, args.no_bench)


def context_use(model: PhotonLM, tokenizer) -> dict:
    """The numbers of `photon probe` that say whether the hierarchy is read."""
    packed = packed_dir("shakespeare", tokenizer)
    r = probe(model, load_tokens(packed, "val"),
              unigram_logprobs(load_tokens(packed, "train"), tokenizer.vocab_size),
              recgen=False)
    return {"swap_delta": r.swap_delta, "zero_delta": r.zero_delta, "loss": r.loss,
            "chunk_first": r.chunk_first, "state_variance": r.state_variance,
            "reads_top_stream": r.reads_top_stream}


def report(entries: list[dict], rows: list, workloads: dict, flops: float, started: float,
           out: Path, no_bench: bool) -> None:
    """results.json, the trade-off plots and the Markdown tables."""
    if not no_bench:
        protocol.add_ratios(rows)
        for entry, row in zip(entries, rows, strict=True):
            entry["tpm_vs_vanilla"] = row.vs_vanilla
        for workload in workloads:
            plots.plot_tradeoff([e for e in entries if e["workload"] == workload],
                                str(out / f"tradeoff_{workload}.png"), workload)
    env = environment(torch.device("cpu"), torch.float32)
    total = time.monotonic() - started
    (out / "results.json").write_text(json.dumps(
        {**env, "flops": flops, "wall_s": total, "entries": entries}, indent=1))
    print(f"\n{env.get('cpu', '')}, {env['threads']} threads, torch {env['torch']}; "
          f"{flops:.3g} training FLOPs per model; whole experiment {total / 60:.1f} min\n")
    print("| model | mode | train tokens | val bpb | top-stream swap delta | chunk-first "
          "(unigram, swapped) |")
    print("|---|---|---|---|---|---|")
    for e in entries:
        if e["workload"] not in (None, "DE"):
            continue
        p = e["probe"]
        use = "-" if p is None else f"{p['swap_delta']:+.3f}"
        first = "-" if p is None else (f"{p['chunk_first']['base']:.2f} "
                                       f"({p['chunk_first']['unigram']:.2f}, "
                                       f"{p['chunk_first']['swap']:.2f})")
        print(f"| {e['model']} | {e['mode'] if e['kind'] == 'photon' else '-'} | "
              f"{e['train_tokens'] or 0:,} | {e['bpb']:.4f} | {use} | {first} |")
    if no_bench:
        return
    print("\n| model | mode | train tokens | train time | val bpb | TPM PF | TPM DE "
          "| TPM DE vs vanilla |")
    print("|---|---|---|---|---|---|---|---|")
    for e in (e for e in entries if e["workload"] == "DE"):
        pf = next(x for x in entries if x["label"] == e["label"] and x["workload"] == "PF")
        mode = e["mode"] if e["kind"] == "photon" else "-"
        print(f"| {e['model']} | {mode} | {e['train_tokens'] or 0:,} | "
              f"{(e['train_wall_s'] or 0) / 60:.1f} min | {e['bpb']:.4f} | {pf['tpm']:.1f} | "
              f"{e['tpm']:.1f} | {e['tpm_vs_vanilla']:.1f}x |")


if __name__ == "__main__":
    main()
