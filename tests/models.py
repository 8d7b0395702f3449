"""The architectures the tests cover and how to build one (`make`): test modules import
them from here (`from tests.models import MODELS, make`); fixtures live in conftest.py."""

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
