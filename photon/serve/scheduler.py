"""Admission: which waiting requests join the running batch, and when a request must wait.

Requests wait in arrival order. At each step boundary waiting requests join in that order as
long as the free slots and the prefill token budget allow (one prefill pass serves every
request that joins, so its cost is bounded). Fairness: the requests of one client call (one
HTTP request may hold many prompts, each an engine request of the same `group`) may hold at
most `share_cap` slots at once; the rest of that call waits while later calls go ahead, so
a small request behind a huge one starts as soon as a slot is free. The queue holds at most
`max_queue` sequences beyond those the free slots will take.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Hashable

from photon.errors import PhotonError
from photon.serve.output import Request


class QueueFullError(PhotonError):
    """The queue of waiting requests is full (HTTP 429)."""


def group_of(request: Request) -> Hashable:
    """The client call a request belongs to (itself when it came alone)."""
    return id(request) if request.group is None else request.group


class Scheduler:
    """The waiting requests and the rule that admits them."""

    def __init__(self, max_queue: int, prefill_tokens: int, share_cap: int) -> None:
        self.max_queue, self.prefill_tokens = max_queue, prefill_tokens
        self.share_cap = share_cap
        self.waiting: deque[Request] = deque()

    def __len__(self) -> int:
        return len(self.waiting)

    def add(self, requests: list[Request], free_slots: int) -> None:
        """Queue requests, all or none. The sequences that the free slots will take at the
        next step boundary do not count against the queue's limit."""
        waiting = sum(r.n for r in self.waiting)
        if waiting + sum(r.n for r in requests) - free_slots > self.max_queue:
            raise QueueFullError(f"the queue is full ({waiting} sequences wait, "
                                 f"{free_slots} slots free, at most {self.max_queue} may "
                                 f"wait for a slot)")
        self.waiting.extend(requests)

    def admit(self, free_slots: int, running: Counter,
              on_cancelled: Callable[[Request], None]) -> list[Request]:
        """The waiting requests that join now, in arrival order: as many as fit
        `free_slots` and the prefill token budget, skipping (for now) those whose client
        call already holds its share of the slots (`running`: slots held per group).
        Cancelled ones are dropped."""
        joining: list[Request] = []
        held = Counter(running)
        kept: deque[Request] = deque()
        while self.waiting:
            r = self.waiting.popleft()
            if r.cancelled:
                on_cancelled(r)
                continue
            if held[group_of(r)] + r.n > self.share_cap:
                kept.append(r)
                continue
            longest = max([len(r.prompt), *(len(j.prompt) for j in joining)])
            if r.n > free_slots or joining and longest * (len(joining) + 1) > \
                    self.prefill_tokens:
                kept.append(r)
                break
            joining.append(r)
            held[group_of(r)] += r.n
            free_slots -= r.n
        kept.extend(self.waiting)
        self.waiting = kept
        return joining

    def take_all(self) -> list[Request]:
        """Every waiting request, removed from the queue (to be failed)."""
        left, self.waiting = list(self.waiting), deque()
        return left
