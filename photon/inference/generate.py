"""Generation: `generate` decodes a batch of token-id prompts with HierGen, RecGen or the
flat model's KV cache (`photon.inference.decoders`), `generate_text` does it on text
through a tokenizer, with stop strings and streaming."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from photon.errors import CacheFullError, InputError
from photon.inference.decoders import DecodeOptions, make_decoder
from photon.inference.prompts import as_prompts, pad_prompts
from photon.inference.sampling import check_sampling, make_sampler, seeded_generator
from photon.model.lm import Model


@torch.no_grad()
def generate(model: Model, prompts: Sequence[Sequence[int]] | Tensor, max_new_tokens: int,
             mode: str = "hiergen", temperature: float = 0.0, top_k: int | None = None,
             top_p: float | None = None, seed: int | None = None, eos_id: int | None = None,
             max_length: int | None = None,
             stop: Callable[[int, list[int]], bool] | None = None,
             stream: Callable[[int, int], None] | None = None,
             return_logits: bool = False, options: DecodeOptions | None = None):
    """Generate up to `max_new_tokens` new tokens after each prompt.

    prompts: token-id lists of any lengths (or a [B, T] tensor), decoded together as one batch;
    each sequence equals what it would decode alone. mode: "hiergen" or "recgen" (PHOTON with
    L >= 2 only; the flat model ignores it). Greedy at temperature 0, else sampling with
    optional top-k / top-p from a generator seeded with `seed`. A sequence stops at `eos_id`
    (not included in its output), after `max_new_tokens`, or when `stop(b, new_tokens)` says
    so. `stream(b, token)` sees every new token as it is produced. `max_length` is the cache
    capacity in tokens (default: longest prompt + max_new_tokens); asking for more is an
    error. `options`: how the decoder runs (`make_decoder`). Returns the new
    token-id lists, and with `return_logits` also each sequence's logits [n_new, V] that
    chose its tokens.
    """
    if max_new_tokens <= 0:
        raise InputError(f"max_new_tokens must be positive, got {max_new_tokens}")
    prompts = as_prompts(prompts, model.config.vocab_size)
    needed = max(map(len, prompts)) + max_new_tokens
    if max_length is not None and needed > max_length:
        raise CacheFullError(f"the longest prompt ({max(map(len, prompts))} tokens) plus "
                             f"max_new_tokens ({max_new_tokens}) exceeds max_length "
                             f"({max_length})")
    device = next(model.parameters()).device
    check_sampling(temperature, top_k, top_p, seed)
    generator = None if seed is None else seeded_generator(seed, device)
    sampler = make_sampler(temperature, top_k, top_p, generator)
    decoder = make_decoder(model, mode, len(prompts), max_length or needed, options)
    decoder.prefill(*pad_prompts(prompts, device))

    outputs: list[list[int]] = [[] for _ in prompts]
    chosen: list[list[Tensor]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    while not all(done):
        tokens, new, logits = decoder.step(sampler, keep_logits=return_logits)
        tokens, new = tokens.tolist(), new.tolist()
        for b in range(len(prompts)):
            for j, (token, is_new) in enumerate(zip(tokens[b], new[b], strict=True)):
                if done[b] or not is_new:
                    continue
                if token == eos_id:
                    done[b] = True
                    continue
                outputs[b].append(token)
                if return_logits:
                    chosen[b].append(logits[b, j])
                if stream is not None:
                    stream(b, token)
                if len(outputs[b]) >= max_new_tokens or (stop is not None
                                                          and stop(b, outputs[b])):
                    done[b] = True
    if return_logits:
        return outputs, [torch.stack(c) if c else torch.empty(0) for c in chosen]
    return outputs



def generate_text(model: Model, tokenizer, prompts: Sequence[str], max_new_tokens: int,
                  stop_strings: Sequence[str] = (), stream: Callable[[int, str], None] | None
                  = None, **kwargs) -> list[str]:
    """`generate` on text through a tokenizer (encode / decode / eos_id).

    An empty prompt starts a new document from the end-of-text token. Generation of a
    sequence stops at the first of `stop_strings`, which is cut from its text. `stream(b,
    text)` receives each sequence's new text piece by piece as tokens arrive.
    """
    ids = []
    for text in prompts:
        encoded = tokenizer.encode(text)
        if not encoded and tokenizer.eos_id is None:
            raise InputError("empty prompt and the tokenizer has no end-of-text token to "
                             "start from")
        ids.append(encoded or [tokenizer.eos_id])
    new: list[list[int]] = [[] for _ in prompts]
    shown = [0] * len(prompts)

    def text_of(b: int) -> str:
        text = tokenizer.decode(new[b])
        cut = min((text.find(s) for s in stop_strings if s in text), default=-1)
        return text if cut < 0 else text[:cut]

    def on_token(b: int, token: int) -> None:
        new[b].append(token)
        if stream is not None:
            text = text_of(b)
            # Hold back an unfinished multi-byte character (decoded as U+FFFD) and any tail
            # that could still grow into a stop string.
            safe = len(text.rstrip("\ufffd"))
            if stop_strings:
                safe = min(safe, max(0, len(text) - max(map(len, stop_strings)) + 1))
            if safe > shown[b]:
                stream(b, text[shown[b]:safe])
                shown[b] = safe

    def should_stop(b: int, _tokens: list[int]) -> bool:
        return bool(stop_strings) and any(s in tokenizer.decode(new[b]) for s in stop_strings)

    generate(model, ids, max_new_tokens, stop=should_stop, stream=on_token,
             eos_id=kwargs.pop("eos_id", tokenizer.eos_id), **kwargs)
    texts = [text_of(b) for b in range(len(prompts))]
    if stream is not None:
        for b, text in enumerate(texts):
            if len(text) > shown[b]:
                stream(b, text[shown[b]:])
    return texts
