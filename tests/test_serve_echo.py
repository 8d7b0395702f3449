"""Echo and prompt scoring in `photon serve`, and vLLM's tokenizer endpoints.

The prompt's log-probabilities come from a teacher-forced pass inside the engine's turns:
equal to the forward pass (HierGen and flat models, and RecGen servers by definition), in
OpenAI's completions shape (`token_logprobs[0]` null, `top_logprobs`, `text_offset`,
`tokens`), followed by the generated part. Scoring is admitted like prefill: it counts
against the prefill budget, holds no slot when nothing is generated, and one call's burst
of it neither blocks running sequences nor keeps other calls waiting. In process: the
engine alone, and the ASGI app over a running engine.
"""

import asyncio
import json
import threading
import time
from collections import Counter

import httpx
import pytest
import torch

from photon.data.tokenizer import EOS, Tokenizer
from photon.inference.scoring import sequential_logits
from photon.serve.api import Limits, create_app
from photon.serve.engine import Engine
from photon.serve.request import Request
from photon.serve.sampling import SamplingParams
from photon.serve.scheduler import Scheduler
from tests.models import make
from tests.serving import serve

KEY = "k"
AUTH = {"Authorization": f"Bearer {KEY}"}
TEXT = ("ROMEO. But soft, what light through yonder window breaks? It is the east, and "
        "Juliet is the sun.\nJULIET. O Romeo, Romeo, wherefore art thou Romeo?\n") * 8
BPE = Tokenizer.train_bpe([TEXT], vocab_size=300)
KINDS = [("vanilla", "hiergen"), ("block", "hiergen"), ("photon-B", "hiergen"),
         ("photon-A", "hiergen"), ("photon-B", "recgen"), ("photon-TF", "recgen"),
         ("photon-L3-A", "hiergen")]


def forward_logprobs(model, prompt: list[int]) -> torch.Tensor:
    """log p(token i | tokens < i) for i >= 1 from the forward pass of the prompt alone."""
    ids = torch.tensor([prompt])
    with torch.no_grad():
        logp = model(ids).logits[0, :-1].float().log_softmax(-1)
    return logp.gather(-1, ids[0, 1:, None])[:, 0]


# --- admission ---------------------------------------------------------------------------------

def scoring(length: int, group=None, max_tokens: int = 0) -> Request:
    return Request([1] * length, max_tokens, prompt_logprobs=0, group=group)


def test_scoring_holds_no_slot_and_passes_a_request_waiting_for_slots():
    scheduler = Scheduler(slots=8, max_queue=10, prefill_tokens=100, share_cap=4)
    waits = Request([1] * 4, 5, n=2)  # needs 2 slots, 1 is free
    score, behind, score2 = scoring(4), Request([1] * 4, 5), scoring(4)
    scheduler.add([waits, score, behind, score2], free_slots=1)
    # The scoring requests go past the one waiting for slots; `behind` keeps its place.
    assert scheduler.admit(free_slots=1, running=Counter(), on_cancelled=print) == \
        [score, score2]
    assert list(scheduler.waiting) == [waits, behind]
    assert scheduler.admit(free_slots=3, running=Counter(), on_cancelled=print) == \
        [waits, behind]


def test_the_prefill_budget_counts_each_pass():
    """Scoring is a pass of its own: a request that scores and generates costs its prompt
    twice; each pass is padded to its longest prompt."""
    scheduler = Scheduler(slots=8, max_queue=10, prefill_tokens=40, share_cap=8)
    both = [scoring(10, max_tokens=3) for _ in range(3)]  # 20 tokens each
    scheduler.add(both, free_slots=8)
    assert scheduler.admit(8, Counter(), print) == both[:2]
    scheduler = Scheduler(slots=8, max_queue=10, prefill_tokens=40, share_cap=8)
    long, short = scoring(20), [scoring(2) for _ in range(2)]  # padded: 3 x 20 > 40
    scheduler.add([long, *short], free_slots=8)
    assert scheduler.admit(8, Counter(), print) == [long, short[0]]


