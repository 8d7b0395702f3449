"""`photon generate`: continue prompts with a trained model."""

from __future__ import annotations

import argparse
import json

from photon.cli.flags import fraction, non_empty, non_negative_float, positive_int, seed
from photon.device import DTYPE_HELP, DTYPES
from photon.inference.modes import MODES


def run(args: argparse.Namespace) -> None:
    from photon.checkpoint import load_model
    from photon.device import device_and_dtype
    from photon.errors import InputError
    from photon.inference.generate import generate_text

    if (args.prompt is None) == (args.prompt_file is None):
        raise InputError("give exactly one of --prompt TEXT and --prompt-file FILE")
    if args.prompt_file is not None:
        try:
            with open(args.prompt_file, encoding="utf-8") as f:
                prompts = [line.rstrip("\n") for line in f if line.strip()]
        except OSError as e:
            raise InputError(f"cannot read the prompt file: {e}") from None
        except UnicodeDecodeError as e:
            raise InputError(f"{args.prompt_file}: not UTF-8 text (byte {e.start}); give "
                             "one prompt per line") from None
        if not prompts:
            raise InputError(f"{args.prompt_file} holds no prompt (one per line)")
    else:
        prompts = [args.prompt]
    device, dtype = device_and_dtype(args.device or "cpu", args.dtype)
    model, tokenizer = load_model(args.checkpoint, device=device)
    model = model.to(dtype)
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


def add_parser(verbs) -> None:
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
    p.add_argument("--mode", choices=MODES, default="hiergen",
                   help="PHOTON decoding schedule (ignored by flat models)")
    p.add_argument("--max-new-tokens", type=positive_int, default=200)
    p.add_argument("--temperature", type=non_negative_float, default=0.0,
                   help="0 (default) is greedy")
    p.add_argument("--top-k", type=positive_int, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=fraction, help="nucleus sampling: smallest set with mass p")
    p.add_argument("--seed", type=seed, help="seed of the sampler, for reproducible samples")
    p.add_argument("--stop", action="append", metavar="TEXT", type=non_empty,
                   help="stop a sequence at this text (repeatable); it is cut from the output")
    p.add_argument("--max-length", type=positive_int,
                   help="cache capacity in tokens (default: longest prompt + "
                        "max-new-tokens); a request that needs more is refused")
    p.add_argument("--device", help="cpu (default) or cuda")
    p.add_argument("--dtype", choices=list(DTYPES), help=DTYPE_HELP)
    p.set_defaults(run=run)
