"""The text a scoring verb reads (`photon eval`, `photon recall`): its flags, and the text
as one string, as a prepared token stream, or as documents of token ids."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from photon.cli.flags import positive_int

if TYPE_CHECKING:  # imported when run, to keep `photon --help` fast
    import numpy as np

    from photon.data.tokenizer import Tokenizer


def add_text_flags(p: argparse.ArgumentParser, default_data: str | None = "shakespeare",
                   default_split: str = "val") -> None:
    """--data, --split, --text-field and --max-bytes."""
    p.add_argument("--data", default=default_data, required=default_data is None,
                   help="'shakespeare', a directory made by photon data prepare, or a text, "
                        "JSON Lines or Parquet file, folder or glob")
    p.add_argument("--split", choices=["val", "train", "all"], default=default_split,
                   help=f"val: the held-out part training never saw; train; all (default "
                        f"{default_split}; a text no model trained on, such as Brown, can "
                        "use all of it)")
    p.add_argument("--text-field", default="text",
                   help="JSON field / Parquet column holding the text (default: text)")
    p.add_argument("--max-bytes", type=positive_int,
                   help="read only the first N bytes of the text")


def joined_text(args: argparse.Namespace) -> str:
    """The split's documents as one text, blank lines between them."""
    from photon.data.corpus import split_documents

    return "\n\n".join(split_documents(args.data, args.split, args.text_field))


def first_bytes(texts: Iterable[str], budget: int | None) -> Iterator[str]:
    """The texts up to `budget` UTF-8 bytes in all, the last one cut (all of them for None)."""
    if budget is None:
        yield from texts
        return
    for text in texts:
        data = text.encode("utf-8")[:budget]
        budget -= len(data)
        yield data.decode("utf-8", errors="ignore")
        if budget <= 0:
            return


def prepared_tokens(args: argparse.Namespace, tokenizer: Tokenizer) -> np.ndarray | None:
    """The split's token stream of a prepared directory (every document followed by the
    end-of-document token) as a numpy array cut at --max-bytes; None for any other --data."""
    import numpy as np

    from photon.data.prepare import packed_dir
    from photon.data.shards import is_prepared, load_tokens

    if not is_prepared(args.data):
        return None
    folder = packed_dir(args.data, tokenizer)  # checks that it was made with this tokenizer
    splits = ["train", "val"] if args.split == "all" else [args.split]
    tokens = np.concatenate([np.asarray(load_tokens(folder, s)) for s in splits])
    if args.max_bytes is not None:
        sizes = np.asarray(tokenizer.token_bytes())[tokens]
        tokens = tokens[:int(np.searchsorted(np.cumsum(sizes), args.max_bytes, "right"))]
    return tokens


def documents(args: argparse.Namespace, tokenizer: Tokenizer) -> Iterator[Sequence[int]]:
    """Each document of the split as token ids after the start-of-document token (when the
    tokenizer has one), up to --max-bytes of text."""
    from photon.data.corpus import split_documents
    from photon.data.shards import stream_documents
    from photon.evaluation.positions import text_documents

    tokens = prepared_tokens(args, tokenizer)
    if tokens is not None:
        return stream_documents(tokens, tokenizer.eos_id)
    texts = split_documents(args.data, args.split, args.text_field)
    return text_documents(tokenizer, first_bytes(texts, args.max_bytes))
