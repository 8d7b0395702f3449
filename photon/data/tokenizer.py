"""Tokenizers: a byte-level BPE trained with HF `tokenizers`, or raw UTF-8 bytes.

Both map text to ids and back; `decode` never raises on a partial or invalid UTF-8 sequence
(generation streams tokens one at a time), it substitutes U+FFFD. Bits per byte compare
models with different tokenizers, so every tokenizer also says how many text bytes each
token stands for.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from photon.errors import TokenizerError

EOS = "<|endoftext|>"
CONFIG_FILE = "tokenizer_config.json"
HF_FILE = "tokenizer.json"


def _gpt2_byte_chars() -> list[str]:
    """The printable character byte-level BPE uses for each byte value (GPT-2's table:
    printable Latin-1 bytes stand for themselves, the rest map to code points 256 and up)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    others = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(others)) for b in range(256)]


class Tokenizer:
    """Either `Tokenizer.bytes()` (ids 0..255, no end-of-document token) or a byte-level BPE
    from `Tokenizer.train_bpe` whose id 0 is the end-of-document token `<|endoftext|>`."""

    def __init__(self, hf: HFTokenizer | None = None) -> None:
        self._hf = hf

    @classmethod
    def bytes(cls) -> Tokenizer:
        return cls(None)

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

    @property
    def kind(self) -> str:
        return "bytes" if self._hf is None else "bpe"

    @property
    def vocab_size(self) -> int:
        return 256 if self._hf is None else self._hf.get_vocab_size()

    @property
    def eos_id(self) -> int | None:
        """Id of the end-of-document token, or None (raw bytes have none)."""
        return None if self._hf is None else self._hf.token_to_id(EOS)

    def encode(self, text: str) -> list[int]:
        if self._hf is None:
            return list(text.encode("utf-8"))
        return self._hf.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Like `encode` for several texts; the BPE encodes them in parallel."""
        if self._hf is None:
            return [self.encode(t) for t in texts]
        return [e.ids for e in self._hf.encode_batch(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; incomplete or invalid UTF-8 becomes U+FFFD instead of an error."""
        ids = [int(i) for i in ids]
        if self._hf is None:
            return bytes(ids).decode("utf-8", errors="replace")
        return self._hf.decode(ids, skip_special_tokens=True)

    @staticmethod
    def num_bytes(text: str) -> int:
        """UTF-8 bytes of `text`: the denominator of bits per byte."""
        return len(text.encode("utf-8"))

    def token_bytes(self) -> list[int]:
        """Text bytes each token id stands for (0 for the end-of-document token)."""
        if self._hf is None:
            return [1] * 256
        # Byte-level BPE spells every byte as one printable character, so a token's
        # length in characters is its length in bytes.
        lengths = [len(self._hf.id_to_token(i)) for i in range(self.vocab_size)]
        lengths[self.eos_id] = 0
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
        """Short hash that changes whenever the id mapping changes (names data caches)."""
        spec = "bytes" if self._hf is None else self._hf.to_str()
        return hashlib.sha256(spec.encode()).hexdigest()[:12]

    def save(self, directory: str | Path) -> None:
        """Write `tokenizer_config.json` (and `tokenizer.json` for a BPE) into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"kind": self.kind, "vocab_size": self.vocab_size}
        if self._hf is not None:
            self._hf.save(str(directory / HF_FILE))
            config["eos_token"] = EOS
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        directory = Path(directory)
        try:
            config = json.loads((directory / CONFIG_FILE).read_text())
            if config["kind"] == "bytes":
                return cls.bytes()
            if config["kind"] == "bpe":
                return cls(HFTokenizer.from_file(str(directory / HF_FILE)))
        except Exception as e:  # missing file, bad JSON, a tokenizers parse error
            raise TokenizerError(f"cannot read the tokenizer in {directory}: {e}") from None
        raise TokenizerError(f"{directory / CONFIG_FILE}: unknown tokenizer kind "
                             f"{config['kind']!r}")

    def __repr__(self) -> str:
        return f"Tokenizer({self.kind}, vocab_size={self.vocab_size})"
