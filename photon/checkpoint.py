"""Checkpoints in the Hugging Face layout, written atomically, and `load_model`.

A checkpoint folder `step-000100/` holds `config.json` (exactly `model.config.to_dict()`),
`model.safetensors`, the tokenizer files, `trainer_state.json` (step, tokens, training
arguments: readable by people) and `training_state.pt` (optimizer, RNG and data position:
what `photon train --resume` needs). It is written into a hidden temporary folder and renamed
into place, so a reader sees a whole checkpoint or none, even if the writer is killed.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from photon.data.tokenizer import Tokenizer
from photon.device import resolve_device
from photon.errors import CheckpointError, PhotonError
from photon.model.config import config_from_dict
from photon.model.lm import Model, build_model

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
TRAINER_FILE = "trainer_state.json"
STATE_FILE = "training_state.pt"
STEP_DIR = re.compile(r"step-(\d+)")
# What writing a checkpoint raises on a full disk or an unwritable folder: the OS's error,
# torch.save's RuntimeError ("PytorchStreamWriter failed writing file ..."), safetensors' own
# error, and a TokenizerError from the tokenizer's files (a PhotonError).
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError, PhotonError)


def _tied(model: Model) -> set[str]:
    """State-dict keys that alias another parameter (safetensors refuses shared storage)."""
    return {"lm_head.weight"} if model.config.tie_embeddings else set()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(directory: str | Path, model: Model, tokenizer: Tokenizer,
                    trainer_state: dict[str, Any] | None = None,
                    training_state: dict[str, Any] | None = None,
                    weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a checkpoint folder atomically (temporary folder, fsync, rename) and return it.

    `trainer_state` goes to JSON; `training_state` (tensors allowed) to `training_state.pt`.
    `weights` replaces `model.state_dict()` when the model is sharded (FSDP): its full
    state dict, gathered by the caller.
    """
    directory = Path(directory)
    tmp = directory.parent / f".tmp-{directory.name}-{os.getpid()}"
    skip = _tied(model)
    weights = model.state_dict() if weights is None else weights
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()
               if k not in skip}
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (tmp / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
        save_file(tensors, str(tmp / MODEL_FILE), metadata={"format": "pt"})
        tokenizer.save(tmp)
        if trainer_state is not None:
            (tmp / TRAINER_FILE).write_text(json.dumps(trainer_state, indent=2) + "\n")
        if training_state is not None:
            torch.save(training_state, tmp / STATE_FILE)
        for f in tmp.iterdir():
            _fsync(f)
        _swap_in(tmp, directory)
        _fsync(directory.parent)
    except BaseException as e:  # never leave a half-written folder behind
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, WRITE_ERRORS):
            raise CheckpointError(f"cannot write checkpoint {directory}: "
                                  f"{_write_error(e)}") from None
        raise
    return directory


