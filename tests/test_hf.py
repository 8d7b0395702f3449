"""Hugging Face transformers: photon folders load with the Auto classes, save back to the
layout photon reads, and generate the same tokens as photon's own decoder.

Needs the `hf` extra (skipped without it).
"""

import json

import pytest
import torch

pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerFast,
)
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES  # noqa: E402

import photon  # noqa: E402
import photon.integrations.hf as hf  # noqa: E402
from photon.checkpoint import save_checkpoint  # noqa: E402
from photon.cli import main as cli_main  # noqa: E402
from photon.data.tokenizer import Tokenizer  # noqa: E402
from tests.models import make  # noqa: E402

KINDS = ["vanilla", "block", "photon-B", "photon-A", "photon-L3"]
TEXT = "ROMEO.\nBut soft, what light through yonder window breaks? — ünïcode\n"


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return Tokenizer.train_bpe([TEXT * 20, "To be, or not to be: that is the question."],
                               vocab_size=300)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, bpe) -> dict[str, object]:
    """Random-init tiny models: raw bytes, and photon-B and vanilla with a byte-level BPE."""
    root = tmp_path_factory.mktemp("hf")
    found = {kind: save_checkpoint(root / kind, make(kind), Tokenizer.bytes()) for kind in KINDS}
    for kind in ("photon-B", "vanilla"):
        found[f"{kind}-bpe"] = save_checkpoint(root / f"{kind}-bpe", make(kind, vocab_size=300),
                                               bpe)
    return found


def test_model_types_are_photons_own():
    """transformers defines neither name; the Auto classes now map them to photon's."""
    for name, config_class in hf.CONFIGS.items():
        assert name not in CONFIG_MAPPING_NAMES
        assert type(AutoConfig.for_model(name)) is config_class


@pytest.mark.parametrize("kind", [*KINDS, "photon-B-bpe", "vanilla-bpe"])
def test_auto_classes_load_a_checkpoint(checkpoints, kind):
    ckpt = checkpoints[kind]
    model, tokenizer = photon.load_model(ckpt)
    config = AutoConfig.from_pretrained(ckpt)
    assert config.to_photon() == model.config
    wrapped = AutoModelForCausalLM.from_pretrained(ckpt)
    assert isinstance(wrapped, hf.MODELS[model.config.model_type])
    ids = torch.tensor([tokenizer.encode(TEXT)])
    with torch.no_grad():
        assert torch.equal(wrapped(ids).logits, model(ids).logits)
        loss = wrapped(ids, labels=ids).loss
    assert loss == pytest.approx(model(ids, labels=ids).loss.item(), rel=1e-6)
    hf_tokenizer = AutoTokenizer.from_pretrained(ckpt)
    assert isinstance(hf_tokenizer, PreTrainedTokenizerFast)
    assert hf_tokenizer(TEXT)["input_ids"] == tokenizer.encode(TEXT)
    assert hf_tokenizer.decode(tokenizer.encode(TEXT)) == TEXT
    assert hf_tokenizer.eos_token_id == tokenizer.eos_id


@pytest.mark.parametrize("kind", ["vanilla", "photon-B", "photon-B-bpe"])
def test_save_pretrained_round_trip_identical_logits(checkpoints, kind, tmp_path):
    """from_pretrained -> save_pretrained -> photon.load_model: the same config.json and
    tensors, identical logits; the tokenizer too."""
    wrapped = AutoModelForCausalLM.from_pretrained(checkpoints[kind])
    (tmp_path / "README.md").write_text("kept")
    wrapped.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(checkpoints[kind]).save_pretrained(tmp_path)
    model, tokenizer = photon.load_model(tmp_path)
    assert (tmp_path / "README.md").read_text() == "kept"
    assert json.loads((tmp_path / "config.json").read_text()) == model.config.to_dict()
    ids = torch.randint(0, model.config.vocab_size, (2, 70), generator=torch.Generator()
                        .manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, wrapped.photon(ids).logits)
    assert tokenizer.encode(TEXT) == wrapped.photon_tokenizer.encode(TEXT)
    wrapped.config.save_pretrained(tmp_path / "config-only")
    assert json.loads((tmp_path / "config-only" / "config.json").read_text()) == \
        model.config.to_dict()


