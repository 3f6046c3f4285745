"""The inference commands of ``mrkd``: predict, calibrate, export and ``models info``.

Registered by ``mrkd_core.cli.build_parser``; errors follow its rules (one line, exit 2).
``mrkd predict --skip-unreadable`` exits with status 3 when it skipped a file, so that
scripts notice; 0 means every image was scored.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from mrkd_core.console import out as _out
from mrkd_core.data.base import IMAGE_EXTENSIONS, find_images
from mrkd_core.errors import DataError, MRKDError

log = logging.getLogger("mrkd")
EXIT_SKIPPED = 3  # predict: some files were unreadable and skipped (--skip-unreadable)



def model_location(model: str) -> str:
    """What a command was given as MODEL → the file to open.

    A registered model (``<store>/models/<name>/<dataset>/<category>@champion``, ``@latest``
    or ``@<N>``: ``mrkd_core.registry.reference``) becomes its version's ``model.pt`` URI;
    a path, URI or ``.onnx`` is returned as it is.
    """
    from mrkd_core.registry.reference import resolve_model_location

    return resolve_model_location(model)


def collect_images(items: Sequence[str]) -> list[Path]:
    """Image files named, or found in the folders named (``data.base.find_images``)."""
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            paths.extend(find_images(p))
        elif p.is_file():
            paths.append(p)
        else:
            raise DataError(f"{p}: no such file or folder — pass image files or folders of images")
    if not paths:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {', '.join(items)}")
    return paths


# --------------------------------------------------------------------------- predict
def cmd_predict(args: argparse.Namespace) -> int:
    from mrkd_core.inference.predict import predict_images
    from mrkd_core.inference.record import new_request_id, record_predictions, record_store, recorded_name
    from mrkd_core.registry.reference import resolve_model_version
    from mrkd_core.storage import ArtifactStore

    if args.batch_size < 1:
        raise MRKDError(f"--batch-size {args.batch_size}: must be at least 1")
    images = collect_images(args.images)
    record = record_store(args.record, args.model)
    store = ArtifactStore(record) if record is not None else None  # a store that cannot open fails before scoring
    location, version = resolve_model_version(args.model)
    report = predict_images(location, images, Path(args.output), device=args.device, batch_size=args.batch_size,
                            skip_unreadable=args.skip_unreadable, engine=args.engine, model_version=version)
    width = max(len(p.path) for p in report.predictions)
    for p in report.predictions:
        if p.error:
            _out(f"{p.path:<{width}}  skipped: {p.error}")
            continue
        norm = f"{p.normalized_score:.3f}" if p.normalized_score is not None else "-"
        _out(f"{p.path:<{width}}  {p.score:.6f}  {norm:>5}  {p.verdict or 'uncalibrated'}")
    _out(f"{report.csv_path}  {report.parquet_path}")
    if store is not None:  # after the verdicts are shown and written: a store that fails loses none of them
        request_id = new_request_id()
        written = record_predictions(store, recorded_name(args.model), request_id, report.predictions)
        log.info("%d decisions recorded as %s in %s", written, request_id, store.uri("tables/inspections"))
    if report.n_skipped:
        sys.stderr.write(f"mrkd: {report.n_skipped} of {len(report.predictions)} files were unreadable and skipped "
                         f"(listed with the reason in {report.csv_path})\n")
        return EXIT_SKIPPED
    return 0


# --------------------------------------------------------------------------- calibrate
def _calibration_data(args: argparse.Namespace, extra: dict, cfg):
    """(``layout.TaskSamples``, category): the images of the dataset the model is calibrated on, as
    ``layout.task_samples`` chose them when it was trained (held out, test split)."""
    from mrkd_core.data import get_dataset
    from mrkd_core.layout import TaskSamples, task_samples
    from mrkd_core.specs import Task

    if args.data_root is None:
        return TaskSamples((), (), ()), args.category or str(extra.get("category", ""))
    root = Path(args.data_root)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found — pass the dataset root the model was trained on")
    category = args.category or extra.get("category")
    if category and not (root / category).is_dir() and root.name == category:
        root = root.parent  # DATA_ROOT is the category folder itself
    dataset = args.dataset or extra.get("dataset") or "folder"
    ds = get_dataset(dataset)
    available = ds.categories(str(root))
    if not category:
        if len(available) != 1:
            raise DataError(f"{root}: say which category the model is for with --category "
                            f"(found: {', '.join(available) or 'none'})")
        category = available[0]
    if category not in available:
        raise DataError(f"{root}: category {category!r} not found; available: {', '.join(available) or 'none'}")
    task = Task(dataset, category, "", cfg, str(root))
    try:
        samples = task_samples(task)
    except DataError:
        # No usable test split: enough when the images come from a folder or the hold-out.
        if args.good_dir is None and cfg.validation_fraction == 0:
            raise
        samples = task_samples(task, evaluated=False)
    return samples, category


def cmd_calibrate(args: argparse.Namespace) -> int:
    from mrkd_core.inference.backends import is_onnx
    from mrkd_core.inference.calibration import calibrate, calibration_set, from_evaluation
    from mrkd_core.model_io import evaluate_stored_model, write_calibration

    model = model_location(args.model)
    if is_onnx(model):
        raise MRKDError(f"{model}: calibrate the model.pt, then export it again (an export is read-only)")
    if args.data_root is None and args.good_dir is None:
        raise MRKDError("pass DATA_ROOT (the dataset the model was trained on) or --good-dir FOLDER")
    runtime = {k: getattr(args, k) for k in ("device", "num_workers", "eval_batch_size")
               if getattr(args, k, None) is not None}
    chosen: dict = {}

    def calibration_images(record) -> list:
        samples, category = _calibration_data(args, record.extra, record.config)
        chosen["policy"], chosen["set"] = calibration_set(record.config, args.policy, held_out=samples.held_out,
                                                          held_out_from=samples.held_out_from,
                                                          test_samples=samples.test, good_folder=args.good_dir,
                                                          category=category)
        return chosen["set"].samples

    _, _, result = evaluate_stored_model(model, samples=calibration_images, runtime=runtime, keep_maps=True,
                                         metrics=False)
    cal = calibrate(from_evaluation(result), chosen["policy"], chosen["set"], args.false_alarm_rate)
    uri = write_calibration(model, cal.to_dict(), args.output)
    summary = {k: v for k, v in cal.to_dict().items() if k != "images"}
    _out(json.dumps({"model": uri, "calibration": summary}, indent=2))
    return 0


# --------------------------------------------------------------------------- models info
def model_info(location: str) -> dict:
    """Config, calibration and thresholds of a model file or an ONNX export, as JSON-safe data.

    ``config`` holds the fields that define the model (its hash); ``trained_with`` the runtime
    fields of its training (``config.RUNTIME_FIELDS``: device, workers, batch sizes, memory
    format), which a loader may change without changing what is computed.
    """
    from mrkd_core.inference.backends import is_onnx

    if is_onnx(location):
        from mrkd_core.inference.export import (
            KEY_CALIBRATION,
            KEY_CONFIG,
            KEY_EVALUATION_REVISION,
            KEY_EXTRA,
            KEY_FORMAT,
            KEY_PREPROCESSING,
            KEY_TRAINING_REVISION,
            onnx_metadata,
        )

        path = Path(location)
        if not path.is_file():
            raise MRKDError(f"{location}: file not found — pass a model.pt or an .onnx written by `mrkd export`")
        meta = onnx_metadata(path)
        if KEY_FORMAT not in meta:
            raise MRKDError(f"{location}: not an MRKD export — export the model with `mrkd export`")
        calibration = json.loads(meta[KEY_CALIBRATION]) if meta.get(KEY_CALIBRATION) else None
        info = {"source": location, "format": meta[KEY_FORMAT], "config": json.loads(meta[KEY_CONFIG]),
                "preprocessing": json.loads(meta[KEY_PREPROCESSING]), "extra": json.loads(meta.get(KEY_EXTRA) or "{}"),
                "training_revision": int(meta.get(KEY_TRAINING_REVISION, 1)),
                "evaluation_revision": int(meta.get(KEY_EVALUATION_REVISION, 1)), "calibration": calibration}
    else:
        from mrkd_core.model_io import MODEL_FORMAT, load_model_file

        record = load_model_file(location, build=False)
        info = {"source": record.source, "format": MODEL_FORMAT, "config": record.config.to_dict(),
                "config_hash": record.config.config_hash(), "extra": record.extra,
                "training_revision": record.training_revision, "calibration": record.calibration,
                "calibration_history": len(record.calibration_history)}
    from mrkd_core.config import RUNTIME_FIELDS

    # The runtime fields say where and how fast it was trained, not what it computes (progress is
    # always off in a loaded model): shown apart, so that "config" reads as the model's definition.
    config = info["config"]
    info["config"] = {k: v for k, v in config.items() if k not in RUNTIME_FIELDS}
    info["trained_with"] = {k: config[k] for k in sorted(RUNTIME_FIELDS - {"progress"}) if k in config}
    cal = info["calibration"]
    info["thresholds"] = ({"image": cal["image_threshold"], "pixel": cal["pixel_threshold"],
                           "normalized_image": 0.5} if cal else None)
    return info


def cmd_models_info(args: argparse.Namespace) -> int:
    model = model_location(args.model)
    info = model_info(model)
    if info["calibration"] is None:
        log.warning("%s has no calibration — run `mrkd calibrate %s DATA_ROOT`", model, model)
    elif not args.images:
        info["calibration"] = {**info["calibration"], "images": f"{len(info['calibration']['images'])} images "
                                                                "(--images lists them)"}
    _out(json.dumps(info, indent=2, default=str))
    return 0


# --------------------------------------------------------------------------- export
def cmd_export(args: argparse.Namespace) -> int:
    from mrkd_core.inference.export import export_onnx
    from mrkd_core.model_io import load_model_file

    out = Path(args.output)
    if out.suffix.lower() != ".onnx":
        raise MRKDError(f"-o {out}: name the file *.onnx")
    model = model_location(args.model)
    record = load_model_file(model, runtime={"device": "cpu"})
    if record.calibration is None:
        log.warning("%s has no calibration: the export will give scores only — run `mrkd calibrate` first",
                    model)
    path = export_onnx(record, out)
    _out(json.dumps({"onnx": str(path), "bytes": path.stat().st_size, "calibrated": record.calibration is not None},
                    indent=2))
    return 0


# --------------------------------------------------------------------------- parsers
def add_commands(sub: argparse._SubParsersAction, add_config_options,
                 models: argparse._SubParsersAction) -> None:
    """Register predict, calibrate and export on ``mrkd``'s subparsers, ``info`` on its ``models`` group.

    ``models`` is the group ``mrkd_core.cli.add_models_group`` made (the registry adds its verbs there too).
    """
    from mrkd_core.inference.backends import ENGINES
    from mrkd_core.inference.calibration import DEFAULT_FALSE_ALARM_RATE, POLICIES
    from mrkd_core.inference.export import EXPORT_FORMATS

    p = sub.add_parser("predict", help="score new images: verdict, defect mask and overlay per image, "
                                       "predictions.csv/.parquet")
    p.add_argument("model", help="model.pt written by `mrkd train` (path or URI), an .onnx from `mrkd export`, or a registered "
                                 "model: <store>/models/<name>/<dataset>/<category>@champion (or @latest, @<N>)")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--output", "-o", default="mrkd-predictions",
                   help="folder for predictions.csv, predictions.parquet, <stem>_mask.png and <stem>_overlay.png "
                        "(default: ./%(default)s)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=8,
                   help="at most this many images (a tiled model: tiles) per forward pass (speed only: none are "
                        "padded)")
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="for an .onnx export: onnxruntime (auto) or openvino (the openvino extra, CPU)")
    p.add_argument("--skip-unreadable", action="store_true",
                   help=f"list unreadable files with the reason instead of stopping; exit status {EXIT_SKIPPED} "
                        "if any was skipped")
    p.add_argument("--record", metavar="URI|none",
                   help="store whose tables/inspections records every decision, as mrkd serve does (default: "
                        "the registered model's store when MODEL is a reference, else none: predictions.parquet "
                        "in --output is the record)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("calibrate", help="choose image and pixel thresholds; write the model with them to a new file")
    p.add_argument("model", help="model.pt written by `mrkd train` (never changed),"
                                 " or a registered model (<store>/models/<name>/<dataset>/<category>@champion)")
    p.add_argument("--output", "-o", required=True,
                   help="FILE.pt to write the recalibrated model to (the same weights; the model's earlier "
                        "calibrations kept in its calibration_history); not a file of a run directory")
    p.add_argument("data_root", nargs="?",
                   help="dataset root the model was trained on (or its category folder)")
    p.add_argument("--dataset", help="dataset kind (default: the one the model was trained on, else folder)")
    p.add_argument("--category", "-c", help="category (default: the one the model was trained on)")
    p.add_argument("--policy", choices=POLICIES, default="auto",
                   help="f1: F1-optimal on the labelled test split; false_alarm_rate: the target rate on "
                        "defect-free images (held-out train/good, --good-dir, else test/good); auto: "
                        "false_alarm_rate when held-out images or --good-dir exist, else f1 when the test "
                        "split has defects, else false_alarm_rate")
    p.add_argument("--false-alarm-rate", type=float, default=DEFAULT_FALSE_ALARM_RATE,
                   help=f"target false-alarm rate of images and pixels (default: {DEFAULT_FALSE_ALARM_RATE})")
    p.add_argument("--good-dir", help="folder of defect-free images the model did not train on")
    add_config_options(p, only=("device", "num_workers", "eval_batch_size"))
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("export", help="export a model to ONNX (map and score, calibration in the metadata)")
    p.add_argument("model", help="model.pt written by `mrkd train`, or a registered model (<store>/models/<name>/<dataset>/<category>@champion)")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="onnx")
    p.add_argument("--output", "-o", required=True, help="FILE.onnx")
    p.set_defaults(func=cmd_export)

    p = models.add_parser("info", help="config, calibration and thresholds of a model.pt or .onnx, as JSON")
    p.add_argument("model", help="model.pt, .onnx, or a registered model (<store>/models/<name>/<dataset>/<category>@champion)")
    p.add_argument("--images", action="store_true", help="list the calibration images")
    p.set_defaults(func=cmd_models_info)
