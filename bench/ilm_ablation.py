"""The ILM/FLM ablation of docs/ilm.md ("Measured: ILM, FLM and the preset"), from a store.

The trainings come from the product: the specs ``ilm-ablation-textures`` and
``ilm-ablation-objects`` run with ``python -m flows.benchmark --runner local``. This script

1. evaluates every stored model that has FLM once more, through ``mrkd evaluate
   --config-hash H`` (the same trained model; results under ``OUTPUT/evaluations/``),
   unless already done there: with test-time FLM on by this code
   (``<run>-r<EVALUATION_REVISION>``; the training-time figures were scored by the code of
   the training, evaluation revision 1 for the stored ablation, whose test-time masks
   depended on the batch) and with it off (``--no-flm-at-test``, ``<run>-flm-off``);
2. prints the tables of docs/ilm.md: image and pixel AU-ROC (%) per category, mean over the
   seeds, for each model (RD4AD = no ILM, no FLM; ILM only; FLM only; MRKD), ILM preset and
   test-time FLM, with the texture and object means, the seed spread and the evaluation
   revision the figures come from (a re-evaluation record where there is one, else the
   training-time metrics row).

::

    .venv/bin/python bench/ilm_ablation.py --store artifacts/ilm/store [--output STORE] [--no-evaluate]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval_records import read_evaluations, with_run_revisions  # noqa: E402
from md_table import markdown as bench_markdown  # noqa: E402

from mrkd_core.cli import main as mrkd  # noqa: E402
from mrkd_core.data import get_dataset  # noqa: E402
from mrkd_core.data.torch_datasets import decode_train_images  # noqa: E402
from mrkd_core.evaluate import scales_key  # noqa: E402
from mrkd_core.ilm import describe_preset  # noqa: E402
from mrkd_core.ilm.auto import estimate_background, estimate_preset  # noqa: E402
from mrkd_core.layout import RUNS  # noqa: E402
from mrkd_core.partitioned import SOURCE_COLUMN, read_metrics  # noqa: E402
from mrkd_core.revision import EVALUATION_REVISION, UNRECORDED_REVISION  # noqa: E402
from mrkd_core.storage import ArtifactStore  # noqa: E402

log = logging.getLogger("ilm_ablation")

RUNS_DEFAULT = ("ilm-ablation-textures", "ilm-ablation-objects")
SMALL = "half_height=0.03:0.15,half_width=0.03:0.15,patches=2"
PRESET_LABEL = {"texture": "texture (NSA)", SMALL: "small (3-15 %, ≤ 2)", "auto": "auto"}
MODEL_ORDER = ["RD4AD", "ILM only", "FLM only", "MRKD"]


def model_name(ilm: bool, flm: bool) -> str:
    return {(False, False): "RD4AD", (True, False): "ILM only", (False, True): "FLM only", (True, True): "MRKD"}[
        (bool(ilm), bool(flm))]


def flm_off_id(run: str) -> str:
    return f"{run}-flm-off"


def reevaluation_id(run: str) -> str:
    """The evaluation id of ``run``'s FLM models re-evaluated with test-time FLM on by this code."""
    return f"{run}-r{EVALUATION_REVISION}"


def evaluate_flm_models(store: ArtifactStore, out: ArtifactStore, metrics: pd.DataFrame) -> None:
    """``mrkd evaluate`` of every stored FLM model not yet evaluated so in ``out``: with test-time FLM
    on (the model's own config, this code's masks) and off (``--no-flm-at-test``)."""
    flm = metrics[metrics["cfg_flm"].astype(bool)].drop_duplicates(["run_id", "category", "config_hash"])
    for run, models in flm.groupby("run_id"):
        for evaluation_id, options, todo in (
                (reevaluation_id(run), [], models[models["cfg_flm_at_test"].astype(bool)]),
                (flm_off_id(run), ["--no-flm-at-test"], models)):
            done = {(r["category"], r["trained_hash"]) for r in read_evaluations(out, evaluation_id)}
            for row in todo.itertuples(index=False):
                if (row.category, row.config_hash) in done:
                    continue
                run_dir = _run_dir(store, row._asdict())
                data_root = store.read_json(f"{run_dir}/train.json")["data_root"]
                argv = ["-q", "evaluate", data_root, "--dataset", row.dataset, "-c", row.category,
                        "--models", store.uri(), "--output", out.uri(), "--config-hash", row.config_hash, *options,
                        "--num-workers", "0", "--eval-batch-size", "16", "--evaluation-id", evaluation_id]
                log.info("%s: %s/%s %s", evaluation_id, row.category, row.variant, row.config_hash)
                with contextlib.redirect_stdout(io.StringIO()):  # the command prints its summary JSON
                    code = mrkd(argv)
                if code != 0:
                    raise SystemExit(f"mrkd {' '.join(argv)} failed")


