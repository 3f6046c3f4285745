"""The deployments as users run them: real Prefect server, real S3 API, the default runner (Ray).

What an operator types, from the repository root, with the store in the worker's environment:
``prefect work-pool create``, ``prefect deploy --prefect-file deployments/prefect.yaml --name
on-demand --name nightly``, the worker line of deployments/README.md (``python -m
flows.worker --pool mrkd-process --type process > LOG 2>&1 &``, in a shell without job
control, as a script runs it), then ``prefect deployment run 'mrkd-benchmark/on-demand'
--param spec=smoke`` and ``prefect flow-run logs <the id it printed>``; and the other route,
the README's serve line (``python -m flows.nightly``, from the checkout) under the same
names, attached to the long-lived local Ray head (``RAY_ADDRESS``). Each is stopped as the
README says, with one SIGTERM. Results are read back from ``s3://`` with pandas, each
training's progress from the Prefect API (log lines per epoch, a progress artifact at
100 %). The worker's and serve's runs are also the runs whose listeners (and, for the
worker's own Ray, Ray token) are checked (``tests/flows/netwatch.py``). A run with a corrupt
training image must end FAILED with the data error's text in the flow run's state message. The newer benchmarks (VisA, MVTec AD 2,
MVTec LOCO AD) run through the served deployment too: one run of a spec narrowed to their
fixture archives, downloaded from a local HTTP server by the flow's download task
(``MRKD_<NAME>_URL`` / ``MRKD_<NAME>_SHA256`` in the operator's environment), trained,
evaluated and reported.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from flows import nightly
from tests import datagen
from tests.flows.netwatch import ListenerWatch, wide_listeners
from tests.flows.prefect_client import api, deployment, prefect_cli, run_deployment, runs_of
from tests.flows.servers import BIN, ROOT, S3_KEYS, BackgroundJob, clean_env, make_bucket
from tests.http_files import serve_files
from tests.reliability.relkit import HANG_GUARD_S

pytestmark = pytest.mark.slow

BUCKET = "mrkd-deployed"
README = ROOT / "deployments" / "README.md"
SMOKE_CATEGORIES = {"tex_stripes", "obj_disc"}
# The benchmark fixtures: one category each, the environment variables that point the download at them.
BENCHMARKS = {"visa": ("candle", "MRKD_VISA"), "mvtec_ad2": ("can", "MRKD_MVTEC_AD2"),
              "mvtec_loco": ("breakfast_box", "MRKD_MVTEC_LOCO")}


# --------------------------------------------------------------------------- one source, no server
def test_prefect_yaml_is_the_one_source_that_deploy_and_serve_read():
    declared = nightly.declared()
    assert set(declared) == {"nightly", "on-demand", "nightly-k8s", "on-demand-k8s"}
    # Module path, never a file path: Prefect would load flows/benchmark.py as a top-level
    # module `benchmark` that Ray workers cannot import.
    assert {d["entrypoint"] for d in declared.values()} == {"flows.benchmark.benchmark"} == {nightly.ENTRYPOINT}
    for name, d in declared.items():
        pool = nightly.K8S_POOL if name.endswith("-k8s") else nightly.PROCESS_POOL
        assert d["work_pool"]["name"] == pool
        if pool == nightly.K8S_POOL:  # the image's WORKDIR; the process pair records where it was deployed from
            assert d["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/mrkd"}}]
            assert d["work_pool"]["job_variables"]["image"] == "ghcr.io/mrkd-project/mrkd:0.1.0"
        else:
            assert "pull" not in d
    assert declared["nightly"]["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}

    served = {d.name: d for d in nightly.deployments()}
    assert set(served) == {"nightly", "on-demand"}
    for name, built in served.items():
        d = declared[name]
        assert built.entrypoint == d["entrypoint"] and built.flow_name == nightly.FLOW_NAME
        assert built.parameters == d["parameters"] and built.tags == d["tags"] and built.paused is d["paused"] is False
        assert built.description == d["description"]
        schedules = [(s.schedule.cron, s.schedule.timezone) for s in built.schedules or []]
        assert schedules == [(s["cron"], s["timezone"]) for s in d.get("schedules", [])]
        limit = d.get("concurrency_limit")
        assert built.concurrency_limit == (limit["limit"] if limit else None)
        assert (built.concurrency_options.collision_strategy.value if built.concurrency_options else None) == \
            (limit["collision_strategy"] if limit else None)


def test_nightly_run_id_is_the_scheduled_date():
    from datetime import datetime, timezone

    from flows.settings import resolve_run_id

    when = datetime(2026, 11, 29, 2, 0, tzinfo=timezone.utc)
    assert resolve_run_id(nightly.declared()["nightly"]["parameters"]["run_id"], "mvtec-full", when) == \
        "nightly-20261129"
    assert resolve_run_id(None, "smoke", when) == "smoke-20261129-020000"


# --------------------------------------------------------------------------- helpers
def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return prefect_cli(args, env)


def _run(env: dict[str, str], *params: str):
    """``prefect deployment run 'mrkd-benchmark/on-demand' --param ...`` to its final state."""
    return run_deployment(env, f"{nightly.FLOW_NAME}/on-demand", *params)


def _deployment(name: str):
    return deployment(nightly.FLOW_NAME, name)


def _progress_checks(run, epochs: int) -> tuple[dict, list[str]]:
    """Each training's task run: one log line per epoch, and a progress artifact at 100 %."""
    runs, _, flow_logs = asyncio.run(api(lambda c: runs_of(c, run.id)))
    trainings = {n: v for n, v in runs.items() if n.startswith("train-")}
    assert {n.split("-")[2] for n in trainings} == SMOKE_CATEGORIES, sorted(runs)
    for name, (tr, logs, arts) in trainings.items():
        assert tr.state.is_completed(), (name, tr.state)
        for e in range(1, epochs + 1):
            assert any(m.startswith(f"epoch {e}/{epochs} ") and "img/s" in m and "ETA" in m for m in logs), (name, logs)
        (art,) = [a for a in arts if a.type == "progress"]
        assert float(art.data) == 100.0, (name, art.data)
        assert art.key == f"progress-{name.removeprefix('train-')}".lower().replace("_", "-")
    return runs, flow_logs


