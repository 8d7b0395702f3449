"""Passkey retrieval in natural text: a number stated once, asked for at the end.

A 5-digit key is stated once (`NEEDLE`) inside a held-out document, at a chosen depth of a
window of `length` tokens, which ends with `QUESTION`; the model must continue with the key.
Every trial is scored two ways, in the decoding mode asked for:
- greedy generation, exact match: the continuation's first number is the key;
- the key's negative log-likelihood, teacher-forced after the prompt, against the same prompt
  whose needle states another key (the control). The gain, control minus key NLL in nats, is
  what the model took from the needle: above zero it recalls something of the key even when
  it cannot yet reproduce it, which separates small models that all fail exact match.

The needle goes in at the sentence end (a token ending in '.', '!' or '?') nearest the depth, so
it reads as a sentence of its own. Trial t uses the t-th document long enough at
every depth, so depths differ only in where the needle is.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from photon.data.tokenizer import Tokenizer
from photon.errors import InputError
from photon.evaluation.perplexity import mode_logits
from photon.inference.generate import generate
from photon.inference.modes import check_mode
from photon.model.lm import Model, token_nll
from photon.progress import progress_bar

NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"
DEPTHS = (0.1, 0.5, 0.9)
ANSWER_ROOM = 8  # tokens after the prompt: the key's tokens and what greedy decoding may add


@dataclass
class Trial:
    """One prompt of `length - ANSWER_ROOM` tokens with the needle at `depth`, its control (the
    needle states `control_key`, of as many tokens) and the key's tokens."""

    depth: float
    key: str
    control_key: str
    prompt: list[int]
    control: list[int]
    answer: list[int]


def sentence_ends(tokenizer: Tokenizer) -> np.ndarray:
    """[vocab] bool: the tokens whose text ends a sentence."""
    return np.array([tokenizer.decode([t]).rstrip().endswith((".", "!", "?"))
                     for t in range(tokenizer.vocab_size)])


def insert_needle(body: Sequence[int], needle: Sequence[int], depth: float,
                  ends: np.ndarray) -> list[int]:
    """`body` with `needle` after the sentence end nearest `depth` of it (at the depth itself
    when no sentence ends in it)."""
    target = round(depth * len(body))
    cuts = np.flatnonzero(ends[np.asarray(body)]) + 1
    at = int(cuts[np.abs(cuts - target).argmin()]) if len(cuts) else target
    return [*body[:at], *needle, *body[at:]]


def make_trials(tokenizer: Tokenizer, documents: Iterable[Sequence[int]], length: int,
                depths: Sequence[float] = DEPTHS, trials: int = 20, seed: int = 0
                ) -> list[Trial]:
    """`trials` prompts per depth from the first `trials` documents that fill a window (token
    ids, the start-of-document token first), each with its own random key."""
    if not all(0 <= d <= 1 for d in depths):
        raise InputError(f"depths are fractions of the window in [0, 1], got {list(depths)}")
    rng = np.random.default_rng(seed)
    question, ends = tokenizer.encode(QUESTION), sentence_ends(tokenizer)
    texts = [list(d) for d, _ in zip(_long_enough(documents, length), range(trials),
                                     strict=False)]
    if len(texts) < trials:
        raise InputError(f"{trials} trials need {trials} documents of at least {length} "
                         f"tokens; the text has {len(texts)} (more text, or fewer trials)")
    out = []
    for depth in depths:
        for text in texts:
            key, control_key = _keys(tokenizer, rng)
            needle = tokenizer.encode(NEEDLE.format(key=key))
            body = text[:length - ANSWER_ROOM - len(needle) - len(question)]
            if len(body) < 1:
                raise InputError(f"a window of {length} tokens cannot hold the needle and "
                                 "the question")
            prompt = insert_needle(body, needle, depth, ends)
            control = insert_needle(body, tokenizer.encode(NEEDLE.format(key=control_key)),
                                    depth, ends)
            out.append(Trial(depth, key, control_key, prompt + question, control + question,
                             tokenizer.encode(" " + key)))
    return out


