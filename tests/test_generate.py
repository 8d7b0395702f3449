"""Decoding: caches are exact, batches equal single sequences, RecGen is what it claims."""

import pytest
import torch

import photon
from photon.errors import CacheFullError, InputError
from photon.inference.cache import KVCache
from photon.inference.decoders import (
    DecodeOptions,
    FlatDecoder,
    PhotonDecoder,
    attention_kernels,
)
from photon.inference.generate import generate
from photon.inference.scoring import sequential_logits
from photon.inference.workload import analytic_cache_bytes
from photon.model.layers import LocalKVCache
from tests.conftest import make

HIERARCHICAL = ["photon-B", "photon-A", "photon-L3", "photon-L3-A", "photon-TF", "photon-L3-TF",
                "photon-W1-TF", "photon-W1", "photon-L3-W2"]
ALL = ["vanilla", "vanilla-swa", "block", *HIERARCHICAL]
PROMPTS = [[3, 1, 4], [1] * 16, list(range(40, 77)), [9]]


@pytest.mark.parametrize("kind", ALL)
def test_greedy_decoding_matches_uncached_forward(kind):
    model = make(kind)
    outputs, logits = generate(model, PROMPTS, 37, return_logits=True)
    for prompt, new, step_logits in zip(PROMPTS, outputs, logits, strict=True):
        assert len(new) == 37
        full = model(torch.tensor([prompt + new])).logits[0, len(prompt) - 1:-1]
        torch.testing.assert_close(step_logits, full, atol=1e-5, rtol=1e-5)
        assert torch.equal(full.argmax(-1), torch.tensor(new))


@pytest.mark.parametrize("kind", ["vanilla", "vanilla-swa", "block", "photon-L3", "photon-W1-TF"])
@pytest.mark.parametrize("mode", ["hiergen", "recgen"])
@pytest.mark.parametrize("attention", ["sdpa", "matmul"])
def test_every_attention_kernel_decodes_as_the_forward_pass(kind, mode, attention,
                                                            monkeypatch):
    """Global caches read through either kernel (`KVCache.kernel`, which "auto" times) decode
    what the uncached forward pass (or sequential RecGen) computes, a batch of prompts of
    different lengths included."""
    if mode == "recgen" and kind in ("vanilla", "vanilla-swa", "block"):
        pytest.skip("recgen needs L >= 2")
    import photon.model.layers as layers

    model, used = make(kind), set()
    attend = layers.attend
    monkeypatch.setattr(layers, "attend", lambda *args: used.add(args[-1]) or attend(*args))
    outputs, logits = generate(model, PROMPTS, 21, mode=mode, return_logits=True,
                               options=DecodeOptions(attention=attention))
    assert attention in used
    monkeypatch.undo()
    for prompt, new, step_logits in zip(PROMPTS, outputs, logits, strict=True):
        ids = torch.tensor([prompt + new])
        full = model(ids).logits[0] if mode == "hiergen" else \
            sequential_logits(model, ids, len(prompt), "recgen")[0]
        torch.testing.assert_close(step_logits, full[len(prompt) - 1:-1], atol=1e-5, rtol=1e-5)


@pytest.fixture
def kernel_timings(monkeypatch):
    """`fastest_kernel` with nothing remembered, short blocks, and a fake `attend` for which
    the kernel named in `slow[0]` takes a millisecond a call; forgets what it chose after."""
    import time

    from photon.model import attention

    slow = ["matmul"]

    def attend(q, k, v, mask, kernel):
        if kernel == slow[0]:
            time.sleep(1e-3)

    attention.fastest_kernel.cache_clear()
    monkeypatch.setattr(attention, "attend", attend)
    monkeypatch.setattr(attention, "BLOCK_S", 2e-3)
    yield attention, slow
    attention.fastest_kernel.cache_clear()


