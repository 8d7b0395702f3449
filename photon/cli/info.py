"""`photon info`: a preset's configuration, parameters per module and FLOPs."""

from __future__ import annotations

import argparse
import json

from photon.cli.flags import positive_int


def run(args: argparse.Namespace) -> None:
    from photon.model.config import get_preset
    from photon.model.flops import training_flops_per_token
    from photon.model.lm import count_parameters

    config = get_preset(args.name)
    if args.seq_len is not None:
        config = config.replace(max_seq_len=args.seq_len)
    total, modules = count_parameters(config)
    flops = training_flops_per_token(config)
    print(f"{args.name} ({config.model_type})")
    for key, value in config.to_dict().items():
        if key != "model_type":
            print(f"  {key:<16} {value}")
    print("parameters per module:")
    for key, value in modules.items():
        print(f"  {key:<22} {value:>15,}")
    print(f"  {'total':<22} {total:>15,}")
    print(f"training FLOPs per token (context {config.max_seq_len}): {flops:,}")
    if args.json:
        print(json.dumps({"name": args.name, "params": total, "flops_per_token": flops,
                          "modules": modules, "config": config.to_dict()}))


def add_parser(verbs) -> None:
    p = verbs.add_parser("info", help="configuration, parameters and FLOPs of a preset",
                         description="Print a preset's configuration, its parameters per "
                                     "module and in total (counted without allocating), and "
                                     "its training FLOPs per token.")
    p.add_argument("name", help="preset name, e.g. photon-600m or vanilla-small")
    p.add_argument("--seq-len", type=positive_int, metavar="N",
                   help="training context (default: the preset's): FLOPs per token count "
                        "attention at N, as `photon train --seq-len N` does")
    p.add_argument("--json", action="store_true",
                   help="also print one JSON line (the last line of stdout)")
    p.set_defaults(run=run)
