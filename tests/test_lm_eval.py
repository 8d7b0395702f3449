"""The lm-evaluation-harness integration: through the harness's own entry points, on the
local Shakespeare tasks, every number equals photon's own scoring; accuracy means something.

Needs the `eval` extra (skipped without it). Models are tiny presets with the byte tokenizer,
or a small byte-level BPE where the end-of-text token matters (rolling perplexity).
"""

import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")
import lm_eval  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

import photon  # noqa: E402
from photon.checkpoint import save_checkpoint  # noqa: E402
from photon.cli import build_parser  # noqa: E402
from photon.cli import main as cli_main  # noqa: E402
from photon.cli.lm_eval import harness_args  # noqa: E402
from photon.data.tokenizer import Tokenizer  # noqa: E402
from photon.evaluation.perplexity import evaluate_text  # noqa: E402
from photon.inference import decoders as generation  # noqa: E402
from photon.inference.generate import generate_text  # noqa: E402
from photon.inference.scoring import sequential_logits  # noqa: E402
from photon.integrations.lm_eval import PhotonHarnessLM  # noqa: E402
from photon.integrations.tasks import (  # noqa: E402
    GEN_TASK,
    MC_TASK,
    PPL_TASK,
    cloze_items,
    mc_items,
    ppl_documents,
    write_tasks,
)
from tests.models import make  # noqa: E402

ACCURACY_ITEMS = 48  # items of the random-vs-trained accuracy test


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory) -> Path:
    return write_tasks(tmp_path_factory.mktemp("tasks"))


@pytest.fixture(scope="module")
def task_manager(tasks_dir) -> TaskManager:
    return TaskManager(include_path=str(tasks_dir), include_defaults=False)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Random-init tiny models (raw bytes), and photon-B with a small byte-level BPE."""
    root = tmp_path_factory.mktemp("checkpoints")
    found = {kind: save_checkpoint(root / kind, make(kind), Tokenizer.bytes())
             for kind in ("vanilla", "vanilla-swa", "block", "photon-A", "photon-B")}
    bpe = Tokenizer.train_bpe([d["text"] for d in ppl_documents()], vocab_size=320)
    found["photon-B-bpe"] = save_checkpoint(root / "bpe", make("photon-B", vocab_size=320), bpe)
    return found


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """vanilla-tiny trained by `photon train` (about 20 s on 2 idle cores) on the text around
    the first ACCURACY_ITEMS items' answers: each true line after the line before it."""
    root = tmp_path_factory.mktemp("trained")
    text = "".join(f"{it['passage'].split(chr(10))[-1]}\n{it['choices'][it['label']]}\n\n"
                   for it in mc_items()[:ACCURACY_ITEMS])
    (root / "lines.txt").write_text(text)
    argv = ["train", "--preset", "vanilla-tiny", "--tokenizer", "bytes", "--data",
            root / "lines.txt", "--seq-len", "128", "--batch-size", "8", "--max-steps", "200",
            "--lr", "5e-3", "--warmup", "10", "--dtype", "fp32", "--eval-every", "1000",
            "--out", root / "run"]
    assert cli_main(list(map(str, argv))) == 0
    return root / "run"


def reference(model, tokenizer, context: str, continuation: str, mode: str) -> float:
    """photon's own log-likelihood of one request, alone: the harness's token split (context
    encoded alone, continuation = the rest of the whole), the sequence's last window + 1
    tokens (the model's training context, as the harness's models do), unpadded."""
    ctx = tokenizer.encode(context)
    tokens = (ctx + tokenizer.encode(context + continuation)[len(ctx):])
    tokens = tokens[-(model.config.max_seq_len + 1):]
    n_cont = len(tokenizer.encode(context + continuation)) - len(ctx)
    prompt = len(tokens) - n_cont
    ids = torch.tensor([tokens])
    with torch.no_grad():
        logits = sequential_logits(model, ids, prompt, "recgen") if mode == "recgen" \
            else model(ids).logits
    logprobs = logits[0, prompt - 1:-1].log_softmax(-1)
    return logprobs.gather(-1, ids[0, prompt:, None]).sum().item()


