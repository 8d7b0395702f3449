"""Decoding: caches are exact, batches equal single sequences, RecGen is what it claims."""

import pytest
import torch

import photon
from photon.errors import CacheFullError, InputError
from photon.inference.decoders import (
    DecodeOptions,
)
from photon.inference.generate import generate
from photon.inference.scoring import sequential_logits
from tests.models import make

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


@pytest.mark.parametrize("kind", ALL)
def test_sampled_decoding_matches_uncached_forward(kind):
    """Sampling (seeded) reads the same logits as the forward pass over what it sampled."""
    model = make(kind)
    outputs, logits = generate(model, PROMPTS, 37, temperature=1.0, top_k=50, seed=3,
                               return_logits=True)
    for prompt, new, step_logits in zip(PROMPTS, outputs, logits, strict=True):
        full = model(torch.tensor([prompt + new])).logits[0, len(prompt) - 1:-1]
        torch.testing.assert_close(step_logits, full, atol=1e-5, rtol=1e-5)


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
