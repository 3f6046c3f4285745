"""Datasets without pixel masks: image metrics computed, pixel metrics absent with the reason.

A user's folder with only ``test/good`` and ``test/<defect>`` (no ``ground_truth/``) is a
normal case: through ``mrkd data check``, ``mrkd train``/``evaluate`` (metrics JSON), the
engine the flows fan out (Parquet: null + ``pixel_metrics_absent``) and the report (a dash
with a footnote). A defect image missing its mask where the others have one stays an error.
"""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mrkd_core.cli import main
from mrkd_core.data import Sample, get_dataset
from mrkd_core.data.synthetic import make_synthetic_mvtec
from mrkd_core.engine import train_evaluate
from mrkd_core.errors import DataError
from mrkd_core.evaluate import has_pixel_ground_truth
from mrkd_core.layout import run_dir
from mrkd_core.metrics import NO_PIXEL_GROUND_TRUTH, PIXEL_METRICS, absent_metrics, compute_all
from mrkd_core.paper_tables import ABSENT_MARK
from mrkd_core.partitioned import read_metrics, read_scores
from mrkd_core.report import write_report
from mrkd_core.results import ABSENT_COLUMN, read_maps
from mrkd_core.specs import parse_spec
from mrkd_core.storage import ArtifactStore
from tests import datagen

FAST = datagen.FAST_CLI


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """obj_disc without ground_truth/ (image labels only), tex_stripes with its masks."""
    root = tmp_path_factory.mktemp("image-labels")
    make_synthetic_mvtec(root, categories=("tex_stripes", "obj_disc"), n_train=4, n_test_good=2,
                         n_test_defect=3, size=32, seed=3)
    shutil.rmtree(root / "obj_disc" / "ground_truth")
    return root


def test_folder_without_ground_truth_is_image_labelled(data_root):
    ds = get_dataset("folder")
    samples = ds.test_samples(data_root, "obj_disc")
    defective = [s for s in samples if s.label == 1]
    assert len(defective) == 3 and all(s.mask_path is None for s in defective)
    assert not has_pixel_ground_truth(samples)
    assert not ds.ground_truth(data_root, "obj_disc").pixel_masks
    assert ds.ground_truth(data_root, "tex_stripes").pixel_masks
    assert has_pixel_ground_truth(ds.test_samples(data_root, "tex_stripes"))
    # MVTec AD itself keeps requiring masks: a missing ground_truth/ is a broken copy there
    assert get_dataset("mvtec").masks_optional is False and get_dataset("btad").masks_optional is False


def test_data_check_says_which_kind_it_found(data_root, capsys):
    assert main(["data", "check", str(data_root)]) == 0
    out = capsys.readouterr().out
    assert "obj_disc: image labels only (no ground_truth/ folder)" in out
    assert "pixel AU-ROC, AU-PRO, AU-PRO per image and F1-max (pixel) are reported as absent" in out
    assert "tex_stripes: pixel masks (ground_truth/<defect>/<id>_mask.png)" in out
    assert "no problems found" in out


