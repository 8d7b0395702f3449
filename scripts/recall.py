"""What bounded memory forgets: multi-query associative recall for every kind and decoding mode
(issue 32), resumable.

Every run trains with `photon train --data mqar:K=8,16,32,vocab=1024` (Zoology's MQAR,
`photon.evaluation.recall`) and is scored by this script's `--score`, both run from a pinned
checkout of one commit, so work on main does not change a sweep that spans sessions. Each
finished run is one JSON in the experiment folder's runs/, committed at once; a rerun skips
what is there. Checkpoints stay in --runs, outside git.

    git worktree add /work/recall-checkout <commit>             # pin the code once
    python scripts/recall.py --plan                              # the grid, measured cost
    python scripts/recall.py --checkout /work/recall-checkout --hours 3 --jobs 2
    python scripts/recall.py --report                            # table and plots

The grid: the flat model (vanilla), the sliding-window flat model at the equal-memory window
of each T (its ring holds the bytes of bounded PHOTON's cache at T) and at 4x that window,
the Block Transformer, PHOTON in the paper's form and in the bounded form, all with the tiny
presets' shapes (d = 64) at a vocabulary of 1,024, each trained on the mix of K in {4, 8}
with the same steps (2,000), batch (64) and recipe. Every kind is trained at T = 64 with
three learning rates; the one with the best validation accuracy (a held-out stream) is its
best, and the kind is then trained at T = 128 with it. The issue's grid (T in {256, 1024},
K in {8, 16, 32}, 600 steps of 16) leaves every model at chance on this CPU, and so does
photon train's LLM recipe (AdamW beta2 0.95, 150 warm-up steps) on this one; the pilots that
chose the grid and RECIPE are in the experiment folder's README.

Scores (`photon.evaluation.recall.recall_scores`, on a third stream): the prompt ends after
the key-value block and the rest is teacher-forced through the decoding path, in every mode
the model decodes in (HierGen and RecGen for PHOTON); accuracy at the values by K (queries at
Zoology's power-law distances) and by key-query distance (all queries of a sequence at one
distance: 1, 2, 4, ... meta-contexts of 16 tokens, and the farthest that fits).
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import json
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from sweep import (
    ROOT,
    committed,
    equal_memory_window,
    last_json,
    machine,
    pinned_commit,
    record_run,
    run_env,
)

import photon
from photon.device import choose_dtype
from photon.evaluation.readout import key_readout
from photon.evaluation.recall import MQAR, recall_scores
from photon.inference.modes import mode_label, modes_of
from photon.model.lm import count_parameters

FOLDER = ROOT / "experiments" / "2026-12-07-recall-mqar"
TASK = MQAR(pairs=(4, 8), vocab=1024)
SEQ_LENS = (64, 128)
KINDS = ("vanilla", "swa", "swa4", "block", "photon", "bounded")
PRESETS = {"vanilla": "vanilla-tiny", "swa": "vanilla-tiny", "swa4": "vanilla-tiny",
           "block": "block-tiny", "photon": "photon-tiny", "bounded": "photon-tiny-bounded"}
# At a vocabulary of 1,024 the embeddings grow and block-tiny's 2 + 3 layers come to 7 % above
# vanilla-tiny's total; 2 + 2 layers bring it to -4.8 %: every kind within 5 % of vanilla.
SHAPES = {"block": {"decoder_layers": [2]}}
# A 5-layer vanilla-tiny at T = 64, K = 4 reached 0.76 after 1,000 steps of 64 sequences at
# lr 3e-3 (600 steps of 16 at T = 256 left it at chance): the pilots in the experiment folder.
STEPS, BATCH = 2000, 64
LRS = (3e-3, 1e-3, 1e-2)  # the middle first: a partial grid has one whole learning rate
META = 16  # tokens per meta-context of the tiny PHOTON (4 x 4): distances are read in these
SEED = 0
# The pilots' loop, which binds keys to values where photon train's defaults stay at chance.
RECIPE = ("--adam-beta2", "0.999", "--warmup", "1", "--weight-decay", "0", "--dtype", "fp32")
VAL_SEQUENCES = 64  # validation during training, per evaluation
TEST_SEQUENCES = 32  # scored per K, and per K and distance
SCORE_SHARE = 0.15  # scoring time over training time, until a finished run says better
MARGIN = 1.15


@functools.cache
def equal_memory_window_at(seq_len: int) -> int:
    """The equal-memory window at `seq_len` tokens: vanilla's ring holding bounded PHOTON's
    cache bytes there (`sweep.equal_memory_window`)."""
    return equal_memory_window(Run("vanilla", seq_len, LRS[0]).config(),
                               Run("bounded", seq_len, LRS[0]).config(), seq_len)


@dataclass(frozen=True)
class Run:
    kind: str
    seq_len: int
    lr: float

    @property
    def name(self) -> str:
        return f"{self.kind}-T{self.seq_len}-lr{self.lr:g}"

    @property
    def window(self) -> int:
        scale = {"swa": 1, "swa4": 4}.get(self.kind, 0)
        return scale * equal_memory_window_at(self.seq_len) if scale else 0

    def overrides(self) -> dict:
        return {**SHAPES.get(self.kind, {}), **({"window": self.window} if self.window else {})}

    def config(self):
        return photon.get_preset(PRESETS[self.kind]).replace(
            vocab_size=TASK.vocab, max_seq_len=self.seq_len, **self.overrides())


def searched(kind: str, done: dict[str, dict]) -> bool:
    """Whether every learning rate of `kind` at the shortest T is committed."""
    return all(Run(kind, SEQ_LENS[0], lr).name in done for lr in LRS)


def grid(done: dict[str, dict], only: str | None = None) -> list[Run]:
    """The learning-rate search at the shortest T (every kind at every rate, a whole rate
    at a time), then each kind at the longer T with its best rate there, once its search is
    committed (`done`)."""
    first, *longer = SEQ_LENS
    runs = [Run(kind, first, lr) for lr in LRS for kind in KINDS]
    best = best_runs(done)
    for kind in KINDS:
        if searched(kind, done):
            runs += [Run(kind, t, best[(kind, first)]["lr"]) for t in longer]
    return [r for r in runs if only is None or fnmatch.fnmatch(r.name, only)]


def waiting(done: dict[str, dict]) -> int:
    """Runs at the longer T that wait for their kind's learning-rate search."""
    return sum(not searched(k, done) for k in KINDS) * (len(SEQ_LENS) - 1)


