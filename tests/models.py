"""The architectures the tests cover and how to build one (`make`): test modules import
them from here (`from tests.models import MODELS, make`); fixtures live in conftest.py."""

import torch
from torch import nn

import photon
from photon.model.config import TransformerConfig
from photon.model.lm import ModelOutput

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


class CopyOracle(nn.Module):
    """A model whose right answers are known. It sees the whole window and predicts (logit
    +30) the token that followed the latest earlier occurrence of its last `n` tokens, else
    nothing (uniform): n = 1 is an induction head, a larger n copies a quoted passage.
    Records what it is given."""

    def __init__(self, window: int, vocab: int, n: int = 1) -> None:
        super().__init__()
        self.config = TransformerConfig(vocab_size=vocab, d_model=8, n_heads=1, d_ff=8,
                                        n_layers=1, max_seq_len=window)
        self.n = n
        self.unused = nn.Parameter(torch.zeros(()))  # where evaluation looks for the device
        self.seen: list[torch.Tensor] = []

    def forward(self, ids: torch.Tensor) -> ModelOutput:
        self.seen.append(ids.clone())
        B, T = ids.shape
        logits = torch.zeros(B, T, self.config.vocab_size)
        # earlier[b, p, j]: j < p, and the n tokens ending at j equal those ending at p
        earlier = torch.ones(B, T, T, dtype=torch.bool).tril(-1)
        for k in range(self.n):
            back = ids.roll(k, 1)  # back[:, p] = ids[:, p - k] (wrapped where p < k)
            earlier &= back[:, :, None] == back[:, None, :]
        complete = torch.arange(T) >= self.n - 1  # whole n-grams only
        earlier &= complete[None, :, None] & complete[None, None, :]
        j = torch.arange(T) * earlier  # the latest such j, 0 where none
        last, found = j.max(-1).values, earlier.any(-1)
        following = ids.gather(1, (last + 1).clamp(max=T - 1))
        b, p = found.nonzero(as_tuple=True)
        logits[b, p, following[b, p]] = 30.0
        return ModelOutput(logits)
