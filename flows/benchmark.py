"""Flow ``mrkd-benchmark``: an experiment spec in, the paper's tables and an HTML report out.

::

    benchmark(spec)
      ├─ (runner)             resolved once: Ray of this run, local Ray head, cluster, or local;
      │                       the Ray dashboard's URL is the flow run's first log lines
      ├─ prepare-dataset      per dataset of the spec, in the driver (download / generate, idempotent)
      ├─ stage-teacher-weights per downloaded teacher (imagenet ResNets): once into <store>/weights/,
      │                       where the Ray workers copy them from (MRKD_TEACHER_WEIGHTS)
      ├─ plan                 spec.tasks(data_root) → one Task per (dataset, category, variant)
      ├─ find-complete        keys with a valid manifest in any run are not trained again (unless force)
      ├─ record-complete      per complete key, in the driver: engine.train_evaluate copies the
      │                       stored rows into this run; state "Skipped"
      ├─ train-evaluate       per pending key, on the runner's task runner (num_gpus=1 each on a
      │                       cluster): task runs of this flow run, so its log has every epoch line
      ├─ report               partitioned.read_metrics/read_scores(run_id) + registry history → report.write_report
      └─ (artifacts)          summary table, report link; a regressions warning when a category regressed

The model loop (``register_models``, on by default): every evaluated result, trained or reused, is
tracked in the model registry as ``model_name`` (default ``<spec>-<variant>``): a new
version is promoted to champion only when it is not worse than the champion on the same
test data beyond ``tolerance`` (percentage points per metric; default image and pixel
AU-ROC, 0.5). A category that regresses is named in the flow's final state message and in
the ``regressions-<spec>`` artifact; the run ends Completed (``fail_on_regression``: Failed).

Keys that are already complete never reach Ray, so a rerun of a finished spec starts no
Ray at all and takes seconds. Store and data root come from the environment (see
``flows.settings``); nothing secret is a flow parameter.

CLI (what ``make demo`` runs)::

    python -m flows.benchmark --spec smoke [--store URI] [--runner ray|local] [--ray-address ADDR]
        [--categories a b] [--epochs N] [--image-size N] [--force] [--run-id ID] [--num-gpus G]
        [--no-register-models] [--model-name NAME] [--fail-on-regression]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.states import Completed, State

import flows  # noqa: F401 - offline-safe environment defaults
from flows.artifacts import publish, regression_text
from flows.attempts import error_line, failure_message, settle_task_run
from flows.download import dataset_records, prepare_dataset, published_teachers, stage_teacher_weights
from flows.ray_runner import RAY_MAX_RETRIES, RUNNERS, LocalRunner, RayRunner, check_runner, resolve_runner
from flows.settings import data_root as default_data_root
from flows.settings import open_store, resolve_run_id, run_flow_command, spec_path
from flows.train_evaluate import fail_progress, record_complete, run_name, train_one
from mrkd_core.layout import find_complete
from mrkd_core.partitioned import read_run
from mrkd_core.registry.tables import read_history
from mrkd_core.registry.tracking import RegistryOptions
from mrkd_core.report import MapTriple, write_report
from mrkd_core.results import read_maps
from mrkd_core.specs import FAILED, SKIPPED, TRAINED, ExperimentSpec, Task, TaskOutcome, load_spec
from mrkd_core.storage import ArtifactStore

log = logging.getLogger(__name__)

MAIN_VARIANT = "mrkd"  # whose maps illustrate a category in the report (Fig. 7)


class BenchmarkFailed(RuntimeError):
    """Some trainings failed after their retries; the report covers the others."""


class RegressionDetected(RuntimeError):
    """A category regressed and the run was asked to fail for it (``fail_on_regression``)."""


# --------------------------------------------------------------------------- tasks (driver)
@task(name="plan", cache_policy=NO_CACHE, persist_result=False)
def plan(spec: ExperimentSpec, data_root: str, registry: RegistryOptions | None = None) -> list[dict[str, Any]]:
    """The spec's tasks as JSON-safe records (what travels to Ray and to the Prefect API).

    With ``registry`` every task's registered model name is checked here, before anything trains.
    """
    planned = spec.tasks(data_root)
    for t in planned if registry is not None else ():
        registry.name_for(t)  # ConfigError naming the template
    tasks = [t.to_dict() for t in planned]
    keys = [t["key"] for t in tasks]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        # Two variants with the same hashed config would overwrite each other's run directory.
        raise ValueError(f"spec {spec.name!r}: several tasks share a key {dupes}; variants must differ in config")
    return tasks


@task(name="find-complete", cache_policy=NO_CACHE, persist_result=False)
def find_done(tasks: list[dict[str, Any]], forced_run_id: str | None = None) -> list[bool]:
    """For each task, whether its key already has a complete result (the engine's own rule).

    With ``force`` only results of this very run count (``forced_run_id``), as in the
    engine: a retried forced run does not redo the keys it already finished.
    """
    store = open_store()
    return [find_complete(store, Task.from_dict(t), forced_run_id) is not None for t in tasks]


@task(name="report", cache_policy=NO_CACHE, persist_result=False)
def run_report(run_id: str, results: list[dict[str, Any]]) -> str:
    """Report of the run from the partitioned tables; Fig. 7 maps from each category's run dir.

    The history section (each category's metric per night, regressions flagged) reads the
    registry's ``history`` table when the run tracked its results.
    """
    store = open_store()
    # A task whose result this run recorded under <run_id>.<n> (the run id held another result of it: a
    # re-run after its inputs changed, layout.record_run_id) is reported from there.
    elsewhere = {(r["dataset"], r["category"], r["variant"], r["key"].rsplit("/", 1)[-1]): r["run_id"]
                 for r in results if r.get("run_id") not in (None, run_id)}
    metrics, scores = read_run(store, run_id, elsewhere)
    history = read_history(store) if any(r.get("registry") for r in results) else None
    report = write_report(store, run_id, metrics, scores, maps_provider(store, results), history_df=history)
    return store.uri(report["html"])


def maps_provider(store: ArtifactStore, results: list[dict[str, Any]]) -> Callable[[str, str], list[MapTriple]]:
    """(dataset, category) → (image, mask, map) triples from the ``maps.npz`` of that category's run dir.

    A skipped task's run dir is the earlier run that trained it, so a rerun's report still
    has its maps. The main variant illustrates a category when a spec has several.
    """
    run_dirs: dict[tuple[str, str], str] = {}
    for r in sorted(results, key=lambda r: r["variant"] != MAIN_VARIANT):
        run_dirs.setdefault((r["dataset"], r["category"]), r["run_dir"])

    def provide(dataset: str, category: str) -> list[MapTriple]:
        return read_maps(store, run_dirs[(dataset, category)])

    return provide


# --------------------------------------------------------------------------- fan-out
def _outcome(task: dict[str, Any], future: PrefectFuture, logger: logging.LoggerAdapter) -> dict[str, Any]:
    """The record of one submitted training: its summary, or a failure record with its own error.

    A training whose every attempt died (Ray re-ran it until ``RAY_MAX_RETRIES``) has no
    worker left to end its task run: it is ended *Failed* here, naming the cause of each
    attempt, and so is its progress artifact.
    """
    try:
        return future.result()  # the task's own exception when it failed, a Ray error when it never ran
    except Exception as exc:  # noqa: BLE001 - one training's failure must not hide the others'
        ray_ref = getattr(future, "wrapped_future", None)
        ray_task = ray_ref.task_id().hex() if hasattr(ray_ref, "task_id") else None  # None: runner=local
        error = failure_message(exc, ray_task, RAY_MAX_RETRIES + 1)
        if settle_task_run(train_one, future.task_run_id, run_name("train", task), error):
            fail_progress(task, future.task_run_id, error)  # no attempt could end it
        logger.error("training %s failed: %s", task["key"], error)
        return TaskOutcome.failure(task, error).to_dict()


def first_failure(results: list[dict[str, Any]]) -> str | None:
    failed = [r for r in results if r["status"] == FAILED]
    if not failed:
        return None
    return f"{len(failed)} of {len(results)} trainings failed; first: {failed[0]['key']}: {failed[0]['error']}"


def train_all(tasks: list[dict[str, Any]], datasets: dict[str, dict[str, Any]], run_id: str, force: bool,
              runner: LocalRunner | RayRunner, registry: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One ``train-evaluate`` task run per task, on ``runner``'s task runner, in this flow run.

    The trainings are task runs of the flow run itself (not of a subflow), so that their
    logs are the flow run's: ``prefect flow-run logs <id>`` with the id ``prefect deployment
    run`` printed shows every epoch line. The task runner (a Ray of this run, the local head,
    a cluster, or a thread) is entered for the fan-out only: a Ray of this run is up while
    the trainings last. Returns a record per task; a failed training's has its error.
    """
    logger = get_run_logger()
    with runner.task_runner() as task_runner, runner.submitting() as options:
        reuse = "" if "max_calls" not in options else (
            ", one Ray worker process per training" if options["max_calls"] == 1 else ", Ray workers reused")
        logger.info("%d training(s) on %s, %s GPU(s) each%s", len(tasks), runner.kind, options["num_gpus"], reuse)
        futures = [task_runner.submit(train_one, {"task": t, "run_id": run_id, "force": force,
                                                  "dataset": datasets[t["dataset"]], "registry": registry})
                   for t in tasks]
        return [_outcome(t, f, logger) for t, f in zip(tasks, futures)]


# --------------------------------------------------------------------------- the flow
def _scheduled_time() -> datetime | None:
    """The flow run's scheduled start (deployments), so a late nightly keeps its date."""
    try:
        from prefect.runtime import flow_run

        when = flow_run.scheduled_start_time
        return datetime.fromisoformat(str(when)) if when is not None else None
    except Exception:  # noqa: BLE001 - outside a flow run: the caller uses "now"
        return None


def _prefect_api_url() -> str | None:
    """The API this flow run talks to: configured, or the temporary server of ephemeral mode."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if url:
        return url
    try:
        with get_client(sync_client=True) as client:
            return str(client.api_url).rstrip("/")
    except Exception:  # noqa: BLE001 - workers then start their own temporary servers
        return None


@flow(name="mrkd-benchmark")
def benchmark(
    spec: str = "smoke",
    run_id: str | None = None,
    categories: list[str] | None = None,
    epochs: int | None = None,
    image_size: int | None = None,
    force: bool = False,
    runner: str = "ray",
    ray_address: str | None = None,
    num_gpus: float | None = None,
    register_models: bool = True,
    model_name: str = "{spec}-{variant}",
    tolerance: dict[str, float] | None = None,
    fail_on_regression: bool = False,
) -> dict[str, Any] | State:
    """Train and evaluate every (dataset, category, variant) of ``spec`` and write the report.

    ``spec`` is a name found along ``MRKD_SPEC_PATH`` then ``flows/specs/``, or a YAML path;
    ``categories``/``epochs``/``image_size`` narrow it (the report says so). ``run_id`` defaults to
    ``<spec>-<UTC yyyymmdd-HHMMSS>`` and may use ``{date}``/``{time}``/``{spec}``.
    ``runner='ray'`` fans out on Ray (``ray_address``/``RAY_ADDRESS``: the local head or a
    cluster, else a Ray of this run); ``runner='local'`` trains one task after another
    without Ray. ``num_gpus`` per training defaults to ``MRKD_NUM_GPUS``, else 1 on a cluster.
    Without ``force`` a key is trained only when its inputs changed (config, training or
    test data, training revision); ``force`` trains every key again.
    ``register_models`` tracks every evaluated result in the model registry as ``model_name``
    (``{spec}``, ``{variant}`` filled in) and promotes a new version when it is not worse
    than the champion on the same test data beyond ``tolerance`` (percentage points per
    metric, default ``{"image_auroc": 0.5, "pixel_auroc": 0.5}``). A category that
    regressed is named in the final state's message and in the ``regressions-<spec>``
    artifact; the run then ends Completed, or Failed with :class:`RegressionDetected` when
    ``fail_on_regression``. Fails with :class:`BenchmarkFailed` (first failure's type and
    text) when any training failed, after writing the report of the others.
    """
    logger = get_run_logger()
    check_runner(runner)  # before anything is touched
    registry = RegistryOptions.from_parameters(model_name, tolerance) if register_models else None
    store = open_store()
    root = default_data_root(store)
    fan_out = resolve_runner(runner, ray_address, num_gpus, store.root, root, _prefect_api_url())
    logger.info("Ray dashboard: %s", fan_out.dashboard_hint())
    logger.info("%s", fan_out.describe())
    loaded = load_spec(spec, spec_path()).narrow(categories=categories, epochs=epochs, image_size=image_size)
    rid = resolve_run_id(run_id, loaded.name, _scheduled_time())
    logger.info("run %s: spec %s%s → %s", rid, loaded.name, " (narrowed)" if loaded.narrowed else "", store.uri())

    records = dataset_records(loaded, root)
    for record in records:
        prepare_dataset(record)
    for backbone in published_teachers(loaded):
        stage_teacher_weights(backbone)
    tasks = plan(loaded, root, registry)
    registry_record = registry.to_dict() if registry is not None else None
    done = find_done(tasks, rid if force else None)
    by_name = {r["name"]: r for r in records}

    results: list[dict[str, Any]] = []
    pending = [t for t, d in zip(tasks, done) if not d]
    for t in (t for t, d in zip(tasks, done) if d):  # in the driver: copies the stored rows into this run
        results.append(record_complete(t, rid, force, registry_record, return_state=True).result())
    if pending:
        try:
            results += train_all(pending, by_name, rid, force, fan_out, registry_record)
        except Exception as exc:  # noqa: BLE001 - the fan-out itself failed (Ray did not start): no record per training
            error = error_line(exc)
            logger.error("the fan-out failed: %s", error)
            results += [TaskOutcome.failure(t, error).to_dict() for t in pending]

    ok = [r for r in results if r["status"] != FAILED]
    report = run_report(rid, ok) if ok else None
    counts = {s: sum(r["status"] == s for r in results) for s in (TRAINED, SKIPPED, FAILED)}
    logger.info("run %s: %s; report %s", rid, counts, report)
    publish(rid, loaded.name, results, report)
    failure = first_failure(results)
    regression = regression_text(results)
    if failure:
        raise BenchmarkFailed(f"{failure}; {regression + '; ' if regression else ''}report of the rest: {report}")
    out = {"run_id": rid, "spec": loaded.name, "store": store.uri(), "report": report, "counts": counts,
           "tasks": results, "regressions": regression or None}
    if regression:
        message = f"run {rid}: {regression}; report {report}"
        logger.warning("%s", message)
        if fail_on_regression:
            raise RegressionDetected(message)
        return Completed(message=message, data=out)  # the state users' automations see, with its artifact
    return out


# --------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    """The ``python -m flows.benchmark`` (``make demo``) command line."""
    parser = argparse.ArgumentParser(prog="python -m flows.benchmark",
                                     description="Run the mrkd-benchmark flow and print where the report is.")
    parser.add_argument("--spec", default="smoke",
                        help="spec name (MRKD_SPEC_PATH, then flows/specs/<name>.yaml) or a YAML path")
    parser.add_argument("--store", help="artifact store root (sets MRKD_STORE): a folder or s3://bucket/prefix")
    parser.add_argument("--runner", choices=RUNNERS, default="ray")
    parser.add_argument("--ray-address", help="join this Ray cluster (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--num-gpus", type=float, help="GPUs per training (default: MRKD_NUM_GPUS, 1 on a cluster)")
    parser.add_argument("--categories", nargs="+", help="narrow the spec to these categories")
    parser.add_argument("--epochs", type=int, help="narrow the spec to this many epochs")
    parser.add_argument("--image-size", type=int, help="narrow the spec to this image size")
    parser.add_argument("--force", action="store_true", help="train again even where a complete result exists")
    parser.add_argument("--run-id", help="default <spec>-<UTC yyyymmdd-HHMMSS>; {date} {time} {spec} allowed")
    parser.add_argument("--register-models", action=argparse.BooleanOptionalAction, default=True,
                        help="track results in the model registry and promote versions (default: on)")
    parser.add_argument("--model-name", default="{spec}-{variant}",
                        help="registered model name; {spec} and {variant} are filled in (default: %(default)s)")
    parser.add_argument("--fail-on-regression", action="store_true",
                        help="end Failed (exit 1) when a category regressed; default: Completed with a warning")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.store:
        os.environ["MRKD_STORE"] = args.store
    started = time.perf_counter()

    def run() -> int:
        try:
            out = benchmark(spec=args.spec, run_id=args.run_id, categories=args.categories, epochs=args.epochs,
                            image_size=args.image_size, force=args.force, runner=args.runner,
                            ray_address=args.ray_address, num_gpus=args.num_gpus,
                            register_models=args.register_models, model_name=args.model_name,
                            fail_on_regression=args.fail_on_regression)
        except (BenchmarkFailed, RegressionDetected) as exc:  # the flow run's log has the details; one line here
            sys.stderr.write(f"mrkd-benchmark: failed: {exc}\n")
            return 1
        log.info("%s in %.1f s: %s", out["run_id"], time.perf_counter() - started, out["counts"])
        if out.get("regressions"):
            sys.stderr.write(f"mrkd-benchmark: warning: {out['regressions']}\n")
        print(f"report: {out['report']}")
        return 0

    # A bad spec fails before any server starts.
    return run_flow_command("mrkd-benchmark", run,
                            check=lambda: load_spec(args.spec, spec_path()).narrow(args.categories, args.epochs,
                                                                                     args.image_size))


if __name__ == "__main__":
    sys.exit(main())
