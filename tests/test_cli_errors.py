"""The CLI against broken and hostile input (issue 19): every user mistake is one line on
stderr, `photon VERB: error: ...`, and exit status 2; tracebacks are for bugs only.

Faults a test cannot cause as root on a healthy disk (a read-only folder, a full disk) are
injected by making the write raise what the operating system, torch or safetensors raise.
"""

import argparse
import builtins
import errno
import json
import math
import random
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

import photon
import photon.checkpoint as ckpt_io
import photon.data.prepare as prepare_mod
from photon.checkpoint import save_checkpoint
from photon.cli import build_parser, main
from photon.data.tokenizer import Tokenizer
from photon.errors import CheckpointError

TINY = ["--preset", "photon-tiny", "--tokenizer", "bytes", "--seq-len", "64", "--batch-size",
        "4", "--dtype", "fp32", "--eval-tokens", "256", "--log-every", "1"]
ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def one_line_error(capsys, verb: str, *needles: str) -> str:
    """The error line of a failed command: no traceback, and its last line (after whatever
    a progress bar drew, which errors erase) is `photon VERB: error: ...` holding every one
    of `needles`."""
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.endswith("\n"), err
    last = err.rstrip("\n").split("\n")[-1].split("\r")[-1]
    assert last.startswith(f"photon {verb}: error: ") and err.count(": error: ") == 1, err
    for needle in needles:
        assert needle in last, err
    return last


def exit_code(argv: list[str]) -> int:
    """`main(argv)`'s exit status, argparse's (a flag refused as it is parsed) included."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Tokenized corpora go to this test's own cache."""
    monkeypatch.setenv("PHOTON_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder holding one checkpoint of an untrained photon-tiny (byte tokenizer)."""
    root = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    save_checkpoint(root / "step-000001", photon.build_model("photon-tiny").eval(),
                    Tokenizer.bytes())
    return root


@pytest.fixture
def text(tmp_path) -> Path:
    """About 12 KB of plain UTF-8 text, non-ASCII included."""
    path = tmp_path / "small.txt"
    path.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog, naïve "
                            f"café ☃\n" for i in range(200)), encoding="utf-8")
    return path


# --- 1. photon eval: sizes must be positive


