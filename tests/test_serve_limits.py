"""What one request may ask of `photon serve`, checked in process (the ASGI app over a running
engine): body size, time and memory, sequences, stop strings, sampling values, Unicode,
authentication, every method on every path, and that parsing and tokenizing never hold up
the event loop."""

import asyncio
import json
import logging
import time

import httpx
import pytest

from photon.data.tokenizer import Tokenizer
from photon.serve.api import Limits, create_app
from photon.serve.body import SMALL_BODY
from photon.serve.engine import Engine
from tests.models import make

KEY = "k"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def app_of():
    """build(tokenizer=None, max_queue=2048, **limits): an httpx client of the app over a
    started engine (4 slots of 128 tokens); `build.app` and `build.engine` are the last
    built."""
    engines = []

    def build(tokenizer=None, max_queue=2048, **limits):
        tokenizer = tokenizer or Tokenizer.bytes()
        engine = Engine(make("photon-B", vocab_size=max(256, tokenizer.vocab_size)), tokenizer,
                        slots=4, max_len=128, max_queue=max_queue)
        engine.start()
        engines.append(engine)
        build.engine = engine
        build.app = create_app(engine, "m", KEY, start_engine=False, limits=Limits(**limits))
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=build.app),
                                 base_url="http://test")

    yield build
    for engine in engines:
        engine.shutdown()


BPE = Tokenizer.train_bpe(["the quick brown fox jumps over the lazy dog, "] * 20, 300)


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
    ({"prompt": "ab", "seed": 2**64}, 400, "seed"),
    ({"prompt": "ab", "seed": -1}, 400, "seed"),
])
def test_requests_over_a_limit_are_refused_with_a_clear_error(app_of, body, status, param):
    async def go():
        async with app_of(max_body_bytes=2000, max_request_seqs=8) as client:
            return await post(client, {"model": "m", "max_tokens": 4, **body})
    r = run(go())
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and error["param"] == param


def test_a_prompt_of_no_token_ids_is_a_400(app_of):
    """Empty text starts from the end-of-text token; an empty list of token ids is a
    mistake, not that prompt."""
    async def go():
        async with app_of(BPE) as client:
            return [await post(client, {"model": "m", "prompt": prompt, "max_tokens": 2})
                    for prompt in ([[]], [[1], []], "", [""])]
    *empty_ids, empty_text, empty_texts = run(go())
    for r in empty_ids:
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", r.text
    assert empty_text.status_code == empty_texts.status_code == 200


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


# --- what a request costs before it is refused


class CountingTokenizer:
    """A tokenizer that records the length of every text it is asked to encode, by
    `encode`, `encode_batch` or its HF backend."""

    def __init__(self, inner: Tokenizer) -> None:
        self.inner, self.encoded = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, text: str) -> list[int]:
        self.encoded.append(len(text))
        return self.inner.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        self.encoded += map(len, texts)
        return self.inner.encode_batch(texts)

    @property
    def backend(self):
        return CountingBackend(self.inner.backend, self.encoded)


class CountingBackend:
    def __init__(self, inner, encoded: list[int]) -> None:
        self.inner, self.encoded = inner, encoded

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, text: str, *args, **kwargs):
        self.encoded.append(len(text))
        return self.inner.encode(text, *args, **kwargs)

    def encode_batch(self, texts: list[str], *args, **kwargs):
        self.encoded += map(len, texts)
        return self.inner.encode_batch(texts, *args, **kwargs)


@pytest.mark.parametrize("kind", ["bytes", "bpe"])
def test_text_that_cannot_fit_is_refused_before_it_is_tokenized(app_of, kind):
    """A prompt longer in bytes than the context's tokens can spell (their number times the
    longest token's bytes) is a 400 without being tokenized; text that fits is tokenized as
    Tokenizer.encode does. (/tokenize takes text of any length, as vLLM's: lm-eval
    tokenizes whole documents there.)"""
    tokenizer = CountingTokenizer(Tokenizer.bytes() if kind == "bytes" else BPE)
    fitting = "the quick brown fox <|endoftext|> jumps"

    async def go():
        async with app_of(tokenizer) as client:
            long = await post(client, {"model": "m", "prompt": ["ok", "y" * 100_000],
                                       "max_tokens": 4})
            fits = await client.post("/tokenize", json={"prompt": fitting}, headers=AUTH)
            return long, fits
    long, fits = run(go())
    assert long.status_code == 400
    assert long.json()["error"]["code"] == "context_length_exceeded"
    assert "at least" in long.json()["error"]["message"]
    assert fits.status_code == 200 and fits.json()["tokens"] == tokenizer.inner.encode(fitting)
    assert tokenizer.encoded and max(tokenizer.encoded) < 1000  # only the short texts