@pytest.mark.parametrize("kind", [*KINDS, "photon-B-bpe"])
def test_generate_equals_photon_generate(checkpoints, kind):
    """transformers' greedy loop over the forward pass picks exactly the tokens of photon's
    cached decoder, for prompts that end inside and at the end of a meta-context."""
    wrapped = AutoModelForCausalLM.from_pretrained(checkpoints[kind])
    hf_tokenizer = AutoTokenizer.from_pretrained(checkpoints[kind])
    for prompt in ("ROMEO.\nBut soft", "To be, or not to be: that is the qu"):
        inputs = hf_tokenizer(prompt, return_tensors="pt")
        out = wrapped.generate(**inputs, max_new_tokens=24, do_sample=False)
        eos = wrapped.generation_config.eos_token_id
        ours = wrapped.photon.generate(inputs["input_ids"], 24, eos_id=eos)[0]
        new = out[0, inputs["input_ids"].shape[1]:].tolist()
        # photon leaves out the end-of-text token it stops at; transformers keeps it.
        assert new == (ours if len(ours) == 24 else [*ours, eos])


def test_run_folder_loads_its_latest_checkpoint(tmp_path, monkeypatch):
    """`photon train` gives its run folder a config.json, so the Auto classes open a run."""
    monkeypatch.setenv("PHOTON_CACHE", str(tmp_path / "cache"))
    (tmp_path / "text.txt").write_text(TEXT * 200)
    run = tmp_path / "run"
    assert cli_main(["train", "--preset", "photon-tiny", "--tokenizer", "bytes", "--data",
                     str(tmp_path / "text.txt"), "--seq-len", "32", "--batch-size", "2",
                     "--max-steps", "2", "--save-every", "1", "--eval-every", "100",
                     "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["model_type"] == "photon"
    assert type(AutoConfig.from_pretrained(run)) is hf.PhotonHFConfig
    wrapped = AutoModelForCausalLM.from_pretrained(run)
    model, _ = photon.load_model(run / "step-000002")
    ids = torch.tensor([list(b"But soft, what light")])
    with torch.no_grad():
        assert torch.equal(wrapped(ids).logits, model(ids).logits)
    assert AutoTokenizer.from_pretrained(run)("abc")["input_ids"] == [97, 98, 99]


def test_bad_requests_are_clear_errors(checkpoints, tmp_path):
    wrapped = AutoModelForCausalLM.from_pretrained(checkpoints["photon-B"])
    left_padded = {"input_ids": torch.tensor([[0, 0, 5, 6], [1, 2, 3, 4]]),
                   "attention_mask": torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])}
    with pytest.raises(photon.PhotonError, match="right-padded"):
        wrapped(**left_padded)
    right_padded = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    assert wrapped(left_padded["input_ids"], attention_mask=right_padded).logits.shape[1] == 4
    with pytest.raises(photon.PhotonError, match="no such checkpoint"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "missing", config=wrapped.config)
    with pytest.raises(photon.PhotonError, match="quantization_config not supported"):
        AutoModelForCausalLM.from_pretrained(checkpoints["photon-B"], quantization_config={})
    fresh = hf.PhotonForCausalLM(wrapped.config)
    with pytest.raises(photon.PhotonError, match="no tokenizer"):
        fresh.save_pretrained(tmp_path / "fresh")
    fresh.save_pretrained(tmp_path / "fresh", tokenizer=Tokenizer.bytes())
    assert photon.load_model(tmp_path / "fresh")[0].config == fresh.photon.config
