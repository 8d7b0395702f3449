"""The ASGI app of `photon serve`: OpenAI's completions API over the engine.

POST /v1/completions (with echo: the prompt's tokens and their log-probabilities), GET
/v1/models, and vLLM's POST /tokenize, POST /detokenize and GET /tokenizer_info (all behind
the API key when one is set), GET (or HEAD) /health, GET /metrics (Prometheus text). Every
error is OpenAI's body {"error": {message, type, param, code}}: 400 for a bad request (one
that can never be served included), 401 for a wrong or missing key, 405 for a wrong method,
408 for a body that arrives too slowly, 413 for a body over the limit, 429 with Retry-After
when the queue is full, 503 while shutting down or when the memory for request bodies is
taken, 500 for a bug. A client that disconnects cancels its sequences, which frees their
slots at the next step; one that leaves while sending its body is counted as 499. A request
is parsed, checked and tokenized on a worker thread, never on the event loop, so a large one
does not hold up /health or the streams of others (photon.serve.body and .parsing bound what
it costs before it is refused).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from photon.errors import InputError
from photon.serve.body import BodyBudget, ClientGone, read_body
from photon.serve.engine import SHUTTING_DOWN, Engine, ShuttingDownError
from photon.serve.output import Output, eos_text
from photon.serve.parsing import Parser, engine_requests, validation_error
from photon.serve.request import Request as EngineRequest
from photon.serve.responses import complete, engine_error, event, logprobs_body, with_echo
from photon.serve.scheduler import QueueFullError
from photon.serve.schema import (
    APIError,
    CompletionRequest,
)

log = logging.getLogger("photon.serve")
DISCONNECTED = object()  # put in a request's output queue when its client goes away
DRAIN_POLL_S = 0.5  # how often a waiting request looks at the drain deadline
# Paths behind the API key besides /v1/...: vLLM's tokenizer endpoints.
TOKENIZER_PATHS = ("/tokenize", "/detokenize", "/tokenizer_info")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (`photon serve --help` lists the flags)."""

    max_body_bytes: int = 8 << 20  # 413 beyond
    max_bodies_bytes: int = 64 << 20  # of all bodies being read or parsed; 503 beyond
    body_timeout: float = 60.0  # seconds from a request's head to its body's end; 408 beyond
    max_request_seqs: int | None = None  # prompts x n (or best_of); default 4 x the slots
    max_stop_chars: int = 256  # each stop string


