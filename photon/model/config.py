"""Model configurations and named presets.

`PhotonConfig` describes a hierarchical model with L >= 1 levels (L = 1 is the Block
Transformer); `TransformerConfig` describes the flat LLaMA-style baseline. Both serialise to
a Hugging Face style `config.json` dictionary whose `model_type` says which one it is.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from photon.errors import ConfigError


def _require(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{name}: {message}")


def _positive_int(value: Any, name: str) -> None:
    _require(isinstance(value, int) and not isinstance(value, bool) and value > 0, name,
             f"must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class _Common:
    """Fields shared by every model."""

    vocab_size: int = 32000
    d_model: int = 1664
    n_heads: int = 32
    d_ff: int = 4096
    tie_embeddings: bool = False
    rope_base: float = 10000.0
    max_seq_len: int = 2048  # training context; FLOPs per token are counted at this length

    model_type: ClassVar[str] = ""

    def _validate_common(self) -> None:
        for name in ("vocab_size", "d_model", "n_heads", "d_ff", "max_seq_len"):
            _positive_int(getattr(self, name), name)
        _require(self.d_model % self.n_heads == 0, "n_heads",
                 f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        _require((self.d_model // self.n_heads) % 2 == 0, "n_heads",
                 "head size d_model/n_heads must be even for rotary embeddings")
        _require(self.rope_base > 0, "rope_base", f"must be positive, got {self.rope_base!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kind(self) -> str:
        """'vanilla' (flat), 'block' (one level) or 'photon' (two or more levels)."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary, `model_type` included (the `config.json` layout)."""
        d = {"model_type": self.model_type}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            d[f.name] = list(v) if isinstance(v, tuple) else v
        return d

    def replace(self, **changes: Any):
        """A copy with some fields changed (validated again); an unknown field is an error."""
        known = {f.name for f in dataclasses.fields(self)}
        for name in changes:
            _require(name in known, name, f"not a field of the {self.model_type} config; "
                     f"fields: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class TransformerConfig(_Common):
    """Flat LLaMA-style decoder-only Transformer (the 'vanilla' baseline)."""

    n_layers: int = 16
    # Causal attention window in tokens (Mistral's sliding window); 0 is global attention.
    # Decoding keeps a ring buffer of `window` entries, so its memory does not grow.
    window: int = 0
    model_type: ClassVar[str] = "transformer"

    def __post_init__(self) -> None:
        self._validate_common()
        _positive_int(self.n_layers, "n_layers")
        _require(isinstance(self.window, int) and not isinstance(self.window, bool)
                 and (self.window == 0 or self.window >= 2), "window",
                 f"must be 0 (global attention) or at least 2 (a token and the one before "
                 f"it), got {self.window!r}")

    @property
    def kind(self) -> str:
        return "vanilla"


@dataclass(frozen=True)
class PhotonConfig(_Common):
    """Hierarchical PHOTON model; level l uses index l-1 of every per-level tuple.

    chunk_sizes[l-1] is C_l, encoder_layers[l-1] the depth of the level-l context encoder,
    decoder_layers[l-1] the depth of the level-l local decoder (level 1 decodes tokens).
    """

    chunk_sizes: tuple[int, ...] = (4, 4)
    encoder_layers: tuple[int, ...] = (4, 4)
    decoder_layers: tuple[int, ...] = (4, 4)
    n_cond: int = 2  # R: conditioning vectors the converter makes from one latent
    variant: str = "B"  # which latent conditions which chunk, docs/PHOTON.md §3.3
    rec_alpha: float = 0.0  # weight of the reconstruction loss L_rec
    rec_detach: bool = False  # stop the gradient through the L_rec target (encoder states)
    # Level >= 2 decoders read the encoder states of earlier positions of their chunk instead
    # of their own outputs (docs/PHOTON.md §3.5); not the paper's form.
    latent_teacher_forcing: bool = False
    # Causal attention window (in positions) of every context encoder below the top; 0 is
    # global attention (the paper's form). At 1 each position reads only its own chunk, so
    # decoding keeps no KV cache below the top level
    # (experiments/2026-11-29-does-the-hierarchy-learn §7).
    encoder_window: int = 0
    model_type: ClassVar[str] = "photon"

    def __post_init__(self) -> None:
        for name in ("chunk_sizes", "encoder_layers", "decoder_layers"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        self._validate_common()
        _require(isinstance(self.chunk_sizes, tuple) and len(self.chunk_sizes) >= 1,
                 "chunk_sizes",
                 f"needs one chunk size per level (L >= 1), got {self.chunk_sizes!r}")
        for name in ("chunk_sizes", "encoder_layers", "decoder_layers"):
            value = getattr(self, name)
            _require(isinstance(value, tuple) and len(value) == self.n_levels, name,
                     f"needs {self.n_levels} entries (one per level), got {value!r}")
            for v in value:
                _positive_int(v, name)
        _positive_int(self.n_cond, "n_cond")
        _require(self.d_model % self.chunk_sizes[0] == 0, "d_model",
                 f"d_model={self.d_model} is not divisible by the level-1 chunk size "
                 f"{self.chunk_sizes[0]}")
        _require(self.variant in ("A", "B"), "variant", f"must be 'A' or 'B', got {self.variant!r}")
        _require(self.rec_alpha >= 0, "rec_alpha", f"must be >= 0, got {self.rec_alpha!r}")
        _require(not (self.latent_teacher_forcing and self.variant == "A"),
                 "latent_teacher_forcing", "is implemented for variant B only")
        _require(isinstance(self.encoder_window, int) and not isinstance(self.encoder_window, bool)
                 and self.encoder_window >= 0, "encoder_window",
                 f"must be an integer >= 0 (0: global attention), got {self.encoder_window!r}")
        _require(self.encoder_window == 0 or self.n_levels >= 2, "encoder_window",
                 "windows the encoders below the top level; a one-level model has none")

    @property
    def kind(self) -> str:
        return "block" if self.n_levels == 1 else "photon"

    @property
    def n_levels(self) -> int:
        return len(self.chunk_sizes) if isinstance(self.chunk_sizes, tuple) else 0

    @property
    def meta_len(self) -> int:
        """Tokens under one top-level position: C_1 * ... * C_L."""
        return math.prod(self.chunk_sizes)

    def tokens_per_position(self, level: int) -> int:
        """Tokens summarised by one position of level `level` (1-based)."""
        return math.prod(self.chunk_sizes[:level])

    def positions_per_meta(self, level: int) -> int:
        """Positions of level `level` in one meta-context (what decoding caches per step)."""
        return self.meta_len // self.tokens_per_position(level)

    def encoder_window_of(self, level: int) -> int:
        """Attention window of the level-`level` context encoder (0: global)."""
        return self.encoder_window if level < self.n_levels else 0

    def cached_levels(self, mode: str) -> list[int]:
        """Levels whose context encoder keeps a KV cache while decoding in `mode`: every
        level under HierGen except those with a window of 1 (they read only their own
        chunk), the top level alone under RecGen (docs/PHOTON.md §5)."""
        if mode == "recgen":
            return [self.n_levels]
        return [level for level in range(1, self.n_levels + 1)
                if self.encoder_window_of(level) != 1]


ModelConfig = PhotonConfig | TransformerConfig


def config_from_dict(d: dict[str, Any]) -> ModelConfig:
    """Inverse of `to_dict`; unknown keys are an error, so a wrong file is not half-read."""
    d = dict(d)
    model_type = d.pop("model_type", None)
    classes = {c.model_type: c for c in (PhotonConfig, TransformerConfig)}
    if model_type not in classes:
        raise ConfigError(f"model_type: expected one of {sorted(classes)}, got {model_type!r}")
    cls = classes[model_type]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown field for {model_type} config")
    return cls(**d)


# --- presets ---------------------------------------------------------------------------------

def _paper(d: int, ff: int, layers: int) -> dict[str, ModelConfig]:
    """The paper's trio at one size: PHOTON L=2 (4,4), Block Transformer, vanilla."""
    common = dict(vocab_size=32000, d_model=d, n_heads=32, d_ff=ff)
    return {
        "photon": PhotonConfig(**common, chunk_sizes=(4, 4), encoder_layers=(layers, layers),
                               decoder_layers=(layers, layers)),
        "block": PhotonConfig(**common, chunk_sizes=(4,), encoder_layers=(2 * layers,),
                              decoder_layers=(2 * layers,)),
        "vanilla": TransformerConfig(**common, n_layers=4 * layers),
    }


def _cpu(d: int, heads: int, ff: int, vocab: int, seq: int, photon: tuple[int, int],
         block: tuple[int, int], vanilla: int) -> dict[str, ModelConfig]:
    """A CPU trio: layer counts chosen so the three totals agree within 5 %."""
    common = dict(vocab_size=vocab, d_model=d, n_heads=heads, d_ff=ff, max_seq_len=seq)
    return {
        "photon": PhotonConfig(**common, chunk_sizes=(4, 4), encoder_layers=(photon[0],) * 2,
                               decoder_layers=(photon[1],) * 2),
        "block": PhotonConfig(**common, chunk_sizes=(4,), encoder_layers=(block[0],),
                              decoder_layers=(block[1],)),
        "vanilla": TransformerConfig(**common, n_layers=vanilla),
    }


def _build_presets() -> dict[str, ModelConfig]:
    trios = {
        "600m": _paper(1664, 4096, 4),
        "900m": _paper(1792, 4608, 5),
        "1.2b": _paper(1920, 5120, 6),
        "tiny": _cpu(64, 4, 128, 256, 256, photon=(1, 1), block=(2, 3), vanilla=5),
        "small": _cpu(256, 8, 640, 4096, 512, photon=(2, 2), block=(5, 4), vanilla=9),
    }
    presets = {f"{kind}-{size}": cfg for size, trio in trios.items() for kind, cfg in trio.items()}
    # Ablations of photon-small measured in experiments/2026-11-29-quality-next-to-speed.
    small = presets["photon-small"]
    presets["photon-small-2x2"] = small.replace(chunk_sizes=(2, 2))
    presets["photon-small-A"] = small.replace(variant="A")
    presets["photon-small-tf"] = small.replace(latent_teacher_forcing=True)
    # Bounded memory with a closed loop (experiments/2026-11-29-does-the-hierarchy-learn §7):
    # latent teacher forcing, and a level-1 encoder that reads only its own chunk, so HierGen
    # caches the top level alone.
    for size in trios:
        presets[f"photon-{size}-bounded"] = presets[f"photon-{size}"].replace(
            latent_teacher_forcing=True, encoder_window=1)
    # The flat model a user would pick for bounded decode memory: a sliding window whose ring
    # buffer holds as many bytes as photon-small-bounded's caches at the DE workload (30
    # positions x 18,432 B = 552,960 B against 557,056 B at 2,176 tokens).
    presets["vanilla-small-swa"] = presets["vanilla-small"].replace(window=30)
    return presets


PRESETS: dict[str, ModelConfig] = _build_presets()


def get_preset(name: str) -> ModelConfig:
    """The named preset; an unknown name raises a `ConfigError` listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None


__all__ = ["ConfigError", "PhotonConfig", "TransformerConfig", "ModelConfig", "PRESETS",
           "get_preset", "config_from_dict"]
