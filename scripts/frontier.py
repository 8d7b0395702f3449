"""The compute-optimal frontier at 2,048 tokens on the mixed corpus (issue 28), resumable.

Every run trains with `photon train` and is scored with `photon eval --by-position` (the
validation split of the mixed corpus, and the held-out Brown corpus), both run from a pinned
checkout of one commit, so work on main does not change a sweep that spans sessions. Each
finished run is one JSON in the experiment folder, committed at once (command, commit,
machine, parameters, tokens, steps, wall time, bpb, bpb by position); a rerun skips what is
committed. Checkpoints stay in --runs, outside git.

    git worktree add /work/frontier-checkout <commit>              # pin the code once
    python scripts/frontier.py --plan                               # the grid and its cost
    python scripts/frontier.py --checkout /work/frontier-checkout --hours 2.5 --jobs 2
    python scripts/frontier.py --report                             # table, fits, plot

The grid (what the issue asks): 4,096 tokens a step (2 x 2,048), at least 300 steps a run;
vanilla and bounded PHOTON at a ladder of widths with the small presets' shapes (head size 32,
SwiGLU 2.5 d) at 3e13 (where 300 steps fit), 1e14 and 3e14 training FLOPs; three learning
rates for each at the middle width at 1e14 first, the best then fixed for the kind (block and
the paper's form take bounded's, the sliding window vanilla's); block at two widths, the
paper's PHOTON at one; the sliding-window flat model at vanilla's best width with the window
whose ring holds bounded PHOTON's cache bytes at 2,176 tokens, and 4x that window.

`--jobs N` runs N at once with `--threads` threads each (default 1: OMP_NUM_THREADS=1). A run
is started only if its estimated time (its FLOPs at the rate its kind reached in the runs
already finished on this machine with as many threads, plus a margin) fits in what is left of
--hours.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import sweep  # scripts/sweep.py, beside this script

import photon
from photon.evaluation import scaling
from photon.model.lm import count_parameters

FOLDER = sweep.ROOT / "experiments" / "2026-12-07-frontier-2k"
SEQ_LEN, BATCH, VOCAB = 2048, 2, 8192
TOKENS_PER_STEP = SEQ_LEN * BATCH
MIN_STEPS = 300
DE_CONTEXT = 128 + 2048  # the DE workload's sequence: what the equal-memory window holds
PRESETS = {"vanilla": "vanilla-small", "bounded": "photon-small-bounded", "block": "block-small",
           "photon": "photon-small", "swa": "vanilla-small"}
# Head size 32 and d_ff 2.5 d, as the small presets. A ladder starts at the middle five and
# grows by one width on the side where its best run sits, until the best is inside it.
WIDTHS = (32, 48, 64, 96, 128, 192, 256, 320, 384)
FIRST_LADDER = (64, 96, 128, 192, 256)
MIDDLE = 128
LRS = (2e-3, 1e-3, 4e-3)  # the trainer's default first: the first runs compare the kinds
BUDGETS = (1e14, 3e14, 3e13)  # in the order they are run
SIZES_OF = {"block": (128, 192), "photon": (128,)}
LR_FROM = {"block": "bounded", "photon": "bounded", "swa": "vanilla"}
EMBEDDINGS = ("embed", "enc_embed", "dec_embed", "lm_head")
# Training FLOP/s of one thread, per kind, until a finished run on this machine says better
# (d128 at 2,048 tokens on a 2-core EPYC with other work running: vanilla about 27e9,
# bounded about 23e9; attention is half of vanilla's FLOPs there, and runs slowest).
DEFAULT_RATE = {"vanilla": 24e9, "swa": 24e9, "bounded": 20e9, "block": 20e9, "photon": 18e9}
MARGIN = 1.15
EVAL_BYTES = 2_000_000  # per evaluation: about 500 windows of 2,048 tokens


@dataclass(frozen=True)
class Run:
    kind: str
    d_model: int
    flops: float
    lr: float
    window: int = 0

    @property
    def name(self) -> str:
        budget = f"{self.flops:.0e}".replace("+", "")
        window = f"-w{self.window}" if self.window else ""
        return f"{self.kind}-d{self.d_model}{window}-{budget}-lr{self.lr:g}"

    def overrides(self) -> dict:
        fields = dict(d_model=self.d_model, n_heads=self.d_model // 32,
                      d_ff=self.d_model * 5 // 2)
        return {**fields, "window": self.window} if self.window else fields

    def config(self):
        return photon.get_preset(PRESETS[self.kind]).replace(
            vocab_size=VOCAB, max_seq_len=SEQ_LEN, **self.overrides())

    @property
    def steps(self) -> int:
        return int(self.flops // (photon.training_flops_per_token(self.config())
                                  * TOKENS_PER_STEP))


def committed() -> dict[str, dict]:
    """The finished runs, by name, from the experiment folder."""
    return sweep.committed(FOLDER / "runs")


def best(done: dict[str, dict], runs: list[Run]) -> Run | None:
    """The run of `runs` with the lowest validation bpb, once all of them are done."""
    if not runs or any(r.name not in done for r in runs):
        return None
    return min(runs, key=lambda r: done[r.name]["val_bpb"])


def best_lr(kind: str, done: dict[str, dict]) -> float | None:
    tuned = best(done, [Run(LR_FROM.get(kind, kind), MIDDLE, 1e14, lr) for lr in LRS])
    return tuned and tuned.lr


def ladder(kind: str, budget: float, lr: float, done: dict[str, dict]) -> list[Run]:
    """The widths of `kind` at `budget` (those that reach MIN_STEPS), grown past an end of
    the ladder while the best finished run sits there."""
    def runs(widths) -> list[Run]:
        return [r for r in (Run(kind, d, budget, lr) for d in widths) if r.steps >= MIN_STEPS]

    if kind in SIZES_OF:
        return runs(SIZES_OF[kind])
    lo, hi = WIDTHS.index(FIRST_LADDER[0]), WIDTHS.index(FIRST_LADDER[-1])
    while True:
        current = runs(WIDTHS[lo:hi + 1])
        top = best(done, current)
        if top is None or len(current) < 2:
            return current
        if top == current[0] and lo > 0:
            lo -= 1
        elif top == current[-1] and hi + 1 < len(WIDTHS) and runs(WIDTHS[hi + 1:hi + 2]):
            hi += 1
        else:
            return current


def plan(done: dict[str, dict]) -> tuple[list[Run], int]:
    """(the runs that can start now, in order; how many more wait on results not in yet)."""
    ready: list[Run] = []
    waiting = 0
    ready += [Run(kind, MIDDLE, 1e14, lr) for lr in LRS for kind in ("vanilla", "bounded")]
    for budget in BUDGETS:
        for kind in ("vanilla", "bounded", "block", "photon"):
            lr = best_lr(kind, done)
            if lr is None:
                waiting += len(ladder(kind, budget, LRS[0], done))
                continue
            ready += ladder(kind, budget, lr, done)
        lr = best_lr("swa", done)
        vanilla = best(done, ladder("vanilla", budget, lr, done)) if lr else None
        bounded_lr = best_lr("bounded", done)
        bounded = best(done, ladder("bounded", budget, bounded_lr, done)) if bounded_lr else None
        if vanilla is None or bounded is None:
            waiting += 2
            continue
        window = sweep.equal_memory_window(vanilla.config(), bounded.config(), DE_CONTEXT)
        ready += [Run("swa", vanilla.d_model, budget, lr, w) for w in (window, 4 * window)]
    unique = list(dict.fromkeys(r for r in ready if r.name not in done))
    return unique, waiting


def rate(kind: str, done: dict[str, dict], machine: dict) -> float:
    """Training FLOP/s of `kind`: the slowest of its finished runs on this machine with as
    many threads, or a default for one thread."""
    rates = [r["flops"] / r["train_wall_s"] for r in done.values()
             if r["kind"] == kind and r["machine"]["cpu"] == machine["cpu"]
             and r["machine"]["threads_per_run"] == machine["threads_per_run"]]
    return min(rates) if rates else DEFAULT_RATE[kind]


def estimate_s(run: Run, done: dict[str, dict], machine: dict) -> float:
    """Seconds `run` is expected to take: its FLOPs at its kind's rate, its evaluation (about
    a tenth more) and a margin."""
    return MARGIN * 1.1 * run.flops / rate(run.kind, done, machine)


class Sweep:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.checkout = Path(args.checkout).resolve()
        self.commit = sweep.pinned_commit(self.checkout)
        self.env = sweep.run_env(self.checkout, args.threads)
        self.machine = sweep.machine(args.threads)
        self.lock = threading.Lock()

    def photon_cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "photon.cli", *args]

    def train_cmd(self, run: Run, out: Path) -> list[str]:
        sets = [x for k, v in run.overrides().items() for x in ("--set", f"{k}={v}")]
        cmd = self.photon_cmd("train", "--data", str(Path(self.args.data).resolve()),
                              "--preset", PRESETS[run.kind], *sets, "--seq-len", str(SEQ_LEN),
                              "--batch-size", str(BATCH), "--flops", f"{run.flops:g}", "--lr",
                              f"{run.lr:g}", "--eval-every", "100", "--save-every", "50",
                              "--keep", "1", "--out", str(out), "--json")
        return cmd + (["--resume", str(out)] if any(out.glob("step-*")) else [])

    def eval_cmd(self, out: Path, data: str, split: str) -> list[str]:
        return self.photon_cmd("eval", str(out), "--data", str(Path(data).resolve()), "--split",
                               split, "--by-position", "--window", str(SEQ_LEN), "--max-bytes",
                               str(EVAL_BYTES), "--json")

    def last_json(self, cmd: list[str], log: Path) -> dict:
        return sweep.last_json(cmd, log, self.env, self.checkout)

    def execute(self, run: Run) -> None:
        out = Path(self.args.runs).resolve() / run.name
        out.mkdir(parents=True, exist_ok=True)
        log = out / "sweep.log"
        started = time.monotonic()
        train = self.train_cmd(run, out)
        summary = self.last_json(train, log)
        train_s = time.monotonic() - started
        val = self.last_json(self.eval_cmd(out, self.args.data, "val"), log)
        brown = self.last_json(self.eval_cmd(out, self.args.brown, "all"), log)
        total, modules = count_parameters(run.config())
        record = {
            **asdict(run), "budget": run.flops, "name": run.name, "preset": PRESETS[run.kind],
            "overrides": run.overrides(), "seq_len": SEQ_LEN, "batch_size": BATCH,
            "params": total,
            "params_non_embedding": total - sum(modules.get(m, 0) for m in EMBEDDINGS),
            "steps": summary["step"], "tokens": summary["tokens"], "flops": summary["flops"],
            "train_wall_s": train_s, "eval_wall_s": time.monotonic() - started - train_s,
            "train_loss": summary.get("loss"), "train_val_bpb": summary.get("val_bpb"),
            "val_bpb": val["bpb"], "brown_bpb": brown["bpb"], "val": val, "brown": brown,
            "commands": {"train": " ".join(train[2:]),
                         "eval_val": " ".join(self.eval_cmd(out, self.args.data, "val")[2:]),
                         "eval_brown": " ".join(self.eval_cmd(out, self.args.brown, "all")[2:])},
            "commit": self.commit, "machine": self.machine,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self.commit_record(run, record)

    def commit_record(self, run: Run, record: dict) -> None:
        with self.lock:
            sweep.record_run(FOLDER / "runs" / f"{run.name}.json", record,
                             f"frontier: {run.name}: val bpb {record['val_bpb']:.4f}, Brown "
                             f"{record['brown_bpb']:.4f} ({record['steps']} steps)",
                             commit=not self.args.no_commit)
        print(f"done {run.name}: val bpb {record['val_bpb']:.4f}, Brown "
              f"{record['brown_bpb']:.4f}, {record['train_wall_s'] / 60:.0f} min", flush=True)

    def loop(self) -> None:
        deadline = time.monotonic() + self.args.hours * 3600
        running: dict[str, threading.Thread] = {}
        failed: set[str] = set()

        def work(run: Run) -> None:
            try:
                self.execute(run)
            except Exception as e:  # one broken run must not stop the others
                print(f"FAILED {run.name}: {e}", flush=True)
                failed.add(run.name)

        while True:
            running = {n: t for n, t in running.items() if t.is_alive()}
            done = committed()
            ready, waiting = plan(done)
            ready = [r for r in ready if r.name not in running and r.name not in failed]
            left = deadline - time.monotonic()
            fits = [r for r in ready if estimate_s(r, done, self.machine) < left]
            while fits and len(running) < self.args.jobs:
                run = fits.pop(0)
                print(f"start {run.name} ({run.steps} steps, about "
                      f"{estimate_s(run, done, self.machine) / 60:.0f} min)", flush=True)
                running[run.name] = threading.Thread(target=work, args=(run,))
                running[run.name].start()
            if not running:
                print(f"stopping: {len(done)} runs committed, {len(ready)} ready but not "
                      f"fitting in {left / 60:.0f} min, {waiting} waiting on results",
                      flush=True)
                return
            time.sleep(10)


def show_plan(threads: int) -> None:
    done = committed()
    ready, waiting = plan(done)
    machine = sweep.machine(threads)
    total = 0.0
    print(f"{len(done)} runs committed; ready now:")
    for run in ready:
        seconds = estimate_s(run, done, machine)
        total += seconds
        print(f"  {run.name:34s} {run.steps:6d} steps  {seconds / 3600:5.2f} h")
    print(f"{total / 3600:.1f} thread-hours for these; {waiting} more runs wait on their "
          f"results (each as long as its budget's runs above)")


# --- the fit, the plot and the table ---------------------------------------------------------

COLORS = {"vanilla": "tab:blue", "swa": "tab:cyan", "bounded": "tab:red", "block": "tab:green",
          "photon": "tab:orange"}


def fitted_frontiers(done: dict[str, dict], budgets: np.ndarray, resamples: int
                     ) -> dict[str, np.ndarray]:
    """Per kind with at least five runs (sliding windows apart): the bpb its fitted law
    predicts for the best width at each budget, one row per bootstrap law (row 0: the fit to
    all runs). N is parameters without embeddings, D tokens trained; a width's FLOPs per
    token are interpolated (log-log) between the kind's runs."""
    frontiers = {}
    for kind in ("vanilla", "bounded", "block", "photon"):
        runs = [r for r in done.values() if r["kind"] == kind]
        if len(runs) < 5:
            continue
        n = np.array([r["params_non_embedding"] for r in runs], dtype=float)
        d = np.array([r["tokens"] for r in runs], dtype=float)
        bpb = np.array([r["val_bpb"] for r in runs])
        order = np.argsort(n)
        log_fpt = np.log([runs[i]["flops"] / runs[i]["tokens"] for i in order])
        widths = np.geomspace(n.min() / 2, n.max() * 2, 200)
        tokens = budgets[:, None] / np.exp(np.interp(np.log(widths), np.log(n[order]),
                                                     log_fpt))
        laws = [scaling.fit(n, d, bpb), *scaling.bootstrap(n, d, bpb, resamples)]
        frontiers[kind] = np.array([law.loss(widths[None], tokens).min(1) for law in laws])
    return frontiers


