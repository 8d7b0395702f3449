"""What the test modules share: the architectures they cover and how to build one.

Modules import these plainly (`from tests.conftest import MODELS, make`). Two groups of tests,
told apart by the `e2e` marker (registered in pyproject.toml):

- quick unit tests, in this process: `python -m pytest -q -m "not e2e and not slow"`;
- end-to-end tests, marked `@pytest.mark.e2e`: they start a process or a server (`photon`
  commands in a subprocess, torchrun, `photon serve` on a loopback port driven over HTTP):
  `python -m pytest -q -m e2e`.

The default `python -m pytest -q` runs both, as CI does. tests/test_layout.py checks that a
test carries the marker exactly when it starts such a process.
"""

import pytest
import torch

import photon

# Every architecture the tests cover: (preset, config overrides).
MODELS = {
    "vanilla": ("vanilla-tiny", {}),
    # A sliding window of 8 tokens: the ring cache wraps within every test's sequences.
    "vanilla-swa": ("vanilla-tiny", {"window": 8}),
    "block": ("block-tiny", {}),
    "photon-B": ("photon-tiny", {"variant": "B"}),
    "photon-A": ("photon-tiny", {"variant": "A"}),
    "photon-L3": ("photon-tiny", {"chunk_sizes": (2, 2, 2), "encoder_layers": (1, 1, 1),
                                  "decoder_layers": (1, 1, 1)}),
    "photon-L3-A": ("photon-tiny", {"chunk_sizes": (2, 3, 2), "encoder_layers": (1, 1, 1),
                                    "decoder_layers": (1, 1, 1), "variant": "A"}),
    "photon-TF": ("photon-tiny", {"latent_teacher_forcing": True}),
    "photon-L3-TF": ("photon-tiny", {"chunk_sizes": (2, 3, 2), "encoder_layers": (1, 1, 1),
                                     "decoder_layers": (1, 1, 1), "latent_teacher_forcing": True}),
    # Windowed lower encoders (docs/hierarchy.md §7): the bounded form, W = 1 without latent
    # teacher forcing, and a window of 2 over three levels (masked, cached).
    "photon-W1-TF": ("photon-tiny-bounded", {}),
    "photon-W1": ("photon-tiny", {"encoder_window": 1}),
    "photon-L3-W2": ("photon-tiny", {"chunk_sizes": (2, 2, 2), "encoder_layers": (2, 2, 1),
                                     "decoder_layers": (1, 1, 1), "encoder_window": 2}),
}


def make(kind: str, seed: int = 0, **extra):
    """The MODELS entry `kind`, built with seed `seed`, in eval mode."""
    torch.manual_seed(seed)
    name, overrides = MODELS[kind]
    return photon.build_model(name, **overrides, **extra).eval()


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