def test_a_burst_of_scoring_takes_its_share_of_the_budget_while_others_wait():
    scheduler = Scheduler(slots=8, max_queue=100, prefill_tokens=100, share_cap=8, share=0.5)
    burst = [scoring(20, group="burst") for _ in range(10)]
    other = Request([2] * 10, 5, group="other")
    scheduler.add([*burst, other], free_slots=8)
    # 50 of the 100 tokens for the burst while `other` waits; `other` joins at once.
    assert scheduler.admit(8, Counter(), print) == [*burst[:2], other]
    # Alone, the burst takes the whole budget.
    assert scheduler.admit(8, Counter(), print) == burst[2:7]


# --- the engine --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, mode", KINDS)
def test_echo_is_the_forward_pass_then_the_generated_part(kind, mode, engine_of):
    """Scoring only (max_tokens 0), one token (lm-eval's request) and more with n = 2:
    every prompt token's log-probability is the forward pass's, the first has none, the
    text is the prompt's; the generated part is what `generate` makes alone."""
    model = make(kind)
    engine = engine_of(model, mode=mode)
    prompts = [list(range(3, 40)), [5, 9, 100, 7], list(b"Hello, world")]
    sampled = SamplingParams(temperature=1.0, seed=4)
    requests = [Request(prompts[0], 0, logprobs=2, prompt_logprobs=2),
                Request(prompts[1], 1, logprobs=1, prompt_logprobs=1),
                Request(prompts[2], 9, sampled, n=2, logprobs=0, prompt_logprobs=0),
                Request(prompts[0], 5, logprobs=1)]  # not scored, decoded beside them
    answers = serve(engine, requests)
    for r, outputs in zip(requests[:3], answers[:3], strict=True):
        assert len(outputs) == r.n and all(o.finish_reason == "length" for o in outputs)
        expected = forward_logprobs(model, r.prompt)
        for copy, o in enumerate(sorted(outputs, key=lambda o: o.index)):
            echo = o.echo
            assert echo.text == Tokenizer.bytes().decode(r.prompt)
            assert echo.logprobs[0].logprob is None and echo.logprobs[0].top is None
            got = [lp.logprob for lp in echo.logprobs[1:]]
            assert got == pytest.approx(expected.tolist(), abs=1e-5)
            assert [lp.offset for lp in echo.logprobs] == list(range(len(r.prompt)))
            if r.prompt_logprobs:
                assert all(len(lp.top) == r.prompt_logprobs and
                           max(lp.top.values()) >= lp.logprob - 1e-6
                           for lp in echo.logprobs[1:])
            seed = None if r.sampling.seed is None else r.sampling.seed + copy
            alone = model.generate([r.prompt], r.max_tokens, mode=mode,
                                   temperature=r.sampling.temperature, seed=seed)[0] \
                if r.max_tokens else []
            assert o.token_ids == alone and len(o.logprobs) == r.max_tokens
    assert answers[3][0].echo is None
    assert engine.metrics.registry.get_sample_value("photon_scored_prompt_tokens_total") == \
        sum(len(r.prompt) for r in requests[:3])


