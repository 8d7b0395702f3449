"""Tokenizers: a byte-level BPE trained with HF `tokenizers`, raw UTF-8 bytes, or any Hugging
Face `tokenizer.json` the user already has (for example the Llama tokenizer the paper used).

All map text to ids and back; `decode` never raises on a partial or invalid UTF-8 sequence
(generation streams tokens one at a time), it substitutes U+FFFD. Bits per byte compare
models with different tokenizers, so every tokenizer also says how many text bytes each
token stands for.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from photon.errors import TokenizerError

EOS = "<|endoftext|>"
CONFIG_FILE = "tokenizer_config.json"
HF_FILE = "tokenizer.json"
# End-of-document tokens of common tokenizers, tried in order when no tokenizer_config.json
# next to a tokenizer.json names one (GPT-2/NeoX, Llama 1-2/Mistral, Llama 3, Gemma).
EOS_NAMES = (EOS, "</s>", "<|end_of_text|>", "<eos>")


@functools.cache
def _byte_level_bytes() -> dict[str, int]:
    """The byte-level BPE alphabet (GPT-2's): a printable character for every byte. Bytes
    that are printable and not a space stand for themselves; the others, in order, for
    U+0100 onwards."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    table = {chr(b): b for b in printable}
    table.update({chr(256 + n): b for n, b in enumerate(others)})
    return table


def _gpt2_byte_chars() -> list[str]:
    """The printable character byte-level BPE uses for each byte value (GPT-2's table:
    printable Latin-1 bytes stand for themselves, the rest map to code points 256 and up)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    others = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(others)) for b in range(256)]


class Tokenizer:
    """`Tokenizer.bytes()` (ids 0..255, no end-of-document token), a byte-level BPE from
    `Tokenizer.train_bpe` whose id 0 is `<|endoftext|>`, or a tokenizer.json loaded with
    `Tokenizer.from_file` (kind "hf")."""

    def __init__(self, hf: HFTokenizer | None = None, eos: str | None = EOS,
                 kind: str = "bpe") -> None:
        self._hf, self._eos = hf, eos
        self._kind = "bytes" if hf is None else kind
        if hf is not None and eos is not None and hf.token_to_id(eos) is None:
            raise TokenizerError(f"the end-of-document token {eos!r} is not in the vocabulary")

    @classmethod
    def bytes(cls) -> Tokenizer:
        return cls(None)

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        """A Hugging Face `tokenizer.json` (the file, or a folder holding it). The
        end-of-document token is the `eos_token` of a `tokenizer_config.json` beside it
        (as in a Hugging Face model folder or a photon checkpoint), else the first of
        `EOS_NAMES` the vocabulary has, else none."""
        path = Path(path)
        file = path / HF_FILE if path.is_dir() else path
        try:
            hf = HFTokenizer.from_file(str(file))
        except Exception as e:  # a missing file, bad JSON, an unknown model type
            reason = " ".join(str(e).split())  # one line
            raise TokenizerError(f"cannot load the tokenizer {file}: {reason}") from None
        eos = _configured_eos(file.parent / CONFIG_FILE)
        if eos is None:
            specials = {t.content for t in hf.get_added_tokens_decoder().values() if t.special}
            eos = next((name for name in EOS_NAMES if name in specials), None)
        return cls(hf, eos, kind="hf")

    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int = 4096) -> Tokenizer:
        """Train a byte-level BPE on `texts`; every byte stays encodable, so no text is
        ever out of vocabulary."""
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        if vocab_size < len(alphabet) + 1:
            raise TokenizerError(f"a byte-level BPE needs a vocabulary of at least "
                                 f"{len(alphabet) + 1} (256 bytes + end of document), "
                                 f"got {vocab_size}")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                      initial_alphabet=alphabet, show_progress=False)
        hf.train_from_iterator(texts, trainer)
        return cls(hf)

    @classmethod
    def words(cls, names: list[str]) -> Tokenizer:
        """A vocabulary of whole words, id i spelled `names[i]`, split on whitespace and
        without an end-of-document token: the tokens of a synthetic task (kind "hf": it is
        saved and loaded as a tokenizer.json)."""
        if len(set(names)) != len(names) or any(not n or n.split() != [n] for n in names):
            raise TokenizerError("word names must be distinct, non-empty and without spaces")
        hf = HFTokenizer(models.WordLevel({n: i for i, n in enumerate(names)}, unk_token=None))
        hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return cls(hf, eos=None, kind="hf")

    @property
    def kind(self) -> str:
        """"bytes", "bpe" (trained by photon) or "hf" (loaded from a tokenizer.json)."""
        return self._kind

    @property
    def vocab_size(self) -> int:
        return 256 if self._hf is None else self._hf.get_vocab_size()

    @property
    def eos_id(self) -> int | None:
        """Id of the end-of-document token, or None (raw bytes have none)."""
        return None if self._hf is None or self._eos is None else self._hf.token_to_id(self._eos)

    def encode(self, text: str) -> list[int]:
        """Ids of `text`, without the special tokens a tokenizer's template adds (a Llama
        tokenizer's <s>): documents are separated by the end-of-document token instead."""
        if self._hf is None:
            return list(text.encode("utf-8"))
        return self._hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Like `encode` for several texts; HF tokenizers encode them in parallel."""
        if self._hf is None:
            return [self.encode(t) for t in texts]
        return [e.ids for e in self._hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; incomplete or invalid UTF-8 becomes U+FFFD instead of an error."""
        ids = [int(i) for i in ids]
        if self._hf is None:
            return bytes(ids).decode("utf-8", errors="replace")
        return self._hf.decode(ids, skip_special_tokens=True)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The UTF-8 bytes `ids` stand for (the end-of-document token stands for none):
        `decode` is these bytes decoded with replacement, so an incremental UTF-8 decoder fed
        them piece by piece rebuilds exactly the text of the whole."""
        ids = [int(i) for i in ids]
        if self._hf is None:
            return bytes(ids)
        to_byte = _byte_level_bytes()
        return b"".join(bytes(to_byte[c] for c in self._hf.id_to_token(i)) for i in ids
                        if i != self.eos_id)

    @staticmethod
    def num_bytes(text: str) -> int:
        """UTF-8 bytes of `text`: the denominator of bits per byte."""
        return len(text.encode("utf-8"))

    def token_bytes(self) -> list[int]:
        """Text bytes each token id stands for (0 for special tokens such as the
        end-of-document token). Exact for raw bytes and byte-level BPEs; for SentencePiece
        style vocabularies (▁ for a space, <0xNN> byte fallback) a document's first token
        counts the space the tokenizer prepends."""
        if self._hf is None:
            return [1] * 256
        byte_level = '"ByteLevel"' in json.dumps(json.loads(self._hf.to_str())["decoder"])
        lengths = [_surface_bytes(self._hf.id_to_token(i) or "", byte_level)
                   for i in range(self.vocab_size)]
        for i, token in self._hf.get_added_tokens_decoder().items():
            lengths[i] = 0 if token.special else len(token.content.encode("utf-8"))
        return lengths

    @property
    def backend(self) -> HFTokenizer:
        """This tokenizer as an HF `tokenizers.Tokenizer` (what `transformers` wraps): the
        trained BPE, or for raw bytes a merge-free byte-level BPE whose ids are the bytes."""
        if self._hf is not None:
            return self._hf
        # Byte-level pre-tokenization spells byte b as the character gpt2_byte_chars()[b].
        vocab = {char: b for b, char in enumerate(_gpt2_byte_chars())}
        hf = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        hf.decoder = decoders.ByteLevel()
        return hf

    def fingerprint(self) -> str:
        """Short hash that changes whenever the id mapping or the end-of-document token
        changes (names data caches, checks prepared data against a run)."""
        spec = "bytes" if self._hf is None else f"{self._hf.to_str()}\0{self._eos}"
        return hashlib.sha256(spec.encode()).hexdigest()[:12]

    def save(self, directory: str | Path) -> None:
        """Write `tokenizer_config.json` (and `tokenizer.json` unless raw bytes) into
        `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"kind": self.kind, "vocab_size": self.vocab_size}
        if self._hf is not None:
            try:
                self._hf.save(str(directory / HF_FILE))
            except Exception as e:  # tokenizers raises a plain Exception on a failed write
                raise TokenizerError(f"cannot write {directory / HF_FILE}: "
                                     f"{' '.join(str(e).split())}") from None
            config["eos_token"] = self._eos
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """The tokenizer `save` wrote into `directory`."""
        directory = Path(directory)
        try:
            config = json.loads((directory / CONFIG_FILE).read_text())
            if config["kind"] == "bytes":
                return cls.bytes()
            if config["kind"] in ("bpe", "hf"):
                hf = HFTokenizer.from_file(str(directory / HF_FILE))
                return cls(hf, config.get("eos_token", EOS), kind=config["kind"])
        except TokenizerError:
            raise
        except Exception as e:  # missing file, bad JSON, a tokenizers parse error
            raise TokenizerError(f"cannot read the tokenizer in {directory}: {e}") from None
        raise TokenizerError(f"{directory / CONFIG_FILE}: unknown tokenizer kind "
                             f"{config['kind']!r}")

    def __repr__(self) -> str:
        return f"Tokenizer({self.kind}, vocab_size={self.vocab_size}, eos={self._eos!r})"


def _configured_eos(config: Path) -> str | None:
    """`eos_token` of a tokenizer_config.json (a string or {"content": ...}), if any."""
    try:
        eos = json.loads(config.read_text()).get("eos_token")
    except (OSError, ValueError, AttributeError):
        return None
    return eos.get("content") if isinstance(eos, dict) else eos


_BYTE_FALLBACK = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _surface_bytes(token: str, byte_level: bool) -> int:
    """UTF-8 bytes a vocabulary entry spells out."""
    if byte_level:  # every byte is spelled as one printable character
        return len(token)
    if _BYTE_FALLBACK.fullmatch(token):
        return 1
    return len(token.removeprefix("##").replace("\u2581", " ").encode("utf-8"))
