"""Checkpoints in the Hugging Face layout, written atomically, and `load_model`.

A checkpoint folder `step-000100/` holds `config.json` (exactly `model.config.to_dict()`),
`model.safetensors`, the tokenizer files, `trainer_state.json` (step, tokens, training
arguments: readable by people) and `training_state.pt` (optimizer, RNG and data position:
what `photon train --resume` needs). It is written into a hidden temporary folder and renamed
into place, so a reader sees a whole checkpoint or none, even if the writer is killed; a
`step-N` folder that lacks a file anyway (a file system whose rename is not atomic, a user)
is skipped with a warning.

`load_model` builds nothing before it has checked config.json (read with bounds) against
the names and shapes in the safetensors header, and the model's size against the memory
available.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
import threading
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.modules.module import register_module_parameter_registration_hook

from photon.data.tokenizer import CONFIG_FILE as TOKENIZER_CONFIG
from photon.data.tokenizer import Tokenizer
from photon.device import available_memory, resolve_device
from photon.errors import CheckpointError, PhotonError
from photon.model.config import ModelConfig, config_from_dict
from photon.model.lm import Model, build_model

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
TRAINER_FILE = "trainer_state.json"
STATE_FILE = "training_state.pt"
MIB = 1 << 20
CONFIG_LIMIT = 1 << 20  # bytes; a model's config.json is well under a kilobyte
STEP_DIR = re.compile(r"step-(\d+)")
CHECKPOINT_FILES = (CONFIG_FILE, MODEL_FILE, TOKENIZER_CONFIG)  # what every checkpoint holds
RESUME_FILES = (TRAINER_FILE, STATE_FILE)  # what a checkpoint a run resumes from holds too
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


def _step_dirs(run_dir: Path) -> list[Path]:
    """The `step-N` folders of a run folder, complete or not, oldest first."""
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir()
             if (m := STEP_DIR.fullmatch(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def _missing(ckpt: Path, resumable: bool = False) -> list[str]:
    """The files a checkpoint lacks (those a resume needs too, with `resumable`)."""
    needed = CHECKPOINT_FILES + (RESUME_FILES if resumable else ())
    return [name for name in needed if not (ckpt / name).is_file()]


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The complete `step-N` checkpoints of a run folder, oldest first: a `step-N` folder
    that lacks one of `CHECKPOINT_FILES` (emptied, or cut short on a file system whose
    rename is not atomic) is no checkpoint."""
    return [p for p in _step_dirs(Path(run_dir)) if not _missing(p)]


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


def resolve_checkpoint(path: str | Path, resumable: bool = False) -> Path:
    """The latest complete checkpoint of a run folder (one a run resumes from, with
    `resumable`), else `path` itself (a checkpoint folder). Newer `step-N` folders that are
    incomplete are skipped with a one-line warning on stderr."""
    path = Path(path)
    steps = _step_dirs(path)
    skipped = []
    for ckpt in reversed(steps):
        missing = _missing(ckpt, resumable)
        if not missing:
            if skipped:
                print(f"photon: warning: skipping {len(skipped)} incomplete checkpoint(s) of "
                      f"{path} ({skipped[0][0].name} has no {skipped[0][1]}); using "
                      f"{ckpt.name}", file=sys.stderr, flush=True)
            return ckpt
        skipped.append((ckpt, missing[0]))
    if skipped:
        raise CheckpointError(f"{path}: none of its {len(steps)} step-N folders is a complete "
                              f"checkpoint ({skipped[0][0].name} has no {skipped[0][1]})")
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
    config = _read_config(ckpt)
    _check_tensors(ckpt, config, device)  # before anything is allocated
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


def _read_config(ckpt: Path) -> ModelConfig:
    """The model config of a checkpoint, read with bounds: a file over `CONFIG_LIMIT`, JSON
    nested past the parser's depth or numbers out of range are one-line errors."""
    path = ckpt / CONFIG_FILE
    try:
        with open(path, "rb") as f:
            data = f.read(CONFIG_LIMIT + 1)
        if len(data) > CONFIG_LIMIT:
            raise ValueError(f"over {CONFIG_LIMIT:,} bytes, no model config")
        return config_from_dict(json.loads(data))
    except RecursionError:
        problem = "nested too deeply to be a model config"
    except (OSError, ValueError, TypeError, OverflowError) as e:  # ConfigError is a ValueError
        problem = " ".join(str(e).split())[:300]
    raise CheckpointError(f"{path}: unreadable model config: {problem}")


