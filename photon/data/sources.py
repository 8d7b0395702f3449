"""Reading corpora: plain text, JSON Lines and Parquet files, possibly compressed.

A source is a file, a folder (searched recursively, hidden files skipped) or a glob. Every
file is read by its name:

- `*.jsonl`, `*.ndjson`, `*.json`: JSON Lines, one document per line in the `text_field`
  (Python's `json`, one line at a time, so an error names its line);
- `*.parquet`: one document per row of the `text_field` column (`pyarrow`, a batch of rows
  at a time; Parquet compresses inside the file);
- anything else: plain text, the whole file one document (UTF-8: a file that is not,
  such as a program, is refused, see `check_text`).

A `.gz`, `.zst`, `.bz2` or `.lz4` suffix on text or JSON Lines means a compressed file,
decompressed as a stream by `pyarrow`.

Memory stays flat whatever the input: every file is read as a stream, and text comes out in
blocks of about `BLOCK_BYTES` that end at line breaks, each tokenized on its own (a record
too). Holding out a compressed text file's tail takes a first pass that only counts its
bytes. A record (a JSON line, a Parquet value) is held whole, so it may be at most
`max_record` bytes (`MAX_RECORD_BYTES`, `photon data prepare --max-record-mb`); a longer one,
or one whose text is not Unicode (a lone surrogate escape such as `"\\ud800"`, invalid
UTF-8 in Parquet), is an error that names its file and record.

Work is cut into `Piece`s that can be read independently, in parallel: a text file, a
compressed JSON Lines file, a byte range of a plain JSON Lines file (cut at line breaks), a
Parquet row group. Reading a piece yields `Document`s in file order.
"""

from __future__ import annotations

