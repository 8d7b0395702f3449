"""`photon serve` as a user runs it: a live server process on a free loopback port, driven
by the official `openai` client (and raw HTTP where the client would hide the wire)."""

import json
import signal
import socket
import threading
import time

import httpx
import openai
import pytest
import torch

from photon.checkpoint import save_checkpoint
from photon.cli import main as cli_main
from photon.cli.serve import serve_forever
from photon.data.tokenizer import Tokenizer
from photon.serve.engine import Engine
from photon.serve.loadtest import ServerProcess, run_load
from photon.serve.request import Request as EngineRequest
from tests.models import make

KEY = "test-key"
TOK = Tokenizer.bytes()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A PHOTON model (HierGen) behind 8 slots and an API key."""
    model = make("photon-B")
    ckpt = save_checkpoint(tmp_path_factory.mktemp("serve") / "ckpt", model, TOK)
    with ServerProcess(ckpt, "--max-batch", "8", "--api-key", KEY, "--model-name",
                       "tiny") as server:
        yield server, model


@pytest.fixture(scope="module")
def narrow(tmp_path_factory):
    """A flat model with a long context behind 2 slots and a queue of 1."""
    model = make("vanilla", max_seq_len=16384)
    ckpt = save_checkpoint(tmp_path_factory.mktemp("serve") / "flat", model, TOK)
    with ServerProcess(ckpt, "--max-batch", "2", "--max-queue", "1", "--drain-timeout",
                       "3") as server:
        yield server


def client(server, key=KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


def generate(model, prompt: str, n: int, **kw) -> str:
    return TOK.decode(model.generate([TOK.encode(prompt)], n, **kw)[0])


@pytest.mark.e2e
def test_completion_equals_generate(tiny):
    server, model = tiny
    r = client(server).completions.create(model="tiny", prompt="Hello", max_tokens=30,
                                          temperature=0)
    assert r.object == "text_completion" and r.model == "tiny" and len(r.choices) == 1
    assert r.choices[0].text == generate(model, "Hello", 30)
    assert r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (5, 30)


@pytest.mark.e2e
def test_stream_pieces_join_to_the_completion(tiny):
    server, _ = tiny
    kw = dict(model="tiny", prompt="To be, or", max_tokens=40, temperature=0)
    whole = client(server).completions.create(**kw).choices[0].text
    chunks = list(client(server).completions.create(**kw, stream=True,
                                                    stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert len([c for c in chunks if c.choices]) > 1  # several pieces, not one at the end
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 40
    raw = httpx.post(f"{server.url}/v1/completions", json={**kw, "stream": True},
                     headers={"Authorization": f"Bearer {KEY}"}).text
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"


@pytest.mark.e2e
def test_n_with_a_seed_samples_what_generate_samples(tiny):
    server, model = tiny
    kw = dict(model="tiny", prompt="Once", max_tokens=20, temperature=0.9, top_p=0.95,
              seed=11, n=3)
    r = client(server).completions.create(**kw)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert [c.text for c in r.choices] == [
        generate(model, "Once", 20, temperature=0.9, top_p=0.95, seed=11 + i) for i in range(3)]
    assert [c.text for c in client(server).completions.create(**kw).choices] == \
        [c.text for c in r.choices]
    assert r.usage.completion_tokens == 60


@pytest.mark.e2e
def test_several_prompts_and_token_ids(tiny):
    server, model = tiny
    r = client(server).completions.create(model="tiny", prompt=["ab", "cde"], max_tokens=8,
                                          temperature=0, n=2)
    assert [c.text for c in r.choices] == [generate(model, "ab", 8)] * 2 + \
        [generate(model, "cde", 8)] * 2
    ids = client(server).completions.create(model="tiny", prompt=list(b"ab"), max_tokens=8,
                                            temperature=0)
    assert ids.choices[0].text == r.choices[0].text


@pytest.mark.e2e
def test_stop(tiny):
    server, model = tiny
    text = generate(model, "Hello", 40)
    stop = next(text[j:j + 2] for j in range(8, 40) if "\ufffd" not in text[j:j + 2])
    r = client(server).completions.create(model="tiny", prompt="Hello", max_tokens=40,
                                          temperature=0, stop=[stop, "never-there"])
    assert r.choices[0].text == text[:text.index(stop)]
    assert r.choices[0].finish_reason == "stop"


@pytest.mark.e2e
def test_logprobs(tiny):
    server, model = tiny
    r = client(server).completions.create(model="tiny", prompt="Hello", max_tokens=12,
                                          temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    (ids,), (logits,) = model.generate([list(b"Hello")], 12, return_logits=True)
    expected = logits.log_softmax(-1).gather(-1, torch.tensor(ids)[:, None])[:, 0]
    assert lp.token_logprobs == pytest.approx(expected.tolist(), abs=1e-4)
    assert len(lp.tokens) == len(lp.text_offset) == 12
    assert all(len(top) <= 2 and max(top.values()) == pytest.approx(p, abs=1e-4)
               for top, p in zip(lp.top_logprobs, lp.token_logprobs, strict=True))
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0


@pytest.mark.e2e
def test_vote_and_best_of(tiny):
    server, model = tiny
    voted = client(server).completions.create(model="tiny", prompt="Hi", max_tokens=10,
                                              temperature=0, n=3,
                                              extra_body={"vote": "majority"})
    assert len(voted.choices) == 1 and voted.choices[0].text == generate(model, "Hi", 10)
    assert voted.choices[0].model_extra["vote"] == {"method": "majority", "count": 3,
                                                    "candidates": 3}
    best = client(server).completions.create(model="tiny", prompt="Hi", max_tokens=10,
                                             temperature=1.0, seed=3, best_of=3)
    scores = {}
    for i in range(3):  # candidate i is what generate samples with seed 3 + i
        (ids,), (logits,) = model.generate([list(b"Hi")], 10, temperature=1.0, seed=3 + i,
                                           return_logits=True)
        logp = logits.log_softmax(-1).gather(-1, torch.tensor(ids)[:, None]).mean()
        scores[TOK.decode(ids)] = float(logp)
    assert best.choices[0].text == max(scores, key=scores.get)
    assert best.choices[0].logprobs is None  # ranked by them, not asked for them


@pytest.mark.e2e
@pytest.mark.parametrize("body, param", [
    ({"max_tokens": "x"}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 10_000}, "max_tokens"),
    ({"prompt": "x" * 250, "max_tokens": 16}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [[300]]}, "prompt"),
    ({"model": "gpt-4"}, "model"),
    ({"temperature": -1}, "temperature"),
    ({"n": 9}, "n"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"echo": True}, "echo"),
    ({"best_of": 2, "stream": True}, "stream"),
    ({"no_such_field": 1}, "no_such_field"),
])
def test_bad_requests_are_400_with_an_openai_error(tiny, body, param):
    server, _ = tiny
    with pytest.raises(openai.BadRequestError) as e:
        client(server).completions.create(model="tiny", prompt="Hi", extra_body=body)
    error = e.value.body
    assert e.value.status_code == 400 and error["param"] == param
    assert error["type"] == "invalid_request_error" and error["message"]


@pytest.mark.e2e
def test_malformed_json_unknown_path_and_auth(tiny):
    server, _ = tiny
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    r = httpx.post(f"{server.url}/v1/completions", content=b"{not json", headers=auth)
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = httpx.get(f"{server.url}/v1/nothing", headers=auth)
    assert r.status_code == 404 and r.json()["error"]["message"]
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = httpx.post(f"{server.url}/v1/completions", content=b"{not json", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        client(server, key="wrong").models.list()
    assert [m.id for m in client(server).models.list()] == ["tiny"]


@pytest.mark.e2e
def test_health_and_metrics(tiny):
    server, _ = tiny
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["slots"] == 8 and health["mode"] == "hiergen"
    client(server).completions.create(model="tiny", prompt="Hi", max_tokens=5)
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("photon_requests_total", "photon_generation_tokens_total",
                 "photon_queue_depth", "photon_running_sequences", "photon_batch_occupancy",
                 "photon_time_to_first_token_seconds_bucket",
                 "photon_request_latency_seconds_bucket"):
        assert name in text
    assert 'photon_requests_total{code="200",path="/v1/completions"}' in text


@pytest.mark.e2e
def test_concurrent_load_loses_nothing(tiny):
    server, _ = tiny
    bodies = [{"model": "tiny", "prompt": "x" * (1 + i % 40), "max_tokens": 8 + i % 24,
               "temperature": 0.0 if i % 2 else 0.8, "seed": i} for i in range(64)]
    result = run_load(server.url, bodies, concurrency=64, timeout=120, deadline=300,
                      api_key=KEY)
    assert (result.ok, result.lost, result.server_errors) == (64, 0, 0)
    assert result.completion_tokens == sum(b["max_tokens"] for b in bodies)
    assert 0 < result.p50_s <= result.p99_s


def metric(server, name: str) -> float:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def wait_for(condition, timeout: float = 60) -> None:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "timed out"
        time.sleep(0.05)


@pytest.mark.e2e
def test_full_queue_is_429_and_a_disconnect_frees_its_slot(narrow):
    """Two long streams hold both slots, one request waits: the next is refused with 429.
    Closing one stream cancels its sequence, and the waiting request gets its slot."""
    url = f"{narrow.url}/v1/completions"
    long = {"model": "flat", "prompt": "a", "max_tokens": 16000, "stream": True}
    with httpx.stream("POST", url, json=long) as first, \
            httpx.stream("POST", url, json=long) as second:
        # Keep the line iterators: a discarded one closes its connection (a disconnect).
        lines = first.iter_lines(), second.iter_lines()
        next(lines[0]), next(lines[1])
        waiting = {}
        thread = threading.Thread(target=lambda: waiting.update(r=httpx.post(
            url, json={"model": "flat", "prompt": "b", "max_tokens": 5}, timeout=120)))
        thread.start()
        wait_for(lambda: metric(narrow, "photon_queue_depth") == 1)
        with pytest.raises(openai.RateLimitError) as e:
            client(narrow, key="none").completions.create(model="flat", prompt="c",
                                                          max_tokens=5)
        assert e.value.response.headers["retry-after"] == "1"
        assert e.value.body["type"] == "rate_limit_error"
        first.close()
        thread.join(120)
        assert waiting["r"].status_code == 200
        assert waiting["r"].json()["usage"]["completion_tokens"] == 5
        assert metric(narrow, "photon_cancelled_sequences_total") == 1
    wait_for(lambda: metric(narrow, "photon_running_sequences") == 0)


@pytest.mark.e2e
def test_sigterm_drains(narrow):
    """On SIGTERM a running request finishes; one that cannot finish within the drain
    timeout (3 s for 16,000 tokens) is answered with an error event; the process exits by
    itself, as uvicorn does, by the signal it drained for."""
    url = f"{narrow.url}/v1/completions"
    results = {"short": [], "long": []}
    streaming = {name: threading.Event() for name in results}

    def read(name: str, max_tokens: int) -> None:
        body = {"model": "flat", "prompt": name, "max_tokens": max_tokens, "stream": True,
                "stream_options": {"include_usage": True}}
        with httpx.stream("POST", url, json=body, timeout=120) as r:
            for line in r.iter_lines():
                if line:
                    results[name].append(line)
                    streaming[name].set()

    threads = [threading.Thread(target=read, args=a) for a in (("short", 300),
                                                                ("long", 16000))]
    for t in threads:
        t.start()
    # Both have produced tokens (polling the running gauge instead can miss the moment both
    # run on a fast machine, where the short one is done within a few polls).
    assert all(event.wait(60) for event in streaming.values())
    narrow.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(60)
    assert narrow.proc.wait(60) == -signal.SIGTERM
    short = [json.loads(e[6:]) for e in results["short"][:-1]]
    assert short[-2]["choices"][0]["finish_reason"] == "length"
    assert short[-1]["usage"]["completion_tokens"] == 300
    long = results["long"]
    assert long[-1] == "data: [DONE]"
    assert json.loads(long[-2][6:])["error"]["message"] == "the server is shutting down"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{narrow.url}/health")


@pytest.mark.e2e
def test_a_second_ctrl_c_stops_at_once(tmp_path):
    """The first Ctrl-C drains (here for up to 60 s), the second fails what runs and quits:
    the process ends within seconds, by the interrupt (exit status 130)."""
    ckpt = save_checkpoint(tmp_path / "flat", make("vanilla", max_seq_len=16384), TOK)
    with ServerProcess(ckpt, "--max-batch", "2", "--drain-timeout", "60") as server:
        body = {"model": "flat", "prompt": "a", "max_tokens": 16000, "stream": True}
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body) as r:
            lines = r.iter_lines()
            next(lines)  # it runs
            server.proc.send_signal(signal.SIGINT)
            time.sleep(0.5)
            server.proc.send_signal(signal.SIGINT)
            started = time.monotonic()
            assert server.proc.wait(30) == 130
            assert time.monotonic() - started < 15


class FakeHTTP:
    """Stands in for uvicorn.Server in serve_forever: serves until told to exit, or fails
    at startup as uvicorn does (SystemExit)."""

    def __init__(self, fail: bool) -> None:
        self.fail, self.should_exit = fail, False

    def run(self, sockets) -> None:
        if self.fail:
            raise SystemExit(3)
        while not self.should_exit:
            time.sleep(0.01)


def test_a_failure_on_either_thread_stops_the_other(monkeypatch):
    """serve_forever runs HTTP on a thread and the engine on this one: if HTTP fails, the
    engine stops and the failure is raised (a non-zero exit, not a silent 0); if the engine
    fails, HTTP is stopped and the engine's exception is raised. Signal handlers are put
    back either way."""
    sigterm = signal.getsignal(signal.SIGTERM)
    engine = Engine(make("vanilla"), TOK, slots=2, max_len=32)
    with socket.socket() as sock, pytest.raises(SystemExit) as e:
        serve_forever(engine, FakeHTTP(fail=True), sock, drain_timeout=1)
    assert e.value.code == 3 and signal.getsignal(signal.SIGTERM) is sigterm

    engine = Engine(make("vanilla"), TOK, slots=2, max_len=32)
    engine.submit([EngineRequest([1], 3)])
    monkeypatch.setattr(engine, "_next_joining", lambda: 1 / 0)
    http = FakeHTTP(fail=False)
    with socket.socket() as sock, pytest.raises(ZeroDivisionError):
        serve_forever(engine, http, sock, drain_timeout=1)
    assert http.should_exit and signal.getsignal(signal.SIGTERM) is sigterm


@pytest.mark.parametrize("args, message", [
    (["--mode", "recgen", "--max-batch", "2"], "at least 2 levels"),
    (["--port", "BUSY", "--max-batch", "2"], "cannot listen"),
    (["--memory-budget", "1e9"], "GiB free on cpu"),
    (["--memory-budget", "1e-6"], "holds no sequence"),
    (["--max-length", "150000", "--memory-budget", "0.01"], "holds no sequence"),
    (["--max-batch", "1000000000"], "GiB free on cpu"),
    (["--device", "bogus", "--max-batch", "2"], "unknown device 'bogus'"),
    (["--api-key", ""], "--api-key is empty"),
    (["--api-key", " \t"], "--api-key is empty"),
    (["--api-key", "two words"], "printable ASCII without spaces"),
    (["ENV="], "$PHOTON_API_KEY is empty"),
    (["--max-body-mb", "2", "--max-bodies-mb", "1"], "a body of the largest size could never"),
    (["--max-connections", "100000000"], "ulimit -Hn"),
])
def test_serve_cli_bad_input(tmp_path, capsys, monkeypatch, args, message):
    """What the flags' types cannot see is refused at start-up, in one line, before the
    model costs memory: a budget too small for one sequence is told from the caches' size
    without measuring (the measuring step is made to fail here)."""
    import photon.serve.engine as engine_mod

    monkeypatch.setattr(engine_mod, "batch_for_budget", lambda *a, **kw: 1 / 0)
    if args == ["ENV="]:
        monkeypatch.setenv("PHOTON_API_KEY", "")
        args = []
    ckpt = save_checkpoint(tmp_path / "block", make("block"), TOK)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        args = [str(busy.getsockname()[1]) if a == "BUSY" else a for a in args]
        assert cli_main(["serve", str(ckpt), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert cli_main(["serve", str(tmp_path / "missing")]) == 2


def test_a_checkpoint_with_non_finite_weights_is_refused(tmp_path, capsys):
    model = make("vanilla")
    with torch.no_grad():
        model.lm_head.weight[3, 5] = float("nan")
    ckpt = save_checkpoint(tmp_path / "nan", model, TOK)
    assert cli_main(["serve", str(ckpt), "--max-batch", "2"]) == 2
    err = capsys.readouterr().err
    assert "lm_head.weight holds NaN or infinite values" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def raw_connection(server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    s.settimeout(15)
    return s


def closed_within(s: socket.socket, dribble: bytes, seconds: float) -> tuple[bytes, float]:
    """Send `dribble` a byte every 0.2 s until the server closes the connection: what it
    answered meanwhile, and when it closed (seconds); fails after `seconds`."""
    started, answer = time.monotonic(), b""
    s.setblocking(False)
    for byte in dribble:
        try:
            s.send(bytes([byte]))
        except OSError:  # closed (reset) while sending
            break
        time.sleep(0.2)
        try:
            chunk = s.recv(4096)
        except BlockingIOError:
            continue
        except OSError:
            break
        if not chunk:
            break
        answer += chunk
        assert time.monotonic() - started < seconds, "still open"
    took = time.monotonic() - started
    assert took < seconds, "still open"
    return answer, took


@pytest.mark.e2e
def test_slow_bodies_and_slow_later_heads_are_cut_off(tmp_path):
    """Sending a byte every 0.2 s: a body is answered 408 and closed after --body-timeout,
    the next head on a kept-alive connection is closed after --header-timeout (before, any
    byte restarted uvicorn's keep-alive clock, and a body had no clock at all)."""
    ckpt = save_checkpoint(tmp_path / "flat", make("vanilla"), TOK)
    with ServerProcess(ckpt, "--max-batch", "2", "--header-timeout", "1", "--body-timeout",
                       "1") as server:
        s = raw_connection(server)
        s.sendall(b"POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 500\r\n\r\n")
        answer, took = closed_within(s, b'{"prompt": "' + b"x" * 100, 5)
        assert answer.startswith(b"HTTP/1.1 408 ") and took > 0.8
        s.close()
        s = raw_connection(server)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        response = b""
        while not response.endswith(b"}"):  # the whole answer, its JSON body last
            response += s.recv(4096)
        assert response.startswith(b"HTTP/1.1 200 ")
        answer, took = closed_within(s, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " +
                                     b"y" * 100, 5)
        assert answer == b"" and took > 0.8
        s.close()
        assert httpx.get(f"{server.url}/health").status_code == 200


@pytest.mark.e2e
def test_connections_beyond_the_limit_are_refused_at_once(tmp_path):
    """With --max-connections 4 held by idle clients, a fifth connection is answered 503
    and closed at once; the idle ones are closed after --header-timeout, and the server
    answers again."""
    ckpt = save_checkpoint(tmp_path / "flat", make("vanilla"), TOK)
    with ServerProcess(ckpt, "--max-batch", "2", "--max-connections", "4",
                       "--header-timeout", "2") as server:
        idle = [raw_connection(server) for _ in range(4)]
        extra = raw_connection(server)
        answer = extra.recv(4096)
        assert answer.startswith(b"HTTP/1.1 503 ") and b"--max-connections" in answer
        assert extra.recv(4096) == b""
        for s in idle:
            assert s.recv(4096) == b""  # closed by the server after 2 s
            s.close()
        assert httpx.get(f"{server.url}/health").status_code == 200


@pytest.mark.e2e
def test_slow_request_heads_are_closed(tmp_path):
    """Connections that never finish their request head are closed after --header-timeout;
    the server keeps answering others."""
    ckpt = save_checkpoint(tmp_path / "flat", make("vanilla"), TOK)
    with ServerProcess(ckpt, "--max-batch", "2", "--header-timeout", "1") as server:
        host, port = server.url.removeprefix("http://").split(":")
        slow = []
        for _ in range(20):
            s = socket.create_connection((host, int(port)))
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")  # never finished
            slow.append(s)
        assert httpx.get(f"{server.url}/health").status_code == 200
        for s in slow:
            s.settimeout(10)
            assert s.recv(1024) == b""  # closed by the server
            s.close()
        assert httpx.get(f"{server.url}/health").status_code == 200
