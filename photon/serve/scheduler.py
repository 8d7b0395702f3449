"""Admission: which waiting requests join the running batch, and when a request must wait.

Requests wait in arrival order. At each step boundary the head of the queue joins as long
as the free slots and the prefill token budget allow (one prefill pass serves every request
that joins, so its cost is bounded); the queue holds at most `max_queue` requests beyond
those the free slots will take.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from photon.errors import PhotonError
from photon.serve.output import Request


class QueueFullError(PhotonError):
    """The queue of waiting requests is full (HTTP 429)."""


class Scheduler:
    """The waiting requests and the rule that admits them."""

    def __init__(self, max_queue: int, prefill_tokens: int) -> None:
        self.max_queue, self.prefill_tokens = max_queue, prefill_tokens
        self.waiting: deque[Request] = deque()

    def __len__(self) -> int:
        return len(self.waiting)

    def add(self, requests: list[Request], free_slots: int) -> None:
        """Queue requests, all or none. Those that the free slots will take at the next step
        boundary do not count against the queue's limit."""
        if len(self.waiting) + len(requests) - free_slots > self.max_queue:
            raise QueueFullError(f"the queue is full ({len(self.waiting)} requests wait, "
                                 f"{free_slots} slots free, at most {self.max_queue} may "
                                 f"wait for a slot)")
        self.waiting.extend(requests)

    def admit(self, free_slots: int, on_cancelled: Callable[[Request], None]) -> list[Request]:
        """The waiting requests that join now (first come, first served): as many as fit
        `free_slots` and the prefill token budget. Cancelled ones are dropped."""
        joining: list[Request] = []
        while self.waiting:
            r = self.waiting[0]
            if r.cancelled:
                on_cancelled(self.waiting.popleft())
                continue
            longest = max([len(r.prompt), *(len(j.prompt) for j in joining)])
            if r.n > free_slots or joining and longest * (len(joining) + 1) > \
                    self.prefill_tokens:
                break
            joining.append(self.waiting.popleft())
            free_slots -= r.n
        return joining

    def take_all(self) -> list[Request]:
        """Every waiting request, removed from the queue (to be failed)."""
        left, self.waiting = list(self.waiting), deque()
        return left
