"""The `photon` command line: `photon VERB --help` explains each verb.

Every user mistake (an unknown preset, a missing file, a bad request) is reported as one
line on stderr with exit status 2; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import json
import sys

from photon.errors import PhotonError


def _info(args: argparse.Namespace) -> None:
    from photon.config import get_preset
    from photon.flops import training_flops_per_token
    from photon.model import count_parameters

    config = get_preset(args.name)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="photon",
        description="PHOTON hierarchical language models: inspect, train, generate, benchmark "
                    "and evaluate them next to flat and Block Transformer baselines.",
        epilog="Presets: photon-/block-/vanilla- followed by tiny, small (CPU) or 600m, 900m, "
               "1.2b (the paper's sizes). Start with: photon info photon-small")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("info", help="configuration, parameters and FLOPs of a preset",
                         description="Print a preset's configuration, its parameters per "
                                     "module and in total (counted without allocating), and "
                                     "its training FLOPs per token.")
    p.add_argument("name", help="preset name, e.g. photon-600m or vanilla-small")
    p.add_argument("--json", action="store_true",
                   help="also print one JSON line (the last line of stdout)")
    p.set_defaults(run=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except PhotonError as e:
        print(f"photon {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"photon {args.verb}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