def _swap_in(tmp: Path, directory: Path) -> None:
    """Rename the finished folder `tmp` to `directory`; an existing `directory` (a step
    saved again) is swapped out first and put back if the new one cannot take its place."""
    if not directory.exists():
        os.replace(tmp, directory)
        return
    old = directory.parent / f".old-{directory.name}-{os.getpid()}"
    os.replace(directory, old)
    try:
        os.replace(tmp, directory)
    except BaseException:
        os.replace(old, directory)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write_error(error: BaseException) -> str:
    """What went wrong in a failed write, on one line: the system's words for an OSError
    (e.g. "No space left on device"), else the writer's message (torch's
    PytorchStreamWriter, safetensors, tokenizers)."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The complete `step-N` checkpoints of a run folder, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir()
             if (m := STEP_DIR.fullmatch(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def write_run_config(run_dir: str | Path, model: Model) -> None:
    """Give a run folder the config.json of its checkpoints (written atomically), so tools
    that read a folder's config.json, such as transformers' AutoConfig, can open a run."""
    tmp = Path(run_dir) / f".tmp-{CONFIG_FILE}-{os.getpid()}"
    try:
        tmp.write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
        os.replace(tmp, Path(run_dir) / CONFIG_FILE)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"cannot write {Path(run_dir) / CONFIG_FILE}: "
                              f"{_write_error(e)}") from None


def resolve_checkpoint(path: str | Path) -> Path:
    """The latest checkpoint of a run folder, else `path` itself (a checkpoint folder)."""
    path = Path(path)
    checkpoints = list_checkpoints(path)
    if checkpoints:
        return checkpoints[-1]
    if (path / CONFIG_FILE).is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or run folder")
    raise CheckpointError(f"{path}: not a checkpoint (no {CONFIG_FILE}) and holds no "
                          f"step-N checkpoints")


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[Model, Tokenizer]:
    """The trained model (in eval mode, on `device`) and its tokenizer, from a checkpoint
    folder or a run folder (then its latest checkpoint)."""
    device = resolve_device(device)
    ckpt = resolve_checkpoint(path)
    try:
        config = config_from_dict(json.loads((ckpt / CONFIG_FILE).read_text()))
    except (OSError, ValueError, TypeError) as e:  # ValueError covers bad JSON and ConfigError
        raise CheckpointError(f"{ckpt / CONFIG_FILE}: unreadable model config: {e}") from None
    _check_tensors(ckpt, config)  # before anything is allocated
    model = build_model(config)
    try:
        tensors = load_file(str(ckpt / MODEL_FILE))
    except Exception as e:  # safetensors raises its own error type for a damaged file
        raise CheckpointError(f"{ckpt / MODEL_FILE} is missing, corrupt or truncated: "
                              f"{e}") from None
    bad = next((k for k, t in tensors.items() if not torch.isfinite(t).all()), None)
    if bad is not None:  # a diverged run's weights: every answer would be NaN
        raise CheckpointError(f"{ckpt / MODEL_FILE}: {bad} holds NaN or infinite values "
                              "(the run diverged); load an earlier checkpoint")
    model.load_state_dict(tensors, strict=False)  # names and shapes checked from the header
    try:
        tokenizer = Tokenizer.load(ckpt)
    except PhotonError as e:
        raise CheckpointError(str(e)) from None
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(f"{ckpt}: tokenizer vocabulary {tokenizer.vocab_size} does not "
                              f"match the model's vocab_size {config.vocab_size}")
    return model.to(device).eval(), tokenizer


def _check_tensors(ckpt: Path, config) -> None:
    """That `config` describes the tensors `model.safetensors` holds (their number of
    values, names and shapes), read from the file's header and a model on the meta device:
    a config.json asking for a huge model fails here, before the model is built."""
    try:
        with safe_open(str(ckpt / MODEL_FILE), framework="pt") as f:
            stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as e:  # safetensors raises its own error type for a damaged file
        raise CheckpointError(f"{ckpt / MODEL_FILE} is missing, corrupt or truncated: "
                              f"{e}") from None
    meta = build_model(config, device="meta")
    expected = {k: tuple(v.shape) for k, v in meta.state_dict().items()
                if k not in _tied(meta)}
    n_config, n_file = (sum(math.prod(shape) for shape in shapes.values())
                        for shapes in (expected, stored))
    if n_config != n_file:
        raise CheckpointError(f"{ckpt / CONFIG_FILE} describes a model of {n_config:,} "
                              f"parameters but {ckpt / MODEL_FILE} holds {n_file:,}: the "
                              "config does not belong to these weights")
    if set(stored) != set(expected):
        odd = sorted(set(stored) ^ set(expected))
        raise CheckpointError(f"{ckpt / MODEL_FILE} does not match {CONFIG_FILE}: "
                              f"{len(odd)} tensor name(s) differ, e.g. {odd[0]!r}")
    for name, shape in expected.items():
        if stored[name] != shape:
            raise CheckpointError(f"{ckpt / MODEL_FILE} does not match {CONFIG_FILE}: "
                                  f"{name} is {list(stored[name])} in the file, "
                                  f"{list(shape)} in the config")


def load_training_state(ckpt: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """`trainer_state.json` and `training_state.pt` of a checkpoint, for resuming."""
    try:
        info = json.loads((ckpt / TRAINER_FILE).read_text())
        state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # a missing file, bad JSON, or a truncated pickle/zip
        raise CheckpointError(f"{ckpt}: training state is missing, corrupt or truncated "
                              f"({type(e).__name__}); cannot resume from it") from None
    return info, state