@pytest.mark.parametrize("flag", ["--batch-size", "--window", "--stride", "--max-bytes"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_eval_sizes_must_be_positive(run_dir, text, capsys, flag, value):
    assert exit_code(["eval", str(run_dir), "--data", str(text), flag, value]) == 2
    one_line_error(capsys, "eval", flag, "positive", value)


# --- 2. photon data prepare into a folder it may not write


def test_prepare_read_only_out(text, tmp_path, monkeypatch, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)  # root writes anyway: refuse every write under it, as the kernel would
    real_open = builtins.open

    def read_only_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and Path(str(file)).resolve().is_relative_to(ro):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", read_only_open)
    assert main(["data", "prepare", str(text), "--out", str(ro), "--tokenizer", "bytes"]) == 2
    one_line_error(capsys, "data", str(ro), "Permission denied")


def test_prepare_out_under_a_file(text, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = blocker / "sub"
    assert main(["data", "prepare", str(text), "--out", str(out), "--tokenizer", "bytes"]) == 2
    one_line_error(capsys, "data", str(out))


# --- 3. a full disk under photon data prepare and photon train


@pytest.mark.parametrize("where", ["_ShardWriter.write", "_write_atomic", "np.save"])
def test_prepare_full_disk(text, tmp_path, monkeypatch, capsys, where):
    def full(*args, **kwargs):
        raise ENOSPC

    if where == "np.save":  # a piece's document table
        monkeypatch.setattr(prepare_mod.np, "save", full)
    elif where == "_ShardWriter.write":
        monkeypatch.setattr(prepare_mod._ShardWriter, "write", full)
    else:  # the manifest
        monkeypatch.setattr(prepare_mod, where, full)
    out = tmp_path / "prepared"
    assert main(["data", "prepare", str(text), "--out", str(out), "--tokenizer", "bytes",
                 "--workers", "1"]) == 2
    one_line_error(capsys, "data", str(out), "No space left on device")
    assert not (out / prepare_mod.MANIFEST).exists()


def _fail_second_call(real):
    """`real`, except that its second call raises as a full disk makes each writer raise."""
    calls = []

    def write(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise write.error
        return real(*args, **kwargs)

    return write


@pytest.mark.parametrize("target,error", [
    ("save_file", ENOSPC),
    ("save_file", SafetensorError("Error while serializing: I/O error: No space left on "
                                  "device (os error 28)")),
    ("torch.save", RuntimeError("[enforce fail at inline_container.cc:603] . "
                                "PytorchStreamWriter failed writing file data/7: file write "
                                "failed")),
    ("torch.save", ENOSPC),
], ids=["safetensors-oserror", "safetensors-error", "torch-runtimeerror", "torch-oserror"])
def test_train_full_disk_keeps_last_checkpoint(text, tmp_path, monkeypatch, capsys, target,
                                                error):
    if target == "torch.save":
        write = _fail_second_call(torch.save)
        monkeypatch.setattr(ckpt_io.torch, "save", write)
    else:
        write = _fail_second_call(ckpt_io.save_file)
        monkeypatch.setattr(ckpt_io, target, write)
    write.error = error
    out = tmp_path / "run"
    argv = ["train", *TINY, "--data", str(text), "--max-steps", "2", "--save-every", "1",
            "--keep", "1", "--eval-every", "2", "--out", str(out)]
    assert main(argv) == 2
    one_line_error(capsys, "train", "cannot write checkpoint", "step-000002")
    assert not list(out.glob(".tmp-*")) and not list(out.glob(".old-*"))
    assert [p.name for p in ckpt_io.list_checkpoints(out)] == ["step-000001"]
    photon.load_model(out)  # the last good checkpoint is whole


def test_resave_failure_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = photon.build_model("photon-tiny").eval()
    target = tmp_path / "step-000001"
    save_checkpoint(target, model, Tokenizer.bytes())
    real_replace = ckpt_io.os.replace

    def replace(src, dst):  # the new folder cannot take the old one's place
        if Path(src).name.startswith(".tmp-"):
            raise ENOSPC
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt_io.os, "replace", replace)
    with pytest.raises(CheckpointError, match="No space left on device"):
        save_checkpoint(target, model, Tokenizer.bytes())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000001"]
    photon.load_model(target)


# --- 4. a config.json that does not match its weights is refused before the model is built


@pytest.mark.parametrize("verb", ["generate", "eval", "probe"])
def test_huge_config_is_refused_before_building(run_dir, tmp_path, monkeypatch, capsys, verb):
    ckpt = tmp_path / "huge"
    shutil.copytree(run_dir / "step-000001", ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["d_model"] = 1_000_000  # tens of TB of parameters
    (ckpt / "config.json").write_text(json.dumps(config))

    real_build = ckpt_io.build_model

    def no_build(config, *args, **kwargs):  # the meta device allocates nothing
        if kwargs.get("device") != "meta":
            raise AssertionError("the model was built before its size was checked")
        return real_build(config, *args, **kwargs)

    monkeypatch.setattr(ckpt_io, "build_model", no_build)
    argv = {"generate": ["--prompt", "hi"], "eval": [], "probe": []}[verb]
    assert main([verb, str(ckpt), *argv]) == 2
    one_line_error(capsys, verb, "config.json", "model.safetensors", "parameters")


def test_config_size_mismatch_is_refused(run_dir, tmp_path):
    ckpt = tmp_path / "wide"
    shutil.copytree(run_dir / "step-000001", ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["d_ff"] *= 2
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config\.json.*parameters"):
        photon.load_model(ckpt)


@pytest.mark.parametrize("preset,overrides", [("vanilla-tiny", {"tie_embeddings": True}),
                                              ("photon-tiny", {})])
def test_matching_checkpoints_pass_the_size_check(tmp_path, preset, overrides):
    model = photon.build_model(preset, **overrides).eval()
    save_checkpoint(tmp_path / "step-000001", model, Tokenizer.bytes())
    loaded, _ = photon.load_model(tmp_path)
    assert loaded.config == model.config
    weights = tmp_path / "step-000001" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match="missing, corrupt or truncated"):
        photon.load_model(tmp_path)


# --- 5. a binary file is not text


@pytest.fixture
def binary(tmp_path) -> Path:
    path = tmp_path / "program"
    path.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 64)
    return path


def test_train_refuses_a_binary_file(binary, tmp_path, capsys):
    argv = ["train", *TINY, "--data", str(binary), "--max-steps", "1", "--out",
            str(tmp_path / "run")]
    assert main(argv) == 2
    one_line_error(capsys, "train", str(binary), "not UTF-8 text")


def test_prepare_and_eval_refuse_a_binary_file(binary, run_dir, tmp_path, capsys):
    argv = ["data", "prepare", str(binary), "--out", str(tmp_path / "p"), "--tokenizer",
            "bytes"]
    assert main(argv) == 2
    one_line_error(capsys, "data", str(binary), "not UTF-8 text")
    assert main(["eval", str(run_dir), "--data", str(binary)]) == 2
    one_line_error(capsys, "eval", str(binary), "not UTF-8 text")


def test_utf8_text_with_a_stray_byte_still_prepares(text, tmp_path, capsys):
    data = text.read_bytes()
    text.write_bytes(data[:100] + b"\xff" + data[100:])  # one damaged byte in 12 KB
    out = tmp_path / "p"
    assert main(["data", "prepare", str(text), "--out", str(out), "--tokenizer", "bytes"]) == 0
    assert (out / prepare_mod.MANIFEST).is_file()


def test_generate_refuses_a_binary_prompt_file(binary, run_dir, capsys):
    assert main(["generate", str(run_dir), "--prompt-file", str(binary)]) == 2
    one_line_error(capsys, "generate", str(binary))


# --- 6. sampling settings at the edges of their range


@pytest.mark.parametrize("seed", [str(2**64), "-1"])
def test_generate_seed_out_of_range(run_dir, capsys, seed):
    with pytest.raises(SystemExit) as exit_:
        main(["generate", str(run_dir), "--prompt", "hi", "--seed", seed, "--temperature", "1"])
    assert exit_.value.code == 2
    one_line_error(capsys, "generate", "--seed", "[0, 2**64)", seed)


def test_generate_tiny_temperature_is_greedy(run_dir, capsys):
    outputs = []
    for temperature in ("0", "1e-300"):
        assert main(["generate", str(run_dir), "--prompt", "hi", "--max-new-tokens", "12",
                     "--temperature", temperature, "--seed", "3"]) == 0
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err
        outputs.append(captured.out)
    assert outputs[0] == outputs[1] and outputs[0].startswith("hi")


def test_generate_in_bf16(run_dir, capsys, monkeypatch):
    """--dtype bf16 decodes with a bf16 model; an unknown dtype is refused by argparse."""
    import photon.inference.generate as generation

    dtypes = []
    decode = generation.generate_text

    def recording(model, *args, **kwargs):
        dtypes.append(next(model.parameters()).dtype)
        return decode(model, *args, **kwargs)

    monkeypatch.setattr(generation, "generate_text", recording)
    for dtype in ("bf16", "fp32"):
        assert main(["generate", str(run_dir), "--prompt", "hi", "--max-new-tokens", "12",
                     "--dtype", dtype]) == 0
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err and captured.out.startswith("hi")
    assert dtypes == [torch.bfloat16, torch.float32]
    with pytest.raises(SystemExit) as exit_:
        main(["generate", str(run_dir), "--prompt", "hi", "--dtype", "fp8"])
    assert exit_.value.code == 2 and "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("args,needle", [
    (["--slope-batches", "abc"], "--slope-batches"),
    (["--slope-batches", "8"], "2 different numbers"),
    (["--slope-batches", "8,8"], "2 different numbers"),
    (["--slope-batches", "0,4"], ">= 1"),
    (["--budget-gib", "-1"], "--budget-gib"),
    (["--max-batch", "0"], "--max-batch"),
    (["--workloads", "XX"], "'XX'"),
    (["--sweep", "0,512"], "--sweep"),
])
def test_bench_settings_are_checked_before_any_model(capsys, args, needle):
    assert exit_code(["bench", "--quick", "--models", "no-such-preset", *args]) == 2
    one_line_error(capsys, "bench", needle)


# --- 7. every flag of every verb that takes a value is checked as it is parsed

HOSTILE = ["nan", "inf", "-inf", "1e400", "-5", "-1", "0", "1e-9", str(2**70), "abc", "",
           "0.5", "3", "1e3", "65536", "0.3,0.6", "0.6,0.3", "off"]
# Each verb's command line before the flag under test (its positional arguments).
COMMANDS = {"serve": ["serve", "ckpt"], "generate": ["generate", "ckpt"], "train": ["train"],
            "data prepare": ["data", "prepare", "src", "--out", "dir"],
            "data corpus": ["data", "corpus"], "eval": ["eval", "ckpt"],
            "probe": ["probe", "ckpt"], "bench": ["bench"], "info": ["info", "photon-tiny"]}


def typed_flags(command: str) -> list[tuple[str, str, object]]:
    """(flag, destination, type) of every option of `command` ("train", "data prepare")
    that converts its value."""
    parser = build_parser()
    for word in command.split():
        verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = verbs.choices[word]
    return [(a.option_strings[-1], a.dest, a.type) for a in parser._actions
            if a.option_strings and a.type is not None]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_flag_of_every_verb_is_checked_as_it_is_parsed(command, capsys):
    """Each typed flag takes its type from photon.cli.flags (one place), and each hostile
    value is either refused by argparse in one line naming the flag, or parsed into a finite
    number >= 0, non-empty text, or fractions in [0, 1] (--curriculum)."""
    flags = typed_flags(command)
    assert all(t.__module__ == "photon.cli.flags" for _, _, t in flags), flags
    assert len(flags) >= {"data corpus": 0, "info": 1, "probe": 3}.get(command, 4), flags
    for flag, dest, _ in flags:
        for value in HOSTILE:
            try:
                parsed = getattr(build_parser().parse_args([*COMMANDS[command], flag, value]),
                                 dest)
            except SystemExit as e:
                err = capsys.readouterr().err
                assert e.code == 2 and "Traceback" not in err, err
                assert err.splitlines()[-1].startswith(f"photon {command}: error: argument "
                                                       f"{flag}: "), err
                continue
            if flag == "--stop":  # appends text
                assert parsed == [value] and value, (flag, value)
            elif flag == "--curriculum":
                assert parsed in ([], [0.3, 0.6]), (flag, value, parsed)
            else:
                assert type(parsed) in (int, float) and math.isfinite(parsed) and parsed >= 0, \
                    (flag, value, parsed)


@pytest.mark.parametrize("argv", [
    ["--batch-size", "0"], ["--batch-size", "-1"], ["--save-every", "0"], ["--eval-every", "0"],
    ["--log-every", "0"], ["--lr", "-1"], ["--lr", "nan"], ["--lr", "inf"], ["--lr", "0"],
    ["--grad-clip", "nan"], ["--grad-clip", "-1"], ["--max-steps", "0"], ["--seq-len", "0"],
    ["--weight-decay", "nan"], ["--curriculum", "0.6,0.3"], ["--seed", "-1"],
    ["--seed", str(2**64)]], ids=" ".join)
def test_train_refuses_nonsense_flags_before_it_starts(argv, text, tmp_path, capsys):
    out = tmp_path / "run"
    assert exit_code(["train", *TINY, "--data", str(text), "--out", str(out), *argv]) == 2
    one_line_error(capsys, "train", f"argument {argv[0]}: ", repr(argv[1]))
    assert not out.exists()


def _bench_without_measuring(monkeypatch) -> None:
    """photon bench runs its set-up on the flags (checks, budget, batch, workloads) but
    measures no model."""
    import photon.bench.plots as plots
    import photon.cli.bench as bench_cli

    monkeypatch.setattr(bench_cli, "load_models", lambda *args: [])
    monkeypatch.setattr(plots, "plot_rows", lambda *args: None)
    monkeypatch.setattr(plots, "plot_sweep", lambda *args: None)


def _short_runs(monkeypatch) -> None:
    """photon train stops after its second step, whatever its budget flags say."""
    from photon.training.train import _Run

    out_of_time = _Run.out_of_time
    monkeypatch.setattr(_Run, "out_of_time", lambda run: run.step >= 2 or out_of_time(run))


def _accepts(kind, value: str) -> bool:
    try:
        kind(value)
    except argparse.ArgumentTypeError:
        return False
    return True


def test_seeded_flag_combinations_run_or_fail_in_one_line(run_dir, text, tmp_path, capsys,
                                                          monkeypatch):
    """Seeded random values for three typed flags at a time, most of them plausible, each
    command run on tiny inputs (serve stops before it listens, bench measures nothing,
    training stops after two steps): it exits 0, or with argparse's or photon's one error
    line; never a traceback."""
    import photon.cli.serve as serve_cli

    monkeypatch.setattr(serve_cli, "serve_forever", lambda *args: None)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # keep this process's
    _bench_without_measuring(monkeypatch)
    _short_runs(monkeypatch)
    rng = random.Random(14)
    plausible, hostile = ["0.5", "1", "2", "3", "8", "64", "300", "0.3,0.6"], \
        ["nan", "-1", "0", "1e-9", str(2**70), "1e400", "abc", "1,0"]
    ckpt, data, records = str(run_dir), str(text), tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps({"text": line}) + "\n"
                               for line in text.read_text().splitlines()))
    commands = {
        "serve": ["serve", ckpt], "generate": ["generate", ckpt, "--prompt", "hi"],
        "train": ["train", *TINY, "--data", data, "--max-steps", "2"],
        "data prepare": ["data", "prepare", str(records), "--tokenizer", "bytes"],
        "eval": ["eval", ckpt, "--data", data, "--max-bytes", "2000"],
        "probe": ["probe", ckpt, "--data", data, "--windows", "2", "--no-recgen"],
        "bench": ["bench", "--quick", "--models", "photon-tiny", "--out", str(tmp_path)],
        "info": ["info", "photon-tiny"]}
    codes = {}
    for i, (command, base) in enumerate(commands.items()):
        verb = command.split()[0]
        flags = {flag: [v for v in plausible if _accepts(kind, v)]
                 for flag, _, kind in typed_flags(command) if flag != "--port"}
        # The verbs with the most flags draw more often, so that one draw in several runs.
        for j in range(12 if verb in ("serve", "generate", "train") else 8):
            argv = [*base, *(["--out", str(tmp_path / f"{i}-{j}")] if verb in ("train", "data")
                             else [])]
            for flag in rng.sample(list(flags), min(3, len(flags))):
                argv += [flag, rng.choice(flags[flag] if rng.random() < 0.8 else hostile)]
            code = exit_code(argv)
            out = capsys.readouterr()
            assert code in (0, 2) and "Traceback" not in out.err, (argv, out.err)
            if code == 2:
                last = out.err.rstrip("\n").split("\n")[-1].split("\r")[-1]
                # photon's errors name the verb, argparse's the subcommand too
                assert last.startswith((f"photon {verb}: error: ",
                                        f"photon {command}: error: ")), (argv, out.err)
            codes.setdefault(verb, []).append(code)
    for verb, results in codes.items():
        assert 0 in results, (verb, results)
    assert sum(c == 2 for results in codes.values() for c in results) >= 6, codes
