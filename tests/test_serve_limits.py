"""What one request may ask of `photon serve`, checked in process (the ASGI app over a running
engine): body size, sequences, stop strings, sampling values, Unicode, authentication, and
that parsing and tokenizing never hold up the event loop."""

import asyncio
import json
import threading

import httpx
import pytest

from photon.data.tokenizer import Tokenizer
from photon.serve.api import Limits, create_app
from photon.serve.engine import Engine
from tests.conftest import make

KEY = "k"
AUTH = {"Authorization": f"Bearer {KEY}"}


class GatedTokenizer:
    """The bytes tokenizer, whose encode of a long text waits until /health was answered
    (or 5 s): if tokenizing blocked the event loop, /health could not be answered first."""

    def __init__(self) -> None:
        self.inner, self.health_done, self.timed_out = Tokenizer.bytes(), threading.Event(), None

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, text: str) -> list[int]:
        if len(text) > 1000:
            self.timed_out = not self.health_done.wait(5)
        return self.inner.encode(text)


@pytest.fixture
def app_of():
    engines = []

    def build(tokenizer=None, **limits):
        engine = Engine(make("photon-B"), tokenizer or Tokenizer.bytes(), slots=4, max_len=128)
        engine.start()
        engines.append(engine)
        build.engine = engine
        app = create_app(engine, "m", KEY, start_engine=False, limits=Limits(**limits))
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test")

    yield build
    for engine in engines:
        engine.shutdown()


def post(client, body: dict | bytes, headers=AUTH):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post("/v1/completions", content=content,
                       headers={**headers, "Content-Type": "application/json"})


def run(coroutine):
    return asyncio.run(coroutine)


@pytest.mark.parametrize("body, status, param", [
    ({"prompt": "x" * 3000}, 413, None),  # over --max-body-mb (2,000 bytes here)
    ({"prompt": ["ab"] * 9}, 400, "prompt"),  # 9 prompts x 1 > 8 sequences
    ({"prompt": "ab", "n": 4}, 400, "n"),  # one request holds at most 3 of the 4 slots
    ({"prompt": "ab", "stop": ["z" * 300]}, 400, "stop"),
    ({"prompt": "ab", "seed": 2**64}, 400, None),
    ({"prompt": "ab", "seed": -1}, 400, None),
])
def test_requests_over_a_limit_are_refused_with_a_clear_error(app_of, body, status, param):
    async def go():
        async with app_of(max_body_bytes=2000, max_request_seqs=8) as client:
            return await post(client, {"model": "m", "max_tokens": 4, **body})
    r = run(go())
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and error["param"] == param


def test_a_lone_surrogate_is_a_400_not_a_500(app_of):
    raw = b'{"model": "m", "prompt": "ab\\ud800cd", "max_tokens": 4}'

    async def go():
        async with app_of() as client:
            return await post(client, raw), await post(client, {
                "model": "m", "prompt": "ab", "stop": ["\ud800"], "max_tokens": 4})
    for r in run(go()):
        assert r.status_code == 400, r.text


@pytest.mark.parametrize("extreme", [{"temperature": 1e-40}, {"top_p": 1e-300},
                                     {"seed": 2**64 - 1, "n": 2}])
def test_extreme_but_valid_sampling_values_complete(app_of, extreme):
    async def go():
        async with app_of() as client:
            return await post(client, {"model": "m", "prompt": "ab", "max_tokens": 8,
                                       "temperature": 1.0, **extreme})
    r = run(go())
    assert r.status_code == 200, r.text
    assert all(c["finish_reason"] == "length" for c in r.json()["choices"])


def test_the_bearer_scheme_is_case_insensitive_and_the_schema_needs_the_key(app_of):
    async def go():
        async with app_of() as client:
            lower = await post(client, {"model": "m", "prompt": "a", "max_tokens": 2},
                               headers={"Authorization": f"bearer {KEY}"})
            wrong = await post(client, {"model": "m", "prompt": "a", "max_tokens": 2},
                               headers={"Authorization": "bearer nope"})
            schema = await client.get("/openapi.json")
            return lower, wrong, schema
    lower, wrong, schema = run(go())
    assert lower.status_code == 200 and wrong.status_code == 401
    assert schema.status_code == 404