import codecs
import glob
import io
import json
import math
import re
import sys
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
MAX_RECORD_BYTES = 64 << 20  # a JSON line or Parquet value, held whole while it is read
SURROGATE = re.compile(r"[\ud800-\udfff]")  # half of a UTF-16 pair: not a character


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
    """One document's text, in blocks, read lazily: read them before the next document.
    `split` is "train" or "val" when the reader already knows (the head and the tail of a
    text file), else None: the split is decided from the document's hash."""

    blocks: Iterator[str]
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
    on disk have been read so far (for progress). A record (JSON line, Parquet value) over
    `max_record` bytes is refused."""

    def __init__(self, piece: Piece, text_field: str = "text",
                 tail_fraction: float | None = None, max_record: int | None = None) -> None:
        self.piece, self.text_field, self.tail_fraction = piece, text_field, tail_fraction
        # readline's limit is a C ssize_t: beyond it, no record could be read anyway
        self.max_record = min(max_record or MAX_RECORD_BYTES, sys.maxsize - 1)
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
        # The tail's place needs the text's size: a compressed file's takes a first pass.
        size = p.size if p.codec is None or self.tail_fraction is None else \
            self._text_size()
        with open(p.path, "rb") as raw:
            f = _Pushback(io.BufferedReader(_decompress(raw, p), BLOCK_BYTES) if p.codec
                          else raw)
            sample = f.read(SNIFF_BYTES)
            check_text(sample, p.path)
            f.unread(sample)
            if self.tail_fraction is None:
                yield Document(text_blocks(f))
            else:
                head = int(size * (1 - self.tail_fraction))
                yield Document(text_blocks(f, head, finish_line=True), "train")
                yield Document(text_blocks(f), "val")
        self.consumed = p.size

    def _text_size(self) -> int:
        """The decompressed size of a compressed text file, read through once."""
        with open(self.piece.path, "rb") as raw:
            f, size = _decompress(raw, self.piece), 0
            buffer = bytearray(BLOCK_BYTES)
            while n := f.readinto(buffer):
                size += n
        return size

    # --- JSON Lines: one document per line

    def _jsonl(self) -> Iterator[Document]:
        p = self.piece
        with open(p.path, "rb") as raw:
            f = io.BufferedReader(_decompress(raw, p), BLOCK_BYTES) if p.codec else raw
            pos = p.start
            if pos > 0:  # the line that crosses `start` belongs to the previous piece
                raw.seek(pos - 1)
                pos += _skip_line(raw) - 1
            line_no = None if pos else 0  # counted from the file's start only when cheap
            while p.codec or pos < p.stop:
                line = f.readline(self.max_record + 1)  # a record and its line break
                if not line:
                    break
                if line_no is not None:
                    line_no += 1
                where = (line_no, pos)
                if len(line) > self.max_record and not line.endswith(b"\n"):
                    raise DataError(f"{self._line_name(where)}: a record of more than "
                                    f"{_size_text(self.max_record)} (--max-record-mb); split it "
                                    "or raise the limit")
                pos += len(line)
                self.consumed = (raw.tell() if p.codec else pos) - p.start
                if line.strip():
                    yield Document(record_blocks(self._record_text(line, where)))

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
        # JSON may escape half of a UTF-16 pair alone ("\\ud800"): not text, nor encodable.
        if surrogate := SURROGATE.search(text):
            raise DataError(f"{self._line_name(where)}: the {self.text_field!r} text holds a "
                            f"lone surrogate (U+{ord(surrogate.group()):04X} at character "
                            f"{surrogate.start():,}), which is not Unicode text")
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
        group = pf.metadata.row_group(p.start)
        rows, record = group.num_rows, p.first_record
        text_bytes = group.column(schema.get_field_index(self.text_field)).total_uncompressed_size
        batches = pf.iter_batches(batch_size=max(1, min(1024, BLOCK_BYTES * rows // max(
            text_bytes, 1))), row_groups=list(range(p.start, p.stop)),
            columns=[self.text_field], use_threads=False)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except (OSError, pa.ArrowException) as e:
                raise DataError(f"{p.path}: row group {p.start} (records {record + 1}-"
                                f"{p.first_record + rows}) is unreadable: {_line(e)}") from None
            for text in self._parquet_texts(batch.column(0), record):
                yield Document(record_blocks(text))
            record += batch.num_rows
            self.consumed = p.size * (record - p.first_record) // max(rows, 1)

    def _parquet_texts(self, column, record: int) -> list[str]:
        """The texts of a batch whose first row is record `record` (0-based) of the file,
        checked: none null, over `max_record` bytes, or not UTF-8."""
        pa, path = _pyarrow(), self.piece.path
        if column.null_count:
            first = column.is_null().index(True).as_py()
            raise DataError(f"{path}: record {record + first + 1} has no "
                            f"{self.text_field!r} (null)")
        sizes = pa.compute.binary_length(column)
        if (pa.compute.max(sizes).as_py() or 0) > self.max_record:
            first = pa.compute.index(pa.compute.greater(sizes, self.max_record), True).as_py()
            raise DataError(f"{path}: record {record + first + 1} is more than "
                            f"{_size_text(self.max_record)} (--max-record-mb); split it or raise "
                            "the limit")
        try:
            return column.to_pylist()
        except UnicodeDecodeError:  # Parquet's strings are not checked to be UTF-8 when written
            values = column.cast(pa.binary()).to_pylist()
            first = next(i for i, v in enumerate(values) if not _is_utf8(v))
            raise DataError(f"{path}: record {record + first + 1}: its {self.text_field!r} "
                            "is not UTF-8 text") from None


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _size_text(n: int) -> str:
    """A size as --max-record-mb gives it."""
    return f"{n / 2**20:g} MiB" if n >= 2**20 else f"{n:,} bytes"


def _skip_line(f) -> int:
    """Read `f` past the end of the current line, a block at a time; returns the bytes read
    (its line break included)."""
    skipped = 0
    while chunk := f.readline(BLOCK_BYTES):
        skipped += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return skipped


def _pyarrow():
    """pyarrow, an optional dependency (`pip install 'photon[data]'`)."""
    try:
        import pyarrow as pa
        import pyarrow.compute
        import pyarrow.parquet  # noqa: F401 (makes pa.compute and pa.parquet available)
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


def check_text(sample: bytes, path: str) -> None:
    """Refuse a file that is not UTF-8 text (a program, an image, UTF-16, Latin-1), judged
    by `sample`, its first `SNIFF_BYTES`: a NUL byte, or more than `MAX_INVALID` of them not
    UTF-8. A stray bad byte in real text passes (it becomes U+FFFD)."""
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


class _Pushback:
    """A binary stream read forward, into which bytes read can be put back (a text's first
    bytes, once checked; what was read past the end of a file's head)."""

    def __init__(self, f) -> None:
        self._f, self._back = f, b""

    def read(self, n: int) -> bytes:
        """The next `n` bytes, fewer only at the end of the stream."""
        data, self._back = self._back[:n], self._back[n:]
        return data + self._f.read(n - len(data)) if len(data) < n else data

    def unread(self, data: bytes) -> None:
        self._back = data + self._back


def text_blocks(f: _Pushback, length: int | None = None,
                finish_line: bool = False) -> Iterator[str]:
    """The next `length` bytes of `f` (all that is left for None) as text, in blocks of about
    `BLOCK_BYTES` that end at line breaks (a longer line is cut; a character cut by a
    block's end is not, and invalid UTF-8 becomes U+FFFD). With `finish_line` the text goes
    on to the end of its last line, if that comes within `BLOCK_BYTES`: a text's head ends
    where its held-out tail starts a line."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    left, carry = math.inf if length is None else length, b""
    while True:
        chunk = f.read(int(min(BLOCK_BYTES, left)))
        left -= len(chunk)
        data = carry + chunk
        if not chunk or not left:
            if finish_line:
                after = f.read(BLOCK_BYTES)
                newline = after.find(b"\n") + 1
                f.unread(after[newline:])
                data += after[:newline]
            if data:
                yield decoder.decode(data, final=True)
            return
        # Cut at the last line break; a line longer than a block is cut anyway.
        cut = data.rfind(b"\n") + 1 or len(data)
        carry = data[cut:]
        yield decoder.decode(data[:cut])


def record_blocks(text: str) -> Iterator[str]:
    """A record's text in blocks of about `BLOCK_BYTES` characters that end at line breaks
    where there is one, as a text file's are read: each is tokenized on its own."""
    start = 0
    while start < len(text):
        end = start + BLOCK_BYTES
        if end < len(text):
            end = text.rfind("\n", start, end) + 1 or end
        yield text[start:end]
        start = end
