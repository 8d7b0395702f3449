"""The continuous-batching engine behind `photon serve`.

One thread owns a decoder (`FlatDecoder`: one token per step; `PhotonDecoder`:
one meta-context per step) whose preallocated caches have one row per slot. Each turn of its
loop, at a decode-step boundary:
1. sequences whose request was cancelled (the client went away) leave, freeing their slots;
2. waiting requests join, first come first served, as long as free slots and the prefill
   token budget allow: prompts to be scored (echo) get their log-probabilities from one
   teacher-forced pass, those to be completed are prefilled together straight into free
   slots, and a request for n samples prefills once and copies its cache rows into n slots;
   a request that only scores its prompt (max_tokens 0) is answered there and then;
3. one step decodes every running sequence, each sampled with its own settings;
4. every sequence takes its new tokens, stops at EOS, max_tokens or a stop string, and a
   finished sequence frees its slot at once.
Nothing is allocated per step but activations: the caches are built once, for all slots.
Requests talk to the engine through `submit` / `cancel` and a callback that receives an
`Output`; the callback runs on the engine thread and must only hand the output on.

The engine owns the lifecycle (the loop, draining, failures) and the turn; the parts it
drives are testable alone: `scheduler.Scheduler` (admission), `runner.ModelRunner` (the
decoder, its slots and the sampler of each row) and `output.RunningSequence` (text, stop
strings, log-probabilities of each sequence).

Prompt scoring (echo) is the teacher-forced forward pass in every mode. Under RecGen the
server cannot know where a client's context ends and its continuation starts, and RecGen's
likelihood depends on that split: the prompt is the context, read by the encoder, and only
tokens after it are predicted from the decoder's reconstructions. So an echoed prompt is
scored as what it is, the context of whatever is generated next: the forward pass, which is
HierGen's likelihood of the prompt (and RecGen's with the whole prompt as context, for
models without latent teacher forcing). The generated part of an echo request is RecGen's.

`photon serve` gives the loop its main thread (`run`), the one that loaded the model, and
serves HTTP from another. On the CPU, torch's OpenMP runtime (libgomp) throttles the
spin-waiting of its worker threads as soon as the threads of all OpenMP teams outnumber the
cores, and every thread that runs torch work gets a team of its own: a loop on a second
thread made decoding ~10 % slower on 2 cores, its worker threads sleeping between kernels.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable

import torch

from photon.device import GIB
from photon.errors import InputError, PhotonError
from photon.inference.modes import check_mode, mode_label
from photon.inference.prompts import check_fits, check_prompt
from photon.inference.workload import (
    SLOPE_BATCHES,
    analytic_cache_bytes,
    batch_for_budget,
    weight_bytes,
)
from photon.model.lm import Model
from photon.serve.metrics import Metrics
from photon.serve.output import Echo, Output, RunningSequence, prompt_echo
from photon.serve.request import Request
from photon.serve.runner import ModelRunner
from photon.serve.scheduler import Scheduler, group_of

log = logging.getLogger("photon.serve")
SHUTTING_DOWN = "the server is shutting down"


class ShuttingDownError(PhotonError):
    """The server is draining and takes no new requests (HTTP 503)."""


def slots_for_budget(model: Model, mode: str, max_len: int, budget_gib: float
                     ) -> tuple[int, float, bool]:
    """(slots, bytes per slot, measured): how many sequences of `max_len` tokens the budget
    holds.

    Per-slot memory is what `photon bench` measures: the slope of peak memory between two
    batch sizes, here for a decode-heavy workload whose caches hold `max_len` tokens (its
    cache row plus the activations of a decode step), and the batch is chosen by the same
    rule as the benchmark's (budget minus weights and the batch-independent intercept).
    Every slot is sized as if its request asked for logprobs: such a row keeps a step's
    logits (a meta-context's, for PHOTON) until they are read, and any row may.

    The caches' analytic size, a lower bound of a sequence's memory, comes first: the
    measuring runs only at batch sizes the budget holds by it (at most 8), and a budget that
    holds fewer than two sequences by it is answered from it alone (`measured` False), so a
    long context on a small budget costs no more memory than the budget to size.
    """
    cache = max(analytic_cache_bytes(model, mode, max_len, next(model.parameters()).dtype), 1)
    fits = int((budget_gib * GIB - weight_bytes(model)) // cache)
    if fits < 2:
        return max(fits, 0), float(cache), False
    high = min(fits, SLOPE_BATCHES[1])
    prompt = min(16, max_len - 1)
    slots, per_slot = batch_for_budget(model, mode, prompt, max_len - prompt, budget_gib,
                                       max_batch=1 << 20, batches=(max(1, high // 4), high),
                                       keep_logits=True)
    return slots, per_slot, True


class Engine:
    """Continuous batching over `slots` preallocated sequences of up to `max_len` tokens."""

    def __init__(self, model: Model, tokenizer, slots: int, max_len: int,
                 mode: str = "hiergen", max_queue: int = 2048, prefill_tokens: int = 8192,
                 seed: int | None = None, metrics: Metrics | None = None,
                 max_share: float = 0.75) -> None:
        if slots < 1:
            raise InputError(f"the engine needs at least one slot, got {slots}")
        if not 0 < max_share <= 1:
            raise InputError(f"max_share must be in (0, 1], got {max_share}")
        check_mode(model.config, mode)
        self.model, self.tokenizer = model.eval(), tokenizer
        self.mode = mode_label(model.config, mode)
        self.slots, self.max_len = slots, max_len
        self.eos_id = tokenizer.eos_id
        # One client call holds at most this many slots at once (fair admission).
        self.share_cap = max(1, int(max_share * slots))
        self.scheduler = Scheduler(slots, max_queue, prefill_tokens, self.share_cap, max_share)
        self.runner = ModelRunner(model, mode, slots, max_len, seed)
        self.metrics = metrics or Metrics()
        self.metrics.slots.set(slots)
        self.rows: list[RunningSequence] = []  # one per slot in use, in the decoder's row order
        self.peak_running = 0
        self._answered: set[int] = set()  # requests answered in the current turn (by id)
        self._cv = threading.Condition()
        self._drain_deadline: float | None = None
        self._stop = False
        self._thread = threading.Thread(target=self.run, name="photon-engine", daemon=True)

    @property
    def decoder(self):
        """The decoder whose cache rows are the slots."""
        return self.runner.decoder

    @property
    def drain_deadline(self) -> float | None:
        """When unfinished requests are failed (time.monotonic), once draining."""
        return self._drain_deadline

    @property
    def waiting(self):
        """The requests waiting for a slot, in arrival order."""
        return self.scheduler.waiting

    # --- the interface, called from other threads ---------------------------------------------

    def start(self) -> None:
        """Run the loop on a background thread."""
        self._thread.start()

    def submit(self, requests: list[Request]) -> None:
        """Queue requests (all or none): `QueueFullError` if the queue has no room for them,
        `ShuttingDownError` while draining, `InputError` for a request that cannot run."""
        for r in requests:
            self._check(r)
        with self._cv:
            if self._drain_deadline is not None or self._stop:
                raise ShuttingDownError(SHUTTING_DOWN)
            # The free-slot count is a step old at most: the engine thread owns it.
            self.scheduler.add(requests, self.runner.free_slots)
            self._cv.notify()

    def _check(self, r: Request) -> None:
        check_prompt(r.prompt, self.model.config.vocab_size)
        if r.scored and r.prompt_logprobs < 0:
            raise InputError(f"prompt_logprobs must be >= 0, got {r.prompt_logprobs}")
        # A scored prompt may generate nothing (max_tokens 0: scoring only).
        check_fits(len(r.prompt), r.max_tokens, self.max_len, min_new=0 if r.scored else 1)
        if not 1 <= r.n <= self.share_cap:
            raise InputError(f"n must be in [1, {self.share_cap}] (the slots one request may "
                             f"hold), got {r.n}")

    def cancel(self, requests: Iterable[Request]) -> None:
        """Stop these requests' sequences at the next step boundary and free their slots."""
        with self._cv:
            for r in requests:
                r.cancelled = True
            self._cv.notify()

    def drain(self, timeout: float) -> None:
        """Take no new requests; fail those still unfinished after `timeout` seconds. Safe to
        call from a signal handler (it takes no lock)."""
        self._drain_deadline = time.monotonic() + timeout

    def shutdown(self, timeout: float = 0.0) -> None:
        """Drain for up to `timeout` seconds, fail what is left, stop the thread."""
        if self._drain_deadline is None:
            self.drain(timeout)
        with self._cv:
            while (self.waiting or self.rows) and time.monotonic() < self._drain_deadline:
                self._cv.wait(0.05)
            self._stop = True
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join()

    def stats(self) -> dict:
        return {"slots": self.slots, "running": len(self.rows), "waiting": len(self.waiting),
                "max_request_slots": self.share_cap,
                "peak_running": self.peak_running, "max_len": self.max_len,
                "mode": self.mode}

    # --- the loop, on the engine thread ---------------------------------------------------------

    def run(self) -> None:
        """Run the loop on the calling thread until `shutdown`. If the loop itself fails
        (not a step: that is answered and survived), every request is answered with the
        error, no new one is taken, and the exception propagates."""
        message = SHUTTING_DOWN
        try:
            with torch.inference_mode():
                self._loop()
        except BaseException as e:
            message = f"internal error: {e!r}"
            raise
        finally:
            with self._cv:
                self._stop = True
                left = [*self.rows, *self.scheduler.take_all()]
            self._fail(left, message, reset=False)

    def _loop(self) -> None:
        while True:
            started = time.monotonic()  # a busy turn's time includes taking the lock
            with self._cv:
                while not (self.waiting or self.rows or self._stop):
                    self._cv.wait()
                if self._stop:
                    return
                joining = self._next_joining()
            self._answered.clear()
            try:
                self._turn(joining, started)
            except Exception as e:  # a bug: answer everyone, start from empty slots
                log.exception("engine step failed")
                running = {id(s.request) for s in self.rows}
                unjoined = [r for r in joining
                            if id(r) not in running and id(r) not in self._answered]
                self._fail([*self.rows, *unjoined], f"internal error: {e}", reset=True)

    def _next_joining(self) -> list[Request]:
        """The waiting requests that join at this step boundary, by the scheduler's rule;
        slots of cancelled sequences count as free. Called under the lock."""
        free = self.runner.free_slots - sum(s.request.cancelled for s in self.rows)
        running = Counter(group_of(s.request) for s in self.rows if not s.request.cancelled)
        return self.scheduler.admit(free, running, self._dropped)

    def _dropped(self, request: Request) -> None:
        """A waiting request was cancelled before it joined."""
        self.metrics.cancelled.inc(request.n)

    def _turn(self, joining: list[Request], started: float) -> None:
        full = len(self.rows) == self.slots and not joining
        self._finish([r for r, s in enumerate(self.rows) if s.request.cancelled],
                     cancelled=True)
        if self._drain_deadline is not None and time.monotonic() > self._drain_deadline:
            with self._cv:
                left = [*self.scheduler.take_all(), *joining]
            self._fail([*self.rows, *left], SHUTTING_DOWN, reset=False)
            return
        if joining:
            self._join(joining)
        generated = self._step() if self.rows else 0
        self._gauges()
        if full:  # the engine's throughput with every slot busy, bookkeeping included
            self.metrics.full_batch_tokens.inc(generated)
            self.metrics.full_batch_seconds.inc(time.monotonic() - started)

    def _join(self, requests: list[Request]) -> None:
        """Score the prompts to be scored, answer those that only score, prefill the rest
        into free slots."""
        scored = [r for r in requests if r.scored]
        echoes = self._score(scored) if scored else {}
        decoding = [r for r in requests if r.max_tokens > 0 and id(r) not in self._answered]
        if decoding:
            new_rows = self.runner.admit([r.prompt for r in decoding],
                                         [r.n for r in decoding],
                                         [r.sampling for r in decoding])
            for i, copy in new_rows:
                r = decoding[i]
                self.rows.append(RunningSequence(r, copy, self.tokenizer, echoes.get(id(r))))
            self.metrics.prompt_tokens.inc(sum(len(r.prompt) for r in decoding))
            self.peak_running = max(self.peak_running, len(self.rows))
        for r in scored:
            if r.max_tokens == 0 and id(r) not in self._answered:
                for i in range(r.n):
                    self._emit(r, Output(i, "", [], [], "length", echo=echoes[id(r)]))
                self._answered.add(id(r))

    def _score(self, requests: list[Request]) -> dict[int, Echo]:
        """The prompts' log-probabilities from one teacher-forced pass, as each request's
        `Echo` (by id). A request whose scoring fails is answered with the error alone."""
        try:
            scores = self.runner.score([r.prompt for r in requests],
                                       max(r.prompt_logprobs for r in requests))
        except Exception as e:  # noqa: BLE001 - the requests fail, the engine goes on
            log.exception("scoring prompts failed")
            for r in requests:
                self._fail_waiting(r, f"scoring the prompt failed: {e}")
            return {}
        self.metrics.scored_tokens.inc(sum(len(r.prompt) for r in requests))
        echoes = {}
        for r, (chosen, top_ids, top_values) in zip(requests, scores, strict=True):
            try:
                echoes[id(r)] = prompt_echo(self.tokenizer, r.prompt, chosen, top_ids,
                                            top_values, r.prompt_logprobs)
            except Exception as e:  # noqa: BLE001 - a bug in one request's output
                log.exception("output processing failed")
                self._fail_waiting(r, f"internal error: {e}")
        return echoes

    def _fail_waiting(self, request: Request, message: str) -> None:
        """Answer every sequence of a request that holds no slot yet with an error."""
        for i in range(request.n):
            self._emit(request, Output(i, "", [], error=message))
        self._answered.add(id(request))

    def _step(self) -> int:
        """Decode one step of every running sequence; returns the tokens it kept."""
        started = time.monotonic()
        want = {r: s.request.logprobs for r, s in enumerate(self.rows)
                if s.request.logprobs is not None}
        tokens, new, logprob_rows, failed = self.runner.step(want)
        finished: list[int] = []
        now, generated = time.monotonic(), 0
        for r, message in failed.items():  # only these requests fail; the batch goes on
            self._fail_request(self.rows[r].request, message, finished)
        for r, seq in enumerate(self.rows):
            if r in finished:
                continue
            n_before = len(seq.text.ids)
            try:
                output = seq.take(tokens[r], new[r], self.eos_id, logprob_rows.get(r))
            except Exception as e:  # a bug in one sequence's output must not stop the rest
                log.exception("output processing failed")
                self._fail_request(seq.request, f"internal error: {e}", finished)
                continue
            generated += len(seq.text.ids) - n_before
            if not seq.started:
                seq.started = True
                self.metrics.ttft.observe(now - seq.request.arrival)
            if output is not None:
                self._emit(seq.request, output)
            if seq.done:
                finished.append(r)
        self.metrics.generated_tokens.inc(generated)
        self.metrics.steps.inc()
        self.metrics.step_seconds.observe(time.monotonic() - started)
        self._finish(finished)
        return generated

    def _fail_request(self, request: Request, message: str, finished: list[int]) -> None:
        """Answer every running sequence of `request` with an error and add its rows to
        `finished`: a failure inside a step costs that request alone."""
        log.error("a request failed in a step: %s", message)
        for r, seq in enumerate(self.rows):
            if seq.request is request and r not in finished:
                self._emit(request, Output(seq.index, "", [], error=message))
                finished.append(r)

    def _finish(self, rows: list[int], cancelled: bool = False) -> None:
        """Free the slots of these rows at once."""
        if not rows:
            return
        if cancelled:
            self.metrics.cancelled.inc(len(rows))
        order = self.runner.release(rows)
        self.rows = [self.rows[o] for o in order]
        with self._cv:
            self._cv.notify_all()  # a draining shutdown waits for the batch to empty

    def _fail(self, items: list, message: str, reset: bool) -> None:
        """Drop running sequences and waiting requests and answer them with an error; with
        `reset`, first rebuild the runner's decoder, whose state may be inconsistent after a
        failure."""
        if reset:
            with self._cv:  # submit reads the free slots
                self.runner.reset()
        elif self.rows:
            self.runner.release_all()
        self.rows = []
        for item in items:
            if isinstance(item, RunningSequence):
                self._emit(item.request, Output(item.index, "", [], error=message))
            elif not item.cancelled:
                for i in range(item.n):
                    self._emit(item, Output(i, "", [], error=message))
        self._gauges()
        with self._cv:
            self._cv.notify_all()

    @staticmethod
    def _emit(request: Request, output: Output) -> None:
        try:
            request.on_output(output)
        except Exception:  # a receiver that is gone must not stop the engine
            log.exception("delivering an output failed")

    def _gauges(self) -> None:
        m = self.metrics
        m.queue_depth.set(len(self.waiting))
        m.running.set(len(self.rows))
        m.occupancy.set(len(self.rows) / self.slots)


__all__ = ["Engine", "SHUTTING_DOWN", "ShuttingDownError", "slots_for_budget"]
