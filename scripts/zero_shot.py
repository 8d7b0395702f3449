"""Zero-shot accuracy next to bits per byte, through the lm-evaluation-harness.

For each run folder (its latest checkpoint), the harness scores the local tasks
shakespeare_mc (pick the true next line of a play among four; chance is 25 %),
shakespeare_cloze (the same items cut inside the line: pick the true second half) and
shakespeare_ppl (bits per byte of the held-out text of every play, in `photon eval`'s
windows); PHOTON models with two or more levels are scored under HierGen and RecGen.

    python scripts/zero_shot.py runs/photon-small runs/block-small runs/vanilla-small
    python scripts/zero_shot.py runs/a runs/b --limit 200     # a quick look (not a result)

Prints a Markdown table, and the rows as JSON on the last line; --out FILE keeps the JSON.
Needs pip install -e ".[eval]".
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lm_eval
from lm_eval.tasks import TaskManager

import photon.integrations.lm_eval  # noqa: F401  (registers the harness model "photon")
from photon.checkpoint import load_model, resolve_checkpoint
from photon.data.corpus import cache_dir
from photon.inference.modes import modes_of
from photon.integrations.tasks import CLOZE_TASK, MC_TASK, PPL_TASK, write_tasks
from photon.model.lm import count_parameters


def score(run: str, mode: str, tasks: TaskManager, args: argparse.Namespace) -> dict:
    """One harness run of the three tasks: the numbers of a row of the table."""
    started = time.monotonic()
    out = lm_eval.simple_evaluate(
        model="photon", model_args={"pretrained": run, "mode": mode},
        tasks=[MC_TASK, CLOZE_TASK, PPL_TASK], task_manager=tasks, batch_size=args.batch_size,
        device=args.device, limit=args.limit)
    mc, cloze = out["results"][MC_TASK], out["results"][CLOZE_TASK]
    ppl = out["results"][PPL_TASK]
    return {"run": run, "checkpoint": str(resolve_checkpoint(run)), "mode": mode,
            "mc_items": out["n-samples"][MC_TASK]["effective"],
            "acc": mc["acc,none"], "acc_stderr": mc["acc_stderr,none"],
            "acc_norm": mc["acc_norm,none"], "acc_norm_stderr": mc["acc_norm_stderr,none"],
            "cloze_acc": cloze["acc,none"], "cloze_acc_stderr": cloze["acc_stderr,none"],
            "cloze_acc_norm": cloze["acc_norm,none"],
            "cloze_acc_norm_stderr": cloze["acc_norm_stderr,none"],
            "bpb": ppl["bits_per_byte,none"], "seconds": time.monotonic() - started}


def table(rows: list[dict]) -> str:
    def pct(r: dict, key: str) -> str:
        return f"{100 * r[key]:.1f} ± {100 * r[key + '_stderr']:.1f}"

    lines = ["| run | mode | params | val bpb | MC acc | MC acc_norm | cloze acc | "
             "cloze acc_norm |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['mode']} | {r['params'] / 1e6:.2f}M | {r['bpb']:.4f} "
                     f"| {pct(r, 'acc')} | {pct(r, 'acc_norm')} | {pct(r, 'cloze_acc')} "
                     f"| {pct(r, 'cloze_acc_norm')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run or checkpoint folders")
    parser.add_argument("--mc-items", type=int, default=2000, help="items of the MC tasks")
    parser.add_argument("--limit", type=int, help="score only the first N items and plays")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", help="also write the rows as JSON to this file")
    args = parser.parse_args()

    folder = write_tasks(cache_dir() / "lm_eval_tasks", args.mc_items)
    tasks = TaskManager(include_path=str(folder), include_defaults=False)
    rows = []
    for run in args.runs:
        model, _ = load_model(run)
        params = count_parameters(model.config)[0]
        rows += [{**score(run, mode, tasks, args), "params": params}
                 for mode in modes_of(model.config)]
    print(table(rows))
    if args.limit:
        print(f"(--limit {args.limit}: a subset, not the task's result)")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
