"""Admission: which waiting requests join the running batch, and when a request must wait.

Requests wait in arrival order. At each step boundary waiting requests join in that order as
long as the free slots and the prefill token budget allow (one prefill pass serves every
request that joins, so its cost is bounded). A request that scores its prompt (echo) costs
that prompt's tokens once more, for its teacher-forced pass, and one that only scores
(max_tokens 0) holds no slot.

Fairness: the requests of one client call (one HTTP request may hold many prompts, each an
engine request of the same `group`) may hold at most `share_cap` slots at once, and take at
most `share_cap / slots` of a step's prefill budget while another call waits behind them;
the rest of that call waits while later calls go ahead, so a small request behind a huge one
(a burst of scoring prompts included) starts at the next step. A request waiting for free
slots keeps its place before every later request that needs slots, but requests that need
none (scoring only) go past it: they do not take the slots it waits for. The queue holds at
most `max_queue` sequences that need a slot beyond those the free slots will take; requests
that need more than the slots and the queue hold together are refused as never fitting.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Hashable

from photon.errors import InputError, PhotonError
from photon.serve.request import Request


class QueueFullError(PhotonError):
    """The queue of waiting requests is full (HTTP 429)."""


def group_of(request: Request) -> Hashable:
    """The client call a request belongs to (itself when it came alone)."""
    return id(request) if request.group is None else request.group


class PrefillCost:
    """Tokens one step's prefill and scoring passes hold, as requests are added: each
    pass's rows are padded to its longest prompt."""

    def __init__(self) -> None:
        self.longest, self.rows = [0, 0], [0, 0]  # of the prefill pass, of the scoring pass

    @staticmethod
    def _passes(r: Request) -> tuple[bool, bool]:
        return bool(r.slots), r.scored

    def with_(self, r: Request) -> int:
        """The cost once `r` joins too."""
        return sum(max(longest, len(r.prompt)) * (rows + 1) if used else longest * rows
                   for longest, rows, used in zip(self.longest, self.rows, self._passes(r),
                                                  strict=True))

    def add(self, r: Request) -> None:
        for i, used in enumerate(self._passes(r)):
            if used:
                self.longest[i] = max(self.longest[i], len(r.prompt))
                self.rows[i] += 1


def own_cost(request: Request) -> int:
    """Prompt tokens a request itself brings to a step: once per pass it joins."""
    return len(request.prompt) * (bool(request.slots) + request.scored)


class Scheduler:
    """The waiting requests and the rule that admits them."""

    def __init__(self, slots: int, max_queue: int, prefill_tokens: int, share_cap: int,
                 share: float = 1.0) -> None:
        self.slots, self.max_queue, self.prefill_tokens = slots, max_queue, prefill_tokens
        self.share_cap = share_cap
        # Prefill tokens one call may take in a step while other calls wait.
        self.share_tokens = max(1, int(share * prefill_tokens))
        self.waiting: deque[Request] = deque()

    def __len__(self) -> int:
        return len(self.waiting)

    def add(self, requests: list[Request], free_slots: int) -> None:
        """Queue requests, all or none. Only sequences that need a slot count against the
        queue's limit, less those the free slots will take at the next step boundary:
        `QueueFullError` (retry later) when they do not fit now, `InputError` when they
        need more than the slots and the queue hold together (a retry cannot help)."""
        need = sum(r.slots for r in requests)
        if need > self.slots + self.max_queue:
            raise InputError(f"{need} sequences need a slot, more than this server's "
                             f"{self.slots} slots and queue of {self.max_queue} can ever "
                             "hold at once: send fewer prompts or completions per request")
        waiting = sum(r.slots for r in self.waiting)
        if waiting + need - free_slots > self.max_queue:
            raise QueueFullError(f"the queue is full ({waiting} sequences wait, "
                                 f"{free_slots} slots free, at most {self.max_queue} may "
                                 f"wait for a slot)")
        self.waiting.extend(requests)

    def admit(self, free_slots: int, running: Counter,
              on_cancelled: Callable[[Request], None]) -> list[Request]:
        """The waiting requests that join now, in arrival order: as many as fit
        `free_slots` and the prefill token budget, skipping (for now) those whose client
        call already holds its share of the slots (`running`: slots held per group) or has
        taken its share of this step's prefill budget while other calls wait. Once a request
        waits for slots, only requests that need none may pass it. Cancelled ones are
        dropped."""
        joining: list[Request] = []
        held = Counter(running)
        spent: Counter = Counter()  # prefill tokens each call takes in this step
        behind = Counter(group_of(r) for r in self.waiting)  # waiting after the current one
        n_behind = len(self.waiting)
        kept: deque[Request] = deque()
        kept_of: Counter = Counter()  # kept requests per call

        def keep(r: Request, group: Hashable) -> None:
            kept.append(r)
            kept_of[group] += 1

        cost = PrefillCost()
        slots_blocked = False
        while self.waiting:
            r = self.waiting.popleft()
            group = group_of(r)
            behind[group] -= 1
            n_behind -= 1
            if r.cancelled:
                on_cancelled(r)
                continue
            if r.slots and (slots_blocked or held[group] + r.slots > self.share_cap):
                keep(r, group)
                continue
            others_wait = n_behind > behind[group] or len(kept) > kept_of[group]
            if spent[group] and others_wait and \
                    spent[group] + own_cost(r) > self.share_tokens:
                keep(r, group)
                continue
            if joining and cost.with_(r) > self.prefill_tokens:
                keep(r, group)
                break
            if r.slots > free_slots:
                keep(r, group)
                slots_blocked = True  # later requests that need slots wait behind it
                continue
            joining.append(r)
            cost.add(r)
            held[group] += r.slots
            spent[group] += own_cost(r)
            free_slots -= r.slots
        kept.extend(self.waiting)
        self.waiting = kept
        return joining

    def take_all(self) -> list[Request]:
        """Every waiting request, removed from the queue (to be failed)."""
        left, self.waiting = list(self.waiting), deque()
        return left
