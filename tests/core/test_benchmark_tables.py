"""The VisA, MVTec AD 2 and MVTec LOCO AD tables: models by configuration, published numbers in their own columns."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from mrkd_core.benchmark_tables import (
    BENCHMARKS,
    build_benchmark_table,
    build_benchmark_tables,
)
from mrkd_core.published import load_published_benchmarks, read_published_benchmarks
from mrkd_core.report import table_to_markdown
from mrkd_core.results import METRICS_SCHEMA
from tests.datagen import table_row


def _row(dataset: str, category: str, ilm: bool, flm: bool, finished: str = "2026-12-01T00:00:00Z", **metrics):
    return table_row(METRICS_SCHEMA, run_id="r1", dataset=dataset, category=category, variant="x",
                     score_scales="1,2,3", cfg_score_scales="1,2,3", cfg_ilm=ilm, cfg_flm=flm,
                     cfg_backbone="resnet18", teacher_weights="none", cfg_teacher_weights="none",
                     finished_at=pd.Timestamp(finished), **metrics)


PUBLISHED = read_published_benchmarks(
    "dataset,row,method,metric,value,printed,unit,source\n"
    "mvtec_loco,breakfast_box,GCAD,au_spro_logical,75.5,75.5,percent,\"Some paper, Table 9\"\n"
    "mvtec_loco,average,GCAD,au_spro_logical,0.8,0.80,fraction,\"Some paper, Table 9\"\n")


def test_models_are_told_apart_by_configuration_and_published_cells_keep_their_own_columns():
    rows = pd.DataFrame([
        _row("mvtec_loco", "breakfast_box", True, True, au_spro_logical=0.61, image_auroc_logical=0.7),
        _row("mvtec_loco", "breakfast_box", False, False, au_spro_logical=0.42),
        _row("mvtec_loco", "breakfast_box", True, False, au_spro_logical=0.99),  # ILM only: neither model
        _row("mvtec_loco", "pushpins", True, True, "2026-11-01T00:00:00Z", au_spro_logical=0.1),
        _row("mvtec_loco", "pushpins", True, True, "2026-12-02T00:00:00Z", au_spro_logical=0.3),  # latest wins
        _row("visa", "candle", True, True),
    ])
    t = build_benchmark_table("mvtec_loco", rows, PUBLISHED).set_index("category")
    assert t.loc["breakfast_box", "MRKD au_spro_logical measured"] == pytest.approx(61.0)
    assert t.loc["breakfast_box", "RD4AD au_spro_logical measured"] == pytest.approx(42.0)
    assert t.loc["pushpins", "MRKD au_spro_logical measured"] == pytest.approx(30.0)
    assert t.loc["breakfast_box", "GCAD au_spro_logical (published)"] == 75.5
    assert t.loc["average (2/5 categories)", "GCAD au_spro_logical (published)"] == pytest.approx(80.0)
    assert t.loc["average (2/5 categories)", "MRKD au_spro_logical measured"] == pytest.approx(45.5)
    assert math.isnan(t.loc["juice_bottle", "MRKD au_spro_logical measured"])  # never filled in
    # No measured value is in a published column and no published one in a measured column.
    measured = [c for c in t.columns if c.endswith(" measured")]
    published = [c for c in t.columns if c.endswith("(published)")]
    assert set(measured) | set(published) == set(t.columns) and not set(measured) & set(published)
    notes = " ".join(t.attrs["notes"])
    assert "Some paper, Table 9" in notes and "teacher_weights=none" in notes


def test_tables_only_for_measured_or_published_benchmarks():
    rows = pd.DataFrame([_row("visa", "candle", True, True)])
    assert set(build_benchmark_tables(rows, PUBLISHED)) == {"visa", "mvtec_loco"}
    assert set(build_benchmark_tables(rows, PUBLISHED, include_unmeasured=False)) == {"visa"}  # what a run's report shows
    assert build_benchmark_tables(None, load_published_benchmarks().iloc[:0]) == {}


def test_the_shipped_published_cells_are_known_cells_and_render_in_their_own_columns():
    published = load_published_benchmarks()
    assert list(published.columns) == ["dataset", "row", "method", "metric", "value", "printed", "unit", "source"]
    by_dataset = {b.dataset: b for b in BENCHMARKS.values()}
    for cell in published.itertuples():
        bench = by_dataset[cell.dataset]
        assert cell.row in (*bench.categories, "average"), cell
        assert cell.metric in bench.metrics, cell
        assert float(cell.printed) == cell.value and cell.unit == "percent", cell  # transcribed as printed
        assert "https://" in cell.source, cell  # each names where it was read
    # LOCO: the sources' image AU-ROCs per type, next to the measured models, rendered in the report's Markdown.
    rows = pd.DataFrame([_row("mvtec_loco", "breakfast_box", False, False, image_auroc_logical=0.5)])
    t = build_benchmark_tables(rows)["mvtec_loco"]
    by_cat = t.set_index("category")
    assert by_cat.loc["breakfast_box", "RD4AD image_auroc_logical (published)"] == 66.7
    assert by_cat.loc["breakfast_box", "RD4AD image_auroc_logical measured"] == pytest.approx(50.0)
    assert by_cat.loc["average (1/5 categories)", "RD4AD image_auroc_mean_types (published)"] == 77.9
    assert not [c for c in t.columns if c.startswith("RD4AD au_spro") and c.endswith("(published)")]  # none printed
    md = table_to_markdown(t)
    assert "| RD4AD image_auroc_logical (published) |" in md and "| 66.7 |" in md
    assert "oopil/PSAD_logical_anomaly_detection" in md  # the note names the source
    # No VisA cell is shipped (none could be read in a source): its table says so, measured columns only.
    visa = build_benchmark_table("visa", pd.DataFrame([_row("visa", "candle", True, True)]))
    assert "No published numbers" in " ".join(visa.attrs["notes"])
    assert not [c for c in visa.columns if c.endswith("(published)")]
    assert list(visa["category"])[:-1] == list(BENCHMARKS["visa"].categories)


def test_a_published_cell_needs_its_source():
    with pytest.raises(ValueError, match="needs its source"):
        read_published_benchmarks("dataset,row,method,metric,value,printed,unit,source\n"
                                  "visa,candle,RD4AD,image_auroc,90,90,percent,\n")


def test_the_rd4ad_column_is_not_called_a_departure_from_the_papers_setting():
    """The RD4AD ablation (ILM and FLM off) is a column of these tables, as a table's axis is: a run of
    the paper's configuration and its ablation is not 'not the paper's setting'; another field is."""
    from dataclasses import replace

    from mrkd_core.config import paper_defaults
    from mrkd_core.results import cfg_columns

    def row(cfg, **metrics):
        return table_row(METRICS_SCHEMA, run_id="r1", dataset="visa", category="candle", variant="x",
                         narrowed=False, score_scales="1,2,3", teacher_weights=cfg.teacher_weights,
                         finished_at=pd.Timestamp("2026-12-01T00:00:00Z"), **cfg_columns(cfg), **metrics)

    paper = paper_defaults()
    rows = [row(paper, image_auroc=0.9), row(replace(paper, ilm=False, flm=False), image_auroc=0.8)]
    t = build_benchmark_table("visa", pd.DataFrame(rows), PUBLISHED)
    assert t.set_index("category").loc["candle", "RD4AD image_auroc measured"] == pytest.approx(80.0)
    assert not t.attrs["not_paper_setting"] and "Not the paper's setting" not in " ".join(t.attrs["notes"])

    rows.append(row(replace(paper, ilm=False, flm=False, epochs=2), image_auroc=0.7))
    notes = " ".join(build_benchmark_table("visa", pd.DataFrame(rows), PUBLISHED).attrs["notes"])
    assert "Not the paper's setting" in notes and "epochs=2 (paper: 200)" in notes and "ilm=" not in notes
