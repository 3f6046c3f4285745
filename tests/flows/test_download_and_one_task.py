"""flows.download (idempotent dataset preparation) and flows.train_evaluate (one category)."""

from __future__ import annotations

import threading

import pytest

from flows.download import dataset_records, ensure_dataset
from flows.settings import spec_path
from mrkd_core.specs import load_spec


def _marker_times(root):
    return {p.name: p.stat().st_mtime_ns for p in root.rglob(".*") if p.is_file()}


def test_ensure_dataset_generates_once_even_when_called_in_parallel(tmp_path):
    """Trainings that start together on one node all call it; one of them generates."""
    (record,) = dataset_records(load_spec("smoke", spec_path()), str(tmp_path))
    threads = [threading.Thread(target=ensure_dataset, args=(record,)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    root = tmp_path / "generated-smoke"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["obj_disc", "tex_stripes"]
    assert len(list((root / "obj_disc" / "train" / "good").glob("*.png"))) == 6
    before = _marker_times(root)
    assert ensure_dataset(record) == str(root)
    assert _marker_times(root) == before  # second call: a marker check, nothing rewritten


@pytest.mark.slow
def test_download_flow_then_one_category_twice(prefect_api, local_store, tmp_path):
    from flows.download import download
    from flows.train_evaluate import train_evaluate_flow

    roots = download(spec="smoke")
    assert roots == [str(tmp_path / "data" / "generated-smoke")]
    first = train_evaluate_flow(spec="smoke", category="obj_disc", run_id="one", image_size=32)
    again = train_evaluate_flow(spec="smoke", category="obj_disc", run_id="two", image_size=32)
    assert [(r["category"], r["status"]) for r in first] == [("obj_disc", "trained")]
    assert [(r["category"], r["status"]) for r in again] == [("obj_disc", "skipped")]
    assert again[0]["run_dir"] == first[0]["run_dir"]
    assert first[0]["node_id"] is None  # ran in this process, not on Ray
