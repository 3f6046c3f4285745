"""VisA, MVTec AD 2 and MVTec LOCO AD through the ``mrkd`` command: download, check, train, evaluate, report.

Each dataset is its published archive in miniature (``tests/datagen.py``: the published file
name, packing and layout, a few generated images per category), served by a local HTTP server
on 127.0.0.1 and fetched as a user fetches a mirror: ``mrkd data download NAME --root R --url
URL --sha256 HASH`` (the generated archive's hash replaces the real one). Then ``mrkd data
check R`` (the layout recognised), ``mrkd train R --dataset auto`` (ResNet18, random teacher,
32 px, one epoch), ``mrkd evaluate`` and ``mrkd report``; MVTec AD 2's private test sets go
through ``mrkd ad2-submission``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import tifffile
from PIL import Image

from mrkd_core.cli import main
from mrkd_core.data import get_dataset
from mrkd_core.data.base import COMPLETION_MARKER
from mrkd_core.data.validate import computed_metrics
from mrkd_core.metrics import METRIC_NAMES, PROTOCOL_METRICS
from mrkd_core.model_io import load_model_file
from tests import datagen
from tests.http_files import serve_files

# One category each: what a user narrows a first try to.
CATEGORIES = {"visa": "candle", "mvtec_ad2": "can", "mvtec_loco": "breakfast_box"}
ALL_CATEGORIES = {"visa": datagen.VISA_OBJECTS, "mvtec_ad2": datagen.MVTEC_AD2_SCENARIOS,
                  "mvtec_loco": datagen.MVTEC_LOCO_CATEGORIES}
RUN = "bench"


def _cli(*args: str) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["-q", *args])
    return code, buf.getvalue()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """Every step of every dataset through the CLI, in the order a user types them; their exit codes and output."""
    tmp = tmp_path_factory.mktemp("benchmark-cli")
    data, store = tmp / "data", tmp / "store"
    steps: dict = {"data": data, "store": store, "submission": tmp / "submission"}
    with serve_files() as (state, base):
        for name, category in CATEGORIES.items():
            filename, archive = datagen.benchmark_archive(name, tmp)
            state.files[f"/{filename}"] = archive
            root = data / name
            steps[name] = {
                "download": _cli("data", "download", name, "--root", str(root), "--url", f"{base}/{filename}",
                                 "--sha256", hashlib.sha256(archive).hexdigest()),
                "check": _cli("data", "check", str(root)),
                "train": _cli("train", str(root), "--dataset", "auto", "-c", category, "-o", str(store),
                              "--run-id", RUN, *datagen.FAST_CLI),
                "evaluate": _cli("evaluate", str(root), "--dataset", name, "-m", str(store), "-c", category,
                                 "--evaluation-id", f"ev-{name}", "--num-workers", "0", "--device", "cpu"),
            }
        steps["requests"] = list(state.requests)
    steps["report"] = _cli("report", str(store), "--run-id", RUN)
    steps["ad2-submission"] = _cli("ad2-submission", str(data / "mvtec_ad2"), "-m", str(store), "-o",
                                   str(steps["submission"]), "--device", "cpu")
    return steps


def _stored_row(store: Path, name: str):
    """The training run's metrics row of the category (the config's own fusion), as Arrow: nulls stay nulls."""
    (path,) = (store / "runs" / RUN / name / CATEGORIES[name]).glob("*/metrics.parquet")
    return pq.read_table(path).slice(0, 1)


@pytest.mark.parametrize("name", list(CATEGORIES))
def test_download_check_train_evaluate(run, name):
    steps, root, category = run[name], run["data"] / name, CATEGORIES[name]
    assert {step: code for step, (code, _) in steps.items()} == dict.fromkeys(steps, 0), steps
    marker = json.loads((root / COMPLETION_MARKER).read_text())
    assert marker["url"].startswith("http://127.0.0.1:") and marker["sha256_given"] is True
    assert get_dataset(name).categories(root) == list(ALL_CATEGORIES[name])  # read in place, every category

    check = steps["check"][1]
    assert f"{root}: layout {name}, recognised by" in check and f"{root}: no problems found" in check
    promised = computed_metrics(name, root, category)
    assert f"{category}: pixel masks (" in check and f"evaluate computes {', '.join(promised)}" in check

    # What check promised is what was computed: exactly these metrics are non-null in the stored row.
    row = _stored_row(run["store"], name)
    computed = {m for m in (*METRIC_NAMES, *PROTOCOL_METRICS) if row.column(m).null_count == 0}
    assert computed == set(promised)
    evaluated = json.loads(steps["evaluate"][1])["mean"]
    assert set(evaluated) == set(promised)  # `mrkd evaluate` reports the same metrics, the protocol's included


def test_each_archive_was_fetched_once_from_the_local_server(run):
    assert sorted(path for path, _ in run["requests"]) == sorted(
        f"/{datagen.BENCHMARK_ARCHIVES[name][0]}" for name in CATEGORIES)


def test_loco_and_ad2_protocol_metrics_are_in_the_evaluation(run):
    loco = json.loads(run["mvtec_loco"]["evaluate"][1])["mean"]
    assert loco["image_auroc_mean_types"] == pytest.approx(
        (loco["image_auroc_logical"] + loco["image_auroc_structural"]) / 2)
    assert 0.0 <= loco["au_spro_logical"] <= 1.0 and 0.0 <= loco["au_spro_structural"] <= 1.0
    ad2 = json.loads(run["mvtec_ad2"]["evaluate"][1])["mean"]
    assert 0.0 <= ad2["seg_f1"] <= 1.0 and 0.0 <= ad2["au_pro_005"] <= 1.0 and np.isfinite(ad2["seg_threshold"])


def test_report_has_a_table_per_benchmark_with_the_measured_category(run):
    code, out = run["report"]
    assert code == 0
    printed = json.loads(out)
    assert {"visa", "mvtec_ad2", "mvtec_loco"} <= set(printed["tables"])
    reports = run["store"] / "reports" / RUN
    for name, metric in (("visa", "au_pro"), ("mvtec_ad2", "seg_f1"), ("mvtec_loco", "au_spro_mean_types")):
        table = pd.read_parquet(reports / f"{name}.parquet").set_index("category")
        assert np.isfinite(table.loc[CATEGORIES[name], f"MRKD {metric} measured"]), name
        assert np.isnan(table[f"RD4AD {metric} measured"]).all(), name  # not trained here: empty, never filled
        published = [c for c in table.columns if c.endswith("(published)")]
        text = (reports / f"{name}.md").read_text()
        assert "teacher_weights=none" in text
        if name == "mvtec_loco":  # the shipped published cells, in their own columns, their source named
            assert "RD4AD image_auroc_logical (published)" in published and "| 66.7 |" in text
            assert table.loc["breakfast_box", "RD4AD image_auroc_logical (published)"] == 66.7
            assert "oopil/PSAD_logical_anomaly_detection" in text
        else:
            assert not published and "No published numbers" in text, name
    page = (reports / "report.html").read_text()
    assert "MVTec LOCO AD" in page and "RD4AD image_auroc_logical (published)" in page


def test_ad2_submission_is_in_the_servers_layout(run):
    code, out = run["ad2-submission"]
    assert code == 0
    record = json.loads(out)["categories"]["can"]
    assert record["images"] == 4
    # The threshold is the one evaluation chose on validation/good (same model, same images).
    stored = _stored_row(run["store"], "mvtec_ad2").column("seg_threshold")[0].as_py()
    assert record["threshold"] == pytest.approx(stored, rel=1e-5)
    sub, root = run["submission"], run["data"] / "mvtec_ad2"
    for split in ("test_private", "test_private_mixed"):
        for image in sorted((root / "can" / split).iterdir()):
            tiff = sub / "anomaly_images" / "can" / split / f"{image.stem}.tiff"
            png = sub / "anomaly_images_thresholded" / "can" / split / f"{image.stem}.png"
            amap, mask = tifffile.imread(tiff), np.asarray(Image.open(png))
            width, height = Image.open(image).size
            assert amap.dtype == np.float16 and amap.shape == (height, width)  # the image's own size
            assert mask.shape == (height, width) and set(np.unique(mask)) <= {0, 255}
            assert ((amap.astype(np.float32) >= record["threshold"]) == (mask == 255)).mean() > 0.99


def test_an_ad2_model_is_calibrated_on_the_validation_split_not_the_test_images(run):
    """MVTec AD 2's protocol chooses thresholds on validation/good: so does the model's stored calibration
    (what `mrkd predict` gives verdicts with), never on the test_public images it is evaluated on."""
    (model,) = (run["store"] / "runs" / RUN / "mvtec_ad2" / CATEGORIES["mvtec_ad2"]).glob("*/model.pt")
    cal = load_model_file(str(model), build=False).calibration
    assert cal["source"] == "dataset's validation split" and not cal["on_evaluation_images"]
    assert cal["policy"] == "false_alarm_rate" and cal["n_defective"] == 0
    assert cal["images"] and all("/validation/good/" in p for p in cal["images"])
    assert "mvtec_ad2 validation split" in cal["source_detail"]
