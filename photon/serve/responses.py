"""The answers of POST /v1/completions in OpenAI's shape: choices, usage, log-probabilities
(with echo, the prompt's first), best_of and majority votes."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import replace

from photon.serve.engine import SHUTTING_DOWN
from photon.serve.output import Echo, Output, TokenLogprob
from photon.serve.schema import (
    APIError,
    CompletionRequest,
)


def engine_error(message: str) -> APIError:
    status = 503 if message == SHUTTING_DOWN else 500
    return APIError(status, message, type="server_error")


LEAST_LOGPROB = -9999.0  # what -inf is reported as (vLLM's value): JSON has no infinity


def json_logprob(value: float | None) -> float | None:
    """A log-probability JSON can hold: -inf (a probability that underflowed) as
    LEAST_LOGPROB, NaN (logits that were not finite) as null, like a missing one."""
    if value is None or math.isfinite(value):
        return value
    return LEAST_LOGPROB if value == -math.inf else None


def logprobs_body(logprobs: list[TokenLogprob]) -> dict:
    """OpenAI's completion logprobs: tokens, their log-probabilities, the alternatives
    (when asked for), and where each token's text starts in the completion. An echoed
    prompt's first token has neither a log-probability nor alternatives (null)."""
    top = [None if lp.top is None else {t: json_logprob(v) for t, v in lp.top.items()}
           for lp in logprobs]
    return {"tokens": [lp.token for lp in logprobs],
            "token_logprobs": [json_logprob(lp.logprob) for lp in logprobs],
            "top_logprobs": top if any(t is not None for t in top) else None,
            "text_offset": [lp.offset for lp in logprobs]}


def with_echo(echo: Echo | None, text: str, logprobs: list[TokenLogprob] | None,
              shift: int = 0) -> tuple[str, list[TokenLogprob] | None]:
    """A choice's text and log-probabilities: the echoed prompt's (if any) followed by the
    generated part's, whose offsets move past the prompt's text (`shift`: its length, for a
    stream's later chunks)."""
    if echo is not None:
        shift = len(echo.text)
    if shift and logprobs:
        logprobs = [replace(lp, offset=lp.offset + shift) for lp in logprobs]
    if echo is None:
        return text, logprobs
    return echo.text + text, [*echo.logprobs, *(logprobs or [])]


def event(data: dict) -> str:
    """One server-sent event holding `data` as JSON (strict: never NaN or Infinity)."""
    return f"data: {json.dumps(data, allow_nan=False)}\n\n"


def mean_logprob(output: Output) -> float:
    return sum(lp.logprob for lp in output.logprobs) / max(len(output.logprobs), 1)


def majority(outputs: list[Output]) -> tuple[Output, int]:
    """The most frequent completion after whitespace normalisation, and its count; a tie
    goes to the candidate with the highest mean log-probability."""
    normal = [" ".join(o.text.split()) for o in outputs]
    counts = Counter(normal)
    best = max(range(len(outputs)), key=lambda i: (counts[normal[i]], mean_logprob(outputs[i])))
    return outputs[best], counts[normal[best]]


def complete(body: CompletionRequest, prompts: list[list[int]],
             outputs: list[dict[int, Output]]) -> dict:
    """The choices and usage of a finished request."""
    choices = []
    n = body.n or 1
    for candidates in outputs:
        ordered = [candidates[i] for i in sorted(candidates)]
        if body.vote:
            winner, count = majority(ordered)
            picked = [(winner, {"vote": {"method": body.vote, "count": count,
                                         "candidates": len(ordered)}})]
        elif body.best_of is not None:
            picked = [(o, {}) for o in sorted(ordered, key=mean_logprob, reverse=True)[:n]]
        else:
            picked = [(o, {}) for o in ordered]
        for output, extra in picked:
            text, logprobs = with_echo(output.echo, output.text, output.logprobs)
            choices.append({
                "index": len(choices), "text": text, "finish_reason": output.finish_reason,
                "logprobs": None if body.logprobs is None else logprobs_body(logprobs),
                **extra})
    completion = sum(len(o.token_ids) for c in outputs for o in c.values())
    prompt = sum(map(len, prompts))
    return {"choices": choices, "usage": {"prompt_tokens": prompt, "completion_tokens":
                                          completion, "total_tokens": prompt + completion}}
