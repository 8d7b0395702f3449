"""Text to and from token ids as a server needs it: prompts encoded within a bound, and the
text of generated tokens handed out incrementally, final, cut at stops."""

from __future__ import annotations

import codecs
import json
from collections.abc import Sequence


class PromptTooLong(Exception):
    """A prompt has more tokens than it may: `tokens` of them, or at least that many
    (`exact` False) when it was refused from its length before it was tokenized."""

    def __init__(self, tokens: int, exact: bool) -> None:
        super().__init__(f"{'' if exact else 'at least '}{tokens} tokens")
        self.tokens, self.exact = tokens, exact


def longest_token_bytes(tokenizer) -> int | None:
    """The most UTF-8 bytes of text one token stands for, where every token spells out its
    text (raw bytes; a byte-level BPE without a normalizer): a text of B bytes then has at
    least B / that many tokens. None where a normalizer may shrink the text first, or the
    tokens need not spell it out."""
    if tokenizer.kind == "bytes":
        return 1
    spec = json.loads(tokenizer.backend.to_str())
    if spec.get("normalizer") is not None or "ByteLevel" not in json.dumps(spec["decoder"]):
        return None
    # A special token's text in a prompt is that one token (token_bytes counts it as 0).
    added = [len(t.content.encode("utf-8"))
             for t in tokenizer.backend.get_added_tokens_decoder().values()]
    return max([*tokenizer.token_bytes(), *added])


class PromptEncoder:
    """Prompt text to token ids, as `Tokenizer.encode` gives them, within a bound: a text
    whose length shows it cannot fit is refused before it is tokenized, and tokenizing never
    holds the GIL for long. (HF tokenizers hold it through `encode`: 6 s for 3 MB of text,
    with the event loop and the engine stopped; `encode_batch` releases it.)"""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.backend = None if tokenizer.kind == "bytes" else tokenizer.backend
        self.token_bytes = longest_token_bytes(tokenizer)

    def encode(self, text: str, room: int | None = None) -> list[int]:
        """The token ids of `text` (valid Unicode); `PromptTooLong` beyond `room` tokens
        (None: no bound)."""
        if room is None:
            room = len(text.encode("utf-8"))  # no text has more tokens than bytes
        if self.token_bytes is not None:
            size = len(text.encode("utf-8"))
            if size > room * self.token_bytes:
                raise PromptTooLong(-(-size // self.token_bytes), exact=False)
        if self.backend is None:  # raw bytes: at most `room` of them, by the bound above
            return self.tokenizer.encode(text)
        encoding = self.backend.encode_batch([text], add_special_tokens=False)[0]
        if len(encoding) > room:  # refused before its ids become a Python list
            raise PromptTooLong(len(encoding), exact=True)
        return encoding.ids


class TextStream:
    """The text of a growing list of token ids, cut at the first stop string.

    Tokens are turned into bytes and fed to an incremental UTF-8 decoder, so a character
    split across tokens appears once it is whole, and the text always equals
    `tokenizer.decode` of all the ids (up to the cut). `take` hands out the pieces that can
    no longer change, so streamed pieces join to exactly the final text.
    """

    def __init__(self, tokenizer, stop: Sequence[str] = (), offsets: bool = False) -> None:
        self.tokenizer = tokenizer
        # With `offsets`, offsets[i] is where token i's text starts (log-probabilities).
        self.offsets: list[int] | None = [] if offsets else None
        self.stop = tuple(stop)
        # Characters at the end that could still be the start of a stop string.
        self.hold = max(map(len, self.stop), default=1) - 1
        self.ids: list[int] = []
        self.text = ""
        self.stopped = False
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._shown = 0  # text[:_shown] has been handed out

    def add(self, ids: Sequence[int]) -> int:
        """Append generated ids. Returns how many were kept: all of them, or those up to the
        one that completes a stop string (then `stopped` is set; the text ends before it)."""
        if not self.stop and self.offsets is None:  # decode the step's tokens at once
            self.ids.extend(ids)
            self.text += self._utf8.decode(self.tokenizer.decode_bytes(ids))
            return len(ids)
        for i, token in enumerate(ids):
            self.ids.append(token)
            start = len(self.text)
            if self.offsets is not None:
                self.offsets.append(start)
            self.text += self._utf8.decode(self.tokenizer.decode_bytes([token]))
            if self._cut(start):
                return i + 1
        return len(ids)

    def _cut(self, start: int) -> bool:
        """Cut the text at the first stop string that ends after position `start`."""
        lo = max(0, start - self.hold)
        hits = [i for s in self.stop if (i := self.text.find(s, lo)) >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            self.stopped = True
        return bool(hits)

    def take(self, final: bool = False) -> str:
        """Text not handed out yet that can no longer change; `final` (the sequence has
        ended) hands out all the rest, an unfinished character included (as U+FFFD)."""
        if final and not self.stopped:
            start = len(self.text)
            self.text += self._utf8.decode(b"", final=True)
            self._cut(start)
        end = len(self.text)
        if not (final or self.stopped):
            end = max(self._shown, end - self.hold)
        piece, self._shown = self.text[self._shown:end], end
        return piece
