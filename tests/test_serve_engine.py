"""The continuous-batching engine: served sequences equal `generate` alone, whatever shares
the batch; slots are freed and reused; text streams are exact; failures are answered."""

import threading
import time

import pytest
import torch

from photon.data.tokenizer import Tokenizer
from photon.errors import CacheFullError, InputError
from photon.inference.cache import KVCache
from photon.serve.engine import Engine, ShuttingDownError, slots_for_budget
from photon.serve.request import Request
from photon.serve.sampling import BatchSampler, SamplingParams
from photon.serve.scheduler import QueueFullError
from photon.serve.text import TextStream
from tests.models import make
from tests.serving import sequences, serve

KINDS = [("vanilla", "hiergen"), ("block", "hiergen"), ("photon-B", "hiergen"),
         ("photon-B", "recgen"), ("photon-A", "recgen"), ("photon-L3-A", "hiergen"),
         ("photon-TF", "hiergen"), ("photon-TF", "recgen")]


@pytest.mark.parametrize("kind, mode", KINDS)
def test_served_sequences_equal_generate_alone(kind, mode, engine_of):
    """Greedy and seeded requests of different lengths, settings and n share 3 slots; each
    sequence equals `model.generate` of its prompt alone (copy i of seed s: seed s + i)."""
    model = make(kind)
    engine = engine_of(model, mode=mode)
    joins = []
    admit = engine.decoder.admit

    def spy(ids, lengths, copies):
        joins.append(engine.decoder.active)  # sequences already decoding when these join
        return admit(ids, lengths, copies)

    engine.decoder.admit = spy
    prompts = [[3, 1, 4], [1] * 16, list(range(40, 77)), [9], list(range(5, 25)), [7] * 33]
    requests = []
    for i, p in enumerate(prompts):
        requests.append(Request(p, 12 + 5 * i))
        sampled = SamplingParams(temperature=1.0, top_k=5 if i % 2 else None,
                                 top_p=0.9 if i % 3 else None, seed=i)
        requests.append(Request(p[::-1], 9, sampled, n=2, stream=i % 2 == 0))
    for r, outputs in zip(requests, serve(engine, requests), strict=True):
        got = sequences(outputs)
        assert sorted(got) == list(range(r.n))
        for copy, ids in got.items():
            s = r.sampling
            alone = model.generate([r.prompt], r.max_tokens, mode=mode, temperature=s.temperature,
                                   top_k=s.top_k, top_p=s.top_p,
                                   seed=None if s.seed is None else s.seed + copy)[0]
            assert ids == alone, (r.prompt, copy)
    assert engine.peak_running == 3
    assert any(joins), "no request joined a running batch"
    assert engine.decoder.active == 0 and not engine.rows


def test_stop_strings_eos_and_logprobs(engine_of):
    model = make("photon-B")
    tok = Tokenizer.bytes()
    engine = engine_of(model)
    prompt = list(b"Hello")
    (greedy,), = serve(engine, [Request(prompt, 40, logprobs=2)])
    full = model.generate([prompt], 40, return_logits=True)
    ids, logits = full[0][0], full[1][0]
    assert greedy.token_ids == ids and greedy.finish_reason == "length"
    logp = logits.log_softmax(-1)
    chosen = logp.gather(-1, torch.tensor(ids)[:, None])[:, 0]
    assert [lp.logprob for lp in greedy.logprobs] == pytest.approx(chosen.tolist(), abs=1e-4)
    assert all(len(lp.top) <= 2 and max(lp.top.values()) == pytest.approx(lp.logprob, abs=1e-4)
               for lp in greedy.logprobs)  # greedy picks the most likely token
    text = tok.decode(ids)
    assert greedy.text == text
    stop = next(text[j:j + 2] for j in range(8, len(text)) if "\ufffd" not in text[j:j + 2])
    cut = text.index(stop)
    (stopped,), = serve(engine, [Request(prompt, 40, stop=(stop,))])
    assert stopped.text == text[:cut] and stopped.finish_reason == "stop"
    eos = ids[7]  # pretend a token of the output is the end of text
    engine.eos_id = eos
    (ended,), = serve(engine, [Request(prompt, 40)])
    assert ended.token_ids == ids[:ids.index(eos)] and ended.finish_reason == "stop"
    (ignored,), = serve(engine, [Request(prompt, 40, ignore_eos=True)])
    assert ignored.token_ids == ids


