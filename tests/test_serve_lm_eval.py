"""lm-eval's own `local-completions` model against a running `photon serve`.

The harness talks to the server exactly as it talks to vLLM: log-likelihoods through
`echo` with `max_tokens: 1, logprobs: 1` (it sums the prompt's part after the context),
generation through `stop` lists to which it appends the end-of-text string, and tokens
through the server's /tokenize (the `remote` and `auto` tokenizer backends) or the
checkpoint's tokenizer.json (`huggingface`). On the local tasks every choice's log-likelihood
equals `photon lm-eval`'s on the same checkpoint, generations are the same text, and the
rolling log-likelihood is photon's forward pass over the harness's disjoint windows.

Needs the `eval` extra (skipped without it).
"""

import math

import pytest
import torch

pytest.importorskip("lm_eval")
import lm_eval  # noqa: E402
import lm_eval.models.openai_completions  # noqa: E402, F401 - registers "local-completions"
from lm_eval.tasks import TaskManager  # noqa: E402
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window  # noqa: E402

import photon  # noqa: E402
import photon.integrations.lm_eval  # noqa: E402, F401 - registers the harness model "photon"
from photon.checkpoint import save_checkpoint  # noqa: E402
from photon.data.tokenizer import Tokenizer  # noqa: E402
from photon.integrations.tasks import (  # noqa: E402
    GEN_TASK,
    MC_TASK,
    PPL_TASK,
    ppl_documents,
    write_tasks,
)
from photon.serve.loadtest import ServerProcess  # noqa: E402
from tests.models import make  # noqa: E402

KEY = "lm-eval-key"
CONTEXT = 1024  # the checkpoints' training context: no item of the tasks is cut
LIMIT = 3  # items (plays) of each task
TOLERANCE = 1e-4  # nats, per choice


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> TaskManager:
    folder = write_tasks(tmp_path_factory.mktemp("tasks"))
    return TaskManager(include_path=str(folder), include_defaults=False)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    """Random-init PHOTON and flat tiny models with a small byte-level BPE (it has the
    end-of-text token lm-eval appends to stop lists and starts rolling windows with)."""
    root = tmp_path_factory.mktemp("checkpoints")
    bpe = Tokenizer.train_bpe([d["text"] for d in ppl_documents()], vocab_size=320)
    return {kind: save_checkpoint(root / kind, make(kind, vocab_size=320, max_seq_len=CONTEXT),
                                  bpe)
            for kind in ("photon-B", "vanilla")}


def by_doc(out: dict, task: str) -> dict[int, dict]:
    return {s["doc_id"]: s for s in out["samples"][task]}


def disjoint_windows_loglikelihood(model, tokenizer, text: str, max_length: int) -> float:
    """What the harness's API models compute for a rolling request, with photon's forward
    pass: disjoint windows of max_length - 2 scored tokens after one token of context (the
    end-of-text token first), each sent as a prompt of at most max_length - 1 tokens."""
    total = 0.0
    windows = get_rolling_token_windows(token_list=tokenizer.encode(text),
                                        prefix_token=tokenizer.eos_id,
                                        max_seq_len=max_length - 2, context_len=1)
    for context, continuation in map(make_disjoint_window, windows):
        tokens = (context + continuation)[-(max_length - 1):]
        start = len(tokens) - len(continuation)
        ids = torch.tensor([tokens])
        with torch.no_grad():
            logp = model(ids).logits[0, :-1].double().log_softmax(-1)
        total += logp.gather(-1, ids[0, 1:, None])[start - 1:].sum().item()
    return total


