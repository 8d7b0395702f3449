"""What the engine tests share: serving requests and waiting for their outputs (the
`engine_of` fixture is in conftest.py). Kept out of conftest.py, which every test imports,
so that the model tests do not need the serve extra."""

import threading

from photon.serve.engine import Engine
from photon.serve.output import Output
from photon.serve.request import Request


def serve(engine: Engine, requests: list[Request], timeout: float = 120) -> list[list[Output]]:
    """Submit requests at once and wait for every sequence's last output."""
    outputs = {id(r): [] for r in requests}
    left = [sum(r.n for r in requests)]
    done, lock = threading.Event(), threading.Lock()
    for r in requests:
        def on_output(output, r=r):
            outputs[id(r)].append(output)
            if output.finish_reason or output.error:
                with lock:
                    left[0] -= 1
                    if not left[0]:
                        done.set()
        r.on_output = on_output
    engine.submit(requests)
    assert done.wait(timeout), "the engine did not answer in time"
    return [outputs[id(r)] for r in requests]


def sequences(outputs: list[Output]) -> dict[int, list[int]]:
    """Token ids per sequence index, joined over a stream's outputs."""
    ids: dict[int, list[int]] = {}
    for o in outputs:
        ids.setdefault(o.index, []).extend(o.token_ids)
    return ids
