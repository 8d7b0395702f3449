"""`photon lm-eval`: EleutherAI's lm-evaluation-harness with photon models and local tasks.

The harness has no plugin mechanism for models, so `lm_eval --model photon` alone cannot
find photon's model class. This verb registers it, writes the local Shakespeare tasks, and
runs the harness's own command line (`lm_eval run`) with every other flag passed through
unchanged.
"""

from __future__ import annotations

import argparse
import json

from photon.errors import DependencyError


def _value(flags: list[str], name: str) -> str | None:
    """The value of `--name VALUE` or `--name=VALUE` among `flags`, or None."""
    for i, flag in enumerate(flags):
        if flag == name and i + 1 < len(flags):
            return flags[i + 1]
        if flag.startswith(name + "="):
            return flag.split("=", 1)[1]
    return None


def harness_args(args: argparse.Namespace, tasks_dir: str) -> list[str]:
    """The harness's flags: the user's, plus photon's defaults for those not given."""
    from photon.device import resolve_device

    flags = list(args.extra_args)
    defaults = {"--model": "photon", "--include_path": tasks_dir, "--batch_size": "16",
                "--device": resolve_device().type}
    for name, value in defaults.items():
        if _value(flags, name) is None:
            flags += [name, value]
    return flags


def _check_pretrained(flags: list[str]) -> None:
    """Fail at once on a wrong checkpoint path, not after the harness's long start-up."""
    from lm_eval.utils import simple_parse_args_string

    from photon.checkpoint import resolve_checkpoint

    value = _value(flags, "--model_args")
    if _value(flags, "--model") != "photon" or value is None:
        return
    model_args = json.loads(value) if value.lstrip().startswith("{") \
        else simple_parse_args_string(value)
    if "pretrained" in model_args:
        resolve_checkpoint(model_args["pretrained"])


def run(args: argparse.Namespace) -> None:
    from photon.data.corpus import cache_dir
    from photon.integrations.tasks import TASKS, write_tasks

    try:
        from photon.integrations.lm_eval import run_cli
    except ImportError as e:
        raise DependencyError(f"the lm-evaluation-harness is not installed ({e.name}); "
                              f"install it with: pip install -e '.[eval]'") from None
    tasks_dir = args.tasks_dir or cache_dir() / "lm_eval_tasks"
    flags = harness_args(args, str(tasks_dir))
    _check_pretrained(flags)
    if any(task in (_value(flags, "--tasks") or "") for task in TASKS):
        write_tasks(tasks_dir, args.mc_items, args.mc_seed)
    run_cli(flags)


DESCRIPTION = """\
Evaluate a photon checkpoint with EleutherAI's lm-evaluation-harness (pip install -e
'.[eval]'): this runs `lm_eval run` with photon's model registered as `--model photon`.
Every flag but the three options below goes to the harness unchanged.

Local tasks, written into --tasks-dir from the held-out part of every Shakespeare play:
  shakespeare_mc   given a passage, pick its true next line among four (the others: lines
                   of about the same length from other plays); acc, acc_norm; chance 25 %
  shakespeare_cloze  the same items cut inside the true line: pick its second half among
                   the second halves of the four lines; acc, acc_norm; chance 25 %
  shakespeare_gen  write that next line (greedy, until a line break); exact_match
  shakespeare_ppl  rolling log-likelihood of each play's text, in `photon eval`'s windows;
                   word/byte perplexity, bits_per_byte

Added when not given: --model photon, --include_path TASKS_DIR, --batch_size 16,
--device cuda if there is a GPU, else cpu."""

EPILOG = """\
--model_args of photon: pretrained=RUN_OR_CHECKPOINT (required), mode=hiergen|recgen,
dtype=float32|bfloat16|float16, window=N, stride=N (rolling windows; default: the training
context and half of it).

examples:
  photon lm-eval --model_args pretrained=runs/photon-small --tasks shakespeare_mc,shakespeare_ppl
  photon lm-eval --model_args pretrained=runs/photon-small,mode=recgen --tasks shakespeare_mc \\
      --limit 200 --output_path out --log_samples
  photon lm-eval --model_args pretrained=runs/photon-600m,dtype=bfloat16 \\
      --tasks hellaswag,sciq,arc_easy        # tasks from the hub: needs its datasets
All harness flags: lm_eval run --help"""


def add_parser(verbs) -> None:
    p = verbs.add_parser(
        "lm-eval", help="run EleutherAI's lm-evaluation-harness on a photon model",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False)  # "--tasks" is the harness's flag, not short for --tasks-dir
    p.add_argument("--tasks-dir", help="where the local tasks are written (default: "
                                       "lm_eval_tasks in photon's cache, ~/.cache/photon "
                                       "or $PHOTON_CACHE)")
    p.add_argument("--mc-items", type=int, default=2000,
                   help="items of shakespeare_mc and shakespeare_gen (default 2000)")
    p.add_argument("--mc-seed", type=int, default=0,
                   help="seed that draws those items (default 0)")
    p.set_defaults(run=run, pass_through=True)
