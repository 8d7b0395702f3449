"""The `photon` command line: `photon VERB --help` explains each verb.

Every user mistake (an unknown preset, a missing file, a bad request) is reported as one
line on stderr with exit status 2; tracebacks are for bugs only. Each verb lives in its own
module with `add_parser(verbs)` and `run(args)`.
"""

from __future__ import annotations

import argparse
import sys

from photon.cli import (
    bench,
    data,
    evaluate,
    generate,
    info,
    lm_eval,
    probe,
    recall,
    serve,
    train,
)
from photon.errors import PhotonError

VERBS = (info, data, train, generate, evaluate, recall, bench, probe, lm_eval, serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="photon",
        description="PHOTON hierarchical language models: inspect, train, generate, benchmark "
                    "and evaluate them next to flat and Block Transformer baselines.",
        epilog="Presets: photon-/block-/vanilla- followed by tiny, small (CPU) or 600m, 900m, "
               "1.2b (the paper's sizes). Start with: photon info photon-small")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb in VERBS:
        verb.add_parser(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    # A verb that wraps another tool (lm-eval) passes the flags it does not know through.
    if unknown and not getattr(args, "pass_through", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.extra_args = unknown
    try:
        args.run(args)
    except PhotonError as e:
        print(f"photon {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"photon {args.verb}: interrupted", file=sys.stderr)
        return 130
    return 0

