"""`photon recall`: how much of a long text a model recalls exactly (passkey, repeated
bigrams)."""

from __future__ import annotations

import argparse
import json

from photon.cli.flags import positive_int
from photon.cli.texts import add_text_flags, documents
from photon.inference.modes import MODES

TESTS = ("passkey", "repeats")


def run(args: argparse.Namespace) -> None:
    from photon.checkpoint import load_model
    from photon.errors import InputError
    from photon.evaluation.passkey import make_trials, passkey_scores
    from photon.evaluation.repeats import band_edges, evaluate_repeats
    from photon.inference.modes import check_mode

    model, tokenizer = load_model(args.checkpoint, device=args.device or "cpu")
    model.eval()
    check_mode(model.config, args.mode)
    length = args.window or model.config.max_seq_len
    if length > model.config.max_seq_len:
        raise InputError(f"--window {length} exceeds the model's context "
                         f"({model.config.max_seq_len} tokens)")
    tests = args.only or list(TESTS)
    band_edges(length, args.bands)  # a bad --bands fails before any work
    report: dict = {"checkpoint": args.checkpoint, "data": args.data, "split": args.split,
                    "mode": args.mode, "window": length}
    print(f"{args.checkpoint} on {args.data} ({args.split}), {args.mode}, windows of "
          f"{length} tokens")
    if "passkey" in tests:
        trials = make_trials(tokenizer, documents(args, tokenizer), length, args.depths,
                             args.trials, args.seed)
        passkey = passkey_scores(model, tokenizer, trials, args.mode, args.batch_size,
                                 progress=True)
        _print_passkey(passkey)
        report["passkey"] = passkey
    if "repeats" in tests:
        repeats = evaluate_repeats(model, documents(args, tokenizer), tokenizer.token_bytes(),
                                   args.mode, length, args.bands, args.batch_size,
                                   progress=True)
        _print_repeats(repeats.to_dict())
        report["repeats"] = repeats.to_dict()
    if args.json:
        print(json.dumps(report))


def _print_passkey(passkey: dict) -> None:
    print(f"passkey (a 5-digit key stated once, asked for at token {passkey['length']}):")
    print(f"  {'depth':>6}{'exact':>8}{'key nll':>10}{'control':>10}{'gain':>16}  "
          "greedy continuation of the first trial")
    for d in passkey["depths"]:
        gain = f"{d['gain']:+.3f} ± {d['gain_se']:.3f}"
        print(f"  {d['depth']:>6.0%}{d['exact']:>8.0%}{d['key_nll']:>10.3f}"
              f"{d['control_nll']:>10.3f}{gain:>16}  {d['sample']['key']} -> "
              f"{d['sample']['continuation']!r}")


def _print_repeats(repeats: dict) -> None:
    print(f"repeated bigrams ({repeats['windows']:,} windows from {repeats['documents']:,} "
          f"documents; {repeats['documents_skipped']:,} shorter skipped):")
    print(f"  {'slice':<18}{'tokens':>11}{'nats/token':>12}{'bpb':>8}")
    for s in repeats["slices"]:
        print(f"  {s['slice']:<18}{s['tokens']:>11,}{s['nats_per_token']:>12.4f}"
              f"{s['bpb']:>8.4f}")


def _fractions(text: str) -> list[float]:
    try:
        depths = [int(p) / 100 for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected percentages such as 10,50,90, got {text!r}") from None
    if not all(0 <= d <= 1 for d in depths):
        raise argparse.ArgumentTypeError(f"depths are percentages in 0..100, got {text!r}")
    return depths


def _distances(text: str) -> list[int]:
    try:
        return [int(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected distances such as 1,32,256, got {text!r}") from None


def add_parser(verbs) -> None:
    p = verbs.add_parser(
        "recall", help="does a model recall what it read far back? passkey and repeated bigrams",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Two tests of exact recall in held-out natural text, in the decoding mode "
                    "asked for.\n\n"
                    "passkey: a 5-digit key stated once at a depth of the window (10, 50 and "
                    "90 % by default) and asked for at its end. Reported: greedy exact match, "
                    "and the key's NLL against a control whose needle states another key (the "
                    "gain, in nats: what the model took from the needle, which separates models "
                    "too small to answer).\n\n"
                    "repeats: the loss on tokens that complete a bigram seen earlier in the "
                    "window, by how far back it was, against tokens that complete a new one, "
                    "over whole windows from each document's start.",
        epilog="example:\n  photon recall runs/photon-small-2k --data data/mix/brown --split all "
               "--json\nSynthetic recall (MQAR) trains with photon train --data mqar:K=8,16,32; "
               "see docs/recall.md.")
    p.add_argument("checkpoint", help="checkpoint or run folder (the latest checkpoint)")
    add_text_flags(p)
    p.add_argument("--mode", choices=MODES, default="hiergen")
    p.add_argument("--only", choices=TESTS, action="append",
                   help="run this test only (may be repeated; default: both)")
    p.add_argument("--window", type=positive_int,
                   help="tokens per window (default: the model's training context)")
    p.add_argument("--depths", type=_fractions, default=[0.1, 0.5, 0.9], metavar="P1,P2,...",
                   help="passkey: where the key is stated, in percent of the window "
                        "(default 10,50,90)")
    p.add_argument("--trials", type=positive_int, default=20,
                   help="passkey: trials per depth, one document each (default 20)")
    p.add_argument("--seed", type=int, default=0, help="passkey: seeds the keys (default 0)")
    p.add_argument("--bands", type=_distances, metavar="D1,D2,...",
                   help="repeats: first distances of the bands (default 1,32,256,1024)")
    p.add_argument("--batch-size", type=positive_int, default=4, help="windows per batch")
    p.add_argument("--device", help="cpu (default) or cuda")
    p.add_argument("--json", action="store_true",
                   help="also print every number as one JSON line (the last line of stdout)")
    p.set_defaults(run=run)