def test_tokenizing_a_large_request_does_not_hold_up_the_event_loop(app_of):
    """/health is answered while a large prompt is still being tokenized: the tokenizer
    waits for /health's answer, which a tokenizer running on the event loop would block."""
    tokenizer = GatedTokenizer()

    async def go():
        async with app_of(tokenizer) as client:
            big = asyncio.create_task(post(client, {"model": "m", "prompt": "y" * 100_000,
                                                    "max_tokens": 4}))
            await asyncio.sleep(0.05)  # the big request is read and in the tokenizer
            health = await client.get("/health")
            tokenizer.health_done.set()
            return health, await big
    health, big = run(go())
    assert health.status_code == 200 and tokenizer.timed_out is False
    assert big.status_code == 400 and "context length" in big.json()["error"]["message"]


def test_device_names_are_checked_once_for_every_verb():
    import torch

    from photon.device import resolve_device
    from photon.errors import InputError

    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(InputError, match="unknown device 'bogus'"):
        resolve_device("bogus")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_fuzzed_requests_never_500_and_never_disturb_a_running_one(app_of):
    """300 requests with random values for every field (a seeded generator): each is
    answered 200 or a 4xx, never 500; a request running meanwhile gets exactly the text it
    gets alone, and the server is healthy afterwards."""
    import random

    from photon.serve.schema import CompletionRequest

    rng = random.Random(19)
    values = [None, True, False, 0, 1, -1, 2, 3.5, 1e-300, -1e300, 2**64, 10**9, "", "x",
              "ab\ud800", "ROMEO:", [], [1], [0, 255], [[1, 2]], [-5], [300], ["a", "b"],
              [[]], {}, {"include_usage": True}, {"a": 1}, "majority", ["stop", "x" * 500]]
    fields = list(CompletionRequest.model_fields) + ["no_such_field"]
    model = make("photon-B")
    expected = Tokenizer.bytes().decode(model.generate([list(b"steady")], 60)[0])

    async def go():
        async with app_of() as client:
            steady = asyncio.create_task(post(client, {
                "model": "m", "prompt": "steady", "max_tokens": 60, "temperature": 0,
                "ignore_eos": True}))
            statuses = []
            for _ in range(300):
                body = {f: rng.choice(values) for f in rng.sample(fields, rng.randint(0, 6))}
                if rng.random() < 0.9:
                    body["model"] = "m"
                if rng.random() < 0.7:
                    body["prompt"] = rng.choice(["Hi", [1, 2, 3], ["a", "b"]])
                raw = json.dumps(body, allow_nan=False).encode("utf-8", "surrogatepass")
                statuses.append((await post(client, raw)).status_code)
            return statuses, await steady, await client.get("/health")
    statuses, steady, health = run(go())
    assert set(statuses) <= {200, 400, 413, 429}, sorted(set(statuses))
    assert statuses.count(200) > 20 and statuses.count(400) > 100
    assert steady.status_code == 200 and steady.json()["choices"][0]["text"] == expected
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_draining_answers_every_request_even_while_a_step_runs_long(app_of, monkeypatch):
    """Once the drain deadline has passed, a waiting request is answered 503 (a stream gets
    an error event) by the HTTP side itself, within half a second, even while the engine is
    stuck in a step that outlasts the time HTTP has left before its connections close."""
    import time

    async def go():
        async with app_of() as client:
            engine = app_of.engine
            step = engine.decoder.step
            monkeypatch.setattr(engine.decoder, "step",
                                lambda *a: time.sleep(3) or step(*a))
            plain = asyncio.create_task(post(client, {"model": "m", "prompt": "ab",
                                                      "max_tokens": 64}))
            streamed = asyncio.create_task(post(client, {"model": "m", "prompt": "cd",
                                                         "max_tokens": 64, "stream": True}))
            await asyncio.sleep(0.3)
            started = time.monotonic()
            engine.drain(0.2)
            answers = await asyncio.gather(plain, streamed)
            return answers, time.monotonic() - started
    (plain, streamed), took = run(go())
    assert took < 2.0, took
    assert plain.status_code == 503 and "shutting down" in plain.json()["error"]["message"]
    events = [line for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert "shutting down" in events[-2] and events[-1] == "data: [DONE]"
