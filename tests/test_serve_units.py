"""The engine's parts alone: admission (Scheduler), the model step (ModelRunner) and output
processing (RunningSequence, and the log-probabilities of an answer)."""

import json
from collections import Counter

import pytest

from photon.data.tokenizer import Tokenizer
from photon.errors import InputError
from photon.serve.output import RunningSequence, TokenLogprob
from photon.serve.request import Request
from photon.serve.responses import LEAST_LOGPROB, logprobs_body
from photon.serve.runner import ModelRunner
from photon.serve.sampling import SamplingParams
from photon.serve.scheduler import QueueFullError, Scheduler
from tests.models import make


def test_scheduler_admits_in_order_within_slots_and_prefill_budget():
    scheduler = Scheduler(slots=8, max_queue=4, prefill_tokens=12, share_cap=10)
    a, b, c, d = (Request([1] * 4, 2), Request([1] * 4, 2, n=2), Request([1] * 4, 2),
                  Request([1] * 2, 2))
    scheduler.add([a, b, c, d], free_slots=1)  # 5 sequences, one slot free: 4 beyond it
    with pytest.raises(QueueFullError, match="queue is full"):
        scheduler.add([Request([1], 2)], free_slots=1)
    # Three 4-token prompts fill the 12-token prefill budget; d waits behind them.
    assert scheduler.admit(free_slots=10, running=Counter(), on_cancelled=print) == [a, b, c]
    assert list(scheduler.waiting) == [d]
    # b asks for 2 slots: with one free it waits, and nothing behind it jumps the queue.
    scheduler = Scheduler(slots=8, max_queue=8, prefill_tokens=100, share_cap=10)
    scheduler.add([a, b, c], free_slots=0)
    assert scheduler.admit(free_slots=2, running=Counter(), on_cancelled=print) == [a]
    c.cancelled = True
    dropped = []
    assert scheduler.admit(free_slots=3, running=Counter(), on_cancelled=dropped.append) == [b]
    assert scheduler.admit(free_slots=3, running=Counter(), on_cancelled=dropped.append) == []
    assert dropped == [c] and not scheduler.waiting


def test_scheduler_lets_other_calls_pass_a_call_at_its_share():
    """One call's prompts hold at most share_cap slots; a later call goes ahead of the rest
    of it instead of waiting behind it."""
    scheduler = Scheduler(slots=8, max_queue=100, prefill_tokens=1000, share_cap=3)
    big = [Request([1] * 4, 9, group="big") for _ in range(6)]
    small = Request([2] * 4, 9, group="small")
    scheduler.add([*big, small], free_slots=4)
    assert scheduler.admit(free_slots=4, running=Counter(), on_cancelled=print) == \
        [*big[:3], small]
    assert list(scheduler.waiting) == big[3:]
    # Two of the big call's sequences end: two more of its prompts may join.
    assert scheduler.admit(free_slots=2, running=Counter(big=1, small=1),
                           on_cancelled=print) == big[3:5]


@pytest.mark.parametrize("kind, mode", [("vanilla", "hiergen"), ("photon-B", "recgen"),
                                        ("photon-W1-TF", "hiergen")])
def test_runner_rows_decode_as_generate_does(kind, mode):
    model = make(kind)
    runner = ModelRunner(model, mode, slots=4, max_len=64)
    prompts = [[3, 1, 4], list(range(40, 60))]
    rows = runner.admit(prompts, [2, 1], [SamplingParams(), SamplingParams()])
    assert sorted(rows) == [(0, 0), (0, 1), (1, 0)] and runner.free_slots == 1
    out = {r: [] for r in range(3)}
    while min(map(len, out.values())) < 12:
        tokens, new, _, failed = runner.step({})
        assert not failed
        for r in out:
            out[r] += [t for t, n in zip(tokens[r], new[r], strict=True) if n]
    expected = {i: model.generate([p], 12, mode=mode)[0] for i, p in enumerate(prompts)}
    for r, (i, _) in enumerate(rows):
        assert out[r][:12] == expected[i]
    assert runner.release([0]) == [2, 1] and runner.free_slots == 2


def test_running_sequence_stops_at_eos_stop_string_and_length():
    tok = Tokenizer.bytes()
    ids = list(b"hello world")
    seq = RunningSequence(Request([1], 100, stop=("o w",)), 0, tok)
    output = seq.take(ids, [True] * len(ids), eos_id=None, logprob_row=None)
    assert seq.done and output.finish_reason == "stop" and output.text == "hell"
    seq = RunningSequence(Request([1], 3), 0, tok)
    output = seq.take(ids, [True] * len(ids), eos_id=None, logprob_row=None)
    assert output.finish_reason == "length" and output.token_ids == ids[:3]
    seq = RunningSequence(Request([1], 100, stream=True), 0, tok)
    output = seq.take([104, 105, 0, 106], [False, True, True, True], eos_id=0, logprob_row=None)
    assert output.finish_reason == "stop" and output.token_ids == [105]


def test_what_can_never_fit_is_refused_and_scoring_takes_no_queue_room():
    """8 slots and a queue of 4 hold at most 12 sequences that need a slot: 13 are an
    InputError (a retry cannot help), not QueueFullError. Scoring-only requests (max_tokens
    0) hold no slot and count against neither."""
    scheduler = Scheduler(slots=8, max_queue=4, prefill_tokens=100, share_cap=8)
    with pytest.raises(InputError, match="8 slots and queue of 4 can ever hold"):
        scheduler.add([Request([1], 2, n=13)], free_slots=8)
    scheduler.add([Request([1], 0, n=8, prompt_logprobs=0) for _ in range(20)], free_slots=0)
    scheduler.add([Request([1], 2, n=4)], free_slots=0)  # the queue's 4, scoring aside
    with pytest.raises(QueueFullError):
        scheduler.add([Request([1], 2)], free_slots=0)


def test_log_probabilities_that_are_not_finite_are_still_json():
    """-inf (an underflowed probability) is reported as -9999 and NaN as null: an answer
    is always JSON, which has neither (a stream once sent NaN)."""
    inf, nan = float("inf"), float("nan")
    body = logprobs_body([TokenLogprob("a", -inf, 0, {"a": -inf, "b": nan}),
                          TokenLogprob("b", nan, 1), TokenLogprob("c", None, 2)])
    json.dumps(body, allow_nan=False)
    assert body["token_logprobs"] == [LEAST_LOGPROB, None, None]
    assert body["top_logprobs"][0] == {"a": LEAST_LOGPROB, "b": None}
