"""`photon eval`: bits per byte and perplexity of a checkpoint on a text."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from photon.cli.flags import positive_int
from photon.cli.texts import add_text_flags, documents, joined_text, prepared_tokens
from photon.inference.modes import MODES

if TYPE_CHECKING:  # imported when run, to keep `photon --help` fast

    from photon.data.tokenizer import Tokenizer
    from photon.model.lm import Model

def run(args: argparse.Namespace) -> None:
    from photon.checkpoint import load_model
    from photon.errors import InputError

    boundaries = _boundaries(args.buckets)
    by_position = args.by_position or boundaries is not None
    if by_position and args.stride is not None:
        raise InputError("--stride does not apply to --by-position: its windows follow one "
                         "another from each document's start")
    model, tokenizer = load_model(args.checkpoint, device=args.device or "cpu")
    model.eval()
    options = dict(mode=args.mode, window=args.window, batch_size=args.batch_size,
                   progress=True, decoded=args.decoded)
    how = args.mode + (" (decoded)" if args.decoded else "")
    what = f"{args.checkpoint} on {args.data} ({args.split}), {how}"
    if by_position:
        _by_position(args, model, tokenizer, options, boundaries, what)
        return
    from photon.evaluation.perplexity import evaluate_text, evaluate_tokens

    tokens = prepared_tokens(args, tokenizer)
    if tokens is not None:
        start = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
        result = evaluate_tokens(model, [*start, *tokens.tolist()], tokenizer.token_bytes(),
                                 stride=args.stride, **options)
    else:
        text = joined_text(args)
        if args.max_bytes is not None:
            text = text.encode("utf-8")[:args.max_bytes].decode("utf-8", errors="ignore")
        result = evaluate_text(model, tokenizer, text, stride=args.stride, **options)
    print(f"{what}: bpb {result.bpb:.4f}  ppl {result.ppl:.2f}  over {result.tokens:,} tokens / "
          f"{result.bytes:,} bytes (window {result.window}, stride {result.stride})")
    if args.json:
        print(json.dumps(result.to_dict()))


def _by_position(args: argparse.Namespace, model: Model, tokenizer: Tokenizer, options: dict,
                 boundaries: list[int] | None, what: str) -> None:
    """Score whole windows from each document's start; print bpb by position bucket."""
    from photon.evaluation.positions import bucket_starts, evaluate_positions

    bucket_starts(args.window or model.config.max_seq_len, boundaries)  # before the work
    result = evaluate_positions(model, documents(args, tokenizer), tokenizer.token_bytes(),
                                **options)
    report = result.to_dict(boundaries)
    print(f"{what}: bpb {report['bpb']:.4f}  ppl {report['ppl']:.2f}  over "
          f"{report['tokens']:,} tokens / {report['bytes']:,} bytes (by position: "
          f"{result.windows:,} windows of {result.window} tokens from {result.documents:,} "
          f"documents, {result.skipped:,} shorter than a window skipped)")
    print(f"  {'positions':<12}{'bpb':>8}{'tokens':>13}{'bytes':>14}")
    for bucket in report["buckets"]:
        print(f"  {bucket['positions']:<12}{bucket['bpb']:>8.4f}{bucket['tokens']:>13,}"
              f"{bucket['bytes']:>14,}")
    if args.json:
        print(json.dumps(report))


def _boundaries(text: str | None) -> list[int] | None:
    """--buckets 256,1024 as [256, 1024] (checked against the window later)."""
    from photon.errors import InputError

    if text is None:
        return None
    try:
        return [int(b) for b in text.split(",")]
    except ValueError:
        raise InputError(f"--buckets takes positions separated by commas, such as "
                         f"0,256,1024; got {text!r}") from None


def add_parser(verbs) -> None:
    p = verbs.add_parser(
        "eval", help="bits per byte and perplexity of a checkpoint on a text",
        description="Score a text in overlapping windows of the model's context: every token "
                    "is scored once, with at least window - stride tokens of context (no "
                    "truncation bias). Bits per byte compare models with different tokenizers. "
                    "--mode recgen scores PHOTON the way RecGen generates: each window's "
                    "context is the prompt and its scored tokens are predicted with the top "
                    "stream advanced by the decoder's reconstructions. --by-position asks "
                    "instead how much the model gains from context: each document is scored "
                    "from its start in whole windows that follow one another (sharing one "
                    "token), so the prediction at window position p has exactly p + 1 tokens "
                    "of the same document in view (in a first window, the start-of-document "
                    "token and p text tokens); documents shorter than a window are skipped and "
                    "a tail shorter than a window is left out, so every position averages the "
                    "same windows. bpb is reported by bucket of positions.",
        epilog="Examples: photon eval runs/photon-small --data shakespeare --mode recgen --json; "
               "photon eval runs/photon-small-2k --data data/mix --by-position "
               "--buckets 256,1024")
    p.add_argument("checkpoint", help="checkpoint or run folder (the latest checkpoint)")
    add_text_flags(p)
    p.add_argument("--mode", choices=MODES, default="hiergen")
    p.add_argument("--decoded", action="store_true",
                   help="PHOTON: compute the logits through the cached decoding path, meta-"
                        "context by meta-context, as generation does (slower; it equals "
                        "the forward pass for HierGen, which is what this shows)")
    p.add_argument("--window", type=positive_int,
                   help="tokens per window (default: the model's training context)")
    p.add_argument("--stride", type=positive_int,
                   help="new tokens scored per window (default: half the window; not with "
                        "--by-position)")
    p.add_argument("--by-position", action="store_true",
                   help="bpb by position in the window, from whole windows that start at "
                        "document starts and follow one another (see above)")
    p.add_argument("--buckets", metavar="P1,P2,...",
                   help="--by-position's buckets: the positions where one starts (0 is "
                        "implied; default window/8 and window/2: 0-255, 256-1023, 1024-2046 "
                        "for a window of 2048); implies --by-position")
    p.add_argument("--batch-size", type=positive_int, default=8, help="windows per forward pass")
    p.add_argument("--device", help="cpu (default) or cuda")
    p.add_argument("--json", action="store_true",
                   help='last stdout line: {"bpb", "ppl", "tokens", "bytes", ...}, with '
                        '--by-position also "buckets": [{"positions", "bpb", "tokens", '
                        '"bytes", ...}] and the documents scored and skipped')
    p.set_defaults(run=run)
