"""Prefect orchestration only: flows run the DVC stages, never a second implementation of them."""
