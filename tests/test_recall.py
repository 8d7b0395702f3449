"""The recall task (photon.evaluation.recall): MQAR sequences as Zoology defines them, their
labels, their scoring, and decoding that equals the forward pass where it should."""

import pytest
import torch

from photon.errors import ConfigError
from photon.evaluation.recall import (
    IGNORE,
    MQAR,
    TEST,
    VALIDATION,
    SequenceSampler,
    decoded_logits,
    recall_scores,
    value_scores,
)
from tests.models import make

TASK = MQAR(pairs=(4, 8), vocab=64)


def lookup_logits(ids: torch.Tensor, vocab: int) -> torch.Tensor:
    """A perfect associative memory's logits [B, T, V]: after a token, the token that followed
    its first earlier occurrence (anything where there is none)."""
    B, T = ids.shape
    logits = torch.zeros(B, T, vocab)
    for b in range(B):
        first: dict[int, int] = {}
        for i, token in enumerate(ids[b].tolist()):
            if token in first and first[token] + 1 < T:
                logits[b, i, ids[b, first[token] + 1]] = 1.0
            first.setdefault(token, i)
    return logits


@pytest.mark.parametrize("task", [TASK, MQAR((4, 8), 64, shift=1)], ids=["zoology", "shift=1"])
def test_labels_are_the_values_of_the_queried_keys(task):
    b = task.batch(list(range(20)), 64, seed=3)
    for ids, labels, distance, k in zip(b.ids, b.labels, b.distance,
                                        [TASK.pairs[i % 2] for i in range(20)], strict=True):
        ids, labels, distance = ids.tolist(), labels.tolist(), distance.tolist()
        value_of = {ids[2 * j]: ids[2 * j + 1] for j in range(k)}
        scored = [p for p, label in enumerate(labels) if label != IGNORE]
        assert len(scored) == k and min(scored) > 2 * k  # every key asked once, after the block
        for p in scored:
            key = ids[p - 1]
            assert labels[p] == ids[p] == value_of[key]
            assert distance[p] == (p - 1) - ids.index(key) > 0
        assert sorted(ids[p - 1] for p in scored) == sorted(value_of)
        assert all(p % 2 == 1 - task.shift for p in scored)  # keys on the pairs' grid, or off


def test_shifted_queries_let_a_value_open_a_chunk_for_every_fill_and_length():
    """shift=1: some values sit at a chunk's first position (chunks of 4), which Zoology's
    slots never allow; a dense training sequence still asks every free slot."""
    opening = {0: 0, 1: 0}
    for shift in (0, 1):
        b = MQAR((4, 8), 64, shift=shift).batch(list(range(64)), 65, seed=0)
        opening[shift] = int(((b.labels != IGNORE) & (torch.arange(65) % 4 == 0)).sum())
    assert opening[0] == 0 and opening[1] > 0
    dense = MQAR((4,), 64, fill="queries", shift=1).batch([0], 64, seed=0)
    assert dense.labels[0, 10:64:2].ne(IGNORE).all() and dense.labels[0, :10].eq(IGNORE).all()
    with pytest.raises(ConfigError, match="K=8 needs sequences of at least 33"):
        MQAR((8,), 64, shift=1).check_length(32)


def test_keys_are_distinct_and_never_repeated_by_the_filler():
    b = TASK.batch(list(range(40)), 64, seed=0)
    for i, ids in enumerate(b.ids.tolist()):
        k = TASK.pairs[i % 2]
        keys, values = ids[0:2 * k:2], ids[1:2 * k:2]
        assert len(set(keys)) == k and len(set(values)) == k
        assert max(keys) < TASK.vocab // 2 <= min(values)
        assert all(ids.count(key) == 2 for key in keys)  # its pair and its query


def test_sequences_are_a_function_of_seed_stream_and_index():
    a = TASK.batch([5, 6], 64, seed=1)
    assert torch.equal(a.ids, TASK.batch([5, 6], 64, seed=1).ids)
    assert torch.equal(a.ids[1], TASK.batch([6], 64, seed=1).ids[0])  # not of the batch
    for other in (TASK.batch([5, 6], 64, seed=2), TASK.batch([5, 6], 64, 1, VALIDATION),
                  TASK.batch([5, 6], 64, 1, TEST)):
        assert not torch.equal(a.ids, other.ids)
    sampler = SequenceSampler()
    assert sampler.next(3) == [0, 1, 2]
    again = SequenceSampler()
    again.load_state_dict(sampler.state_dict())
    assert again.next(2) == [3, 4]


def test_power_law_puts_most_queries_near_the_block():
    def mean_distance(power):
        b = MQAR((4,), 64, power).batch(list(range(200)), 256, seed=0)
        return b.distance[b.labels != IGNORE].float().mean().item()

    near, uniform = mean_distance(0.01), mean_distance(1.0)
    assert near < 0.6 * uniform  # uniform: about (256 - 8) / 2 + 4


def test_queries_at_a_chosen_distance():
    b = TASK.batch(list(range(5)), 64, seed=0, pairs=8, distance=20)
    assert (b.distance[b.labels != IGNORE] == 20).all()
    assert ((b.labels != IGNORE).sum(1) == 8).all()
    for bad in (15, 49):  # before the block ends; the last value past the end
        with pytest.raises(ConfigError, match="2K <= distance <= T - 2K"):
            TASK.batch([0], 64, seed=0, pairs=8, distance=bad)


