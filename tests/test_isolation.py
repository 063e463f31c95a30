"""Tests pass in any order and any subset: what one test does to the process's environment
does not reach the next (tests/conftest.py restores it after every test)."""
from __future__ import annotations

import os

import pytest

from conftest import same_environment


def test_a_tracking_uri_that_mlflow_writes_does_not_outlive_the_test(tmp_path):
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    store, down = f"sqlite:///{tmp_path / 'mlflow.db'}", "http://127.0.0.1:9"
    with same_environment():
        with pytest.MonkeyPatch.context() as mp:
            mlflow.set_tracking_uri(store)  # writes MLFLOW_TRACKING_URI
            mp.setenv("MLFLOW_TRACKING_URI", down)  # so monkeypatch saves mlflow's value...
            mlflow.set_tracking_uri(None)
        assert os.environ.get("MLFLOW_TRACKING_URI") == store  # ...and puts it back: the leak
        os.environ["LMFORGE_TEST_LEFT_BEHIND"] = "1"
    assert os.environ.get("MLFLOW_TRACKING_URI") == before
    assert "LMFORGE_TEST_LEFT_BEHIND" not in os.environ
    assert not mlflow.tracking.is_tracking_uri_set() or before is not None
