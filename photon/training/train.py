"""The training loop behind `photon train`.

AdamW (β = 0.9/0.95 by default, weight decay 0.1 on matrices only), linear warm-up then
cosine decay to a tenth of the peak (`photon.training.schedule`), gradient clipping, gradient
accumulation, optional bf16 autocast (`photon.device.choose_dtype`) and `torch.compile`. Under
`torchrun` the same code runs DistributedDataParallel or FSDP2 (`--parallel`,
`photon.training.parallel`; gloo on CPU, nccl on GPU): `--batch-size` is always the global
batch, so one process with accumulation and N processes take the same optimizer steps.

Resuming is exact: the learning rate is a function of the step, the data order a function
of (seed, windows consumed), and the checkpoint stores weights, optimizer moments, RNG
states and the data position. Validation (`photon.evaluation.validation`) reports token
loss and bits per byte.

A run never loses or corrupts another's: its folder is locked for the run
(`photon.locking`), so a second `photon train --out` into it is refused. A step whose
gradient is not finite, or that leaves a weight infinite, stops the run before anything of
it is validated or saved, so the latest checkpoint is always finite.

`--data mqar:K=8,16,32` trains on a generated task instead of text (`photon.evaluation.recall`:
multi-query associative recall, loss only at the values recalled, every other label -100); its
validation reports loss and accuracy at the values of a held-out stream.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from torch import nn

from photon import checkpoint as ckpt_io
from photon.data.corpus import SHAKESPEARE, tokenizer_for
from photon.data.prepare import packed_dir
from photon.data.shards import WindowSampler, load_tokens, read_windows
from photon.device import GIB, available_memory, choose_dtype
from photon.errors import CheckpointError, ConfigError, DataError
from photon.evaluation.recall import MQAR, SequenceSampler, is_task, recall_validation
from photon.evaluation.validation import validation_scores
from photon.locking import locked
from photon.model.config import get_preset
from photon.model.flops import training_flops_per_token
from photon.model.lm import PhotonLM, build_model
from photon.progress import progress_bar
from photon.training import parallel
from photon.training.args import TrainArgs, merge_args
from photon.training.schedule import check_schedule, lr_at, teacher_weight_at, total_steps


def _optimizer(model: nn.Module, args: TrainArgs) -> torch.optim.AdamW:
    # Decay matrices and embeddings only: decaying norm gains and biases just hurts.
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay},
              {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, args.adam_beta2))


def describe_scores(scores: dict[str, float]) -> str:
    """A validation's scores in words: loss, then bits per byte (text) or accuracy (a task),
    and the top-stream swap delta where there is one."""
    words = [f"val loss {scores['val_loss']:.4f}"]
    if "val_bpb" in scores:
        words.append(f"val bpb {scores['val_bpb']:.4f}")
    if "val_accuracy" in scores:
        words.append(f"val accuracy {scores['val_accuracy']:.4f}")
    if "val_swap_delta" in scores:
        words.append(f"top-stream swap delta {scores['val_swap_delta']:+.4f}")
    return ", ".join(words)


def _claim_folder(out: Path, resuming: bool, held: ExitStack) -> None:
    """Make the run folder ready and lock it for as long as `held` lasts: fail early on an
    unwritable folder, one another run is writing, or (a new run) one that already holds
    checkpoints; drop leftovers of a killed save."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise CheckpointError(f"cannot write to output folder {out}: "
                              f"{e.strerror or e}") from None
    held.enter_context(locked(out, f"another photon train is writing {out}", CheckpointError))
    if not resuming and ckpt_io.list_checkpoints(out):
        raise CheckpointError(f"{out} already holds checkpoints; resume with --resume {out} "
                              "or choose another --out")
    for p in [*out.glob(".tmp-*"), *out.glob(".old-*")]:
        shutil.rmtree(p, ignore_errors=True)


