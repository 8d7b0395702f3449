"""`photon data prepare`: tokenize a corpus once, in parallel, into memory-mapped token shards.

This is the writer of the prepared directory (its layout and its reader: `photon.data.shards`);
`packed_dir` gives a run the prepared directory of any corpus, preparing it into the cache on
first use.

The work happens in `DIR/.partial/`. The source is cut into pieces (`photon.data.sources`);
a worker tokenizes one piece at a time into `pieces/N.bin` plus a table of its documents
(tokens, bytes, hash, split), each written under a temporary name and renamed when whole, so
a rerun after a crash keeps every finished piece. When all pieces are done, the split is
decided (holding out N documents needs every hash) and the shards are written by copying the
documents in source order. The shards therefore depend on the documents and the settings
only: not on the number of workers, nor on how the documents are laid out in files.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing as mp
import os
import queue
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, suppress
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from photon.data.corpus import (
    DocumentHash,
    Split,
    cache_dir,
    corpus_key,
    resolve_corpus,
    train_bpe,
)
from photon.data.shards import FORMAT, MANIFEST, PARTIAL, is_prepared, read_manifest
from photon.data.sources import Piece, PieceReader, plan_pieces
from photon.data.tokenizer import Tokenizer
from photon.errors import DataError
from photon.locking import LOCK_FILE, locked
from photon.progress import progress_bar

SHARD_TOKENS = 1 << 28  # tokens per shard file (512 MiB of uint16)
BATCH_BYTES = 1 << 20  # text tokenized per call
TABLE = np.dtype([("tokens", np.int64), ("bytes", np.int64), ("hash", np.uint64),
                  ("split", np.int8)])
BY_HASH, TRAIN, VAL = 0, 1, 2  # a document's split code in a piece table
SPLIT_CODES = {None: BY_HASH, "train": TRAIN, "val": VAL}


# --- a run's prepared directory


def packed_dir(corpus: str | Path, tokenizer: Tokenizer) -> Path:
    """A prepared directory of `corpus` tokenized by `tokenizer`: the corpus itself if it is
    one (made with this tokenizer), else one prepared into the cache (built once)."""
    if is_prepared(corpus):
        made_with = read_manifest(corpus)["tokenizer"]
        if made_with["fingerprint"] != tokenizer.fingerprint():
            raise DataError(f"{corpus} was prepared with another tokenizer ({made_with['kind']}, "
                            f"fingerprint {made_with['fingerprint']}) than this run's "
                            f"({tokenizer.kind}, {tokenizer.fingerprint()})")
        return Path(corpus)
    files = resolve_corpus(corpus)
    key = f"{corpus_key(files)}-{tokenizer.fingerprint()}-{Split()}-{FORMAT}"
    target = cache_dir() / "tokens" / hashlib.sha256(key.encode()).hexdigest()[:16]
    if not (target / MANIFEST).is_file():  # progress shows off a terminal too (a log)
        prepare(corpus, target, tokenizer, workers=1, progress=True, wait=True)
    return target


# --- preparing


def prepare(source: str | Path, out: str | Path, tokenizer: Tokenizer | str = "bpe", *,
            vocab_size: int = 4096, text_field: str = "text", split: Split | None = None,
            workers: int | None = None, shard_tokens: int | None = None,
            max_record: int | None = None, progress: bool | None = True,
            wait: bool = False) -> dict[str, Any]:
    """Tokenize `source` into the prepared directory `out` and return its manifest plus the
    throughput of this run. `tokenizer` is a Tokenizer, "bytes", "bpe" (trained here on at
    most `BPE_SAMPLE_BYTES` of training text) or a tokenizer.json path; a record over
    `max_record` bytes (default `MAX_RECORD_BYTES`) is an error. Resumes unfinished work of
    the same settings; `progress=None` shows a bar only on a terminal; `wait` waits for
    another prepare of `out` instead of failing."""
    split, shard_tokens = split or Split(), shard_tokens or SHARD_TOKENS
    files = resolve_corpus(source)
    for name, value in (("shard-tokens", shard_tokens), ("workers", workers or 1)):
        if value < 1:
            raise DataError(f"--{name} must be at least 1, got {value}")
    out = Path(out)
    if out.is_dir() and not {MANIFEST, PARTIAL} & {p.name for p in out.iterdir()} \
            and any(p.name != LOCK_FILE for p in out.iterdir()):
        raise DataError(f"{out} is a folder but not a prepared directory; give a new or "
                        "empty --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create {out}: {e.strerror or e}") from None
    if isinstance(tokenizer, str) and tokenizer not in ("bpe", "bytes"):
        tokenizer = Tokenizer.from_file(tokenizer)
    settings = {
        "format": FORMAT, "files": [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns]
                                    for p in files],
        "text_field": text_field, "split": asdict(split), "shard_tokens": shard_tokens,
        "tokenizer": (f"bpe-{vocab_size}" if tokenizer == "bpe" else tokenizer
                      if tokenizer == "bytes" else tokenizer.fingerprint()),
    }
    try:
        with locked(out, f"another photon data prepare is writing {out}", DataError, wait):
            if (out / MANIFEST).is_file():
                manifest = read_manifest(out)
                if manifest.get("settings") != settings:
                    raise DataError(f"{out} already holds a corpus prepared from another "
                                    "source or settings; choose another --out or delete it")
                shutil.rmtree(out / PARTIAL, ignore_errors=True)  # killed after the manifest
                return {**manifest, "already_prepared": True}
            return _prepare(source, out, files, tokenizer, vocab_size, settings, split,
                            (text_field, max_record), workers, progress)
    except OSError as e:  # a read-only folder, a full disk, a source that went away
        where = f" ({e.filename})" if e.filename else ""
        raise DataError(f"cannot prepare {out}: {e.strerror or e}{where}") from None


def _prepare(source, out: Path, files: list[Path], tokenizer: Tokenizer | str,
             vocab_size: int, settings: dict, split: Split, reading: tuple[str, int | None],
             workers: int | None, progress: bool | None) -> dict[str, Any]:
    """`prepare` under its lock; `reading` is (text field, largest record)."""
    work = out / PARTIAL
    if (work / "settings.json").is_file() and \
            json.loads((work / "settings.json").read_text()) != settings:
        print(f"photon data prepare: discarding the unfinished work in {work} (other source "
              "or settings)", file=sys.stderr)
        shutil.rmtree(work)
    (work / "pieces").mkdir(parents=True, exist_ok=True)
    _write_atomic(work / "settings.json", json.dumps(settings, indent=2))
    tokenizer = _work_tokenizer(work / "tokenizer", source, tokenizer, vocab_size, split,
                                reading)
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    pieces = plan_pieces(files)
    todo = [i for i in range(len(pieces)) if not _table_path(work, i).is_file()]
    started = time.monotonic()
    bar = _Progress(pieces, todo, work, progress)
    job = (str(work), str(work / "tokenizer"), reading, split.tail, np.dtype(dtype).name)
    workers = max(1, min(workers or len(os.sched_getaffinity(0)), len(todo)))
    try:
        if workers == 1:
            _init_worker(None, None, *job)
            cpu_s = sum(_timed_piece(i, pieces[i], bar.update) for i in todo)
        else:
            cpu_s = _run_pool(workers, job, [(i, pieces[i]) for i in todo], bar)
    except BaseException:
        bar.close(keep=False)  # the error message alone stays on the terminal
        raise
    bar.close()
    elapsed = time.monotonic() - started
    manifest = {"format": FORMAT, "source": str(source), "settings": settings,
                "tokenizer": {"kind": tokenizer.kind, "fingerprint": tokenizer.fingerprint(),
                              "vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id},
                "dtype": np.dtype(dtype).name, "split": asdict(split), "files": len(files),
                "pieces": len(pieces),
                **_assemble(out, work, len(pieces), split, dtype, settings["shard_tokens"])}
    tokenizer.save(out)
    _write_atomic(out / MANIFEST, json.dumps(manifest, indent=2))
    shutil.rmtree(work)
    mb = 1e6 * max(elapsed, 1e-9)
    return {**manifest, "workers": workers, "pieces_resumed": len(pieces) - len(todo),
            "elapsed_s": elapsed, "worker_cpu_s": cpu_s,
            "text_mb_per_s": bar.text_bytes / mb, "disk_mb_per_s": bar.disk_bytes / mb,
            "text_mb_per_cpu_s": bar.text_bytes / 1e6 / max(cpu_s, 1e-9)}


def _work_tokenizer(folder: Path, source, tokenizer: Tokenizer | str, vocab_size: int,
                    split: Split, reading: tuple[str, int | None]) -> Tokenizer:
    """The tokenizer saved with the unfinished work (a rerun reuses it), else a new one."""
    if (folder / "tokenizer_config.json").is_file():
        return Tokenizer.load(folder)
    if tokenizer == "bytes":
        tokenizer = Tokenizer.bytes()
    elif tokenizer == "bpe":
        tokenizer = train_bpe(source, split, reading[0], vocab_size, reading[1])
    tokenizer.save(folder.with_name("tokenizer.tmp"))
    os.replace(folder.with_name("tokenizer.tmp"), folder)
    return tokenizer


# --- workers: one piece at a time, each piece to its own files

_job: dict[str, Any] = {}


@contextmanager
def _one_thread() -> Iterator[None]:
    """HF tokenizers on one thread (it reads this variable at every call): a worker is one
    core, so --workers alone sets the parallelism."""
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved


def _init_worker(progress, stop, work: str, tokenizer_dir: str,
                 reading: tuple[str, int | None], tail: float | None, dtype: str) -> None:
    if progress is not None:  # a pool process: Ctrl-C is the parent's to handle
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    _job.update(progress=progress, stop=stop, work=Path(work), reading=reading,
                tokenizer=Tokenizer.load(tokenizer_dir), tail=tail, dtype=np.dtype(dtype))


def _pool_task(task: tuple[int, Piece]) -> float:
    return _timed_piece(*task, report=lambda *counts: _job["progress"].put(counts))


def _timed_piece(index: int, piece: Piece, report: Callable[..., None]) -> float:
    """`_tokenize_piece` on one thread; returns the CPU seconds it took."""
    started = time.process_time()
    with _one_thread():
        _tokenize_piece(index, piece, report)
    return time.process_time() - started


def _table_path(work: Path, index: int) -> Path:
    return work / "pieces" / f"{index:06d}.npy"


def _tokenize_piece(index: int, piece: Piece, report: Callable[..., None]) -> None:
    """Tokenize one piece into pieces/N.bin and its document table pieces/N.npy;
    `report(documents, tokens, text_bytes, disk_bytes)` receives progress increments."""
    table_path = _table_path(_job["work"], index)
    tokens_path = table_path.with_suffix(".bin")
    text_field, max_record = _job["reading"]
    reader = PieceReader(piece, text_field, _job["tail"], max_record)
    stop = _job["stop"]
    if stop is not None and stop.is_set():
        return
    temporary = [tokens_path.with_suffix(".bin.tmp"), table_path.with_suffix(".tmp")]
    try:
        with open(temporary[0], "wb") as out:
            writer = _PieceWriter(out, reader, report)
            for doc in reader:
                if stop is not None and stop.is_set():
                    return  # another worker failed or Ctrl-C: leave this piece unfinished
                h, n_bytes = DocumentHash(), 0
                for block in doc.blocks:
                    data = block.encode("utf-8")
                    h.update(data)
                    n_bytes += len(data)
                    writer.add(block)
                writer.end_document(n_bytes, h.value, SPLIT_CODES[doc.split])
            writer.flush()
        os.replace(temporary[0], tokens_path)
        with open(temporary[1], "wb") as f:
            np.save(f, np.array(writer.rows, dtype=TABLE))
        os.replace(temporary[1], table_path)  # the piece is done
    finally:  # an unfinished piece leaves nothing of itself behind
        for path in temporary:
            path.unlink(missing_ok=True)
    report(0, 0, 0, piece.size - writer.reported)


class _PieceWriter:
    """Tokenizes text blocks in batches of about `BATCH_BYTES` (one `encode_batch` call:
    far less overhead per document than one call each) and appends the tokens, each
    document followed by the end-of-document token, to `out`; `rows` is the document
    table."""

    def __init__(self, out, reader: PieceReader, report: Callable[..., None]) -> None:
        self.out, self.reader, self.report = out, reader, report
        self.tokenizer, self.dtype = _job["tokenizer"], _job["dtype"]
        self.eos = [] if self.tokenizer.eos_id is None else [self.tokenizer.eos_id]
        self.rows: list[tuple[int, int, int, int]] = []
        self.items: list[str | tuple[int, int, int]] = []  # blocks and document ends
        self.size = self.doc_tokens = self.reported = 0

    def add(self, block: str) -> None:
        self.items.append(block)
        self.size += len(block)
        if self.size >= BATCH_BYTES:
            self.flush()

    def end_document(self, n_bytes: int, doc_hash: int, split: int) -> None:
        self.items.append((n_bytes, doc_hash, split))

    def flush(self) -> None:
        texts = [item for item in self.items if isinstance(item, str)]
        encoded = iter(self.tokenizer.encode_batch(texts))
        parts, docs, tokens, text_bytes = [], 0, 0, 0
        for item in self.items:
            if isinstance(item, str):
                parts.append(next(encoded))
                self.doc_tokens += len(parts[-1])
            elif item[0]:  # the end of a non-empty document
                parts.append(self.eos)
                self.doc_tokens += len(self.eos)
                self.rows.append((self.doc_tokens, *item))
                docs, tokens, text_bytes = docs + 1, tokens + self.doc_tokens, \
                    text_bytes + item[0]
                self.doc_tokens = 0
        ids = np.fromiter(itertools.chain.from_iterable(parts), dtype=self.dtype)
        self.out.write(ids.tobytes())
        self.items, self.size = [], 0
        self.report(docs, tokens, text_bytes, self.reader.consumed - self.reported)
        self.reported = self.reader.consumed


def _run_pool(workers: int, job: tuple, tasks: list[tuple[int, Piece]],
              bar: _Progress) -> float:
    """Tokenize `tasks` in `workers` processes; progress comes back through a queue. On an
    error or Ctrl-C the other workers stop at their next document. Returns the workers'
    CPU seconds."""
    # Workers fork from a clean server process that imported this module once: cheaper than
    # spawning each (photon imports torch), safer than forking a parent that holds threads.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    progress, stop = ctx.Queue(), ctx.Event()

    def drain() -> None:
        with suppress(queue.Empty):
            while True:
                bar.update(*progress.get_nowait())

    pool = ProcessPoolExecutor(workers, ctx, _init_worker, (progress, stop, *job))
    cpu_s = 0.0
    try:
        pending = {pool.submit(_pool_task, task) for task in tasks}
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
            drain()
            cpu_s += sum(future.result() for future in done)  # re-raises a worker's error
    except BrokenProcessPool:
        raise DataError("a prepare worker died (out of memory?); run the prepare again to "
                        "resume") from None
    finally:
        stop.set()
        pool.shutdown(cancel_futures=True)
        drain()
    return cpu_s


class _Progress:
    """A progress bar over the source's bytes on disk, with documents, tokens and text."""

    def __init__(self, pieces: list[Piece], todo: list[int], work: Path,
                 show: bool | None) -> None:
        done = [i for i in range(len(pieces)) if i not in set(todo)]
        tables = [np.load(_table_path(work, i)) for i in done]
        self.docs = sum(len(t) for t in tables)
        self.tokens = sum(int(t["tokens"].sum()) for t in tables)
        self.text_bytes = self.disk_bytes = 0  # this run's work, for throughput
        self.bar = progress_bar(total=sum(p.size for p in pieces), unit="B", unit_scale=True,
                                initial=sum(pieces[i].size for i in done), desc="prepare",
                                dynamic_ncols=True, show=show,
                                mininterval=0.5 if sys.stderr.isatty() else 10)

    def update(self, docs: int, tokens: int, text_bytes: int, disk_bytes: int) -> None:
        self.docs, self.tokens = self.docs + docs, self.tokens + tokens
        self.text_bytes, self.disk_bytes = self.text_bytes + text_bytes, \
            self.disk_bytes + disk_bytes
        self.bar.set_postfix(docs=f"{self.docs:,}", tokens=f"{self.tokens:,}", refresh=False)
        self.bar.update(disk_bytes)

    def close(self, keep: bool = True) -> None:
        self.bar.leave = keep
        self.bar.close()


