"""`photon bench`: the paper's throughput and memory protocol."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict

from photon.cli.flags import positive_float, positive_int
from photon.device import DTYPE_HELP, DTYPES
from photon.errors import InputError
from photon.inference.modes import MODES
from photon.inference.workload import SLOPE_BATCHES
from photon.model.attention import OPTIONS


def _positive_ints(flag: str, text: str, count: int | None = None) -> list[int]:
    """Comma-separated integers >= 1 (exactly `count` of them, all different, if given)."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise InputError(f"{flag}: expected comma-separated whole numbers, got {text!r}") from None
    if min(values) < 1 or (count and (len(values) != count or len(set(values)) != count)):
        need = f"{count} different numbers" if count else "numbers"
        raise InputError(f"{flag}: expected {need} >= 1, got {text!r}")
    return values


def _check(args: argparse.Namespace) -> tuple[tuple[int, ...], list[int]]:
    """Refuse settings the protocol cannot run with, before any model is built; returns the
    slope batches and the sweep's contexts."""
    from photon.bench.protocol import WORKLOADS

    unknown = set(args.workloads.split(",")) - set(WORKLOADS)
    if unknown:
        raise InputError(f"--workloads: unknown {sorted(unknown)}; choose from "
                         f"{', '.join(WORKLOADS)}")
    batches = tuple(_positive_ints("--slope-batches", args.slope_batches, count=2))
    return batches, _positive_ints("--sweep", args.sweep or "32,128")


