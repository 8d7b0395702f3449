"""The arguments of a training run (`photon train`'s flags), saved with every checkpoint, and
how a resumed run's are merged with what is given again."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from photon.data.corpus import SHAKESPEARE
from photon.errors import CheckpointError


@dataclass
class TrainArgs:
    """Everything that defines a run (saved with every checkpoint)."""

    preset: str = "photon-small-bounded"  # the bounded-memory form (docs/models.md)
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # config fields
    data: str = SHAKESPEARE  # a corpus (prepared here into the cache) or a prepared directory
    tokenizer: str | None = None  # "bpe" (trained on the corpus; the default), "bytes", a
    # tokenizer.json path; None for a prepared directory, whose tokenizer is its own
    vocab_size: int = 4096  # BPE only
    seq_len: int | None = None  # default: the preset's max_seq_len, at most 512
    batch_size: int = 8  # sequences per optimizer step, over all processes
    micro_batch: int | None = None  # sequences per forward pass and process
    lr: float = 2e-3
    warmup: int | None = None  # default: 150 steps, at most half the run (schedule.py)
    # Latent curriculum (PHOTON L >= 2 in the paper's form): the level >= 2 decoders are
    # teacher-forced with encoder states until this fraction of the run, then their own
    # outputs take over linearly until the second fraction. [] turns it off.
    curriculum: list[float] = dataclasses.field(default_factory=lambda: [0.3, 0.6])
    weight_decay: float = 0.1
    adam_beta2: float = 0.95  # LLM practice; 0.999 lets a tiny model learn recall (docs/recall.md)
    grad_clip: float = 1.0
    max_steps: int | None = None  # default 300 when no token or FLOP budget is given
    max_tokens: int | None = None
    max_time: float | None = None  # seconds of this invocation; does not shape the schedule
    flops: float | None = None  # training FLOPs budget (photon.training_flops_per_token)
    eval_every: int = 50
    eval_tokens: int = 32768
    save_every: int = 50
    keep: int = 3
    log_every: int = 10
    dtype: str = "auto"  # "bf16", "fp32", or auto: photon.device.choose_dtype's training rule
    device: str = "auto"
    compile: bool = False
    parallel: str = "ddp"  # under torchrun: "ddp" or "fsdp"
    seed: int = 0
    out: str | None = None  # default runs/<preset>


# Changing these would silently train a different run, so a resume must agree with them.
MUST_MATCH = ("preset", "overrides", "data", "tokenizer", "vocab_size", "seq_len", "batch_size",
              "lr", "warmup", "curriculum", "weight_decay", "adam_beta2", "grad_clip", "seed")


def merge_args(given: dict[str, Any], saved: dict[str, Any] | None) -> TrainArgs:
    """Command-line values (None = not given) over the checkpoint's, or over the defaults."""
    given = {k: v for k, v in given.items() if v is not None}
    if saved is None:
        return TrainArgs(**given)
    # A checkpoint from before a setting existed trained with that setting's default.
    trained = dataclasses.asdict(TrainArgs(**saved))
    for key in MUST_MATCH:
        if key in given and given[key] != trained[key]:
            raise CheckpointError(f"--{key.replace('_', '-')} {given[key]} does not match the "
                                  f"checkpoint ({trained[key]}); leave it out to resume")
    return TrainArgs(**{**saved, **given})
