"""What the flow's artifacts and final message say, from the task records (no server)."""

from __future__ import annotations

from flows.artifacts import artifact_key, regressed, regression_text, summary_rows
from flows.train_evaluate import progress_key


def _record(category: str, status: str = "trained", **registry):
    return {"key": f"folder/{category}/h", "dataset": "folder", "category": category, "variant": "mrkd",
            "status": status, "rows": [{"image_auroc": 1.0, "pixel_auroc": 0.204}],
            "registry": {"model_name": "mvtec-full-mrkd", "version": 2, "champion": 1, "decision": "kept",
                         "regressed": False, "regression": None, **registry}}


def test_summary_and_regression_text():
    worse = _record("tex_stripes", regressed=True,
                    regression="v2 worse than champion v1: pixel_auroc 53.8 → 20.4 (-33.4 points, tolerance 0.5)")
    fine = _record("obj_disc", decision="promoted", champion=2)
    failed = {"key": "folder/grain/h", "dataset": "folder", "category": "grain", "variant": "mrkd",
              "status": "failed", "run_dir": None, "error": "DataError: x.png: cannot read image"}
    rows = summary_rows([worse, fine, failed])
    assert rows[0] == {"dataset": "folder", "category": "tex_stripes", "variant": "mrkd", "status": "trained",
                       "image AU-ROC": "100.0", "pixel AU-ROC": "20.4", "model": "mvtec-full-mrkd", "version": 2,
                       "champion": 1, "decision": "kept", "regression": worse["registry"]["regression"], "error": ""}
    assert rows[2]["status"] == "failed" and rows[2]["error"].startswith("DataError") and rows[2]["version"] == ""
    assert regressed([worse, fine, failed]) == [worse]
    assert regression_text([worse, fine]) == ("1 category regressed: folder/tex_stripes (mvtec-full-mrkd): v2 worse "
                                              "than champion v1: pixel_auroc 53.8 → 20.4 (-33.4 points, tolerance "
                                              "0.5)")
    assert regression_text([fine, failed]) == ""


def test_artifact_keys_follow_prefects_rule():
    assert artifact_key("regressions", "mvtec-full") == "regressions-mvtec-full"
    assert artifact_key("summary", "Table 1_2 (été)") == "summary-table-1-2-t"
    assert progress_key({"dataset": "folder", "category": "tex_stripes", "variant": "mrkd"}) == \
        "progress-folder-tex-stripes-mrkd"
