"""Data parallelism for `photon train` under torchrun: the processes, DDP or FSDP2, and state
dicts for both.

`Distributed` sets up the processes: rank and world size from torchrun's environment, a device
each, the process group (gloo on CPU, nccl on GPU), and the sums and barriers the loop needs.
`wrap` then runs the model in one of two modes (`--parallel`):

- "ddp": `DistributedDataParallel`; every process holds the whole model and optimizer.
- "fsdp": PyTorch's FSDP2 (`fully_shard`), one unit per Transformer block plus the rest of
  the model at the root: parameters, gradients and AdamW moments are sharded over the
  processes, and a block's parameters are gathered only while it runs.

Checkpoints are written in one layout whatever the mode: the full weights (gathered to rank
0 under FSDP) in the Hugging Face layout, and the optimizer state keyed by parameter name
(`torch.distributed.checkpoint.state_dict`), so a run can resume under another mode or
number of processes. With one process there is nothing to shard or replicate: the model runs
as it is.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from photon.device import resolve_device
from photon.errors import ConfigError
from photon.model.layers import Block
from photon.model.lm import Model, build_model

MODES = ("ddp", "fsdp")
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)  # whole tensors, on rank 0


class Distributed:
    """Rank and world size; initialises torch.distributed when launched by torchrun."""

    def __init__(self, device: str) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = resolve_device(device).type == "cuda"
        self.device = torch.device(f"cuda:{local}" if cuda else "cpu")
        if cuda:
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(t)
        return t.tolist()

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def wrap(model: Model, mode: str, world: int, device: torch.device,
         compile: bool = False) -> nn.Module:
    """The module to train: `model` itself (one process), DDP around it, or `model`
    sharded in place by `fully_shard`; compiled when asked. Build the optimizer over
    `model.parameters()` after this call (FSDP replaces them by sharded DTensors)."""
    if mode not in MODES:
        raise ConfigError(f"--parallel must be one of {', '.join(MODES)}, got {mode!r}")
    if world > 1 and mode == "fsdp":
        mesh = init_device_mesh(device.type, (world,))
        for module in model.modules():
            if isinstance(module, Block):
                fully_shard(module, mesh=mesh)
        fully_shard(model, mesh=mesh)
    net: nn.Module = torch.compile(model) if compile else model
    if world > 1 and mode == "ddp":
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
    return net


def gradient_sync(net: nn.Module, model: nn.Module, sync: bool):
    """Context for one micro-batch's backward: gradients are reduced over processes only
    when `sync` (the last micro-batch of a step)."""
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(sync)
        return nullcontext()
    if isinstance(net, nn.parallel.DistributedDataParallel) and not sync:
        return net.no_sync()
    return nullcontext()


def clip_grad_norm(model: nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm (over all shards) and return it."""
    norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return (norm.full_tensor() if isinstance(norm, DTensor) else norm).item()


def weights_finite(model: nn.Module, ctx: Distributed) -> bool:
    """Whether every weight of `model` is finite, on every process (each checks its own
    shards under FSDP; the answer is the same everywhere)."""
    local = [p.to_local() if isinstance(p, DTensor) else p for p in model.parameters()]
    bad = not torch.stack([torch.isfinite(t).all() for t in local]).all().item()
    return ctx.sum([float(bad)])[0] == 0


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full weights on the CPU, by name. A collective under FSDP: call it on every
    rank; rank 0 gets the tensors."""
    return get_model_state_dict(model, options=FULL)


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The full optimizer state keyed by parameter name (same call pattern as
    `model_state`)."""
    return get_optimizer_state_dict(model, optimizer, options=FULL)


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer,
                         state: dict[str, Any]) -> None:
    """Restore `optimizer_state` on every rank (each takes its shard)."""
    if isinstance(state["param_groups"][0]["params"][0], int):
        optimizer.load_state_dict(state)  # keyed by index: a checkpoint from before FSDP
        return
    set_optimizer_state_dict(model, optimizer, state,
                             options=StateDictOptions(full_state_dict=True))


@contextmanager
def unsharded(model: Model) -> Iterator[Model]:
    """`model` with whole parameters, for work outside `forward` (validation calls
    `encode_prefix` and `predict`): under FSDP a temporary copy gathered on every rank."""
    if not isinstance(model, FSDPModule):
        yield model
        return
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    device = next(iter(full.values())).device
    with torch.random.fork_rng(devices=[]):  # initialising the copy leaves the RNG alone
        copy = build_model(model.config, device=device)
    copy.load_state_dict(full)
    del full
    yield copy.train(model.training)