# --- assembling the shards


def _assemble(out: Path, work: Path, n_pieces: int, split: Split, dtype,
              shard_tokens: int) -> dict[str, Any]:
    """Decide the split of every document and copy the documents, in order, into the
    train and val shards of `out`; returns the counts of both splits."""
    tables = [np.load(_table_path(work, i)) for i in range(n_pieces)]
    docs = np.concatenate(tables)
    if not len(docs):
        raise DataError("the source holds no document with text")
    val = _held_out(docs, split)
    if not val.any():
        raise DataError(f"no document is held out for validation ({len(docs)} documents, "
                        f"--val-fraction {split.fraction}); raise the fraction or hold out a "
                        "number of documents (photon data prepare --val-documents)")
    if val.all():
        raise DataError(f"every one of the {len(docs)} documents is held out for validation; "
                        "lower --val-documents or --val-fraction")
    for stale in [*out.glob("train-*.bin"), *out.glob("val-*.bin")]:
        stale.unlink()
    writers = {name: _ShardWriter(out, name, dtype, shard_tokens) for name in ("train", "val")}
    first = 0
    for i, table in enumerate(tables):
        mask, first = val[first:first + len(table)], first + len(table)
        path = _table_path(work, i).with_suffix(".bin")
        if not len(table) or not path.stat().st_size:
            continue
        tokens = np.memmap(path, dtype=dtype, mode="r")
        ends = np.cumsum(table["tokens"])
        # Runs of consecutive documents on the same side are copied as one slice.
        bounds = [0, *(np.flatnonzero(np.diff(mask.astype(np.int8))) + 1), len(table)]
        for a, b in itertools.pairwise(bounds):
            start = int(ends[a - 1]) if a else 0
            writers["val" if mask[a] else "train"].write(tokens[start:int(ends[b - 1])])
    counts = {}
    for name, side in (("train", ~val), ("val", val)):
        counts[name] = {"documents": int(side.sum()), "tokens": int(docs["tokens"][side].sum()),
                        "bytes": int(docs["bytes"][side].sum()),
                        "shards": writers[name].close()}
    return counts


