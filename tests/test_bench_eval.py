"""Benchmark protocol, evaluation, and the generate / eval / bench commands."""

import json
import os
import subprocess

import pytest
import torch

import photon
from photon.bench.plots import pareto_front
from photon.checkpoint import save_checkpoint
from photon.cli import main as cli_main
from photon.data.tokenizer import Tokenizer
from photon.device import source_commit
from photon.evaluation.perplexity import evaluate_tokens, windows
from photon.inference import workload
from photon.inference.modes import modes_of
from photon.model.attention import KERNELS
from tests.models import make


@pytest.mark.parametrize("n, window, stride", [(10, 4, 2), (10, 4, 3), (100, 16, 5), (3, 8, 4)])
def test_windows_score_every_token_once_with_context(n, window, stride):
    scored = []
    for start, end, first in windows(n, window, stride):
        assert end - start <= window and start < first < end or first == 1
        if start > 0:
            assert first - start >= window - stride  # context of every later token
        scored += range(first, end)
    assert scored == list(range(1, n))


@pytest.mark.parametrize("kind, mode", [("vanilla", "hiergen"), ("photon-A", "hiergen"),
                                        ("photon-B", "recgen")])
def test_eval_is_independent_of_batch_size(kind, mode):
    model = make(kind)
    tokens = torch.randint(0, 256, (700,), generator=torch.Generator().manual_seed(0)).tolist()
    results = [evaluate_tokens(model, tokens, [1] * 256, mode=mode, window=64, stride=48,
                               batch_size=b) for b in (1, 4, 32)]
    for r in results[1:]:
        assert r.bpb == pytest.approx(results[0].bpb, rel=1e-6)
    assert results[0].tokens == 699 and results[0].bytes == 699
    if mode == "recgen":  # RecGen scores differently from HierGen
        hier = evaluate_tokens(model, tokens, [1] * 256, window=64, stride=48)
        assert hier.nll_nats != pytest.approx(results[0].nll_nats, rel=1e-5)


def test_cache_bytes_match_the_analytic_size():
    for kind in ("vanilla", "block", "photon-B", "photon-L3"):
        model = make(kind)
        for mode in modes_of(model.config):
            _, _, decoder = workload.run_workload(model, mode, 3, 40, 100, max_steps=1)
            expected = workload.analytic_cache_bytes(model, mode, 140, torch.float32)
            assert decoder.cache_bytes == 3 * expected, (kind, mode)


def test_memory_slope_is_the_cache_plus_little():
    """Decode-heavy, the per-sample peak-memory slope is dominated by the KV cache."""
    model = make("vanilla")
    slope, _ = workload.memory_profile(model, "hiergen", 16, 1024, (2, 6))
    cache = workload.analytic_cache_bytes(model, "hiergen", 16 + 1024, torch.float32)
    assert cache <= slope <= 1.15 * cache, (slope, cache)
    # PHOTON's cache is 16x smaller per level-2 entry: its slope must be far below vanilla's.
    photon_slope, _ = workload.memory_profile(make("photon-B"), "recgen", 16, 1024, (2, 6))
    assert photon_slope < slope / 4


def test_choosing_the_attention_kernel_stays_out_of_the_memory_profile(monkeypatch):
    """The kernels' timing (`fastest_kernel`, once per shape) runs before the profile: a
    profile that times them measures what one that finds them chosen does."""
    from photon.model import attention

    monkeypatch.setattr(attention, "TIMED_BYTES", 0)  # time even a tiny model's caches
    attention.fastest_kernel.cache_clear()
    model = make("photon-B")
    try:
        timed = workload.memory_profile(model, "hiergen", 16, 256)
        assert attention.fastest_kernel.cache_info().misses == 2  # one per cached level
        assert workload.memory_profile(model, "hiergen", 16, 256) == timed
    finally:
        attention.fastest_kernel.cache_clear()


@pytest.mark.parametrize("name", ["photon-small", "photon-small-bounded"])
def test_memory_per_sequence_is_the_caches_in_every_photon_mode(name):
    """The benchmark's DE workload on the small presets: a sequence costs at most 1.15x its
    caches in every mode (a step's workspace is one token chunk per sequence; prefill's,
    one pass whatever the batch). Measured: 1.02-1.13x."""
    torch.manual_seed(0)
    model = photon.build_model(name).eval()
    for mode in modes_of(model.config):
        slope, _ = workload.memory_profile(model, mode, 128, 2048)
        cache = workload.analytic_cache_bytes(model, mode, 128 + 2048, torch.float32)
        assert cache <= slope <= 1.15 * cache, (mode, slope, cache)


def test_pareto_front():
    points = [(10, 1.0), (100, 1.2), (50, 1.5), (1000, 2.0), (5, 0.9)]
    assert pareto_front(points) == [(1000, 2.0), (100, 1.2), (10, 1.0), (5, 0.9)]


