"""Linear read-outs of MQAR's pairs from PHOTON's encoder states (photon.evaluation.readout)."""

import pytest
import torch

import photon
from photon.evaluation.readout import key_readout, probe_accuracy
from photon.evaluation.recall import MQAR
from tests.models import make


def test_a_probe_reads_a_linear_image_of_the_label_and_not_noise():
    g = torch.Generator().manual_seed(0)
    prototypes = torch.randn(40, 16, generator=g)
    labels = torch.randint(0, 40, (1000,), generator=g)
    states = prototypes[labels] @ torch.randn(16, 24, generator=g)
    states += 0.05 * torch.randn(1000, 24, generator=g)
    assert probe_accuracy(states[:800], labels[:800], states[800:], labels[800:], 40) > 0.95
    noise = torch.randn(1000, 24, generator=g)
    assert probe_accuracy(noise[:800], labels[:800], noise[800:], labels[800:], 40) < 0.1


def test_level_one_holds_its_tokens_and_zeroed_states_hold_nothing(monkeypatch):
    """An untrained bounded PHOTON's level-1 state is one layer over the concatenated
    embeddings of its chunk: its pairs read out far above chance. States zeroed read at
    chance (the fit has nothing to go on)."""
    task = MQAR((4,), 64)
    model = make("photon-W1-TF", vocab_size=64)
    report = key_readout(model, task, 64, 4, fit_sequences=512, test_sequences=128)
    level1, top = report["levels"]
    assert (level1["span"], top["span"], level1["pairs"], top["pairs"]) == (4, 16, 4, 4)
    assert level1["key"] > 0.8 and level1["value"] > 0.8 and report["chance"] == 2 / 64
    assert [d["meta_contexts_after"] for d in report["top_by_distance"]] == [1, 2, 3]
    assert all(d["readouts"] == 4 for d in report["top_by_distance"])

    encode = model.encode
    monkeypatch.setattr(model, "encode", lambda ids: [torch.zeros_like(s) for s in encode(ids)])
    blind = key_readout(model, task, 64, 4, fit_sequences=512, test_sequences=128)
    assert all(lv[k] < 0.2 for lv in blind["levels"] for k in ("key", "value"))


def test_a_flat_model_has_no_encoder_states():
    with pytest.raises(photon.PhotonError, match="needs a PHOTON model"):
        key_readout(make("vanilla", vocab_size=64), MQAR((4,), 64), 64, 4)
