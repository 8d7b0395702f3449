"""Prompts as the decoders take them: checked token-id lists, right-padded into a batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from photon.errors import InputError


def check_prompt(prompt: Sequence[int], vocab_size: int, name: str = "prompt") -> None:
    """An empty prompt, or a token id outside [0, vocab_size), is an `InputError`."""
    if not len(prompt):
        raise InputError(f"{name} is empty: give at least one token (a text prompt may start "
                         "from the tokenizer's end-of-text token)")
    bad = next((t for t in prompt if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise InputError(f"{name}: token id {bad} is outside the vocabulary [0, {vocab_size})")


def check_fits(prompt_len: int, max_new_tokens: int, max_len: int, min_new: int = 1) -> None:
    """A prompt plus the tokens to generate (at least `min_new`: 0 when the prompt is only
    scored) must fit a sequence of `max_len` tokens."""
    if max_new_tokens < min_new:
        raise InputError(f"max_new_tokens must be at least {min_new}, got {max_new_tokens}")
    if prompt_len + max_new_tokens > max_len:
        raise InputError(f"{prompt_len} prompt tokens + {max_new_tokens} new tokens do not "
                         f"fit a sequence of {max_len} tokens")


def as_prompts(prompts: Sequence[Sequence[int]] | Tensor, vocab_size: int) -> list[list[int]]:
    """Token-id lists (from lists or a [B, T] tensor), each checked by `check_prompt`."""
    if isinstance(prompts, Tensor):
        if prompts.dim() != 2:
            raise InputError(f"a prompt tensor must be [B, T], got shape {list(prompts.shape)}")
        prompts = prompts.tolist()
    prompts = [list(map(int, p)) for p in prompts]
    if not prompts:
        raise InputError("no prompts given")
    for i, p in enumerate(prompts):
        check_prompt(p, vocab_size, f"prompt {i}")
    return prompts


def pad_prompts(prompts: list[list[int]], device: torch.device | str) -> tuple[Tensor, Tensor]:
    """(ids [B, longest] right-padded with 0, lengths [B] on the host)."""
    lengths = torch.tensor([len(p) for p in prompts])
    ids = torch.zeros(len(prompts), int(lengths.max()), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, :len(p)] = torch.tensor(p)
    return ids.to(device), lengths