def test_auto_attention_takes_the_kernel_timed_faster(kernel_timings):
    """"auto" takes the kernel that was faster on random values laid out as a cache, timed
    once per shape; `attend`'s own rule (None) for a read too small to time or a static
    cache; an unknown kernel is refused."""
    attention, slow = kernel_timings
    cpu = torch.device("cpu")
    assert attention.fastest_kernel(4, 16, 32, 1, cpu, torch.float32) is None  # 1 MiB: untimed
    assert attention.fastest_kernel(8, 64, 256, 1, cpu, torch.float32) == "sdpa"
    slow[0] = "sdpa"
    assert attention.fastest_kernel(8, 64, 256, 1, cpu, torch.float32) == "sdpa"  # remembered
    assert attention.fastest_kernel(8, 64, 256, 4, cpu, torch.float32) == "matmul"
    wide = make("vanilla").to(torch.float32)
    wide = photon.build_model(wide.config.replace(d_model=512, n_heads=8)).eval()
    assert attention_kernels(wide, "hiergen", 1024) == ["matmul"]
    assert attention_kernels(wide, "hiergen", 1024, DecodeOptions(static=True)) == [None]
    assert attention_kernels(wide, "hiergen", 1024, DecodeOptions(attention="sdpa")) == ["sdpa"]
    with pytest.raises(ValueError, match="attention"):
        DecodeOptions(attention="flash")
    with pytest.raises(ValueError, match="kernel"):
        KVCache(1, 1, 4, 16, 8, "cpu", torch.float32, kernel="flash")


@pytest.mark.parametrize("kind", ALL)
@pytest.mark.parametrize("mode", ["hiergen", "recgen"])
def test_batch_equals_each_prompt_alone(kind, mode):
    model = make(kind)
    if mode == "recgen" and kind in ("vanilla", "vanilla-swa", "block"):
        pytest.skip("recgen needs L >= 2 (vanilla ignores the mode; tested under hiergen)")
    batch = generate(model, PROMPTS, 29, mode=mode)
    assert batch == [generate(model, [p], 29, mode=mode)[0] for p in PROMPTS]


@pytest.mark.parametrize("kind", HIERARCHICAL)
@pytest.mark.parametrize("prompt_len", [1, 16, 37])
def test_greedy_recgen_is_argmax_of_sequential_recgen(kind, prompt_len):
    model = make(kind)
    prompt = list(range(100, 100 + prompt_len))
    (new,), (step_logits,) = generate(model, [prompt], 40, mode="recgen", return_logits=True)
    seq = sequential_logits(model, torch.tensor([prompt + new]), prompt_len, "recgen")
    seq = seq[0, prompt_len - 1:-1]
    torch.testing.assert_close(step_logits, seq, atol=1e-5, rtol=1e-5)
    assert torch.equal(seq.argmax(-1), torch.tensor(new))
    # RecGen is a different model of the text than HierGen: the top stream is not re-encoded.
    assert not torch.allclose(seq, model(torch.tensor([prompt + new])).logits[0, prompt_len - 1:-1])


@pytest.mark.parametrize("kind", HIERARCHICAL)
def test_sequential_hiergen_equals_forward(kind):
    model = make(kind)
    ids = torch.randint(0, 256, (2, 70), generator=torch.Generator().manual_seed(4))
    for prompt_len in (0, 5, 32, 69):
        torch.testing.assert_close(sequential_logits(model, ids, prompt_len, "hiergen"),
                                   model(ids).logits, atol=1e-5, rtol=1e-5)


def _force_perfect_reconstructions(model, monkeypatch, ids):
    """Make the top local decoder output the encoder's own states X^(L-1) of `ids`."""
    L, P = model.config.n_levels, model.config.meta_len
    padded = torch.nn.functional.pad(ids, (0, 3 * P - ids.shape[1] % P))
    truth = model.encode(padded)[L - 2]  # [B, metas * C_L, D]
    per_meta = model.config.chunk_sizes[L - 1]
    original = model.decode_latents
    state = {"next": 0}

    def decode_latents(level, cond, *teacher):
        out = original(level, cond, *teacher)
        if level != L:
            return out
        n = cond.shape[1]
        # A parallel pass (forward, or prefill of a prompt longer than one meta-context)
        # starts at meta-context 0; one-meta-context calls continue where the last ended.
        start = 0 if n > 1 else state["next"]
        state["next"] = start + n
        return truth[:, start * per_meta:(start + n) * per_meta]

    monkeypatch.setattr(model, "decode_latents", decode_latents)


