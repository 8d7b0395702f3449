"""Training text: sources (text, JSON Lines, Parquet), corpora and the validation split,
tokenizers, prepared token shards (`photon data prepare`), batches."""
