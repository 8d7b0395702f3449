"""The decoders: prefill, then one step at a time, over preallocated caches.

`FlatDecoder` decodes the flat Transformer one token per step. `PhotonDecoder` decodes PHOTON
one meta-context (C_1…C_L tokens) per step, its token chunks one after another. A token
chunk depends only on its conditioning latent, so all chunks could decode at once, but then
a step holds every chunk's local window and logits per sequence (photon-small: 186 KB, a
third of its 557 KB RecGen cache; one chunk at a time: 55 KB), and at a protocol-sized batch
one chunk of every sequence is already a large matmul. Tokens already known (the end of a
prompt that does not fill its meta-context, or every token when scoring a text) are forced
in place of samples, which makes a partial prompt, a batch of prompts of different lengths
and teacher-forced scoring one code path. After each meta-context:
- HierGen re-encodes its tokens bottom-up, advancing the encoder caches (a level whose
  encoder reads only its own chunk, `encoder_window=1`, keeps none);
- RecGen feeds the decoder's own reconstruction X̂^(L-1) through the top chunker and takes
  one step of the top encoder; the lower encoders are used for the prompt only.

A step returns (tokens, new, logits) for every sequence; both decoders support continuous
batching through `photon.inference.slots`.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from photon.errors import ConfigError
from photon.inference.cache import KVCache, RingKVCache, global_caches
from photon.inference.modes import FLAT, check_mode
from photon.inference.sampling import Sampler
from photon.inference.slots import Slots
from photon.model.attention import check_option, choose_kernel
from photon.model.layers import Stack
from photon.model.lm import Model, PhotonLM


def _gather_positions(x: Tensor, start: Tensor, n: int) -> Tensor:
    """x[b, start[b] : start[b] + n] for every sequence b of x [B, N, D]."""
    index = (start.to(x.device)[:, None] + torch.arange(n, device=x.device))[..., None]
    return x.gather(1, index.expand(-1, -1, x.shape[-1]))


@dataclass(frozen=True)
class DecodeOptions:
    """How a decoder runs, beside its model: `static` caches (every step the same shapes,
    what `compile_for_decoding(static=True)` compiled the model for) and the `attention`
    kernel its global caches are read through ("auto": timed per cache, or one of
    `photon.model.attention.KERNELS`)."""

    static: bool = False
    attention: str = "auto"

    def __post_init__(self) -> None:
        check_option(self.attention)


# Models `compile_for_decoding` compiled for static shapes: their decoders must be given the
# options it returned (kept here, beside the model, so the model carries no decoding state).
_COMPILED_STATIC: weakref.WeakSet[Model] = weakref.WeakSet()


def _options_for(model: Model, options: DecodeOptions | None) -> DecodeOptions:
    """`options`, or the defaults where none were given, which a model compiled for static
    shapes cannot take."""
    if options is not None:
        return options
    if model in _COMPILED_STATIC:
        raise ConfigError("this model was compiled for static shapes: pass the DecodeOptions "
                          "compile_for_decoding returned")
    return DecodeOptions()


def attention_kernels(model: Model, mode: str, capacity: int,
                      options: DecodeOptions | None = None) -> list[str | None]:
    """The kernel each global cache (`global_caches`) of the decoder `make_decoder` builds
    reads through (`choose_kernel`; None: `attend`'s own rule). Under "auto" the first call
    for a shape times it: calling this before a memory profile keeps the timing out of it."""
    options = _options_for(model, options)
    c, p = model.config, next(model.parameters())
    return [choose_kernel(options.attention, c.n_heads, c.head_dim, shape.mean_keys,
                          shape.queries, p.device, p.dtype, options.static)
            for shape in global_caches(c, mode, capacity) if shape is not None]


def _caches(model: Model, mode: str, batch: int, capacity: int, options: DecodeOptions
            ) -> list[KVCache | None]:
    """The global caches of decoding `batch` sequences of up to `capacity` tokens in `mode`
    (`global_caches`), each read through its kernel (`attention_kernels`)."""
    c, p = model.config, next(model.parameters())
    kernels = iter(attention_kernels(model, mode, capacity, options))
    caches: list[KVCache | None] = []
    for shape in global_caches(c, mode, capacity):
        if shape is None:
            caches.append(None)
        elif shape.window:
            if options.static:
                raise ConfigError("a sliding window's ring cache decodes eagerly: compile "
                                  "it with compile_for_decoding(model, static=False)")
            caches.append(RingKVCache(shape.n_layers, batch, c.n_heads, c.head_dim,
                                      shape.capacity, p.device, p.dtype, next(kernels),
                                      shape.queries))
        else:
            caches.append(KVCache(shape.n_layers, batch, c.n_heads, c.head_dim, shape.capacity,
                                  p.device, p.dtype, options.static, next(kernels),
                                  shape.queries))
    return caches


class FlatDecoder(Slots):
    """KV-cached decoding of the flat Transformer: one token per step."""

    ROW_STATE = ("next_logits", "pending")  # per-sequence state (photon.inference.slots)

    def __init__(self, model: Model, batch: int, capacity: int,
                 options: DecodeOptions | None = None) -> None:
        self.model = model
        (self.cache,) = _caches(model, FLAT, batch, capacity, _options_for(model, options))
        self.tokens_per_step = 1

    @property
    def cache_bytes(self) -> int:
        return self.cache.nbytes

    @property
    def kernels(self) -> list[str | None]:
        """The attention kernel of each global cache (None: `attend`'s own rule)."""
        return [self.cache.kernel]

    def _prefill(self, ids: Tensor, lengths: Tensor) -> None:
        hidden = self.model.hidden(ids, self.cache, advance=lengths)
        self.next_logits = self.model.lm_head(_gather_positions(hidden, lengths - 1, 1))
        self.pending: Tensor | None = None

    def step(self, sampler: Sampler | None, forced: Tensor | None = None,
             keep_logits: bool | Tensor = True) -> tuple[Tensor, Tensor, Tensor | None]:
        """Next token of every sequence: (tokens [B, 1], new [B, 1], logits [B', 1, V]);
        `keep_logits` as `PhotonDecoder.step`."""
        if self.pending is not None:
            self._feed_pending()
        logits = self.next_logits
        tokens = sampler(logits) if forced is None else forced
        self.pending = tokens
        if keep_logits is not True:
            logits = None if keep_logits is False else logits[keep_logits]
        return tokens, torch.ones_like(tokens, dtype=torch.bool), logits

    def flush(self) -> None:
        """Feed the last step's tokens into the cache now instead of at the next step."""
        if self.pending is not None:
            self._feed_pending()
            self.pending = None

    def _feed_pending(self) -> None:
        if self.cache.static:  # a compiled step does not check the room itself
            self.cache.check_room(1)
        self.next_logits = self.model.lm_head(self.model.hidden(self.pending, self.cache))

    def _slot_caches(self) -> list[KVCache | None]:
        return [self.cache]

    def _use_caches(self, caches: list[KVCache | None]) -> None:
        (self.cache,) = caches


class _StepOutput:
    """What a PHOTON step collects, chunk after chunk: the tokens, and the logits `keep`
    asks for (every sequence's, the rows a tensor lists, or none) written into one buffer
    [B', P, V] as each position is decoded; the others are freed once their token is
    chosen."""

    def __init__(self, keep: bool | Tensor, shape: torch.Size, head_weight: Tensor) -> None:
        B, P = shape
        self.tokens: list[Tensor] = []
        self.keep = keep
        rows = B if keep is True else 0 if keep is False else len(keep)
        self.logits = None if keep is False else head_weight.new_empty(
            rows, P, head_weight.shape[0])

    @property
    def n_tokens(self) -> int:
        """Positions of the meta-context decoded so far."""
        return sum(t.shape[1] for t in self.tokens)

    def keep_logits(self, position: int, logits: Tensor) -> None:
        """Keep the logits [B, V] of `position` where they are asked for."""
        if self.logits is not None:
            self.logits[:, position] = logits if self.keep is True else logits[self.keep]


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

    def __init__(self, model: PhotonLM, batch: int, capacity: int, mode: str,
                 options: DecodeOptions | None = None) -> None:
        c = model.config
        check_mode(c, mode)
        self.model, self.mode, self.P = model, mode, c.meta_len
        self.tokens_per_step = self.P
        self.chunkwise = c.latent_teacher_forcing and mode == "hiergen" and c.n_levels > 1
        self.cond = self.recons = self.carries = self.top_cond = self.next_top = None
        self.caches = _caches(model, mode, batch, capacity, _options_for(model, options))

    @property
    def cache_bytes(self) -> int:
        return sum(cache.nbytes for cache in self.caches if cache is not None)

    @property
    def kernels(self) -> list[str | None]:
        """The attention kernel of each global cache (None: `attend`'s own rule)."""
        return [cache.kernel for cache in self.caches if cache is not None]

    def _encode(self, ids: Tensor, advance: Tensor | None = None) -> Tensor:
        """Encode whole meta-contexts into the caches; returns the top states."""
        x = self.model.enc_embed(ids)
        for level, cache in enumerate(self.caches, start=1):
            n = None if advance is None else advance * self.model.config.positions_per_meta(level)
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
            n = c.positions_per_meta(1)
            cond = _gather_positions(cond, start * n, n)
        self.recons, self.cond = recons, cond
        if c.variant == "A":
            self.carries = [r[:, -1:] for r in recons]

    def _prefill(self, ids: Tensor, lengths: Tensor) -> None:
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

    def _check_room(self) -> None:
        """Room in every static cache for one more meta-context, checked on the host: a
        compiled step does not check it itself."""
        for level, cache in enumerate(self.caches, start=1):
            if cache is not None and cache.static:
                cache.check_room(self.model.config.positions_per_meta(level))

    def _advance(self, tokens: Tensor) -> None:
        """Move the top stream past the meta-context just decoded."""
        if self.chunkwise:
            top, self.next_top = self.next_top, None  # encoded chunk by chunk in step()
        else:
            self._check_room()
            top = self._encode(tokens) if self.mode == "hiergen" else \
                self.model.encode_level(self.model.config.n_levels, self.recons[0],
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

    def _token_chunk(self, cond: Tensor, known: Tensor, forced: Tensor, sampler: Sampler | None,
                     out: _StepOutput) -> Tensor:
        """Decode one token chunk per sequence from its conditioning latent cond [B, 1, D]
        into `out`; known/forced [B, C_1]."""
        start = out.n_tokens

        def choose(j: int, logits: Tensor) -> Tensor:
            out.keep_logits(start + j, logits)
            if sampler is None:
                return forced[:, j]
            return torch.where(known[:, j], forced[:, j], sampler(logits))

        out.tokens.append(self.model.decode_token_chunk(cond, choose))
        return out.tokens[-1]

    def _chunk(self, level: int, cond: Tensor, known: Tensor, forced: Tensor,
               sampler: Sampler | None, out: _StepOutput) -> Tensor:
        """Decode one level-`level` chunk of every sequence from its latent cond [B, 1, D]
        (level 1: C_1 tokens, into `out`), encode it, and return its encoder state X^(level)
        [B, 1, D]; known/forced [B, tokens of the chunk]."""
        m = self.model
        if level == 1:
            x = m.enc_embed(self._token_chunk(cond, known, forced, sampler, out))
        else:
            span = known.shape[1] // m.config.chunk_sizes[level - 1]
            states: list[Tensor] = []

            def feed(j: int, latent: Tensor) -> Tensor:
                """Decode and encode the chunk below latent j: the next input."""
                part = slice(j * span, (j + 1) * span)
                states.append(self._chunk(level - 1, latent, known[:, part], forced[:, part],
                                          sampler, out))
                return states[-1]

            m.decode_chunk(level, cond, feed)
            x = torch.cat(states, dim=1)
        return m.encode_level(level, x, self.caches[level - 1])

    def step(self, sampler: Sampler | None, forced: Tensor | None = None,
             keep_logits: bool | Tensor = True) -> tuple[Tensor, Tensor, Tensor | None]:
        """Decode one meta-context: (tokens [B, P], new [B, P], logits [B', P, V]).

        The prompt's tokens are forced where the meta-context overlaps it; `forced` [B, P]
        forces every token instead (teacher forcing, for scoring). `keep_logits`: the logits
        of every sequence (True), of the rows a tensor lists, or none (False: None is
        returned, and no position's logits outlive the choice of its tokens).
        """
        if self.chunkwise:  # this step encodes its meta-context as it decodes it
            self._check_room()
        if self.pending is not None:
            self._advance(self.pending)
        known, forced = self._known(forced)
        out = _StepOutput(keep_logits, known.shape, self.model.lm_head.weight)
        if self.chunkwise:
            self.next_top = self._chunk(self.model.config.n_levels, self.top_cond, known,
                                        forced, sampler, out)
        else:
            C = self.model.config.chunk_sizes[0]
            for s in range(self.cond.shape[1]):
                part = slice(s * C, (s + 1) * C)
                self._token_chunk(self.cond[:, s:s + 1], known[:, part], forced[:, part],
                                  sampler, out)
        self.pending = torch.cat(out.tokens, dim=1)
        return self.pending, ~known, out.logits

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


def compile_for_decoding(model: Model, static: bool = True, mode: str | None = None,
                         backend: str = "inductor") -> DecodeOptions:
    """`torch.compile` every Transformer stack of `model` for decoding; returns the options
    its decoders must be built with (`make_decoder(..., options=...)`).

    With `static`, the decoders keep static caches (`KVCache`): every step has the same
    shapes, so each stack compiles once per input shape and never again, and
    `mode="reduce-overhead"` can capture it as a CUDA graph. Without, shapes are dynamic
    (attention reads only the filled part of a cache): the faster on a CPU, where there are
    no kernel launches to save."""
    # Every stack, position of a local window and batch size is a shape of its own (the
    # benchmark alone runs several batch sizes): room for them.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
    for module in model.modules():
        if isinstance(module, Stack):
            module.compile(dynamic=not static, mode=mode, backend=backend)
    if static:
        # Each shape its own graph: a dimension made symbolic after it changed would turn
        # `T > 1` in attention into a symbolic bool, which SDPA refuses (a graph break).
        torch._dynamo.config.automatic_dynamic_shapes = False
        _COMPILED_STATIC.add(model)
    return DecodeOptions(static=static)


def make_decoder(model: Model, mode: str, batch: int, capacity: int,
                 options: DecodeOptions | None = None) -> FlatDecoder | PhotonDecoder:
    """The decoder of `model` in `mode` (checked), with caches for `batch` sequences of up
    to `capacity` tokens, run as `options` say (default: eager, dynamic caches, each global
    cache read through its timed kernel; a model compiled for static shapes needs the
    options `compile_for_decoding` returned)."""
    check_mode(model.config, mode)
    options = _options_for(model, options)
    if isinstance(model, PhotonLM):
        return PhotonDecoder(model, batch, capacity, mode, options)
    return FlatDecoder(model, batch, capacity, options)
