"""Quality next to speed, reproducibly.

Trains vanilla-small, block-small and photon-small (chunks 4x4 and 2x2, variants B and A)
on shakespeare with the same training FLOPs, evaluates each on the held-out split (bits per
byte; PHOTON under HierGen and RecGen), benchmarks each with the paper's protocol, and
plots TPM against bpb with the Pareto frontier.

    python scripts/tradeoff.py --flops 3e13            # ~1 hour on 2 CPU cores
    python scripts/tradeoff.py --quick                 # tiny presets, a smoke test

Finished trainings are reused: rerunning skips to evaluation. Results go to OUT/results.json,
OUT/tradeoff_DE.png, OUT/tradeoff_PF.png, and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from photon import bench
from photon.checkpoint import load_model
from photon.data.corpus import validation_text
from photon.evaluation.perplexity import evaluate_text

MODELS = ["vanilla-small", "block-small", "photon-small", "photon-small-2x2", "photon-small-A"]
QUICK_MODELS = ["vanilla-tiny", "block-tiny", "photon-tiny"]


def train(preset: str, out: Path, flops: float, extra: list[str]) -> dict:
    """`photon train` in a subprocess, exactly as a user runs it; its JSON summary."""
    summary = out / "summary.json"
    if summary.exists():
        return json.loads(summary.read_text())
    cmd = [sys.executable, "-m", "photon.cli", "train", "--preset", preset, "--flops",
           str(flops), "--out", str(out), "--json", *extra]
    print("$", " ".join(cmd[2:]), flush=True)
    started = time.monotonic()
    result = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
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
    args = parser.parse_args()

    started = time.monotonic()
    out = Path(args.out)
    models = QUICK_MODELS if args.quick else MODELS
    flops = 2e11 if args.quick else args.flops
    extra = ["--tokenizer", "bytes", "--seq-len", "128"] if args.quick else []
    workloads = bench.QUICK_WORKLOADS if args.quick else bench.WORKLOADS
    text = validation_text("shakespeare")
    if args.quick or args.eval_bytes:
        limit = args.eval_bytes or 20_000
        text = text.encode()[:limit].decode(errors="ignore")

    entries, rows = [], []
    for preset in models:
        run = out / preset
        info = train(preset, run, flops, extra)
        model, tokenizer = load_model(run)
        kind = bench.kind_of(model)
        for mode in bench.modes_of(model, ["hiergen", "recgen"]):
            quality = evaluate_text(model, tokenizer, text, mode=mode, progress=True)
            row_label = bench.label(preset, mode if kind == "photon" else "-")
            for workload, (p, g) in workloads.items():
                row = bench.measure(preset, model, mode, workload, p, g, args.budget_gib,
                                    args.max_batch, (2, 8))
                rows.append(row)
                entries.append({"label": row_label, "model": preset, "kind": kind,
                                "mode": row.mode, "workload": workload, "bpb": quality.bpb,
                                "ppl": quality.ppl, "tpm": row.tpm,
                                "tokens_per_s": row.tokens_per_s,
                                "mem_per_sample_gib": row.mem_per_sample_gib,
                                "train_wall_s": info.get("wall_s"),
                                "train_tokens": info.get("tokens"),
                                "train_flops": info.get("flops")})
            print(f"{row_label}: bpb {quality.bpb:.4f}", flush=True)
    bench.add_ratios(rows)
    for entry, row in zip(entries, rows, strict=True):
        entry["tpm_vs_vanilla"] = row.vs_vanilla

    for workload in workloads:
        bench.plot_tradeoff([e for e in entries if e["workload"] == workload],
                            str(out / f"tradeoff_{workload}.png"), workload)
    env = bench.environment(torch.device("cpu"), torch.float32)
    total = time.monotonic() - started
    (out / "results.json").write_text(json.dumps(
        {**env, "flops": flops, "wall_s": total, "entries": entries}, indent=1))

    print(f"\n{env.get('cpu', '')}, {env['threads']} threads, torch {env['torch']}; "
          f"{flops:.3g} training FLOPs per model; whole experiment {total / 60:.1f} min\n")
    print("| model | mode | train tokens | train time | val bpb | TPM PF | TPM DE "
          "| TPM DE vs vanilla |")
    print("|---|---|---|---|---|---|---|---|")
    for e in (e for e in entries if e["workload"] == "DE"):
        pf = next(x for x in entries if x["label"] == e["label"] and x["workload"] == "PF")
        print(f"| {e['model']} | {e['mode']} | {e['train_tokens'] or 0:,} | "
              f"{(e['train_wall_s'] or 0) / 60:.1f} min | {e['bpb']:.4f} | {pf['tpm']:.1f} | "
              f"{e['tpm']:.1f} | {e['tpm_vs_vanilla']:.1f}x |")


if __name__ == "__main__":
    main()
