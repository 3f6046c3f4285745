"""Tables 1-8 and Fig. 11 assembled from generated, well-formed metrics rows.

``make_metrics`` builds rows with every column of the metrics contract
(docs/interfaces.md) for all the paper's experiments; test_report.py reuses it.
Expected numbers are computed here by hand from the generated rows and the CSV.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from mrkd_core.config import MRKDConfig
from mrkd_core.metrics import PROTOCOL_METRICS
from mrkd_core.paper_tables import (
    MVTEC_CATEGORIES,
    TABLE_KEYS,
    build_all,
    build_table,
)
from mrkd_core.published import load_published, published_value

METRICS = ("image_auroc", "pixel_auroc", "au_pro", "au_pro_per_image", "f1_max_image", "f1_max_pixel")
T0 = datetime(2026, 11, 28, 2, 0, tzinfo=timezone.utc)


def _cfg_columns(cfg: MRKDConfig) -> dict:
    """cfg_ columns as the contract stores them: native types, tuples as 'a,b' strings."""
    return {f"cfg_{k}": (",".join(str(x) for x in v) if isinstance(v, (list, tuple)) else v)
            for k, v in cfg.to_dict().items()}


def metrics_row(cfg: MRKDConfig, *, run_id: str, dataset: str, category: str, variant: str,
                values: dict, score_scales: str = "1,2,3", narrowed: bool = False,
                spec: str = "paper", finished_at: datetime = T0) -> dict:
    row = {
        "run_id": run_id, "spec": spec, "narrowed": narrowed, "dataset": dataset, "category": category,
        "config_hash": cfg.config_hash(), "variant": variant, "score_scales": score_scales,
        **_cfg_columns(cfg), "teacher_weights": cfg.teacher_weights,
        "n_train": 200, "n_test": 100, "n_test_anomalous": 60,
        "train_seconds": 3600.0, "images_per_second": 40.0,
        "device": "cuda", "torch_version": "2.14.1", "mrkd_version": "0.1.0", "git_revision": "abc123",
        "started_at": finished_at - timedelta(hours=1), "finished_at": finished_at,
        "train_fingerprint": "a" * 64, "test_fingerprint": "b" * 64, "training_revision": 2,
    }
    row.update({m: float(values[m]) for m in METRICS})
    row["pixel_metrics_absent"] = None  # every metric computed (a dataset with pixel masks)
    row.update(dict.fromkeys(PROTOCOL_METRICS))  # MVTec AD, MTD, BTAD have no protocol of their own
    return row


def experiments() -> list[tuple[str, MRKDConfig, str]]:
    """(variant, config, score_scales) of every cell the paper's tables need."""
    base = MRKDConfig()
    out = [("mrkd", base, s) for s in ("1,2,3", "1", "2", "3", "1,2", "2,3", "1,3")]
    out += [("baseline", base.replace(ilm=False, flm=False), "1,2,3"),
            ("ilm", base.replace(flm=False), "1,2,3"),
            ("flm", base.replace(ilm=False), "1,2,3")]
    out += [(f"alpha={a:g}", base.replace(ilm_fraction=a), "1,2,3") for a in (0.2, 0.4, 0.6, 0.8)]
    out += [(f"lambda={x:g}", base.replace(flm_ratio=x), "1,2,3") for x in (0.4, 0.6, 0.8)]
    out += [(b, base.replace(backbone=b), "1,2,3") for b in ("resnet18", "resnet50")]
    return out


def make_metrics(run_id: str = "r1", *, seed: int = 0, categories=MVTEC_CATEGORIES, narrowed: bool = False,
                 finished_at: datetime = T0, cfg_changes: dict | None = None) -> pd.DataFrame:
    """Fake-but-well-formed metrics rows: MVTec (all experiments), MTD and BTAD (main setting)."""
    rng = np.random.default_rng(seed)
    rows = []

    def values() -> dict:
        return {m: float(rng.uniform(0.80, 0.999)) for m in METRICS}

    k = 0
    for variant, cfg, scales in experiments():
        cfg = cfg.replace(**(cfg_changes or {}))
        for cat in categories:
            k += 1
            rows.append(metrics_row(cfg, run_id=run_id, dataset="mvtec", category=cat, variant=variant,
                                    values=values(), score_scales=scales, narrowed=narrowed,
                                    finished_at=finished_at + timedelta(seconds=k)))
    main = MRKDConfig().replace(**(cfg_changes or {}))
    rows.append(metrics_row(main, run_id=run_id, dataset="mtd", category="magnetic_tile", variant="mrkd",
                            values=values(), narrowed=narrowed, finished_at=finished_at))
    for cat in ("01", "02", "03"):
        rows.append(metrics_row(main, run_id=run_id, dataset="btad", category=cat, variant="mrkd",
                                values=values(), narrowed=narrowed, finished_at=finished_at))
    return pd.DataFrame(rows)


