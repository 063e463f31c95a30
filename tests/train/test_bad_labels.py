"""Downstream data with labels outside the label set, or of the wrong type: the finetune stage
refuses it in one line naming the file and row, exit 1, with no model written and no MLflow
run (so the registry is untouched)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components import paths
from components.objectives import ARCHITECTURES
from components.config import TokenizerConfig
from conftest import ROOT, _prose

LABELS = ["io", "text"]
TEXTS = [f"Return the value number {i} of the container, as the docs say." for i in range(8)]

CASES = {
    "label_outside_the_set": ([0, 1, 0, 99, 1, 0, 1, 0], "row 3 has label 99 outside the 2 labels in labels.json"),
    "negative_label": ([0, 1, -1, 0, 1, 0, 1, 0], "row 2 has label -1 outside the 2 labels"),
    "label_of_the_wrong_type": (["io", "text"] * 4, "row 0 has label 'io' outside the 2 labels"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    started = {}
    tokenizer = tmp_path_factory.mktemp("tok") / "bert"
    ARCHITECTURES["bert"].train_tokenizer(_prose(), TokenizerConfig(vocab_size=400, min_frequency=1), tokenizer)
    for case, (labels, _message) in CASES.items():
        work = tmp_path_factory.mktemp(case)
        (work / "params.yaml").write_text("profile: tiny\n")
        shutil.copytree(tokenizer, work / paths.tokenizer_dir("bert"))
        downstream = work / paths.DOWNSTREAM_DIR
        downstream.mkdir(parents=True)
        (downstream / "labels.json").write_text(json.dumps({"labels": LABELS}))
        for split in ("train", "validation", "test"):
            rows = labels if split == "train" else [0, 1] * 4
            pq.write_table(pa.table({"text": TEXTS, "label": rows, "module": ["m"] * 8}), downstream / f"{split}.parquet")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "LMFORGE_DEBUG": "",
               "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
        started[case] = (work, subprocess.Popen([sys.executable, "-m", "pipelines.finetune", "--run", "scratch-bert"],
                                                cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                text=True))
    return {case: (work, proc, *proc.communicate(timeout=300)) for case, (work, proc) in started.items()}


@pytest.mark.parametrize("case", CASES)
def test_labels_outside_the_label_set_are_refused_naming_file_and_row(case, runs):
    work, proc, _stdout, stderr = runs[case]
    assert proc.returncode == 1, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"error: finetune: {paths.DOWNSTREAM_DIR}/train.parquet: {CASES[case][1]}")
    assert not (work / "models").exists() and not (work / "reports").exists()
    assert not (work / "mlflow.db").exists()  # no run, no registry
