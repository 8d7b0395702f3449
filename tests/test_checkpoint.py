"""Loading checkpoints from files a user or a crash may have damaged (issue 31): config.json
is read with bounds and checked against the weights' header and the free memory before
anything is built (item 6); a run folder whose newest step-N is incomplete loads and resumes
from the newest complete one (item 12)."""

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

import photon
import photon.checkpoint as ckpt_io
from photon.checkpoint import list_checkpoints
from photon.cli import main
from photon.errors import CheckpointError

TINY = ["--preset", "photon-tiny", "--tokenizer", "bytes", "--seq-len", "64", "--batch-size",
        "4", "--dtype", "fp32", "--eval-tokens", "256", "--log-every", "1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run folder of photon-tiny trained two steps (step-000001 and step-000002), and the
    text it trained on beside it."""
    root = tmp_path_factory.mktemp("ckpt")
    text = root / "text.txt"
    text.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog\n"
                            for i in range(400)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PHOTON_CACHE", str(root / "cache"))
        assert main(["train", *TINY, "--data", str(text), "--max-steps", "2", "--save-every",
                     "1", "--keep", "5", "--out", str(root / "run")]) == 0
    return root / "run"


@pytest.fixture
def ckpt(run, tmp_path) -> Path:
    """A copy of the run's step-000002 to damage."""
    return Path(shutil.copytree(run / "step-000002", tmp_path / "step-000002"))


@pytest.fixture
def built_on_meta_only(monkeypatch):
    """Fails the test if the model is built anywhere but on the meta device."""
    real_build = ckpt_io.build_model

    def build(config, *args, **kwargs):
        assert kwargs.get("device") == "meta", "the model was built before it was checked"
        return real_build(config, *args, **kwargs)

    monkeypatch.setattr(ckpt_io, "build_model", build)


def refusal(path: Path) -> str:
    """The one-line CheckpointError that loading `path` raises."""
    with pytest.raises(CheckpointError) as error:
        photon.load_model(path)
    message = str(error.value)
    assert "\n" not in message and len(message) < 1000, message[:2000]
    return message


# --- item 6: config.json against the weights, before anything is built


def tampered(config: dict, change: str) -> dict:
    layers = {"encoder_layers": [1, 1, 1], "decoder_layers": [1, 1, 1]}
    return {**config, **{
        "many layers": {"encoder_layers": [100_000, 1]},
        "one more layer": {"encoder_layers": [2, 1]},
        "wider MLP": {"d_ff": 2 * config["d_ff"]},
        "wider model": {"d_model": 1_000_000},
        "tied embeddings": {"tie_embeddings": True},
        "another level": {"chunk_sizes": [4, 4, 4], **layers},
        "larger vocabulary": {"vocab_size": 2**40},
        "past int64": {"d_model": 10**30},
    }[change]}


@pytest.mark.parametrize("change,needle", [
    ("many layers", "describes many more"),
    ("one more layer", "encoders.0.blocks.1.attn_norm.weight ([64] in the config, not in the "
                       "file)"),
    ("wider MLP", "encoders.0.blocks.0.mlp.w1.weight ([256, 64] in the config, [128, 64] in "
                  "the file)"),
    ("wider model", "enc_embed.weight ([256, 250000] in the config, [256, 16] in the file)"),
    ("tied embeddings", "lm_head.weight (not in the config, [256, 64] in the file)"),
    ("another level", "the first tensor that differs is"),
    ("larger vocabulary", "enc_embed.weight ([1099511627776, 16] in the config"),
    ("past int64", "describes a model that cannot be built"),
])
def test_a_config_that_does_not_match_the_weights_is_refused_before_building(
        ckpt, built_on_meta_only, change, needle):
    """Names and shapes come from the safetensors header; the model the config describes is
    built on the meta device, and that build stops at twice the file's tensors: a hundred
    thousand layers cost no more than two."""
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps(tampered(config, change)))
    started = time.monotonic()
    message = refusal(ckpt)
    assert time.monotonic() - started < 20, "the check took as long as the model it describes"
    assert needle in message and str(ckpt / "config.json") in message, message
    if "cannot be built" not in message:
        assert "model.safetensors, which holds 50 tensors of 234,816 parameters" in message