def pick(df: pd.DataFrame, **eq) -> pd.DataFrame:
    mask = pd.Series(True, index=df.index)
    for col, val in eq.items():
        mask &= df[col] == val
    return df[mask]


def value_of(df: pd.DataFrame, metric: str, **eq) -> float:
    hit = pick(df, **eq)
    assert len(hit) == 1, (eq, len(hit))
    return float(hit[metric].iloc[0])


def cell(table: pd.DataFrame, row: str, col: str):
    label = table.columns[0]
    hit = table.loc[table[label] == row, col]
    assert len(hit) == 1, (row, col)
    return hit.iloc[0]


@pytest.fixture(scope="module")
def metrics() -> pd.DataFrame:
    return make_metrics()


@pytest.fixture(scope="module")
def tables(metrics) -> dict[str, pd.DataFrame]:
    return build_all(metrics)


@pytest.fixture(scope="module")
def published() -> pd.DataFrame:
    return load_published()


MAIN = {"dataset": "mvtec", "variant": "mrkd", "score_scales": "1,2,3"}
PAPER_METHODS = ["DRAEM", "RIAD", "Intra", "PatchCore", "P-SVDD", "SPADE", "PaDiM", "CutPaste", "STFPM", "NSA",
                 "RD4AD"]


def test_build_all_returns_every_table_with_title_and_notes(tables):
    assert list(tables) == list(TABLE_KEYS)
    titles = [t.attrs["title"] for t in tables.values()]
    assert titles[0].startswith("Table 1.") and titles[7].startswith("Table 8.") and titles[8].startswith("Fig. 11.")
    for key, t in tables.items():
        assert t.attrs["key"] == key and t.attrs["unit"] == "percent"
        assert t.attrs["notes"] and t.attrs["runs"] == ["r1"]
        assert t.attrs["narrowed"] is False and t.attrs["not_paper_setting"] is False


def test_table_1_measured_paper_delta_and_published_columns(tables, metrics):
    t = tables["table_1"]
    assert list(t["category"]) == [*MVTEC_CATEGORIES, "average"]
    assert list(t.columns[:4]) == ["category", "image_auroc measured", "image_auroc paper", "image_auroc delta"]
    assert list(t.columns[4:]) == [f"{m} image_auroc (published)" for m in PAPER_METHODS]
    for cat in MVTEC_CATEGORIES:
        measured = 100 * value_of(metrics, "image_auroc", category=cat, **MAIN)
        paper = published_value(1, cat, "MRKD", "image_auroc")
        assert cell(t, cat, "image_auroc measured") == pytest.approx(measured, abs=1e-9)
        assert cell(t, cat, "image_auroc paper") == paper
        assert cell(t, cat, "image_auroc delta") == pytest.approx(measured - paper, abs=1e-9)
    # The paper's way: the plain mean over the 15 categories.
    by_hand = np.mean([100 * value_of(metrics, "image_auroc", category=c, **MAIN) for c in MVTEC_CATEGORIES])
    assert cell(t, "average", "image_auroc measured") == pytest.approx(by_hand, abs=1e-9)
    assert cell(t, "average", "image_auroc paper") == 98.9
    assert cell(t, "average", "image_auroc delta") == pytest.approx(by_hand - 98.9, abs=1e-9)
    # Published columns are the paper's numbers; '-' stays empty.
    assert cell(t, "cable", "RD4AD image_auroc (published)") == 95.0
    assert cell(t, "cable", "PatchCore image_auroc (published)") == 100.0
    assert math.isnan(cell(t, "carpet", "SPADE image_auroc (published)"))
    assert cell(t, "average", "SPADE image_auroc (published)") == 85.5
    assert cell(t, "average", "STFPM image_auroc (published)") == 95.5


