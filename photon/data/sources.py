"""Reading corpora: plain text, JSON Lines and Parquet files, possibly compressed.

A source is a file, a folder (searched recursively, hidden files skipped) or a glob. Every
file is read by its name:

- `*.jsonl`, `*.ndjson`, `*.json`: JSON Lines, one document per line in the `text_field`
  (Python's `json`, one line at a time, so an error names its line);
- `*.parquet`: one document per row of the `text_field` column (`pyarrow`, one row group
  at a time; Parquet compresses inside the file);
- anything else: plain text, the whole file one document (UTF-8: a file that is not,
  such as a program, is refused, see `check_text`).

A `.gz`, `.zst`, `.bz2` or `.lz4` suffix on text or JSON Lines means a compressed file,
decompressed as a stream by `pyarrow`. Nothing is read whole except a compressed text file
(one document, held in memory while it is tokenized).

Work is cut into `Piece`s that can be read independently, in parallel: a text file, a
compressed JSON Lines file, a byte range of a plain JSON Lines file (cut at line breaks), a
Parquet row group. Reading a piece yields `Document`s in file order.
"""

from __future__ import annotations

import codecs
import glob
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from photon.errors import DataError

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
CODECS = {".gz": "gzip", ".zst": "zstd", ".bz2": "bz2", ".lz4": "lz4"}
PIECE_BYTES = 16 << 20  # plain JSON Lines files are read in byte ranges of about this size
BLOCK_BYTES = 1 << 20  # plain text is read and tokenized in blocks of about this size
SNIFF_BYTES = 64 << 10  # a text file's first bytes, checked to be UTF-8 text
MAX_INVALID = 0.01  # more invalid UTF-8 than this share of them: not text


@dataclass(frozen=True)
class Piece:
    """Part of one file that a worker reads on its own: bytes [start, stop) of a plain JSON
    Lines file, row groups [start, stop) of a Parquet file, else the whole file."""

    path: str
    format: str  # "text", "jsonl" or "parquet"
    codec: str | None  # pyarrow codec name of a compressed file
    start: int
    stop: int
    first_record: int  # records before this piece in its file (Parquet; 0 otherwise)
    size: int  # bytes on disk, for progress


@dataclass
class Document:
    """One document's text, in blocks (one block for a record; read them before the next
    document, a text file's are read lazily). `split` is "train" or "val" when the reader
    already knows (the head and the tail of a text file), else None: the split is decided
    from the document's hash."""

    blocks: Iterator[str] | list[str]
    split: str | None = None


def file_format(path: Path) -> tuple[str, str | None]:
    """(format, codec) of a file, from its name."""
    suffixes = [s.lower() for s in path.suffixes]
    codec = CODECS.get(suffixes[-1]) if suffixes else None
    inner = suffixes[-2] if codec and len(suffixes) > 1 else (suffixes[-1] if suffixes else "")
    if inner == ".parquet":
        if codec:
            raise DataError(f"{path}: a compressed Parquet file cannot be read as a stream; "
                            "Parquet compresses inside the file (e.g. pyarrow's "
                            "compression='zstd'), leave the file itself uncompressed")
        return "parquet", None
    return ("jsonl" if inner in JSONL_SUFFIXES else "text"), codec


def source_files(source: str | Path) -> list[Path]:
    """The files of a file, folder or glob, in a fixed (sorted) order."""
    path = Path(source)
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file()
                      and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if glob.has_magic(str(source)):
        files = sorted(Path(p) for p in glob.glob(str(source), recursive=True)
                       if Path(p).is_file())
        if files:
            return files
        raise DataError(f"{source}: the pattern matches no file")
    raise DataError(f"{source}: no such file or folder (give a text, JSON Lines or Parquet "
                    "file, a folder of them, a glob, or 'shakespeare')")