def distances(seq_len: int, pairs: int) -> list[int]:
    """Key-query distances scored for K pairs at T: 1, 2, 4, ... meta-contexts and the
    farthest whole one, where they fit (2K <= d <= T - 2K)."""
    far = (seq_len - 2 * pairs) // META * META
    near = [META << i for i in range(16) if 2 * pairs <= META << i <= far]
    return sorted({*near, far})


def measure_step_s(run: Run, batch: int, sequences: int = 4, steps: int = 2) -> float:
    """Seconds of one training step of `run` at `batch` sequences: the fastest of `steps`
    steps (after one untimed) at `sequences`, scaled linearly (small batches pay more
    overhead per sequence, so it errs high), in the trainer's dtype on this CPU."""
    torch.manual_seed(0)
    model = photon.build_model(run.config())
    optimizer = torch.optim.AdamW(model.parameters(), lr=run.lr)
    bf16 = choose_dtype("auto", torch.device("cpu"), "training") == torch.bfloat16
    b = TASK.batch(list(range(sequences)), run.seq_len, SEED)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(b.ids, labels=b.labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    return min(times[1:]) * batch / sequences


class Estimates:
    """Seconds a run is expected to take (training and scoring): from the finished runs of
    its kind and length on this machine with as many threads, else from a measured step."""

    def __init__(self, done: dict[str, dict], machine: dict, steps: int, batch: int) -> None:
        self.done, self.machine, self.steps, self.batch = done, machine, steps, batch
        self.measured: dict[tuple[str, int], float] = {}

    def step_s(self, run: Run) -> float:
        key = (run.kind, run.seq_len)
        if key not in self.measured:
            self.measured[key] = measure_step_s(run, self.batch)
        return self.measured[key]

    def seconds(self, run: Run) -> float:
        same = [r for r in self.done.values() if (r["kind"], r["seq_len"]) == (run.kind,
                run.seq_len) and r["machine"]["cpu"] == self.machine["cpu"]
                and r["machine"]["threads_per_run"] == self.machine["threads_per_run"]]
        if same:
            per_step = max((r["train_wall_s"] + r["score_wall_s"]) / r["steps"] for r in same)
            return MARGIN * per_step * self.steps
        return MARGIN * (1 + SCORE_SHARE) * self.step_s(run) * self.steps


def params_against_vanilla(run: Run) -> tuple[int, float]:
    total = count_parameters(run.config())[0]
    vanilla = count_parameters(Run("vanilla", run.seq_len, run.lr).config())[0]
    return total, total / vanilla - 1


def show_plan(args: argparse.Namespace) -> None:
    done = committed(Path(args.results))
    runs = [r for r in grid(done, args.only) if r.name not in done]
    torch.set_num_threads(args.threads)
    estimates = Estimates(done, machine(args.threads), args.steps, args.batch)
    print(f"{len(done)} runs committed; {len(runs)} to run, {args.steps} steps of {args.batch} "
          f"x T tokens each (task {TASK.spec}):")
    total = 0.0
    for run in runs:
        params, spread = params_against_vanilla(run)
        seconds = estimates.seconds(run)
        total += seconds
        window = f"window {run.window}" if run.window else ""
        print(f"  {run.name:24s} {window:10s} {params:8,d} parameters ({spread:+5.1%} of "
              f"vanilla)  {estimates.step_s(run):6.3f} s/step  {seconds / 3600:5.2f} h")
    print(f"{total / 3600:.1f} thread-hours (step times measured now at {args.threads} "
          f"thread(s), scoring taken as {SCORE_SHARE:.0%} more, margin {MARGIN}); "
          f"{waiting(done)} more runs wait for their kind's learning-rate search")


def readout(out: str, seq_len: int) -> dict:
    """`--readout`: where a trained PHOTON run loses its keys, for each K of the task
    (`photon.evaluation.readout`): the run's name and commit-independent numbers."""
    model, _ = photon.load_model(out)
    return {"run": Path(out).name, "seq_len": seq_len,
            "by_pairs": [key_readout(model, TASK, seq_len, k, SEED, fit_sequences=4096)
                         for k in TASK.pairs]}


def score(out: str, seq_len: int, sequences: int) -> dict:
    """`--score`: recall of a trained run in every mode its model decodes in."""
    model, _ = photon.load_model(out)
    spaced = {k: distances(seq_len, k) for k in TASK.pairs}
    return {mode_label(model.config, mode): recall_scores(model, TASK, seq_len, mode, SEED,
                                                          sequences, spaced)
            for mode in modes_of(model.config)}


class Sweep:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.checkout = Path(args.checkout).resolve()
        self.commit = pinned_commit(self.checkout)
        self.env = run_env(self.checkout, args.threads)
        self.machine = machine(args.threads)
        self.results = Path(args.results).resolve()
        self.lock = threading.Lock()

    def train_cmd(self, run: Run, out: Path) -> list[str]:
        a = self.args
        sets = [x for k, v in run.overrides().items() for x in ("--set", f"{k}={json.dumps(v)}")]
        cmd = [sys.executable, "-m", "photon.cli", "train", "--data", TASK.spec, "--preset",
               PRESETS[run.kind], *sets, "--seq-len", str(run.seq_len), "--batch-size",
               str(a.batch), "--max-steps", str(a.steps), "--lr", f"{run.lr:g}", "--seed",
               str(SEED), "--eval-every", str(max(a.steps // 4, 1)), "--eval-tokens",
               str(VAL_SEQUENCES * run.seq_len), "--save-every", str(max(a.steps // 4, 1)),
               "--keep", "1", *RECIPE, "--out", str(out), "--json"]
        return cmd + (["--resume", str(out)] if any(out.glob("step-*")) else [])

    def score_cmd(self, run: Run, out: Path) -> list[str]:
        return [sys.executable, str(self.checkout / "scripts" / "recall.py"), "--score",
                str(out), "--seq-len", str(run.seq_len), "--sequences",
                str(self.args.sequences)]

    def last_json(self, cmd: list[str], log: Path) -> dict:
        return last_json(cmd, log, self.env, self.checkout)

    def execute(self, run: Run) -> None:
        out = Path(self.args.runs).resolve() / run.name
        out.mkdir(parents=True, exist_ok=True)
        log = out / "sweep.log"
        started = time.monotonic()
        train = self.train_cmd(run, out)
        summary = self.last_json(train, log)
        train_s = time.monotonic() - started
        scores = self.last_json(self.score_cmd(run, out), log)
        # The run's last validation; a run resumed at its end validates no more.
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        val = next(r for r in reversed(rows) if "val_accuracy" in r)
        train_loss = next(r["loss"] for r in reversed(rows) if "loss" in r)
        params, spread = params_against_vanilla(run)
        record = {
            **asdict(run), "name": run.name, "preset": PRESETS[run.kind],
            "overrides": run.overrides(), "window": run.window, "task": TASK.spec,
            "params": params, "params_vs_vanilla": spread, "steps": summary["step"],
            "batch_size": self.args.batch, "train_wall_s": train_s,
            "score_wall_s": time.monotonic() - started - train_s,
            "train_loss": train_loss, "val_loss": val["val_loss"],
            "val_accuracy": val["val_accuracy"], "test_sequences": self.args.sequences,
            "meta_len": META, "scores": scores,
            "commands": {"train": " ".join(train[2:]).replace(" --resume " + str(out), ""),
                         "score": " ".join(self.score_cmd(run, out)[1:])},
            "commit": self.commit, "machine": self.machine,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self.commit_record(run, record)

    def commit_record(self, run: Run, record: dict) -> None:
        path = self.results / f"{run.name}.json"
        accuracy = ", ".join(f"{m}: {s['accuracy']:.3f}" for m, s in record["scores"].items())
        with self.lock:
            record_run(path, record, f"recall: {run.name}: accuracy {accuracy} "
                                     f"({record['steps']} steps)", commit=not self.args.no_commit)
        print(f"done {run.name}: val accuracy {record['val_accuracy']:.3f}; test {accuracy}; "
              f"{record['train_wall_s'] / 60:.0f} + {record['score_wall_s'] / 60:.0f} min",
              flush=True)

    def loop(self) -> None:
        """Run what is not committed, `--jobs` at a time, starting only runs whose estimate
        fits in what is left of --hours."""
        deadline = time.monotonic() + self.args.hours * 3600
        started: set[str] = set()
        estimates = Estimates(committed(self.results), self.machine, self.args.steps,
                              self.args.batch)
        torch.set_num_threads(self.args.threads)

        def queue() -> list[Run]:
            done = committed(self.results)
            return [r for r in grid(done, self.args.only)
                    if r.name not in done and r.name not in started]

        for run in queue():  # measured now, before any run shares the CPU
            estimates.seconds(run)

        def work() -> None:
            while True:
                with self.lock:
                    estimates.done = committed(self.results)
                    left = deadline - time.monotonic()
                    fits = [r for r in queue() if estimates.seconds(r) < left]
                    running = started - set(estimates.done)
                    if not fits and not (running and waiting(estimates.done)):
                        return
                    run = fits[0] if fits else None
                    if run:
                        started.add(run.name)
                if run is None:  # a search still running may unlock a longer T
                    time.sleep(30)
                    continue
                print(f"start {run.name} (about {estimates.seconds(run) / 60:.0f} min)",
                      flush=True)
                try:
                    self.execute(run)
                except Exception as e:  # one broken run must not stop the others
                    print(f"FAILED {run.name}: {e}", flush=True)

        workers = [threading.Thread(target=work) for _ in range(self.args.jobs)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        done = committed(self.results)
        print(f"stopping: {len(done)} runs in {self.results}, {len(queue())} ready but not "
              f"started, {waiting(done)} waiting for a learning-rate search", flush=True)


# --- the table and the plots -----------------------------------------------------------------

def best_runs(done: dict[str, dict]) -> dict[tuple[str, int], dict]:
    """Per (kind, T): the run of the learning rate with the best validation accuracy (then
    loss)."""
    best: dict[tuple[str, int], dict] = {}
    for r in done.values():
        key, rank = (r["kind"], r["seq_len"]), (r["val_accuracy"], -r["val_loss"])
        if key not in best or rank > (best[key]["val_accuracy"], -best[key]["val_loss"]):
            best[key] = r
    return best


def curve_label(kind: str, mode: str) -> str:
    return kind if mode == "-" else f"{kind} {mode}"


def search_table(done: dict[str, dict]) -> None:
    """The learning-rate search: validation accuracy of every run, a row per kind and T."""
    print("| kind | T | " + " | ".join(f"lr {lr:g}" for lr in sorted(LRS)) + " |\n|---|---|"
          + "---|" * len(LRS))
    for t in SEQ_LENS:
        for kind in KINDS:
            runs = {r["lr"]: r for r in done.values() if (r["kind"], r["seq_len"]) == (kind, t)}
            if runs:
                cells = [f"{runs[lr]['val_accuracy']:.3f}" if lr in runs else ""
                         for lr in sorted(LRS)]
                print(f"| {kind} | {t} | " + " | ".join(cells) + " |")


def best_table(best: dict[tuple[str, int], dict]) -> tuple[dict, dict]:
    """Print the best run of every kind and length (accuracy by mode and K, and by distance
    pooled over K); returns the curves of the two plots: accuracy by T, and by distance."""
    curves: dict[str, dict[int, float]] = {}
    by_distance: dict[int, dict[str, dict[int, list[int]]]] = {}
    for (kind, t), r in sorted(best.items(), key=lambda kv: (kv[0][1], KINDS.index(kv[0][0]))):
        for mode, s in r["scores"].items():
            label = curve_label(kind, mode)
            curves.setdefault(label, {})[t] = s["accuracy"]
            for row in s["by_distance"]:  # pooled over K
                cell = by_distance.setdefault(t, {}).setdefault(label, {}).setdefault(
                    row["distance"], [0, 0])
                cell[0] += row["recalled"]
                cell[1] += row["values"]
            by_k = " | ".join(f"{p['accuracy']:.3f}" for p in s["by_pairs"])
            far = ", ".join(f"{d}: {recalled / values:.2f}" for d, (recalled, values)
                            in sorted(by_distance[t][label].items()))
            print(f"| {kind} | {t} | {r['lr']:g} | {r['val_accuracy']:.3f} | {mode} | "
                  f"{s['accuracy']:.3f} | {by_k} | {far} |")
    return curves, by_distance


def report(results: Path) -> None:
    """The learning-rate search, the best run of every kind and length (markdown tables), and
    two plots beside the runs' folder: accuracy against T, and against distance."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = committed(results)
    if not done:
        print(f"no runs in {results}")
        return
    search_table(done)
    print(f"\n| kind | T | lr | val accuracy | mode | accuracy | "
          f"{' | '.join(f'K={k}' for k in TASK.pairs)} | by distance in tokens, pooled over K "
          f"|\n|---|---|---|---|---|---|---|" + "---|" * len(TASK.pairs))
    curves, by_distance = best_table(best_runs(done))
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in curves.items():
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], marker="o", label=label)
    chance = 2 / TASK.vocab  # a guess among the values
    ax.axhline(chance, color="grey", ls=":", lw=1, label="chance")
    ax.set(xscale="log", xticks=list(SEQ_LENS), xticklabels=[str(t) for t in SEQ_LENS],
           ylim=(0, 1.02), xlabel="sequence length T", ylabel="accuracy at the values",
           title=f"MQAR, K in {list(TASK.pairs)}, best learning rate per kind")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(results.parent / "recall_by_length.png", dpi=130)
    fig, axes = plt.subplots(1, len(by_distance), figsize=(6 * len(by_distance), 4),
                             squeeze=False)
    for ax, (t, labels) in zip(axes[0], sorted(by_distance.items()), strict=True):
        for label, cells in labels.items():
            ds = sorted(cells)
            ax.plot([d / META for d in ds], [cells[d][0] / cells[d][1] for d in ds],
                    marker="o", label=label)
        ax.axhline(chance, color="grey", ls=":", lw=1, label="chance")
        ticks = sorted({d / META for cells in labels.values() for d in cells})
        ax.set(xscale="log", xlabel=f"key-query distance (meta-contexts of {META} tokens)",
               ylim=(0, 1.02), ylabel="accuracy at the values", title=f"T = {t}, pooled over K")
        ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
        ax.minorticks_off()
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(results.parent / "recall_by_distance.png", dpi=130)
    print(f"plots: {results.parent / 'recall_by_length.png'}, "
          f"{results.parent / 'recall_by_distance.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkout", help="the pinned checkout that trains and scores")
    parser.add_argument("--runs", default="runs/recall", help="checkpoints (not in git)")
    parser.add_argument("--results", default=str(FOLDER / "runs"),
                        help="one JSON per finished run (default: the experiment folder's)")
    parser.add_argument("--hours", type=float, default=3.0,
                        help="start nothing that would end after this")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once")
    parser.add_argument("--threads", type=int, default=1, help="threads per run")
    parser.add_argument("--only", metavar="PATTERN",
                        help="runs whose name matches this glob, e.g. 'vanilla-T256-*'")
    parser.add_argument("--steps", type=int, default=STEPS, help="training steps (a smoke "
                                                                 "test may lower them)")
    parser.add_argument("--batch", type=int, default=BATCH, help="sequences per step")
    parser.add_argument("--sequences", type=int, default=TEST_SEQUENCES,
                        help="test sequences per K, and per K and distance")
    parser.add_argument("--plan", action="store_true", help="print the grid and its cost")
    parser.add_argument("--no-commit", action="store_true", help="write results, commit nothing")
    parser.add_argument("--report", action="store_true", help="the table and the plots")
    parser.add_argument("--score", metavar="RUN", help="(used by the sweep) score one run "
                                                       "and print its scores as JSON")
    parser.add_argument("--readout", metavar="RUN", help="where a PHOTON run loses its keys: "
                        "linear read-outs by level, as JSON (photon.evaluation.readout)")
    parser.add_argument("--seq-len", type=int, help="with --score or --readout: the run's T")
    args = parser.parse_args()
    if args.score:
        print(json.dumps(score(args.score, args.seq_len, args.sequences)))
    elif args.readout:
        print(json.dumps(readout(args.readout, args.seq_len)))
    elif args.plan:
        show_plan(args)
    elif args.report:
        report(Path(args.results))
    elif not args.checkout:
        parser.error("--checkout is required to run (git worktree add DIR COMMIT)")
    else:
        Sweep(args).loop()


if __name__ == "__main__":
    main()
