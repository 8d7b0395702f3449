"""The models: `PhotonLM` (any number of levels; one level is the Block Transformer) and the
flat `TransformerLM` baseline, built from the blocks of `photon.model.layers`.

Both are called as `model(input_ids, labels=None)` and return logits [B, T, V] where
`logits[:, i]` is the distribution of token i+1 given tokens 0..i, so one evaluation code
serves every model.

PHOTON in brief (docs/PHOTON.md §3). Encoder, bottom-up: level 1 embeds tokens at width D/C_1 and
concatenates C_1 of them; level l >= 2 concatenates C_l level-(l-1) states, normalises and
projects them to D; each level runs a causal context encoder over its stream. Decoder,
top-down: the top stream is shifted by one position (a chunk only sees coarser states of
earlier chunks), a converter turns each latent into R conditioning vectors, and a local
decoder rebuilds the C_l finer positions under it, inside a window of at most R + C_l.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from photon.errors import InputError
from photon.model.config import ModelConfig, PhotonConfig, TransformerConfig, get_preset
from photon.model.layers import LocalKVCache, RMSNorm, Stack, StreamCache


@dataclass
class ModelOutput:
    logits: Tensor
    loss: Tensor | None = None
    losses: dict[str, Tensor] = field(default_factory=dict)


def check_token_ids(input_ids: Tensor, vocab_size: int) -> None:
    """Raise a clear error for ids outside [0, vocab_size) instead of an opaque index error."""
    if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab_size):
        bad = input_ids[(input_ids < 0) | (input_ids >= vocab_size)][0].item()
        raise InputError(f"token id {bad} is outside the vocabulary [0, {vocab_size})")


def token_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """Next-token negative log-likelihood of every position, [B, T-1] nats: logits[:, i] is
    scored against labels[:, i + 1]; a label of -100 scores 0 (ignored)."""
    B, T, V = logits.shape
    # Rows of V contiguous logits: a softmax over a strided class dimension ([B, V, T]) is
    # several times slower on a CPU (a sixth of a training step at 2,048 tokens).
    nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, V), labels[:, 1:].reshape(-1),
                          ignore_index=-100, reduction="none")
    return nll.view(B, T - 1)


def token_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean `token_nll` over the positions whose label is not ignored: the training loss."""
    scored = (labels[:, 1:] != -100).sum().clamp(min=1)
    return token_nll(logits, labels).sum() / scored


class GenerationMixin:
    """`model.generate(...)`: see `photon.inference.generate.generate`."""

    def generate(self, prompts, max_new_tokens: int, mode: str = "hiergen", **kwargs):
        """New token-id lists for each prompt; arguments as `photon.inference.generate`."""
        from photon.inference.generate import generate

        return generate(self, prompts, max_new_tokens, mode=mode, **kwargs)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)


