"""Bits per byte by position in the window (`photon eval --by-position`)."""

import json
import math

import numpy as np
import pytest
import torch

import photon
from photon.checkpoint import save_checkpoint
from photon.cli import main as cli_main
from photon.data.corpus import Split
from photon.data.prepare import prepare
from photon.data.shards import load_tokens, stream_documents
from photon.data.tokenizer import Tokenizer
from photon.evaluation.perplexity import evaluate_tokens
from photon.evaluation.positions import bucket_starts, evaluate_positions, text_documents
from tests.models import CopyOracle, make

EOS, VOCAB, PERIOD = 0, 64, 8
HOLD_OUT_TWO = Split(documents=2)  # six documents: the default 5 % would hold out none
SIZES = [1 + i % 3 for i in range(VOCAB)]  # bytes per token: unequal, to catch misalignment


def periodic_documents(n: int, length: int, seed: int = 0) -> list[list[int]]:
    """Documents [EOS, s, s, s, ...]: each a random sequence s of PERIOD distinct tokens,
    repeated; past its first period a token is predictable only by copying from earlier."""
    g = torch.Generator().manual_seed(seed)
    docs = []
    for _ in range(n):
        s = (torch.randperm(VOCAB - 1, generator=g)[:PERIOD] + 1).tolist()
        docs.append([EOS, *(s * length)[:length - 1]])
    return docs


def test_a_model_that_sees_the_window_falls_with_position():
    """Window 65, documents of 129 tokens: two windows each. Until its current token recurs
    (position 8 in a document's second window, 9 in its first, whose token 0 is EOS) the
    oracle knows nothing: log V nats a token; from then on it copies."""
    oracle = CopyOracle(65, VOCAB)
    result = evaluate_positions(oracle, periodic_documents(6, 129), SIZES, window=65)
    first, middle, last = result.buckets()  # window 65: 0-7, 8-31, 32-63
    assert (first.start, middle.start, last.start, last.end) == (0, 8, 32, 64)
    assert (result.windows, first.tokens) == (12, 12 * 8)
    assert first.nll_nats == pytest.approx(first.tokens * math.log(VOCAB))
    assert middle.nll_nats == pytest.approx(6 * math.log(VOCAB))  # first windows' position 8
    assert first.bpb > middle.bpb > 0.05 > 1e-6 > last.bpb


def test_a_model_that_sees_the_last_k_tokens_gives_flat_buckets():
    """One attention layer with a window of 4 cannot reach a period back: past position 3
    its prediction at p depends on the tokens p-3..p only, which repeat every PERIOD, so
    buckets whose lengths are whole periods score alike however far into the window."""
    torch.manual_seed(0)
    model = photon.build_model("vanilla-tiny", vocab_size=VOCAB, n_layers=1, window=4).eval()
    docs = periodic_documents(6, 129)
    buckets = evaluate_positions(model, docs, SIZES, window=65).buckets([16, 32, 48])
    for b in buckets[2:]:
        assert b.bpb == pytest.approx(buckets[1].bpb, rel=1e-5)
    oracle = evaluate_positions(CopyOracle(65, VOCAB), docs, SIZES, window=65).buckets([16, 32])
    assert oracle[1].bpb < buckets[1].bpb / 100  # context would help a model that reached it


def test_windows_start_at_document_starts_and_short_documents_are_skipped():
    """Window 8: a document of 8 tokens gives one window, one of 20 two (7 tokens apart,
    sharing one; its last 5 tokens fill no window), those of 5 and 7 none."""
    docs = [[EOS, *range(1, n)] for n in (5, 8, 20, 7)]
    oracle = CopyOracle(8, VOCAB)
    result = evaluate_positions(oracle, docs, SIZES, window=8, batch_size=2)
    seen = torch.cat(oracle.seen).tolist()
    assert seen == [docs[1][:8], docs[2][:8], docs[2][7:15]]
    assert (result.windows, result.documents, result.skipped) == (3, 2, 2)
    assert result.bytes[0] == SIZES[1] + SIZES[1] + SIZES[8]  # position 0 predicts token 1
    with pytest.raises(photon.PhotonError, match="no document fills a window of 32"):
        evaluate_positions(oracle, docs, SIZES, window=32)


