"""A short version of the load test (benchmarks/serve_load.py): 4 concurrent clients against
the session pipeline's champion classifier, served by `mlflow models serve` on 127.0.0.1,
for a few seconds; no request may fail. The 60-second numbers are in docs/RELIABILITY.md."""
from __future__ import annotations

import pytest

from benchmarks.serve_load import run

pytestmark = pytest.mark.slow


def test_four_clients_against_the_served_champion_never_fail(dvc_repo):
    result = run(dvc_repo, "models:/lmforge-mlm@champion", clients=4, seconds=5, warmup=1)
    assert result["host"] == "127.0.0.1"
    assert result["requests"] >= 20 and result["failed"] == 0, result["first_failures"]
