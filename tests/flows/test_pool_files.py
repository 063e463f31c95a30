"""What a stage on a work pool is sent of its upstream stages' uncached outs (flows/pools.py)."""
from __future__ import annotations

from flows.pools import needed_files

OUTS = ["reports/validation", "reports/pretrain/clm/metrics.json", "reports/corpus_manifest.json"]


def test_an_out_folder_is_cut_to_the_files_a_stage_names_inside_it():
    # train_tokenizer names one file inside validate's folder (which also holds GX's Data Docs)
    assert needed_files(["reports/validation"], ["data/corpus", "reports/validation/result.json"]) == [
        "reports/validation/result.json"]
    # a look-alike prefix is not inside it
    assert needed_files(["reports/validation"], ["reports/validation-old/x"]) == ["reports/validation"]


def test_every_other_uncached_out_goes_whole_as_before():
    # register reads the corpus manifest for its lineage without naming it: it still gets it
    assert needed_files(OUTS, ["reports/comparison.json", "reports/validation/result.json"]) == [
        "reports/validation/result.json", "reports/pretrain/clm/metrics.json", "reports/corpus_manifest.json"]
    assert needed_files(OUTS, ["models/finetuned", "reports/pretrain"]) == OUTS