def test_cancel_frees_the_slot(engine_of):
    model = make("vanilla", max_seq_len=4096)
    engine = engine_of(model, slots=1, max_len=4096)
    started = threading.Event()
    long = Request([1, 2, 3], 4000, stream=True, on_output=lambda o: started.set())
    engine.submit([long])
    assert started.wait(30)
    engine.cancel([long])
    (short,), = serve(engine, [Request([4, 5], 5)])  # only runs if the slot was freed
    assert short.finish_reason == "length"
    assert engine.metrics.registry.get_sample_value("photon_cancelled_sequences_total") == 1


def test_a_failing_step_is_answered_and_the_engine_recovers(engine_of, monkeypatch):
    model = make("photon-B")
    engine = engine_of(model)
    step = engine.decoder.step
    monkeypatch.setattr(engine.decoder, "step", lambda *a: 1 / 0)
    (failed,), = serve(engine, [Request([1, 2], 5)])
    assert "division by zero" in failed.error
    monkeypatch.setattr(engine.decoder, "step", step)  # the engine built a fresh decoder
    (ok,), = serve(engine, [Request([1, 2], 5)])
    assert ok.token_ids == model.generate([[1, 2]], 5)[0]


def test_drain_answers_what_is_left(engine_of):
    model = make("vanilla", max_seq_len=4096)
    engine = engine_of(model, slots=1, max_len=4096)
    started = threading.Event()
    outputs = []
    running = Request([1], 4000, stream=True,
                      on_output=lambda o: (started.set(), outputs.append(o)))
    waiting = Request([2], 5, on_output=outputs.append)
    engine.submit([running, waiting])
    assert started.wait(30)
    engine.drain(0.0)
    with pytest.raises(ShuttingDownError):
        engine.submit([Request([3], 5)])
    engine.shutdown()
    errors = [o for o in outputs if o.error]
    assert len(errors) == 2 and all("shutting down" in o.error for o in errors)


def test_slots_follow_the_memory_budget():
    """Slots = what the budget holds at the per-sequence memory photon bench measures:
    PHOTON's small caches fit many more sequences than the flat model's."""
    budget = 0.05
    found = {}
    for kind, mode in [("vanilla", "hiergen"), ("photon-B", "hiergen"), ("photon-B", "recgen")]:
        model = make(kind)
        slots, per_slot, measured = slots_for_budget(model, mode, 256, budget)
        weights = sum(p.nbytes for p in model.parameters())
        assert measured and slots * per_slot <= budget * 2**30 - weights
        found[kind, mode] = slots
    assert found["photon-B", "recgen"] > found["photon-B", "hiergen"] > \
        4 * found["vanilla", "hiergen"]


def test_the_budget_is_checked_from_the_caches_size_before_measuring(monkeypatch):
    """A budget that cannot hold one sequence's caches is answered without measuring (the
    probe at batch 8 of a 150,000-token context took gigabytes for a 0.1 GiB budget), and
    the measuring runs only at batches the budget holds."""
    import photon.serve.engine as engine_mod
    from photon.inference.workload import analytic_cache_bytes, weight_bytes

    probed = []
    monkeypatch.setattr(engine_mod, "batch_for_budget",
                        lambda *a, batches, **kw: probed.append(batches) or (1, 1.0))
    model = make("vanilla")
    cache = analytic_cache_bytes(model, "hiergen", 150_000, torch.float32)
    def budget(sequences: float) -> float:  # GiB of the weights and these caches
        return (weight_bytes(model) + sequences * cache) / 2**30

    assert slots_for_budget(model, "hiergen", 150_000, budget(0.5)) == (0, cache, False)
    assert slots_for_budget(model, "hiergen", 150_000, budget(1.5)) == (1, cache, False)
    assert probed == []
    assert slots_for_budget(model, "hiergen", 150_000, budget(3.5))[2] and probed == [(1, 3)]