@pytest.mark.e2e
@pytest.mark.parametrize("kind, mode, backend, batch", [
    ("photon-B", "hiergen", "auto", 1),  # finds the server's /tokenize by itself
    ("vanilla", "hiergen", "huggingface", 4),  # the checkpoint's tokenizer; 4 prompts a call
    ("photon-B", "recgen", "remote", 1),
])
def test_local_completions_equals_photon_lm_eval(checkpoints, tasks, monkeypatch, kind, mode,
                                                 backend, batch):
    """Multiple choice: each choice's log-likelihood equals `photon lm-eval`'s within 1e-4
    nats (HierGen's for a RecGen server: echo scores the whole prompt as the context), and
    the same choices are greedy. Generation: the same text as photon lm-eval in the
    server's mode, cut at the stop string. Rolling perplexity: photon's forward pass over
    the harness's disjoint windows (photon lm-eval scores overlapping ones instead)."""
    ckpt = checkpoints[kind]
    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # lm-eval's key for completions
    args = {"model": "tiny", "tokenizer_backend": backend, "max_length": CONTEXT,
            "auth_token": KEY}  # auth_token: the key for the tokenizer endpoints
    if backend == "huggingface":  # transformers reads the checkpoint's tokenizer.json
        args["tokenizer"] = str(ckpt)
    with ServerProcess(ckpt, "--max-batch", "4", "--api-key", KEY, "--model-name", "tiny",
                       "--mode", mode) as server:
        served = lm_eval.simple_evaluate(
            model="local-completions",
            model_args={**args, "base_url": f"{server.url}/v1/completions"},
            tasks=[MC_TASK, GEN_TASK, PPL_TASK], task_manager=tasks, limit=LIMIT,
            batch_size=batch, log_samples=True)

    def photon_lm_eval(photon_mode: str, task_list: list[str]) -> dict:
        return lm_eval.simple_evaluate(
            model="photon", model_args={"pretrained": str(ckpt), "mode": photon_mode},
            tasks=task_list, task_manager=tasks, limit=LIMIT, batch_size=8, device="cpu",
            log_samples=True)

    hiergen = photon_lm_eval("hiergen", [MC_TASK, GEN_TASK, PPL_TASK])
    worst, choices = 0.0, 0
    for doc, sample in by_doc(served, MC_TASK).items():
        ours = by_doc(hiergen, MC_TASK)[doc]
        assert sample["arguments"] == ours["arguments"]
        for got, expected in zip(sample["resps"], ours["resps"], strict=True):
            worst = max(worst, abs(got[0][0] - expected[0][0]))
            assert got[0][0] == pytest.approx(expected[0][0], abs=TOLERANCE)
            assert got[0][1] == expected[0][1]
            choices += 1
    assert choices == 4 * LIMIT
    generated = hiergen
    if mode == "recgen":  # what echo is not: RecGen's likelihood after the context
        recgen = photon_lm_eval("recgen", [MC_TASK, GEN_TASK])
        differ = [abs(s[0][0] - r[0][0]) for doc, sample in by_doc(served, MC_TASK).items()
                  for s, r in zip(sample["resps"], by_doc(recgen, MC_TASK)[doc]["resps"],
                                  strict=True)]
        assert max(differ) > 1e-3
        generated = recgen
    for doc, sample in by_doc(served, GEN_TASK).items():
        text = sample["resps"][0][0]
        assert text == by_doc(generated, GEN_TASK)[doc]["resps"][0][0]
        assert "\n" not in text
    model, tokenizer = photon.load_model(ckpt)
    bpb, rolling = {}, 0.0
    for sample in served["samples"][PPL_TASK]:
        text = sample["doc"]["text"]
        expected = disjoint_windows_loglikelihood(model, tokenizer, text, CONTEXT)
        rolling = max(rolling, abs(sample["resps"][0][0] - expected))
        assert sample["resps"][0][0] == pytest.approx(expected, abs=1e-3)
    for name, out in (("served (disjoint windows)", served),
                      ("photon lm-eval (overlapping windows)", hiergen)):
        bpb[name] = out["results"][PPL_TASK]["bits_per_byte,none"]
        assert math.isfinite(bpb[name])
    print(f"\n{kind} {mode} ({backend}, batch {batch}): {choices} choices, largest "
          f"|served - photon lm-eval| = {worst:.2e} nats; rolling, largest |served - "
          f"forward pass| = {rolling:.2e} nats per play; bits per byte {bpb}")