def readme_command(prefix: str) -> str:
    """The command of deployments/README.md's line that starts with ``prefix``, without its redirection and ``&``."""
    for line in README.read_text().splitlines():
        if line.startswith(prefix):
            return line.split(" > ", 1)[0].strip()
    raise AssertionError(f"deployments/README.md has no line starting with {prefix!r}")


def _text(path: Path) -> str:
    """A log file's text so far ('' before the shell created it)."""
    return path.read_text(errors="replace") if path.exists() else ""


def start_as_documented(prefix: str, env: dict[str, str], cwd: Path, log: Path) -> BackgroundJob:
    """deployments/README.md's ``<command> > LOG 2>&1 &`` (the venv's bin first on PATH, as after
    ``. .venv/bin/activate``), in a non-interactive shell: how the README (or a script) starts it."""
    path = f"{BIN}{':' + env['PATH'] if env.get('PATH') else ''}"
    return BackgroundJob(f"{readme_command(prefix)} > {log} 2>&1", {**env, "PATH": path}, cwd)


def _s3_options(endpoint: str) -> dict:
    return {"key": S3_KEYS["AWS_ACCESS_KEY_ID"], "secret": S3_KEYS["AWS_SECRET_ACCESS_KEY"],
            "client_kwargs": {"endpoint_url": endpoint, "region_name": S3_KEYS["AWS_REGION"]}}


def _metrics(endpoint: str, run_id: str) -> pd.DataFrame:
    m = pd.read_parquet(f"s3://{BUCKET}/store/tables/metrics", storage_options=_s3_options(endpoint))
    return m[m["run_id"].astype(str) == run_id]


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def benchmark_mirror(tmp_path_factory):
    """The three benchmark fixture archives on a local HTTP server; yields the download environment."""
    tmp = tmp_path_factory.mktemp("benchmark-archives")
    with serve_files() as (state, base):
        env = {}
        for name, (_, var) in BENCHMARKS.items():
            filename, archive = datagen.benchmark_archive(name, tmp)
            state.files[f"/{filename}"] = archive
            env[f"{var}_URL"] = f"{base}/{filename}"
            env[f"{var}_SHA256"] = hashlib.sha256(archive).hexdigest()
        yield env, state