def _held_out(docs: np.ndarray, split: Split) -> np.ndarray:
    """Which documents go to validation (see `photon.data.corpus.Split`)."""
    by_hash = docs["split"] == BY_HASH
    if split.documents is None:
        return (docs["split"] == VAL) | (by_hash & (docs["hash"] < np.uint64(
            int(split.fraction * 2.0**64))))
    candidates = np.flatnonzero(by_hash)
    if split.documents > len(candidates):
        raise DataError(f"--val-documents {split.documents} is more than the "
                        f"{len(candidates)} documents of the source")
    order = np.lexsort((candidates, docs["hash"][candidates]))  # by hash, ties by position
    val = np.zeros(len(docs), dtype=bool)
    val[candidates[order[:split.documents]]] = True
    return val


class _ShardWriter:
    """Appends tokens to `{name}-00000.bin`, `{name}-00001.bin`, ... of `shard_tokens` each."""

    def __init__(self, out: Path, name: str, dtype, shard_tokens: int) -> None:
        self.out, self.name, self.dtype, self.size = out, name, dtype, shard_tokens
        self.shards: list[dict[str, Any]] = []
        self.file = None

    def write(self, tokens: np.ndarray) -> None:
        while len(tokens):
            if self.file is None or self.shards[-1]["tokens"] == self.size:
                self._next()
            room = self.size - self.shards[-1]["tokens"]
            tokens[:room].tofile(self.file)
            self.shards[-1]["tokens"] += len(tokens[:room])
            tokens = tokens[room:]

    def _next(self) -> None:
        self._finish()
        self.shards.append({"file": f"{self.name}-{len(self.shards):05d}.bin", "tokens": 0})
        self.file = open(self.out / self.shards[-1]["file"], "wb")  # noqa: SIM115

    def _finish(self) -> None:
        if self.file is not None:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()

    def close(self) -> list[dict[str, Any]]:
        self._finish()
        return self.shards


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