def _check_tensors(ckpt: Path, config: ModelConfig, device: torch.device) -> None:
    """That `config` describes the tensors `model.safetensors` holds (names and shapes, read
    from the file's header) and that the model fits in memory: all before anything is
    allocated. The model is built on the meta device, where a tensor costs nothing but each
    module costs time and memory, so that build stops once it has asked for twice the
    tensors the file holds (a tied weight is made, then replaced): a config of a million
    layers costs no more than the file."""
    try:
        with safe_open(str(ckpt / MODEL_FILE), framework="pt") as f:
            stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as e:  # safetensors raises its own error type for a damaged file
        raise CheckpointError(f"{ckpt / MODEL_FILE} is missing, corrupt or truncated: "
                              f"{e}") from None
    n_file = sum(math.prod(shape) for shape in stored.values())
    mismatch = f"{ckpt / CONFIG_FILE} does not belong to {ckpt / MODEL_FILE}, which holds " \
               f"{len(stored):,} tensors of {n_file:,} parameters in all"
    try:
        meta = _meta_model(config, 2 * len(stored) + 16)
    except _Oversized:
        raise CheckpointError(f"{mismatch}: the config describes many more") from None
    except (RuntimeError, ValueError, TypeError, OverflowError) as e:  # e.g. a size past int64
        raise CheckpointError(f"{ckpt / CONFIG_FILE} describes a model that cannot be built: "
                              f"{(str(e).strip().splitlines() or [type(e).__name__])[0]}") from None
    expected = {k: tuple(v.shape) for k, v in meta.state_dict().items()
                if k not in _tied(meta)}
    n_config = sum(math.prod(shape) for shape in expected.values())
    for name in [*expected, *stored]:
        if expected.get(name) != stored.get(name):
            where = {"the config": expected.get(name), "the file": stored.get(name)}
            shapes = ", ".join(f"not in {side}" if shape is None else f"{list(shape)} in {side}"
                               for side, shape in where.items())
            raise CheckpointError(f"{mismatch}; the config describes {n_config:,} "
                                  f"parameters: the first tensor that differs is {name} "
                                  f"({shapes})")
    _check_memory(ckpt, meta, device)


class _Oversized(Exception):
    """A model being built asked for more tensors than its checkpoint holds."""


def _meta_model(config: ModelConfig, tensors: int) -> Model:
    """`config`'s model on the meta device, its build stopped (`_Oversized`) at the first
    parameter past `tensors` distinct ones."""
    seen: set[int] = set()
    builder = threading.get_ident()

    def on_parameter(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is None or threading.get_ident() != builder:
            return  # another thread's modules
        seen.add(id(param))  # a weight tied to one seen before is not counted again
        if len(seen) > tensors:
            raise _Oversized

    hook = register_module_parameter_registration_hook(on_parameter)
    try:
        return build_model(config, device="meta")
    finally:
        hook.remove()


def _check_memory(ckpt: Path, meta: Model, device: torch.device) -> None:
    """That the model (built in float32 on the CPU, then moved to `device`) and the file's
    tensors (read before they are copied into it) fit in the memory available now."""
    model = sum(t.numel() * t.element_size() for t in [*meta.parameters(), *meta.buffers()])
    needs = {torch.device("cpu"): model + (ckpt / MODEL_FILE).stat().st_size}
    if device.type != "cpu":
        needs[device] = model
    for where, need in needs.items():
        free = available_memory(where)
        if need > free:
            raise CheckpointError(f"{ckpt}: loading it needs {need / MIB:,.0f} MiB of memory "
                                  f"on {where} and {free / MIB:,.0f} MiB is available")


def load_training_state(ckpt: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """`trainer_state.json` and `training_state.pt` of a checkpoint, for resuming."""
    try:
        info = json.loads((ckpt / TRAINER_FILE).read_text())
        state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # a missing file, bad JSON, or a truncated pickle/zip
        raise CheckpointError(f"{ckpt}: training state is missing, corrupt or truncated "
                              f"({type(e).__name__}); cannot resume from it") from None
    return info, state
