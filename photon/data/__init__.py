"""Training text: corpora, tokenizers, token arrays on disk, batches."""
