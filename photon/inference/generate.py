"""Decoding: prefill, then HierGen or RecGen for PHOTON, plain KV-cached decoding for the
flat model. `generate` is the entry point; `sequential_logits` scores a text the way
generation would see it (RecGen's likelihood, docs/PHOTON.md §5.3).

PHOTON decodes one meta-context (C_1…C_L tokens) per step. Its token chunks depend only on
their conditioning latents, never on each other's tokens, so all sub-chunks of a
meta-context decode in parallel: C_1 local-decoder steps make C_1…C_L tokens. Tokens already
known (the end of a prompt that does not fill its meta-context, or every token when scoring a
text) are forced in place of samples, which makes a partial prompt, a batch of prompts of
different lengths and teacher-forced scoring one code path. After each meta-context:
- HierGen re-encodes its tokens bottom-up, advancing every encoder level's KV cache;
- RecGen feeds the decoder's own reconstruction X̂^(L-1) through the top chunker and takes
  one step of the top encoder; the lower encoders are used for the prompt only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from photon.errors import CacheFullError, InputError
from photon.inference.cache import KVCache, LocalKVCache
from photon.inference.slots import Slots
from photon.model.lm import Model, PhotonLM, check_token_ids

Sampler = Callable[[Tensor], Tensor]
MODES = ("hiergen", "recgen")


def make_sampler(temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                 generator: torch.Generator | None = None) -> Sampler:
    """logits [..., V] -> token ids [...]: greedy at temperature 0, else top-k/top-p sampling."""
    if temperature < 0:
        raise InputError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise InputError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise InputError(f"top_p must be in (0, 1], got {top_p}")

    def sample(logits: Tensor) -> Tensor:
        if temperature == 0:
            return logits.argmax(-1)
        logits = logits.float() / temperature
        if top_k is not None:
            kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, -math.inf)
        if top_p is not None:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            probs = sorted_logits.softmax(-1)
            # Keep the smallest prefix whose mass reaches top_p (the top token always stays).
            drop = probs.cumsum(-1) - probs >= top_p
            logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, -math.inf))
        probs = logits.softmax(-1).flatten(0, -2)
        ids = torch.multinomial(probs, 1, generator=generator)
        return ids.view(logits.shape[:-1])

    return sample


def _gather_positions(x: Tensor, start: Tensor, n: int) -> Tensor:
    """x[b, start[b] : start[b] + n] for every sequence b of x [B, N, D]."""
    index = (start.to(x.device)[:, None] + torch.arange(n, device=x.device))[..., None]
    return x.gather(1, index.expand(-1, -1, x.shape[-1]))


class FlatDecoder(Slots):
    """KV-cached decoding of the flat Transformer: one token per step."""

    ROW_STATE = ("next_logits", "pending")  # per-sequence state (photon.inference.slots)

    def __init__(self, model: Model, batch: int, capacity: int) -> None:
        c, p = model.config, next(model.parameters())
        self.model = model
        self.cache = KVCache(c.n_layers, batch, c.n_heads, c.head_dim, capacity, p.device,
                             p.dtype)
        self.tokens_per_step = 1

    @property
    def cache_bytes(self) -> int:
        return self.cache.nbytes

    def prefill(self, ids: Tensor, lengths: Tensor) -> None:
        hidden = self.model.hidden(ids, self.cache, advance=lengths)
        self.next_logits = self.model.lm_head(_gather_positions(hidden, lengths - 1, 1))
        self.pending: Tensor | None = None

    def step(self, sampler: Sampler | None, forced: Tensor | None = None,
             ) -> tuple[Tensor, Tensor, Tensor]:
        """Next token of every sequence: (tokens [B, 1], new [B, 1], logits [B, 1, V])."""
        if self.pending is not None:
            self.next_logits = self.model.lm_head(self.model.hidden(self.pending, self.cache))
        logits = self.next_logits
        tokens = sampler(logits) if forced is None else forced
        self.pending = tokens
        return tokens, torch.ones_like(tokens, dtype=torch.bool), logits

    def flush(self) -> None:
        """Feed the last step's tokens into the cache now instead of at the next step."""
        if self.pending is not None:
            self.next_logits = self.model.lm_head(self.model.hidden(self.pending, self.cache))
            self.pending = None

    def _slot_caches(self) -> list[KVCache | None]:
        return [self.cache]

    def _use_caches(self, caches: list[KVCache | None]) -> None:
        (self.cache,) = caches


