"""The analytic FLOPs of decoding one token equal the matmuls a decode step actually runs."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from photon.inference.decoders import make_decoder
from photon.model.flops import decode_flops_per_token
from tests.models import make


@pytest.mark.parametrize("kind, mode", [
    ("vanilla", "hiergen"), ("block", "hiergen"), ("photon-B", "hiergen"),
    ("photon-B", "recgen"), ("photon-A", "hiergen"), ("photon-W1-TF", "hiergen"),
    ("photon-L3", "hiergen"), ("photon-L3", "recgen"), ("photon-L3-W2", "hiergen")])
def test_decode_flops_per_token_counts_the_matmuls_a_step_runs(kind, mode):
    """torch's FLOP counter over one steady-state step (the weight matmuls, mm and addmm; a
    local window's attention runs as bmm on the CPU and is the attention part), per generated
    token, equals decode_flops_per_token's matmul part exactly."""
    model = make(kind)
    decoder = make_decoder(model, mode, 3, 128)
    greedy = lambda logits: logits.argmax(-1)
    with torch.no_grad():
        decoder.prefill(torch.randint(0, 256, (3, 32)), torch.full((3,), 32))
        decoder.step(greedy, None, False)  # the next step also encodes this one's tokens
        with FlopCounterMode(display=False) as counter:
            _, new, _ = decoder.step(greedy, None, False)
    counts = counter.get_flop_counts()["Global"]
    counted = sum(n for op, n in counts.items() if str(op) in ("aten.mm", "aten.addmm"))
    matmul, attention = decode_flops_per_token(model.config, mode, context=48)
    assert counted / new.sum().item() == matmul  # every sequence of the batch
    assert attention > 0


def test_decode_attention_grows_with_the_context_only_where_a_cache_does():
    bounded, paper, flat = (make(k).config for k in ("photon-W1-TF", "photon-B", "vanilla"))
    grow = {name: decode_flops_per_token(c, "hiergen", 4096)[1]
            - decode_flops_per_token(c, "hiergen", 1024)[1]
            for name, c in (("bounded", bounded), ("paper", paper), ("flat", flat))}
    layers = bounded.encoder_layers[-1]
    assert grow["bounded"] == pytest.approx(layers * 4 * bounded.d_model * 3072 / 16 / 16)
    assert grow["paper"] > grow["bounded"] and grow["flat"] > 10 * grow["paper"]
