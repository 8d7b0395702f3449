"""`photon serve`: an OpenAI-compatible HTTP server with continuous batching."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import threading
from typing import TYPE_CHECKING

from photon.cli.flags import (
    fraction,
    mebibytes,
    non_negative_float,
    port,
    positive_float,
    positive_int,
    seed,
)
from photon.device import DTYPE_HELP, DTYPES
from photon.errors import DependencyError, InputError
from photon.inference.modes import MODES

if TYPE_CHECKING:
    import uvicorn

    from photon.serve.engine import Engine

DEFAULT_CONNECTIONS = 4096
SPARE_FILES = 64  # open files besides the connections: the model's, logs, the event loop's


def api_key(flag: str | None) -> str | None:
    """The key clients must send: --api-key, else $PHOTON_API_KEY, else none. A key that is
    given but empty or blank (an unset variable: --api-key "$KEY") is refused, not taken as
    no key; so is one that cannot be sent in an Authorization header."""
    key, source = (flag, "--api-key") if flag is not None else \
        (os.environ.get("PHOTON_API_KEY"), "$PHOTON_API_KEY")
    if key is None:
        return None
    if not key.strip():
        raise InputError(f"{source} is empty: give a key, or leave it out to serve without "
                         "authentication")
    if not (key.isascii() and key.isprintable()) or key != "".join(key.split()):
        raise InputError(f"{source} must be printable ASCII without spaces (clients send it "
                         "in an Authorization header)")
    return key


def connection_limit(requested: int | None) -> int:
    """Connections served at once: `requested` (default DEFAULT_CONNECTIONS, or what the
    open-file limit allows), raising the process's soft open-file limit as far as needed and
    allowed; a requested number the hard limit cannot hold is refused."""
    try:
        import resource
    except ImportError:  # not a Unix: no limit to read
        return requested or DEFAULT_CONNECTIONS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard_cap = hard if hard != resource.RLIM_INFINITY else 1 << 20
    wanted = requested or min(DEFAULT_CONNECTIONS, hard_cap - SPARE_FILES)
    if wanted < 1 or wanted + SPARE_FILES > hard_cap:
        raise InputError(f"--max-connections {wanted} needs {wanted + SPARE_FILES} open files; "
                         f"this process may open {hard_cap} (ulimit -Hn)")
    if soft != resource.RLIM_INFINITY and soft < wanted + SPARE_FILES:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted + SPARE_FILES, hard))
    return wanted


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound socket (port 0 picks a free one), so the address is known before serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def size_slots(args: argparse.Namespace, model, device, max_len: int) -> tuple[int, str]:
    """(slots, how they were chosen), checked against the memory the machine has before
    anything is allocated: a budget must be finite, positive, within the free memory and
    hold at least one sequence; --max-batch slots must fit the free memory too."""
    import torch

    from photon.device import GIB, available_memory
    from photon.inference.workload import analytic_cache_bytes, weight_bytes
    from photon.serve.engine import slots_for_budget

    free = available_memory(device)
    if args.max_batch:
        cache = analytic_cache_bytes(model, args.mode, max_len, next(model.parameters()).dtype)
        need = args.max_batch * cache
        if need > free:
            raise InputError(f"--max-batch {args.max_batch} needs {need / GIB:.2f} GiB of KV "
                             f"cache at --max-length {max_len}, more than the "
                             f"{free / GIB:.2f} GiB free on {device}")
        return args.max_batch, "--max-batch"
    budget = args.memory_budget
    if budget is None:
        budget = 0.9 * free / GIB if device.type == "cuda" else min(2.0, 0.9 * free / GIB)
    if budget * GIB > free:
        raise InputError(f"--memory-budget {budget:g} GiB is more than the {free / GIB:.2f} "
                         f"GiB free on {device}")
    with torch.inference_mode():
        slots, per_slot, measured = slots_for_budget(model, args.mode, max_len, budget)
    if slots < 1:
        raise InputError(f"--memory-budget {budget:g} GiB holds no sequence: the weights take "
                         f"{weight_bytes(model) / GIB:.3f} GiB and one sequence of {max_len} "
                         f"tokens {'' if measured else 'at least '}{per_slot / 2**20:.3f} MiB")
    how = "measured as photon bench does" if measured else "its caches' size"
    return slots, f"{budget:.2f} GiB budget / {per_slot / 2**20:.3f} MiB per sequence, {how}"


def run(args: argparse.Namespace) -> None:
    try:
        import uvicorn

        from photon.serve.api import Limits, create_app
    except ImportError as e:
        raise DependencyError(f"photon serve needs the serve extra ({e.name} is missing): "
                              "pip install -e '.[serve]'") from None
    import torch

    from photon.checkpoint import load_model
    from photon.device import device_and_dtype
    from photon.serve.engine import Engine

    key = api_key(args.api_key)
    if args.max_bodies_mb < args.max_body_mb:
        raise InputError(f"--max-bodies-mb {args.max_bodies_mb:g} is less than --max-body-mb "
                         f"{args.max_body_mb:g}: a body of the largest size could never be read")
    max_connections = connection_limit(args.max_connections)
    device, dtype = device_and_dtype(args.device, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.checkpoint, device=device)
    model = model.to(dtype)
    name = args.model_name or os.path.basename(os.path.normpath(args.checkpoint))
    max_len = args.max_length or model.config.max_seq_len
    slots, how = size_slots(args, model, device, max_len)
    engine = Engine(model, tokenizer, slots, max_len, mode=args.mode, max_queue=args.max_queue,
                    prefill_tokens=args.prefill_tokens, seed=args.seed,
                    max_share=args.max_share)
    limits = Limits(max_body_bytes=int(args.max_body_mb * 2**20),
                    max_bodies_bytes=int(args.max_bodies_mb * 2**20),
                    body_timeout=args.body_timeout, max_request_seqs=args.max_request_seqs)
    app = create_app(engine, name, key, start_engine=False, limits=limits)
    sock = listening_socket(args.host, args.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    print(f"{name}: {engine.mode if engine.mode != '-' else 'flat'} decoding, {slots} slots of "
          f"{max_len} tokens ({how}), {device}, {str(dtype).removeprefix('torch.')}"
          f"{', API key required' if key else ''}, at most {max_connections} connections")
    print(f"listening on {url}  (OpenAI API at {url}/v1; Ctrl-C drains and stops)", flush=True)

    from photon.serve.http import bounded_protocol

    config = uvicorn.Config(app, log_level=args.log_level, access_log=args.access_log,
                            timeout_graceful_shutdown=int(args.drain_timeout) + 5,
                            http=bounded_protocol(args.header_timeout, max_connections))
    serve_forever(engine, uvicorn.Server(config), sock, args.drain_timeout)


def serve_forever(engine: Engine, server: uvicorn.Server, sock: socket.socket,
                  drain_timeout: float) -> None:
    """HTTP on a thread, the engine's loop on this one (the main thread, which loaded the
    model: see photon.serve.engine). The first Ctrl-C / SIGTERM drains: running requests get
    `drain_timeout` seconds to finish; a second one fails them after the current step. The
    process then ends by the signal, as uvicorn's own handling would. If either thread
    fails, the other stops and the failure is raised here."""
    received: list[int] = []
    http_failed: list[BaseException] = []

    def on_signal(sig: int, frame) -> None:
        engine.drain(0.0 if received else drain_timeout)
        received.append(sig)
        server.handle_exit(sig, frame)  # the second one makes uvicorn quit at once

    def serve_http() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as e:  # SystemExit too: how uvicorn reports a failed startup
            http_failed.append(e)
        finally:  # no more requests come in: let the engine finish (drain) and stop
            engine.shutdown()

    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, on_signal) for sig in handled}
    http = threading.Thread(target=serve_http, name="photon-http")
    http.start()
    try:
        engine.run()
    finally:  # the engine answered what it held; HTTP must not take requests it cannot
        server.should_exit = True
        http.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if http_failed:
        raise http_failed[0]
    for sig in reversed(received):
        # End by the signal even where it was ignored when the process started (a shell's
        # background job ignores SIGINT): the handler above did take it.
        if signal.getsignal(sig) is signal.SIG_IGN:
            signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT
                          else signal.SIG_DFL)
        signal.raise_signal(sig)


def add_parser(verbs) -> None:
    p = verbs.add_parser(
        "serve", help="an OpenAI-compatible HTTP server with continuous batching",
        description="Serve a checkpoint with OpenAI's completions API (POST /v1/completions, "
                    "GET /v1/models) plus GET /health and GET /metrics (Prometheus). Requests "
                    "join the running batch at the next decode step (one meta-context for "
                    "PHOTON, one token for a flat model), each with its own prompt, sampling "
                    "settings, seed and stop strings, and leave it as soon as they finish. The "
                    "number of slots (sequences decoded at once) is what the memory budget "
                    "holds, at the per-sequence memory `photon bench` measures: PHOTON's small "
                    "state fits many more sequences than a flat model's KV cache. Needs the "
                    "serve extra: pip install -e '.[serve]'.",
        epilog="Example: photon serve runs/photon-small --mode recgen --memory-budget 2, then: "
               "curl localhost:8000/v1/completions -H 'Content-Type: application/json' -d "
               "'{\"model\": \"photon-small\", \"prompt\": \"ROMEO:\", \"max_tokens\": 64}'")
    p.add_argument("checkpoint", help="checkpoint or run folder (the latest checkpoint)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port, default=8000, help="port (0: any free port)")
    p.add_argument("--mode", choices=MODES, default="hiergen",
                   help="PHOTON decoding schedule (ignored by flat models)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--memory-budget", type=positive_float, metavar="GIB",
                      help="memory for weights and sequences; sets the slots (default: 2 on "
                           "the CPU, 90%% of the free GPU memory on CUDA)")
    size.add_argument("--max-batch", type=positive_int, metavar="N",
                      help="exactly N slots instead")
    p.add_argument("--max-length", type=positive_int,
                   help="tokens per sequence, prompt and completion (default: the model's "
                        "training context)")
    p.add_argument("--max-queue", type=positive_int, default=2048,
                   help="sequences that may wait for a slot; more are answered 429, and a "
                        "request that needs more than the slots and the queue together 400")
    p.add_argument("--max-share", type=fraction, default=0.75,
                   help="fraction of the slots one request may hold at once, and of a "
                        "step's prefill budget while other requests wait (fair admission: "
                        "the rest of a large request waits while later ones go ahead); "
                        "also the most completions (n, best_of) of one prompt")
    p.add_argument("--max-request-seqs", type=positive_int,
                   help="sequences one request may ask for, prompts x n (default: 4 x the "
                        "slots); more is a 400")
    p.add_argument("--max-body-mb", type=mebibytes(1024), default=8.0,
                   help="largest request body in MiB; a larger one is answered 413 before "
                        "it is read")
    p.add_argument("--max-bodies-mb", type=mebibytes(1024), default=64.0,
                   help="MiB of request bodies held at once beyond the first 64 KiB of "
                        "each, while they are received, parsed and tokenized; a body beyond is "
                        "answered 503 with Retry-After")
    p.add_argument("--prefill-tokens", type=positive_int, default=8192,
                   help="prompt tokens prefilled or scored (echo) together at one step "
                        "boundary (the first waiting request always joins)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 requests "
                                     "and /tokenize, /detokenize, /tokenizer_info "
                                     "(default: $PHOTON_API_KEY; none if unset; an empty "
                                     "key is refused, not taken as none)")
    p.add_argument("--model-name", help="the model id clients send (default: the checkpoint "
                                        "folder's name)")
    p.add_argument("--drain-timeout", type=non_negative_float, default=30.0,
                   help="on Ctrl-C / SIGTERM, seconds to let running requests finish before "
                        "they are answered with an error")
    p.add_argument("--header-timeout", type=positive_float, default=10.0,
                   help="seconds a connection has to send a request's line and headers, from "
                        "its opening or the end of the previous response, before it is "
                        "closed")
    p.add_argument("--body-timeout", type=positive_float, default=60.0,
                   help="seconds a request's body may take to arrive after its headers; a "
                        "slower one is answered 408 and its connection closed")
    p.add_argument("--max-connections", type=positive_int,
                   help=f"connections open at once; one more is answered 503 and closed "
                        f"(default {DEFAULT_CONNECTIONS}, or what the open-file limit allows)")
    p.add_argument("--seed", type=seed, help="seed of the generator unseeded requests share")
    p.add_argument("--threads", type=positive_int, help="CPU threads (default: torch's)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", choices=list(DTYPES), help=DTYPE_HELP)
    p.add_argument("--log-level", default="warning",
                   choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(run=run)
