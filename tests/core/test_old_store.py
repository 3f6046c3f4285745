"""A store written by an earlier version is read, reported and extended by this one.

The fixture (tests/fixtures/store-15298c0, made by tests/fixtures/make_old_store.py from
main at 15298c0) holds two runs, ``0001`` and ``0002``, of the smoke spec: tables without
the columns added since (fingerprints, training revision) and run ids that readers
inferring partition types would turn into the integers 1 and 2. Its ``model.pt`` files
were left out (size), so its run directories do not count as complete for the skip rule.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mrkd_core.engine import train_evaluate
from mrkd_core.partitioned import METRICS_TABLE, SCORES_TABLE, read_metrics, read_scores
from mrkd_core.registry.tables import read_history, read_promotions
from mrkd_core.registry.tracking import RegistryOptions
from mrkd_core.report import write_report
from mrkd_core.results import read_maps
from mrkd_core.specs import load_spec, prepare_data
from mrkd_core.storage import ArtifactStore
from tests import readers

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "store-15298c0"
SPECS = [Path(__file__).resolve().parents[2] / "flows" / "specs"]  # the flows' specs, passed as the flows do
NEW_COLUMNS = ["train_fingerprint", "test_fingerprint", "training_revision"]
OLD_RUNS = {"0001", "0002"}


@pytest.fixture
def old_store(tmp_path) -> ArtifactStore:
    shutil.copytree(FIXTURE, tmp_path / "store")
    return ArtifactStore(tmp_path / "store")


def _maps(store: ArtifactStore, run_id: str):
    dirs = {p.split("/")[3]: p for p in (str(m.parent.relative_to(store.root)) for m in
                                         Path(store.root, "runs", run_id).rglob("manifest.json"))}
    return lambda category: read_maps(store, dirs[category])


def _check_reads(store: ArtifactStore, old_rows: int, new_runs: set[str]) -> None:
    """Every reader: all runs as the strings written; old rows null in the new columns, new rows filled."""
    uri = store.uri("tables/metrics")
    frames = {"ours": read_metrics(store), "pandas": readers.with_pandas(uri, METRICS_TABLE.schema),
              "pyarrow": readers.with_pyarrow(uri, METRICS_TABLE.schema).to_pandas(),
              "duckdb": readers.with_duckdb(uri)}
    for name, df in frames.items():
        assert set(df["run_id"].astype(str)) == OLD_RUNS | new_runs, name
        if name == "duckdb" and not new_runs:
            # DuckDB takes the union of the files' columns: none of these files has the new ones yet.
            assert not set(NEW_COLUMNS) & set(df.columns) and len(df) == old_rows
            continue
        assert set(NEW_COLUMNS) <= set(df.columns), name
        old = df[df["run_id"].isin(OLD_RUNS)]
        assert len(old) == old_rows and old[NEW_COLUMNS].isna().all().all(), name
        assert old["image_auroc"].between(0, 1).all(), name
        new = df[df["run_id"].isin(new_runs)]
        assert new["train_fingerprint"].str.len().eq(64).all() and new["training_revision"].notna().all(), name
    assert (frames["pandas"]["run_id"] == "0001").sum() == 2  # the README's own example now selects rows
    scores_uri = store.uri("tables/scores")
    assert set(readers.with_pandas(scores_uri, SCORES_TABLE.schema)["run_id"]) == OLD_RUNS | new_runs
    assert set(readers.with_duckdb(scores_uri)["run_id"]) == OLD_RUNS | new_runs


def test_fixture_is_what_the_old_version_wrote():
    meta = json.loads((FIXTURE / "FIXTURE.json").read_text())
    assert meta["commit"].startswith("15298c0") and meta["runs"] == sorted(OLD_RUNS)
    manifest = json.loads(next(FIXTURE.rglob("manifest.json")).read_text())
    assert "train_fingerprint" not in manifest and "model.pt" in manifest["files"]


def test_old_store_is_read_by_our_readers_and_the_documented_calls(old_store):
    _check_reads(old_store, old_rows=4, new_runs=set())
    assert len(read_scores(old_store, "0001")) == 12 and set(read_scores(old_store)["run_id"]) == OLD_RUNS


def test_old_store_is_reported(old_store):
    report = write_report(old_store, "0002", read_metrics(old_store, "0002"), read_scores(old_store, "0002"),
                          _maps(old_store, "0001"))
    html = old_store.read_bytes(report["html"]).decode()
    assert "tex_stripes" in html and "obj_disc" in html
    assert any("score_distributions" in f for f in report["figures"])


def test_old_store_is_extended_by_a_new_run(old_store, tmp_path):
    spec = load_spec("smoke", SPECS).narrow(categories=["obj_disc"], image_size=32)
    prepare_data(spec, str(tmp_path / "data"))
    (task,) = spec.tasks(str(tmp_path / "data"))
    assert read_history(old_store).empty and read_promotions(old_store).empty  # no registry before
    result = train_evaluate(task, old_store, "0003", register=RegistryOptions())  # the flows' default
    assert result.status == "trained"  # the old result is not complete (no model.pt) and has no fingerprints
    assert (result.registry["model"], result.registry["decision"]) == ("smoke-mrkd/folder/obj_disc", "first")
    _check_reads(old_store, old_rows=4, new_runs={"0003"})
    both = read_metrics(old_store)
    assert len(both) == 5 and both.set_index("run_id").loc["0003", "category"] == "obj_disc"
    report = write_report(old_store, "0003", read_metrics(old_store, "0003"), read_scores(old_store, "0003"),
                          _maps(old_store, "0003"), history_df=read_history(old_store))
    assert old_store.exists(report["html"]) and any("history_" in f for f in report["figures"])
