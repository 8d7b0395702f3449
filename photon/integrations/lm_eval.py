"""photon models in EleutherAI's lm-evaluation-harness, registered as the model `photon`.

The harness looks models up by name in its registry and has no plugin entry point, so the
name exists once this module is imported. `photon lm-eval ...` imports it and runs the
harness's own command line with every flag passed through; from Python:

    import lm_eval
    import photon.integrations.lm_eval  # registers "photon"

    lm_eval.simple_evaluate(model="photon", model_args="pretrained=runs/photon-small",
                            tasks=["hellaswag"])

What the three request types compute (flat, Block Transformer and PHOTON checkpoints alike):
- `loglikelihood(context, continuation)`: log p(continuation | context) from the teacher-forced
  logits of the concatenation (its last `window + 1` tokens), exactly what photon's forward
  pass gives for that one sequence; batches are right-padded, which a causal model never
  sees. With `mode=recgen` the logits are RecGen's sequential likelihood with the context
  as the prompt (`sequential_logits`).
- `loglikelihood_rolling(text)`: `photon eval`'s number for that text, from its own code
  (`evaluate_text`): the same end-of-text start token, windows, stride and mode.
- `generate_until(context, {until, max_gen_toks, ...})`: photon's `generate_text`, which
  stops each sequence at the first stop string (and at end of text) and cuts it off.
"""

from __future__ import annotations

import logging
import sys
from collections import defaultdict
from collections.abc import Iterator, Sequence

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from photon.checkpoint import load_model
from photon.device import resolve_device
from photon.errors import InputError
from photon.evaluation.perplexity import evaluate_text, mode_logits
from photon.inference.generate import generate_text
from photon.inference.modes import check_mode
from photon.inference.prompts import pad_prompts
from photon.inference.sampling import greedy
from photon.model.lm import PhotonLM, token_nll
from photon.progress import progress_bar

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
NEWLINE = 10  # the start token of raw-byte models, which have no end-of-text token


def _device(requested: str | None) -> torch.device:
    """The harness's CLI asks for cuda:0 by default; fall back to the CPU without a GPU."""
    if requested and requested.startswith("cuda") and not torch.cuda.is_available():
        log.warning("photon: %s requested but no GPU is available; using the CPU", requested)
        return torch.device("cpu")
    return resolve_device(requested)


def _batches(items: list, size: int, key) -> Iterator[list]:
    """Consecutive runs of at most `size` items that agree on `key`."""
    batch: list = []
    for item in items:
        if batch and (len(batch) == size or key(batch[0]) != key(item)):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


