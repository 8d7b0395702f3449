"""Local lm-evaluation-harness tasks built from the Shakespeare validation split (offline).

`write_tasks(folder)` writes JSONL data and the harness's own YAML task files:
- `shakespeare_mc` (multiple choice): a passage of up to `CONTEXT_LINES` lines of a play,
  and four candidate next lines: the true one and three lines of at least `MIN_WORDS` words
  drawn at random from *other* plays. A model that ignores the passage scores each line by
  its own probability and is at chance (25 %) in expectation, as the true and the
  distracting lines come from the same distribution; beating chance means reading the
  passage. Metrics: acc (summed log-likelihood) and acc_norm (per byte).
- `shakespeare_cloze` (multiple choice): the same items, cut inside the line to predict: the
  passage goes on with the first half of the true line (up to the space nearest its middle)
  and the choices are the second halves of the four lines. Grammar and sense across the cut
  tell the true half, so a model that has learnt the language, not only its statistics,
  beats chance here before it can on `shakespeare_mc`.
- `shakespeare_gen` (generation): the same passages; the model writes the next line,
  stopping at a line break; exact match against the true line.
- `shakespeare_ppl` (rolling log-likelihood): every play's held-out text as one document;
  word/byte perplexity and bits per byte, each document scored in `photon eval`'s windows.

Items are sampled with a fixed seed, so every machine builds the same files. The passages
are text the models never trained on (the held-out tail of every play, photon.data.corpus).
"""

from __future__ import annotations

import bisect
import json
import os
import random
from pathlib import Path

from photon.data.corpus import SHAKESPEARE, resolve_corpus, split_documents
from photon.errors import DataError

MC_TASK, CLOZE_TASK = "shakespeare_mc", "shakespeare_cloze"
GEN_TASK, PPL_TASK = "shakespeare_gen", "shakespeare_ppl"
TASKS = (MC_TASK, CLOZE_TASK, GEN_TASK, PPL_TASK)
CONTEXT_LINES = 8  # lines of the play before the line to predict (blank lines included)
MIN_WORDS = 4  # candidate lines: verse or prose, not speaker headings like "KING HENRY."
N_CHOICES = 4
LENGTH_TOLERANCE = 0.2  # distractors are within 20 % of the true line's length in bytes
VERSION = 2  # bump when the items change, so results are never compared across versions


def _plays(corpus: str | Path) -> list[tuple[str, list[str]]]:
    """(name, lines) of the validation part of every document of `corpus`."""
    plays = []
    for path in resolve_corpus(corpus):
        text = "".join(split_documents(path, "val"))
        if text.strip():
            plays.append((path.stem.removesuffix("_gut"), text.split("\n")))
    return plays


def _is_candidate(line: str) -> bool:
    return len(line.split()) >= MIN_WORDS


def _sample(rng: random.Random, pool: list[tuple[int, str]], lo: int, hi: int, play: int,
            k: int) -> list[str] | None:
    """k distinct lines of pool[lo:hi] from documents other than `play` (None if there seem
    to be too few: rejection sampling gives up after 20 draws per line)."""
    picked: list[str] = []
    for _ in range(20 * k):
        if len(picked) == k or hi <= lo:
            break
        q, line = pool[rng.randrange(lo, hi)]
        if q != play and line not in picked:
            picked.append(line)
    return picked if len(picked) == k else None


def _distractors(rng: random.Random, pool: list[tuple[int, str]], lengths: list[int],
                 play: int, truth: str) -> list[str] | None:
    """N_CHOICES - 1 lines of other documents within LENGTH_TOLERANCE of the truth's length,
    of which a uniformly random number are shorter than it and the rest longer: the truth's
    length rank among the choices is uniform, so length says nothing about the answer."""
    n = len(truth.encode("utf-8"))
    slack = max(2, round(LENGTH_TOLERANCE * n))
    n_shorter = rng.randrange(N_CHOICES)
    shorter = _sample(rng, pool, bisect.bisect_left(lengths, n - slack),
                      bisect.bisect_left(lengths, n), play, n_shorter)
    longer = _sample(rng, pool, bisect.bisect_right(lengths, n),
                     bisect.bisect_right(lengths, n + slack), play, N_CHOICES - 1 - n_shorter)
    return None if shorter is None or longer is None else shorter + longer