def samples(folder: Path, task: str) -> list[dict]:
    (path,) = folder.rglob(f"samples_{task}_*.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_scores_exactly_like_photon(checkpoints, tasks_dir, tmp_path, capsys):
    """`photon lm-eval` (the harness's own command line): each choice's log-likelihood is
    photon's own within 1e-4 nats, each play's rolling log-likelihood is `photon eval`'s."""
    ckpt, out = checkpoints["photon-B-bpe"], tmp_path / "out"
    assert cli_main(["lm-eval", "--tasks-dir", str(tasks_dir), "--model_args",
                     f"pretrained={ckpt}", "--tasks", f"{MC_TASK},{PPL_TASK}", "--limit", "3",
                     "--batch_size", "8", "--output_path", str(out), "--log_samples"]) == 0
    model, tokenizer = photon.load_model(ckpt)
    mc = samples(out, MC_TASK)
    assert len(mc) == 3
    for sample in mc:
        for request, response in zip(sample["arguments"].values(), sample["resps"], strict=True):
            expected = reference(model, tokenizer, request["arg_0"], request["arg_1"], "hiergen")
            assert float(response[0][0]) == pytest.approx(expected, abs=1e-4)

    ppl = samples(out, PPL_TASK)
    nll, n_bytes = 0.0, 0
    for sample in ppl:
        text = sample["doc"]["text"]
        ours = evaluate_text(model, tokenizer, text, batch_size=8)
        assert -float(sample["resps"][0][0]) == pytest.approx(ours.nll_nats, rel=1e-7)
        nll, n_bytes = nll + ours.nll_nats, n_bytes + ours.bytes
    # `photon eval` of the first play gives the same bits per byte as the harness's sample.
    doc = tmp_path / "play.txt"
    doc.write_text(ppl[0]["doc"]["text"])
    capsys.readouterr()
    assert cli_main(["eval", str(ckpt), "--data", str(doc), "--split", "all", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert cli["bytes"] == len(ppl[0]["doc"]["text"].encode())  # the end-of-text start token
    assert -float(ppl[0]["resps"][0][0]) == pytest.approx(cli["nll_nats"], rel=1e-7)
    # The harness's aggregate is photon's: summed nats over summed bytes.
    (results,) = out.rglob("results_*.json")
    bpb = json.loads(results.read_text())["results"][PPL_TASK]["bits_per_byte,none"]
    assert bpb == pytest.approx(nll / math.log(2) / n_bytes, rel=1e-7)


@pytest.mark.parametrize("kind, mode", [("vanilla", "hiergen"), ("vanilla-swa", "hiergen"),
                                        ("block", "hiergen"), ("photon-A", "hiergen"),
                                        ("photon-B", "recgen")])
def test_loglikelihood_is_exact_for_every_model(checkpoints, task_manager, kind, mode):
    """simple_evaluate with batches of mixed lengths: each choice equals photon's scoring of
    that sequence alone (RecGen: its sequential likelihood, unlike the forward pass)."""
    out = lm_eval.simple_evaluate(
        model="photon", model_args={"pretrained": str(checkpoints[kind]), "mode": mode},
        tasks=[MC_TASK], task_manager=task_manager, limit=4, batch_size=3, device="cpu",
        log_samples=True)
    model, tokenizer = photon.load_model(checkpoints[kind])
    for sample in out["samples"][MC_TASK]:
        for request, response in zip(sample["arguments"], sample["resps"], strict=True):
            context, continuation = request
            expected = reference(model, tokenizer, context, continuation, mode)
            assert response[0][0] == pytest.approx(expected, abs=1e-4)
            if mode == "recgen":
                hier = reference(model, tokenizer, context, continuation, "hiergen")
                assert abs(hier - expected) > 1e-3


def test_generate_until_stops_at_the_stop_string(checkpoints, monkeypatch):
    """The request's stop string ends generation (fewer decoding steps than max_gen_toks) and
    is cut off: the text is exactly the free-running text up to it."""
    lm = PhotonHarnessLM(str(checkpoints["vanilla"]), batch_size=4, device="cpu")
    prompt = "ROMEO.\nBut soft, what light"
    free = generate_text(lm.model, lm.tokenizer, [prompt], 40)[0]
    stop = free[12:14]
    steps = []
    step = generation.FlatDecoder.step
    monkeypatch.setattr(generation.FlatDecoder, "step",
                        lambda self, *a, **k: steps.append(1) or step(self, *a, **k))
    request = Instance("generate_until", doc={}, idx=0,
                       arguments=(prompt, {"until": [stop, "never"], "max_gen_toks": 40}))
    (text,) = lm.generate_until([request], disable_tqdm=True)
    assert text == free[:free.index(stop)] and stop not in text
    assert len(steps) <= len(lm.tokenizer.encode(free[:free.index(stop) + len(stop)]))
    with pytest.raises(photon.PhotonError, match="unsupported generation arguments"):
        lm.generate_until([Instance("generate_until", doc={}, idx=0,
                                    arguments=(prompt, {"num_beams": 4}))])


def test_generation_task_stops_at_line_breaks(trained, task_manager):
    """shakespeare_gen through the harness: every answer is photon's greedy text up to the
    first line break, which the trained model does write. (The prompt keeps its last
    window - max_gen_toks = 128 - 64 tokens, so that the answer fits the window.)"""
    out = lm_eval.simple_evaluate(
        model="photon", model_args={"pretrained": str(trained)}, tasks=[GEN_TASK],
        task_manager=task_manager, limit=6, batch_size=4, device="cpu", log_samples=True)
    model, tokenizer = photon.load_model(trained)
    stopped = 0
    for sample in out["samples"][GEN_TASK]:
        context = tokenizer.decode(tokenizer.encode(sample["arguments"][0][0])[-64:])
        free = generate_text(model, tokenizer, [context], 64)[0]
        answer = sample["resps"][0][0]
        assert answer == free.split("\n")[0]
        stopped += "\n" in free
    assert stopped >= 3


def test_accuracy_random_is_chance_trained_is_far_above(checkpoints, trained, task_manager):
    """On the first ACCURACY_ITEMS items of shakespeare_mc, a random-init model is near
    chance (25 %) and a model trained on those items' lines is far above it. Measured:
    random vanilla-tiny acc 0.292 / acc_norm 0.167; trained acc 0.708 / acc_norm 0.792."""
    def accuracy(ckpt: Path) -> tuple[float, float]:
        out = lm_eval.simple_evaluate(
            model="photon", model_args={"pretrained": str(ckpt)}, tasks=[MC_TASK],
            task_manager=task_manager, limit=ACCURACY_ITEMS, batch_size=16, device="cpu")
        result = out["results"][MC_TASK]
        return result["acc,none"], result["acc_norm,none"]

    random_acc, random_norm = accuracy(checkpoints["vanilla"])
    trained_acc, trained_norm = accuracy(trained)
    print(f"random: acc {random_acc:.3f} acc_norm {random_norm:.3f}; "
          f"trained: acc {trained_acc:.3f} acc_norm {trained_norm:.3f}")
    assert 0.1 <= random_acc <= 0.4 and 0.1 <= random_norm <= 0.4
    assert trained_acc >= 0.55 and trained_norm >= 0.6


def test_task_items_are_fair_and_fixed():
    """Same seed, same items; the true line's length rank among the choices is uniform, so
    picking the shortest (what a model that ignores the text does) is at chance."""
    items = mc_items()
    assert items[:50] == mc_items(n_items=50) and len(items) == 2000
    assert items != mc_items(seed=1)
    for it in items:
        assert len(set(it["choices"])) == 4 and it["passage"].strip()
    size = [[len(c.encode()) for c in it["choices"]] for it in items]
    shortest = sum(s.index(min(s)) == it["label"] for s, it in zip(size, items, strict=True))
    assert abs(shortest / len(items) - 0.25) < 0.03


def test_cloze_items_cut_the_true_line():
    """Each cloze item is its MC item cut inside the line to predict: passage + true tail is
    MC passage + newline + true line; every tail is a proper part of its line; length still
    says nothing about the answer."""
    mc = mc_items(n_items=500)
    cloze = cloze_items(mc)
    for m, c in zip(mc, cloze, strict=True):
        assert c["label"] == m["label"]
        truth = m["choices"][m["label"]]
        assert c["passage"] + c["choices"][c["label"]] == f"{m['passage']}\n{truth}"
        for line, tail in zip(m["choices"], c["choices"], strict=True):
            head = line[:len(line) - len(tail)]
            assert line.endswith(tail) and tail.startswith(" ") and head.strip()
    size = [[len(t) for t in it["choices"]] for it in cloze]
    shortest = sum(s.index(min(s)) == it["label"] for s, it in zip(size, cloze, strict=True))
    assert abs(shortest / len(cloze) - 0.25) < 0.06


def test_cli_defaults_and_errors(checkpoints, tasks_dir, capsys):
    """Harness flags pass through untouched (--tasks and --seed are the harness's, not
    abbreviations of photon's options); photon adds its defaults; errors are one line."""
    args, unknown = build_parser().parse_known_args(
        ["lm-eval", "--tasks", "x", "--seed", "1,2,3,4", "--model_args", "pretrained=p"])
    args.extra_args = unknown
    assert harness_args(args, "/tasks") == [
        "--tasks", "x", "--seed", "1,2,3,4", "--model_args", "pretrained=p",
        "--model", "photon", "--include_path", "/tasks", "--batch_size", "16", "--device",
        "cuda" if torch.cuda.is_available() else "cpu"]
    assert cli_main(["lm-eval", "--tasks-dir", str(tasks_dir), "--model_args",
                     "pretrained=/nonexistent", "--tasks", MC_TASK, "--limit", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("photon lm-eval: error:") and "no such checkpoint" in err[-1]
    with pytest.raises(photon.PhotonError, match="recgen needs a model with at least 2"):
        PhotonHarnessLM(str(checkpoints["block"]), mode="recgen")