def run(args: argparse.Namespace) -> None:
    batches, contexts = _check(args)
    import torch

    from photon.bench import plots, protocol
    from photon.device import device_and_dtype, environment
    from photon.inference.modes import modes_of
    from photon.progress import progress_bar

    device, dtype = device_and_dtype(args.device, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = args.size or ("tiny" if args.quick else "600m" if device.type == "cuda" else "small")
    names = args.models or [f"{kind}-{size}" for kind in ("vanilla", "block", "photon")]
    workloads = protocol.QUICK_WORKLOADS if args.quick else protocol.WORKLOADS
    if args.prompt_len or args.gen_len:
        workloads = {"custom": (args.prompt_len or 128, args.gen_len or 128)}
    else:
        workloads = {k: v for k, v in workloads.items() if k in args.workloads.split(",")}
    budget = args.budget_gib or (0.25 if args.quick else 100.0 if device.type == "cuda" else 2.0)
    max_batch = args.max_batch or (32 if args.quick else 4096 if device.type == "cuda" else 256)
    modes = args.modes.split(",")
    models = load_models(names, device, dtype, args.compile, args.attention)
    env = environment(device, dtype)
    print("  ".join(f"{k}={v}" for k, v in env.items()))
    print(f"memory budget {budget} GiB, max batch {max_batch}, slope between batches {batches}")
    jobs = [(name, model, options, mode, wl, p, g) for name, model, options in models
            for mode in modes_of(model.config, modes) for wl, (p, g) in workloads.items()]
    rows = []
    for name, model, options, mode, wl, p, g in progress_bar(jobs, desc="bench", unit="row"):
        rows.append(protocol.measure(name, model, mode, wl, p, g, budget, max_batch, batches,
                                     options))
    protocol.add_ratios(rows)
    print(protocol.format_table(rows))

    out = {**env, "rows": [asdict(r) for r in rows]}
    os.makedirs(args.out, exist_ok=True)
    plots.plot_rows(rows, os.path.join(args.out, "bench.png"))
    print(f"plot: {os.path.join(args.out, 'bench.png')}")
    if args.sweep or args.quick:
        points = []
        sweep_jobs = [(name, model, options, mode) for name, model, options in models
                      for mode in modes_of(model.config, modes)]
        for name, model, options, mode in progress_bar(sweep_jobs, desc="context sweep",
                                                       unit="model"):
            points += protocol.context_sweep(name, model, mode, contexts,
                                          2 if args.quick else args.sweep_batch,
                                          32 if args.quick else args.sweep_gen, options)
        path = os.path.join(args.out, "context_sweep.png")
        plots.plot_sweep(points, path)
        print(f"context sweep plot: {path}")
        out["sweep"] = [asdict(p) for p in points]
    with open(os.path.join(args.out, "bench.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(f"results: {os.path.join(args.out, 'bench.json')}")
    if args.json:
        print(json.dumps(out))




def load_models(names: list[str], device, dtype, compile_steps: bool, attention: str
                ) -> list[tuple[str, object, object]]:
    """(name, model, decode options) of presets (randomly initialised: speed does not depend
    on the weights) or checkpoints; with `compile_steps`, compiled for decoding
    (`compile_for_decoding`); their caches read through the `attention` kernel."""
    import dataclasses

    import torch

    from photon.inference.decoders import DecodeOptions, compile_for_decoding
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
        options = DecodeOptions()
        if compile_steps:
            # Every model alike, on the device's fastest path: static shapes captured as
            # CUDA graphs on a GPU; dynamic shapes on a CPU, where there is no launch cost to
            # save and a static step's full-capacity attention is measured slower
            # (experiments/2026-11-29-memory-per-sequence-near-the-caches).
            cuda = device.type == "cuda"
            options = compile_for_decoding(model, static=cuda,
                                           mode="reduce-overhead" if cuda else None)
        models.append((name, model, dataclasses.replace(options, attention=attention)))
    return models


def add_parser(verbs) -> None:
    p = verbs.add_parser(
        "bench", help="throughput and memory of vanilla, block and PHOTON, the paper's way",
        description="The paper's protocol (docs/PHOTON.md section 6): for each model, per-sample "
                    "memory is the slope of peak memory between two batch sizes; the batch is "
                    "the largest that fits --budget-gib; throughput is generated tokens/s over "
                    "the batch (prefill included); TPM = throughput / per-sample memory in K "
                    "tokens/s/GiB. Workloads PF (prompt 2048, generate 128) and DE (prompt "
                    "128, generate 2048), random prompts, greedy, no EOS. Rows: vanilla, block "
                    "and PHOTON under HierGen and RecGen, with TPM ratios to vanilla and block.",
        epilog="Examples: photon bench --quick | photon bench --size small --workloads DE | "
               "photon bench --models runs/vanilla-small runs/photon-small --sweep "
               "512,1024,2048,4096")
    p.add_argument("--quick", action="store_true",
                   help="tiny presets, short workloads, small budget: the whole protocol in "
                        "well under a minute")
    p.add_argument("--size", help="preset trio: tiny, small (CPU default), 600m (CUDA default), "
                                  "900m, 1.2b")
    p.add_argument("--models", nargs="+", metavar="NAME_OR_CHECKPOINT",
                   help="presets or checkpoint folders instead of a trio")
    p.add_argument("--workloads", default="PF,DE", help="comma-separated: PF, DE")
    p.add_argument("--prompt-len", type=positive_int, help="custom workload: prompt tokens")
    p.add_argument("--gen-len", type=positive_int, help="custom workload: generated tokens")
    p.add_argument("--modes", default=",".join(MODES), help="PHOTON decoding modes")
    p.add_argument("--budget-gib", type=positive_float,
                   help="memory budget that picks the batch (CPU 2, CUDA 100, quick 0.25)")
    p.add_argument("--max-batch", type=positive_int, help="cap on the batch (CPU 256, CUDA 4096)")
    p.add_argument("--slope-batches", default=",".join(map(str, SLOPE_BATCHES)),
                   help="the two batch sizes whose slope of the decode's peak memory is the "
                        "per-sample memory")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", choices=list(DTYPES), help=DTYPE_HELP)
    p.add_argument("--threads", type=positive_int, help="CPU threads (default: torch's)")
    p.add_argument("--attention", choices=OPTIONS, default="auto",
                   help="the kernel every model's global KV caches are read through: auto "
                        "times SDPA and explicit matmuls on this machine at each cache's own "
                        "shape and takes the faster (the row's 'attention'; a cache too small "
                        "to time, or a static one, keeps the default rule: 'rule'); sdpa or "
                        "matmul force one")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile every model's Transformer stacks for decoding: static "
                        "shapes as CUDA graphs on a GPU, dynamic shapes on a CPU")
    p.add_argument("--sweep", metavar="CONTEXTS",
                   help="context sweep, e.g. 512,1024,2048,4096,8192: memory and time per "
                        "token against context, plotted to OUT/context_sweep.png")
    p.add_argument("--sweep-batch", type=positive_int, default=4, help="batch of the context sweep")
    p.add_argument("--sweep-gen", type=positive_int, default=64,
                   help="tokens generated at each context of the sweep")
    p.add_argument("--out", default="runs/bench", help="folder for bench.json and plots")
    p.add_argument("--json", action="store_true",
                   help="print all results as one JSON line (the last line of stdout)")
    p.set_defaults(run=run)
