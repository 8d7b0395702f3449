"""The schedule of a run: its length in steps, the learning rate and the latent curriculum's
teacher weight at every step. Both are functions of the step alone, so a resumed run follows
the schedule an uninterrupted one would have."""

from __future__ import annotations

import math

from photon.errors import ConfigError
from photon.training.args import TrainArgs

DEFAULT_STEPS = 300
# Adam's first updates are full-size whatever the gradient; at the full learning rate they
# write constants into every residual stream and the encoder states collapse within ten
# steps (experiments/2026-11-29-does-the-hierarchy-learn). A long warm-up keeps the hierarchy's
# streams alive.
DEFAULT_WARMUP = 150


def total_steps(args: TrainArgs, tokens_per_step: int, flops_per_token: int) -> int:
    """The step count the schedule decays over: the tightest step, token or FLOP budget."""
    limits = []
    if args.max_steps is not None:
        limits.append(args.max_steps)
    if args.max_tokens is not None:
        limits.append(math.ceil(args.max_tokens / tokens_per_step))
    if args.flops is not None:
        limits.append(int(args.flops // (flops_per_token * tokens_per_step)))
    steps = min(limits) if limits else DEFAULT_STEPS
    if steps < 1:
        raise ConfigError("the budget is smaller than one optimizer step "
                          f"({tokens_per_step} tokens, {flops_per_token * tokens_per_step:.3g} "
                          "FLOPs); raise it or lower --batch-size/--seq-len")
    return steps


def check_schedule(args: TrainArgs, total: int) -> None:
    """Validate the schedule and fill the defaults that depend on the run's length."""
    if args.warmup is None:
        args.warmup = max(1, min(DEFAULT_WARMUP, total // 2))
    if args.warmup < 1:
        raise ConfigError(f"--warmup must be at least 1, got {args.warmup}")
    c = args.curriculum
    if c and not (len(c) == 2 and 0 <= c[0] <= c[1] <= 1):
        raise ConfigError(f"--curriculum needs START,END with 0 <= START <= END <= 1 (fractions "
                          f"of the run), or off; got {c}")


def lr_at(step: int, args: TrainArgs, total: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to lr/10 at step `total`."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = min((step - args.warmup) / max(total - args.warmup, 1), 1.0)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def teacher_weight_at(step: int, args: TrainArgs, total: int) -> float:
    """Weight of the encoder states in the level >= 2 decoders' inputs at `step`: 1 until
    curriculum[0] of the run, then linearly down to 0 (the paper's form) at curriculum[1]."""
    start, end = (f * total for f in args.curriculum)
    if step < start:
        return 1.0
    if step >= end:
        return 0.0
    return 1.0 - (step - start) / (end - start)
