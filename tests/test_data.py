"""Corpora on disk and `photon data prepare`: JSON Lines, Parquet, compressed files, parallel
and resumable preparation, training and evaluation on a prepared directory, errors.

The documents are the fixed test corpus (tests/data/corpus: Shakespeare's poems) cut into
paragraphs (plus some non-ASCII ones); the tokenizer.json is a Llama-style BPE (SentencePiece
▁ spaces, `</s>`) trained here, never downloaded.
"""

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, trainers

import photon
from photon.cli import main as cli_main
from photon.data import prepare as prepare_module
from photon.data import sources
from photon.data.corpus import Split, split_documents
from photon.data.prepare import packed_dir, prepare
from photon.data.shards import is_prepared, load_tokens, read_manifest
from photon.data.tokenizer import Tokenizer
from photon.errors import DataError, TokenizerError
from tests.corpus import CORPUS

TINY = ["--preset", "photon-tiny", "--seq-len", "64", "--batch-size", "4", "--dtype", "fp32",
        "--eval-tokens", "1024", "--log-every", "1"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Documents, the same documents as JSON Lines / Parquet / zstd JSON Lines, a
    tokenizer.json, and a private cache."""
    root = tmp_path_factory.mktemp("data")
    docs = [d.strip() for p in sorted(CORPUS.glob("*.txt"))
            for d in p.read_text().split("\n\n") if d.strip()]
    docs[3:3] = ["", "naïve café ☃ — 日本語のテキスト", "Ünïcödé\nacross\nlines"]
    rows = [{"id": i, "meta": {"n": i}, "text": d} for i, d in enumerate(docs)]
    jsonl = root / "docs.jsonl"
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    with pa.output_stream(str(root / "docs.jsonl.zst"), compression="zstd") as f:
        f.write(jsonl.read_bytes())
    pq.write_table(pa.table({"id": list(range(len(docs))), "text": docs}),
                   root / "docs.parquet", row_group_size=97)
    tok = HFTokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                           normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.train_from_iterator(docs, trainers.BpeTrainer(
        vocab_size=500, special_tokens=["<unk>", "<s>", "</s>"]))
    (root / "llama").mkdir()
    tok.save(str(root / "llama" / "tokenizer.json"))
    os.environ["PHOTON_CACHE"] = str(root / "cache")
    yield {"root": root, "docs": [d for d in docs if d], "jsonl": jsonl,
           "tokenizer": root / "llama" / "tokenizer.json"}
    del os.environ["PHOTON_CACHE"]


def shards(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.bin"))}


def test_tokenizer_json_from_disk(env):
    tok = Tokenizer.from_file(env["tokenizer"])
    assert tok.kind == "hf" and tok.vocab_size == 500 and tok.eos_id == 2  # "</s>"
    text = "the model reads text"
    assert tok.decode(tok.encode(text)) == text and 1 not in tok.encode(text)  # no <s> added
    assert sum(tok.token_bytes()[i] for i in tok.encode(text)) == len(text) + 1  # the ▁ added
    (env["tokenizer"].parent / "tokenizer_config.json").write_text('{"eos_token": "<unk>"}')
    try:
        assert Tokenizer.from_file(env["tokenizer"].parent).eos_id == 0  # the config decides
    finally:
        (env["tokenizer"].parent / "tokenizer_config.json").unlink()
    with pytest.raises(TokenizerError, match="cannot load the tokenizer"):
        Tokenizer.from_file(env["jsonl"])


def test_jsonl_parquet_and_zstd_prepare_to_identical_shards(env, monkeypatch):
    """Plain JSON Lines read in byte ranges (cut mid-line), zstd JSON Lines read whole,
    Parquet read by row group: the same documents give the same bytes, and those bytes are
    each held-out / kept document's tokens followed by </s>, in order."""
    monkeypatch.setattr(sources, "PIECE_BYTES", 20_000)
    root = env["root"]
    results = {name: prepare(root / name, root / f"prep-{name}", str(env["tokenizer"]),
                             progress=False)
               for name in ("docs.jsonl", "docs.parquet", "docs.jsonl.zst")}
    assert results["docs.jsonl"]["pieces"] > 5 and results["docs.parquet"]["pieces"] > 5
    first = shards(root / "prep-docs.jsonl")
    assert set(first) == {"train-00000.bin", "val-00000.bin"}
    for name in ("docs.parquet", "docs.jsonl.zst"):
        assert shards(root / f"prep-{name}") == first, name

    tok, rule = Tokenizer.from_file(env["tokenizer"]), Split()
    from photon.data.corpus import document_hash
    val = [d for d in env["docs"] if rule.held_out(document_hash(d.encode()))]
    assert 0 < len(val) < len(env["docs"]) // 10
    expected = [t for d in val for t in [*tok.encode(d), tok.eos_id]]
    assert load_tokens(root / "prep-docs.jsonl", "val").tolist() == expected
    assert list(split_documents(env["jsonl"], "val")) == val  # what photon eval scores
    manifest = read_manifest(root / "prep-docs.jsonl")
    assert manifest["val"]["documents"] == len(val)
    assert manifest["train"]["documents"] + len(val) == len(env["docs"])


def test_workers_and_sharding_do_not_change_the_result(env, tmp_path):
    """A mixed folder (JSON Lines, gzip JSON Lines, Parquet, text, gzip text) with a BPE
    trained by prepare: --workers 1 and 2 write identical bytes; many small shards read
    back as the same token stream."""
    src = tmp_path / "src"
    src.mkdir()
    lines = env["jsonl"].read_text().splitlines(keepends=True)
    (src / "a.jsonl").write_text("".join(lines[:150]))
    (src / "b.jsonl.gz").write_bytes(gzip.compress("".join(lines[150:300]).encode()))
    rest = [json.loads(x)["text"] for x in lines[300:]]
    pq.write_table(pa.table({"text": rest}), src / "c.parquet", row_group_size=50)
    (src / "d.txt").write_text((CORPUS / "sonnets-001-050.txt").read_text())
    (src / "e.md.gz").write_bytes(gzip.compress((CORPUS / "the-passionate-pilgrim.txt")
                                                .read_bytes()))
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        argv = ["data", "prepare", str(src), "--out", str(out), "--vocab-size", "300",
                "--workers", str(workers), "--json"]
        assert cli_main(argv) == 0
        outs.append(out)
    assert shards(outs[0]) == shards(outs[1])
    a, b = read_manifest(outs[0]), read_manifest(outs[1])
    assert a["tokenizer"] == b["tokenizer"] and a["train"] == b["train"] and a["pieces"] > 5
    assert a["val"]["documents"] > 2  # tails of the text files and hashed records

    small = prepare(src, tmp_path / "small", Tokenizer.load(outs[0]), shard_tokens=1000,
                    progress=False)
    assert len(small["train"]["shards"]) > 10
    stream = load_tokens(tmp_path / "small", "train")
    whole = np.fromfile(outs[0] / "train-00000.bin", dtype=np.uint16)
    assert len(stream) == len(whole) and np.array_equal(np.asarray(stream), whole)
    for start in (0, 990, 1000, 4321, len(whole) - 70):
        assert np.array_equal(stream[start:start + 2500], whole[start:start + 2500])

    docs = prepare(src, tmp_path / "docs", "bytes", split=Split(documents=7), progress=False)
    assert docs["val"]["documents"] == 7
    # Rerunning a finished prepare changes nothing; other settings are refused.
    assert prepare(src, tmp_path / "docs", "bytes", split=Split(documents=7),
                   progress=False)["already_prepared"]
    with pytest.raises(DataError, match="prepared from another source or settings"):
        prepare(src, tmp_path / "docs", "bytes", progress=False)


@pytest.mark.e2e
def test_killed_prepare_resumes_to_the_same_result(env, tmp_path):
    """SIGKILL a prepare after some pieces are done: no manifest, photon train refuses the
    directory, a rerun keeps the finished pieces and ends equal to an uninterrupted run."""
    src = tmp_path / "src"
    src.mkdir()
    lines = env["jsonl"].read_text().splitlines(keepends=True)
    for i in range(60):  # 60 pieces, each a few dozen documents
        (src / f"part-{i:02d}.jsonl").write_text("".join(lines[i * 8 % len(lines):][:40]))
    prepare(src, tmp_path / "straight", str(env["tokenizer"]), progress=False)
    cmd = [sys.executable, "-m", "photon.cli", "data", "prepare", str(src), "--tokenizer",
           str(env["tokenizer"]), "--workers", "1"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--out", killed], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while proc.poll() is None and len(list(killed.glob(".partial/pieces/*.npy"))) < 3:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the prepare ended before it could be killed"
    assert not (killed / "manifest.json").exists()
    with pytest.raises(DataError, match="unfinished photon data prepare"):
        is_prepared(killed)
    result = subprocess.run([*cmd, "--out", killed, "--json"], check=True, capture_output=True,
                            text=True)
    summary = json.loads(result.stdout.splitlines()[-1])
    assert 3 <= summary["pieces_resumed"] < 60
    assert shards(killed) == shards(tmp_path / "straight")
    assert not (killed / ".partial").exists()


def test_train_and_eval_on_a_prepared_jsonl_directory(env, tmp_path, capsys):
    """photon train reads a prepared directory (its tokenizer.json comes along into the
    checkpoint), photon eval scores its held-out documents; a resumed run refuses a
    directory re-prepared with another tokenizer."""
    data = tmp_path / "prepared"
    assert cli_main(["data", "prepare", str(env["jsonl"]), "--out", str(data), "--tokenizer",
                     str(env["tokenizer"]), "--val-documents", "12"]) == 0
    run = tmp_path / "run"
    assert cli_main(["train", *TINY, "--data", str(data), "--max-steps", "4", "--out",
                     str(run)]) == 0
    model, tok = photon.load_model(run)
    assert tok.fingerprint() == read_manifest(data)["tokenizer"]["fingerprint"]
    assert model.config.vocab_size == 500
    capsys.readouterr()
    assert cli_main(["eval", str(run), "--data", str(data), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    val = read_manifest(data)["val"]
    assert result["tokens"] == val["tokens"] and 0 < result["bpb"] < 20
    assert cli_main(["train", *TINY, "--data", str(data), "--tokenizer", "bytes"]) == 2
    assert "leave out --tokenizer" in capsys.readouterr().err
    # photon train --data FILE tokenizes into the cache: a prepared directory too, the same
    # bytes as photon data prepare with the default split.
    prepare(env["jsonl"], tmp_path / "default", tok, progress=False)
    assert shards(packed_dir(env["jsonl"], tok)) == shards(tmp_path / "default")

    shutil.rmtree(data)
    assert cli_main(["data", "prepare", str(env["jsonl"]), "--out", str(data), "--tokenizer",
                     "bytes", "--val-documents", "12"]) == 0
    capsys.readouterr()
    assert cli_main(["train", "--resume", str(run), "--max-steps", "6"]) == 2
    err = capsys.readouterr().err
    assert "was prepared with another tokenizer" in err and err.count("\n") == 1


def _bad_sources(root: Path) -> dict[str, tuple[Path, list[str], str]]:
    """name: (source, extra arguments, expected message)."""
    (root / "bad").mkdir()
    lines = [json.dumps({"text": f"document {i}"}) for i in range(10)]
    missing = root / "bad" / "missing.jsonl"
    missing.write_text("\n".join([*lines[:4], json.dumps({"body": "x"}), *lines[4:]]))
    broken = root / "bad" / "broken.jsonl"
    broken.write_text("\n".join([*lines[:6], '{"text": "cut off', *lines[6:]]))
    array = root / "bad" / "array.json"
    array.write_text(json.dumps([{"text": "a"}]))
    truncated = root / "bad" / "cut.jsonl.gz"
    truncated.write_bytes(gzip.compress("\n".join(lines * 500).encode())[:300])
    garbage = root / "bad" / "garbage.parquet"
    garbage.write_bytes(b"this is not parquet" * 10)
    nulls = root / "bad" / "nulls.parquet"
    pq.write_table(pa.table({"text": ["a", "b", None, "d"]}), nulls)
    corrupt = root / "bad" / "corrupt.parquet"
    texts = [f"document {i} " * 30 for i in range(300)]
    pq.write_table(pa.table({"text": texts}), corrupt, row_group_size=100,
                   compression="zstd", use_dictionary=False)
    data = bytearray(corrupt.read_bytes())
    column = pq.ParquetFile(corrupt).metadata.row_group(1).column(0)
    for i in range(column.data_page_offset + 100,
                   column.data_page_offset + column.total_compressed_size - 100):
        data[i] ^= 0x5A
    corrupt.write_bytes(bytes(data))
    pool = root / "bad" / "pool"  # the error comes back from a worker process
    pool.mkdir()
    for i in range(3):
        (pool / f"part-{i}.jsonl").write_text("\n".join(lines) + "\n")
    (pool / "part-1.jsonl").write_text("\n".join([*lines[:8], "[1, 2]", *lines[8:]]) + "\n")
    not_json = root / "bad" / "tokenizer.json"
    not_json.write_text("{ not a tokenizer")
    good = root / "docs.jsonl"
    return {
        "missing field": (missing, [], "missing.jsonl: line 5: no 'text' field (its fields: "
                                       "body); choose one with --text-field"),
        "other field": (good, ["--text-field", "body"], "docs.jsonl: line 1: no 'body' field"),
        "bad json": (broken, [], "broken.jsonl: line 7: not valid JSON"),
        "json array": (array, [], "array.json: line 1: a JSON list, not an object"),
        "truncated gzip": (truncated, [], "cut.jsonl.gz: cannot decompress"),
        "in a worker": (pool, ["--workers", "2"], "part-1.jsonl: line 9: a JSON list"),
        "not parquet": (garbage, [], "garbage.parquet: not a readable Parquet file"),
        "null text": (nulls, [], "nulls.parquet: record 3 has no 'text' (null)"),
        "no column": (nulls, ["--text-field", "body"], "nulls.parquet: no 'body' column"),
        "corrupt row group": (corrupt, [], "corrupt.parquet: row group 1 (records 101-200) "
                                           "is unreadable"),
        "bad tokenizer": (good, ["--tokenizer", str(not_json)], "cannot load the tokenizer"),
        "no tokenizer": (good, ["--tokenizer", str(root / "nope.json")],
                         "cannot load the tokenizer"),
        "glob": (root / "*.nothing", [], "the pattern matches no file"),
        "too many val": (good, ["--val-documents", "100000"], "more than the"),
        "not prepared out": (good, ["--out", str(root / "bad")], "is a folder but not a "
                                                                 "prepared directory"),
    }


def test_bad_data_one_line_errors(env, tmp_path, capsys):
    for name, (source, extra, message) in _bad_sources(env["root"]).items():
        argv = ["data", "prepare", str(source), "--out", str(tmp_path / name), "--tokenizer",
                "bytes", *extra]
        assert cli_main(argv) == 2, name
        err = capsys.readouterr().err
        # One line after whatever the progress bar drew (errors while tokenizing erase it).
        last = err.rstrip("\n").split("\n")[-1].split("\r")[-1]
        assert last.startswith("photon data: error: ") and message in last, (name, err)
        assert "Traceback" not in err
    # A plain JSON Lines file cut into pieces still names the right line.
    big = tmp_path / "big.jsonl"
    lines = [json.dumps({"text": f"document {i} " * 20}) for i in range(2000)]
    lines[1500] = json.dumps({"title": "no text here"})
    big.write_text("\n".join(lines) + "\n")
    pieces = sources.plan_pieces([big], piece_bytes=10_000)
    with pytest.raises(DataError, match=r"big.jsonl: line 1501: no 'text' field"):
        for piece in pieces:
            list(sources.PieceReader(piece))
    # A prepare killed before its manifest: photon train says so.
    unfinished = tmp_path / "unfinished"
    (unfinished / ".partial").mkdir(parents=True)
    assert cli_main(["train", *TINY, "--data", str(unfinished), "--out",
                     str(tmp_path / "run")]) == 2
    assert "unfinished photon data prepare" in capsys.readouterr().err


# --- issue 31: flat memory, bounded records, text that is not Unicode, one writer


def _write(path: Path, data: bytes) -> Path:
    """`data` into `path`, compressed as its suffix says (.gz, .zst, .bz2, .lz4)."""
    codec = sources.CODECS.get(path.suffix)
    if codec is None:
        path.write_bytes(data)
    else:
        with pa.output_stream(str(path), compression=codec) as f:
            f.write(data)
    return path


def _peak_python_bytes(fn) -> int:
    """The peak of Python's allocations (numpy's included) while `fn()` runs."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


LINE = "the quick brown fox jumps over the lazy dog, naïve café ☃ " * 40 + "\n"  # 2.5 KB
TEXT = LINE * 1700  # 4.2 MB


def _source(folder: Path, name: str, text: str) -> Path:
    """`text` as the file `name` says: plain text (in one line for one-line.*), JSON Lines
    of a record per line (records.*) or of the whole text in one record (one-record.*),
    compressed by its suffix."""
    if name.startswith("one-"):
        text = text.replace("\n", " ")
    if name.startswith("records"):
        text = "".join(json.dumps({"text": line}) + "\n" for line in text.splitlines())
    elif name.startswith("one-record"):
        text = json.dumps({"text": text}) + "\n"
    folder.mkdir()
    return _write(folder / name, text.encode())


@pytest.mark.parametrize("name", ["lines.txt", "lines.txt.gz", "lines.txt.zst", "lines.txt.bz2",
                                  "lines.txt.lz4", "one-line.txt", "one-line.txt.gz",
                                  "records.jsonl", "records.jsonl.gz", "one-record.jsonl",
                                  "one-record.jsonl.gz"])
def test_memory_stays_flat_whatever_the_input(tmp_path, monkeypatch, name):
    """4.2 MB of text prepared with 16 KB blocks: Python's peak stays under 1 MB whether the
    text is plain or compressed, in lines or in one line, in records; one record of it all
    is refused beyond a record limit of 256 KiB after reading no more than that. A
    compressed text's held-out tail (found in a second pass) is the plain file's."""
    monkeypatch.setattr(sources, "BLOCK_BYTES", 16 << 10)
    monkeypatch.setattr(prepare_module, "BATCH_BYTES", 16 << 10)
    split = Split(documents=10) if name.startswith("records") else Split()

    def run(path: Path, out: str):
        return prepare(path, tmp_path / out, "bytes", split=split, workers=1,
                       max_record=256 << 10, progress=False)

    if not name.startswith("one-record"):
        run(_source(tmp_path / "warm-up", name, LINE * 40), "warm")  # imports, caches
    big = _source(tmp_path / "big", name, TEXT)
    if name.startswith("one-record"):
        with pytest.raises(DataError, match=f"{name}: line 1: a record of more than 262,144 "
                                            r"bytes \(--max-record-mb\)"):
            _peak_python_bytes(lambda: run(big, "warm"))  # imports pyarrow, once
        peak = _peak_python_bytes(lambda: pytest.raises(DataError, run, big, "out"))
    else:
        peak = _peak_python_bytes(lambda: run(big, "out"))
    assert len(TEXT.encode()) > 4_000_000 and peak < 1_000_000, f"peak {peak:,} B"
    if name.startswith(("lines", "one-line")):
        run(_source(tmp_path / "plain", "plain.txt", TEXT if "lines" in name else
                    TEXT.replace("\n", " ")), "plain-out")
        assert shards(tmp_path / "out") == shards(tmp_path / "plain-out")
        assert read_manifest(tmp_path / "out")["val"] == read_manifest(tmp_path /
                                                                     "plain-out")["val"]


def _records(texts: list[str]) -> str:
    return "".join(json.dumps({"text": t}) + "\n" for t in texts)


@pytest.mark.parametrize("kind", ["jsonl", "jsonl.gz", "jsonl.bz2", "parquet"])
def test_a_record_over_the_limit_is_refused_naming_its_file_and_record(tmp_path, capsys, kind):
    """--max-record-mb bounds a JSON Lines record (its line) or a Parquet value: one over
    it is refused in one line naming the file and the record; one at it passes."""
    texts = [f"document {i} " * 10 for i in range(20)]
    texts[7] = "x" * 3000
    path = tmp_path / f"docs.{kind}"
    if kind == "parquet":
        pq.write_table(pa.table({"text": texts}), path, row_group_size=5)
        limit, where = 3000, "docs.parquet: record 8 is more than 2,999 bytes"
    else:
        _write(path, _records(texts).encode())
        limit, where = len(json.dumps({"text": texts[7]})), f"docs.{kind}: line 8: a " \
            "record of more than 3,011 bytes"
    argv = ["data", "prepare", str(path), "--tokenizer", "bytes", "--val-documents", "2"]
    assert cli_main([*argv, "--out", str(tmp_path / "a"), "--max-record-mb",
                     str(limit / 2**20)]) == 0
    capsys.readouterr()
    assert cli_main([*argv, "--out", str(tmp_path / "b"), "--max-record-mb",
                     str((limit - 1) / 2**20)]) == 2
    err = capsys.readouterr().err
    last = err.rstrip("\n").split("\n")[-1].split("\r")[-1]
    assert last.startswith("photon data: error: ") and where in last, err
    assert "(--max-record-mb)" in last and "Traceback" not in err


def test_a_record_over_the_limit_is_named_in_any_piece(tmp_path):
    """A plain JSON Lines file read in byte ranges: the record is named by its line in the
    file, and a range that starts inside an over-long line skips it in blocks."""
    path = tmp_path / "big.jsonl"
    texts = [f"document {i} " * 20 for i in range(300)]
    texts[250] = "y" * 50_000
    path.write_text(_records(texts))
    pieces = sources.plan_pieces([path], piece_bytes=10_000)
    with pytest.raises(DataError, match=r"big.jsonl: line 251: a record of more than 40,000 "):
        for piece in pieces:
            list(sources.PieceReader(piece, max_record=40_000))


NOT_UNICODE = {  # a line 6 of a JSON Lines file: what it holds, what the error says of it
    "lone high surrogate": (b'{"text": "a\\ud800b"}', "U+D800 at character 1"),
    "lone low surrogate": (b'{"text": "\\udfff first"}', "U+DFFF at character 0"),
    "half of a pair": (b'{"text": "pair \\ud83d\\ude00 then \\ud83d"}', "U+D83D at character 12"),
    "surrogate bytes": (b'{"text": "raw \xed\xa0\x80"}', "U+D800 at character 4"),
}


@pytest.mark.parametrize("case", [*NOT_UNICODE, "parquet"])
def test_text_that_is_not_unicode_is_refused_and_nothing_is_left_half_written(
        tmp_path, capsys, monkeypatch, case):
    """A record whose text is not Unicode (a lone UTF-16 surrogate escaped in JSON or
    encoded raw, invalid UTF-8 in Parquet) stops `photon data prepare` and `photon train
    --data` with one line naming the file and record; no temporary file remains and no
    manifest, and once the record is fixed the same command prepares what a fresh one does."""
    monkeypatch.setenv("PHOTON_CACHE", str(tmp_path / "cache"))
    good = [f"document {i} says something".encode() for i in range(12)]
    if case == "parquet":
        source, needle = tmp_path / "docs.parquet", "docs.parquet: record 6: its 'text' is " \
                                                    "not UTF-8 text"
        values = [*good[:5], b"caf\xe9", *good[6:]]
        offsets = np.cumsum([0, *map(len, values)]).astype(np.int32)
        column = pa.Array.from_buffers(pa.string(), len(values), [
            None, pa.py_buffer(offsets), pa.py_buffer(b"".join(values))])
        pq.write_table(pa.table({"text": column}), source)
    else:
        line, where = NOT_UNICODE[case]
        source, needle = tmp_path / "docs.jsonl", f"docs.jsonl: line 6: the 'text' text holds " \
                                                  f"a lone surrogate ({where})"
        source.write_bytes(b"".join([json.dumps({"text": t.decode()}).encode() + b"\n"
                                     for t in good[:5]] + [line + b"\n"] +
                                    [json.dumps({"text": t.decode()}).encode() + b"\n"
                                     for t in good[6:]]))
    out = tmp_path / "prepared"
    for argv in (["data", "prepare", str(source), "--out", str(out), "--tokenizer", "bytes"],
                 ["train", *TINY, "--data", str(source), "--vocab-size", "300", "--out",
                  str(tmp_path / "run")]):
        assert cli_main(argv) == 2, argv
        err = capsys.readouterr().err
        last = err.rstrip("\n").split("\n")[-1].split("\r")[-1]
        assert last.startswith(f"photon {argv[0]}: error: ") and needle in last, err
        assert "Traceback" not in err
    leftovers = [p for p in [*out.rglob("*"), *(tmp_path / "cache").rglob("*")]
                 if p.name.endswith(".tmp") or p.name == "manifest.json"]
    assert not leftovers and not list((tmp_path / "run").glob("step-*")), leftovers
    if case == "parquet":
        pq.write_table(pa.table({"text": [t.decode() for t in good]}), source)
    else:
        source.write_text(_records([t.decode() for t in good]))
    assert cli_main(["data", "prepare", str(source), "--out", str(out), "--tokenizer",
                     "bytes"]) == 0
    prepare(source, tmp_path / "fresh", "bytes", progress=False)
    assert shards(out) == shards(tmp_path / "fresh")


def test_a_prepare_into_a_folder_in_use_names_the_writer(env, tmp_path, capsys):
    """photon data prepare and photon train share one lock (photon.locking): a second
    writer is refused in one line naming the first's process and host."""
    import socket

    from photon.locking import locked

    out = tmp_path / "prepared"
    out.mkdir()
    with locked(out, "held by this test", DataError):
        assert cli_main(["data", "prepare", str(env["jsonl"]), "--out", str(out),
                         "--tokenizer", "bytes"]) == 2
    err = capsys.readouterr().err
    assert err == (f"photon data: error: another photon data prepare is writing {out} (pid "
                   f"{os.getpid()} on {socket.gethostname()} holds {out / '.lock'})\n")
