"""The sliding-window flat model (`TransformerConfig.window`): causal attention over the last
W tokens in training and in the forward pass, a ring buffer of W entries when decoding, and
FLOPs and cache bytes that count the window."""

import pytest
import torch

import photon
from photon.errors import ConfigError
from photon.inference.cache import RingKVCache
from photon.inference.decoders import DecodeOptions, FlatDecoder, make_decoder
from photon.inference.generate import generate
from photon.inference.workload import analytic_cache_bytes, memory_profile, run_workload
from photon.model.config import get_preset
from photon.model.flops import decode_flops_per_token, training_flops_per_token
from tests.models import make

W = 8  # the window of the "vanilla-swa" test model


def test_window_is_validated():
    with pytest.raises(ConfigError, match="window"):
        get_preset("vanilla-tiny").replace(window=1)
    with pytest.raises(ConfigError, match="window"):
        get_preset("vanilla-tiny").replace(window=-3)
    assert get_preset("vanilla-tiny").replace(window=2).window == 2


def test_tokens_beyond_the_receptive_field_change_nothing():
    """Each layer reads the last W positions, so n_layers layers see n_layers * (W - 1)
    tokens back: perturbing token 0 changes logits up to that reach, and none after it."""
    model = make("vanilla-swa")
    reach = model.config.n_layers * (W - 1)
    ids = torch.randint(0, 256, (1, reach + 12))
    other = ids.clone()
    other[0, 0] = (ids[0, 0] + 1) % 256
    a, b = model(ids).logits[0], model(other).logits[0]
    changed = (a - b).abs().amax(-1) > 1e-6
    assert changed[reach].item() and not changed[reach + 1:].any()
    # The global model with the same weights does see token 0 everywhere.
    torch.manual_seed(0)
    full = photon.build_model("vanilla-tiny").eval()
    full.load_state_dict(model.state_dict())
    assert ((full(ids).logits[0] - full(other).logits[0]).abs().amax(-1) > 1e-6).all()


def test_long_decode_past_the_window_equals_the_windowed_forward_pass():
    model = make("vanilla-swa")
    prompts = [[5, 6, 7], list(range(30, 61)), [1]]
    outputs, logits = generate(model, prompts, 50, return_logits=True)
    for prompt, new, step_logits in zip(prompts, outputs, logits, strict=True):
        full = model(torch.tensor([prompt + new])).logits[0, len(prompt) - 1:-1]
        torch.testing.assert_close(step_logits, full, atol=1e-5, rtol=1e-5)


def test_the_ring_holds_the_window_whatever_the_context():
    model = make("vanilla-swa")
    c = model.config
    window_bytes = c.n_layers * 2 * W * c.d_model * 4
    for context in (40, 400):
        assert analytic_cache_bytes(model, "hiergen", context, torch.float32) == window_bytes
        _, _, decoder = run_workload(model, "hiergen", 3, 24, context - 24, max_steps=context)
        assert isinstance(decoder.cache, RingKVCache)
        assert decoder.cache_bytes == 3 * window_bytes
        assert decoder.cache.lengths.tolist() == [context - 1] * 3  # the last token pending


def test_ring_memory_does_not_grow_with_the_context():
    """The measured peak per sequence is the same at two lengths, far below a global cache's."""
    swa, full = make("vanilla-swa"), make("vanilla")
    short, _ = memory_profile(swa, "hiergen", 16, 256, (2, 6))
    long, _ = memory_profile(swa, "hiergen", 16, 2048, (2, 6))
    global_long, _ = memory_profile(full, "hiergen", 16, 2048, (2, 6))
    assert long <= 1.1 * short + 4096, (short, long)
    assert long < global_long / 8


def test_a_ragged_prefill_never_overwrites_kept_positions():
    """Prompts of different lengths share a right-padded prefill pass longer than the window;
    the padding is not written into the ring."""
    model = make("vanilla-swa")
    prompts = [list(range(1, 30)), [4, 5]]
    batch = generate(model, prompts, 20)
    assert batch == [generate(model, [p], 20)[0] for p in prompts]
    decoder = FlatDecoder(model, 2, 64)
    decoder.prefill(torch.tensor([prompts[0], prompts[1] + [0] * 27]), torch.tensor([29, 2]))
    assert decoder.cache.lengths.tolist() == [29, 2]


def test_flops_count_the_window():
    full = get_preset("vanilla-small").replace(max_seq_len=2048)
    swa = full.replace(window=30)
    assert training_flops_per_token(swa) < training_flops_per_token(full)
    assert training_flops_per_token(full.replace(window=2048)) == training_flops_per_token(full)
    assert decode_flops_per_token(swa, context=2000)[1] == swa.n_layers * 4 * swa.d_model * 30
    assert decode_flops_per_token(full, context=2000)[1] == full.n_layers * 4 * full.d_model * 2000


def test_swa_preset_matches_bounded_photons_cache_bytes_at_the_de_workload():
    context = 128 + 2048
    swa = photon.build_model("vanilla-small-swa", device="meta")
    bounded = photon.build_model("photon-small-bounded", device="meta")
    ours = analytic_cache_bytes(swa, "hiergen", context, torch.float32)
    theirs = analytic_cache_bytes(bounded, "hiergen", context, torch.float32)
    assert abs(ours / theirs - 1) <= 0.15, (ours, theirs)


def test_static_decoding_of_a_ring_is_refused():
    with pytest.raises(ConfigError, match="ring"):
        make_decoder(make("vanilla-swa"), "hiergen", 2, 64, DecodeOptions(static=True))


def test_served_sequences_equal_generate_alone(engine_of):
    """The engine's continuous batching (rows admitted into a running batch, released, their
    ring rows moved) serves each sequence exactly as it decodes alone, past the window."""
    from photon.serve.request import Request
    from tests.serving import sequences, serve

    model = make("vanilla-swa")
    engine = engine_of(model)
    prompts = [[3, 1, 4], list(range(40, 77)), [9], [7] * 20, list(range(5, 25))]
    requests = [Request(p, 15 + 7 * i) for i, p in enumerate(prompts)]
    for r, outputs in zip(requests, serve(engine, requests), strict=True):
        assert sequences(outputs)[0] == model.generate([r.prompt], r.max_tokens)[0]
    assert engine.peak_running == 3


def test_serve_gives_a_ring_more_slots_at_long_contexts():
    """`photon serve` sizes its slots by the caches: a ring's slot costs the same at 256 and
    4,096 tokens, where a global cache's grows with the context."""
    from photon.serve.engine import slots_for_budget

    swa, full = make("vanilla-swa"), make("vanilla")
    short = slots_for_budget(swa, "hiergen", 256, 0.05)[0]
    long = slots_for_budget(swa, "hiergen", 4096, 0.05)[0]
    assert long >= 0.8 * short > 0
    assert slots_for_budget(full, "hiergen", 4096, 0.05)[0] < long / 4