@register_model("photon")
class PhotonHarnessLM(TemplateLM):
    """A photon checkpoint or run folder as a harness model.

    Model arguments: `pretrained` (checkpoint or run folder: its latest checkpoint), `mode`
    (hiergen, or recgen for PHOTON with L >= 2), `dtype` (float32, bfloat16, float16),
    `window` and `stride` (rolling windows; default: the training context and half of it).
    `batch_size` and `device` come from the harness's flags of the same names.
    """

    def __init__(self, pretrained: str, mode: str = "hiergen", batch_size: int | str = 16,
                 device: str | None = None, dtype: str = "float32", window: int | None = None,
                 stride: int | None = None) -> None:
        super().__init__()
        if str(batch_size).startswith("auto"):
            raise InputError("photon: batch_size=auto is not supported; give a number")
        if dtype not in DTYPES:
            raise InputError(f"photon: dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self._device = _device(device)
        model, self.tokenizer = load_model(pretrained, device=self._device)
        self.model = model.to(DTYPES[dtype])
        check_mode(self.model.config, mode)
        self.mode, self.pretrained = mode, str(pretrained)
        self.batch_size = int(batch_size)
        self.window = int(window) if window else self.model.config.max_seq_len
        self.stride = int(stride) if stride else None

    # --- tokenization (TemplateLM) ------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        """End of text starts a document; raw-byte models start from a line break."""
        eos = self.tokenizer.eos_id
        return NEWLINE if eos is None else eos

    @property
    def max_length(self) -> int:
        return self.window

    def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                   **kwargs) -> list[int]:
        return self.tokenizer.encode(string)

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(tokens)

    # --- loglikelihood ------------------------------------------------------------------------

    @torch.no_grad()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False,
                              **kwargs) -> list[tuple[float, bool]]:
        """(log p(continuation | context), greedy) of ((context, continuation), context
        tokens, continuation tokens) requests, scored in batches."""
        items = []  # (request index, tokens, prompt length)
        for index, (_, context, continuation) in enumerate(requests):
            tokens = (context + continuation)[-(self.window + 1):]
            prompt = len(tokens) - len(continuation)
            if prompt < 1:
                raise InputError(f"photon: a continuation of {len(continuation)} tokens does "
                                 f"not fit the {self.window}-token window")
            items.append((index, tokens, prompt))
        # Longest first within a group, so that similar lengths share a batch.
        items.sort(key=lambda x: (self._group(x[2]), -len(x[1])))
        results: list[tuple[float, bool]] = [(0.0, True)] * len(requests)
        bar = progress_bar(total=len(items), desc=f"loglikelihood ({self.mode})",
                           show=not disable_tqdm)
        for batch in _batches(items, self.batch_size, key=lambda x: self._group(x[2])):
            for (index, _, _), result in zip(batch, self._score(batch), strict=True):
                results[index] = result
                self.cache_hook.add_partial("loglikelihood", requests[index][0], result)
            bar.update(len(batch))
        bar.close()
        return results

    def _group(self, prompt: int) -> int:
        """Requests of one group can share a forward call. RecGen's logits depend on the
        prompt's complete meta-contexts (the top stream is encoded up to there), so its
        prompts must end in the same meta-context; the forward pass has no prompt."""
        if self.mode == "recgen" and isinstance(self.model, PhotonLM):
            return prompt // self.model.config.meta_len
        return 0

    def _score(self, batch: list[tuple[int, list[int], int]]) -> list[tuple[float, bool]]:
        """(log-likelihood, greedy) of the tokens after each prompt, for one group's batch.
        Rows are right-padded: a causal model's logits at real positions never see it."""
        ids, _ = pad_prompts([tokens for _, tokens, _ in batch], "cpu")
        labels = torch.full_like(ids, -100)  # only the continuation is scored
        for row, (_, tokens, prompt) in enumerate(batch):
            labels[row, prompt:len(tokens)] = ids[row, prompt:len(tokens)]
        logits = mode_logits(self.model, ids.to(self._device), batch[0][2], self.mode)
        nll = token_nll(logits, labels.to(logits.device))
        scores = []
        for row, (_, tokens, prompt) in enumerate(batch):
            span = slice(prompt - 1, len(tokens) - 1)  # logits[:, i] predicts token i + 1
            is_greedy = greedy(logits[row, span]) == labels[row, prompt:len(tokens)].to(
                logits.device)
            scores.append((-nll[row, span].double().sum().item(), bool(is_greedy.all())))
        return scores

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of each whole text, as `photon eval` scores it."""
        results = []
        for request in progress_bar(requests, desc=f"rolling ({self.mode})",
                                    show=not disable_tqdm):
            (text,) = request.args
            result = evaluate_text(self.model, self.tokenizer, text, mode=self.mode,
                                   window=self.window, stride=self.stride,
                                   batch_size=self.batch_size)
            results.append(-result.nll_nats)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), -result.nll_nats)
        return results

    # --- generation ---------------------------------------------------------------------------

    def _generation_options(self, gen_kwargs: dict) -> tuple[list[str], int, dict]:
        """(stop strings, max new tokens, sampling options) from a task's gen_kwargs."""
        kwargs = dict(gen_kwargs)
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(kwargs.pop("max_gen_toks", 256))
        do_sample = bool(kwargs.pop("do_sample", False))
        temperature = float(kwargs.pop("temperature", 1.0 if do_sample else 0.0))
        sampling = {"temperature": temperature if do_sample else 0.0,
                    "top_k": kwargs.pop("top_k", None), "top_p": kwargs.pop("top_p", None)}
        if kwargs:
            raise InputError(f"photon: unsupported generation arguments {sorted(kwargs)}; "
                             f"supported: until, max_gen_toks, do_sample, temperature, "
                             f"top_k, top_p")
        return until, max_new, sampling

    def _fit(self, context: str, max_new: int) -> str:
        """The context, cut on the left so that it and `max_new` tokens fit the window."""
        keep = max(self.window - max_new, 1)
        tokens = self.tokenizer.encode(context)
        return context if len(tokens) <= keep else self.tokenizer.decode(tokens[-keep:])

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled) continuations that stop at the first stop string."""
        groups: dict[str, list[int]] = defaultdict(list)  # requests with equal gen_kwargs
        for index, request in enumerate(requests):
            groups[repr(sorted(request.args[1].items()))].append(index)
        results = [""] * len(requests)
        bar = progress_bar(total=len(requests), desc=f"generate ({self.mode})",
                           show=not disable_tqdm)
        for indices in groups.values():
            until, max_new, sampling = self._generation_options(requests[indices[0]].args[1])
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start:start + self.batch_size]
                prompts = [self._fit(requests[i].args[0], max_new) for i in batch]
                texts = generate_text(self.model, self.tokenizer, prompts, max_new,
                                      stop_strings=until, mode=self.mode, **sampling)
                for i, text in zip(batch, texts, strict=True):
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                bar.update(len(batch))
        bar.close()
        return results


def run_cli(args: Sequence[str]) -> None:
    """Run the harness's command line (`lm_eval run ARGS`) with `photon` registered."""
    from lm_eval.__main__ import cli_evaluate

    saved = sys.argv
    sys.argv = ["lm_eval", "run", *args]
    try:
        cli_evaluate()
    finally:
        sys.argv = saved