def test_kv_cache_rows_share_memory_and_copy():
    cache = KVCache(2, 4, 2, 4, 10, "cpu", torch.float32)
    view = cache.rows(1, 3)
    view.prepare(3, torch.device("cpu"))
    view.update(0, torch.ones(2, 2, 3, 4), torch.ones(2, 2, 3, 4))
    view.advance(3)
    assert cache.lengths.tolist() == [0, 3, 3, 0]
    assert cache.k[0, 1:3, :, :3].eq(1).all() and cache.k[0, [0, 3]].eq(0).all()
    cache.copy_rows([2], [0])
    assert cache.lengths.tolist() == [3, 3, 3, 0] and cache.k[0, 0, :, :3].eq(1).all()
    view.reset()
    assert cache.lengths.tolist() == [3, 0, 0, 0]


def test_requests_that_cannot_run_are_refused(engine_of):
    engine = engine_of(make("vanilla"), slots=2, max_len=32)
    for bad in (Request([], 5), Request([256], 5), Request([1] * 30, 3), Request([1], 0),
                Request([1], 5, n=3)):
        with pytest.raises(InputError):
            engine.submit([bad])
    (ok,), = serve(engine, [Request([1] * 29, 3)])  # exactly fills a sequence
    assert len(ok.token_ids) == 3


def test_the_queue_limit_counts_only_requests_that_wait_for_a_slot():
    """Requests that free slots take at the next step boundary are not queued: with 2 free
    slots and --max-queue 1, three requests are accepted (two will run, one waits) and the
    fourth is refused. The engine is not started, so nothing is admitted meanwhile."""
    engine = Engine(make("vanilla"), Tokenizer.bytes(), slots=2, max_len=32, max_queue=1)
    engine.submit([Request([1], 3), Request([2], 3)])
    engine.submit([Request([3], 3)])
    with pytest.raises(QueueFullError, match="2 slots free, at most 1 may wait"):
        engine.submit([Request([4], 3)])
    assert len(engine.waiting) == 3


def test_a_failing_loop_answers_everyone_and_stops(monkeypatch):
    """A failure of the loop itself (not of a step, which is answered and survived): every
    waiting request is answered with the error, no new one is taken, and run() raises."""
    engine = Engine(make("vanilla"), Tokenizer.bytes(), slots=2, max_len=32)
    answers = []
    requests = [Request([1], 3, on_output=answers.append) for _ in range(3)]
    engine.submit(requests)

    def broken() -> list[Request]:
        raise MemoryError("no memory")

    monkeypatch.setattr(engine, "_next_joining", broken)
    with pytest.raises(MemoryError):
        engine.run()
    assert [a.error for a in answers] == ["internal error: MemoryError('no memory')"] * 3
    with pytest.raises(ShuttingDownError):
        engine.submit([Request([1], 3)])


def test_admit_refuses_more_than_the_free_slots():
    model = make("photon-B")
    engine = Engine(model, Tokenizer.bytes(), slots=2, max_len=64)
    with pytest.raises(CacheFullError, match="free slots"):
        engine.decoder.admit(torch.ones(1, 3, dtype=torch.long), torch.tensor([3]), [3])


@pytest.mark.parametrize("stop", [(), ("lo W",), ("é", "xyz"), ("✓",)])
def test_text_stream_pieces_join_to_the_final_text(stop):
    tok = Tokenizer.bytes()
    text = "Hello World, héllo wörld ✓ done"
    ids = tok.encode(text)
    stream = TextStream(tok, stop)
    pieces, kept = [], 0
    for i in range(0, len(ids), 3):  # three tokens per step, as a meta-context would give
        kept += stream.add(ids[i:i + 3])
        pieces.append(stream.take())
        assert "\ufffd" not in pieces[-1]  # never half a character
        if stream.stopped:
            break
    pieces.append(stream.take(final=True))
    found = [s for s in stop if s in text]
    if found:
        first = min(found, key=text.index)
        text = text[:text.index(first)]
        assert kept == len(tok.encode(text + first))  # up to the token that completes it
    else:
        assert kept == len(ids)
    assert "".join(pieces) == stream.text == text


