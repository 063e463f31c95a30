"""What a stage on a work pool is sent of its upstream stages' uncached outs (flows/pools.py)."""
from __future__ import annotations

from flows.pools import needed_files


def test_a_stage_is_sent_only_the_uncached_files_it_depends_on():
    outs = ["reports/validation", "reports/pretrain/clm/metrics.json", "reports/pretrain/clm/train_loss.csv",
            "reports/corpus_stats.json"]
    # train_tokenizer names one file inside validate's folder (which also holds GX's Data Docs)
    assert needed_files(outs, ["data/corpus", "reports/validation/result.json"]) == ["reports/validation/result.json"]
    # evaluate depends on the parent folder of the pretrain reports: all of them
    assert needed_files(outs, ["models/finetuned", "reports/pretrain"]) == [
        "reports/pretrain/clm/metrics.json", "reports/pretrain/clm/train_loss.csv"]
    # an out depended on by its own path comes whole; a look-alike prefix is not inside it
    assert needed_files(outs, ["reports/validation", "reports/corpus_stats.json.bak"]) == ["reports/validation"]
    assert needed_files(outs, ["components/data/corpus.py"]) == []
