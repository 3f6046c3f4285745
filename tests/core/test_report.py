"""The report: tables as Parquet/Markdown, real PNG figures, one self-contained HTML page."""

from __future__ import annotations

import base64
import importlib.util
import io
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mrkd_core.paper_tables import MVTEC_CATEGORIES, TABLE_KEYS, build_table
from mrkd_core.report import format_cell, table_to_markdown, write_report
from mrkd_core.storage import ArtifactStore

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _load_fake_metrics():
    """The metrics-row generator of test_paper_tables.py, loaded by path (works in any pytest import mode)."""
    spec = importlib.util.spec_from_file_location("_mrkd_fake_metrics", Path(__file__).with_name("test_paper_tables.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fake = _load_fake_metrics()


def make_scores(metrics: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per-image scores for each main-setting model: anomalous images score higher."""
    rng = np.random.default_rng(seed)
    main = metrics[(metrics["variant"] == "mrkd") & (metrics["score_scales"] == "1,2,3")]
    rows = []
    for r in main.itertuples(index=False):
        for label, n, mu in ((0, 12, 0.3), (1, 18, 0.7)):
            for i in range(n):
                rows.append({"run_id": r.run_id, "dataset": r.dataset, "category": r.category,
                             "config_hash": r.config_hash, "variant": r.variant,
                             "path": f"{r.category}/test/{'good' if label == 0 else 'crack'}/{i:03d}.png",
                             "defect_type": "good" if label == 0 else "crack", "label": np.int8(label),
                             "score": float(rng.normal(mu, 0.08))})
    return pd.DataFrame(rows)


def make_provider(categories=("bottle", "carpet"), n: int = 2, size: int = 32, fail_on: str | None = None):
    rng = np.random.default_rng(1)
    calls: list[str] = []

    def provider(dataset: str, category: str):
        calls.append(category)
        if category == fail_on:
            raise FileNotFoundError(f"maps.npz of {category}")
        if category not in categories:
            return []
        out = []
        for _ in range(n):
            image = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            mask = np.zeros((size, size), dtype=np.uint8)
            mask[8:16, 10:20] = 1
            amap = rng.random((size, size)).astype(np.float32) * 0.2 + mask * 0.8
            out.append((image, mask, amap))
        return out

    provider.calls = calls
    return provider


def png_array(data: bytes) -> np.ndarray:
    assert data[:8] == PNG_MAGIC
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64)


@pytest.fixture(scope="module")
def metrics() -> pd.DataFrame:
    return fake.make_metrics("r-report")


@pytest.fixture(scope="module")
def report(tmp_path_factory, metrics):
    store = ArtifactStore(tmp_path_factory.mktemp("store"))
    provider = make_provider()
    result = write_report(store, "r-report", metrics, make_scores(metrics), provider)
    return store, result, provider


def test_every_table_is_written_as_parquet_and_markdown(report, metrics):
    store, result, _ = report
    assert list(result["tables"]) == ["measured", *TABLE_KEYS]
    for key, (pq_path, md_path) in result["tables"].items():
        assert pq_path == f"reports/r-report/{key}.parquet" and md_path == f"reports/r-report/{key}.md"
        stored = pd.read_parquet(io.BytesIO(store.read_bytes(pq_path)))
        expected = build_table(key, metrics)
        pd.testing.assert_frame_equal(stored.reset_index(drop=True), expected, check_dtype=False)
        assert stored.attrs["title"] == expected.attrs["title"]  # title and notes travel with the file
        md = store.read_bytes(md_path).decode()
        assert md.startswith(f"## {expected.attrs['title']}\n")
        assert "| " + " | ".join(expected.columns) + " |" in md
    md1 = store.read_bytes("reports/r-report/table_1.md").decode()
    cable = next(line for line in md1.splitlines() if line.startswith("| cable |"))[2:-2].split(" | ")
    measured = 100 * fake.value_of(metrics, "image_auroc", category="cable", **fake.MAIN)
    assert cable[:4] == ["cable", f"{measured:.1f}", "98.4", f"{measured - 98.4:+.1f}"]
    columns = list(build_table(1, metrics).columns)
    assert len(cable) == len(columns) == 15
    # SPADE prints '-' for cable in the paper: an empty cell, not 0 or nan.
    assert cable[columns.index("SPADE image_auroc (published)")] == ""
    assert cable[columns.index("RD4AD image_auroc (published)")] == "95.0"


def test_figures_are_real_non_blank_pngs(report):
    store, result, _ = report
    names = sorted(p.rsplit("/", 1)[1] for p in result["figures"])
    assert names == ["fig11_lambda.png", "heatmaps_mvtec_bottle.png", "heatmaps_mvtec_carpet.png",
                     "score_distributions_btad.png", "score_distributions_mtd.png",
                     "score_distributions_mvtec.png"]
    for path in result["figures"]:
        assert path.startswith("reports/r-report/figures/")
        img = png_array(store.read_bytes(path))
        assert img.shape[0] > 100 and img.shape[1] > 100
        assert img.std() > 5.0, path  # not a blank canvas
    fig6 = png_array(store.read_bytes("reports/r-report/figures/score_distributions_mvtec.png"))
    # 15 categories → a 3×5 grid: wider than tall, and both blue and red are drawn.
    assert fig6.shape[1] > fig6.shape[0]
    red = (fig6[..., 0] > 180) & (fig6[..., 1] < 120) & (fig6[..., 2] < 120)
    blue = (fig6[..., 2] > 150) & (fig6[..., 0] < 100)
    assert red.sum() > 100 and blue.sum() > 100


def test_html_is_self_contained_and_has_every_table_and_figure(report, metrics):
    store, result, _ = report
    assert result["html"] == "reports/r-report/report.html"
    page = store.read_bytes(result["html"]).decode()
    for key in TABLE_KEYS:
        assert build_table(key, metrics).attrs["title"] in page
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) == len(result["figures"]) == 6
    for data in embedded:
        assert base64.b64decode(data)[:8] == PNG_MAGIC
    assert not re.search(r'(src|href)="(https?:|//|figures/)', page)  # no external asset
    assert "<link" not in page and "<script" not in page
    assert "Narrowed run" not in page
    # every heatmap figure names the teacher that made it (the paper's setting here: ImageNet weights)
    assert len(re.findall(r"MRKD heatmap, mvtec/\w+\. Teacher: wide_resnet50_2, ImageNet weights\.", page)) == 2
    assert sorted(result["paths"]) == sorted(
        [p for pair in result["tables"].values() for p in pair] + result["figures"] + [result["html"]])
    assert all(store.exists(p) for p in result["paths"])


def test_provider_is_called_per_category_and_capped(report):
    _, _, provider = report
    assert set(MVTEC_CATEGORIES) <= set(provider.calls)


def test_narrowed_run_and_random_teacher_are_called_out(tmp_path):
    store = ArtifactStore(tmp_path)
    m = fake.make_metrics("smoke-2", categories=("bottle",), narrowed=True,
                          cfg_changes={"epochs": 2, "teacher_weights": "none"})
    result = write_report(store, "smoke-2", m, None, None)
    page = store.read_bytes(result["html"]).decode()
    assert "Narrowed run" in page and "Not the paper's setting" in page
    assert "epochs=2 (paper: 200)" in page and "teacher_weights=none" in page
    md = store.read_bytes("reports/smoke-2/table_1.md").decode()
    assert "NARROWED run" in md and "| average (1/15 categories) |" in md
    # No scores, no provider: only the λ curve (λ rows exist for 'bottle').
    assert [p.rsplit("/", 1)[1] for p in result["figures"]] == ["fig11_lambda.png"]


def test_no_maps_provider_no_lambda_rows_no_scores(tmp_path):
    store = ArtifactStore(tmp_path)
    m = fake.make_metrics("r-main", categories=("grid",))
    m = m[m["variant"] == "mrkd"]
    result = write_report(store, "r-main", m, make_scores(m), None)
    names = [p.rsplit("/", 1)[1] for p in result["figures"]]
    assert names == ["score_distributions_btad.png", "score_distributions_mtd.png", "score_distributions_mvtec.png"]
    assert not store.exists("reports/r-main/figures/fig11_lambda.png")


def test_failing_provider_skips_only_that_category(tmp_path, metrics):
    store = ArtifactStore(tmp_path)
    provider = make_provider(categories=("bottle", "carpet"), fail_on="carpet")
    result = write_report(store, "r-fail", metrics, None, provider)
    heat = [p.rsplit("/", 1)[1] for p in result["figures"] if "heatmaps_" in p]
    assert heat == ["heatmaps_mvtec_bottle.png"]


def test_heatmaps_are_keyed_by_dataset_and_category(tmp_path):
    """Two datasets with a category of the same name get one figure each, from their own maps."""
    store = ArtifactStore(tmp_path)
    m = fake.make_metrics("r-two", categories=("bottle",))
    m.loc[m["dataset"] == "btad", "category"] = m.loc[m["dataset"] == "btad", "category"].replace({"01": "bottle"})
    asked: list[tuple[str, str]] = []

    def provider(dataset: str, category: str):
        asked.append((dataset, category))
        amap = np.full((32, 32), 0.9 if dataset == "btad" else 0.1, dtype=np.float32)
        amap[0, 0] = 0.0
        return [(np.zeros((32, 32, 3), dtype=np.uint8), np.zeros((32, 32), dtype=np.uint8), amap)]

    result = write_report(store, "r-two", m, None, provider)
    assert {("mvtec", "bottle"), ("btad", "bottle")} <= set(asked)
    heat = sorted(p.rsplit("/", 1)[1] for p in result["figures"] if "heatmaps_" in p)
    assert "heatmaps_btad_bottle.png" in heat and "heatmaps_mvtec_bottle.png" in heat


def test_format_cell_and_markdown_escaping():
    assert format_cell(98.94, "image_auroc measured") == "98.9"
    assert format_cell(0.44, "image_auroc delta") == "+0.4"
    assert format_cell(-1.7, "image_auroc delta") == "-1.7"
    assert format_cell(math.nan, "image_auroc paper") == ""
    assert format_cell(0.2, "alpha") == "0.2" and format_cell(True, "ilm") == "yes"
    assert format_cell(np.int64(12), "n_categories") == "12"
    df = pd.DataFrame({"setting": ["a|b"], "x measured": [1.25]})
    df.attrs = {"title": "T", "notes": ["n1"]}
    assert table_to_markdown(df) == "## T\n\n| setting | x measured |\n|:---|---:|\n| a\\|b | 1.2 |\n\n- n1\n"


def test_thresholds_chosen_on_the_test_split_are_called_out(tmp_path):
    """The scores table's on_evaluation_images (the calibration's record) puts a line in the
    measured table's notes and a banner on the page; thresholds chosen elsewhere, or no
    calibration (null), add nothing."""
    m = fake.make_metrics("r-cal", categories=("grid", "bottle"))
    m = m[m["variant"] == "mrkd"]
    scores = make_scores(m)
    scores["on_evaluation_images"] = None  # uncalibrated, or rows stored before the column
    store = ArtifactStore(tmp_path)
    write_report(store, "r-none", m, scores, None)
    assert "test split" not in store.read_bytes("reports/r-none/measured.md").decode()
    assert "Thresholds chosen on the test split" not in store.read_bytes("reports/r-none/report.html").decode()

    scores["on_evaluation_images"] = [c == "grid" and d == "mvtec" for c, d in zip(scores["category"], scores["dataset"])]
    result = write_report(store, "r-cal", m, scores, None)
    md = store.read_bytes("reports/r-cal/measured.md").decode()
    (line,) = [n for n in md.splitlines() if "test split" in n]
    assert line.startswith("- Verdicts of mvtec/grid (mrkd) ") and "bottle" not in line
    assert "no unbiased test" in line and "validation_fraction" in line
    page = store.read_bytes(result["html"]).decode()
    assert "Thresholds chosen on the test split" in page and "mvtec/grid (mrkd)" in page
    stored = pd.read_parquet(io.BytesIO(store.read_bytes("reports/r-cal/measured.parquet")))
    assert any("mvtec/grid" in n for n in stored.attrs["notes"])
