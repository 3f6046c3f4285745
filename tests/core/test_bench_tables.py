"""The bench/ helpers that choose which stored figures a results table prints: a figure of a
re-evaluation record (e.g. a newer evaluation revision) replaces the training-time one and
says which revision scored it (docs/ilm.md, docs/datasets.md)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pandas as pd
import pytest

from mrkd_core.storage import ArtifactStore

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    return lambda name: importlib.import_module(name)


def _record(trained: str, evaluated: str, auroc: float, revision: int | None) -> dict:
    rec = {"dataset": "elpv", "category": "mono", "config_hash": evaluated, "score_scales": "1,2,3",
           "model": f"/s/runs/r/elpv/mono/{trained}/model.pt",
           "metrics": {"image_auroc": auroc, "pixel_auroc": None, "au_pro": None, "au_pro_per_image": None,
                       "f1_max_image": 0.9, "f1_max_pixel": None}, "config": {}}
    return rec if revision is None else {**rec, "evaluation_revision": revision}


def test_read_evaluations_names_the_trained_model_and_the_revision(tmp_path, bench):
    store = ArtifactStore(str(tmp_path))
    store.write_json("evaluations/e/metrics.json", {"mean": {}})  # the summary is not a model's record
    store.write_json("evaluations/e/elpv/mono/bbbb/metrics.json", _record("aaaa", "bbbb", 0.7, None))
    store.write_json("evaluations/e/elpv/poly/cccc/metrics.json", {**_record("cccc", "cccc", 0.8, 2),
                                                                    "category": "poly"})
    recs = sorted(bench("eval_records").read_evaluations(store, "e"), key=lambda r: r["category"])
    assert [(r["category"], r["trained_hash"], r["evaluation_revision"]) for r in recs] == [
        ("mono", "aaaa", 1), ("poly", "cccc", 2)]
    assert bench("eval_records").read_evaluations(store, "absent") == []


def test_run_table_takes_metrics_from_the_evaluation_and_keeps_the_timings(tmp_path, bench):
    run_table = bench("run_table")
    store = ArtifactStore(str(tmp_path))
    store.write_json("evaluations/e/elpv/mono/aaaa/metrics.json", _record("aaaa", "aaaa", 0.7795, 2))
    base = {"dataset": "elpv", "category": "mono", "score_scales": "1,2,3", "cfg_flm": True, "n_train": 10,
            "n_test": 5, "cfg_epochs": 8, "train_seconds": 100.0, "images_per_second": 3.0,
            "started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T00:02:00+00:00",
            "pixel_auroc": None, "au_pro": None, "au_pro_per_image": None, "f1_max_pixel": None}
    metrics = pd.DataFrame([
        {**base, "config_hash": "aaaa", "cfg_ilm": True, "image_auroc": 0.787, "f1_max_image": 0.845},
        {**base, "config_hash": "dddd", "cfg_ilm": False, "cfg_flm": False, "image_auroc": 0.761,
         "f1_max_image": 0.845},
        {**base, "config_hash": "aaaa", "cfg_ilm": True, "score_scales": "3", "image_auroc": 0.5,
         "f1_max_image": 0.5}])
    table = run_table.run_table(run_table.with_evaluations(metrics, bench("eval_records").read_evaluations(store, "e")))
    assert list(table["model"]) == ["MRKD", "RD4AD (no ILM, no FLM)"]
    assert table["image AU-ROC"].round(2).tolist() == [77.95, 76.1]  # the record's, the run's own
    assert table["eval rev"].tolist() == [2, 1]
    assert table["train s"].tolist() == [100.0, 100.0] and table["wall s"].tolist() == [120.0, 120.0]


def test_a_reused_result_reports_the_revision_of_the_run_that_scored_it(tmp_path, bench):
    """Run b skipped a key that run a had completed (its rows are a's, copied under b): the figure's
    evaluation revision is the one a's manifest records, not 1 for b's absent directory."""
    from mrkd_core.partitioned import METRICS_TABLE, SOURCE_COLUMN, read_metrics
    from tests.datagen import table_row

    store = ArtifactStore(str(tmp_path))
    scored = "runs/a/elpv/mono/aaaa"
    store.write_json(f"{scored}/manifest.json", {"format": "mrkd-manifest/1", "evaluation_revision": 2})
    store.write_json("runs/b/elpv/poly/cccc/manifest.json", {"format": "mrkd-manifest/1"})  # trained by b, unrecorded
    for run in ("a", "b"):
        METRICS_TABLE.write(store, [table_row(METRICS_TABLE.schema, dataset="elpv", run_id=run, category="mono",
                                              config_hash="aaaa")], "mono-mrkd-aaaa.parquet", scored)
    METRICS_TABLE.write(store, [table_row(METRICS_TABLE.schema, dataset="elpv", run_id="b", category="poly",
                                          config_hash="cccc")], "poly-mrkd-cccc.parquet", "runs/b/elpv/poly/cccc")
    metrics = read_metrics(store, "b", with_source=True)
    assert sorted(metrics[SOURCE_COLUMN]) == [scored, "runs/b/elpv/poly/cccc"]
    revised = bench("eval_records").with_run_revisions(store, metrics).sort_values("category")
    assert revised["evaluation_revision"].tolist() == [2, 1]
    assert SOURCE_COLUMN not in read_metrics(store, "b").columns  # the table's own columns by default
    assert SOURCE_COLUMN in read_metrics(store, "absent", with_source=True).columns