@pytest.mark.parametrize("kind, mode, decoded", [
    ("vanilla", "hiergen", False), ("block", "hiergen", False), ("photon-B", "hiergen", False),
    ("photon-B", "hiergen", True), ("photon-B", "recgen", False),
    ("photon-L3", "recgen", True),
])
def test_buckets_add_up_to_the_windows_scored_alone(kind, mode, decoded):
    """Every kind and mode: the positions sum to each window scored by `evaluate_tokens`
    (the same per-window NLL), and the buckets to the whole."""
    model = make(kind)
    g = torch.Generator().manual_seed(1)
    docs = [[EOS, *torch.randint(1, 256, (n,), generator=g).tolist()] for n in (40, 25, 10)]
    result = evaluate_positions(model, docs, [1] * 256, mode=mode, window=20, batch_size=2,
                                decoded=decoded)
    windows = [docs[0][:20], docs[0][19:39], docs[1][:20]]
    alone = [evaluate_tokens(model, w, [1] * 256, mode=mode, window=20, stride=19,
                             decoded=decoded) for w in windows]
    report = result.to_dict([3, 9])
    assert report["nll_nats"] == pytest.approx(sum(r.nll_nats for r in alone), rel=1e-6)
    assert report["tokens"] == sum(r.tokens for r in alone) == 3 * 19
    for key in ("tokens", "bytes", "nll_nats"):
        assert sum(b[key] for b in report["buckets"]) == pytest.approx(report[key], rel=1e-12)
    assert [b["positions"] for b in report["buckets"]] == ["0-2", "3-8", "9-18"]


def test_bucket_boundaries():
    assert bucket_starts(2048) == [0, 256, 1024]
    assert bucket_starts(2048, [0, 256, 1024]) == bucket_starts(2048, [256, 1024])
    assert bucket_starts(4) == [0, 2]
    for bad in ([1024, 256], [256, 256], [2047], [-1]):
        with pytest.raises(photon.PhotonError, match="increasing positions in 0..2046"):
            bucket_starts(2048, bad)


@pytest.fixture
def bpe_run(tmp_path):
    """A checkpoint with a BPE (it has an end-of-document token) and a JSON Lines corpus of
    documents from 3 to 120 words."""
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "it", "ran", "off", "to"]
    g = np.random.default_rng(0)
    texts = [" ".join(g.choice(words, size=n)) for n in (120, 3, 90, 60, 5, 100)]
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    tokenizer = Tokenizer.train_bpe(texts, vocab_size=280)
    model = make("vanilla", vocab_size=tokenizer.vocab_size)
    return save_checkpoint(tmp_path / "ckpt", model, tokenizer), tokenizer, corpus, texts


def test_prepared_shards_split_into_the_source_documents(bpe_run, tmp_path):
    _, tokenizer, corpus, texts = bpe_run
    prepare(corpus, tmp_path / "prepared", tokenizer, split=HOLD_OUT_TWO, workers=1,
            progress=False)
    tokens = np.concatenate([load_tokens(tmp_path / "prepared", s) for s in ("train", "val")])
    got = sorted(d.tolist() for d in stream_documents(tokens, tokenizer.eos_id))
    assert got == sorted(text_documents(tokenizer, texts))
    with pytest.raises(photon.PhotonError, match="no end-of-document token"):
        next(stream_documents(tokens, None))


def test_eval_cli_by_position(bpe_run, tmp_path, capsys):
    """The JSON carries the buckets; a prepared directory of the corpus gives the same
    windows as its JSON Lines file."""
    checkpoint, tokenizer, corpus, texts = bpe_run
    args = ["eval", str(checkpoint), "--split", "all", "--window", "32", "--json"]
    assert cli_main([*args, "--data", str(corpus), "--by-position"]) == 0
    out = capsys.readouterr().out.splitlines()
    report = json.loads(out[-1])
    assert [b["positions"] for b in report["buckets"]] == ["0-3", "4-15", "16-30"]
    assert out[1].split() == ["positions", "bpb", "tokens", "bytes"]
    assert out[2].split()[0] == "0-3" and "skipped" in out[0]
    long_docs = [d for d in text_documents(tokenizer, texts) if len(d) >= 32]
    assert report["documents"] == len(long_docs) and report["documents_skipped"] == 2
    assert report["windows"] == sum((len(d) - 1) // 31 for d in long_docs)
    for key in ("tokens", "bytes"):
        assert sum(b[key] for b in report["buckets"]) == report[key]

    prepare(corpus, tmp_path / "prepared", tokenizer, split=HOLD_OUT_TWO, workers=1,
            progress=False)
    assert cli_main([*args, "--data", str(tmp_path / "prepared"), "--buckets", "8"]) == 0
    prepared = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert [b["positions"] for b in prepared["buckets"]] == ["0-7", "8-30"]
    assert prepared["bpb"] == pytest.approx(report["bpb"], rel=1e-9)
    assert prepared["windows"] == report["windows"]


@pytest.mark.parametrize("flags, message", [
    (["--by-position", "--stride", "8"], "--stride does not apply"),
    (["--buckets", "8,x"], "--buckets takes positions"),
    (["--buckets", "40"], "increasing positions in 0..30"),
    (["--by-position", "--window", "500"], "no document fills a window of 500"),
])
def test_eval_cli_by_position_bad_input(bpe_run, capsys, flags, message):
    checkpoint, _, corpus, _ = bpe_run
    assert cli_main(["eval", str(checkpoint), "--data", str(corpus), "--split", "all",
                     "--window", "32", *flags]) == 2  # a second --window replaces the first
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