def report(resamples: int) -> None:
    """The runs' table, each kind's fit with its interval, where the frontiers of vanilla
    and bounded PHOTON differ beyond their intervals, and the plot."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = committed()
    print("| run | params (non-emb.) | steps | val bpb | Brown bpb | val bpb at 0-255 / "
          "256-1023 / 1024-2046 |\n|---|---|---|---|---|---|")
    for r in sorted(done.values(), key=lambda r: (r["kind"], r["budget"], r["d_model"])):
        buckets = " / ".join(f"{b['bpb']:.3f}" for b in r["val"]["buckets"])
        print(f"| {r['name']} | {r['params'] / 1e6:.2f}M ({r['params_non_embedding'] / 1e6:.2f}M)"
              f" | {r['steps']} | {r['val_bpb']:.4f} | {r['brown_bpb']:.4f} | {buckets} |")
    spent = [r["budget"] for r in done.values()]
    budgets = np.geomspace(min(spent) / 2, max(spent) * 2, 41)  # no further than the runs
    frontiers = fitted_frontiers(done, budgets, resamples)
    summary = {kind: {"budgets": budgets.tolist(), "bpb": f[0].tolist(),
                      "interval": [scaling.interval(col) for col in f[1:].T]}
               for kind, f in frontiers.items()}
    if {"vanilla", "bounded"} <= frontiers.keys():
        gap = frontiers["bounded"][1:] - frontiers["vanilla"][1:]  # paired by resample
        sure = [(c, *scaling.interval(g)) for c, g in zip(budgets, gap.T, strict=True)]
        summary["bounded_minus_vanilla"] = sure
        for c, lo, hi in sure:
            if lo > 0 or hi < 0:
                print(f"at {c:.2g} FLOPs bounded - vanilla is in [{lo:+.3f}, {hi:+.3f}] bpb")
    (FOLDER / "frontier_fit.json").write_text(json.dumps(summary, indent=1) + "\n")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind, color in COLORS.items():
        runs = [r for r in done.values() if r["kind"] == kind]
        if not runs:
            continue
        ax.scatter([r["budget"] for r in runs], [r["val_bpb"] for r in runs], s=14,
                   color=color, alpha=0.6, label=kind)
        best_at = {}
        for r in runs:
            best_at[r["budget"]] = min(best_at.get(r["budget"], np.inf), r["val_bpb"])
        xs = sorted(best_at)
        ax.plot(xs, [best_at[x] for x in xs], color=color, lw=1)
        if kind in frontiers:
            lo, hi = (np.array(v) for v in zip(*summary[kind]["interval"], strict=True))
            ax.fill_between(budgets, lo, hi, color=color, alpha=0.15, lw=0)
            ax.plot(budgets, frontiers[kind][0], color=color, ls="--", lw=1)
    ax.set(xscale="log", xlabel="training FLOPs", ylabel="validation bits per byte",
           title="2,048 tokens, mixed corpus: every run, the best per budget (solid), the "
                 "fitted frontier (dashed, 90 % band)")
    ax.title.set_fontsize(8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(FOLDER / "frontier.png", dpi=130)
    print(f"plot: {FOLDER / 'frontier.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkout", help="the pinned checkout that trains and evaluates")
    parser.add_argument("--data", default="data/mix-bpe8192",
                        help="prepared mixed corpus (photon data corpus, then photon data "
                             "prepare --vocab-size 8192)")
    parser.add_argument("--brown", default="data/mix/brown", help="the held-out Brown corpus")
    parser.add_argument("--runs", default="runs/frontier", help="checkpoints (not in git)")
    parser.add_argument("--hours", type=float, default=2.5, help="start nothing that would "
                                                                 "end after this")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once")
    parser.add_argument("--threads", type=int, default=1, help="threads per run")
    parser.add_argument("--plan", action="store_true", help="print the grid and its cost")
    parser.add_argument("--no-commit", action="store_true", help="write results, commit nothing")
    parser.add_argument("--report", action="store_true",
                        help="the table, the fits (with --resamples bootstrap fits each) and "
                             "the plot, from the committed runs")
    parser.add_argument("--resamples", type=int, default=100)
    args = parser.parse_args()
    if args.plan:
        show_plan(args.threads)
        return
    if args.report:
        report(args.resamples)
        return
    if not args.checkout:
        parser.error("--checkout is required to run (git worktree add DIR COMMIT)")
    Sweep(args).loop()


if __name__ == "__main__":
    main()