def _run_dir(store: ArtifactStore, row: dict) -> str:
    """The run directory that computed a metrics row: its source (``read_metrics(..., with_source=True)``),
    else the newest complete one of its key."""
    if row.get(SOURCE_COLUMN):
        return row[SOURCE_COLUMN]
    dataset, category, config_hash = row["dataset"], row["category"], row["config_hash"]
    for run in sorted(store.list(RUNS), reverse=True):
        d = f"{run}/{dataset}/{category}/{config_hash}"
        if store.exists(f"{d}/manifest.json"):
            return d
    raise SystemExit(f"no complete run directory for {dataset}/{category}/{config_hash} in {store.uri()}")


def _revision(value) -> int:
    """The evaluation revision of a metrics row's value (1 when unrecorded: null, NaN or absent)."""
    return UNRECORDED_REVISION if value is None or pd.isna(value) else int(value)


def _label(cfg: dict, test_flm: str, category: str, seed, metrics: dict, revision: int,
           train_seconds=None) -> dict:
    ilm, flm = bool(cfg["ilm"]), bool(cfg["flm"])
    return {"category": category, "model": model_name(ilm, flm),
            "preset": PRESET_LABEL.get(cfg["ilm_preset"], cfg["ilm_preset"]) if ilm else "—",
            "test FLM": test_flm if flm else "—", "seed": int(seed), "image_auroc": metrics["image_auroc"],
            "pixel_auroc": metrics["pixel_auroc"], "eval rev": revision, "train_seconds": train_seconds}


def collect(store: ArtifactStore, out: ArtifactStore, runs) -> pd.DataFrame:
    """One row per (trained model, test-time FLM): category, model, preset, seed, metrics, evaluation revision.

    A training-time metrics row is replaced by the model's re-evaluation record in ``out``
    (``reevaluation_id``) when there is one; the test-time-FLM-off rows are the
    ``--no-flm-at-test`` records in ``out``.
    """
    metrics = with_run_revisions(store, pd.concat([read_metrics(store, r, with_source=True) for r in runs],
                                                  ignore_index=True))
    metrics = metrics[metrics["score_scales"] == scales_key((1, 2, 3))]
    again = {(run, rec["category"], rec["trained_hash"]): rec
             for run in runs for rec in read_evaluations(out, reevaluation_id(run))}
    rows = []
    for r in metrics.to_dict("records"):
        cfg = {k[4:]: v for k, v in r.items() if k.startswith("cfg_")}
        test_flm = "on" if r["cfg_flm_at_test"] else "off"
        rec = again.get((r["run_id"], r["category"], r["config_hash"]))
        if rec is not None:
            rows.append(_label(cfg, test_flm, r["category"], r["cfg_seed"], rec["metrics"],
                               rec["evaluation_revision"], r["train_seconds"]))
        else:
            rows.append(_label(cfg, test_flm, r["category"], r["cfg_seed"], r,
                               _revision(r.get("evaluation_revision")), r["train_seconds"]))
    for run in runs:
        for rec in read_evaluations(out, flm_off_id(run)):
            cfg = rec["config"]
            rows.append(_label(cfg, "off", rec["category"], cfg["seed"], rec["metrics"], rec["evaluation_revision"]))
    return pd.DataFrame(rows)


def revisions(values) -> str:
    """The evaluation revisions of a group of figures, e.g. ``2`` or ``1, 2`` (mixed)."""
    return ", ".join(str(v) for v in sorted(set(values)))


