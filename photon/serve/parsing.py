"""Turning a request body into engine requests, on a worker thread: parsed and checked
(`APIError` with OpenAI's 4xx body otherwise), the prompts tokenized and checked, one engine
request per prompt; and vLLM's tokenizer endpoints. Every prompt is checked against the
context before it costs more than its length: text by `PromptEncoder`, token ids by their
count."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from pydantic import ValidationError

from photon.errors import InputError
from photon.inference.prompts import check_prompt
from photon.serve.output import Output, eos_text, token_text
from photon.serve.request import Request
from photon.serve.sampling import SamplingParams
from photon.serve.schema import (
    APIError,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
    is_unicode,
)
from photon.serve.text import PromptEncoder, PromptTooLong


@dataclass
class Parser:
    """What turning bodies into engine requests needs to know of the server: the model's
    name, its tokenizer and context, and what one request may ask for."""

    model_name: str
    tokenizer: object
    max_len: int
    share_cap: int  # completions of one prompt (n, best_of)
    max_seqs: int  # prompts x completions
    max_stop_chars: int

    def __post_init__(self) -> None:
        self.encoder = PromptEncoder(self.tokenizer)
        self.end_of_text = eos_text(self.tokenizer)

    def completion(self, raw: bytes) -> tuple[CompletionRequest, list[list[int]]]:
        """POST /v1/completions: the request and its prompts' token ids, or an `APIError`."""
        body = parse(CompletionRequest, raw)
        body.check(self.max_len, self.share_cap, self.max_stop_chars, self.end_of_text)
        self.check_model(body.model)
        prompts = body.prompt
        if isinstance(prompts, str) or prompts and isinstance(prompts[0], int):
            prompts = [prompts]
        if not prompts:
            raise APIError(400, "prompt is empty: give a string, strings or token ids",
                           param="prompt")
        if len(prompts) * body.candidates > self.max_seqs:
            raise APIError(400, f"{len(prompts)} prompts x {body.candidates} completions "
                                f"exceed the {self.max_seqs} sequences one request may ask "
                                "for (photon serve --max-request-seqs)", param="prompt")
        max_tokens = 16 if body.max_tokens is None else body.max_tokens
        return body, [self.prompt_ids(p, max_tokens) for p in prompts]

    def prompt_ids(self, prompt: str | list[int], max_tokens: int) -> list[int]:
        """One prompt's token ids, checked against the vocabulary and the context (with
        `max_tokens` to generate). Empty text starts from the end-of-text token."""
        room = self.max_len - max_tokens
        try:
            if isinstance(prompt, str):
                ids = self.encode(prompt, room)
            elif len(prompt) > room:
                raise PromptTooLong(len(prompt), exact=True)
            else:
                ids = prompt
        except PromptTooLong as e:
            at_least = "" if e.exact else "at least "
            raise APIError(400, f"this model's maximum context length is {self.max_len} "
                                f"tokens; the request needs {at_least}{e.tokens + max_tokens} "
                                f"({at_least}{e.tokens} in the prompt, {max_tokens} for the "
                                "completion)", param="prompt",
                           code="context_length_exceeded") from None
        if isinstance(prompt, str) and not ids:
            if self.tokenizer.eos_id is None:
                raise APIError(400, "an empty prompt needs an end-of-text token to start "
                                    "from, and this tokenizer has none", param="prompt")
            ids = [self.tokenizer.eos_id]
        try:
            check_prompt(ids, self.tokenizer.vocab_size)
        except InputError as e:
            raise APIError(400, str(e), param="prompt") from None
        return ids

    def encode(self, text: str, room: int | None = None) -> list[int]:
        if not is_unicode(text):
            raise APIError(400, "prompt: not valid Unicode (a lone surrogate)", param="prompt")
        return self.encoder.encode(text, room)

    def tokenize(self, raw: bytes) -> dict:
        """POST /tokenize (vLLM's shape): the prompt's token ids, as a completion's prompt
        is tokenized (an end-of-text string in the text is the end-of-text token), however
        long (lm-eval tokenizes whole documents there)."""
        body = parse(TokenizeRequest, raw)
        body.check()
        self.check_model(body.model)
        ids = self.encode(body.prompt)
        strs = [token_text(self.tokenizer, t) for t in ids] if body.return_token_strs \
            else None
        return {"count": len(ids), "max_model_len": self.max_len, "tokens": ids,
                "token_strs": strs}

    def detokenize(self, raw: bytes) -> dict:
        """POST /detokenize (vLLM's shape): the text of token ids."""
        body = parse(DetokenizeRequest, raw)
        self.check_model(body.model)
        vocab = self.tokenizer.vocab_size
        bad = next((t for t in body.tokens if not 0 <= t < vocab), None)
        if bad is not None:
            raise APIError(400, f"token id {bad} is outside the vocabulary [0, {vocab})",
                           param="tokens")
        return {"prompt": self.tokenizer.decode(body.tokens)}

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise APIError(400, f"the model {model!r} does not exist; this server serves "
                                f"{self.model_name!r}", param="model", code="model_not_found")


def parse(cls, raw: bytes):
    """A request body of `cls`, or an `APIError` naming the field at fault."""
    try:
        return cls.model_validate_json(raw)
    except ValidationError as e:
        raise validation_error(e.errors(), body_prefix=False) from None


def validation_error(errors: list[dict], body_prefix: bool = True) -> APIError:
    """Pydantic's first complaint as one line naming the field (FastAPI's locations start
    with "body", a model's own do not)."""
    first = errors[0]
    loc = [str(x) for x in first.get("loc", ())[1 if body_prefix else 0:]]
    if first.get("type") == "json_invalid":
        return APIError(400, f"the body is not valid JSON: {first.get('msg')}")
    field = loc[0] if loc else None
    return APIError(400, f"{field or 'body'}: {first.get('msg')}", param=field)


def engine_requests(body: CompletionRequest, prompts: list[list[int]],
                    queue: asyncio.Queue, end_of_text: str | None = None
                    ) -> list[Request]:
    """One engine request per prompt; outputs arrive in `queue` as (prompt index, Output).
    With echo the prompt is scored, with the alternatives `logprobs` asks for."""
    loop = asyncio.get_running_loop()
    sampling = SamplingParams(temperature=1.0 if body.temperature is None else body.temperature,
                              top_p=None if body.top_p in (None, 1.0) else body.top_p,
                              top_k=None if body.top_k in (None, -1) else body.top_k,
                              seed=body.seed)
    # best_of and vote rank candidates by their mean log-probability.
    logprobs = body.logprobs
    if logprobs is None and (body.best_of is not None or body.vote):
        logprobs = 0

    def deliver(i: int):
        def on_output(output: Output) -> None:
            # A closed event loop (after shutdown) has nobody left to read it.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(queue.put_nowait, (i, output))
        return on_output

    group = object()  # the prompts of one call share the slots it may hold
    max_tokens = 16 if body.max_tokens is None else body.max_tokens
    return [Request(prompt=p, max_tokens=max_tokens, sampling=sampling, n=body.candidates,
                    stop=body.stops(end_of_text), logprobs=logprobs,
                    ignore_eos=not body.stops_at_eos(end_of_text), stream=bool(body.stream),
                    on_output=deliver(i), group=group,
                    prompt_logprobs=body.logprobs if body.echo else None)
            for i, p in enumerate(prompts)]