class TransformerLM(GenerationMixin, nn.Module):
    """Flat LLaMA-style decoder-only Transformer: the 'vanilla' baseline."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        c = self.config = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.stack = Stack(c.n_layers, c.d_model, c.n_heads, c.d_ff, c.rope_base, c.window)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.apply(_init_weights)
        if c.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def hidden(self, input_ids: Tensor, cache: StreamCache | None = None,
               advance: int | Tensor | None = None) -> Tensor:
        """Final hidden states of every input position, continuing `cache` if given."""
        return self.stack(self.embed(input_ids), cache, advance)

    def forward(self, input_ids: Tensor, labels: Tensor | None = None) -> ModelOutput:
        check_token_ids(input_ids, self.config.vocab_size)
        logits = self.lm_head(self.hidden(input_ids))
        if labels is None:
            return ModelOutput(logits)
        loss = token_loss(logits, labels)
        return ModelOutput(logits, loss, {"token": loss})


class ChunkProjection(nn.Module):
    """Level l >= 2 chunker: concatenated C_l states -> RMSNorm -> Linear(C_l*D -> D)."""

    def __init__(self, chunk: int, d_model: int) -> None:
        super().__init__()
        self.norm = RMSNorm(chunk * d_model)
        self.proj = nn.Linear(chunk * d_model, d_model, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.norm(x))


def chunks_of(x: Tensor, n: int, C: int) -> Tensor:
    """Positions 0..n*C-1 of a stream x [B, M, W] as n chunks per sequence, [B*n, C, W];
    positions past M (which no prediction reads) are zeros."""
    x = F.pad(x, (0, 0, 0, max(n * C - x.shape[1], 0)))
    return x[:, :n * C].reshape(-1, C, x.shape[-1])


def shift_right(x: Tensor, first: Tensor | None = None) -> Tensor:
    """Prepend `first` (default: the zero start latent) and drop the last position, so
    chunk g is conditioned on position g-1 only."""
    if first is None:
        return F.pad(x, (0, 0, 1, 0))[:, :-1]
    return torch.cat((first, x[:, :-1]), dim=1)


class PhotonLM(GenerationMixin, nn.Module):
    """PHOTON with L = len(config.chunk_sizes) levels (L = 1: the Block Transformer)."""

    def __init__(self, config: PhotonConfig) -> None:
        super().__init__()
        c = self.config = config
        D, L = c.d_model, c.n_levels

        def stack(n: int, window: int = 0) -> Stack:
            return Stack(n, D, c.n_heads, c.d_ff, c.rope_base, window)

        self.enc_embed = nn.Embedding(c.vocab_size, D // c.chunk_sizes[0])
        self.chunk_projs = nn.ModuleList(ChunkProjection(c.chunk_sizes[i], D) for i in range(1, L))
        self.encoders = nn.ModuleList(stack(n, c.encoder_window_of(level))
                                      for level, n in enumerate(c.encoder_layers, start=1))
        self.converters = nn.ModuleList(nn.Linear(D, c.n_cond * D) for _ in range(L))
        self.decoders = nn.ModuleList(stack(n) for n in c.decoder_layers)
        self.dec_embed = nn.Embedding(c.vocab_size, D)
        self.lm_head = nn.Linear(D, c.vocab_size, bias=False)
        self.apply(_init_weights)
        for conv in self.converters:
            # Its bias is the first chunk's whole conditioning (the start latent is zero):
            # keep it away from zero so the local decoder's first RMSNorm is well defined.
            nn.init.normal_(conv.bias, std=0.02)
        if c.tie_embeddings:
            self.lm_head.weight = self.dec_embed.weight

    # --- encoder -----------------------------------------------------------------------------

    def chunk(self, level: int, x: Tensor) -> Tensor:
        """A^(l): group C_l consecutive positions of the level-(l-1) stream into one vector."""
        B, M, W = x.shape
        a = x.reshape(B, M // self.config.chunk_sizes[level - 1], -1)
        return a if level == 1 else self.chunk_projs[level - 2](a)

    def encode_level(self, level: int, x: Tensor, cache: StreamCache | None = None,
                     advance: int | Tensor | None = None) -> Tensor:
        """X^(l) from the level-(l-1) stream x (token embeddings for level 1)."""
        return self.encoders[level - 1](self.chunk(level, x), cache, advance)

    def encode(self, input_ids: Tensor) -> list[Tensor]:
        """Encoder states X^(1..L) of every complete chunk of each level (level l encodes
        T // (C_1…C_l) positions); a level with no complete chunk is empty ([B, 0, D])."""
        states, x = [], self.enc_embed(input_ids)
        for level in range(1, self.config.n_levels + 1):
            C = self.config.chunk_sizes[level - 1]
            if x.shape[1] >= C:
                x = self.encode_level(level, x[:, :x.shape[1] // C * C])
            else:
                x = x.new_zeros(x.shape[0], 0, self.config.d_model)
            states.append(x)
        return states

    # --- decoder -----------------------------------------------------------------------------

    def conditioning(self, level: int, latents: Tensor) -> Tensor:
        """Converter U^(l): latents [B, N, D] -> R conditioning vectors each, [B*N, R, D]."""
        B, N, D = latents.shape
        return self.converters[level - 1](latents).view(B * N, self.config.n_cond, D)

    def decode_chunk(self, level: int, cond: Tensor,
                     next_input: Callable[[int, Tensor], Tensor]) -> list[Tensor]:
        """Local decoder `level` over every chunk at once, one position at a time: the
        chunk's R conditioning vectors (from its latent, cond [B, N, D]) come first, then
        output j (hidden state [B*N, 1, D]) is turned into the input of position j + 1 by
        `next_input(j, output)`: the output itself, a token embedding of what it sampled,
        or an encoder state. The window cache holds at most R + C_l entries. Returns the
        C_l outputs; `next_input` is called for the last one too (its result is unused)."""
        x = self.conditioning(level, cond)
        cache = LocalKVCache(self.config.n_cond + self.config.chunk_sizes[level - 1])
        outputs = []
        for j in range(self.config.chunk_sizes[level - 1]):
            h = self.decoders[level - 1](x, cache)[:, -1:]
            outputs.append(h)
            x = next_input(j, h)
        return outputs

    def decode_latents(self, level: int, cond: Tensor, teacher: Tensor | None = None,
                       teacher_weight: float = 0.0) -> Tensor:
        """X̂^(l-1) [B, N*C_l, D] from the (already shifted) level-l conditioning [B, N, D].

        The local decoder feeds back its own outputs (`decode_chunk`). With `teacher` (the
        encoder states X^(l-1) of the same positions) each next input is teacher_weight * X
        + (1 - teacher_weight) * own output: the training curriculum that moves from teacher
        forcing to this form.
        """
        B, N, D = cond.shape
        C = self.config.chunk_sizes[level - 1]
        if teacher is None:
            feed = lambda j, h: h
        else:
            teacher = chunks_of(teacher, N, C)
            feed = lambda j, h: torch.lerp(h, teacher[:, j:j + 1].to(h.dtype), teacher_weight)
        return torch.cat(self.decode_chunk(level, cond, feed), dim=1).view(B, N * C, D)

    def decode_token_chunk(self, cond: Tensor, choose: Callable[[int, Tensor], Tensor]
                           ) -> Tensor:
        """The token decoder over one chunk per sequence, one token at a time, from its
        conditioning latent cond [B, 1, D]: `choose(j, logits [B, V])` picks token j [B]
        (sampled, or forced where it is known), which the next position reads; the logits
        are freed once chosen unless `choose` keeps them. Returns the tokens [B, C_1]."""
        tokens = []

        def feed(j: int, h: Tensor) -> Tensor:
            tokens.append(choose(j, self.lm_head(h[:, 0])))
            return self.dec_embed(tokens[-1][:, None])

        self.decode_chunk(1, cond, feed)
        return torch.stack(tokens, dim=1)

    def decode_forced(self, level: int, cond: Tensor, inputs: Tensor) -> Tensor:
        """Local decoder `level` teacher-forced, every chunk at once: it reads the R
        conditioning vectors of each chunk's latent (cond [B, N, D]), then the inputs of the
        chunk's earlier positions (`inputs` [B, >= N*C - 1, W]: token embeddings at level 1,
        encoder states X^(l-1) above). Returns the output of every position, [B, N*C, D]."""
        B, N, D = cond.shape
        R, C = self.config.n_cond, self.config.chunk_sizes[level - 1]
        u = self.conditioning(level, cond)
        y = chunks_of(inputs, N, C)[:, :C - 1]
        h = self.decoders[level - 1](torch.cat((u, y.to(u.dtype)), dim=1))[:, R - 1:]
        return h.reshape(B, N * C, D)

    def decode_top_down(self, top_cond: Tensor, carries: list[Tensor] | None = None,
                        states: list[Tensor] | None = None, teacher_weight: float | None = None
                        ) -> tuple[list[Tensor], Tensor]:
        """Top-down pass from the (already shifted) top conditioning [B, N, D].

        Returns the reconstructions X̂^(L-1), …, X̂^(1) and the conditioning latent of every
        token chunk. Under variant A every level shifts by one position; `carries` are the
        latents just before this span (one per level, top-down, [B, 1, D]), which decoding
        one meta-context at a time passes on; None means the start of the sequence.

        The level >= 2 decoders read the encoder states of the earlier positions of their
        chunk (`states`, X^(1..L)) with weight `teacher_weight` and their own outputs with the
        rest; by default 1 with `latent_teacher_forcing`, else 0 (the paper's form). Without
        `states` (RecGen, which has no lower encoder states) they read their own outputs.
        """
        if teacher_weight is None:
            teacher_weight = 1.0 if self.config.latent_teacher_forcing else 0.0
        if states is None:
            teacher_weight = 0.0
        cond, recons = top_cond, []
        for i, level in enumerate(range(self.config.n_levels, 1, -1)):
            if teacher_weight == 1.0:  # every input known: all positions in one pass
                latents = self.decode_forced(level, cond, states[level - 2])
            else:
                teacher = states[level - 2] if teacher_weight > 0 else None
                latents = self.decode_latents(level, cond, teacher, teacher_weight)
            recons.append(latents)
            if self.config.variant == "A":
                cond = shift_right(latents, None if carries is None else carries[i])
            else:
                cond = latents
        return recons, cond

    def decode_tokens(self, cond: Tensor, input_ids: Tensor) -> Tensor:
        """Teacher-forced token decoder: hidden states [B, N*C_1, D] predicting each token."""
        return self.decode_forced(1, cond, self.dec_embed(input_ids))

    @staticmethod
    def reconstruction_loss(recons: list[Tensor], states: list[Tensor]) -> Tensor:
        """L_rec: mean cosine distance of X̂^(l) to X^(l), over the positions both cover.

        `recons` is top-down (X̂^(L-1) … X̂^(1)), `states` bottom-up (X^(1) … X^(L)).
        """
        terms = []
        for recon, target in zip(recons, reversed(states[:-1]), strict=False):
            n = target.shape[1]
            if n:
                cos = F.cosine_similarity(recon[:, :n].float(), target.float(), dim=-1)
                terms.append((1 - cos).mean())
        return torch.stack(terms).mean() if terms else recons[0].new_zeros((), dtype=torch.float)

    def encode_prefix(self, input_ids: Tensor) -> list[Tensor]:
        """Encoder states of `input_ids` [B, T] that predictions may read: the top level over
        complete meta-contexts only (token i is predicted from the top state of the
        meta-context before its own, so nothing after the input is ever read), lower levels
        over their complete chunks (read by latent teacher forcing and L_rec)."""
        T = input_ids.shape[1] // self.config.chunk_sizes[0] * self.config.chunk_sizes[0]
        return self.encode(input_ids[:, :T])

    def predict(self, input_ids: Tensor, states: list[Tensor], labels: Tensor | None = None,
                teacher_weight: float | None = None) -> ModelOutput:
        """Logits (and losses) of `input_ids` given encoder states of its complete
        meta-contexts; `forward` is `predict(ids, encode_prefix(ids))`. Passing altered
        states (zeroed, or swapped between sequences) measures what the top stream carries.
        `teacher_weight`: see `decode_top_down` (training curricula only).
        """
        c = self.config
        T = input_ids.shape[1]
        top_cond = F.pad(states[-1], (0, 0, 1, 0))  # zero start latent; metas 0..complete
        recons, cond = self.decode_top_down(top_cond, states=states,
                                            teacher_weight=teacher_weight)
        padded = F.pad(input_ids, (0, top_cond.shape[1] * c.meta_len - T))
        hidden = self.decode_tokens(cond, padded)
        logits = self.lm_head(hidden[:, 1:T + 1])  # hidden[:, i] predicts token i
        if labels is None:
            return ModelOutput(logits)
        tok = token_loss(logits, labels)
        if not recons or not states[-1].shape[1]:
            rec = tok.new_zeros(())
        else:
            targets = [s.detach() for s in states] if c.rec_detach else states
            rec = self.reconstruction_loss(recons, targets)
        loss = tok + c.rec_alpha * rec if c.rec_alpha else tok
        return ModelOutput(logits, loss, {"token": tok, "rec": rec})

    def forward(self, input_ids: Tensor, labels: Tensor | None = None,
                teacher_weight: float | None = None) -> ModelOutput:
        check_token_ids(input_ids, self.config.vocab_size)
        return self.predict(input_ids, self.encode_prefix(input_ids), labels, teacher_weight)


Model = PhotonLM | TransformerLM


def build_model(name_or_config: str | ModelConfig, device: torch.device | str | None = None,
                **overrides) -> Model:
    """A freshly initialised model from a preset name or a config; `overrides` change fields
    of the config (e.g. `vocab_size=256`)."""
    config = get_preset(name_or_config) if isinstance(name_or_config, str) else name_or_config
    if overrides:
        config = config.replace(**overrides)
    cls = PhotonLM if isinstance(config, PhotonConfig) else TransformerLM
    with torch.device(device or "cpu"):
        return cls(config)


def count_parameters(config: ModelConfig) -> tuple[int, dict[str, int]]:
    """Total parameters and parameters per module, without allocating (meta device)."""
    model = build_model(config, device="meta")
    modules: dict[str, int] = {}
    for name, p in model.named_parameters():  # tied weights are listed once
        parts = name.split(".")
        key = parts[0]
        if parts[1].isdigit():  # per-level module lists: name the level (1-based)
            key += f".level{int(parts[1]) + (2 if key == 'chunk_projs' else 1)}"
        modules[key] = modules.get(key, 0) + p.numel()
    return sum(modules.values()), modules
