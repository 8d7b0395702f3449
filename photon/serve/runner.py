"""The model step of the engine: a decoder whose cache rows are the slots, and the sampler
of every row. It knows nothing of requests' text or lifecycles: rows come in with their
prompts and sampling settings, a step yields every row's tokens, rows leave. `score` is the
teacher-forced pass that gives prompts' log-probabilities (echo)."""

from __future__ import annotations

import torch

from photon.inference.decoders import make_decoder
from photon.inference.prompts import pad_prompts
from photon.model.lm import Model
from photon.serve.sampling import BatchSampler, SamplingParams, chosen_logprobs

Logprobs = tuple  # (chosen, top ids or None, top values or None) of one row, as lists


def _as_lists(picked: tuple) -> tuple:
    """chosen_logprobs' tensors (or None) as Python lists."""
    return tuple(None if t is None else t.tolist() for t in picked)


class ModelRunner:
    """`slots` preallocated sequences of up to `max_len` tokens, decoded in `mode`."""

    def __init__(self, model: Model, mode: str, slots: int, max_len: int,
                 seed: int | None = None) -> None:
        self.model, self.mode, self.slots, self.max_len = model, mode, slots, max_len
        self.device = next(model.parameters()).device
        self.sampler = BatchSampler(self.device, seed)
        self.decoder = None
        self.reset()

    def reset(self) -> None:
        """Forget every row and rebuild the decoder (after a failed step its state may be
        inconsistent); the old caches are freed before the new ones are allocated."""
        self.decoder = None
        self.decoder = make_decoder(self.model, self.mode, self.slots, self.max_len)
        self.decoder.open_slots()
        self.row_sampling: list[tuple[SamplingParams, object]] = []
        self.sampler.set_rows([])

    @property
    def free_slots(self) -> int:
        return self.decoder.free_slots

    def admit(self, prompts: list[list[int]], copies: list[int],
              sampling: list[SamplingParams]) -> list[tuple[int, int]]:
        """Prefill prompts into free slots, prompt i into `copies[i]` rows sampled with
        `sampling[i]` (copy c of a seeded request draws from seed + c). Returns (prompt
        index, copy) for each new row, in row order."""
        ids, lengths = pad_prompts(prompts, self.device)
        order = self.decoder.admit(ids, lengths, copies)
        seen = [0] * len(prompts)
        new_rows = []
        for i in order:
            new_rows.append((i, seen[i]))
            self.row_sampling.append(
                (sampling[i], self.sampler.own_sampler(sampling[i], seen[i])))
            seen[i] += 1
        self.sampler.set_rows(self.row_sampling)
        return new_rows

    @torch.no_grad()
    def score(self, prompts: list[list[int]], top: int) -> list[Logprobs]:
        """Teacher-forced log-probabilities of every prompt's tokens after its first: one
        forward pass over the prompts, right-padded (a causal model's logits at real
        positions never see the padding). In every mode this is the forward pass: for a
        RecGen server, the likelihood of the prompt with the whole prompt as context (see
        `photon.serve.engine`). Per prompt: (chosen [T-1], top ids [T-1][top] or None, top
        values or None), as lists."""
        ids, lengths = pad_prompts(prompts, self.device)
        logits = self.model(ids).logits
        out = []
        for row, n in enumerate(lengths.tolist()):
            picked = chosen_logprobs(logits[row, :n - 1], ids[row, 1:n], top)
            out.append(_as_lists(picked))
        return out

    @torch.no_grad()
    def step(self, logprobs: dict[int, int]) -> tuple[list[list[int]], list[list[bool]],
                                                      dict[int, Logprobs], dict[int, str]]:
        """Decode one step of every row: (tokens, new, logprobs, failed) per row, where
        `logprobs` maps row -> (chosen, top ids, top values) for the rows asking for them
        (the argument maps those rows to how many alternatives they want) and `failed` maps
        the rows whose sampling failed to why: their tokens are not to be used."""
        self.sampler.failed = {}
        want = list(logprobs)
        keep = torch.tensor(want, device=self.device) if want else False
        tokens, new, logits = self.decoder.step(self.sampler, None, keep)  # keep_logits
        rows = {}
        if want:  # only these rows' logits were kept
            picked = chosen_logprobs(logits, tokens[keep], max(logprobs.values()))
            per_row = _as_lists(picked)
            rows = {r: tuple(None if t is None else t[i] for t in per_row)
                    for i, r in enumerate(want)}
        return tokens.tolist(), new.tolist(), rows, self.sampler.failed

    def release(self, rows: list[int]) -> list[int]:
        """Free these rows' slots at once; returns, for each remaining row, its old index."""
        order = self.decoder.release(rows)
        self.row_sampling = [self.row_sampling[o] for o in order]
        self.sampler.set_rows(self.row_sampling)
        return order

    def release_all(self) -> None:
        if self.decoder is not None and self.decoder.active:
            self.release(list(range(self.decoder.active)))
