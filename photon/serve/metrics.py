"""Prometheus metrics of a server, in a registry of its own (served at GET /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)


class Metrics:
    """Counters, gauges and histograms the engine and the HTTP layer update."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("photon_requests", "HTTP requests by path and status code",
                                ["path", "code"], registry=r)
        self.latency = Histogram("photon_request_latency_seconds",
                                 "time from receiving a completion request to its last byte",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("photon_time_to_first_token_seconds",
                              "time from queueing a request to its first generated token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("photon_prompt_tokens", "prompt tokens prefilled",
                                     registry=r)
        self.generated_tokens = Counter("photon_generation_tokens", "tokens generated",
                                        registry=r)
        self.queue_depth = Gauge("photon_queue_depth", "requests waiting for a slot",
                                 registry=r)
        self.running = Gauge("photon_running_sequences", "sequences decoding now", registry=r)
        self.slots = Gauge("photon_slots", "sequences the preallocated caches hold", registry=r)
        self.occupancy = Gauge("photon_batch_occupancy", "running sequences / slots",
                               registry=r)
        self.cancelled = Counter("photon_cancelled_sequences",
                                 "sequences stopped because their client went away",
                                 registry=r)
        self.steps = Counter("photon_decode_steps", "decode steps of the whole batch",
                             registry=r)
        self.step_seconds = Histogram("photon_decode_step_seconds", "time of one decode step",
                                      buckets=LATENCY_BUCKETS, registry=r)