def test_bench_quick_end_to_end(tmp_path, capsys):
    assert cli_main(["bench", "--quick", "--json", "--out", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["device"] == "cpu" and out["threads"] >= 1
    assert out["commit"] == source_commit()
    rows = out["rows"]
    assert {(r["kind"], r["mode"], r["workload"]) for r in rows} == {
        (k, m, w) for k, m in [("vanilla", "-"), ("block", "hiergen"), ("photon", "hiergen"),
                               ("photon", "recgen")] for w in ("PF", "DE")}
    for r in rows:
        assert r["batch"] >= 1 and r["tokens_per_s"] > 0 and r["mem_per_sample_gib"] > 0
        assert r["cache_bytes_per_sample"] == r["analytic_cache_bytes_per_sample"]
        assert r["tpm"] == pytest.approx(r["tokens_per_s"] / 1000 / r["mem_per_sample_gib"])
        if r["kind"] == "vanilla":
            assert r["vs_vanilla"] == pytest.approx(1.0)
        assert set(r["attention"].split(",")) <= {*KERNELS, "rule"}
    assert (tmp_path / "context_sweep.png").stat().st_size > 1000
    assert (tmp_path / "bench.png").stat().st_size > 1000
    assert json.loads((tmp_path / "bench.json").read_text())["rows"] == rows


@pytest.mark.e2e
def test_results_name_the_commit_that_measured_them():
    """In a git checkout, `source_commit` is git's HEAD (with "+changes" when photon's files
    differ from it); outside one, None."""
    head = subprocess.run(["git", "-C", os.path.dirname(photon.__file__), "rev-parse",
                           "--short", "HEAD"], capture_output=True, text=True)
    expected = head.stdout.strip() if head.returncode == 0 else None
    got = source_commit()
    assert (got.split("+")[0] if got else None) == expected


@pytest.fixture
def checkpoint(tmp_path):
    model = make("photon-B")
    return save_checkpoint(tmp_path / "ckpt", model, Tokenizer.bytes())


def test_generate_cli(checkpoint, capsys, tmp_path):
    assert cli_main(["generate", str(checkpoint), "--prompt", "Hello", "--max-new-tokens",
                     "20"]) == 0
    streamed = capsys.readouterr().out
    model = make("photon-B")
    expected = Tokenizer.bytes().decode(model.generate([list(b"Hello")], 20)[0])
    assert streamed == "Hello" + expected + "\n"

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("To be\n\nKING\n")
    assert cli_main(["generate", str(checkpoint), "--prompt-file", str(prompts), "--mode",
                     "recgen", "--max-new-tokens", "8", "--temperature", "0.7", "--seed",
                     "3"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["prompt"] for x in lines] == ["To be", "KING"]


@pytest.mark.parametrize("args, message", [
    (["--prompt", ""], "empty prompt"),
    (["--prompt", "a" * 10, "--max-new-tokens", "20", "--max-length", "16"], "max_length"),
    ([], "exactly one of"),
])
def test_generate_cli_bad_input(checkpoint, capsys, args, message):
    """Input checked once the model is loaded (a flag out of its range is refused as it is
    parsed: tests/test_cli_errors.py)."""
    assert cli_main(["generate", str(checkpoint), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_eval_cli(checkpoint, capsys, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("It is a truth universally acknowledged, " * 40)
    assert cli_main(["eval", str(checkpoint), "--data", str(text), "--split", "all",
                     "--json", "--window", "64"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["bytes"] == len(text.read_text()) - 1 and out["tokens"] == out["bytes"]
    assert out["bpb"] > 0 and out["ppl"] > 1
    assert cli_main(["eval", str(checkpoint), "--data", str(tmp_path / "missing.txt")]) == 2


def test_empty_prompt_starts_a_document_when_there_is_an_eos():
    tok = Tokenizer.train_bpe(["some text to learn a few merges from"] * 20, vocab_size=300)
    model = photon.build_model("photon-tiny", vocab_size=tok.vocab_size)
    from photon.inference.generate import generate_text

    assert len(generate_text(model, tok, [""], 4)) == 1


def test_probe_cli(checkpoint, capsys, tmp_path):
    """photon probe on a random-init PHOTON: every number is there, and a top stream that
    was never trained does not pass for one that is read."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"Line {i}: the quick brown fox jumps over it.\n"
                              for i in range(3000)))
    plot = tmp_path / "probe.png"
    assert cli_main(["probe", str(checkpoint), "--data", str(corpus), "--windows", "4",
                     "--seq-len", "64", "--plot", str(plot), "--json"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out.strip().splitlines()[-1])
    assert len(report["by_position"]["base"]) == report["meta_len"] == 16
    assert set(report["chunk_first"]) == {"base", "zero", "swap", "unigram"}
    assert len(report["state_variance"]) == 2 and report["recgen"]["recgen"] > 0
    for key in ("hiergen", "recgen"):  # the by-position losses average to the totals
        by_position = report["recgen_by_position"][key]
        assert len(by_position) == 16
        assert abs(sum(by_position) / 16 - report["recgen"][key]) < 1e-6
    assert not report["reads_top_stream"] and "does NOT read" in out
    assert plot.stat().st_size > 1000
    flat = save_checkpoint(tmp_path / "flat", make("vanilla"), Tokenizer.bytes())
    assert cli_main(["probe", str(flat), "--data", str(corpus)]) == 2
    assert "flat Transformer" in capsys.readouterr().err