class PhotonDecoder(Slots):
    """HierGen / RecGen for PhotonLM: one meta-context per step.

    A model with `latent_teacher_forcing` decodes under HierGen chunk by chunk instead: each
    level >= 2 decoder reads the encoder state of the chunk just decoded below it, so a
    chunk's tokens are encoded (advancing every encoder cache) before the next chunk starts.
    Under RecGen there is no lower encoder, so its decoders read their own outputs.
    """

    # Per-sequence state (photon.inference.slots): batch-first tensors, lists of them, or None.
    ROW_STATE = ("cond", "recons", "carries", "top_cond", "next_top", "meta_start", "known_ids",
                 "known_len", "pending")

    def __init__(self, model: PhotonLM, batch: int, capacity: int, mode: str) -> None:
        c, p = model.config, next(model.parameters())
        if mode == "recgen" and c.n_levels < 2:
            raise InputError("recgen needs a model with at least 2 levels (this one has 1: "
                             "a Block Transformer); use mode='hiergen'")
        self.model, self.mode, self.P = model, mode, c.meta_len
        self.tokens_per_step = self.P
        self.chunkwise = c.latent_teacher_forcing and mode == "hiergen" and c.n_levels > 1
        self.cond = self.recons = self.carries = self.top_cond = self.next_top = None
        metas = math.ceil(capacity / self.P)
        cached = c.cached_levels(mode)
        self.caches = [
            KVCache(c.encoder_layers[level - 1], batch, c.n_heads, c.head_dim,
                    metas * self.positions_per_meta(level), p.device, p.dtype)
            if level in cached else None
            for level in range(1, c.n_levels + 1)
        ]

    def positions_per_meta(self, level: int) -> int:
        return self.P // self.model.config.tokens_per_position(level)

    @property
    def cache_bytes(self) -> int:
        return sum(cache.nbytes for cache in self.caches if cache is not None)

    def _encode(self, ids: Tensor, advance: Tensor | None = None) -> Tensor:
        """Encode whole meta-contexts into the caches; returns the top states."""
        x = self.model.enc_embed(ids)
        for level, cache in enumerate(self.caches, start=1):
            n = None if advance is None else advance * self.positions_per_meta(level)
            x = self.model.encode_level(level, x, cache, n)
        return x

    def _plan(self, top: Tensor, start: Tensor | None = None) -> None:
        """Decode the latents of the next meta-context of every sequence from the top
        conditioning (for the prompt: of all its meta-contexts, then pick each one's).
        Chunk-by-chunk decoding only keeps the top conditioning: its latents need the
        tokens."""
        c = self.model.config
        if self.chunkwise:
            self.top_cond = top if start is None else _gather_positions(top, start, 1)
            return
        recons, cond = self.model.decode_top_down(top, self.carries)
        if start is not None:
            recons = [_gather_positions(r, start * r.shape[1] // top.shape[1],
                                        r.shape[1] // top.shape[1]) for r in recons]
            cond = _gather_positions(cond, start * (self.P // c.chunk_sizes[0]),
                                     self.P // c.chunk_sizes[0])
        self.recons, self.cond = recons, cond
        if c.variant == "A":
            self.carries = [r[:, -1:] for r in recons]

    def prefill(self, ids: Tensor, lengths: Tensor) -> None:
        """Encode each prompt's complete meta-contexts; plan the meta-context it ends in."""
        complete = lengths // self.P
        G = int(complete.max())
        top = self._encode(ids[:, :G * self.P], complete) if G else \
            self.model.enc_embed.weight.new_zeros(len(ids), 0, self.model.config.d_model)
        self.carries = None
        # Positions of a prompt inside its last meta-context are teacher-forced in step().
        self._plan(F.pad(top, (0, 0, 1, 0)), start=complete)
        self.meta_start = complete * self.P  # first token position of the planned meta
        self.known_ids, self.known_len = ids, lengths
        self.pending: Tensor | None = None
        self.next_top = None

    def _advance(self, tokens: Tensor) -> None:
        """Move the top stream past the meta-context just decoded."""
        if self.chunkwise:
            top, self.next_top = self.next_top, None  # encoded chunk by chunk in step()
        elif self.mode == "hiergen":
            top = self._encode(tokens)
        else:
            top = self.model.encode_level(self.model.config.n_levels, self.recons[0],
                                          self.caches[-1])
        self._plan(top)
        self.meta_start = self.meta_start + self.P

    def _known(self, forced: Tensor | None) -> tuple[Tensor, Tensor]:
        """(known [B, P], forced ids [B, P]) of the planned meta-context: the prompt's
        tokens where it overlaps the prompt, or every token of `forced`."""
        if forced is not None:
            return torch.ones_like(forced, dtype=torch.bool), forced
        device = self.known_ids.device
        position = self.meta_start[:, None] + torch.arange(self.P)  # [B, P], on the host
        known = (position < self.known_len[:, None]).to(device)
        index = position.clamp(max=max(self.known_ids.shape[1] - 1, 0))
        ids = self.known_ids.gather(1, index.to(device)) if self.known_ids.numel() else \
            torch.zeros_like(known, dtype=torch.long)
        return known, ids

    def _token_chunks(self, cond: Tensor, known: Tensor, forced: Tensor,
                      sampler: Sampler | None) -> tuple[Tensor, Tensor]:
        """Decode S token chunks per sequence, all at once, from their conditioning latents
        cond [B, S, D]: (tokens [B, S, C], logits [B, S, C, V]); known/forced [B, S, C]."""
        c = self.model.config
        B, S, _ = cond.shape
        C = c.chunk_sizes[0]
        x = self.model.conditioning(1, cond)
        cache = LocalKVCache(c.n_cond + C)
        tokens, logits = [], []
        for j in range(C):
            h = self.model.decoders[0](x, cache)[:, -1]
            step_logits = self.model.lm_head(h).view(B, S, -1)
            t = forced[:, :, j] if sampler is None else \
                torch.where(known[:, :, j], forced[:, :, j], sampler(step_logits))
            tokens.append(t)
            logits.append(step_logits)
            if j + 1 < C:
                x = self.model.dec_embed(t.reshape(B * S, 1))
        return torch.stack(tokens, dim=2), torch.stack(logits, dim=2)

    def _chunk(self, level: int, cond: Tensor, known: Tensor, forced: Tensor,
               sampler: Sampler | None, out: list[tuple[Tensor, Tensor]]) -> Tensor:
        """Decode one level-`level` chunk of every sequence from its latent cond [B, 1, D]
        (level 1: C_1 tokens, appended to `out` with their logits), encode it, and return
        its encoder state X^(level) [B, 1, D]; known/forced [B, tokens of the chunk]."""
        m = self.model
        if level == 1:
            C = m.config.chunk_sizes[0]
            tokens, logits = self._token_chunks(cond, known.view(-1, 1, C),
                                                forced.view(-1, 1, C), sampler)
            out.append((tokens[:, 0], logits[:, 0]))
            x = m.enc_embed(tokens[:, 0])
        else:
            C, span = m.config.chunk_sizes[level - 1], known.shape[1] // \
                m.config.chunk_sizes[level - 1]
            cache = LocalKVCache(m.config.n_cond + C)
            inputs, states = m.conditioning(level, cond), []
            for j in range(C):
                latent = m.decoders[level - 1](inputs, cache)[:, -1:]
                part = slice(j * span, (j + 1) * span)
                inputs = self._chunk(level - 1, latent, known[:, part], forced[:, part],
                                     sampler, out)
                states.append(inputs)
            x = torch.cat(states, dim=1)
        return m.encode_level(level, x, self.caches[level - 1])

    def step(self, sampler: Sampler | None, forced: Tensor | None = None,
             ) -> tuple[Tensor, Tensor, Tensor]:
        """Decode one meta-context: (tokens [B, P], new [B, P], logits [B, P, V]).

        The prompt's tokens are forced where the meta-context overlaps it; `forced` [B, P]
        forces every token instead (teacher forcing, for scoring).
        """
        if self.pending is not None:
            self._advance(self.pending)
        known, forced = self._known(forced)
        B, P = known.shape
        if self.chunkwise:
            out: list[tuple[Tensor, Tensor]] = []
            self.next_top = self._chunk(self.model.config.n_levels, self.top_cond, known,
                                        forced, sampler, out)
            tokens = torch.cat([t for t, _ in out], dim=1)
            logits = torch.cat([lg for _, lg in out], dim=1)
        else:
            S = self.cond.shape[1]
            tokens, logits = self._token_chunks(self.cond, known.view(B, S, -1),
                                                forced.view(B, S, -1), sampler)
        self.pending = tokens.reshape(B, P)
        return self.pending, ~known, logits.reshape(B, P, -1)

    def flush(self) -> None:
        """Advance the top stream past the last decoded meta-context now instead of at the
        next step."""
        if self.pending is not None:
            self._advance(self.pending)
            self.pending = None

    def _slot_caches(self) -> list[KVCache | None]:
        return list(self.caches)

    def _use_caches(self, caches: list[KVCache | None]) -> None:
        self.caches = caches


def _decoder(model: Model, batch: int, capacity: int, mode: str) -> FlatDecoder | PhotonDecoder:
    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}, got {mode!r}")
    if isinstance(model, PhotonLM):
        return PhotonDecoder(model, batch, capacity, mode)
    return FlatDecoder(model, batch, capacity)


def _as_prompts(prompts: Sequence[Sequence[int]] | Tensor, vocab_size: int) -> list[list[int]]:
    if isinstance(prompts, Tensor):
        if prompts.dim() != 2:
            raise InputError(f"a prompt tensor must be [B, T], got shape {list(prompts.shape)}")
        prompts = prompts.tolist()
    prompts = [list(map(int, p)) for p in prompts]
    if not prompts:
        raise InputError("no prompts given")
    for i, p in enumerate(prompts):
        if not p:
            raise InputError(f"prompt {i} is empty: give at least one token (a text prompt "
                             "may start from the tokenizer's end-of-text token)")
        bad = [t for t in p if not 0 <= t < vocab_size]
        if bad:
            raise InputError(f"prompt {i}: token id {bad[0]} is outside the vocabulary "
                             f"[0, {vocab_size})")
    return prompts


def _padded(prompts: list[list[int]], device: torch.device) -> tuple[Tensor, Tensor]:
    lengths = torch.tensor([len(p) for p in prompts])
    ids = torch.zeros(len(prompts), int(lengths.max()), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, :len(p)] = torch.tensor(p)
    return ids.to(device), lengths


@torch.no_grad()
def generate(model: Model, prompts: Sequence[Sequence[int]] | Tensor, max_new_tokens: int,
             mode: str = "hiergen", temperature: float = 0.0, top_k: int | None = None,
             top_p: float | None = None, seed: int | None = None, eos_id: int | None = None,
             max_length: int | None = None,
             stop: Callable[[int, list[int]], bool] | None = None,
             stream: Callable[[int, int], None] | None = None,
             return_logits: bool = False):
    """Generate up to `max_new_tokens` new tokens after each prompt.

    prompts: token-id lists of any lengths (or a [B, T] tensor), decoded together as one batch;
    each sequence equals what it would decode alone. mode: "hiergen" or "recgen" (PHOTON with
    L >= 2 only; the flat model ignores it). Greedy at temperature 0, else sampling with
    optional top-k / top-p from a generator seeded with `seed`. A sequence stops at `eos_id`
    (not included in its output), after `max_new_tokens`, or when `stop(b, new_tokens)` says
    so. `stream(b, token)` sees every new token as it is produced. `max_length` is the cache
    capacity in tokens (default: longest prompt + max_new_tokens); asking for more is an
    error. Returns the new token-id lists, and with `return_logits` also each sequence's
    logits [n_new, V] that chose its tokens.
    """
    if max_new_tokens <= 0:
        raise InputError(f"max_new_tokens must be positive, got {max_new_tokens}")
    prompts = _as_prompts(prompts, model.config.vocab_size)
    needed = max(map(len, prompts)) + max_new_tokens
    if max_length is not None and needed > max_length:
        raise CacheFullError(f"the longest prompt ({max(map(len, prompts))} tokens) plus "
                             f"max_new_tokens ({max_new_tokens}) exceeds max_length "
                             f"({max_length})")
    device = next(model.parameters()).device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    sampler = make_sampler(temperature, top_k, top_p, generator)
    decoder = _decoder(model, len(prompts), max_length or needed, mode)
    decoder.prefill(*_padded(prompts, device))

    outputs: list[list[int]] = [[] for _ in prompts]
    chosen: list[list[Tensor]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    while not all(done):
        tokens, new, logits = decoder.step(sampler)
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


@torch.no_grad()
def sequential_logits(model: PhotonLM, input_ids: Tensor, prompt_len: int = 0,
                      mode: str = "recgen") -> Tensor:
    """Teacher-forced logits [B, T, V] (forward's convention: [:, i] predicts token i+1) as
    generation computes them after a prompt of `prompt_len` tokens.

    The prompt's complete meta-contexts are encoded; from then on the top stream advances
    meta-context by meta-context as `mode` does while generating: re-encoding the true
    tokens (hiergen, which equals the parallel forward pass) or feeding the decoder's own
    reconstructions (recgen: its exact likelihood, which the paper does not report).
    """
    check_token_ids(input_ids, model.config.vocab_size)
    B, T = input_ids.shape
    if not 0 <= prompt_len <= T:
        raise InputError(f"prompt_len must be in [0, {T}], got {prompt_len}")
    P = model.config.meta_len
    first = prompt_len // P * P  # first position decoded one meta-context at a time
    decoder = PhotonDecoder(model, B, T + P, mode)
    decoder.prefill(input_ids[:, :first], torch.full((B,), first))
    padded = F.pad(input_ids, (0, P))
    preds = [decoder.step(None, padded[:, g * P:(g + 1) * P])[2]
             for g in range(first // P, T // P + 1)]  # meta-contexts holding first..T
    preds = torch.cat(preds, dim=1)  # preds[:, p - first] predicts token p
    start = max(first, 1)
    # Predictions of tokens before `start` are the same in every mode: the parallel pass
    # over that prefix alone gives them (padding never changes a logit).
    head = model(input_ids[:, :start - 1]).logits if start > 1 else preds[:, :0]
    return torch.cat((head, preds[:, start - first:T + 1 - first]), dim=1)


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
