"""Static decode steps: caches of fixed shape, exact as the default ones, compiled once.

A static cache (`KVCache(static=True)`) always returns its whole capacity with a mask and
keeps the sequences' lengths on the device too, so every step of a decoder has the same
shapes: `torch.compile` captures it once and CUDA graphs can replay it.
"""

import copy

import pytest
import torch
from torch._dynamo.utils import counters

from photon.errors import CacheFullError, ConfigError
from photon.inference.decoders import DecodeOptions, compile_for_decoding, make_decoder
from photon.inference.generate import generate
from photon.inference.sampling import make_sampler
from tests.models import make

PROMPTS = [[3, 1, 4], [1] * 16, list(range(40, 77)), [9]]
CASES = [("vanilla", "hiergen"), ("photon-B", "hiergen"), ("photon-B", "recgen"),
         ("photon-W1-TF", "hiergen"), ("photon-L3", "recgen")]


@pytest.mark.parametrize("attention", ["auto", "matmul"])
@pytest.mark.parametrize(("kind", "mode"), CASES)
def test_static_caches_decode_exactly_like_dynamic_ones(kind, mode, attention):
    """Through `attend`'s own rule ("auto" on a static cache) or the matmuls, a masked read
    of the whole capacity decodes what a dynamic cache does."""
    model = make(kind)
    want, want_logits = generate(model, PROMPTS, 37, mode=mode, return_logits=True)
    got, got_logits = generate(model, PROMPTS, 37, mode=mode, return_logits=True,
                               options=DecodeOptions(static=True, attention=attention))
    assert got == want
    for a, b in zip(got_logits, want_logits, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("kind", "mode"), [("vanilla", "hiergen"), ("photon-B", "recgen"),
                                           ("photon-W1-TF", "hiergen")])
def test_a_full_static_cache_raises_cache_full_when_compiled(kind, mode):
    """A compiled step does not check the room itself: the decoder does, on the host."""
    model = make(kind)
    options = compile_for_decoding(model, static=True, backend="aot_eager")
    with pytest.raises(ConfigError, match="compile_for_decoding returned"):
        make_decoder(model, mode, 1, 32)  # a static model given no options
    decoder = make_decoder(model, mode, 1, 32, options)
    sampler = make_sampler()
    with torch.inference_mode():
        decoder.prefill(torch.tensor([[5] * 16]), torch.tensor([16]))
        with pytest.raises(CacheFullError):
            for _ in range(40):
                decoder.step(sampler)


def decode_steps(model, mode, steps, options=None):
    """Greedy tokens and logits of `steps` steps over a batch of prompts of mixed lengths."""
    ids = torch.tensor([[7, 8, 9, 10, 11, 0, 0], [1, 2, 3, 4, 5, 6, 12]])
    decoder = make_decoder(model, mode, 2, 7 + steps * 16, options)
    out = []
    with torch.inference_mode():
        decoder.prefill(ids, torch.tensor([5, 7]))
        for _ in range(steps):
            tokens, _, logits = decoder.step(make_sampler())
            out.append((tokens, logits))
    return out


def check_compiled_step(kind, mode, backend):
    model = make(kind)
    eager = decode_steps(model, mode, 2)
    compiled = copy.deepcopy(model)
    options = compile_for_decoding(compiled, static=True, backend=backend)
    torch._dynamo.reset()
    counters.clear()
    warm = decode_steps(compiled, mode, 2, options)  # compiles every shape a step has
    with torch._dynamo.config.patch(error_on_recompile=True):
        again = decode_steps(compiled, mode, 2, options)
    # The only graph break is the cache's host bookkeeping (a disabled function).
    assert counters["stats"]["unique_graphs"] > 0
    assert all("torch.compiler.disable" in reason for reason in counters["graph_break"])
    for (t, lg), (t1, lg1), (t2, lg2) in zip(eager, warm, again, strict=True):
        assert torch.equal(t, t1) and torch.equal(t, t2)
        torch.testing.assert_close(lg1, lg, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(lg2, lg, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("kind", "mode"), CASES)
def test_compiled_static_step_equals_eager_and_never_recompiles(kind, mode):
    """Dynamo's capture (graphs, guards, recompiles) with the eager backend: fast."""
    check_compiled_step(kind, mode, "aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "mode"), [("photon-B", "recgen"), ("photon-W1-TF", "hiergen")])
def test_inductor_compiled_static_step_equals_eager(kind, mode):
    """The same with inductor's generated kernels (needs a C++ compiler: marked slow)."""
    check_compiled_step(kind, mode, "inductor")