def create_app(engine: Engine, model_name: str, api_key: str | None = None,
               start_engine: bool = True, limits: Limits = Limits()) -> FastAPI:
    """The app; it runs the engine's loop on a thread of its own from startup to shutdown,
    unless `start_engine` is False: then the caller runs and stops the engine."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if not start_engine:
            yield
            return
        engine.start()
        yield
        await asyncio.to_thread(engine.shutdown)

    # The schema is public only when the API is: with a key, /openapi.json is off.
    app = FastAPI(title="photon serve", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None if api_key else "/openapi.json")
    parser = Parser(model_name, engine.tokenizer, engine.max_len, engine.share_cap,
                    limits.max_request_seqs or 4 * engine.slots, limits.max_stop_chars)
    budget = BodyBudget(limits.max_bodies_bytes)
    app.add_middleware(ApiKey, key=api_key)
    app.add_middleware(RequestMetrics, engine=engine)  # outermost: counts the 401s too
    tokenizer, created = engine.tokenizer, int(time.time())

    def body(request: Request):
        """The request's body, bounded as `limits` say (an `async with` block)."""
        return read_body(request.receive, request.headers, limits.max_body_bytes,
                         limits.body_timeout, budget)

    @app.exception_handler(APIError)
    async def api_error(_request: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, e: RequestValidationError) -> JSONResponse:
        return await api_error(_request, validation_error(e.errors()))

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, _e: ClientGone) -> Response:
        client = request.client.host if request.client else "a client"
        log.warning("%s closed the connection while sending a request to %s (499)", client,
                    request.url.path)
        return Response(status_code=499)  # nobody reads it: counted in /metrics

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, e: HTTPException) -> JSONResponse:
        return await api_error(_request, APIError(e.status_code, str(e.detail),
                                                  headers=e.headers))  # 405's Allow

    @app.exception_handler(Exception)
    async def crashed(_request: Request, e: Exception) -> JSONResponse:
        return await api_error(_request, APIError(500, f"internal error: {e}",
                                                  type="server_error"))

    # HEAD too, for health probes that send it; FastAPI routes only the methods they name.
    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health() -> dict:
        return {"status": "ok", "model": model_name, **engine.stats()}

    @app.api_route("/metrics", methods=["GET", "HEAD"])
    async def metrics() -> Response:
        return Response(generate_latest(engine.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

    @app.api_route("/v1/models", methods=["GET", "HEAD"])
    async def models() -> dict:
        return {"object": "list", "data": [{
            "id": model_name, "object": "model", "created": created, "owned_by": "photon",
            "max_model_len": engine.max_len}]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        async with body(request) as raw:
            parsed, prompts = await asyncio.to_thread(parser.completion, raw)
        queue: asyncio.Queue = asyncio.Queue()
        try:
            jobs = engine_requests(parsed, prompts, queue, parser.end_of_text)
            engine.submit(jobs)
        except QueueFullError as e:
            raise APIError(429, str(e), type="rate_limit_error",
                           headers={"Retry-After": "1"}) from None
        except ShuttingDownError as e:
            raise APIError(503, str(e), type="server_error",
                           headers={"Retry-After": "5"}) from None
        except InputError as e:  # what the engine can never run: too many sequences
            raise APIError(400, str(e), param="prompt") from None
        watcher = asyncio.create_task(watch_disconnect(request, queue))
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                "created": int(time.time()), "model": model_name}
        if parsed.stream:
            return StreamingResponse(stream(parsed, prompts, jobs, queue, watcher, head, engine),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            outputs = await collect(jobs, queue, engine)
        finally:
            watcher.cancel()
            engine.cancel(jobs)  # a no-op for finished requests
        if outputs is None:  # the client went away: nobody reads an answer
            return Response(status_code=499)
        return JSONResponse({**head, **complete(parsed, prompts, outputs)})

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict:
        async with body(request) as raw:
            return await asyncio.to_thread(parser.tokenize, raw)

    @app.post("/detokenize")
    async def detokenize(request: Request) -> dict:
        async with body(request) as raw:
            return await asyncio.to_thread(parser.detokenize, raw)

    @app.api_route("/tokenizer_info", methods=["GET", "HEAD"])
    async def tokenizer_info() -> dict:
        return {"tokenizer_class": f"photon.Tokenizer({tokenizer.kind})",
                "eos_token": eos_text(tokenizer), "bos_token": None, "pad_token": None,
                "unk_token": None, "add_bos_token": False, "add_eos_token": False,
                "model_max_length": engine.max_len, "vocab_size": tokenizer.vocab_size,
                "chat_template": None}

    return app


async def watch_disconnect(request: Request, queue: asyncio.Queue) -> None:
    """Tell the request's handler when its client goes away."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    queue.put_nowait(DISCONNECTED)


async def next_item(queue: asyncio.Queue, engine: Engine):
    """The next output (or DISCONNECTED) of a request. Once the engine's drain deadline has
    passed, a shutting-down error is made here, without waiting for the engine: its current
    step may outlast the time HTTP has left, and every client is owed an error before its
    connection closes."""
    while True:
        try:
            return await asyncio.wait_for(queue.get(), DRAIN_POLL_S)
        except asyncio.TimeoutError:  # noqa: UP041 (Python 3.10: not the builtin)
            deadline = engine.drain_deadline
            if deadline is not None and time.monotonic() > deadline + DRAIN_POLL_S:
                return -1, Output(0, "", [], error=SHUTTING_DOWN)


async def collect(jobs: list[EngineRequest], queue: asyncio.Queue, engine: Engine
                  ) -> list[dict[int, Output]] | None:
    """Every sequence's final output, per prompt; None if the client went away."""
    outputs: list[dict[int, Output]] = [{} for _ in jobs]
    left = sum(job.n for job in jobs)
    while left:
        item = await next_item(queue, engine)
        if item is DISCONNECTED:
            return None
        i, output = item
        if output.error:
            raise engine_error(output.error)
        outputs[i][output.index] = output
        left -= 1
    return outputs


async def stream(body: CompletionRequest, prompts: list[list[int]], jobs: list[EngineRequest],
                 queue: asyncio.Queue, watcher: asyncio.Task, head: dict, engine: Engine
                 ) -> AsyncIterator[str]:
    """Server-sent events: a chunk per sequence per step, an optional usage chunk, [DONE]."""
    n = body.n or 1
    left, completion = sum(job.n for job in jobs), 0
    shifts: dict[int, int] = {}  # choice index -> length of its echoed prompt's text
    try:
        while left:
            item = await next_item(queue, engine)
            if item is DISCONNECTED:
                return
            i, output = item
            if output.error:
                yield event(engine_error(output.error).body())
                break
            index = i * n + output.index
            completion += len(output.token_ids)
            left -= output.finish_reason is not None
            if not (output.text or output.finish_reason or output.token_ids or output.echo):
                continue
            if output.echo is not None:
                shifts[index] = len(output.echo.text)
            text, logprobs = with_echo(output.echo, output.text, output.logprobs,
                                       shifts.get(index, 0))
            choice = {"index": index, "text": text, "finish_reason": output.finish_reason,
                      "logprobs": None if body.logprobs is None else logprobs_body(logprobs)}
            yield event({**head, "choices": [choice]})
        else:
            if body.stream_options and body.stream_options.include_usage:
                prompt = sum(map(len, prompts))
                usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                         "total_tokens": prompt + completion}
                yield event({**head, "choices": [], "usage": usage})
        yield "data: [DONE]\n\n"
    finally:
        watcher.cancel()
        engine.cancel(jobs)


class ApiKey:
    """ASGI middleware: with a key, every /v1 request and the tokenizer endpoints need
    `Authorization: Bearer KEY` (checked before the body is read). /health and /metrics
    stay open for probes."""

    def __init__(self, app, key: str | None) -> None:
        self.app, self.expected = app, None if key is None else key.encode()

    async def __call__(self, scope, receive, send) -> None:
        if self.expected is not None and scope["type"] == "http" \
                and (scope["path"].startswith("/v1") or scope["path"] in TOKENIZER_PATHS):
            scheme, _, given = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
            # The scheme is case-insensitive (RFC 7235); the key is compared in constant time.
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(),
                                                                      self.expected):
                error = APIError(401, "missing or wrong API key: send 'Authorization: Bearer "
                                      "KEY'", code="invalid_api_key")
                return await JSONResponse(error.body(), 401)(scope, receive, send)
        await self.app(scope, receive, send)


class RequestMetrics:
    """ASGI middleware: count requests by path and status, time completions to their last
    byte (streams included)."""

    def __init__(self, app, engine: Engine) -> None:
        self.app, self.metrics = app, engine.metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.monotonic(), {"code": 500}

        async def send_and_watch(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            path = scope["path"]
            known = path in ("/v1/completions", "/v1/models", "/health", "/metrics",
                             *TOKENIZER_PATHS)
            self.metrics.requests.labels(path if known else "other", str(status["code"])).inc()
            if path == "/v1/completions" and status["code"] == 200:
                self.metrics.latency.observe(time.monotonic() - started)