def table(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Rows (model, preset, test FLM) × category means over seeds (%), texture/object means, seed spread."""
    key = ["model", "preset", "test FLM"]
    per = df.groupby([*key, "category"])[metric].agg(["mean", "count", lambda s: s.max() - s.min()])
    per.columns = ["mean", "seeds", "spread"]
    wide = (100 * per["mean"]).unstack("category")
    cats = sorted(df["category"].unique(), key=lambda c: (not c.startswith("tex_"), c))
    wide = wide[cats]
    tex = [c for c in cats if c.startswith("tex_")]
    obj = [c for c in cats if not c.startswith("tex_")]
    if tex:
        wide["textures"] = wide[tex].mean(axis=1, skipna=False)
    if obj:
        wide["objects"] = wide[obj].mean(axis=1, skipna=False)
    wide["seeds"] = per["seeds"].groupby(level=key).min()
    wide["seed spread"] = (100 * per["spread"]).groupby(level=key).mean()
    wide["eval rev"] = df.groupby(key)["eval rev"].agg(revisions)
    order = {m: i for i, m in enumerate(MODEL_ORDER)}
    wide = wide.reset_index()
    wide["_o"] = wide["model"].map(order)
    return wide.sort_values(["_o", "preset", "test FLM"]).drop(columns="_o")


# (what, rows A, rows B): the mean of A − B over the (category, seed) pairs both have.
COMPARISONS = [
    ("MRKD − RD4AD", ("MRKD", "texture (NSA)", "on"), ("RD4AD", "—", "—")),
    ("FLM only − RD4AD", ("FLM only", "—", "on"), ("RD4AD", "—", "—")),
    ("ILM only − RD4AD", ("ILM only", "texture (NSA)", "—"), ("RD4AD", "—", "—")),
    ("MRKD − FLM only", ("MRKD", "texture (NSA)", "on"), ("FLM only", "—", "on")),
    ("MRKD: small − texture preset", ("MRKD", PRESET_LABEL[SMALL], "on"), ("MRKD", "texture (NSA)", "on")),
    ("MRKD: auto − texture preset", ("MRKD", "auto", "on"), ("MRKD", "texture (NSA)", "on")),
    ("ILM only: small − texture preset", ("ILM only", PRESET_LABEL[SMALL], "—"), ("ILM only", "texture (NSA)", "—")),
    ("ILM only: auto − texture preset", ("ILM only", "auto", "—"), ("ILM only", "texture (NSA)", "—")),
    ("MRKD: test-time FLM off − on", ("MRKD", "texture (NSA)", "off"), ("MRKD", "texture (NSA)", "on")),
    ("FLM only: test-time FLM off − on", ("FLM only", "—", "off"), ("FLM only", "—", "on")),
]


def paired(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Paired differences (points of %) per comparison: mean, standard deviation and count of the pairs,
    separately for textures and objects, and the evaluation revisions of the two sides (A − B)."""
    key = ["model", "preset", "test FLM"]
    rows = []
    for what, a, b in COMPARISONS:
        out = {"comparison": what}
        used = {0: set(), 1: set()}
        for group, is_texture in (("textures", True), ("objects", False)):
            sub = df[df["category"].str.startswith("tex_") == is_texture]
            va, vb = ((sub[(sub[key] == pd.Series(side, index=key)).all(axis=1)].set_index(["category", "seed"])
                       for side in (a, b)))
            d = 100 * (va[metric] - vb[metric]).dropna()
            for i, side in enumerate((va, vb)):
                used[i].update(side.loc[d.index, "eval rev"])
            out[f"{group}: mean"] = d.mean() if len(d) else float("nan")
            out[f"{group}: sd"] = d.std() if len(d) > 1 else float("nan")
            out[f"{group}: pairs"] = float(len(d))
        out["eval rev"] = f"{revisions(used[0])} − {revisions(used[1])}" if used[0] else "—"
        rows.append(out)
    return pd.DataFrame(rows)


def _number(column: str, value: float) -> str:
    if column == "seeds" or column.endswith("pairs"):
        return f"{value:.0f}"
    return f"{value:+.1f}" if column.endswith("mean") else f"{value:.1f}"


def markdown(df: pd.DataFrame) -> str:
    return bench_markdown(df, _number)


def auto_estimates(store: ArtifactStore, metrics: pd.DataFrame) -> pd.DataFrame:
    """What ``ilm_preset: auto`` resolves to per category, on the training images at the run's size."""
    rows = []
    for (dataset, category), g in metrics.groupby(["dataset", "category"]):
        first = g.iloc[0]
        data_root = store.read_json(f"{_run_dir(store, first.to_dict())}/train.json")["data_root"]
        size = int(first["cfg_image_size"])
        images = decode_train_images(get_dataset(dataset).train_samples(data_root, category), size, category)
        est = estimate_background(images)
        rows.append({"category": category, "border spread": est.spread, "object share": est.object_share,
                     "auto": describe_preset(estimate_preset(images))})
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True, help="the store the ablation specs ran into (MRKD_STORE)")
    parser.add_argument("--output", help="store the re-evaluations are written to and read from (default: --store)")
    parser.add_argument("--runs", nargs="+", default=list(RUNS_DEFAULT), help="run ids of the ablation")
    parser.add_argument("--no-evaluate", action="store_true",
                        help="print only; do not re-evaluate (test-time FLM on with this code, and off)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    store = ArtifactStore(args.store)
    out = ArtifactStore(args.output) if args.output else store
    runs = [r for r in args.runs if store.exists(f"{RUNS}/{r}")]
    if not runs:
        raise SystemExit(f"none of the runs {args.runs} is in {store.uri()}: run the specs first (docs/ilm.md)")
    metrics = pd.concat([read_metrics(store, r, with_source=True) for r in runs], ignore_index=True)
    if not args.no_evaluate:
        evaluate_flm_models(store, out, metrics)
    df = collect(store, out, runs)
    n_models = df[df["test FLM"] != "off"].shape[0]
    print(f"runs {', '.join(runs)}: {n_models} trained models, {len(df) - n_models} evaluated with test-time FLM off;"
          f" 'eval rev': the evaluation revision of the figures (this code: {EVALUATION_REVISION}; revisions 1 and 2"
          " differ only in the test-time FLM masks, so a model scored without them scores the same under both)\n")
    for metric, title in (("image_auroc", "Image AU-ROC (%)"), ("pixel_auroc", "Pixel AU-ROC (%)")):
        print(f"### {title}, mean over seeds\n")
        print(markdown(table(df, metric)))
        print()
    print("### Paired differences of image AU-ROC (points; same category and seed)\n")
    print(markdown(paired(df, "image_auroc")))
    print()
    print("### What auto resolves to (training images at the run's size)\n")
    print(markdown(auto_estimates(store, metrics)))
    print()
    secs = df.dropna(subset=["train_seconds"]).groupby("model")["train_seconds"].median()
    print("median training time per model (s): " + ", ".join(f"{m} {secs[m]:.0f}" for m in MODEL_ORDER if m in secs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
