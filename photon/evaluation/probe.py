"""Does a hierarchical model read its hierarchy? A context-use report (`photon probe`).

A PHOTON model predicts the tokens of meta-context g from the top encoder state of g-1 and
from the earlier tokens of their own level-1 chunk; the first token of each chunk sees no
token of its own. So a model that ignores its top stream predicts chunk-first tokens at the
unigram level, and its loss does not change when the top states are altered. The report:

- loss by position inside the meta-context, next to the unigram cross-entropy of the same
  tokens (unigram frequencies of the training split);
- the top-stream ablations: every top state zeroed (each meta-context then looks like the
  first of a document), and top states swapped between the sequences of a batch (each
  sequence gets another one's past). A model that uses the top stream only as a constant is
  hurt by zeroing but not by swapping; one that reads it is hurt by both;
- encoder-state variance across positions over the mean square, per level (near 0: the
  states have collapsed to one vector and carry nothing);
- for L >= 2, the loss under RecGen (top stream advanced by the decoder's reconstructions)
  next to HierGen's on the same tokens, also by position in the meta-context. RecGen's top
  stream never sees a token after the prompt (the reconstructions are decoded before the
  tokens they stand for), so its loss rises most where the model reads the newest real
  tokens through the top stream: the first token of a meta-context.

Only meta-contexts with a real top state (g >= 1) are counted: the first one of a window is
predicted from the start latent and is the same under every ablation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor

from photon.errors import InputError
from photon.inference.scoring import sequential_logits
from photon.model.lm import Model, PhotonLM, token_nll
from photon.progress import progress_bar


def unigram_logprobs(tokens: np.ndarray, vocab_size: int) -> Tensor:
    """log p(token) from counts over `tokens`, add-one smoothed."""
    counts = np.bincount(np.asarray(tokens, dtype=np.int64), minlength=vocab_size)[:vocab_size]
    counts = torch.from_numpy(counts).double() + 1
    return (counts / counts.sum()).log()


def swapped(states: list[Tensor]) -> list[Tensor]:
    """The top states of each sequence replaced by those of the next sequence of the batch."""
    return [*states[:-1], states[-1].roll(1, dims=0)]


def zeroed(states: list[Tensor]) -> list[Tensor]:
    """Every top state replaced by the zero start latent."""
    return [*states[:-1], torch.zeros_like(states[-1])]


def ablation_nll(model: PhotonLM, ids: Tensor, zero: bool = True) -> dict[str, Tensor]:
    """Per-token NLL [B, T-1] of `ids` as the model predicts it ("base"), with its top states
    zeroed ("zero", unless `zero` is False) and swapped between the sequences of the batch
    ("swap", B >= 2)."""
    states = model.encode_prefix(ids)
    out = {"base": token_nll(model.predict(ids, states).logits, ids)}
    if zero:
        out["zero"] = token_nll(model.predict(ids, zeroed(states)).logits, ids)
    if ids.shape[0] >= 2:
        out["swap"] = token_nll(model.predict(ids, swapped(states)).logits, ids)
    return out


def state_variance(states: list[Tensor]) -> list[float]:
    """Per level: variance across positions (mean over features) / mean square."""
    ratios = []
    for x in states:
        x = x.flatten(0, 1).double()
        ratios.append(float(x.var(0, unbiased=False).mean() / x.pow(2).mean().clamp_min(1e-30))
                      if len(x) > 1 else math.nan)
    return ratios


@dataclass
class ProbeReport:
    """Mean losses in nats over the tokens of meta-contexts g >= 1 of the probed windows."""

    meta_len: int
    chunk: int
    windows: int
    tokens: int
    by_position: dict[str, list[float]]  # base / zero / swap / unigram, one per position
    loss: float
    zero_delta: float
    swap_delta: float
    chunk_first: dict[str, float]  # base / zero / swap / unigram over chunk-first tokens
    state_variance: list[float]  # per level, bottom-up
    # hiergen / recgen losses by position over the scored half of each window (L >= 2)
    recgen_by_position: dict[str, list[float]] = field(default_factory=dict)

    @property
    def recgen(self) -> dict[str, float]:
        """HierGen and RecGen mean losses over the scored half (empty for L = 1)."""
        return {k: float(np.mean(v)) for k, v in self.recgen_by_position.items()}

    @property
    def reads_top_stream(self) -> bool:
        """Chunk-first tokens below the unigram level and clearly hurt by a swap."""
        cf = self.chunk_first
        return cf["base"] < cf["unigram"] - 0.1 and cf["swap"] - cf["base"] > 0.1

    def to_dict(self) -> dict:
        return {**asdict(self), "recgen": self.recgen, "reads_top_stream": self.reads_top_stream}

    def format(self) -> str:
        cf, P = self.chunk_first, self.meta_len
        lines = [f"{self.windows} windows, {self.tokens:,} scored tokens "
                 f"(meta-contexts g >= 1); losses in nats",
                 "position  loss    unigram  zeroed   swapped"]
        bp = self.by_position
        for p in range(P):
            mark = "  <- chunk-first" if p % self.chunk == 0 else ""
            lines.append(f"{p:>8}  {bp['base'][p]:.3f}   {bp['unigram'][p]:.3f}    "
                         f"{bp['zero'][p]:.3f}    {bp['swap'][p]:.3f}{mark}")
        lines += [
            f"mean loss {self.loss:.4f}; top states zeroed: {self.zero_delta:+.4f}, "
            f"swapped between sequences: {self.swap_delta:+.4f}",
            f"chunk-first tokens: {cf['base']:.3f} (unigram {cf['unigram']:.3f}, zeroed "
            f"{cf['zero']:.3f}, swapped {cf['swap']:.3f})",
            "encoder-state variance / mean square, level 1..L: "
            + ", ".join(f"{v:.3g}" for v in self.state_variance),
        ]
        if self.recgen:
            r = self.recgen
            lines.append(f"second half of each window: HierGen {r['hiergen']:.4f}, RecGen "
                         f"{r['recgen']:.4f} ({r['recgen'] / r['hiergen'] - 1:+.2%})")
            rp = self.recgen_by_position
            lines.append("RecGen - HierGen by position (nats): " + " ".join(
                f"{b - a:+.3f}" for a, b in zip(rp["hiergen"], rp["recgen"], strict=True)))
        verdict = "reads its top stream" if self.reads_top_stream else \
            "does NOT read its top stream (chunk-first tokens at the unigram level or " \
            "unaffected by a swap)"
        lines.append(f"verdict: the model {verdict}")
        return "\n".join(lines)


def _windows(tokens: np.ndarray, length: int, count: int) -> Tensor:
    n = min(count, len(tokens) // length)
    if n < 2:
        raise InputError(f"the text has {len(tokens)} tokens: the probe needs at least two "
                         f"windows of {length}")
    return torch.from_numpy(np.asarray(tokens[:n * length], dtype=np.int64)).view(n, length)


def _sum_by_position(losses: Tensor, start: int, P: int) -> Tensor:
    """Losses [B, T - 1] from prediction `start` on (a meta-context boundary), summed over
    sequences and meta-contexts by position in the meta-context: [P] in fp64 on the CPU."""
    return losses[:, start:].double().reshape(len(losses), -1, P).sum((0, 1)).cpu()


@torch.no_grad()
def probe(model: Model, tokens: np.ndarray, unigram: Tensor, windows: int = 32,
          seq_len: int | None = None, batch_size: int = 8, recgen: bool = True,
          progress: bool = False) -> ProbeReport:
    """Context-use report of a PHOTON model on `tokens` (cut into `windows` windows of
    `seq_len`, default the training context rounded down to whole meta-contexts);
    `unigram` is `unigram_logprobs` of the training split."""
    if not isinstance(model, PhotonLM):
        raise InputError("photon probe reads a hierarchy: this is a flat Transformer, which "
                         "has none (probe a PHOTON or Block Transformer checkpoint)")
    c = model.config
    P, C = c.meta_len, c.chunk_sizes[0]
    length = (seq_len or c.max_seq_len) // P * P
    if length < 2 * P:
        raise InputError(f"seq_len must hold at least two meta-contexts ({2 * P} tokens)")
    batch_size = max(batch_size, 2)  # a swap needs another sequence
    device = next(model.parameters()).device
    ids_all = _windows(tokens, length, windows)
    sums = {k: torch.zeros(P, dtype=torch.float64) for k in ("base", "zero", "swap", "unigram")}
    count = 0
    has_recgen = recgen and c.n_levels >= 2
    half = length // 2 // P * P  # RecGen takes over the top stream from here on
    rec = {k: torch.zeros(P, dtype=torch.float64) for k in ("hiergen", "recgen")}
    states_all: list[list[Tensor]] = []
    batches = [ids_all[i:i + batch_size] for i in range(0, len(ids_all), batch_size)]
    if len(batches) > 1 and len(batches[-1]) < 2:  # fold a lone last window into the batch
        batches[-2:] = [torch.cat(batches[-2:])]
    for ids in progress_bar(batches, desc="probe", unit="batch", show=progress):
        ids = ids.to(device)
        losses = ablation_nll(model, ids)
        losses["unigram"] = -unigram.to(device)[ids[:, 1:]]
        # Target position t = i + 1; keep meta-contexts g >= 1 and fold by position in meta.
        for key, value in losses.items():
            sums[key] += _sum_by_position(value, P - 1, P)
        count += len(ids) * (length // P - 1)
        states_all.append([s.cpu() for s in model.encode_prefix(ids)])
        if has_recgen:
            seq = sequential_logits(model, ids, half, "recgen")
            for key, value in (("recgen", token_nll(seq, ids)), ("hiergen", losses["base"])):
                rec[key] += _sum_by_position(value, half - 1, P)
    by_position = {k: (v / count).tolist() for k, v in sums.items()}
    first = {k: float(np.mean(v[::C])) for k, v in by_position.items()}
    mean = {k: float(np.mean(v)) for k, v in by_position.items()}
    levels = [torch.cat([s[level] for s in states_all]) for level in range(c.n_levels)]
    rec_count = len(ids_all) * (length - half) // P  # meta-contexts scored per position
    return ProbeReport(
        meta_len=P, chunk=C, windows=len(ids_all), tokens=count * P, by_position=by_position,
        loss=mean["base"], zero_delta=mean["zero"] - mean["base"],
        swap_delta=mean["swap"] - mean["base"], chunk_first=first,
        state_variance=state_variance(levels),
        recgen_by_position={k: (v / rec_count).tolist() for k, v in rec.items()}
        if has_recgen else {})


def plot_report(report: ProbeReport, path: str, title: str = "") -> None:
    """Loss by position in the meta-context: model, unigram, zeroed and swapped top stream."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bp, P = report.by_position, report.meta_len
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, style, name in (("unigram", ":", "unigram"), ("zero", "--", "top zeroed"),
                             ("swap", "-.", "top swapped"), ("base", "-", "model")):
        ax.plot(range(P), bp[key], style, marker="o", ms=3, label=name)
    for p in range(0, P, report.chunk):
        ax.axvline(p, color="0.9", zorder=0)
    ax.set_xlabel("position of the predicted token inside the meta-context")
    ax.set_ylabel("loss (nats)")
    ax.set_title(title or "context use")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
