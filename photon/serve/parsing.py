"""Turning a request body into engine requests, on a worker thread: parsed and checked
(`APIError` with OpenAI's 4xx body otherwise), the prompts tokenized and checked, one engine
request per prompt; and vLLM's tokenizer endpoints."""

from __future__ import annotations

import asyncio
import contextlib

from pydantic import ValidationError

from photon.errors import InputError
from photon.inference.prompts import check_prompt
from photon.serve.engine import Engine
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


def prepare(raw: bytes, model_name: str, tokenizer, engine: Engine, max_seqs: int,
            max_stop_chars: int) -> tuple[CompletionRequest, list[list[int]]]:
    """Parse, check and tokenize a request body (on a worker thread): the request and its
    prompts' token ids, or an `APIError`."""
    body = parse(CompletionRequest, raw)
    body.check(engine.max_len, engine.share_cap, max_stop_chars, eos_text(tokenizer))
    check_model(body.model, model_name)
    raw_prompts = body.prompt if isinstance(body.prompt, list) and body.prompt and \
        not isinstance(body.prompt[0], int) else [body.prompt]
    if len(raw_prompts) * body.candidates > max_seqs:
        raise APIError(400, f"{len(raw_prompts)} prompts x {body.candidates} completions "
                            f"exceed the {max_seqs} sequences one request may ask for "
                            "(photon serve --max-request-seqs)", param="prompt")
    return body, tokenize(body, tokenizer, engine.max_len)


def check_model(model: str | None, model_name: str) -> None:
    if model is not None and model != model_name:
        raise APIError(400, f"the model {model!r} does not exist; this server "
                            f"serves {model_name!r}", param="model", code="model_not_found")


def parse(cls, raw: bytes):
    """A request body of `cls`, or an `APIError` naming the field at fault."""
    try:
        return cls.model_validate_json(raw)
    except ValidationError as e:
        raise validation_error(e.errors(), body_prefix=False) from None


def tokenize_body(raw: bytes, model_name: str, tokenizer, max_len: int) -> dict:
    """POST /tokenize (vLLM's shape): the prompt's token ids, as a completion's prompt is
    tokenized (an end-of-text string in the text is the end-of-text token)."""
    body = parse(TokenizeRequest, raw)
    body.check()
    check_model(body.model, model_name)
    if not is_unicode(body.prompt):
        raise APIError(400, "prompt: not valid Unicode (a lone surrogate)", param="prompt")
    ids = tokenizer.encode(body.prompt)
    strs = [token_text(tokenizer, t) for t in ids] if body.return_token_strs else None
    return {"count": len(ids), "max_model_len": max_len, "tokens": ids, "token_strs": strs}


def detokenize_body(raw: bytes, model_name: str, tokenizer) -> dict:
    """POST /detokenize (vLLM's shape): the text of token ids."""
    body = parse(DetokenizeRequest, raw)
    check_model(body.model, model_name)
    bad = [t for t in body.tokens if not 0 <= t < tokenizer.vocab_size]
    if bad:
        raise APIError(400, f"token id {bad[0]} is outside the vocabulary "
                            f"[0, {tokenizer.vocab_size})", param="tokens")
    return {"prompt": tokenizer.decode(body.tokens)}


def validation_error(errors: list[dict], body_prefix: bool = True) -> APIError:
    """Pydantic's first complaint as one line naming the field (FastAPI's locations start
    with "body", a model's own do not)."""
    first = errors[0]
    loc = [str(x) for x in first.get("loc", ())[1 if body_prefix else 0:]]
    if first.get("type") == "json_invalid":
        return APIError(400, f"the body is not valid JSON: {first.get('msg')}")
    if loc[:1] == ["prompt"]:  # one complaint per member of the union: say what is accepted
        return APIError(400, "prompt: expected a string, a list of strings, a list of token "
                             "ids or a list of lists of token ids", param="prompt")
    field = loc[0] if loc else None
    return APIError(400, f"{field or 'body'}: {first.get('msg')}", param=field)


def tokenize(body: CompletionRequest, tokenizer, max_len: int) -> list[list[int]]:
    """Token ids of every prompt, checked against the vocabulary and the context."""
    raw = body.prompt
    if isinstance(raw, str) or raw and isinstance(raw[0], int):
        raw = [raw]
    if not raw:
        raise APIError(400, "prompt is empty: give a string, strings or token ids",
                       param="prompt")
    max_tokens = 16 if body.max_tokens is None else body.max_tokens
    prompts = []
    for p in raw:
        if isinstance(p, str) and not is_unicode(p):
            raise APIError(400, "prompt: not valid Unicode (a lone surrogate)", param="prompt")
        ids = tokenizer.encode(p) if isinstance(p, str) else list(p)
        if not ids and tokenizer.eos_id is None:
            raise APIError(400, "an empty prompt needs an end-of-text token to start from, "
                                "and this tokenizer has none", param="prompt")
        ids = ids or [tokenizer.eos_id]
        try:
            check_prompt(ids, tokenizer.vocab_size)
        except InputError as e:
            raise APIError(400, str(e), param="prompt") from None
        if len(ids) + max_tokens > max_len:
            raise APIError(400, f"this model's maximum context length is {max_len} tokens; "
                                f"the request needs {len(ids) + max_tokens} ({len(ids)} in the "
                                f"prompt, {max_tokens} for the completion)", param="prompt",
                           code="context_length_exceeded")
        prompts.append(ids)
    return prompts


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
    return [Request(prompt=p, max_tokens=max_tokens, sampling=sampling,
                          n=body.candidates, stop=body.stops(end_of_text), logprobs=logprobs,
                          ignore_eos=not body.stops_at_eos(end_of_text),
                          stream=bool(body.stream), on_output=deliver(i), group=group,
                          prompt_logprobs=body.logprobs if body.echo else None)
            for i, p in enumerate(prompts)]
