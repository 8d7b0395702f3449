"""Recall in held-out natural text (issue 32, item 5): `photon recall` on the frontier's
models, every decoding mode each has, one committed JSON per (model, mode); a rerun skips
what is there.

    python experiments/2026-12-07-recall-natural-text/run.py [--threads 2]

The models are the frontier's best learning rate of each kind at width 128 and 1e14 FLOPs
(experiments/2026-12-07-frontier-2k), trained at 2,048 tokens on the mixed corpus; their
checkpoints live in runs/frontier (not in git: retrain them with scripts/frontier.py
--only NAME if they are gone). The text is Brown, which no model trained on.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent / "scripts"))
from sweep import ROOT, last_json, machine, record_run, run_env  # noqa: E402

MODELS = {"vanilla-d128-1e14-lr0.002": ["hiergen"],
          "bounded-d128-1e14-lr0.002": ["hiergen", "recgen"]}
BROWN = ["--data", "data/mix/brown", "--split", "all", "--max-bytes", "2000000"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", default="runs/frontier", help="the frontier's checkpoints")
    args = parser.parse_args()
    log = ROOT / "runs" / "recall-natural-text.log"  # progress bars: not for git
    log.parent.mkdir(exist_ok=True)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()
    for name, modes in MODELS.items():
        for mode in modes:
            path = HERE / f"recall_{name}_{mode}.json"
            if path.exists():
                continue
            cmd = [sys.executable, "-m", "photon.cli", "recall", f"{args.runs}/{name}", *BROWN,
                   "--mode", mode, "--json"]
            started = time.monotonic()
            report = last_json(cmd, log, run_env(ROOT, args.threads), ROOT)
            record = {"model": name, "mode": mode, "command": " ".join(cmd[1:]),
                      "commit": commit, "machine": machine(args.threads),
                      "wall_s": time.monotonic() - started, **report}
            passkey = ", ".join(f"{d['depth']:.0%}: {d['exact']:.0%} exact, gain "
                                f"{d['gain']:+.2f}" for d in report["passkey"]["depths"])
            record_run(path, record, f"recall in natural text: {name} {mode}: {passkey}")
            print(f"{name} {mode}: {passkey}", flush=True)


if __name__ == "__main__":
    main()