def test_text_stream_equals_decode_of_any_ids():
    """Whatever the tokens (invalid UTF-8 included), the streamed text is `decode` of all."""
    bpe = Tokenizer.train_bpe(["héllo wörld, ✓ done; " * 30], vocab_size=290)
    rng = torch.Generator().manual_seed(0)
    for tok in (Tokenizer.bytes(), bpe):
        for _ in range(50):
            ids = torch.randint(0, tok.vocab_size, (30,), generator=rng).tolist()
            stream, pieces = TextStream(tok), []
            for i in range(0, 30, 4):
                stream.add(ids[i:i + 4])
                pieces.append(stream.take())
            pieces.append(stream.take(final=True))
            assert "".join(pieces) == tok.decode(ids)


@pytest.mark.parametrize("kind", ["vanilla", "photon-B"])
def test_a_request_failing_inside_a_step_fails_alone(kind, engine_of, monkeypatch):
    """A request whose sampling breaks inside a decode step is answered with an error on
    every one of its sequences; the requests decoded in the same batch go on and produce
    exactly the text they would have alone."""
    model = make(kind)
    engine = engine_of(model, slots=5)
    own_sampler = BatchSampler.own_sampler

    def breaking(self, params, copy):
        if params.seed == 666:
            def broken(logits):
                raise RuntimeError("broken sampler")
            return broken
        return own_sampler(self, params, copy)

    monkeypatch.setattr(BatchSampler, "own_sampler", breaking)
    seeded = SamplingParams(temperature=1.0, seed=5)
    good = [Request([1, 2, 3], 40), Request([5] * 7, 40, sampling=seeded)]
    bad = Request([4, 4], 40, n=2, sampling=SamplingParams(temperature=1.0, seed=666))
    first, failed, second = serve(engine, [good[0], bad, good[1]])
    assert sorted(o.index for o in failed if o.error) == [0, 1]
    assert all("broken sampler" in o.error for o in failed if o.error)
    assert sequences(first)[0] == model.generate([[1, 2, 3]], 40)[0]
    assert sequences(second)[0] == model.generate([[5] * 7], 40, temperature=1.0, seed=5)[0]
    (again,), = serve(engine, [Request([1, 2, 3], 40)])  # the engine is healthy afterwards
    assert again.token_ids == sequences(first)[0]


@pytest.mark.parametrize("params", [dict(temperature=1e-40), dict(temperature=1.0, top_p=1e-300),
                                    dict(temperature=1.0, seed=2**64 - 1)])
def test_extreme_sampling_values_decode_next_to_others(params, engine_of):
    """Values that pass the schema and once broke a step (a temperature or top_p below
    float32's range, a seed whose next copy overflows) decode beside other requests."""
    model = make("photon-B")
    engine = engine_of(model, slots=4)
    other = Request([1, 2, 3], 30)
    odd = Request([7, 7], 30, n=2, sampling=SamplingParams(**params))
    done, odd_out = serve(engine, [other, odd])
    assert not any(o.error for o in done + odd_out)
    assert sequences(done)[0] == model.generate([[1, 2, 3]], 30)[0]


@pytest.mark.parametrize("bad", [dict(seed=2**64), dict(seed=-1), dict(temperature=float("nan")),
                                 dict(top_p=0.0), dict(top_k=0)])
def test_sampling_settings_are_checked_on_the_request_side(bad):
    with pytest.raises(InputError):
        SamplingParams(**{"temperature": 1.0, **bad})


def test_a_small_request_behind_a_huge_one_starts_at_once(engine_of):
    """Fair admission: a call of many prompts holds at most 3 of the 4 slots (max_share
    0.75), so a small request sent after it starts at the next step and ends first."""
    engine = engine_of(make("vanilla"), slots=4, max_len=64)
    finished = []

    def record(name):
        return lambda output: finished.append(name) if output.finish_reason else None

    big = [Request([1, 2], 40, ignore_eos=True, group="big", on_output=record(f"big{i}"))
           for i in range(8)]
    engine.submit(big)
    small = Request([3], 4, ignore_eos=True, on_output=record("small"))
    engine.submit([small])
    deadline = time.monotonic() + 60
    while len(finished) < 9 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(finished) == 9 and finished[0] == "small", finished