def test_table_2_shows_both_au_pro_conventions(tables, metrics):
    t = tables["table_2"]
    assert list(t.columns[:8]) == [
        "category", "pixel_auroc measured", "pixel_auroc paper", "pixel_auroc delta",
        "au_pro_per_image measured", "au_pro paper", "au_pro_per_image delta", "au_pro measured",
    ]
    assert len(t) == 16 and len(t.columns) == 8 + 2 * 11
    pro = 100 * value_of(metrics, "au_pro", category="transistor", **MAIN)
    per_image = 100 * value_of(metrics, "au_pro_per_image", category="transistor", **MAIN)
    assert cell(t, "transistor", "au_pro measured") == pytest.approx(pro)
    assert cell(t, "transistor", "au_pro_per_image measured") == pytest.approx(per_image)
    assert cell(t, "transistor", "au_pro paper") == 91.4
    # The paper's AU-PRO used the per-image convention: the delta compares that one.
    assert cell(t, "transistor", "au_pro_per_image delta") == pytest.approx(per_image - 91.4)
    assert cell(t, "transistor", "pixel_auroc paper") == 98.1
    assert cell(t, "average", "au_pro paper") == 95.3
    assert cell(t, "tile", "PatchCore au_pro (published)") == 87.3
    assert math.isnan(cell(t, "tile", "DRAEM au_pro (published)"))  # '-' in the paper
    assert cell(t, "tile", "DRAEM pixel_auroc (published)") == 99.2
    assert any("au_pro_per_image" in n and "official" in n for n in t.attrs["notes"])


def test_tables_3_and_4_other_datasets(tables, metrics):
    t3 = tables["table_3"]
    assert list(t3["dataset"]) == ["mtd"]
    m = 100 * value_of(metrics, "image_auroc", dataset="mtd")
    assert cell(t3, "mtd", "image_auroc measured") == pytest.approx(m)
    assert cell(t3, "mtd", "image_auroc paper") == 98.7
    assert cell(t3, "mtd", "image_auroc delta") == pytest.approx(m - 98.7)
    assert cell(t3, "mtd", "DifferNet image_auroc (published)") == 97.7
    assert cell(t3, "mtd", "GeoTrans image_auroc (published)") == 75.5

    t4 = tables["table_4"]
    assert list(t4["category"]) == ["01", "02", "03", "average"]
    # The paper prints fractions: 1.00 → 100.0 %, 0.97 → 97.0 %.
    assert cell(t4, "03", "pixel_auroc paper") == pytest.approx(100.0)
    assert cell(t4, "average", "pixel_auroc paper") == pytest.approx(98.0)
    assert cell(t4, "01", "VT-ADL pixel_auroc (published)") == pytest.approx(99.0)
    vals = [100 * value_of(metrics, "pixel_auroc", dataset="btad", category=c) for c in ("01", "02", "03")]
    assert cell(t4, "02", "pixel_auroc measured") == pytest.approx(vals[1])
    assert cell(t4, "average", "pixel_auroc measured") == pytest.approx(np.mean(vals))
    assert any("fractions" in n for n in t4.attrs["notes"])


def _mvtec_mean(metrics: pd.DataFrame, metric: str, **eq) -> float:
    rows = pick(metrics, dataset="mvtec", **eq)
    assert len(rows) == 15
    return float(np.mean(100 * rows[metric]))


def test_table_5_ablation_rows_from_variant(tables, metrics):
    t = tables["table_5"]
    assert list(t["setting"]) == ["baseline", "baseline+ilm", "baseline+flm", "baseline+ilm+flm"]
    assert list(t["ilm"]) == [False, True, False, True] and list(t["flm"]) == [False, False, True, True]
    assert list(t["n_categories"]) == [15, 15, 15, 15]
    for setting, variant in [("baseline", "baseline"), ("baseline+ilm", "ilm"), ("baseline+flm", "flm"),
                             ("baseline+ilm+flm", "mrkd")]:
        m = _mvtec_mean(metrics, "pixel_auroc", variant=variant, score_scales="1,2,3")
        assert cell(t, setting, "pixel_auroc measured") == pytest.approx(m)
        p = published_value(5, setting, "MRKD", "pixel_auroc")
        assert cell(t, setting, "pixel_auroc paper") == p
        assert cell(t, setting, "pixel_auroc delta") == pytest.approx(m - p)
    assert cell(t, "baseline", "image_auroc paper") == 98.5
    assert cell(t, "baseline+ilm", "au_pro paper") == 95.0
    assert cell(t, "baseline+flm", "au_pro paper") == 94.4


