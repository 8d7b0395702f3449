"""Recall in natural text: repeated bigrams and the passkey (`photon recall`)."""

import json
import math

import numpy as np
import pytest
import torch

import photon
from photon.checkpoint import save_checkpoint
from photon.cli import main as cli_main
from photon.data.tokenizer import Tokenizer
from photon.evaluation import passkey
from photon.evaluation.passkey import (
    ANSWER_ROOM,
    NEEDLE,
    QUESTION,
    first_number,
    make_trials,
    passkey_scores,
)
from photon.evaluation.positions import evaluate_positions
from photon.evaluation.repeats import band_edges, bigram_distances, evaluate_repeats
from tests.models import CopyOracle, make

EOS, VOCAB, PERIOD = 0, 64, 8
SIZES = [1 + i % 3 for i in range(VOCAB)]  # bytes per token: unequal, to catch misalignment


def test_bigram_distances():
    #           0  1  2  3  4  5  6  7
    window = [5, 6, 7, 5, 6, 8, 5, 6]
    # predicting 6 after the 5 at 3: (5, 6) was at 0, 3 back; again at 6, 3 back (from 3)
    assert bigram_distances(window).tolist() == [0, 0, 0, 3, 0, 0, 3]
    assert bigram_distances([4]).tolist() == []


def test_band_edges():
    assert band_edges(2048) == [(1, 31), (32, 255), (256, 1023), (1024, 2046)]
    assert band_edges(100) == [(1, 31), (32, 98)]
    assert band_edges(100, [1, 10]) == [(1, 9), (10, 98)]
    for bad in ([0, 5], [5, 5], [10, 5], [1, 99], []):
        with pytest.raises(photon.PhotonError, match="increasing distances in 1..98"):
            band_edges(100, bad)


def periodic_documents(n: int, length: int, seed: int = 0) -> list[list[int]]:
    """[EOS, s, s, ...]: a random sequence s of PERIOD distinct tokens, repeated: every bigram
    after the first period repeats one PERIOD tokens back."""
    g = torch.Generator().manual_seed(seed)
    docs = []
    for _ in range(n):
        s = (torch.randperm(VOCAB - 1, generator=g)[:PERIOD] + 1).tolist()
        docs.append([EOS, *(s * length)[:length - 1]])
    return docs


def test_a_model_that_copies_recalls_every_repeat():
    """The copying oracle knows every token that repeats a bigram (all PERIOD back, in the
    first band) and nothing of the new ones (log V nats each); the other bands are empty."""
    result = evaluate_repeats(CopyOracle(65, VOCAB), periodic_documents(6, 129), SIZES,
                              window=65, bands=[1, 16])
    new, near, far = result.slices
    assert (new.name, near.name, far.name) == ("new", "repeat 1-15", "repeat 16-63")
    assert new.tokens + near.tokens == result.windows * 64 and far.tokens == 0
    assert new.nats_per_token == pytest.approx(math.log(VOCAB))
    assert near.tokens > 5 * new.tokens and near.nats_per_token < 1e-6
    assert near.bytes == sum(s.bytes for s in result.slices) - new.bytes > 0


@pytest.mark.parametrize("kind, mode", [("vanilla", "hiergen"), ("photon-W1-TF", "recgen")])
def test_slices_add_up_to_the_windows_scored_by_position(kind, mode):
    """The slices split the very predictions `evaluate_positions` sums: same windows, same
    NLL, same bytes."""
    model = make(kind, vocab_size=VOCAB)
    g = np.random.default_rng(0)
    docs = [[EOS, *g.integers(1, 9, n).tolist()] for n in (70, 40, 20)]  # small: many repeats
    repeats = evaluate_repeats(model, docs, SIZES, mode, window=32, batch_size=3)
    positions = evaluate_positions(model, docs, SIZES, mode, window=32, batch_size=2)
    whole = positions.bucket(0, 31)
    assert repeats.windows == positions.windows == 3 and repeats.skipped == 1
    assert sum(s.tokens for s in repeats.slices) == whole.tokens
    assert sum(s.bytes for s in repeats.slices) == whole.bytes
    assert math.fsum(s.nll_nats for s in repeats.slices) == pytest.approx(whole.nll_nats,
                                                                          rel=1e-6)
    assert all(s.tokens > 0 for s in repeats.slices[:2])


# --- the passkey -------------------------------------------------------------------------

WORDS = ["river", "stone", "light", "green", "over", "under", "slowly", "bright", "table"]


def prose(n_sentences: int, seed: int) -> str:
    g = np.random.default_rng(seed)
    return " ".join(" ".join(g.choice(WORDS, 6)).capitalize() + "." for _ in range(n_sentences))


