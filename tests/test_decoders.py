"""The decoders as units (`photon.inference.decoders`): which caches they hold and how they
grow, what a step keeps, prefill in passes. Decoding as a whole (exactness against the forward
pass, batches, sampling) is tests/test_generate.py."""

import pytest
import torch

from photon.inference.cache import KVCache
from photon.inference.decoders import FlatDecoder, PhotonDecoder
from photon.inference.generate import generate
from photon.inference.workload import analytic_cache_bytes
from photon.model.layers import LocalKVCache
from tests.models import make

PROMPTS = [[3, 1, 4], [1] * 16, list(range(40, 77)), [9]]


def test_cache_growth_and_bounds(monkeypatch):
    longest = {"n": 0}
    advance = LocalKVCache.advance

    def tracking_advance(self, n):
        advance(self, n)
        longest["n"] = max(longest["n"], self.length)
        assert self.length <= self.capacity

    monkeypatch.setattr(LocalKVCache, "advance", tracking_advance)

    vanilla = make("vanilla")
    flat = FlatDecoder(vanilla, 2, 64)
    flat.prefill(torch.ones(2, 10, dtype=torch.long), torch.tensor([10, 7]))
    sampler = lambda logits: logits.argmax(-1)
    for k in range(1, 6):
        flat.step(sampler)
        # One entry per token per layer: the pending token enters at the next step.
        assert flat.cache.lengths.tolist() == [10 + k - 1, 7 + k - 1]
    c = vanilla.config
    assert flat.cache_bytes == 2 * c.n_layers * 2 * c.n_heads * 64 * c.head_dim * 4

    model = make("photon-B")
    c = model.config
    rec = PhotonDecoder(model, 2, 200, "recgen")
    assert rec.caches[0] is None  # RecGen keeps the top stream only
    rec.prefill(torch.ones(2, 37, dtype=torch.long), torch.tensor([37, 20]))
    top = rec.caches[-1]
    assert top.lengths.tolist() == [2, 1]
    for k in range(1, 5):
        rec.step(sampler)
        assert top.lengths.tolist() == [2 + k - 1, 1 + k - 1]
    assert longest["n"] == c.n_cond + max(c.chunk_sizes) - 1

    hier = PhotonDecoder(model, 2, 200, "hiergen")
    hier.prefill(torch.ones(2, 37, dtype=torch.long), torch.tensor([37, 20]))
    for _ in range(3):
        hier.step(sampler)
    assert hier.caches[0].lengths.tolist() == [4 * 4, 3 * 4]  # level 1: 4 per meta-context
    assert hier.caches[1].lengths.tolist() == [4, 3]
    # The hierarchy's global cache is 16x / (16/(4+1)) smaller than a token-level cache.
    per_token = [cache.bytes_per_entry() / c.tokens_per_position(level)
                 for level, cache in enumerate(hier.caches, start=1)]
    assert sum(per_token) == pytest.approx(KVCache(
        1, 1, c.n_heads, c.head_dim, 1, "cpu", torch.float32).nbytes * (1 / 4 + 1 / 16))


@pytest.mark.parametrize("kind", ["photon-W1-TF", "photon-W1"])
def test_chunk_local_encoders_cache_only_the_top_level(kind):
    """With encoder_window=1 nothing below the top grows with the context: HierGen's caches
    are RecGen's (the top level only), at two context lengths, as the analytic count says."""
    model, paper = make(kind), make("photon-B")
    c = model.config
    top_entry = 2 * c.d_model * 4 * c.encoder_layers[-1]  # fp32 keys and values, all layers
    for capacity in (64, 256):
        for mode in ("hiergen", "recgen"):
            decoder = PhotonDecoder(model, 3, capacity, mode)
            assert decoder.caches[0] is None
            assert decoder.cache_bytes == 3 * analytic_cache_bytes(model, mode, capacity,
                                                                   torch.float32)
            assert decoder.cache_bytes == 3 * capacity // c.meta_len * top_entry
    grow = {m: analytic_cache_bytes(m, "hiergen", 256, torch.float32)
            - analytic_cache_bytes(m, "hiergen", 64, torch.float32) for m in (model, paper)}
    assert grow[model] == (256 - 64) // c.meta_len * top_entry
    assert grow[paper] == grow[model] * (1 + c.chunk_sizes[1])  # + level 1's 4 per meta


@pytest.mark.parametrize("kind", ["vanilla", "photon-B", "photon-W1-TF"])
def test_a_step_keeps_only_the_logits_asked_for(kind):
    """keep_logits: every row's logits (True), those of the rows listed, or none (False):
    the same tokens, and the rows kept equal the full logits' rows."""
    model = make(kind)
    ids, lengths = torch.randint(0, 256, (3, 20), generator=torch.Generator().manual_seed(2)), \
        torch.tensor([20, 17, 9])
    greedy = lambda logits: logits.argmax(-1)
    results = {}
    for keep in (True, torch.tensor([2, 0]), False):
        decoder = (FlatDecoder(model, 3, 64) if kind == "vanilla"
                   else PhotonDecoder(model, 3, 64, "hiergen"))
        decoder.prefill(ids, lengths)
        results[str(keep)] = [decoder.step(greedy, None, keep) for _ in range(3)]
    for (t_all, _, l_all), (t_some, _, l_some), (t_none, _, l_none) in zip(*results.values(),
                                                                          strict=True):
        assert torch.equal(t_all, t_some) and torch.equal(t_all, t_none) and l_none is None
        torch.testing.assert_close(l_some, l_all[[2, 0]])


@pytest.mark.parametrize("kind", ["vanilla", "vanilla-swa", "photon-B", "photon-W1-TF",
                                  "photon-L3-A"])
def test_prefill_in_passes_equals_one_pass(kind, monkeypatch):
    """A batch whose prompts do not fit one prefill pass is prefilled pass by pass (its rows
    admitted as slots), and decodes exactly as if prefilled at once."""
    from photon.inference import slots

    model = make(kind)
    want, want_logits = generate(model, PROMPTS, 21, return_logits=True)
    monkeypatch.setitem(slots.PREFILL_TOKENS, "cpu", 80)  # two of the padded 37-token prompts
    passes = []
    admit = slots.Slots.admit
    monkeypatch.setattr(slots.Slots, "admit",
                        lambda self, ids, *a: passes.append(len(ids)) or admit(self, ids, *a))
    got, got_logits = generate(model, PROMPTS, 21, return_logits=True)
    assert passes == [2, 2]
    assert got == want
    for a, b in zip(got_logits, want_logits, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