@pytest.mark.parametrize("prompt", ["text", "token ids", "/tokenize"])
def test_a_large_prompt_does_not_stall_the_server(app_of, prompt):
    """While a large prompt is parsed and tokenized on its worker thread, /health keeps
    answering: text whose length gives no bound (a tokenizer with a normalizer) is
    tokenized by a call that releases the GIL (HF's `encode` holds it: seconds here), at
    /v1/completions and at /tokenize (which takes text of any length), and a long list of
    token ids is parsed in one pass (pydantic's union of the prompt's four shapes took
    seconds, the GIL held). /health's slowest answer is measured against the whole
    request's time, which a held GIL (the old code) fills alone, whatever the machine's
    load."""
    from tokenizers import normalizers

    path, extra, status = "/v1/completions", {"max_tokens": 4}, 400
    hf = Tokenizer.train_bpe(["the quick brown fox "] * 20, 300).backend
    hf.normalizer = normalizers.NFC()
    tokenizer, value = Tokenizer(hf, kind="hf"), "the quick brown fox " * 75_000
    if prompt == "token ids":
        tokenizer, value = Tokenizer.bytes(), [1] * 1_500_000
    elif prompt == "/tokenize":
        path, extra, status = prompt, {}, 200

    async def go():
        async with app_of(tokenizer) as client:
            sent = time.monotonic()
            big = asyncio.create_task(client.post(path, headers=AUTH, json={
                "model": "m", "prompt": value, **extra}))
            worst, last = 0.0, time.monotonic()
            while not big.done():  # the stall falls anywhere: between answers too
                assert (await client.get("/health")).status_code == 200
                await asyncio.sleep(0.01)
                worst, last = max(worst, time.monotonic() - last), time.monotonic()
            return worst, time.monotonic() - sent, await big
    worst, took, big = run(go())
    assert big.status_code == status, big.text[:300]
    if status == 400:
        assert big.json()["error"]["code"] == "context_length_exceeded"
    else:
        assert big.json()["count"] == len(big.json()["tokens"]) > 100_000
    assert worst < max(0.5, 0.35 * took), (worst, took)


def asgi_receive(chunks: list[bytes], end: asyncio.Event | None = None, leave: bool = False):
    """An ASGI `receive` that sends `chunks` of a body, then (once `end` is set, if given)
    its end, or with `leave` a disconnect; later calls wait for ever."""
    messages = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]

    async def receive() -> dict:
        if messages:
            return messages.pop(0)
        if receive.ended:
            await asyncio.Event().wait()
        if end is not None:
            await end.wait()
        receive.ended = True
        return {"type": "http.disconnect"} if leave else \
            {"type": "http.request", "body": b"", "more_body": False}
    receive.ended = False
    return receive


async def asgi_post(app, path: str, receive) -> tuple[int, dict[str, str]]:
    """POST straight to the ASGI app: the status and headers it answers with."""
    answer = {}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            answer.update(status=message["status"], headers={
                k.decode(): v.decode() for k, v in message.get("headers", [])})

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
             "server": ("test", 80), "state": {},
             "headers": [(b"authorization", f"Bearer {KEY}".encode())]}
    await app(scope, receive, send)
    return answer["status"], answer["headers"]


def test_bodies_in_flight_share_a_memory_bound(app_of):
    """Beyond the first SMALL_BODY bytes of each (what uvicorn buffers of any connection),
    bodies share a bound: of two bodies stalled 2,500 bytes beyond it, under a bound of
    4,000, the second is answered 503 with Retry-After at once instead of being held, while
    a small body is read as ever; once the first is done its bytes are free for the next."""
    big = b"x" * (SMALL_BODY + 2500)
    app_of(max_body_bytes=SMALL_BODY + 3000, max_bodies_bytes=4000)

    async def go():
        release = asyncio.Event()
        first = asyncio.create_task(asgi_post(app_of.app, "/v1/completions",
                                              asgi_receive([big], release)))
        await asyncio.sleep(0.1)
        second = await asyncio.wait_for(asgi_post(
            app_of.app, "/tokenize", asgi_receive([big], asyncio.Event())), 10)
        small = await asgi_post(app_of.app, "/tokenize", asgi_receive([b"y" * 1000]))
        release.set()
        first = await first
        third = await asgi_post(app_of.app, "/tokenize", asgi_receive([big]))
        return first, second, small, third
    first, second, small, third = run(go())
    assert second[0] == 503 and second[1]["retry-after"] == "1"
    assert first[0] == small[0] == third[0] == 400  # read whole: not JSON


