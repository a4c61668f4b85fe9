"""Batch feed generation: every user's feed from a model package, as Parquet shards
(:mod:`pinrank.batch.feeds`; ``pinrank feeds`` on the command line)."""
