"""The fixed corpus the training and data tests read: Shakespeare's poems (public domain,
tests/data/README.md), one document per file."""

from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "data" / "corpus"


def corpus_folder(root: Path) -> Path:
    """A copy of the corpus in a folder of its own under `root`, so that what a test module
    prepares from it (keyed by the source's path) never serves another module."""
    folder = root / "corpus"
    folder.mkdir()
    for path in sorted(CORPUS.glob("*.txt")):
        (folder / path.name).write_text(path.read_text())
    return folder
