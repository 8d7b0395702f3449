"""Training FLOPs per token, counted from the architecture (matmuls and attention).

A multiply-add is 2 FLOPs; the backward pass costs twice the forward, so training is 3x the
forward. Attention adds 4·D FLOPs per (query, key) pair (scores and weighted sum). Each
module is charged for the positions it actually processes per token: a level-l context
encoder sees 1/(C_1…C_l) positions per token, a local decoder R + C_l - 1 positions per
level-l latent, so the baselines and PHOTON can be given the same compute honestly.
"""

from __future__ import annotations

from photon.model.config import ModelConfig, PhotonConfig


def head_flops(c: ModelConfig) -> int:
    """Forward FLOPs of the LM head for one token."""
    return 2 * c.d_model * c.vocab_size


def _layer_matmul_flops(c: ModelConfig, window: int = 0) -> int:
    """Forward FLOPs of one block's weight matmuls for one position (a window of 1 has no
    query and key projections)."""
    projections = 2 if window == 1 else 4
    return 2 * (projections * c.d_model * c.d_model + 3 * c.d_model * c.d_ff)


def _causal_attention_flops(d_model: int, n: int, window: int = 0) -> int:
    """Forward attention FLOPs of one layer over a causal sequence of n positions, in total;
    with a `window` each query sees at most that many keys, and a window of 1 computes no
    scores at all (the output is the position's own value)."""
    if window == 1:
        return 0
    if not window or window >= n:
        pairs = n * (n + 1) // 2
    else:
        pairs = window * (window + 1) // 2 + (n - window) * window
    return 4 * d_model * pairs


def forward_flops_per_token(c: ModelConfig, seq_len: int | None = None) -> float:
    """Forward FLOPs per token at training context `seq_len` (default: config.max_seq_len)."""
    T = seq_len or c.max_seq_len
    D, layer = c.d_model, _layer_matmul_flops(c)
    head = head_flops(c)
    if not isinstance(c, PhotonConfig):
        return c.n_layers * (layer + _causal_attention_flops(D, T, c.window) / T) + head
    total = head
    for level in range(1, c.n_levels + 1):
        per_token = 1 / c.tokens_per_position(level)  # level-l positions per token
        M = max(T // c.tokens_per_position(level), 1)
        chunk = c.chunk_sizes[level - 1]
        window = c.encoder_window_of(level)
        encoder = c.encoder_layers[level - 1] * (_layer_matmul_flops(c, window)
                                                 + _causal_attention_flops(D, M, window) / M)
        chunker = 2 * chunk * D * D if level > 1 else 0
        converter = 2 * D * c.n_cond * D
        local = c.n_cond + chunk - 1
        decoder = c.decoder_layers[level - 1] * (local * layer
                                                 + _causal_attention_flops(D, local))
        total += per_token * (encoder + chunker + converter + decoder)
    return total


def training_flops_per_token(c: ModelConfig, seq_len: int | None = None) -> int:
    """Forward plus backward FLOPs per training token."""
    return round(3 * forward_flops_per_token(c, seq_len))


def decode_flops_per_token(c: ModelConfig, mode: str = "hiergen", context: int = 0
                           ) -> tuple[float, float]:
    """(matmul FLOPs, attention FLOPs) of generating one token `context` tokens into a
    sequence, with the KV caches of decoding: every module is charged for the positions it
    runs per token, as in training (a local decoder R + C_l - 1 per latent, the LM head one),
    but an encoder's new position attends to the whole cache of its level (or its window),
    and RecGen runs no encoder below the top. Embedding lookups, norms and sampling are not
    counted."""
    D = c.d_model
    head = head_flops(c)
    if not isinstance(c, PhotonConfig):
        keys = min(context, c.window) if c.window else context
        return c.n_layers * _layer_matmul_flops(c) + head, c.n_layers * 4 * D * keys
    matmul, attention = float(head), 0.0
    for level in range(1, c.n_levels + 1):
        per_token = 1 / c.tokens_per_position(level)
        chunk, window = c.chunk_sizes[level - 1], c.encoder_window_of(level)
        if mode == "hiergen" or level == c.n_levels:  # RecGen encodes the top level only
            layers = c.encoder_layers[level - 1]
            keys = context // c.tokens_per_position(level)
            keys = 0 if window == 1 else min(keys, window) if window else keys
            matmul += per_token * layers * _layer_matmul_flops(c, window)
            attention += per_token * layers * 4 * D * keys
            if level > 1:
                matmul += per_token * 2 * chunk * D * D  # the chunker's projection
        local = c.n_cond + chunk - 1
        layers = c.decoder_layers[level - 1]
        matmul += per_token * (2 * D * c.n_cond * D + layers * local * _layer_matmul_flops(c))
        attention += per_token * layers * _causal_attention_flops(D, local)
    return matmul, attention