@pytest.fixture(scope="module")
def user_env(prefect_api, prefect_home, moto_s3, benchmark_mirror, tmp_path_factory):
    """The environment of the operator's shell: server, store in S3, credentials, data root, dataset mirrors."""
    make_bucket(moto_s3, BUCKET)
    data = tmp_path_factory.mktemp("deployed-data")
    env = clean_env(PREFECT_API_URL=prefect_api, PREFECT_HOME=str(prefect_home), MRKD_STORE=f"s3://{BUCKET}/store",
                    MRKD_S3_ENDPOINT_URL=moto_s3, MRKD_DATA_ROOT=str(data), **S3_KEYS, **benchmark_mirror[0])
    env.pop("PYTHONPATH")  # flow runs must find flows/ and mrkd_core/ as a user's do
    return env, moto_s3, data


@pytest.fixture(scope="module")
def deployed(user_env):
    """The README's steps 2 and 3, from the repository root, as written."""
    env, _, _ = user_env
    _cli(["work-pool", "create", nightly.PROCESS_POOL, "--type", "process", "--overwrite"], env)
    _cli(["deploy", "--prefect-file", "deployments/prefect.yaml", "--name", "nightly", "--name", "on-demand"], env)
    return env


@pytest.fixture(scope="module")
def served(deployed, user_env, ray_head, tmp_path_factory):
    """``python -m flows.nightly`` started as deployments/README.md says (from the checkout, in the
    background), attached to the local Ray head; its listeners are watched while it lives."""
    head, _, _ = ray_head
    env = {**deployed, "RAY_ADDRESS": head.address}
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    job = start_as_documented("python -m flows.nightly", env, ROOT, log_path)
    watch = ListenerWatch(lambda: job.pid)
    watch.start()
    try:
        deadline = time.monotonic() + 120
        while _deployment("on-demand").work_pool_name is not None:  # taken over from the pool
            assert job.alive() and time.monotonic() < deadline, log_path.read_text(errors="replace")
            time.sleep(1)
        yield job, log_path, head, watch
    finally:
        watch.stop.set()
        watch.join(timeout=30)
        job.stop()


# --------------------------------------------------------------------------- (a) prefect deploy + process worker
def test_on_demand_through_prefect_deploy_and_a_process_worker(deployed, user_env, tmp_path):
    env, endpoint, _ = user_env
    on_demand = _deployment("on-demand")
    assert on_demand.entrypoint == "flows.benchmark.benchmark" and on_demand.work_pool_name == nightly.PROCESS_POOL
    assert on_demand.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]  # where it was deployed from
    night = _deployment("nightly")
    assert night.global_concurrency_limit.limit == 1
    assert night.concurrency_options.collision_strategy.value == "CANCEL_NEW"

    log_path = tmp_path / "worker.log"
    worker = start_as_documented("python -m flows.worker", env, ROOT, log_path)  # README: from the repository root
    watch = ListenerWatch(lambda: worker.pid)  # the flow-run process and its Ray are the worker's children
    watch.start()
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        while "started!" not in _text(log_path):  # polling its pool; fail fast if it died
            assert worker.alive() and time.monotonic() < deadline, _text(log_path)[-3000:]
            time.sleep(0.5)
        started = time.perf_counter()
        run = _run(env, "spec=smoke", "run_id=worker-run")
        seconds = time.perf_counter() - started
    finally:
        watch.stop.set()
        watch.join(timeout=30)
        # Stopped as the README says (`kill %N`): one SIGTERM. Started in the background of a shell
        # without job control, a plain `prefect worker start` ignored it (issue 25).
        stopped_after = worker.terminate_once(HANG_GUARD_S)
        worker.stop()
    worker_log = log_path.read_text(errors="replace")
    assert stopped_after is not None, f"one SIGTERM did not stop the worker\n{worker_log[-3000:]}"
    assert re.search(r"Worker '.*' stopped!", worker_log), worker_log[-3000:]  # Prefect's graceful shutdown
    assert run.state is not None and run.state.is_completed(), f"{run.state}\n{worker_log[-4000:]}"
    assert run.parameters["spec"] == "smoke"
    metrics = _metrics(endpoint, "worker-run")
    assert set(metrics["category"]) == SMOKE_CATEGORIES and metrics["image_auroc"].between(0, 1).all()
    runs, flow_logs = _progress_checks(run, epochs=1)
    assert any(m.startswith("Ray dashboard: http://127.0.0.1:") for m in flow_logs), flow_logs
    # The worker's own log shows each training's epochs (forwarded from the Ray workers).
    for category in SMOKE_CATEGORIES:
        assert re.search(rf"Task run 'train-folder-{category}-mrkd' - epoch 1/1 ", worker_log), worker_log[-3000:]
    # `prefect flow-run logs <id>` with the id `prefect deployment run` printed: every epoch line is there.
    printed = _cli(["flow-run", "logs", str(run.id)], env).stdout
    assert len(re.findall(r"epoch 1/1 \(100\.0 %\), loss \S+, \S+ img/s, ETA", printed)) == len(SMOKE_CATEGORIES), \
        printed[-3000:]
    for category in SMOKE_CATEGORIES:  # each training's attempt and result lines too
        assert f"trained folder/{category}/" in printed, printed[-3000:]
    assert printed.count("attempt 1: Ray worker pid ") == len(SMOKE_CATEGORIES), printed[-3000:]
    watch.check()
    # docs/reliability.md, "Ports a run opens": the worker listens itself, on loopback, while it runs a flow
    # run (Prefect's control channel to the flow-run process).
    assert watch.of(worker.pid) and all(ip == "127.0.0.1" for ip, _ in watch.of(worker.pid)), watch.table()
    print(f"deployment run through a process worker, default runner (trigger → COMPLETED): {seconds:.1f} s; "
          f"the worker stopped {stopped_after:.1f} s after one SIGTERM; listeners:\n{watch.table()}")


