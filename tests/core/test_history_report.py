"""The report's history section: each category's metric per night, regressions flagged."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd

from mrkd_core.history_report import HISTORY_KEY, history_view
from mrkd_core.registry.tables import HISTORY_SCHEMA, HISTORY_TABLE, read_history
from mrkd_core.report import write_report
from mrkd_core.storage import ArtifactStore
from tests.datagen import table_row

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
START = datetime(2026, 11, 1, 2, tzinfo=timezone.utc)


def _night(store: ArtifactStore, night: int, category: str, version: int, champion: int, pixel: float,
           champion_pixel: float, decision: str, regression: str | None = None, model: str = "nightly-mrkd",
           status: str = "trained", later: int = 0) -> None:
    run_id = f"nightly-2026110{night}"
    source = f"runs/{run_id}/folder/{category}/h{version}"
    store.write_json(f"{source}/manifest.json", {"format": "mrkd-manifest/1"})
    row = table_row(HISTORY_SCHEMA, run_id=run_id, dataset="folder", category=category, model_name=model,
                    version=version, champion_version=champion, decision=decision, regressed=regression is not None,
                    regression=regression, image_auroc=1.0, pixel_auroc=pixel, champion_image_auroc=1.0,
                    champion_pixel_auroc=champion_pixel, pixel_metrics_absent=None,
                    tolerance='{"image_auroc": 0.5, "pixel_auroc": 0.5}',
                    status=status, recorded_at=START + timedelta(days=night, minutes=len(category), hours=later))
    HISTORY_TABLE.append(store, [row], f"{category}-mrkd-h{version}", source)


def _three_nights(store: ArtifactStore) -> None:
    _night(store, 1, "obj_disc", 1, 1, 0.50, 0.50, "first")
    _night(store, 1, "tex_stripes", 1, 1, 0.60, 0.60, "first")
    _night(store, 2, "obj_disc", 2, 1, 0.20, 0.50, "kept", "v2 worse than champion v1: pixel_auroc 50.0 → 20.0 "
                                                           "(-30.0 points, tolerance 0.5)")
    _night(store, 2, "tex_stripes", 2, 2, 0.65, 0.65, "promoted")
    _night(store, 3, "obj_disc", 3, 3, 0.80, 0.80, "promoted")
    _night(store, 3, "tex_stripes", 2, 2, 0.65, 0.65, "unchanged")
    _night(store, 3, "other", 1, 1, 0.9, 0.9, "first", model="someone-else")  # another model: not in this section


def test_history_section_table_figure_and_regression_banner(tmp_path):
    store = ArtifactStore(tmp_path)
    _three_nights(store)
    history = read_history(store)
    out = write_report(store, "nightly-20261102", None, None, history_df=history)
    assert out["regressions"] == ["folder/obj_disc (nightly-mrkd): v2 worse than champion v1: pixel_auroc 50.0 → "
                                  "20.0 (-30.0 points, tolerance 0.5)"]
    table = pd.read_parquet(store.uri(f"reports/nightly-20261102/{HISTORY_KEY}.parquet"))
    # the nights up to this one, of the models it tracked
    assert list(table["night"]) == ["nightly-20261101"] * 2 + ["nightly-20261102"] * 2
    regressed = table[table["regression"] != ""]
    assert list(regressed["category"]) == ["obj_disc"] and regressed.iloc[0]["regression"].startswith("REGRESSED")
    assert list(table["pixel AU-ROC"]) == [50.0, 60.0, 20.0, 65.0]
    assert list(table["version"]) == ["v1", "v1", "v2", "v2"] and list(table["champion"]) == ["v1", "v1", "v1", "v2"]
    md = store.read_bytes(f"reports/nightly-20261102/{HISTORY_KEY}.md").decode()
    assert "REGRESSED: v2 worse than champion v1" in md
    html = store.read_bytes(out["html"]).decode()
    assert 'class="banner regressed"' in html and "folder/obj_disc (nightly-mrkd)" in html
    assert f'id="{HISTORY_KEY}"' in html
    (figure,) = [f for f in out["figures"] if "history_" in f]
    assert figure.endswith("history_folder_nightly-mrkd.png")
    assert store.read_bytes(figure).startswith(PNG_MAGIC)


def test_a_night_without_regressions_has_no_banner_and_later_nights_are_not_shown(tmp_path):
    store = ArtifactStore(tmp_path)
    _three_nights(store)
    history = read_history(store)
    out = write_report(store, "nightly-20261101", None, None, history_df=history)
    assert out["regressions"] == []
    assert "banner regressed" not in store.read_bytes(out["html"]).decode()
    assert set(history_view(history, "nightly-20261101")["run_id"]) == {"nightly-20261101"}
    third = history_view(history, "nightly-20261103")
    assert set(third["model_name"]) == {"nightly-mrkd", "someone-else"} and len(third) == 7
    assert history_view(history, "a-run-without-history").empty
    assert write_report(store, "plain", None, None, history_df=history)["regressions"] == []


def test_a_re_run_of_a_night_adds_rows_and_the_view_shows_what_the_night_did(tmp_path):
    """The history table is appended to: a re-run of night 2 (its result reused, champion changed meanwhile)
    adds rows; the view shows night 2 once, trained, with its own decision and the latest comparison."""
    store = ArtifactStore(tmp_path)
    _three_nights(store)
    _night(store, 2, "obj_disc", 2, 3, 0.20, 0.80, "unchanged", "v2 worse than champion v3: pixel_auroc 80.0 → 20.0 "
           "(-60.0 points, tolerance 0.5)", status="skipped", later=20)
    history = read_history(store)
    assert len(history[history["run_id"] == "nightly-20261102"]) == 3  # both runs' rows are there
    view = history_view(history, "nightly-20261103")
    night2 = view[(view["run_id"] == "nightly-20261102") & (view["category"] == "obj_disc")]
    (row,) = night2.to_dict("records")
    assert (row["status"], row["decision"], row["runs"]) == ("trained", "kept", 2)
    assert (row["champion_version"], row["champion_pixel_auroc"]) == (3, 0.80)  # its latest comparison
    assert list(view["run_id"]) == sorted(view["run_id"])  # nights in order, one row per night and category
    write_report(store, "nightly-20261103", None, None, history_df=history)
    table = pd.read_parquet(store.uri(f"reports/nightly-20261103/{HISTORY_KEY}.parquet"))
    assert len(table) == len(view) and list(table["runs"]).count(2) == 1
