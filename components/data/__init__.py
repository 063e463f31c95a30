"""Corpora and the downstream task: sources, ingest, validation."""
