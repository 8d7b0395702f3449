"""What the engine answers requests with: each running sequence turns the tokens of a step
into new text (stop strings, EOS, max_tokens), log-probabilities and the `Output` that
reaches the request's callback; `prompt_echo` turns a scored prompt into its text and its
tokens' log-probabilities (echo)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from photon.serve.text import TextStream

if TYPE_CHECKING:
    from photon.serve.request import Request


@dataclass
class TokenLogprob:
    """A token (its text, or "bytes:\\xNN..." if it is not whole UTF-8), its
    log-probability, where its text starts in the completion, and the top alternatives. The
    first token of an echoed prompt has no log-probability (None: nothing predicts it)."""

    token: str
    logprob: float | None
    offset: int
    top: dict[str, float] | None = None


@dataclass
class Echo:
    """A scored prompt: its text (its tokens decoded) and every token's log-probability
    under the model, teacher-forced (`logprobs[0].logprob` is None)."""

    text: str
    logprobs: list[TokenLogprob]


def eos_text(tokenizer) -> str | None:
    """The end-of-text token's string ("<|endoftext|>"), or None if the tokenizer has none."""
    eos = tokenizer.eos_id
    return None if eos is None else tokenizer.backend.id_to_token(eos)


def token_text(tokenizer, token: int) -> str:
    """A token as text, unambiguous even when it holds part of a character; the end-of-text
    token as its string (it stands for no text)."""
    if token == tokenizer.eos_id:
        return eos_text(tokenizer)
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
    echo: Echo | None = None  # the scored prompt, on a sequence's first output (echo)


class RunningSequence:
    """One running sequence, a request's copy `index`: turns the tokens of each step into
    its text (stop strings, EOS, max_tokens) and log-probabilities, and says when it ends."""

    def __init__(self, request: Request, index: int, tokenizer, echo: Echo | None = None
                 ) -> None:
        self.request, self.index, self.tokenizer = request, index, tokenizer
        self.echo = echo  # handed out with the first output
        self.text = TextStream(tokenizer, request.stop, offsets=request.logprobs is not None)
        self.logprobs: list[TokenLogprob] = []
        self.started = False
        self.done = False

    def take(self, tokens: list[int], new: list[bool], eos_id: int | None,
             logprob_row: tuple | None) -> Output | None:
        """The tokens of one step: keep the new ones up to the end of the sequence. An EOS
        that ends the sequence is not part of its text or ids, but its log-probability is
        reported with the others (as OpenAI and vLLM do): a client that asked for one token
        always gets one log-probability."""
        r, finish, eos_at = self.request, None, None
        kept, positions = [], []
        for j, (token, is_new) in enumerate(zip(tokens, new, strict=True)):
            if not is_new:
                continue
            if token == eos_id and not r.ignore_eos:
                finish, eos_at = "stop", j
                break
            kept.append(token)
            positions.append(j)
            if len(self.text.ids) + len(kept) >= r.max_tokens:
                finish = "length"
                break
        n_kept = self.text.add(kept)
        if self.text.stopped:
            finish, eos_at = "stop", None  # a stop string ended it before the EOS
        kept, positions = kept[:n_kept], positions[:n_kept]
        new_logprobs = [] if logprob_row is None else \
            self._logprobs(kept, positions, *logprob_row)
        self.done = finish is not None
        if not (r.stream or self.done):
            self.logprobs += new_logprobs
            return None
        text = self.text.take(final=self.done)
        if logprob_row is not None and eos_at is not None:
            new_logprobs += self._logprobs([eos_id], [eos_at], *logprob_row,
                                           offset=len(self.text.text))
        self.logprobs += new_logprobs
        logprobs = None
        if r.logprobs is not None:
            logprobs = new_logprobs if r.stream else list(self.logprobs)
        ids = kept if r.stream else list(self.text.ids)
        echo, self.echo = self.echo, None
        return Output(self.index, text, ids, logprobs, finish, echo=echo)

    def _logprobs(self, kept: list[int], positions: list[int], chosen, top_ids, top_values,
                  offset: int | None = None) -> list[TokenLogprob]:
        """Log-probabilities of the kept tokens (at `positions` of the step), their text
        starting where the text stream put them, or at `offset` (the ending EOS)."""
        text = lambda token: token_text(self.tokenizer, token)
        first = len(self.text.ids) - len(kept)
        out = []
        for i, (token, j) in enumerate(zip(kept, positions, strict=True)):
            top = None
            if top_ids is not None:
                k = self.request.logprobs
                top = {text(t): v for t, v in zip(top_ids[j][:k], top_values[j][:k],
                                                  strict=True)}
            where = self.text.offsets[first + i] if offset is None else offset
            out.append(TokenLogprob(text(token), chosen[j], where, top))
        return out


def prompt_echo(tokenizer, prompt: list[int], chosen: list[float], top_ids, top_values,
                k: int) -> Echo:
    """A scored prompt as an `Echo`: its text, decoded incrementally as generated text is (a
    character split across tokens belongs to the token that completes it), where each token's
    text starts, and each token's log-probability (`chosen[i]` is token i + 1's) with its
    `k` most likely alternatives (`top_ids`/`top_values` [len(prompt) - 1][k], or None)."""
    stream = TextStream(tokenizer, offsets=True)
    stream.add(prompt)
    text = stream.take(final=True)
    logprobs = []
    for i, token in enumerate(prompt):
        value, top = (None, None) if i == 0 else (chosen[i - 1], None)
        if i and top_ids is not None:
            top = {token_text(tokenizer, t): v for t, v in zip(top_ids[i - 1][:k],
                                                               top_values[i - 1][:k],
                                                               strict=True)}
        logprobs.append(TokenLogprob(token_text(tokenizer, token), value, stream.offsets[i],
                                     top))
    return Echo(text, logprobs)