# --------------------------------------------------------------------------- (b) serve, same names
def test_serve_takes_the_same_names_over_and_runs_them_on_the_local_head(served, user_env):
    from flows.local_ray import auth_headers

    job, log_path, head, watch = served
    env, endpoint, _ = user_env
    for name in ("nightly", "on-demand"):
        d = _deployment(name)
        assert d.work_pool_name is None and d.entrypoint == "flows.benchmark.benchmark", (name, d.work_pool_name)
        assert not d.paused, name
    night = _deployment("nightly")  # what prefect.yaml declares, now from serve
    assert night.global_concurrency_limit.limit == 1
    assert night.concurrency_options.collision_strategy.value == "CANCEL_NEW"
    assert "it was deployed to work pool mrkd-process" in log_path.read_text(errors="replace")

    started = time.perf_counter()
    run = _run(env, "spec=smoke", "run_id=served-run", "force=true", "epochs=2")
    seconds = time.perf_counter() - started
    assert run.state.is_completed(), f"{run.state}\n{log_path.read_text(errors='replace')[-4000:]}"
    assert set(_metrics(endpoint, "served-run")["category"]) == SMOKE_CATEGORIES
    _, flow_logs = _progress_checks(run, epochs=2)
    assert f"Ray dashboard: {head.dashboard_url}" in flow_logs, flow_logs
    # The trainings ran on the head: its dashboard lists them.
    request = urllib.request.Request(f"{head.dashboard_url}/api/v0/tasks?limit=1000", headers=auth_headers())
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert b"train-evaluate" in resp.read()
    # docs/reliability.md, "Ports a run opens": serve listens itself, on loopback (Prefect's control channel).
    assert watch.error is None, watch.error
    assert watch.of(job.pid) and all(ip == "127.0.0.1" for ip, _ in watch.of(job.pid)), watch.table()
    assert wide_listeners(watch.seen) == [], watch.table()
    print(f"served deployment run on the local Ray head (trigger → COMPLETED): {seconds:.1f} s; listeners of serve's "
          f"process tree:\n{watch.table()}")


def test_a_broken_training_image_fails_the_run_with_the_data_errors_text(served, user_env):
    from flows.download import dataset_records, ensure_dataset
    from flows.settings import spec_path
    from mrkd_core.specs import load_spec

    env, _, data = user_env
    (record,) = dataset_records(load_spec("smoke", spec_path()), str(data))
    root = Path(ensure_dataset(record))  # generated by the earlier runs; here if this test runs alone
    broken = root / "obj_disc" / "train" / "good" / "000.png"
    broken.write_bytes(broken.read_bytes()[:100])  # truncated PNG
    run = _run(env, "spec=smoke", "run_id=broken-run", "force=true")
    assert run.state.is_failed(), run.state
    message = run.state.message
    assert "BenchmarkFailed: 1 of 2 trainings failed" in message, message
    assert "DataError" in message and str(broken) in message and "cannot read image" in message, message
    runs, subflows, _ = asyncio.run(api(lambda c: runs_of(c, run.id)))
    assert subflows == []  # the trainings are task runs of the flow run: its state names the first error
    failed = runs["train-folder-obj_disc-mrkd"][0].state
    assert failed.is_failed() and "DataError" in failed.message and str(broken) in failed.message, failed
    assert runs["train-folder-obj_disc-mrkd"][0].run_count == 1  # a data error is not retried
    assert runs["train-folder-tex_stripes-mrkd"][0].state.is_completed()
    # The failed training's one progress artifact ends at its final state.
    (progress,) = [a for a in runs["train-folder-obj_disc-mrkd"][2] if a.type == "progress"]
    assert progress.description.startswith("obj_disc (folder, mrkd): failed at 0.0 % (epoch 0/1): DataError: "), \
        progress.description