@pytest.mark.parametrize("kind", ["photon-B", "photon-A"])
def test_a_recgen_server_scores_the_prompt_as_the_context(kind, engine_of):
    """RecGen's likelihood needs to know where the context ends. A server cannot know it,
    so echo scores the whole prompt as the context: the forward pass, which is RecGen's
    sequential likelihood with the whole prompt as its prompt. It is not RecGen's likelihood
    of a continuation after a shorter context (what `photon lm-eval mode=recgen` scores)."""
    model = make(kind)
    engine = engine_of(model, mode="recgen")
    prompt = list(range(10, 50))
    (answer,), = serve(engine, [Request(prompt, 0, logprobs=0, prompt_logprobs=0)])
    got = torch.tensor([lp.logprob for lp in answer.echo.logprobs[1:]])
    ids = torch.tensor([prompt])
    whole = sequential_logits(model, ids, len(prompt), "recgen")[0, :-1].log_softmax(-1)
    whole = whole.gather(-1, ids[0, 1:, None])[:, 0]
    assert torch.allclose(got, forward_logprobs(model, prompt), atol=1e-5)
    assert torch.allclose(got, whole, atol=1e-4)
    context = 20  # photon lm-eval's RecGen: tokens after position 20 predicted by RecGen
    split = sequential_logits(model, ids, context, "recgen")[0, :-1].log_softmax(-1)
    split = split.gather(-1, ids[0, 1:, None])[:, 0]
    P = model.config.meta_len
    after = slice((context // P + 1) * P - 1, None)  # predictions past the next boundary
    assert (got[after] - split[after]).abs().max() > 1e-3


def test_scoring_neither_blocks_generation_nor_keeps_other_calls_waiting(engine_of):
    """A burst of 12 scoring prompts in one call, sent while a sequence decodes and together
    with another call's generation request: the running sequence decodes at every turn of
    the burst, and the other call starts before the burst is through."""
    engine = engine_of(make("vanilla"), slots=2, prefill_tokens=64, max_share=0.5)
    events, lock, first = [], threading.Lock(), threading.Event()

    def note(tag):
        def on_output(output):
            with lock:
                events.append((tag, output))
            first.set()
        return on_output

    running = Request([1, 2, 3], 100, stream=True, ignore_eos=True, on_output=note("running"))
    engine.submit([running])
    assert first.wait(30)
    burst = [Request([5] * 16, 0, logprobs=0, prompt_logprobs=0, group="burst",
                     on_output=note("score")) for _ in range(12)]
    other = Request([7] * 8, 4, stream=True, ignore_eos=True, group="other",
                    on_output=note("other"))
    engine.submit([*burst, other])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with lock:
            tags = [tag for tag, _ in events]
        if tags.count("score") == 12 and any(o.finish_reason for t, o in events
                                             if t == "other"):
            break
        time.sleep(0.01)
    first_score = tags.index("score")
    last_score = len(tags) - 1 - tags[::-1].index("score")
    assert tags.index("other") < last_score, tags
    assert tags[first_score:last_score].count("running") >= 2, tags
    assert not any(o.finish_reason for t, o in events if t == "running")  # still running
    engine.cancel([running])


def test_scoring_is_not_starved_by_full_slots(engine_of):
    """Every slot busy and a generation request waiting for one: a scoring request sent
    after it is answered while the running sequence goes on."""
    engine = engine_of(make("vanilla", max_seq_len=4096), slots=1, max_len=4096)
    started, outputs = threading.Event(), []
    running = Request([1], 4000, stream=True, ignore_eos=True,
                      on_output=lambda o: (outputs.append(o), started.set()))
    engine.submit([running])
    assert started.wait(30)
    waiting = Request([2], 5)
    engine.submit([waiting])
    (scored,), = serve(engine, [Request([3, 4, 5], 0, logprobs=0, prompt_logprobs=0)])
    assert scored.finish_reason == "length" and len(scored.echo.logprobs) == 3
    assert not any(o.finish_reason for o in outputs)
    engine.cancel([running, waiting])


def test_the_eos_that_ends_a_sequence_has_a_log_probability(engine_of):
    """As in OpenAI's and vLLM's answers: a client asking for one token always gets one
    log-probability (lm-eval reads the prompt's as all but the last)."""
    model = make("photon-B")
    engine = engine_of(model)
    prompt = list(b"Hello")
    ids = model.generate([prompt], 10)[0]
    engine.eos_id = ids[0]  # pretend the first generated token is the end of text
    (out,), = serve(engine, [Request(prompt, 1, logprobs=1, prompt_logprobs=1)])
    assert out.token_ids == [] and out.finish_reason == "stop"
    assert len(out.echo.logprobs) == len(prompt) and len(out.logprobs) == 1
    assert out.logprobs[0].offset == 0 and out.logprobs[0].logprob <= 0


# --- HTTP, in process --------------------------------------------------------------------------

@pytest.fixture
def app_of():
    engines = []

    def build(model=None, tokenizer=BPE, mode="hiergen", max_len=128):
        engine = Engine(model or make("photon-B", vocab_size=tokenizer.vocab_size), tokenizer,
                        slots=4, max_len=max_len, mode=mode)
        engine.start()
        engines.append(engine)
        build.engine = engine
        app = create_app(engine, "m", KEY, start_engine=False, limits=Limits())
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test")

    yield build
    for engine in engines:
        engine.shutdown()


def call(app, requests: list[tuple], headers=AUTH) -> list:
    """Send (method, path, json[, headers]) requests in order; the responses."""
    async def go():
        async with app as client:
            return [await client.request(r[0], r[1], json=r[2],
                                         headers=r[3] if len(r) > 3 else headers)
                    for r in requests]
    return asyncio.run(go())


def completion(**body) -> tuple[str, str, dict]:
    return "POST", "/v1/completions", {"model": "m", "temperature": 0, **body}


def test_echo_in_openais_shape(app_of):
    """lm-eval's request (token ids, max_tokens 1, logprobs 1, echo) and a string prompt
    with max_tokens 0 and 6: token_logprobs null first, top_logprobs null first, text
    offsets into the whole text, tokens that spell it; the prompt part, then the
    generated part."""
    model = make("photon-B", vocab_size=BPE.vocab_size)
    prompt = "ROMEO. But soft, what light"
    ids = BPE.encode(prompt)
    lm_eval, zero, six, plain = call(app_of(model), [
        completion(prompt=[ids, ids[:5]], max_tokens=1, logprobs=1, echo=True, seed=1234),
        completion(prompt=prompt, max_tokens=0, logprobs=2, echo=True),
        completion(prompt=prompt, max_tokens=6, logprobs=1, echo=True, ignore_eos=True),
        completion(prompt=prompt, max_tokens=6, logprobs=1, ignore_eos=True)])
    for r in (lm_eval, zero, six, plain):
        assert r.status_code == 200, r.text
    expected = forward_logprobs(model, ids).tolist()
    first, short = lm_eval.json()["choices"]
    lp = first["logprobs"]
    assert len(lp["token_logprobs"]) == len(ids) + 1 and lp["token_logprobs"][0] is None
    assert lp["token_logprobs"][1:-1] == pytest.approx(expected, abs=1e-5)
    assert lp["top_logprobs"][0] is None and all(len(t) == 1 for t in lp["top_logprobs"][1:])
    assert short["logprobs"]["token_logprobs"][1:-1] == pytest.approx(expected[:4], abs=1e-5)
    assert first["text"].startswith(prompt) and "".join(lp["tokens"][:len(ids)]) == prompt
    body = zero.json()
    lp = body["choices"][0]["logprobs"]
    assert body["choices"][0]["text"] == prompt and body["choices"][0]["finish_reason"] == \
        "length"
    assert lp["token_logprobs"][1:] == pytest.approx(expected, abs=1e-5)
    assert [prompt[o:o + len(t)] for o, t in zip(lp["text_offset"], lp["tokens"],
                                                 strict=True)] == lp["tokens"]
    assert all(len(t) == 2 for t in lp["top_logprobs"][1:])
    assert body["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 0,
                             "total_tokens": len(ids)}
    echoed, alone = six.json()["choices"][0], plain.json()["choices"][0]
    assert echoed["text"] == prompt + alone["text"]
    lp, gen = echoed["logprobs"], alone["logprobs"]
    assert lp["tokens"] == [BPE.decode([t]) for t in ids] + gen["tokens"]
    assert lp["token_logprobs"][len(ids):] == gen["token_logprobs"]
    assert lp["text_offset"][len(ids):] == [o + len(prompt) for o in gen["text_offset"]]
    assert six.json()["usage"]["completion_tokens"] == 6


def test_echo_streams_the_prompt_first(app_of):
    prompt = "JULIET. O Romeo"
    streamed, whole = call(app_of(), [
        completion(prompt=prompt, max_tokens=20, logprobs=0, echo=True, stream=True),
        completion(prompt=prompt, max_tokens=20, logprobs=0, echo=True)])
    chunks = [json.loads(e[6:]) for e in streamed.text.split("\n\n")
              if e.startswith("data: {")]
    assert chunks[0]["choices"][0]["text"].startswith(prompt)
    assert "".join(c["choices"][0]["text"] for c in chunks) == \
        whole.json()["choices"][0]["text"]
    offsets = [o for c in chunks for o in c["choices"][0]["logprobs"]["text_offset"]]
    assert offsets == whole.json()["choices"][0]["logprobs"]["text_offset"]


@pytest.mark.parametrize("body, param, code", [
    ({"echo": True, "max_tokens": 4}, "echo", None),  # echo without logprobs
    ({"max_tokens": 0, "logprobs": 1}, "max_tokens", None),  # 0 without echo
    ({"echo": True, "logprobs": 1, "max_tokens": -1}, "max_tokens", None),
    ({"echo": True, "logprobs": 1, "max_tokens": 0, "prompt": "x" * 129}, "prompt",
     "context_length_exceeded"),
    ({"echo": True, "logprobs": 1, "max_tokens": 1, "prompt": "x" * 128}, "prompt",
     "context_length_exceeded"),
    ({"echo": True, "logprobs": 6}, "logprobs", None),
    ({"echo": True, "logprobs": 1, "suffix": "x"}, "suffix", None),
    ({"echo": True, "logprobs": 1, "presence_penalty": 0.5}, "presence_penalty", None),
    ({"echo": True, "logprobs": 1, "frequency_penalty": 0.5}, "frequency_penalty", None),
    ({"echo": True, "logprobs": 1, "logit_bias": {"1": 2.0}}, "logit_bias", None),
    ({"echo": True, "logprobs": 1, "prompt_logprobs": 1}, "prompt_logprobs", None),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", None),
    ({"stop": ["a", "b", "c", "d", EOS, ""]}, "stop", None),
])
def test_what_echo_cannot_do_is_a_400_naming_the_field(app_of, body, param, code):
    (r,) = call(app_of(tokenizer=Tokenizer.bytes()), [completion(**{"prompt": "Hi", **body})])
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["message"] and error["code"] == code
    if code:
        assert "maximum context length is 128 tokens" in error["message"]


def test_the_stop_lists_lm_eval_sends_are_accepted(app_of):
    """lm-eval appends the end-of-text string to a task's stop list: it stands for the end
    of text, at which every sequence stops, so it does not count against the 4 strings, and
    with ignore_eos it still ends the sequence there."""
    model = make("photon-B", vocab_size=BPE.vocab_size)
    app = app_of(model)
    ids = model.generate([BPE.encode("ROMEO.")], 12)[0]
    app_of.engine.eos_id = ids[5]  # pretend the sixth generated token is the end of text
    cut = ids.index(ids[5])
    lm_eval, four, ignored, ended = call(app, [
        completion(prompt="ROMEO.", max_tokens=12, stop=["\n\n", EOS]),
        completion(prompt="ROMEO.", max_tokens=12, stop=["zq", "qz", "xj", "jx", EOS]),
        completion(prompt="ROMEO.", max_tokens=12, ignore_eos=True),
        completion(prompt="ROMEO.", max_tokens=12, ignore_eos=True, stop=[EOS])])
    for r in (lm_eval, four, ignored, ended):
        assert r.status_code == 200, r.text
    assert ignored.json()["usage"]["completion_tokens"] == 12
    assert ended.json()["usage"]["completion_tokens"] == cut
    assert ended.json()["choices"][0]["finish_reason"] == "stop"


def test_tokenizer_endpoints_in_vllms_shapes(app_of):
    text = "ROMEO. But soft" + EOS + "JULIET."
    ids = BPE.encode(text)
    assert BPE.eos_id in ids  # the end-of-text string is the end-of-text token
    no_key = [(method, path, body, {}) for method, path, body in (
        ("POST", "/tokenize", {"prompt": "a"}), ("POST", "/detokenize", {"tokens": [1]}),
        ("GET", "/tokenizer_info", None))]
    tokenized, strs, detok, info, wrong_model, chat, bad_id, *refused = call(app_of(), [
        ("POST", "/tokenize", {"model": "m", "prompt": text, "add_special_tokens": False}),
        ("POST", "/tokenize", {"prompt": "ROMEO", "return_token_strs": True}),
        ("POST", "/detokenize", {"model": "m", "tokens": BPE.encode("ROMEO. But")}),
        ("GET", "/tokenizer_info", None),
        ("POST", "/tokenize", {"model": "x", "prompt": "a"}),
        ("POST", "/tokenize", {"messages": [{"role": "user", "content": "a"}]}),
        ("POST", "/detokenize", {"tokens": [BPE.vocab_size]}), *no_key])
    assert tokenized.json() == {"count": len(ids), "max_model_len": 128, "tokens": ids,
                                "token_strs": None}
    assert "".join(strs.json()["token_strs"]) == "ROMEO"
    assert detok.json() == {"prompt": "ROMEO. But"}
    info = info.json()
    assert info["eos_token"] == EOS and info["bos_token"] is None
    assert info["model_max_length"] == 128 and info["tokenizer_class"]
    assert (wrong_model.status_code, wrong_model.json()["error"]["param"]) == (400, "model")
    assert (chat.status_code, chat.json()["error"]["param"]) == (400, "messages")
    assert (bad_id.status_code, bad_id.json()["error"]["param"]) == (400, "tokens")
    assert [r.status_code for r in refused] == [401] * 3