def _long_enough(documents: Iterable[Sequence[int]], length: int) -> Iterable[Sequence[int]]:
    return (d for d in documents if len(d) >= length)


def _keys(tokenizer: Tokenizer, rng: np.random.Generator) -> tuple[str, str]:
    """A key and a different control key whose needles have as many tokens."""
    key = str(rng.integers(10_000, 100_000))
    size = len(tokenizer.encode(NEEDLE.format(key=key)))
    for _ in range(1000):
        control = str(rng.integers(10_000, 100_000))
        if control != key and len(tokenizer.encode(NEEDLE.format(key=control))) == size:
            return key, control
    raise InputError("no control key tokenizes like the key")  # never seen with a real BPE


def first_number(text: str) -> str | None:
    """The digits a continuation starts with (after spaces), or None."""
    found = re.match(r"\s*(\d+)", text)
    return found.group(1) if found else None


@torch.no_grad()
def answer_nll(model: Model, prompts: list[list[int]], answers: list[list[int]],
               mode: str, pad: int) -> list[float]:
    """Each answer's NLL in nats (summed over its tokens), teacher-forced after its prompt
    (all prompts of one length) as `mode` predicts it."""
    prompt_len = len(prompts[0])
    rows = [p + a + [pad] * (ANSWER_ROOM - len(a)) for p, a in zip(prompts, answers,
                                                                     strict=True)]
    device = next(model.parameters()).device
    ids = torch.tensor(rows, device=device)
    nll = token_nll(mode_logits(model, ids, prompt_len, mode), ids).double().cpu()
    return [float(nll[b, prompt_len - 1:prompt_len - 1 + len(a)].sum())
            for b, a in enumerate(answers)]


def passkey_scores(model: Model, tokenizer: Tokenizer, trials: list[Trial], mode: str,
                   batch_size: int = 4, progress: bool = False) -> dict:
    """Exact match and NLL gain by depth (the module doc), with one greedy continuation per
    depth to read."""
    check_mode(model.config, mode)
    if len(trials[0].prompt) + ANSWER_ROOM > model.config.max_seq_len:
        raise InputError(f"prompts of {len(trials[0].prompt)} tokens and {ANSWER_ROOM} to "
                         f"answer exceed the model's context ({model.config.max_seq_len})")
    pad = tokenizer.eos_id or 0
    rows = []
    bar = progress_bar(total=len(trials), desc=f"passkey ({mode})", unit="trial",
                       show=progress)
    for i in range(0, len(trials), batch_size):
        batch = trials[i:i + batch_size]
        new = generate(model, [t.prompt for t in batch], ANSWER_ROOM, mode=mode)
        answers = [t.answer for t in batch]
        key_nll = answer_nll(model, [t.prompt for t in batch], answers, mode, pad)
        control_nll = answer_nll(model, [t.control for t in batch], answers, mode, pad)
        for t, tokens, k, c in zip(batch, new, key_nll, control_nll, strict=True):
            text = tokenizer.decode(tokens)
            rows.append({"depth": t.depth, "key": t.key, "continuation": text,
                         "exact": first_number(text) == t.key, "key_nll": k,
                         "control_nll": c})
        bar.update(len(batch))
    bar.close()
    return {"mode": mode, "length": len(trials[0].prompt) + ANSWER_ROOM,
            "depths": [_summary(depth, [r for r in rows if r["depth"] == depth])
                       for depth in dict.fromkeys(t.depth for t in trials)]}


def _summary(depth: float, rows: list[dict]) -> dict:
    gains = np.array([r["control_nll"] - r["key_nll"] for r in rows])
    return {"depth": depth, "trials": len(rows),
            "exact": sum(r["exact"] for r in rows) / len(rows),
            "key_nll": float(np.mean([r["key_nll"] for r in rows])),
            "control_nll": float(np.mean([r["control_nll"] for r in rows])),
            "gain": float(gains.mean()),
            "gain_se": float(gains.std(ddof=1) / math.sqrt(len(rows))) if len(rows) > 1
            else 0.0,
            "sample": {k: rows[0][k] for k in ("key", "continuation")}}