def test_table_6_alpha_from_config(tables, metrics):
    t = tables["table_6"]
    assert list(t["setting"]) == ["alpha=0", "alpha=0.2", "alpha=0.4", "alpha=0.6", "alpha=0.8", "alpha=1"]
    assert list(t["alpha"]) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    m = _mvtec_mean(metrics, "au_pro_per_image", variant="alpha=0.4")
    assert cell(t, "alpha=0.4", "au_pro_per_image measured") == pytest.approx(m)
    assert cell(t, "alpha=0.4", "au_pro paper") == 95.2
    # α = 1 is the main run; α = 0 (no synthetic image) is the same training as ILM off: the 'flm' run.
    assert cell(t, "alpha=1", "image_auroc measured") == pytest.approx(
        _mvtec_mean(metrics, "image_auroc", variant="mrkd", score_scales="1,2,3"))
    assert cell(t, "alpha=0", "image_auroc measured") == pytest.approx(
        _mvtec_mean(metrics, "image_auroc", variant="flm"))
    assert cell(t, "alpha=0", "pixel_auroc paper") == 98.0


def test_fig_11_lambda_has_no_paper_column(tables, metrics):
    t = tables["fig_11"]
    assert list(t["setting"]) == ["lambda=0", "lambda=0.2", "lambda=0.4", "lambda=0.6", "lambda=0.8"]
    assert list(t["lambda"]) == [0.0, 0.2, 0.4, 0.6, 0.8]
    assert not any("paper" in c or "delta" in c or "published" in c for c in t.columns)
    assert cell(t, "lambda=0.6", "pixel_auroc measured") == pytest.approx(
        _mvtec_mean(metrics, "pixel_auroc", variant="lambda=0.6"))
    # λ = 0 is FLM off with ILM on: the 'ilm' run.
    assert cell(t, "lambda=0", "image_auroc measured") == pytest.approx(
        _mvtec_mean(metrics, "image_auroc", variant="ilm"))


def test_table_7_score_map_fusion(tables, metrics):
    t = tables["table_7"]
    assert list(t["score_map"]) == ["SM1", "SM2", "SM3", "SM1&2", "SM2&3", "SM1&3", "SM1&2&3"]
    assert list(t["score_scales"]) == ["1", "2", "3", "1,2", "2,3", "1,3", "1,2,3"]
    assert cell(t, "SM1&2", "image_auroc measured") == pytest.approx(
        _mvtec_mean(metrics, "image_auroc", variant="mrkd", score_scales="1,2"))
    assert cell(t, "SM1", "image_auroc paper") == 94.2
    assert cell(t, "SM3", "au_pro paper") == 84.3
    # SM1&3 is measured but not in the paper: empty paper cell and delta.
    assert not math.isnan(cell(t, "SM1&3", "image_auroc measured"))
    assert math.isnan(cell(t, "SM1&3", "image_auroc paper"))
    assert math.isnan(cell(t, "SM1&3", "image_auroc delta"))


def test_table_8_backbones(tables, metrics):
    t = tables["table_8"]
    assert list(t["backbone"]) == ["resnet18", "resnet50", "wide_resnet50_2"]
    m = _mvtec_mean(metrics, "image_auroc", variant="resnet18")
    assert cell(t, "resnet18", "image_auroc measured") == pytest.approx(m)
    assert cell(t, "resnet18", "image_auroc delta") == pytest.approx(m - 98.0)
    assert cell(t, "wide_resnet50_2", "au_pro paper") == 95.3


