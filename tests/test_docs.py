"""The documentation stays true: links and anchors resolve, the package names only docs paths
that exist, every `photon` command in the README and the guides parses with the CLI's own
parser, and the README's quick start runs (with tiny settings substituted).

Read from the files' text, like a reader: links outside fenced code blocks, commands inside
them (```bash / ```sh / ``` blocks), continuation lines joined, shell comments dropped.
"""

import argparse
import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from photon.cli import build_parser
from tests.corpus import CORPUS

ROOT = Path(__file__).resolve().parents[1]
# Markdown a reader follows links in; commands are checked in the README and the guides.
LINKED = sorted({ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md",
                 *ROOT.glob("docs/**/*.md"), *ROOT.glob("experiments/**/*.md"),
                 *ROOT.glob("results/**/*.md"), *ROOT.glob("tests/data/**/*.md")})
GUIDES = sorted(ROOT.glob("docs/*.md"))
COMMANDS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *GUIDES]

FENCE = re.compile(r"^(\s*)(```|~~~)(.*)$")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def split_fences(text: str) -> tuple[str, list[tuple[str, list[str]]]]:
    """(the text outside fenced blocks, [(language, lines) of every fenced block])."""
    outside, blocks, current = [], [], None
    for line in text.splitlines():
        m = FENCE.match(line)
        if current is None and m:
            current = (m.group(3).strip().lower(), [])
        elif current is not None and m and not m.group(3).strip():
            blocks.append(current)
            current = None
        elif current is not None:
            current[1].append(line)
        else:
            outside.append(line)
    assert current is None, "an unclosed fenced block"
    return "\n".join(outside), blocks


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: its rendered text in lower case, punctuation dropped
    (letters, digits, '-', '_' and spaces stay), spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    text = "".join(c for c in text.strip().lower() if c.isalnum() or c in "-_ ")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    outside, _ = split_fences(path.read_text())
    seen: dict[str, int] = {}
    found = set()
    for line in outside.splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            found.add(base if n == 0 else f"{base}-{n}")
            seen[base] = n + 1
    return found


def links(path: Path) -> list[str]:
    outside, _ = split_fences(path.read_text())
    outside = re.sub(r"``[^`]*``|`[^`\n]*`(?!\])", "", outside)  # code spans outside link texts
    return [m.group(1) for m in LINK.finditer(outside)]


