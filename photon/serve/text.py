"""Text of generated tokens as a server hands it out: incremental, final, cut at stops."""

from __future__ import annotations

import codecs
from collections.abc import Sequence


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