@pytest.mark.parametrize("text,needle", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"a": ' * 100_000, "nested too deeply"),
    ('{"model_type": "photon", "d_model": 1' + "0" * 5000 + "}", "unreadable model config"),
    ('{"model_type": "photon", "d_model": 1e400}', "d_model: must be a positive integer"),
    ('{"model_type": "photon", "rope_base": NaN}', "rope_base: must be positive"),
    ('{"model_type": "photon", "chunk_sizes": [' + "4, " * 400_000 + "4]}", "over 1,048,576"),
    ("[1, 2]", "unreadable model config"),
    ("", "unreadable model config"),
])
def test_a_config_that_cannot_be_read_is_one_line(ckpt, built_on_meta_only, text, needle):
    """Deep nesting, numbers past any range, a file too big to be a config, JSON that is
    not an object: each a one-line error, never a RecursionError or a message that quotes
    megabytes."""
    (ckpt / "config.json").write_text(text)
    message = refusal(ckpt)
    assert needle in message and message.startswith(f"{ckpt / 'config.json'}: "), message


def test_a_model_larger_than_the_free_memory_is_refused_before_building(
        ckpt, built_on_meta_only, monkeypatch):
    monkeypatch.setattr(ckpt_io, "available_memory", lambda device: 1 << 20)
    assert "needs 2 MiB of memory on cpu and 1 MiB is available" in refusal(ckpt)


def test_the_refusal_is_one_line_in_every_verb_that_loads(ckpt, capsys):
    (ckpt / "config.json").write_text("[" * 100_000)
    for argv in (["eval", str(ckpt)], ["generate", str(ckpt), "--prompt", "hi"],
                 ["probe", str(ckpt)], ["serve", str(ckpt)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "nested too deeply" in err, (argv, err)


# --- item 12: an incomplete newest step-N


def damaged_copy(run: Path, tmp_path: Path, damage: str) -> Path:
    """A copy of `run` with a step-000003 that is damaged as named."""
    copy = Path(shutil.copytree(run, tmp_path / "run"))
    newest = copy / "step-000003"
    if damage == "empty":
        newest.mkdir()
    else:
        shutil.copytree(copy / "step-000002", newest)
        (newest / damage).unlink()
    return copy


@pytest.mark.parametrize("damage", ["empty", "model.safetensors", "config.json",
                                    "tokenizer_config.json"])
def test_an_incomplete_newest_checkpoint_is_skipped_with_a_warning(run, tmp_path, capsys,
                                                                   damage):
    copy = damaged_copy(run, tmp_path, damage)
    model, _ = photon.load_model(copy)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("photon: warning: skipping 1 incomplete "), err
    assert "step-000003" in err and "using step-000002" in err, err
    assert [p.name for p in list_checkpoints(copy)] == ["step-000001", "step-000002"]
    reference, _ = photon.load_model(run / "step-000002")
    ids = torch.arange(32)[None]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
    assert main(["eval", str(copy), "--data", str(run.parent / "text.txt"), "--max-bytes",
                 "2000"]) == 0
    assert "using step-000002" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["empty", "training_state.pt", "trainer_state.json"])
def test_a_run_resumes_from_its_newest_complete_checkpoint(run, tmp_path, capsys,
                                                           monkeypatch, damage):
    """--resume skips a newest step-N that lacks what a resume needs, and --keep never
    counts it: resuming with --keep 1 keeps the checkpoint it writes, not the empty one."""
    monkeypatch.setenv("PHOTON_CACHE", str(run.parent / "cache"))
    copy = damaged_copy(run, tmp_path, damage)
    assert main(["train", "--resume", str(copy), "--max-steps", "3", "--keep", "1"]) == 0
    err = capsys.readouterr().err
    assert "photon: warning: skipping 1 incomplete checkpoint(s)" in err
    assert "using step-000002" in err
    assert [p.name for p in list_checkpoints(copy)] == ["step-000003"]
    photon.load_model(copy)


def test_a_run_folder_without_a_complete_checkpoint_is_one_line(tmp_path):
    for name in ("step-000001", "step-000002"):
        (tmp_path / name).mkdir()
    message = refusal(tmp_path)
    assert "none of its 2 step-N folders is a complete checkpoint" in message, message