def test_every_relative_link_and_anchor_resolves():
    bad, checked = [], 0
    for md in LINKED:
        for target in links(md):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (md.parent / path).resolve() if path else md
            checked += 1
            if not dest.exists():
                bad.append(f"{md.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                bad.append(f"{md.relative_to(ROOT)}: {target} (no such heading)")
    assert not bad, "broken links:\n" + "\n".join(bad)
    assert checked > 100  # the check sees the links it should


def test_slug_follows_githubs_rule():
    assert slug("7. Bounded memory with a closed loop: `photon-small-bounded`") == \
        "7-bounded-memory-with-a-closed-loop-photon-small-bounded"
    assert slug("5. RecGen's gap is the price of reading the top stream") == \
        "5-recgens-gap-is-the-price-of-reading-the-top-stream"
    assert slug("Data: corpora, tokenizers and `photon data prepare`") == \
        "data-corpora-tokenizers-and-photon-data-prepare"
    assert slug("Several GPUs and nodes: DDP or FSDP2") == "several-gpus-and-nodes-ddp-or-fsdp2"


DOC_PATH = re.compile(r"(?<![\w./-])((?:docs|experiments|results)/[\w./-]*[\w/]|[\w./-]+\.md)\b")


def test_docs_paths_named_by_the_package_exist():
    """Help texts, comments and docstrings of photon/ and scripts/ name docs that exist."""
    bad, named = [], set()
    for src in sorted([*ROOT.glob("photon/**/*.py"), *ROOT.glob("scripts/*")]):
        for n, line in enumerate(src.read_text().splitlines(), 1):
            for m in DOC_PATH.finditer(line):
                path = m.group(1)
                named.add(path)
                if not (ROOT / path).exists():
                    bad.append(f"{src.relative_to(ROOT)}:{n}: {path}")
    assert not bad, "docs paths that do not exist:\n" + "\n".join(bad)
    assert "docs/PHOTON.md" in named


def test_package_names_in_the_guides_exist():
    """Every `photon.module.name` a guide or the README names imports (a moved or renamed
    module or function fails here)."""
    import importlib

    bad, n = [], 0
    for doc in COMMANDS:
        for name in sorted(set(re.findall(r"`(photon(?:\.\w+)+)", doc.read_text()))):
            parts, n = name.split("."), n + 1
            for i in range(len(parts), 0, -1):
                try:
                    obj = importlib.import_module(".".join(parts[:i]))
                except ModuleNotFoundError:
                    continue
                try:
                    for attr in parts[i:]:
                        obj = getattr(obj, attr)
                except AttributeError:
                    bad.append(f"{doc.relative_to(ROOT)}: {name}")
                break
    assert not bad, "names the package does not have:\n" + "\n".join(bad)
    assert n > 10


def commands(path: Path) -> list[tuple[str, list[str]]]:
    return commands_in(path.read_text())


def commands_in(text: str) -> list[tuple[str, list[str]]]:
    """(the line as written, the arguments after `photon`) of every photon command in a
    fenced shell block: `photon ...`, and `... -m photon.cli ...` (torchrun, python -m)."""
    _, blocks = split_fences(text)
    found = []
    for language, lines in blocks:
        if language not in ("", "bash", "sh", "shell", "console"):
            continue
        joined = "\n".join(lines).replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.strip().removeprefix("$ ")
            if "photon" not in line:
                continue
            words = shlex.split(line, comments=True)
            # A line may chain commands: cut it at the shell's separators.
            parts, part = [], []
            for w in words:
                if w in ("&&", "||", "|", ";", "&"):
                    parts.append(part)
                    part = []
                else:
                    part.append(w)
            parts.append(part)
            for p in parts:
                if p[:1] == ["photon"]:
                    found.append((line, p[1:]))
                elif "-m" in p and "photon.cli" in p and p.index("photon.cli") > 0:
                    found.append((line, p[p.index("photon.cli") + 1:]))
    return found


def strict(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The CLI's parser without abbreviations, so that a flag renamed to a longer name does
    not keep accepting the old one as its prefix."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                strict(sub)
    return parser


def test_every_photon_command_in_the_docs_parses():
    """A renamed or removed flag, verb or choice fails here. `photon lm-eval` passes flags it
    does not know to the harness, so only its own flags are checked. No line is skipped."""
    parser = strict(build_parser())
    bad, n = [], 0
    for doc in COMMANDS:
        for line, argv in commands(doc):
            n += 1
            err = io.StringIO()
            try:
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    args, unknown = parser.parse_known_args(argv)
            except SystemExit:
                bad.append(f"{doc.relative_to(ROOT)}: {line}\n    {err.getvalue().strip()}")
                continue
            if unknown and not getattr(args, "pass_through", False):
                bad.append(f"{doc.relative_to(ROOT)}: {line}\n    unknown: {unknown}")
    assert not bad, "commands the CLI does not accept:\n" + "\n".join(bad)
    assert n > 25  # the parse sees the commands it should


def test_the_check_catches_a_renamed_flag(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("```bash\nphoton train --max-step 3 && photon eval run --data x\n"
                   "torchrun --standalone -m photon.cli train \\\n    --batch-size 16\n```\n")
    found = commands(doc)
    assert [a for _, a in found] == [["train", "--max-step", "3"], ["eval", "run", "--data", "x"],
                                     ["train", "--batch-size", "16"]]
    _, unknown = strict(build_parser()).parse_known_args(found[0][1])
    assert "--max-step" in unknown  # a prefix of --max-steps is not the flag
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        strict(build_parser()).parse_known_args(["train", "--dtype", "fp16"])  # no such choice


def test_the_layout_the_docs_promise():
    """README under about 250 lines, its test command is what CI runs, every guide is in its
    table and starts with what the reader will be able to do, every result is indexed."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert "ruff check . && python -m pytest -q" in readme
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert "ruff check ." in ci and "python -m pytest -q" in ci
    for guide in GUIDES:
        if guide.name == "PHOTON.md":
            continue
        assert f"(docs/{guide.name})" in readme, f"{guide.name} is not in the README's table"
        first = guide.read_text().split("\n\n")[1]
        assert first.startswith("After this page you can"), guide.name
    index = (ROOT / "results" / "README.md").read_text()
    for result in sorted((ROOT / "results").glob("*.json")):
        assert f"({result.name})" in index, f"{result.name} is not in results/README.md"
        assert re.fullmatch(r"[\w.-]+_[\w.-]+_\d{4}-\d{2}-\d{2}\.json", result.name), result.name
    for folder in sorted(p for p in (ROOT / "experiments").iterdir() if p.is_dir()):
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}-[a-z0-9][a-z0-9.-]*", folder.name), folder.name
        assert (folder / "README.md").exists(), folder.name
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]
    cff = (ROOT / "CITATION.cff").read_text()
    assert "2512.20687" in cff and "cff-version" in cff


def quick_start() -> tuple[list[list[str]], str]:
    """The README's quick start: the arguments of its photon commands, its Python snippet."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    _, blocks = split_fences(section)
    code = "\n".join("\n".join(lines) for language, lines in blocks if language == "python")
    assert code, "the quick start lost its Python snippet"
    return [argv for _, argv in commands_in(section)], code


# What the quick start becomes in the test: the tiny preset on the fixed corpus, a few steps.
TINY = {
    "train": ["--preset", "photon-tiny", "--data", str(CORPUS), "--tokenizer", "bytes",
              "--seq-len", "64", "--batch-size", "4", "--max-steps", "3", "--eval-tokens",
              "256", "--dtype", "fp32"],
    "generate": ["--max-new-tokens", "8"],
    "eval": ["--data", str(CORPUS), "--max-bytes", "4000"],
    "bench": ["--models", "photon-tiny", "--workloads", "DE", "--modes", "hiergen",
              "--sweep", "32"],
    "serve": ["--max-batch", "4"],
}


@pytest.mark.e2e
def test_quick_start_runs_with_tiny_settings(tmp_path, capsys):
    """The README's quick start top to bottom, each command with TINY's flags appended (a
    later flag wins), the server on a free port and called with the README's own snippet."""
    from photon.serve.loadtest import ServerProcess

    argvs, code = quick_start()
    assert [a[0] for a in argvs] == ["train", "generate", "eval", "bench", "serve"]
    env = {**os.environ, "PHOTON_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    for argv in argvs[:-1]:
        argv = [*argv, *TINY[argv[0]]]
        if argv[0] == "bench":
            argv += ["--out", str(tmp_path / "bench")]
        done = subprocess.run([sys.executable, "-m", "photon.cli", *argv], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"photon {' '.join(argv)}:\n{done.stderr[-3000:]}"
    serve = argvs[-1]
    checkpoint = tmp_path / serve[1]
    assert checkpoint.is_dir() and checkpoint.name == "quick"
    port = serve[serve.index("--port") + 1]  # the test's server takes a free port instead
    rest = [a for i, a in enumerate(serve[2:], 2) if "--port" not in serve[i - 1:i + 1]]
    with ServerProcess(str(checkpoint), *rest, *TINY["serve"],
                       env={"OMP_NUM_THREADS": "1"}) as server:
        url = f"http://127.0.0.1:{port}/v1"
        assert url in code
        names: dict = {}
        exec(compile(code.replace(url, f"{server.url}/v1"), "README.md", "exec"), names)
        response = names["r"]
        assert response.usage.completion_tokens > 0 and response.model == "quick"
        assert capsys.readouterr().out.endswith("\n")
