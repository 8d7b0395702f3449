"""The decoding modes, and which models accept them: the one place that knows.

- "hiergen": PHOTON's HierGen (re-encode each generated meta-context bottom-up); the only
  mode of a Block Transformer, and the flat model's plain KV-cached decoding.
- "recgen": PHOTON's RecGen (advance the top stream with the decoder's reconstructions);
  PHOTON with L >= 2 only. A flat model has one way to decode and ignores the mode.
"""

from __future__ import annotations

from photon.errors import InputError
from photon.model.config import ModelConfig

MODES = ("hiergen", "recgen")
FLAT = "-"  # the mode label of a flat model, which has no hierarchy to decode


def check_mode(config: ModelConfig, mode: str) -> None:
    """Raise a clear `InputError` for an unknown mode or one this model cannot decode in."""
    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "recgen" and config.kind == "block":
        raise InputError("recgen needs a model with at least 2 levels (this one has 1: a "
                         "Block Transformer); use mode='hiergen'")


def modes_of(config: ModelConfig, wanted: list[str] | tuple[str, ...] = MODES) -> list[str]:
    """The modes of `wanted` in which this model decodes differently: all of them for
    PHOTON (L >= 2), "hiergen" alone for the flat model and the Block Transformer."""
    return list(wanted) if config.kind == "photon" else ["hiergen"]


def mode_label(config: ModelConfig, mode: str) -> str:
    """How results and the server name a model's mode: `FLAT` for the flat model."""
    return FLAT if config.kind == "vanilla" else mode