def test_measured_and_published_never_mix(tables, published):
    """Every column is a label, a measured value, the paper's MRKD, a delta or a published baseline."""
    kinds = (" measured", " paper", " delta", " (published)")
    labels = {"category", "dataset", "setting", "score_map", "backbone", "ilm", "flm", "alpha", "lambda",
              "score_scales", "n_categories"}
    for key, t in tables.items():
        for col in t.columns:
            assert col in labels or sum(col.endswith(k) for k in kinds) == 1, (key, col)
    # Every (published) cell equals the CSV (in percent), and the CSV's cells all appear.
    for n in (1, 2, 3, 4):
        t = tables[f"table_{n}"]
        pub = published[published["table"] == n]
        label = t.columns[0]
        seen = 0
        for _, r in pub.iterrows():
            row = "average" if r["row"] == "average" else r["row"]
            col = (f"{r['metric']} paper" if r["method"] == "MRKD" else f"{r['method']} {r['metric']} (published)")
            expected = r["value"] * (100 if r["unit"] == "fraction" else 1)
            assert cell(t, row, col) == pytest.approx(expected), (n, row, col)
            seen += 1
        n_published_cells = sum(int(t[c].notna().sum()) for c in t.columns
                                if c.endswith(" (published)") or c.endswith(" paper"))
        assert n_published_cells == seen


def test_missing_categories_stay_nan_and_subset_average_is_labelled(metrics):
    dropped = {"cable", "screw", "zipper"}
    t = build_table(1, metrics[~metrics["category"].isin(dropped)])
    assert list(t["category"])[-1] == "average (12/15 categories)"
    for cat in dropped:
        assert math.isnan(cell(t, cat, "image_auroc measured"))
        assert math.isnan(cell(t, cat, "image_auroc delta"))
        assert cell(t, cat, "image_auroc paper") == published_value(1, cat, "MRKD", "image_auroc")
    kept = [c for c in MVTEC_CATEGORIES if c not in dropped]
    by_hand = np.mean([100 * value_of(metrics, "image_auroc", category=c, **MAIN) for c in kept])
    avg = "average (12/15 categories)"
    assert cell(t, avg, "image_auroc measured") == pytest.approx(by_hand)
    assert cell(t, avg, "image_auroc paper") == 98.9
    assert math.isnan(cell(t, avg, "image_auroc delta"))  # a subset average is not the paper's
    assert any("12/15" in n for n in t.attrs["notes"])

    t5 = build_table(5, metrics[~metrics["category"].isin(dropped)])
    assert list(t5["n_categories"]) == [12, 12, 12, 12]
    assert math.isnan(cell(t5, "baseline", "image_auroc delta"))
    assert not math.isnan(cell(t5, "baseline", "image_auroc measured"))


def test_undefined_metric_is_nan_not_zero(metrics):
    m = metrics.copy()
    m.loc[(m["category"] == "grid") & (m["variant"] == "mrkd") & (m["score_scales"] == "1,2,3"), "au_pro"] = np.nan
    t = build_table(2, m)
    assert math.isnan(cell(t, "grid", "au_pro measured"))
    assert not math.isnan(cell(t, "grid", "pixel_auroc measured"))


def test_no_metrics_rows_gives_paper_numbers_and_empty_measured():
    for key, t in build_all(pd.DataFrame()).items():
        measured = [c for c in t.columns if c.endswith(" measured")]
        assert measured and t[measured].isna().all().all(), key
        assert t.attrs["n_measured_rows"] == 0
    t1 = build_table(1, None)
    assert cell(t1, "average (0/15 categories)", "image_auroc paper") == 98.9


def test_latest_finished_at_wins_across_runs(metrics):
    older = make_metrics("r-old", seed=1, finished_at=T0 + timedelta(days=1))
    newer = make_metrics("r-new", seed=2, finished_at=T0 + timedelta(days=2))
    for combined in (pd.concat([newer, older]), pd.concat([older, newer])):
        t = build_table(1, combined)
        want = 100 * value_of(newer, "image_auroc", category="pill", **MAIN)
        assert cell(t, "pill", "image_auroc measured") == pytest.approx(want)
        assert t.attrs["runs"] == ["r-new"]
    # A cell only the older run has still shows (latest per cell, not per run).
    partial_new = newer[newer["category"] != "pill"]
    t = build_table(1, pd.concat([older, partial_new]))
    assert cell(t, "pill", "image_auroc measured") == pytest.approx(
        100 * value_of(older, "image_auroc", category="pill", **MAIN))
    assert t.attrs["runs"] == ["r-new", "r-old"]
    assert any("14 cell(s) had several" in n for n in t.attrs["notes"])


