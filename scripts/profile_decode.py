"""Where a decode's time goes, by op and shape: the profile behind the benchmark's `of mm`.

Runs one model's decode (random prompts, greedy, the benchmark's `run_workload`) under
PyTorch's profiler and prints, for the ops that take the most time, their calls, total time,
share of the run and, for matmuls, the FLOP/s they reach inside the decode next to what the
same shape reaches alone (`photon.bench.roofline.matmul_rate`). What is not matmul time, and
what matmuls lose to running inside the decode, is what keeps a step from the matmul rate.

    python scripts/profile_decode.py photon-small --mode recgen --batch 256
    python scripts/profile_decode.py vanilla-small --batch 50 --gen-len 256
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from photon.bench.roofline import matmul_rate
from photon.inference.decoders import compile_for_decoding
from photon.inference.workload import run_workload
from photon.model.lm import build_model

MATMULS = {"aten::mm", "aten::addmm"}


def matmul_shape(op: str, shapes: list) -> tuple[int, int, int] | None:
    """(m, k, n) of a 2-D matmul event, from its recorded input shapes."""
    if op not in MATMULS:
        return None
    a, b = shapes[:2] if op == "aten::mm" else shapes[1:3]
    return (a[0], a[1], b[1]) if len(a) == 2 and len(b) == 2 else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="a preset, e.g. photon-small")
    p.add_argument("--mode", default="hiergen")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--gen-len", type=int, default=512)
    p.add_argument("--compile", action="store_true", help="as photon bench --compile on a CPU")
    p.add_argument("--rows", type=int, default=15, help="ops to list")
    args = p.parse_args()

    torch.manual_seed(0)
    model = build_model(args.model).eval()
    if args.compile:
        compile_for_decoding(model, static=False)
    workload = (model, args.mode, args.batch, args.prompt_len)
    run_workload(*workload, 64)  # warm up (and compile)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        _, seconds, _ = run_workload(*workload, args.gen_len)
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    print(f"{args.model} {args.mode}, batch {args.batch}: "
          f"{args.batch * args.gen_len / seconds:,.0f} tokens/s under the profiler; "
          f"{total:.2f} s of op time")
    print(f"{'op':<44}{'shape':<28}{'calls':>7}{'s':>8}{'share':>7}{'GFLOP/s':>9}{'alone':>7}")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.rows]:
        s = e.self_cpu_time_total / 1e6
        shape = matmul_shape(e.key, e.input_shapes)
        rate = alone = ""
        if shape:
            m, k, n = shape
            rate = f"{2 * m * k * n * e.count / s / 1e9:.0f}"
            alone = f"{matmul_rate(m, k, n, torch.device('cpu'), torch.float32) / 1e9:.0f}"
        print(f"{e.key[:43]:<44}{str(shape or '')[:27]:<28}{e.count:>7}{s:>8.2f}"
              f"{s / total:>7.0%}{rate:>9}{alone:>7}")
    matmul_s = sum(e.self_cpu_time_total for e in events if e.key in MATMULS) / 1e6
    print(f"matmuls: {matmul_s / total:.0%} of op time; everything else: "
          f"{1 - matmul_s / total:.0%}")


if __name__ == "__main__":
    main()
