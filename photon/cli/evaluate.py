"""`photon eval`: bits per byte and perplexity of a checkpoint on a text."""

from __future__ import annotations

import argparse
import json

from photon.inference.modes import MODES

SIZES = ("batch_size", "window", "stride", "max_bytes")  # flags that must be positive


def run(args: argparse.Namespace) -> None:
    from photon.checkpoint import load_model
    from photon.errors import InputError
    from photon.evaluation.perplexity import evaluate_text, evaluate_tokens

    for name in SIZES:  # before the model is loaded; 0 never means "the default"
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be positive, got {value}")
    model, tokenizer = load_model(args.checkpoint, device=args.device or "cpu")
    model.eval()
    options = dict(mode=args.mode, window=args.window, stride=args.stride,
                   batch_size=args.batch_size, progress=True, decoded=args.decoded)
    tokens = _prepared_tokens(args, tokenizer)
    if tokens is not None:
        result = evaluate_tokens(model, tokens, tokenizer.token_bytes(), **options)
    else:
        text = _text(args)
        if args.max_bytes is not None:
            text = text.encode("utf-8")[:args.max_bytes].decode("utf-8", errors="ignore")
        result = evaluate_text(model, tokenizer, text, **options)
    how = result.mode + (" (decoded)" if args.decoded else "")
    print(f"{args.checkpoint} on {args.data} ({args.split}), {how}: "
          f"bpb {result.bpb:.4f}  ppl {result.ppl:.2f}  over {result.tokens:,} tokens / "
          f"{result.bytes:,} bytes (window {result.window}, stride {result.stride})")
    if args.json:
        print(json.dumps(result.to_dict()))


def _text(args: argparse.Namespace) -> str:
    from photon.data.corpus import split_documents

    return "\n\n".join(split_documents(args.data, args.split, args.text_field))


def _prepared_tokens(args: argparse.Namespace, tokenizer) -> list[int] | None:
    """The split's tokens of a prepared directory (None for any other --data), after an
    end-of-document token so that every document token is scored, cut at --max-bytes."""
    import numpy as np

    from photon.data.prepare import is_prepared, load_tokens, packed_dir

    if not is_prepared(args.data):
        return None
    folder = packed_dir(args.data, tokenizer)  # checks that it was made with this tokenizer
    splits = ["train", "val"] if args.split == "all" else [args.split]
    tokens = np.concatenate([np.asarray(load_tokens(folder, s)) for s in splits])
    if args.max_bytes is not None:
        sizes = np.asarray(tokenizer.token_bytes())[tokens]
        tokens = tokens[:int(np.searchsorted(np.cumsum(sizes), args.max_bytes, "right"))]
    start = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
    return [*start, *tokens.tolist()]


def add_parser(verbs) -> None:
    p = verbs.add_parser(
        "eval", help="bits per byte and perplexity of a checkpoint on a text",
        description="Score a text in overlapping windows of the model's context: every token "
                    "is scored once, with at least window - stride tokens of context (no "
                    "truncation bias). Bits per byte compare models with different tokenizers. "
                    "--mode recgen scores PHOTON the way RecGen generates: each window's "
                    "context is the prompt and its scored tokens are predicted with the top "
                    "stream advanced by the decoder's reconstructions.",
        epilog="Example: photon eval runs/photon-small --data shakespeare --mode recgen --json")
    p.add_argument("checkpoint", help="checkpoint or run folder (the latest checkpoint)")
    p.add_argument("--data", default="shakespeare",
                   help="'shakespeare', a directory made by photon data prepare, or a text, "
                        "JSON Lines or Parquet file, folder or glob")
    p.add_argument("--split", choices=["val", "train", "all"], default="val",
                   help="val (default): the held-out part training never saw; train; all")
    p.add_argument("--text-field", default="text",
                   help="JSON field / Parquet column holding the text (default: text)")
    p.add_argument("--mode", choices=MODES, default="hiergen")
    p.add_argument("--decoded", action="store_true",
                   help="PHOTON: compute the logits through the cached decoding path, meta-"
                        "context by meta-context, as generation does (slower; it equals "
                        "the forward pass for HierGen, which is what this shows)")
    p.add_argument("--window", type=int, help="tokens per window (default: the model's "
                                              "training context)")
    p.add_argument("--stride", type=int, help="new tokens scored per window (default: half "
                                              "the window)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    p.add_argument("--max-bytes", type=int, help="score only the first N bytes of the text")
    p.add_argument("--device", help="cpu (default) or cuda")
    p.add_argument("--json", action="store_true",
                   help='last stdout line: {"bpb", "ppl", "tokens", "bytes", ...}')
    p.set_defaults(run=run)
