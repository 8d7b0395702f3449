"""Argument types of the command line's numeric and text flags: each value is checked as it
is parsed, so a bad one gets argparse's usual one-line error (`photon VERB: error: argument
--FLAG: ...`, exit status 2) before anything runs.

Usage: `p.add_argument("--threads", type=positive_int)`.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from photon.inference.sampling import SEED_LIMIT


def _number(kind: type, text: str) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def bounded(kind: type, low: float, high: float = math.inf, low_open: bool = False,
            high_open: bool = False, what: str | None = None) -> Callable[[str], int | float]:
    """An argparse type: a finite `kind` (int or float) in [low, high], the ends left out
    with `low_open` and `high_open`; `what` names the range in the error."""
    what = what or f"{'>' if low_open else '>='} {low:g}" + \
        ("" if high == math.inf else f" and {'<' if high_open else '<='} {high:g}")

    def parse(text: str) -> int | float:
        value = _number(kind, text)
        if value < low or (low_open and value == low) or value > high \
                or (high_open and value == high):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    return parse


positive_int = bounded(int, 1, what="a positive integer")
non_negative_int = bounded(int, 0, what="an integer >= 0")
positive_float = bounded(float, 0, low_open=True, what="a positive finite number")
non_negative_float = bounded(float, 0, what="a finite number >= 0")
fraction = bounded(float, 0, 1, low_open=True, what="in (0, 1]")
open_fraction = bounded(float, 0, 1, low_open=True, high_open=True, what="in (0, 1)")
port = bounded(int, 0, 65535, what="a port in [0, 65535] (0: any free port)")
seed = bounded(int, 0, SEED_LIMIT - 1, what="an integer in [0, 2**64)")
# A byte-level BPE holds the 256 bytes and the end-of-document token; its trainer sets aside
# about 70 bytes per entry up front, so a vocabulary of 2**31 would ask for 140 GB at once.
bpe_vocab = bounded(int, 257, 2**24, what="a BPE vocabulary in [257, 2**24]")


def mebibytes(least_bytes: int) -> Callable[[str], float]:
    """An argparse type: a finite size in MiB of at least `least_bytes` bytes."""
    return bounded(float, least_bytes / 2**20,
                   what=f"a size in MiB of at least {least_bytes / 2**20:.10g} "
                        f"({least_bytes:,} bytes)")


def non_empty(text: str) -> str:
    """An argparse type: text that is not empty."""
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def fraction_range(text: str) -> list[float]:
    """An argparse type: `START,END`, fractions with 0 <= START <= END <= 1, as a list; `off`
    is the empty list."""
    if text == "off":
        return []
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 2 or not 0 <= values[0] <= values[1] <= 1:
        raise argparse.ArgumentTypeError(
            f"expected START,END with 0 <= START <= END <= 1, or off; got {text!r}")
    return values
