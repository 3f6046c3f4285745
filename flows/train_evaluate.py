"""The unit of work of the fan-out, as a Prefect task, and a flow that runs one of them.

``train_one`` is what ``mrkd-benchmark`` submits once per (dataset, category, config):
it makes sure the dataset is on this node, then calls
:func:`mrkd_core.engine.train_evaluate`, which skips complete keys, resumes from its
last checkpoint and writes the manifest last. Its input is ``Task.to_dict()`` and its
output a small record (status, run directory, where and when it ran): never tensors.

Retries are declared here, not in the library. Prefect retries an exception twice, 5 s
apart, inside the same Ray task (the GPU stays reserved); Ray re-runs the task when its
worker process dies (see ``flows.ray_runner.RAY_MAX_RETRIES``). Either way the engine
resumes from the checkpoint of the last finished epoch.

``mrkd-train-evaluate`` runs one category in the current process (no Ray): for
debugging a single training with the same code path the benchmark uses::

    python -m flows.train_evaluate --spec smoke --category obj_disc
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

import flows  # noqa: F401 - offline-safe environment defaults
from flows.download import dataset_records, ensure_dataset
from flows.ray_runner import assigned_gpu, node_info
from flows.settings import data_root as default_data_root
from flows.settings import open_store, resolve_run_id, spec_path
from mrkd_core.engine import train_evaluate
from mrkd_core.errors import ConfigError
from mrkd_core.specs import Task, load_spec

log = logging.getLogger(__name__)

TRAIN_RETRIES = 2
TRAIN_RETRY_DELAY_S = 5


def _task_run_name() -> str:
    from prefect.runtime import task_run

    t = task_run.parameters.get("task", {})
    return f"train-{t.get('dataset')}-{t.get('category')}-{t.get('variant')}"


@task(
    name="train-evaluate",
    task_run_name=_task_run_name,
    retries=TRAIN_RETRIES,
    retry_delay_seconds=TRAIN_RETRY_DELAY_S,
    # The skip rule is the engine's (a valid manifest for the key); Prefect's own caching
    # and result persistence would be a second, disagreeing one.
    cache_policy=NO_CACHE,
    persist_result=False,
)
def train_one(task: dict[str, Any], run_id: str, force: bool = False,
              dataset: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train + evaluate one task (or skip it when complete); returns a small summary record."""
    started = time.time()
    where = node_info()
    if dataset is not None:
        ensure_dataset(dataset)
    with assigned_gpu():  # Ray's GPU for this task, freed for the next task of a reused worker
        result = train_evaluate(Task.from_dict(task), open_store(), run_id, force)
    finished = time.time()
    summary = {
        "key": result["key"], "status": result["status"], "run_dir": result["run_dir"],
        "dataset": task["dataset"], "category": task["category"], "variant": task["variant"],
        "rows": result.get("rows", []), "resumed_from_epoch": result.get("resumed_from_epoch"),
        "started": started, "finished": finished, "seconds": round(finished - started, 3), **where,
    }
    log.info("%s %s in %.1f s", summary["status"], summary["key"], summary["seconds"])
    return summary


@flow(name="mrkd-train-evaluate")
def train_evaluate_flow(spec: str = "smoke", category: str | None = None, dataset: str | None = None,
                        variant: str | None = None, run_id: str | None = None, force: bool = False,
                        epochs: int | None = None, image_size: int | None = None) -> list[dict[str, Any]]:
    """Run the tasks of ``spec`` that match ``dataset``/``category``/``variant``, here, one by one."""
    loaded = load_spec(spec, spec_path()).narrow(categories=[category] if category else None, epochs=epochs,
                                    image_size=image_size)
    rid = resolve_run_id(run_id, loaded.name)
    root = default_data_root(open_store())
    records = {r["name"]: r for r in dataset_records(loaded, root)}
    for record in records.values():
        ensure_dataset(record)
    selected = [t for t in loaded.tasks(root)
                if (dataset is None or t.dataset == dataset) and (variant is None or t.variant == variant)]
    if not selected:
        raise ConfigError(f"spec {spec!r} has no task for dataset={dataset} category={category} variant={variant}")
    return [train_one(t.to_dict(), rid, force, records[t.dataset]) for t in selected]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.train_evaluate", description=train_evaluate_flow.__doc__)
    parser.add_argument("--spec", default="smoke")
    parser.add_argument("--category")
    parser.add_argument("--dataset")
    parser.add_argument("--variant")
    parser.add_argument("--run-id")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results = train_evaluate_flow(spec=args.spec, category=args.category, dataset=args.dataset, variant=args.variant,
                                  run_id=args.run_id, force=args.force, epochs=args.epochs,
                                  image_size=args.image_size)
    for r in results:
        print(json.dumps({k: r[k] for k in ("key", "status", "run_dir", "seconds")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
