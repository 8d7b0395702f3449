"""Attention's kernels and their choice (`photon.model.attention`): both kernels compute SDPA's
attention, "auto" takes the kernel timed faster per shape, a static cache keeps the rule."""

import pytest
import torch

import photon
from photon.inference.decoders import DecodeOptions, attention_kernels
from tests.models import make


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


@pytest.mark.parametrize("kernel", [None, "matmul", "sdpa"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 5e-3)])
@pytest.mark.parametrize("T,S,mask_rows", [(1, 5, 0), (2, 2, 0), (3, 6, 3), (3, 6, 1),
                                           (1, 40, 0), (3, 40, 3)])
def test_attention_at_decode_shapes_equals_sdpa(kernel, dtype, tol, T, S, mask_rows):
    """`attend` by its own rule (explicit matmuls for a small window on the CPU, SDPA
    elsewhere) or through either kernel asked for: fp32 attention over the same inputs,
    with SDPA's causal rule and its masks (one per sequence, or one for all), to within the
    output dtype's rounding."""
    import torch.nn.functional as F

    from photon.model.attention import attend, window_mask

    g = torch.Generator().manual_seed(0)
    q, k, v = (3 * torch.randn(3, 2, n, 8, generator=g) for n in (T, S, S))
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    positions = torch.arange(S - T, S)[None] + torch.zeros(max(mask_rows, 1), 1, dtype=torch.long)
    mask = window_mask(positions, S, window=2) if mask_rows else None
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                              attn_mask=mask, is_causal=mask is None and T > 1)
    with torch.no_grad():
        got = attend(q, k, v, mask, kernel)
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), expected, atol=1e-3 if tol > 1e-5 else tol, rtol=tol)


def test_rotary_stays_exact_when_the_model_is_cast_to_bf16():
    """Casting a model to bf16 keeps its rotary frequencies and angles in fp32: rounded,
    positions 1,000-1,002 would share one angle."""
    model = make("photon-B")
    exact = model.decoders[0].rotary(torch.arange(1000, 1003)[None])
    model.to(torch.bfloat16)
    rotary = model.decoders[0].rotary
    assert rotary.inv_freq.dtype == torch.float32
    for got, want in zip(rotary(torch.arange(1000, 1003)[None]), exact, strict=True):
        assert torch.equal(got, want)


def test_greedy_takes_the_first_of_tied_maxima():
    from photon.inference.sampling import greedy

    logits = torch.tensor([[0.0, 2.0, 2.0, 1.0], [3.0, 3.0, 3.0, 3.0]]).to(torch.bfloat16)
    assert greedy(logits).tolist() == [1, 0] == logits.argmax(-1).tolist()
