"""lmforge library code: pure functions and small typed configs, no Prefect, no argv."""
