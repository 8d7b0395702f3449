"""Fixtures the test modules share (the architectures and their builder are in
tests/models.py, helpers to serve requests in tests/serving.py). Two groups of tests,
told apart by the `e2e` marker (registered in pyproject.toml):

- quick unit tests, in this process: `python -m pytest -q -m "not e2e and not slow"`;
- end-to-end tests, marked `@pytest.mark.e2e`: they start a process or a server (`photon`
  commands in a subprocess, torchrun, `photon serve` on a loopback port driven over HTTP):
  `python -m pytest -q -m e2e`.

The default `python -m pytest -q` runs both, as CI does. tests/test_layout.py checks that a
test carries the marker exactly when it starts such a process.
"""

import pytest


@pytest.fixture
def engine_of():
    """build(model, tokenizer=None, **engine_kwargs): a started engine (3 slots of 128
    tokens unless given), shut down after the test."""
    from photon.data.tokenizer import Tokenizer
    from photon.serve.engine import Engine  # the serve extra: only where the fixture is used

    engines = []

    def build(model, tokenizer=None, **kw):
        engine = Engine(model, tokenizer or Tokenizer.bytes(),
                        **{"slots": 3, "max_len": 128, **kw})
        engine.start()
        engines.append(engine)
        return engine

    yield build
    for engine in engines:
        engine.shutdown()
