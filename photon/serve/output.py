"""Requests and what the engine answers them with: each running sequence turns the tokens
of a step into new text (stop strings, EOS, max_tokens), log-probabilities and the `Output`
that reaches the request's callback."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from photon.serve.sampling import SamplingParams
from photon.serve.text import TextStream


@dataclass
class TokenLogprob:
    """A generated token (its text, or "bytes:\\xNN..." if it is not whole UTF-8), its
    log-probability, where its text starts in the completion, and the top alternatives."""

    token: str
    logprob: float
    offset: int
    top: dict[str, float] | None = None


def token_text(tokenizer, token: int) -> str:
    """A token as text, unambiguous even when it holds part of a character."""
    raw = tokenizer.decode_bytes([token])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


@dataclass
class Output:
    """New text of one of a request's sequences; on its last output `finish_reason` is
    "stop" or "length", or `error` says why the engine could not finish it."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    error: str | None = None


@dataclass
class Request:
    """A prompt (token ids) to complete `n` times, one slot per sequence. A streamed
    request receives an `Output` per step; otherwise one per sequence, when it ends."""

    prompt: list[int]
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    n: int = 1
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # None: none; k: the chosen token's and the k most likely
    ignore_eos: bool = False
    stream: bool = False
    on_output: Callable[[Output], None] = lambda output: None
    arrival: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    group: Hashable | None = None  # the client call it came in (its prompts share a group)


class RunningSequence:
    """One running sequence, a request's copy `index`: turns the tokens of each step into
    its text (stop strings, EOS, max_tokens) and log-probabilities, and says when it ends."""

    def __init__(self, request: Request, index: int, tokenizer) -> None:
        self.request, self.index, self.tokenizer = request, index, tokenizer
        self.text = TextStream(tokenizer, request.stop, offsets=request.logprobs is not None)
        self.logprobs: list[TokenLogprob] = []
        self.started = False
        self.done = False

    def take(self, tokens: list[int], new: list[bool], eos_id: int | None,
             logprob_row: tuple | None) -> Output | None:
        """The tokens of one step: keep the new ones up to the end of the sequence."""
        r, finish = self.request, None
        kept, positions = [], []
        for j, (token, is_new) in enumerate(zip(tokens, new, strict=True)):
            if not is_new:
                continue
            if token == eos_id and not r.ignore_eos:
                finish = "stop"
                break
            kept.append(token)
            positions.append(j)
            if len(self.text.ids) + len(kept) >= r.max_tokens:
                finish = "length"
                break
        n_kept = self.text.add(kept)
        if self.text.stopped:
            finish = "stop"
        kept, positions = kept[:n_kept], positions[:n_kept]
        if logprob_row is not None:
            self.logprobs += self._logprobs(kept, positions, *logprob_row)
        self.done = finish is not None
        if not (r.stream or self.done):
            return None
        logprobs = None
        if r.logprobs is not None:
            logprobs = self.logprobs[len(self.logprobs) - len(kept):] if r.stream \
                else list(self.logprobs)
        ids = kept if r.stream else list(self.text.ids)
        return Output(self.index, self.text.take(final=self.done), ids, logprobs, finish)

    def _logprobs(self, kept: list[int], positions: list[int], chosen, top_ids, top_values
                  ) -> list[TokenLogprob]:
        text = lambda token: token_text(self.tokenizer, token)
        first = len(self.text.ids) - len(kept)
        out = []
        for i, (token, j) in enumerate(zip(kept, positions, strict=True)):
            top = None
            if top_ids is not None:
                k = self.request.logprobs
                top = {text(t): v for t, v in zip(top_ids[j][:k], top_values[j][:k],
                                                  strict=True)}
            out.append(TokenLogprob(text(token), chosen[j], self.text.offsets[first + i], top))
        return out