def plan_pieces(files: list[Path], piece_bytes: int | None = None) -> list[Piece]:
    """Cut `files` into pieces (plain JSON Lines into ranges of `piece_bytes`, default
    `PIECE_BYTES`); the cut depends on the files only, never on how many workers read them."""
    piece_bytes = piece_bytes or PIECE_BYTES
    pieces = []
    for path in files:
        fmt, codec = file_format(path)
        size = path.stat().st_size
        if fmt == "parquet":
            groups = _parquet_file(path).metadata
            first = 0
            for g in range(groups.num_row_groups):
                meta = groups.row_group(g)
                disk = sum(meta.column(c).total_compressed_size for c in range(meta.num_columns))
                pieces.append(Piece(str(path), fmt, None, g, g + 1, first, disk))
                first += meta.num_rows
        elif fmt == "jsonl" and codec is None and size > piece_bytes:
            for start in range(0, size, piece_bytes):
                stop = min(start + piece_bytes, size)
                pieces.append(Piece(str(path), fmt, None, start, stop, 0, stop - start))
        else:
            pieces.append(Piece(str(path), fmt, codec, 0, size, 0, size))
    return pieces


class PieceReader:
    """Iterates over the documents of a piece; `consumed` is how many of the piece's bytes
    on disk have been read so far (for progress)."""

    def __init__(self, piece: Piece, text_field: str = "text",
                 tail_fraction: float | None = None) -> None:
        self.piece, self.text_field, self.tail_fraction = piece, text_field, tail_fraction
        self.consumed = 0

    def __iter__(self) -> Iterator[Document]:
        p = self.piece
        if p.format == "parquet":
            return self._parquet()
        if p.format == "jsonl":
            return self._jsonl()
        return self._text()

    # --- plain text: one document, or its head (train) and tail (val)

    def _text(self) -> Iterator[Document]:
        p = self.piece
        with open(p.path, "rb") as raw:
            f, size = raw, p.size
            if p.codec:  # one document: decompress it into memory, then read it the same way
                f = io.BytesIO(io.BufferedReader(_decompress(raw, p), BLOCK_BYTES).read())
                size = len(f.getvalue())
            check_text(f, p.path)
            if self.tail_fraction is None:
                yield Document(text_blocks(f, 0, size))
            else:
                cut = tail_cut(f, size, self.tail_fraction)
                yield Document(text_blocks(f, 0, cut), "train")
                yield Document(text_blocks(f, cut, size), "val")
        self.consumed = p.size

    # --- JSON Lines: one document per line

    def _jsonl(self) -> Iterator[Document]:
        p = self.piece
        with open(p.path, "rb") as raw:
            f = io.BufferedReader(_decompress(raw, p), BLOCK_BYTES) if p.codec else raw
            pos = p.start
            if pos > 0:  # the line that crosses `start` belongs to the previous piece
                raw.seek(pos - 1)
                pos += len(raw.readline()) - 1
            line_no = None if pos else 0  # counted from the file's start only when cheap
            while p.codec or pos < p.stop:
                line = f.readline()
                if not line:
                    break
                if line_no is not None:
                    line_no += 1
                where = (line_no, pos)
                pos += len(line)
                self.consumed = (raw.tell() if p.codec else pos) - p.start
                if line.strip():
                    yield Document([self._record_text(line, where)])

    def _record_text(self, line: bytes, where: tuple[int | None, int]) -> str:
        try:
            record = json.loads(line)
        except ValueError as e:  # bad JSON or bad UTF-8
            raise DataError(f"{self._line_name(where)}: not valid JSON ({e})") from None
        if not isinstance(record, dict):
            raise DataError(f"{self._line_name(where)}: a JSON {type(record).__name__}, not an "
                            "object (JSON Lines: one object per line)")
        text = record.get(self.text_field)
        if not isinstance(text, str):
            fields = ", ".join(list(record)[:10])
            found = "no" if text is None else f"a {type(text).__name__} in the"
            raise DataError(f"{self._line_name(where)}: {found} {self.text_field!r} field "
                            f"(its fields: {fields}); choose one with --text-field")
        return text

    def _line_name(self, where: tuple[int | None, int]) -> str:
        line_no, offset = where
        if line_no is None:  # a piece after the first: count the lines before it (errors only)
            line_no = 1
            with open(self.piece.path, "rb") as f:
                while offset > 0:
                    chunk = f.read(min(offset, BLOCK_BYTES))
                    line_no, offset = line_no + chunk.count(b"\n"), offset - len(chunk)
        return f"{self.piece.path}: line {line_no}"

    # --- Parquet: one document per row

    def _parquet(self) -> Iterator[Document]:
        pa = _pyarrow()
        p = self.piece
        pf = _parquet_file(Path(p.path))
        schema = pf.schema_arrow
        if self.text_field not in schema.names:
            raise DataError(f"{p.path}: no {self.text_field!r} column (its columns: "
                            f"{', '.join(schema.names[:10])}); choose one with --text-field")
        kind = schema.field(self.text_field).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise DataError(f"{p.path}: column {self.text_field!r} holds {kind}, not text")
        record = p.first_record
        batches = pf.iter_batches(batch_size=1024, row_groups=list(range(p.start, p.stop)),
                                  columns=[self.text_field], use_threads=False)
        rows = pf.metadata.row_group(p.start).num_rows
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except (OSError, pa.ArrowException) as e:
                raise DataError(f"{p.path}: row group {p.start} (records {record + 1}-"
                                f"{p.first_record + rows}) is unreadable: {_line(e)}") from None
            column = batch.column(0)
            if column.null_count:
                first = column.is_null().index(True).as_py()
                raise DataError(f"{p.path}: record {record + first + 1} has no "
                                f"{self.text_field!r} (null)")
            for text in column.to_pylist():
                yield Document([text])
            record += len(column)
            self.consumed = p.size * (record - p.first_record) // max(rows, 1)