# The paper's form: with latent teacher forcing, HierGen decodes latents chunk by chunk
# from encoder states, which this patch of the parallel latent decoder does not reach.
@pytest.mark.parametrize("kind", [k for k in HIERARCHICAL if not k.endswith("TF")])
def test_recgen_equals_hiergen_with_perfect_reconstructions(kind, monkeypatch):
    model = make(kind)
    ids = torch.randint(0, 256, (2, 75), generator=torch.Generator().manual_seed(5))
    results = {}
    for mode in ("hiergen", "recgen"):
        _force_perfect_reconstructions(model, monkeypatch, ids)
        results[mode] = sequential_logits(model, ids, 20, mode)
        monkeypatch.undo()
    torch.testing.assert_close(results["recgen"], results["hiergen"], atol=1e-5, rtol=1e-5)


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


@pytest.mark.parametrize("kind", ALL)
def test_sampled_decoding_matches_uncached_forward(kind):
    """Sampling (seeded) reads the same logits as the forward pass over what it sampled."""
    model = make(kind)
    outputs, logits = generate(model, PROMPTS, 37, temperature=1.0, top_k=50, seed=3,
                               return_logits=True)
    for prompt, new, step_logits in zip(PROMPTS, outputs, logits, strict=True):
        full = model(torch.tensor([prompt + new])).logits[0, len(prompt) - 1:-1]
        torch.testing.assert_close(step_logits, full, atol=1e-5, rtol=1e-5)


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


def test_sampling_is_seeded_and_respects_top_k():
    model = make("photon-B")
    kw = dict(temperature=1.0, top_k=5, seed=7)
    a = generate(model, PROMPTS, 20, **kw)
    assert a == generate(model, PROMPTS, 20, **kw)
    assert a != generate(model, PROMPTS, 20, temperature=1.0, top_k=5, seed=8)
    # top_k=1 and a tiny top_p are greedy.
    greedy = generate(model, PROMPTS, 20)
    assert generate(model, PROMPTS, 20, temperature=1.0, top_k=1, seed=1) == greedy
    assert generate(model, PROMPTS, 20, temperature=1.0, top_p=1e-6, seed=1) == greedy


def test_stopping_per_sequence():
    model = make("vanilla")
    greedy = generate(model, PROMPTS, 30)
    eos = greedy[0][5]
    stopped = generate(model, PROMPTS, 30, eos_id=eos)
    assert stopped[0] == greedy[0][:greedy[0].index(eos)]
    for full, out in zip(greedy, stopped, strict=True):
        assert out == (full[:full.index(eos)] if eos in full else full)
    by_length = generate(model, PROMPTS, 30, stop=lambda b, toks: len(toks) >= 3 + b)
    assert [len(t) for t in by_length] == [3, 4, 5, 6]


@pytest.mark.parametrize("kind", ["vanilla", "photon-B"])
def test_bad_requests(kind):
    model = make(kind)
    with pytest.raises(InputError, match="empty"):
        generate(model, [[1, 2], []], 5)
    with pytest.raises(InputError, match="outside the vocabulary"):
        generate(model, [[1, 256]], 5)
    with pytest.raises(InputError, match="max_new_tokens"):
        generate(model, [[1]], 0)
    with pytest.raises(CacheFullError, match="max_length"):
        generate(model, [[1] * 10], 20, max_length=16)
    with pytest.raises(InputError, match="mode"):
        generate(model, [[1]], 5, mode="fast")


def test_recgen_needs_two_levels():
    with pytest.raises(InputError, match="at least 2 levels"):
        generate(make("block"), [[1]], 5, mode="recgen")


def test_model_generate_method_and_tensor_prompts():
    model = make("photon-A")
    prompts = torch.randint(0, 256, (3, 21), generator=torch.Generator().manual_seed(6))
    assert model.generate(prompts, 12) == generate(model, prompts.tolist(), 12)
    assert isinstance(photon.build_model("vanilla-tiny").generate([[1]], 2)[0], list)


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