def test_the_new_benchmarks_download_train_evaluate_and_report_through_the_served_deployment(
        served, user_env, benchmark_mirror, tmp_path):
    """One run of a spec narrowed to the three fixture datasets: the flow downloads each archive from the
    mirror the operator's environment names, trains MRKD (ResNet18, random teacher, 32 px, 1 epoch),
    evaluates with each dataset's protocol and writes the report with a table per benchmark."""
    import s3fs

    _, log_path, _, _ = served
    env, endpoint, data = user_env
    spec = tmp_path / "benchmarks-fixture.yaml"
    spec.write_text("name: benchmarks-fixture\n"
                    "description: VisA, MVTec AD 2 and MVTec LOCO AD fixture archives, one category each\n"
                    "datasets:\n"
                    + "".join(f"  - {{name: {n}, categories: [{c}]}}\n" for n, (c, _) in BENCHMARKS.items())
                    + "base: {backbone: resnet18, teacher_weights: none, image_size: 32, epochs: 1, batch_size: 4, "
                      "num_workers: 0, progress: false}\nvariants:\n  mrkd: {}\n")
    started = time.perf_counter()
    run = _run(env, f"spec={spec}", "run_id=benchmarks-run")
    seconds = time.perf_counter() - started
    assert run.state.is_completed(), f"{run.state}\n{log_path.read_text(errors='replace')[-4000:]}"
    _, state = benchmark_mirror
    assert sorted(p for p, _ in state.requests) == sorted(f"/{datagen.BENCHMARK_ARCHIVES[n][0]}" for n in BENCHMARKS)
    for name in BENCHMARKS:
        assert (data / name / ".mrkd_complete.json").is_file(), name  # the download task extracted it
    m = _metrics(endpoint, "benchmarks-run").set_index("dataset")
    assert set(m.index) == set(BENCHMARKS) and m["image_auroc"].between(0, 1).all()
    assert m.loc["mvtec_ad2", ["au_pro_005", "seg_f1", "seg_threshold"]].notna().all()
    assert m.loc["mvtec_loco", ["au_spro_logical", "au_spro_structural", "image_auroc_mean_types"]].notna().all()
    assert m.loc["visa", ["seg_f1", "au_spro_logical"]].isna().all()  # no protocol: null
    fs = s3fs.S3FileSystem(**_s3_options(endpoint))
    for name in BENCHMARKS:
        table = fs.cat(f"{BUCKET}/store/reports/benchmarks-run/{name}.md").decode()
        assert f"| {BENCHMARKS[name][0]} | " in table and "MRKD" in table, table
    print(f"benchmark fixtures through the served deployment (trigger → COMPLETED): {seconds:.1f} s")


def test_prefect_deploy_hands_served_deployments_back_to_the_pool(served, deployed):
    job, log_path, _, _ = served
    # Serve stopped first, as the README says (`kill %N`): one SIGTERM, Prefect's graceful shutdown.
    assert job.terminate_once(HANG_GUARD_S) is not None, log_path.read_text(errors="replace")[-3000:]
    assert "SIGTERM received, initiating graceful shutdown" in log_path.read_text(errors="replace")
    _cli(["deploy", "--prefect-file", "deployments/prefect.yaml", "--name", "nightly", "--name", "on-demand"],
         deployed)
    for name in ("nightly", "on-demand"):
        d = _deployment(name)
        assert d.work_pool_name == nightly.PROCESS_POOL and d.entrypoint == "flows.benchmark.benchmark"
        assert not d.paused, name  # serve paused them when it stopped; prefect.yaml's paused: false resumes