def _pyarrow():
    """pyarrow, an optional dependency (`pip install 'photon[data]'`)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet  # noqa: F401 (makes pa.parquet available)
    except ImportError:
        raise DataError("reading Parquet or compressed files needs pyarrow: pip install "
                        "'photon[data]' (or pip install pyarrow)") from None
    return pa


def _parquet_file(path: Path):
    pa = _pyarrow()
    try:
        return pa.parquet.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: not a readable Parquet file: {_line(e)}") from None


def _decompress(raw, piece: Piece):
    return _Checked(_pyarrow().input_stream(raw, compression=piece.codec), piece.path)


class _Checked(io.RawIOBase):
    """A decompressing stream whose errors (a truncated or corrupt file) name the file."""

    def __init__(self, stream, path: str) -> None:
        self._stream, self._path = stream, path

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            return self._stream.readinto(buffer)
        except Exception as e:  # pyarrow raises OSError or ArrowInvalid on corrupt input
            raise DataError(f"{self._path}: cannot decompress: {_line(e)}") from None


def _line(error: Exception) -> str:
    """A library's error message on one line (pyarrow's may span several)."""
    return " ".join(str(error).split())


def check_text(f, path: str) -> None:
    """Refuse a file that is not UTF-8 text (a program, an image, UTF-16, Latin-1), judged
    by its first `SNIFF_BYTES`: a NUL byte, or more than `MAX_INVALID` of them not UTF-8.
    A stray bad byte in real text passes (it becomes U+FFFD)."""
    f.seek(0)
    sample = f.read(SNIFF_BYTES)
    if b"\0" in sample:
        raise DataError(f"{path}: not UTF-8 text (it holds NUL bytes: a binary file?); give "
                        "text, JSON Lines or Parquet files")
    # Incremental and not final: a character cut by the end of the sample is no error.
    text = codecs.getincrementaldecoder("utf-8")("replace").decode(sample)
    bad = text.count("\ufffd") - sample.count("\ufffd".encode())
    if bad > MAX_INVALID * len(sample):
        raise DataError(f"{path}: not UTF-8 text ({bad:,} invalid sequences in its first "
                        f"{len(sample):,} bytes); convert it to UTF-8 (e.g. iconv -f latin1 "
                        "-t utf-8) or give text, JSON Lines or Parquet files")


def tail_cut(f, size: int, fraction: float) -> int:
    """Where the last `fraction` of a text begins: the first line break after
    `size * (1 - fraction)`, so the held-out tail starts on a line of its own."""
    cut = int(size * (1 - fraction))
    f.seek(cut)
    newline = f.read(BLOCK_BYTES).find(b"\n")
    return cut + newline + 1 if newline >= 0 else cut


def text_blocks(f, start: int, end: int) -> Iterator[str]:
    """Bytes [start, end) of a binary file as text, in blocks that end at line breaks
    (invalid UTF-8 becomes U+FFFD)."""
    pos, carry = start, b""
    while True:
        f.seek(pos)
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
