"""The request bodies of POST /v1/completions (OpenAI's schema, plus a few extensions) and of
POST /tokenize and /detokenize (vLLM's), and the checks that turn a bad one into an
OpenAI-style 400 error."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, PlainValidator
from pydantic_core import PydanticCustomError

from photon.errors import InputError
from photon.inference.sampling import check_sampling

MAX_STOP = 4  # OpenAI's limit on stop sequences
MAX_LOGPROBS = 5  # OpenAI's limit on alternatives per position


class APIError(Exception):
    """An error answered as {"error": {message, type, param, code}} with `status`."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, type: str = "invalid_request_error",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type, self.headers = type, headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


def is_unicode(text: str) -> bool:
    """False for a str holding a lone surrogate (JSON allows "\\ud800"; UTF-8 does not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def prompt_shape(value: object) -> str | list:
    """A prompt as OpenAI's schema allows it: a string, a list of strings, a list of token
    ids or a list of lists of token ids. Checked in one pass here because pydantic's union of
    those four builds an error per element for every member that fails: seconds, with the
    GIL held, for the few million token ids an 8 MiB body holds."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        kinds = set(map(type, value))  # `type`, not isinstance: a bool is not a token id
        if kinds <= {int} or kinds == {str} or kinds == {list} and all(
                type(t) is int for p in value for t in p):
            return value
    raise PydanticCustomError("prompt", "expected a string, a list of strings, a list of "
                                        "token ids or a list of lists of token ids")


Prompt = Annotated[str | list, PlainValidator(
    prompt_shape, json_schema_input_type=str | list[str] | list[int] | list[list[int]])]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


class CompletionRequest(BaseModel):
    """Strict: a wrong type is an error, never coerced; an unknown field is an error."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str
    prompt: Prompt
    max_tokens: int | None = 16
    temperature: float | None = 1.0
    top_p: float | None = 1.0
    n: int | None = 1
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    logprobs: int | None = None
    best_of: int | None = None
    echo: bool | None = False
    suffix: str | None = None
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # Extensions (send them with the openai client's extra_body):
    top_k: int | None = None  # sample among the k most likely tokens; None or -1: off
    ignore_eos: bool = False  # generate exactly max_tokens (benchmarks)
    vote: Literal["majority"] | None = None  # return the most frequent of the n completions

    def check(self, max_len: int, slots: int, max_stop_chars: int = 256,
              end_of_text: str | None = None) -> None:
        """The semantic checks (types are checked on parsing); raises `APIError` (400).
        `slots` is how many one request may hold; `end_of_text` is the tokenizer's
        end-of-text string, which `stop` may hold besides its MAX_STOP strings."""
        def bad(param: str, message: str) -> APIError:
            return APIError(400, message, param=param)

        if self.max_tokens is not None and self.max_tokens < (0 if self.echo else 1):
            raise bad("max_tokens", f"max_tokens must be at least 1 (0 with echo: the prompt's "
                                    f"log-probabilities only), got {self.max_tokens}")
        if self.max_tokens is not None and self.max_tokens >= max_len:
            raise bad("max_tokens", f"max_tokens must be below the context length {max_len}, "
                                    f"got {self.max_tokens}")
        if self.temperature is not None and not 0 <= self.temperature <= 2:
            raise bad("temperature", f"temperature must be in [0, 2], got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise bad("top_p", f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k != -1 and self.top_k < 1:
            raise bad("top_k", f"top_k must be >= 1 (or -1 for no limit), got {self.top_k}")
        try:  # the range generate takes: one home for it
            check_sampling(seed=self.seed)
        except InputError as e:
            raise bad("seed", str(e)) from None
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise bad("logprobs", f"logprobs must be in [0, {MAX_LOGPROBS}], got "
                                  f"{self.logprobs}")
        n = self.n if self.n is not None else 1
        if n < 1:
            raise bad("n", f"n must be at least 1, got {n}")
        if self.best_of is not None and self.best_of < n:
            raise bad("best_of", f"best_of ({self.best_of}) must be at least n ({n})")
        if self.candidates > slots:
            raise bad("best_of" if self.best_of else "n",
                      f"{self.candidates} completions of one prompt need as many slots; one "
                      f"request may hold {slots} on this server")
        if (self.best_of is not None or self.vote) and self.stream:
            raise bad("stream", "best_of and vote pick among finished completions: they "
                                "cannot be streamed")
        if self.vote and self.best_of is not None:
            raise bad("vote", "use either vote or best_of, not both")
        if self.echo and self.logprobs is None:
            raise bad("echo", "echo returns the prompt's tokens with their log-probabilities: "
                              "give logprobs (0 to 5) with it")
        stops = self.stops(end_of_text)
        if len(stops) > MAX_STOP or any(not s for s in stops):
            raise bad("stop", f"stop takes up to {MAX_STOP} non-empty strings")
        if any(len(s) > max_stop_chars for s in stops):
            raise bad("stop", f"a stop string may have at most {max_stop_chars} characters")
        if not all(map(is_unicode, stops)):
            raise bad("stop", "stop: not valid Unicode (a lone surrogate)")
        for param, ok in (("suffix", self.suffix is None),
                          ("presence_penalty", not self.presence_penalty),
                          ("frequency_penalty", not self.frequency_penalty),
                          ("logit_bias", not self.logit_bias)):
            if not ok:
                raise bad(param, f"{param} is not supported by photon serve")

    @property
    def candidates(self) -> int:
        """Sequences decoded per prompt: best_of, else n (vote picks one of the n)."""
        return self.best_of if self.best_of is not None else self.n or 1

    @property
    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def stops(self, end_of_text: str | None) -> tuple[str, ...]:
        """The stop strings, less the end-of-text string (lm-eval and other clients add it
        to every stop list): it stands for the end-of-text token, at which every sequence
        stops (`stops_at_eos`)."""
        return tuple(s for s in self.stop_strings if s != end_of_text)

    def stops_at_eos(self, end_of_text: str | None) -> bool:
        """Whether a sequence ends at the end-of-text token: unless `ignore_eos`, or when
        `stop` names the end-of-text string (which then wins over ignore_eos)."""
        return not self.ignore_eos or end_of_text is not None and \
            end_of_text in self.stop_strings


class TokenizeRequest(BaseModel):
    """POST /tokenize, as vLLM takes it (completion form; the chat form is not supported)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = None
    prompt: str | None = None
    add_special_tokens: bool = True  # photon's tokenizers add none: accepted, no effect
    return_token_strs: bool | None = False
    messages: list | None = None  # vLLM's chat form: refused by `check`

    def check(self) -> None:
        if self.messages is not None:
            raise APIError(400, "messages: the chat form of /tokenize is not supported (this "
                                "server has no chat template); send prompt", param="messages")
        if self.prompt is None:
            raise APIError(400, "prompt: field required", param="prompt")


class DetokenizeRequest(BaseModel):
    """POST /detokenize, as vLLM takes it."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = None
    tokens: list[int]
