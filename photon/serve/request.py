"""The engine's request: a prompt to complete (or score), its sampling settings and the
callback that receives its outputs (vLLM's `v1/request.py`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from photon.serve.output import Output
from photon.serve.sampling import SamplingParams


@dataclass
class Request:
    """A prompt (token ids) to complete `n` times, one slot per sequence. A streamed
    request receives an `Output` per step; otherwise one per sequence, when it ends.

    With `prompt_logprobs` (k), the prompt is scored by a teacher-forced pass when it joins:
    every sequence's first output carries it as an `Echo` with k alternatives per token. A
    scored request with `max_tokens` 0 holds no slot: its n outputs come at once."""

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
    prompt_logprobs: int | None = None  # None: the prompt is not scored; k: scored (echo)

    @property
    def slots(self) -> int:
        """Slots the request holds while it runs: none if it only scores its prompt."""
        return self.n if self.max_tokens > 0 else 0

    @property
    def scored(self) -> bool:
        return self.prompt_logprobs is not None