def _check_batch_fits(batch: int, micro: int, seq_len: int, d_model: int) -> None:
    """Refuse a batch that can never run: what a step holds at the least, the list of its
    windows (8 bytes each) and one layer's activations of a micro-batch (float32), must
    fit in the memory available (a batch of 2**70 would otherwise run until it does not)."""
    need = 8 * batch + 4 * micro * seq_len * d_model
    free = available_memory(torch.device("cpu"))
    if need > free:
        raise ConfigError(f"--batch-size {batch} (micro-batches of {micro}) x --seq-len "
                          f"{seq_len}: a step needs at least {need / GIB:,.1f} GiB, more than "
                          f"the {free / GIB:,.1f} GiB available; lower --batch-size or "
                          "--micro-batch")


def train(given: dict[str, Any], resume: str | None = None) -> dict[str, Any]:
    """Train (or resume) a run; `given` maps TrainArgs fields to command-line values (None
    for "not given"). Returns a summary of the finished run."""
    ctx = parallel.Distributed(given.get("device") or "auto")
    try:
        with ExitStack() as held:  # the run folder's lock, from its set-up to the last save
            run = _Run(ctx, given, resume, held)
            run.announce()
            return run.fit()
    finally:
        ctx.close()


class _Run:
    """One training run, set up in named steps: its arguments and output folder, its data,
    its model, its schedule, and (when resuming) the optimizer, sampler and RNG state of the
    checkpoint it continues; `fit` then trains to the end, validating and saving."""

    def __init__(self, ctx: parallel.Distributed, given: dict[str, Any],
                 resume: str | None, held: ExitStack) -> None:
        self.ctx, self.started = ctx, time.monotonic()
        self.restored = self._resolve_args(given, resume, held)
        self._load_data()
        self._build_model()
        self._build_schedule()
        self._restore_state()

    def _resolve_args(self, given: dict[str, Any], resume: str | None,
                      held: ExitStack) -> dict | None:
        """The run's arguments (a resumed run's, with what was given on top) and its
        output folder, made ready and locked (see `_claim_out`); returns what the checkpoint
        to resume holds, or None."""
        restored = None
        if resume is not None:
            ckpt = ckpt_io.resolve_checkpoint(resume, resumable=True)
            self.out = Path(given["out"]) if given.get("out") else ckpt.parent
            self._claim_out(True, held)
            info, state = ckpt_io.load_training_state(ckpt)
            self.args = merge_args(given, info["args"])
            model, tokenizer = ckpt_io.load_model(ckpt)
            restored = {"ckpt": ckpt, "info": info, "state": state, "model": model,
                        "tokenizer": tokenizer}
        else:
            self.args = merge_args(given, None)
            # Bad overrides fail before any data work.
            get_preset(self.args.preset).replace(**self.args.overrides)
            self.out = Path(self.args.out or f"runs/{self.args.preset}")
            self._claim_out(False, held)
        return restored

    def _claim_out(self, resuming: bool, held: ExitStack) -> None:
        """The run folder made ready and locked by the main process (`_claim_folder`)."""
        if self.ctx.main:
            _claim_folder(self.out, resuming, held)
        self.ctx.barrier()

    def _first_then_others(self, fn):
        """fn() on rank 0 first (downloads, tokenizer training, packing fill the caches),
        then on the other ranks, which find them."""
        result = None
        for turn in (True, False):
            if self.ctx.main == turn:
                result = fn()
            self.ctx.barrier()
        return result

    def _load_data(self) -> None:
        """The tokenizer (trained on a new run, the checkpoint's when resuming) and the
        packed train and validation tokens; or, for a generated task, the task and its
        tokenizer."""
        args = self.args
        self.task = MQAR.parse(args.data) if is_task(args.data) else None
        if self.task is not None:
            if args.tokenizer is not None:
                raise ConfigError(f"--data {args.data} brings its own vocabulary; leave out "
                                  "--tokenizer")
            args.data = self.task.spec
            self.tokenizer = self.restored["tokenizer"] if self.restored else \
                self.task.tokenizer()
            return
        if self.restored is None:
            if args.data != SHAKESPEARE:
                args.data = str(Path(args.data).resolve())
            if args.tokenizer not in (None, "bpe", "bytes"):
                args.tokenizer = str(Path(args.tokenizer).resolve())
            self.tokenizer = self._first_then_others(
                lambda: tokenizer_for(args.data, args.tokenizer, args.vocab_size))
        else:
            self.tokenizer = self.restored["tokenizer"]
        packed = self._first_then_others(lambda: packed_dir(args.data, self.tokenizer))
        self.train_tokens, self.val_tokens = load_tokens(packed, "train"), \
            load_tokens(packed, "val")
        if len(self.val_tokens) < 2:
            raise DataError(f"{args.data}: the validation split is empty; use more text")

    def _build_model(self) -> None:
        """The model (initialised from the seed, or the checkpoint's, which must match the
        preset), on the run's device and wrapped for the parallel mode."""
        args = self.args
        preset = get_preset(args.preset)
        args.seq_len = args.seq_len or min(preset.max_seq_len, 512)
        if self.task is not None:
            self.task.check_length(args.seq_len)
        self.config = preset.replace(vocab_size=self.tokenizer.vocab_size,
                                     max_seq_len=args.seq_len, **args.overrides)
        if self.restored is None:
            torch.manual_seed(args.seed)
            self.model = build_model(self.config)
        else:
            self.model = self.restored["model"]
            if self.model.config != self.config:
                raise CheckpointError(
                    f"{self.restored['ckpt']}: its config.json does not match preset "
                    f"{args.preset} with seq_len {args.seq_len} and this tokenizer")
        self.model.to(self.ctx.device).train()
        self.net = parallel.wrap(self.model, args.parallel, self.ctx.world, self.ctx.device,
                                 args.compile)

    def _build_schedule(self) -> None:
        """Batches per process, steps, FLOPs, the optimizer, the data order and precision."""
        args, ctx = self.args, self.ctx
        self.micro = args.micro_batch or max(args.batch_size // ctx.world, 1)
        if args.batch_size % (self.micro * ctx.world):
            raise ConfigError(f"--batch-size {args.batch_size} is not a multiple of "
                              f"--micro-batch {self.micro} x {ctx.world} process(es)")
        self.accum = args.batch_size // (self.micro * ctx.world)
        _check_batch_fits(args.batch_size, self.micro, args.seq_len, self.config.d_model)
        self.tokens_per_step = args.batch_size * args.seq_len
        self.flops_per_token = training_flops_per_token(self.config, args.seq_len)
        self.steps = total_steps(args, self.tokens_per_step, self.flops_per_token)
        check_schedule(args, self.steps)
        self.curriculum = bool(args.curriculum) and isinstance(self.model, PhotonLM) and \
            self.config.n_levels > 1 and not self.config.latent_teacher_forcing
        self.sampler = SequenceSampler() if self.task else \
            WindowSampler(len(self.train_tokens), args.seq_len, args.seed)
        self.optimizer = _optimizer(self.model, args)
        self.dtype = choose_dtype(args.dtype, ctx.device, "training")
        self.byte_lengths = torch.tensor(self.tokenizer.token_bytes(), dtype=torch.float64)
        self.metrics_file = self.out / "metrics.jsonl"
        self.step = 0

    def autocast(self):
        return torch.autocast(self.ctx.device.type, dtype=torch.bfloat16,
                              enabled=self.dtype == torch.bfloat16)

    def _restore_state(self) -> None:
        """Continue where the checkpoint stopped: step, optimizer, data order, RNG; metrics
        logged after it will be logged again, so they are dropped."""
        if self.restored is None:
            return
        info, state = self.restored["info"], self.restored["state"]
        self.step = int(info["step"])
        parallel.load_optimizer_state(self.model, self.optimizer, state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["rng"]["torch"])
        if self.ctx.main and self.metrics_file.exists():
            rows = [r for r in self.metrics_file.read_text().splitlines()
                    if json.loads(r)["step"] <= self.step]
            self.metrics_file.write_text("".join(r + "\n" for r in rows))

    def announce(self) -> None:
        """One line: what is trained on what, for how long, how."""
        if not self.ctx.main:
            return
        args = self.args
        params = sum(p.numel() for p in self.model.parameters())
        schedule = f"lr {args.lr:g}, warm-up {args.warmup}" + (
            f", latent curriculum {args.curriculum[0]:g}-{args.curriculum[1]:g}"
            if self.curriculum else "")
        source = "generated sequences" if self.task else \
            f"{len(self.train_tokens):,} training tokens"
        print(f"{args.preset} ({params / 1e6:.2f}M parameters) on {args.data}: "
              f"{source}; {self.steps} steps of "
              f"{args.batch_size} x {args.seq_len} tokens "
              f"({self.steps * self.tokens_per_step * self.flops_per_token:.3g} FLOPs); "
              f"{schedule}; {str(self.dtype).removeprefix('torch.')} on {self.ctx.device} x "
              f"{self.ctx.world}", flush=True)

    def log(self, row: dict[str, Any]) -> None:
        if self.ctx.main:
            try:
                with open(self.metrics_file, "a") as f:
                    f.write(json.dumps(row) + "\n")
            except OSError as e:  # a full disk
                raise CheckpointError(f"cannot write {self.metrics_file}: "
                                      f"{e.strerror or e}") from None

    def save(self) -> Path:
        """A checkpoint of the current step (atomically); only the last `keep` stay."""
        args, path = self.args, self.out / f"step-{self.step:06d}"
        # Gathering the full weights and optimizer state is a collective under FSDP.
        weights = parallel.model_state(self.model)
        optim = parallel.optimizer_state(self.model, self.optimizer)
        if self.ctx.main:
            trainer_state = {"step": self.step, "tokens": self.step * self.tokens_per_step,
                             "flops": self.step * self.tokens_per_step * self.flops_per_token,
                             "args": dataclasses.asdict(args)}
            rng = {"torch": torch.get_rng_state()}  # no dropout: saved for completeness
            ckpt_io.save_checkpoint(path, self.model, self.tokenizer, trainer_state,
                                    {"optimizer": optim, "sampler": self.sampler.state_dict(),
                                     "rng": rng}, weights=weights)
            ckpt_io.write_run_config(self.out, self.model)
            for old in ckpt_io.list_checkpoints(self.out)[:-args.keep]:
                shutil.rmtree(old, ignore_errors=True)
        self.ctx.barrier()
        return path

    def diverged(self, step: int, what: str) -> ConfigError:
        """The error that stops a run whose loss, gradient or weights are no longer finite
        at `step`; nothing of that step is saved."""
        saved = ckpt_io.list_checkpoints(self.out)
        kept = f"{saved[-1]} stays the latest checkpoint" if saved else "no checkpoint was " \
            "saved"
        return ConfigError(f"step {step}: {what}: the run diverged and stops here, saving "
                           f"nothing of this step ({kept}); train again with a lower --lr "
                           f"(this run's: {self.args.lr:g}) or --grad-clip "
                           f"({self.args.grad_clip:g})")

    def train_step(self) -> dict[str, float]:
        """One optimizer step over a global batch (gradient accumulation over micro-batches
        of this process's share); returns this process's summed losses, lr and grad norm."""
        args, ctx = self.args, self.ctx
        lr = lr_at(self.step, args, self.steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        teacher = {"teacher_weight": teacher_weight_at(self.step, args, self.steps)} \
            if self.curriculum else {}
        items = self.sampler.next(args.batch_size)
        share = self.micro * self.accum
        mine = items[ctx.rank * share:(ctx.rank + 1) * share]
        loss_sum = token_sum = 0.0
        for i in range(self.accum):
            x, labels = self.read(mine[i * self.micro:(i + 1) * self.micro])
            sync = i == self.accum - 1 or ctx.world == 1
            with parallel.gradient_sync(self.net, self.model, sync), self.autocast():
                out = self.net(x, labels=labels, **teacher)
                (out.loss / self.accum).backward()
            loss_sum += out.loss.item()
            token_sum += out.losses["token"].item()
        grad_norm = parallel.clip_grad_norm(self.model, args.grad_clip)
        # The norm is global (gradients are reduced over processes), so every process stops
        # here together; stepping would write NaN into every weight.
        if not math.isfinite(grad_norm):
            raise self.diverged(self.step + 1, f"the loss is {loss_sum / self.accum:g} and "
                                               f"its gradient norm {grad_norm:g}")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {"loss_sum": loss_sum, "token_sum": token_sum, "lr": lr, "grad_norm": grad_norm,
                **teacher}

    def read(self, items: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and labels of a micro-batch, on the device: text windows (starting at
        `items`) are their own labels; a task's sequences (numbered `items`) carry theirs."""
        if self.task is not None:
            batch = self.task.batch(items, self.args.seq_len, self.args.seed)
            return batch.ids.to(self.ctx.device), batch.labels.to(self.ctx.device)
        x = read_windows(self.train_tokens, items, self.args.seq_len).to(self.ctx.device)
        return x, x

    def validate(self) -> dict[str, float]:
        with parallel.unsharded(self.model) as whole:
            if self.task is not None:
                sequences = max(self.args.eval_tokens // self.args.seq_len, 1)
                return recall_validation(whole, self.task, self.args.seq_len, sequences,
                                         self.args.seed, self.autocast, self.ctx)
            return validation_scores(whole, self.val_tokens, self.args.seq_len,
                                     self.args.eval_tokens, self.byte_lengths, self.autocast,
                                     self.ctx)

    def out_of_time(self) -> bool:
        args = self.args
        late = args.max_time is not None and time.monotonic() - self.started > args.max_time
        if self.ctx.world > 1 and args.max_time is not None:  # ranks must stop together
            late = self.ctx.sum([float(late)])[0] > 0
        return late

    def fit(self) -> dict[str, Any]:
        """Train to the last step (or --max-time), logging, validating and saving as asked;
        returns the run's summary."""
        args, ctx = self.args, self.ctx
        bar = progress_bar(total=self.steps, initial=self.step, show=ctx.main, unit="step",
                   dynamic_ncols=True, mininterval=1.0)
        path, last = None, {}
        tick, tick_step = time.monotonic(), self.step
        try:
            while self.step < self.steps:
                result = self.train_step()
                step = self.step
                if step % args.log_every == 0 or step == self.steps:
                    loss, token = (v / (self.accum * ctx.world)
                                   for v in ctx.sum([result["loss_sum"], result["token_sum"]]))
                    now = time.monotonic()
                    speed = (step - tick_step) * self.tokens_per_step / max(now - tick, 1e-9)
                    tick, tick_step = now, step
                    teacher = {k: v for k, v in result.items() if k == "teacher_weight"}
                    last = {"step": step, "tokens": step * self.tokens_per_step,
                            "flops": step * self.tokens_per_step * self.flops_per_token,
                            "loss": loss, "token_loss": token, "lr": result["lr"],
                            "grad_norm": result["grad_norm"], "tokens_per_s": speed,
                            "elapsed_s": now - self.started, **teacher}
                    self.log(last)
                    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{speed:,.0f}")
                bar.update(1)
                out_of_time = self.out_of_time()
                done = step == self.steps or out_of_time
                evaluate, save = step % args.eval_every == 0 or done, \
                    step % args.save_every == 0 or done
                # A finite gradient can still take a weight past the float range (a huge --lr):
                # caught before such weights are validated or saved.
                if (evaluate or save) and not parallel.weights_finite(self.model, ctx):
                    raise self.diverged(step, "a weight is no longer finite after the update")
                if evaluate:
                    scores = self.validate()
                    last.update(scores)
                    self.log({"step": step, **scores})
                    if ctx.main:
                        bar.write(f"step {step}: {describe_scores(scores)}")
                if save:
                    path = self.save()
                if out_of_time:
                    break
        except BaseException:  # the error's line stands alone: the bar is erased
            bar.leave = False
            bar.close()
            raise
        bar.close()
        if path is None:  # nothing left to train: the checkpoint given is the final one
            path = ckpt_io.resolve_checkpoint(self.out)
        return {"step": self.step, "steps": self.steps, "checkpoint": str(path),
                "dtype": str(self.dtype), "elapsed_s": time.monotonic() - self.started, **last}