def test_a_body_that_arrives_too_slowly_is_answered_408_and_closed(app_of):
    app_of(body_timeout=0.3)

    async def go():
        started = time.monotonic()
        answer = await asyncio.wait_for(asgi_post(
            app_of.app, "/v1/completions", asgi_receive([b'{"mo'], asyncio.Event())), 10)
        return answer, time.monotonic() - started
    (status, headers), took = run(go())
    assert status == 408 and headers["connection"] == "close" and took < 2


def test_a_client_that_leaves_mid_upload_is_a_499_with_one_log_line(app_of, caplog):
    """Aborting an upload is the client's doing: counted as 499 in /metrics, one warning
    line, no traceback and no 500."""
    app_of()
    with caplog.at_level(logging.INFO):
        for path in ("/v1/completions", "/tokenize"):
            status, _ = run(asgi_post(app_of.app, path,
                                      asgi_receive([b'{"model": "m", "pro'], leave=True)))
            assert status == 499
    requests = app_of.engine.metrics.requests
    assert requests.labels("/v1/completions", "499")._value.get() == 1
    assert requests.labels("/tokenize", "499")._value.get() == 1
    assert not any(r.exc_info for r in caplog.records)
    lines = [r.getMessage() for r in caplog.records if "499" in r.getMessage()]
    assert len(lines) == 2 and all("\n" not in line for line in lines)


def test_a_request_that_can_never_fit_is_a_400_and_scoring_takes_no_queue_room(app_of):
    """4 slots and a queue of 2 can never hold 10 sequences at once: a 400 saying so, not a
    429 to retry. Ten prompts that are only scored (echo, max_tokens 0) hold no slot and
    need no room in the queue."""
    async def go():
        async with app_of(max_queue=2) as client:
            never = await post(client, {"model": "m", "prompt": [[1]] * 10, "max_tokens": 4})
            scored = await post(client, {"model": "m", "prompt": [[1, 2]] * 10,
                                         "max_tokens": 0, "echo": True, "logprobs": 0})
            return never, scored
    never, scored = run(go())
    assert never.status_code == 400 and never.json()["error"]["param"] == "prompt"
    assert "can ever hold" in never.json()["error"]["message"]
    assert scored.status_code == 200 and len(scored.json()["choices"]) == 10


def test_every_method_on_every_path_is_answered_never_500(app_of):
    """Every path of the app (and unknown ones) with every method, each with and without
    the key and a seeded random body: never a 500; errors in OpenAI's shape, 405 with Allow,
    HEAD without a body; HEAD /health and /metrics answer 200 as probes expect."""
    import random

    rng = random.Random(31)
    bodies = [b"", b"{}", b"{not json", b'{"model": "m", "prompt": "a", "max_tokens": 1}',
              b"\xff\xfe", b"[]", b'{"prompt": [[]]}']
    client = app_of()
    paths = sorted({r.path for r in app_of.app.routes}) + ["/", "/nope", "/v1/nope"]
    methods = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]

    async def go():
        answers = []
        async with client:
            for path in paths:
                for method in methods:
                    for headers in (AUTH, {}):
                        r = await client.request(method, path, content=rng.choice(bodies),
                                                 headers=headers)
                        answers.append((method, path, r))
        return answers
    answers = run(go())
    assert len(answers) == len(paths) * len(methods) * 2
    for method, path, r in answers:
        assert r.status_code < 500, (method, path, r.status_code, r.text)
        if method == "HEAD":
            assert r.content == b"", (path, r.content)
        elif r.status_code >= 400:
            assert r.json()["error"]["message"], (method, path, r.text)
        if r.status_code == 405:
            assert r.headers["allow"], (method, path)
    probes = {(m, p): r.status_code for m, p, r in answers if m == "HEAD"}
    assert probes["HEAD", "/health"] == probes["HEAD", "/metrics"] == 200