def test_trials_place_one_needle_at_a_sentence_end():
    tokenizer = Tokenizer.bytes()
    docs = [tokenizer.encode(prose(20, s)) for s in range(4)] + [[1, 2, 3]]  # one too short
    trials = make_trials(tokenizer, docs, 400, depths=[0.1, 0.9], trials=3, seed=1)
    assert [t.depth for t in trials] == [0.1] * 3 + [0.9] * 3
    for t in trials:
        text, control = tokenizer.decode(t.prompt), tokenizer.decode(t.control)
        needle = NEEDLE.format(key=t.key)
        assert len(t.prompt) == len(t.control) == 400 - ANSWER_ROOM
        assert text.endswith(QUESTION) and text.count(t.key) == 2 and t.key not in control
        assert control == text.replace(t.key, t.control_key)
        at, body = text.index(needle), len(text) - len(needle) - len(QUESTION)
        assert text[at - 1] == "." and abs(at / body - t.depth) < 0.1  # sentences: 47 bytes
        assert tokenizer.decode(t.answer) == " " + t.key and len(t.key) == 5
    assert len({t.key for t in trials}) == 6
    with pytest.raises(photon.PhotonError, match="need 5 documents of at least 400 tokens; "
                                                 "the text has 4"):
        make_trials(tokenizer, docs, 400, trials=5)


def test_first_number():
    assert first_number(" 12345. Remember") == "12345"
    assert first_number("\n 123") == "123"
    assert first_number(" the 12345") is None


def oracle_greedy(model, prompts, max_new_tokens, mode):
    """Greedy decoding by the forward pass: what generation gives for a model that has no
    decoder (the oracle)."""
    out = []
    for prompt in prompts:
        ids = list(prompt)
        for _ in range(max_new_tokens):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        out.append(ids[len(prompt):])
    return out


def test_a_model_that_copies_finds_the_key(monkeypatch):
    """A model that copies what followed the question's last 12 bytes answers every trial
    and gains at least a wrong digit's 30 nats over the control; one that copies after the last byte
    cannot find it."""
    tokenizer = Tokenizer.bytes()
    docs = [tokenizer.encode(prose(20, s)) for s in range(3)]
    trials = make_trials(tokenizer, docs, 400, depths=[0.1, 0.9], trials=3)
    monkeypatch.setattr(passkey, "generate", oracle_greedy)
    scores = passkey_scores(CopyOracle(400, 256, n=12), tokenizer, trials, "hiergen")
    assert scores["length"] == 400 and len(scores["depths"]) == 2
    for depth in scores["depths"]:
        assert depth["trials"] == 3 and depth["exact"] == 1.0
        assert depth["key_nll"] < 1e-6 and depth["gain"] > 30  # a wrong digit: 30 nats
        assert depth["sample"]["continuation"].startswith(" " + depth["sample"]["key"])
    blind = passkey_scores(CopyOracle(400, 256, n=1), tokenizer, trials, "hiergen")
    assert all(d["exact"] == 0.0 for d in blind["depths"])


@pytest.fixture
def long_run(tmp_path):
    """A checkpoint with a BPE and a JSON Lines corpus: four documents of 80 sentences (over
    256 tokens) and a short one."""
    texts = [prose(80, s) for s in range(4)] + [prose(2, 9)]
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    tokenizer = Tokenizer.train_bpe(texts, vocab_size=300)
    model = make("photon-W1-TF", vocab_size=tokenizer.vocab_size)
    return save_checkpoint(tmp_path / "ckpt", model, tokenizer), corpus


@pytest.mark.parametrize("mode", ["hiergen", "recgen"])
def test_recall_cli(long_run, capsys, mode):
    checkpoint, corpus = long_run
    assert cli_main(["recall", str(checkpoint), "--data", str(corpus), "--split", "all",
                     "--mode", mode, "--trials", "2", "--depths", "10,90", "--bands",
                     "1,64", "--json"]) == 0
    out = capsys.readouterr().out.splitlines()
    report = json.loads(out[-1])
    assert report["window"] == 256 and report["mode"] == mode
    assert [d["depth"] for d in report["passkey"]["depths"]] == [0.1, 0.9]
    assert all(d["trials"] == 2 and 0 <= d["exact"] <= 1 and math.isfinite(d["gain"])
               for d in report["passkey"]["depths"])
    slices = report["repeats"]["slices"]
    assert [s["slice"] for s in slices] == ["new", "repeat 1-63", "repeat 64-254"]
    assert sum(s["tokens"] for s in slices) == report["repeats"]["windows"] * 255
    assert any(line.lstrip().startswith("90%") for line in out)


@pytest.mark.parametrize("flags, message", [
    (["--depths", "10,150"], "percentages in 0..100"),
    (["--depths", "x"], "expected percentages"),
    (["--bands", "0,5"], "increasing distances in 1..254"),
    (["--only", "passkey", "--trials", "9"], "documents of at least 256 tokens; the text has 4"),
    (["--window", "9999"], "--window 9999 exceeds the model's context (256 tokens)"),
])
def test_recall_cli_bad_input(long_run, capsys, flags, message):
    checkpoint, corpus = long_run
    try:
        code = cli_main(["recall", str(checkpoint), "--data", str(corpus), "--split", "all",
                         *flags])
    except SystemExit as e:  # a flag argparse refuses
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