def test_narrowed_run_is_flagged():
    m = make_metrics("smoke-1", categories=("bottle", "grid"), narrowed=True,
                     cfg_changes={"epochs": 2, "image_size": 64})
    for t in build_all(m).values():
        assert t.attrs["narrowed"] is True
        notes = " ".join(t.attrs["notes"])
        assert "NARROWED run (smoke-1 (spec paper))" in notes
        assert "epochs=2 (paper: 200)" in notes and "image_size=64 (paper: 256)" in notes
    t1 = build_table(1, m)
    assert list(t1["category"])[-1] == "average (2/15 categories)"


def test_teacher_weights_none_is_not_the_papers_setting():
    m = make_metrics("r-none", categories=("bottle",), cfg_changes={"teacher_weights": "none"})
    t = build_table(1, m)
    assert t.attrs["not_paper_setting"] is True
    assert any("teacher_weights=none" in n and "not the paper's setting" in n for n in t.attrs["notes"])
    assert t.attrs["narrowed"] is False


def test_other_setting_differences_are_named():
    m = make_metrics("r-bf16", categories=("bottle",), cfg_changes={"precision": "bf16", "ilm_source": "other"})
    notes = " ".join(build_table(2, m).attrs["notes"])
    assert "ilm_source=other (paper: same)" in notes and "precision=bf16 (paper: fp32)" in notes


def test_category_names_are_normalised():
    m = make_metrics(categories=("metal_nut",))
    m["category"] = m["category"].str.replace("metal_nut", "Metal nut")
    m.loc[m["dataset"] == "btad", "category"] = ["1", "2", "3"]
    assert not math.isnan(cell(build_table(1, m), "metal_nut", "image_auroc measured"))
    assert not math.isnan(cell(build_table(4, m), "01", "pixel_auroc measured"))


def test_missing_required_column_is_a_clear_error(metrics):
    with pytest.raises(ValueError, match="cfg_ilm_fraction"):
        build_table(6, metrics.drop(columns=["cfg_ilm_fraction"]))
    with pytest.raises(ValueError, match="unknown table"):
        build_table(9, metrics)


def test_fake_rows_match_the_results_schema(metrics):
    """The generated rows follow the pyarrow schema once mrkd_core/results.py exists."""
    results = pytest.importorskip("mrkd_core.results", reason="mrkd_core/results.py not written yet")
    import pyarrow as pa

    schema = results.METRICS_SCHEMA
    missing = [n for n in schema.names if n not in metrics.columns]
    assert not missing, f"fake metrics rows lack schema columns {missing}"
    table = pa.Table.from_pandas(metrics[schema.names], schema=schema, preserve_index=False)
    t = build_table(1, table.to_pandas())
    assert cell(t, "bottle", "image_auroc measured") == pytest.approx(
        100 * value_of(metrics, "image_auroc", category="bottle", **MAIN))


def test_the_measured_tables_variants_are_its_axis_not_a_departure_from_the_papers_setting():
    """The demo's baseline variant (ILM and FLM off) beside MRKD is a row of the measured table, as
    Table 5's columns are: its ilm/flm are not 'not the paper's setting'; a field all variants share is."""
    values = dict.fromkeys(METRICS, 0.9)
    lite = MRKDConfig(backbone="efficientnet_lite0", epochs=15)
    rows = [metrics_row(lite, run_id="demo", dataset="elpv", category="mono", variant="mrkd", values=values),
            metrics_row(lite.replace(ilm=False, flm=False), run_id="demo", dataset="elpv", category="mono",
                        variant="baseline", values=values)]
    notes = " ".join(build_table("measured", pd.DataFrame(rows)).attrs["notes"])
    assert "Not the paper's setting" in notes and "epochs=15 (paper: 200)" in notes
    assert "backbone=efficientnet_lite0" in notes and "ilm=" not in notes and "flm=" not in notes

    only = " ".join(build_table("measured", pd.DataFrame(rows[1:])).attrs["notes"])  # one variant, ILM and FLM off
    assert "ilm=False (paper: True)" in only and "flm=False (paper: True)" in only