def mc_items(corpus: str | Path = SHAKESPEARE, n_items: int = 2000, seed: int = 0
             ) -> list[dict]:
    """`n_items` multiple-choice items in a random order (so that the first N are a fair
    sample): {"id", "play", "passage", "choices", "label"}."""
    plays = _plays(corpus)
    targets = [(p, i) for p, (_, lines) in enumerate(plays)
               for i in range(CONTEXT_LINES, len(lines))
               if _is_candidate(lines[i]) and any(lines[i - CONTEXT_LINES:i])]
    pool = sorted(((p, line) for p, (_, lines) in enumerate(plays) for line in lines
                   if _is_candidate(line)), key=lambda x: len(x[1].encode("utf-8")))
    lengths = [len(line.encode("utf-8")) for _, line in pool]
    rng = random.Random(seed)
    items: list[dict] = []
    for p, i in rng.sample(targets, len(targets)):
        name, lines = plays[p]
        distractors = _distractors(rng, pool, lengths, p, lines[i])
        if distractors is None:
            continue
        rng.shuffle(distractors)
        label = rng.randrange(N_CHOICES)
        choices = distractors[:label] + [lines[i]] + distractors[label:]
        passage = "\n".join(lines[i - CONTEXT_LINES:i]).lstrip("\n")
        items.append({"id": len(items), "play": name, "passage": passage,
                      "choices": choices, "label": label})
        if len(items) == n_items:
            return items
    raise DataError(f"{corpus}: only {len(items)} lines have enough lines of similar length "
                    f"in other documents to be items; {n_items} asked for")


def cut(line: str) -> tuple[str, str]:
    """(head, tail) of a line split at the space nearest its middle (past its first word);
    the tail starts with that space, so head + tail is the line."""
    after_first_word = line.find(" ", len(line) - len(line.lstrip()))
    spaces = [i for i in range(after_first_word, len(line)) if line[i] == " "]
    i = min(spaces, key=lambda i: abs(i - len(line) / 2))
    return line[:i], line[i:]


def cloze_items(mc: list[dict]) -> list[dict]:
    """`mc_items` cut inside the line to predict: the passage ends with the true line's head,
    and the choices are the tails of the four lines."""
    items = []
    for item in mc:
        head = cut(item["choices"][item["label"]])[0]
        items.append({**item, "passage": f"{item['passage']}\n{head}",
                      "choices": [cut(c)[1] for c in item["choices"]]})
    return items


def ppl_documents(corpus: str | Path = SHAKESPEARE) -> list[dict]:
    """Every document's held-out text: {"play", "text"}."""
    return [{"play": name, "text": "\n".join(lines)} for name, lines in _plays(corpus)]


def _yaml(task: str, data: Path, body: str, n_items: int, seed: int) -> str:
    # JSON strings are YAML scalars, so json.dumps quotes every value safely.
    return (f"# Written by photon.integrations.tasks (version {VERSION}); regenerated by "
            f"`photon lm-eval`.\n"
            f"task: {task}\n"
            f"dataset_path: json\n"
            f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data.resolve()))}\n"
            f"test_split: test\n"
            f"{body}"
            f"metadata:\n  version: {VERSION}.0\n  items: {n_items}\n  seed: {seed}\n")


_MC = """output_type: multiple_choice
doc_to_text: passage
doc_to_choice: choices
doc_to_target: label
target_delimiter: "{delimiter}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""

_GEN = """output_type: generate_until
doc_to_text: "{{passage}}\\n"
doc_to_target: "{{choices[label]}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 64
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""

_PPL = """output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""


def _write(path: Path, text: str) -> None:
    """Write atomically: a reader never sees half a file, even with concurrent writers."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_tasks(folder: str | Path, n_items: int = 2000, seed: int = 0,
                corpus: str | Path = SHAKESPEARE) -> Path:
    """Write the four tasks' JSONL data and YAML configs into `folder`; returns it (give it
    to the harness as `--include_path`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    mc, cloze, ppl = (folder / f"{task}.jsonl" for task in (MC_TASK, CLOZE_TASK, PPL_TASK))
    items = mc_items(corpus, n_items, seed)
    _write(mc, "".join(json.dumps(x) + "\n" for x in items))
    _write(cloze, "".join(json.dumps(x) + "\n" for x in cloze_items(items)))
    _write(ppl, "".join(json.dumps(x) + "\n" for x in ppl_documents(corpus)))
    for task, data, body in ((MC_TASK, mc, _MC.format(delimiter="\\n")),
                             (CLOZE_TASK, cloze, _MC.format(delimiter="")),
                             (GEN_TASK, mc, _GEN), (PPL_TASK, ppl, _PPL)):
        _write(folder / f"{task}.yaml", _yaml(task, data, body, n_items, seed))
    return folder
