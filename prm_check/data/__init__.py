"""Data: the built-in corpus and records, tokenised batches."""