def test_a_perfect_lookup_scores_one_and_chance_is_one_over_the_values():
    b = TASK.batch(list(range(30)), 64, seed=0)
    _, recalled, values = value_scores(lookup_logits(b.ids, TASK.vocab), b.labels)
    assert recalled == values == 30 * 6
    wrong = torch.roll(b.labels, 1, dims=1)  # labels one position late
    assert value_scores(lookup_logits(b.ids, TASK.vocab), wrong)[1] < values / 10

    small = MQAR(pairs=(4,), vocab=16)
    b = small.batch(list(range(600)), 32, seed=0)
    noise = torch.randn(600, 32, 16, generator=torch.Generator().manual_seed(0))
    noise[..., :8] = -torch.inf  # guesses among the values only
    nats, recalled, values = value_scores(noise, b.labels)
    assert values == 2400 and abs(recalled / values - 1 / 8) < 0.025


def test_the_spec_parses_round_trips_and_rejects_bad_input():
    task = MQAR.parse("mqar:K=8,16,32,vocab=512")
    assert task == MQAR((8, 16, 32), 512) and MQAR.parse(task.spec) == task
    assert MQAR.parse("mqar:K=4").pairs == (4,)
    dense = MQAR.parse("mqar:K=4,fill=queries,vocab=64")
    assert dense == MQAR((4,), 64, fill="queries") and MQAR.parse(dense.spec) == dense
    shifted = MQAR.parse("mqar:K=4,shift=1")
    assert shifted.shift == 1 and MQAR.parse(shifted.spec) == shifted
    for bad, message in [("mqar:K=8,vocab=2", "vocab must be even, in"),
                         ("mqar:K=8,size=3", "fields are K, vocab, power, fill and shift"),
                         ("mqar:K=8,shift=2", "shift is 0"),
                         ("mqar:K=8,fill=more", "fill is one of noise, queries"),
                         ("mqar:vocab=64,8", "expected mqar:K="),
                         ("mqar:K=x", "integers"), ("mqar:K=40,vocab=64", "K=40 needs a vocab"),
                         ("mqar:K=4,power=0", "power must be in")]:
        with pytest.raises(ConfigError, match=message):
            MQAR.parse(bad)
    with pytest.raises(ConfigError, match="K=8 needs sequences of at least 32"):
        TASK.check_length(31)


def test_dense_training_sequences_ask_every_free_slot_and_score_zoologys_task():
    """fill=queries: after the block every slot of two tokens is a query of a key of the
    block followed by its value, each scored; the K queries of Zoology's form are among
    them. Validation and test streams stay Zoology's form."""
    task = MQAR((4, 8), 64, fill="queries")
    b = task.batch(list(range(6)), 64, seed=0)
    for ids, labels, pairs in zip(b.ids, b.labels, [4, 8] * 3, strict=True):
        block = 2 * pairs
        pairs_of = dict(zip(ids[0:block:2].tolist(), ids[1:block:2].tolist(), strict=True))
        queries = ids[block:64:2].tolist()
        assert all(q in pairs_of for q in queries) and set(queries) == set(pairs_of)
        assert labels[block + 1:64:2].tolist() == [pairs_of[q] for q in queries]
        assert (labels[:block + 1] == -100).all() and (labels[block:64:2] == -100).all()
    for stream in (VALIDATION, TEST):
        zoology = MQAR((4, 8), 64).batch(list(range(6)), 64, 0, stream)
        same = task.batch(list(range(6)), 64, 0, stream)
        assert torch.equal(same.ids, zoology.ids) and torch.equal(same.labels, zoology.labels)


def test_the_tokenizer_spells_keys_and_values_and_round_trips(tmp_path):
    from photon.data.tokenizer import Tokenizer

    tok = TASK.tokenizer()
    assert tok.vocab_size == 64 and tok.eos_id is None
    assert tok.encode("k0 v0 k31") == [0, 32, 31] and tok.decode([1, 33]) == "k1 v1"
    tok.save(tmp_path)
    assert Tokenizer.load(tmp_path).encode("v31 k2") == [63, 2]


@pytest.mark.parametrize("kind", ["vanilla", "vanilla-swa", "block", "photon-B",
                                  "photon-W1-TF"])
def test_decoding_equals_the_forward_pass_except_under_recgen(kind):
    """Flat, sliding-window and HierGen decoding after a prompt give the forward pass's
    logits; RecGen (PHOTON) is the mode that can differ."""
    model = make(kind, vocab_size=64)
    ids = TASK.batch([0, 1], 48, seed=0, pairs=8).ids
    forward = model(ids).logits[:, :-1]
    for prompt in (16, 21):  # the block's end; inside a meta-context
        torch.testing.assert_close(decoded_logits(model, ids, prompt, "hiergen"), forward,
                                   atol=2e-5, rtol=1e-4)
    if kind.startswith("photon"):
        assert not torch.allclose(decoded_logits(model, ids, 16, "recgen"), forward, atol=1e-3)


def test_recall_scores_by_pairs_and_distance():
    model = make("photon-B", vocab_size=64)
    scores = recall_scores(model, TASK, 64, "recgen", seed=0, sequences=3,
                           distances={4: [8, 40], 8: [16]}, batch_size=2)
    assert [r["pairs"] for r in scores["by_pairs"]] == [4, 8]
    assert [r["values"] for r in scores["by_pairs"]] == [12, 24] and scores["values"] == 36
    assert [(r["pairs"], r["distance"]) for r in scores["by_distance"]] == [(4, 8), (4, 40),
                                                                            (8, 16)]
    assert all(0 <= r["accuracy"] <= 1 and r["loss"] > 0 for r in scores["by_distance"])
    assert scores["mode"] == "recgen"