def test_a_missing_mask_among_masks_stays_an_error(data_root, tmp_path, capsys):
    root = tmp_path / "one-missing"
    shutil.copytree(data_root, root)
    gone = sorted((root / "tex_stripes" / "ground_truth").rglob("*_mask.png"))[0]
    gone.unlink()
    image = root / "tex_stripes" / "test" / gone.parent.name / gone.name.replace("_mask", "")
    assert main(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out
    assert f"{image}: defective test image has no ground-truth mask" in out
    with pytest.raises(DataError, match="ground-truth mask missing"):
        get_dataset("folder").test_samples(root, "tex_stripes")
    # a hand-made sample list mixing both is refused as well, naming the image
    mixed = [Sample("a.png", "a_mask.png", 1, "crack", "c"), Sample("b.png", None, 1, "crack", "c")]
    with pytest.raises(DataError, match="b.png: defective test image without a mask while 1 of 2 have one"):
        has_pixel_ground_truth(mixed)


def test_metrics_without_masks_are_absent_not_undefined():
    rng = np.random.default_rng(0)
    labels = np.array([0, 0, 1, 1, 1])
    maps = rng.random((5, 8, 8)).astype(np.float32)
    scores = maps.reshape(5, -1).max(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # absent metrics warn about nothing
        got = compute_all(scores, labels, maps, None)
    full = compute_all(scores, labels, maps, np.zeros((5, 8, 8), dtype=np.uint8) | (maps > 0.9))
    assert got["image_auroc"] == full["image_auroc"] and got["f1_max_image"] == full["f1_max_image"]
    assert all(np.isnan(got[m]) for m in PIXEL_METRICS)
    assert absent_metrics(False) == {m: NO_PIXEL_GROUND_TRUTH for m in PIXEL_METRICS}
    assert absent_metrics(True) == {}


def test_cli_metrics_json_reports_absent_with_the_reason(data_root, tmp_path, capsys):
    models = tmp_path / "models"
    assert main(["train", str(data_root), "-o", str(models), "-c", "obj_disc", *FAST]) == 0
    assert main(["evaluate", str(data_root), "-m", str(models), "--num-workers", "0", "--evaluation-id", "ev"]) == 0
    printed = json.loads(capsys.readouterr().out.split("\n}\n", 1)[1])  # the second JSON: evaluate's
    (cat_dir,) = (models / "evaluations" / "ev" / "folder" / "obj_disc").iterdir()
    per_cat = json.loads((cat_dir / "metrics.json").read_text())
    assert 0.0 <= per_cat["metrics"]["image_auroc"] <= 1.0 and per_cat["metrics"]["f1_max_image"] > 0
    for m in PIXEL_METRICS:
        assert per_cat["metrics"][m] is None
        assert per_cat["absent_metrics"][m] == NO_PIXEL_GROUND_TRUTH
    assert per_cat[ABSENT_COLUMN] == NO_PIXEL_GROUND_TRUTH
    summary = json.loads((models / "evaluations" / "ev" / "metrics.json").read_text())
    assert summary["absent_metrics"] == {"obj_disc": per_cat["absent_metrics"]}
    assert summary["mean"]["pixel_auroc"] is None and summary["mean"]["image_auroc"] is not None
    assert printed["absent_metrics"] == summary["absent_metrics"]


def test_engine_parquet_and_report_show_absent_metrics(data_root, tmp_path):
    """What the flows run (engine.train_evaluate per task of a spec), then the report."""
    spec = parse_spec({
        "name": "image-labels", "datasets": [{"name": "folder", "root": str(data_root), "categories": ["obj_disc"]}],
        "base": {"backbone": "resnet18", "teacher_weights": "none", "image_size": 32, "epochs": 1,
                 "batch_size": 4, "num_workers": 0, "progress": False},
    }, "test")
    store = ArtifactStore(tmp_path / "store")
    tasks = spec.tasks(str(tmp_path))
    for task in tasks:
        assert train_evaluate(task, store, "r1").status == "trained"
    image_only = read_metrics(store, "r1").iloc[0]
    assert image_only[ABSENT_COLUMN] == NO_PIXEL_GROUND_TRUTH and 0.0 <= image_only["image_auroc"] <= 1.0
    assert all(np.isnan(image_only[m]) for m in PIXEL_METRICS)
    # null in the Parquet file itself (NaN would read as "undefined")
    import pyarrow.parquet as pq

    d = run_dir(tasks[0], "r1")
    table = pq.read_table(store.uri(f"{d}/metrics.parquet").removeprefix("file://"))
    assert all(table.column(m).null_count == 1 for m in PIXEL_METRICS)
    assert table.column("image_auroc").null_count == 0
    # a rerun (skip) copies the stored row into the new run's tables: still null with the reason
    assert train_evaluate(tasks[0], store, "r2").status == "skipped"
    again = read_metrics(store, "r2")
    assert again[ABSENT_COLUMN].tolist() == [NO_PIXEL_GROUND_TRUTH] and again["pixel_auroc"].isna().all()

    triples = read_maps(store, d)
    assert triples and all(mask is None for _, mask, _ in triples)
    # the report of a run with both kinds: a masked category's row (a stored row of another
    # run, relabelled) keeps its numbers, the image-labelled one gets dashes and the footnote
    masked = read_metrics(store, "r1").assign(category="tex_stripes", **{ABSENT_COLUMN: None, "pixel_auroc": 0.9,
                                                                      "au_pro": 0.8, "au_pro_per_image": 0.8,
                                                                      "f1_max_pixel": 0.5})
    both = pd.concat([read_metrics(store, "r1"), masked], ignore_index=True)
    out = write_report(store, "r1", both, read_scores(store, "r1"),
                       maps_provider=lambda dataset, cat: read_maps(store, d) if cat == "obj_disc" else [])
    md = store.read_bytes("reports/r1/measured.md").decode()
    row = next(line for line in md.splitlines() if "| obj_disc |" in line)
    assert row.count(f"| {ABSENT_MARK} ") == len(PIXEL_METRICS)
    assert f"- {ABSENT_MARK} = not computed, {NO_PIXEL_GROUND_TRUTH} (folder/obj_disc)." in md
    masked_row = next(line for line in md.splitlines() if "| tex_stripes |" in line)
    assert ABSENT_MARK not in masked_row
    html = store.read_bytes(out["html"]).decode()
    assert html.count(f">{ABSENT_MARK}</td>") == len(PIXEL_METRICS) and "not computed, no pixel ground truth" in html
    assert any("heatmaps_folder_obj_disc" in f for f in out["figures"])


def test_calibration_without_masks_takes_the_pixel_threshold_from_good_pixels(data_root, tmp_path):
    """F1 needs labelled pixels. An image-labelled test split (what the flows calibrate on by
    default) gives the F1 image threshold on its image labels and a pixel threshold at the
    false-alarm rate on its good images' pixels, noted; the defective images' unlabelled
    pixels are used for neither. Verdicts reach the scores table, masks the predictions."""
    from mrkd_core.evaluate import evaluate
    from mrkd_core.inference import predict_images
    from mrkd_core.inference.calibration import DEFAULT_FALSE_ALARM_RATE, false_alarm_threshold
    from mrkd_core.model_io import load_model_file

    spec = parse_spec({
        "name": "image-labels", "datasets": [{"name": "folder", "root": str(data_root), "categories": ["obj_disc"]}],
        "base": {"backbone": "resnet18", "teacher_weights": "none", "image_size": 32, "epochs": 1,
                 "batch_size": 4, "num_workers": 0, "progress": False, "device": "cpu"},
    }, "test")
    store = ArtifactStore(tmp_path / "store")
    (task,) = spec.tasks(str(tmp_path))
    assert train_evaluate(task, store, "r1").status == "trained"
    model_pt = f"{run_dir(task, 'r1')}/model.pt"
    loaded = load_model_file(store, model_pt)
    cal = loaded.calibration
    assert cal["policy"] == "f1" and cal["on_evaluation_images"] and cal["n_defective"] == 3
    assert cal["pixel_policy"] == "false_alarm_rate" and cal["pixel_f1"] is None
    assert cal["target_false_alarm_rate"] == DEFAULT_FALSE_ALARM_RATE
    assert any(n.startswith("no pixel ground truth (image labels only)") for n in cal["notes"])

    samples = get_dataset("folder").test_samples(str(data_root), "obj_disc")
    ev = evaluate(loaded.model.eval(), loaded.config, samples, keep_maps=True)
    good = np.array([s["label"] for s in ev.scores]) == 0
    assert cal["pixel_threshold"] == pytest.approx(false_alarm_threshold(ev.maps[good], DEFAULT_FALSE_ALARM_RATE),
                                                   rel=1e-6)
    assert cal["achieved_pixel_false_alarm_rate"] <= DEFAULT_FALSE_ALARM_RATE

    scores = read_scores(store, "r1")
    assert scores["verdict"].notna().all() and scores["normalized_score"].between(0, 1).all()
    defective = next(s.path for s in samples if s.label == 1)
    (p,) = predict_images(store.uri(model_pt).removeprefix("file://"), [defective], tmp_path / "out",
                          device="cpu").predictions
    assert p.verdict in ("good", "defective") and p.error is None
    with Image.open(p.mask_path) as mask:
        assert mask.size == (32, 32)
