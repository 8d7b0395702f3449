"""`photon probe`: does a trained PHOTON read its hierarchy?"""

from __future__ import annotations

import argparse
import json

from photon.cli.flags import positive_int


def run(args: argparse.Namespace) -> None:
    from photon.checkpoint import TRAINER_FILE, load_model, resolve_checkpoint
    from photon.data.corpus import SHAKESPEARE
    from photon.data.prepare import packed_dir
    from photon.data.shards import load_tokens
    from photon.evaluation.probe import plot_report, probe, unigram_logprobs

    ckpt = resolve_checkpoint(args.checkpoint)
    model, tokenizer = load_model(ckpt, device=args.device or "cpu")
    data = args.data
    if data is None:  # the run's own corpus, when the checkpoint says which
        try:
            data = json.loads((ckpt / TRAINER_FILE).read_text())["args"]["data"]
        except (OSError, ValueError, KeyError):
            data = SHAKESPEARE
    packed = packed_dir(data, tokenizer)
    report = probe(model, load_tokens(packed, "val"),
                   unigram_logprobs(load_tokens(packed, "train"), tokenizer.vocab_size),
                   windows=args.windows, seq_len=args.seq_len, batch_size=args.batch_size,
                   recgen=not args.no_recgen, progress=True)
    print(f"{ckpt} on {data} (validation split)")
    print(report.format())
    if args.plot:
        plot_report(report, args.plot, title=str(ckpt))
        print(f"plot: {args.plot}")
    if args.json:
        print(json.dumps(report.to_dict()))


def add_parser(verbs) -> None:
    p = verbs.add_parser(
        "probe", help="does a trained PHOTON read its hierarchy? a context-use report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Loss of every position inside the meta-context next to the unigram "
                    "cross-entropy of the same tokens, and what happens when the top-level "
                    "encoder states are zeroed or swapped between sequences. The first token "
                    "of each level-1 chunk sees no token of its own chunk: a model that reads "
                    "its top stream predicts it well below the unigram level and is hurt by a "
                    "swap. Also: encoder-state variance per level (near 0 means collapsed "
                    "states) and, for L >= 2, the RecGen loss next to HierGen's.",
        epilog="example:\n  photon probe runs/photon-small --plot probe.png\n"
               "The last line with --json holds every number (reads_top_stream: the verdict).")
    p.add_argument("checkpoint", help="checkpoint or run folder (the latest checkpoint)")
    p.add_argument("--data", help="corpus whose validation split is probed (default: the "
                                  "run's training corpus)")
    p.add_argument("--windows", type=positive_int, default=32, help="windows of text (default 32)")
    p.add_argument("--seq-len", type=positive_int, help="tokens per window (default: the model's "
                                               "training context)")
    p.add_argument("--batch-size", type=positive_int, default=8,
                   help="windows per batch; top states are swapped within a batch")
    p.add_argument("--no-recgen", action="store_true", help="skip the RecGen comparison")
    p.add_argument("--plot", metavar="PNG", help="plot the loss by position to this file")
    p.add_argument("--device", help="cpu (default) or cuda")
    p.add_argument("--json", action="store_true",
                   help="also print every number as one JSON line (the last line of stdout)")
    p.set_defaults(run=run)
