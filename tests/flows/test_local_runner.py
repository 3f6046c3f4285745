"""The benchmark without Ray: ``--runner local`` in a Python where ``import ray`` fails.

Run as the CLI in a subprocess whose ``ray`` and ``prefect_ray`` imports are blocked, as
on a machine without the pipeline's Ray extra. Also covered here: the run id rules and
what Ray workers are (and are not) given, and that ``--no-register-models`` leaves the
model registry alone.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys

import pandas as pd
import pytest

from flows.local_ray import port_free
from flows.ray_runner import requested_gpus, worker_env
from flows.settings import resolve_run_id
from mrkd_core.errors import ConfigError
from tests.flows.prefect_client import api, runs_of
from tests.flows.servers import ROOT, clean_env

NO_RAY = """
import os
import sys
sys.modules["ray"] = None          # `import ray` now raises ImportError
sys.modules["prefect_ray"] = None
from flows.benchmark import benchmark, main
try:
    benchmark(spec="smoke", categories=["obj_disc"], run_id="needs-ray", runner="ray")
except RuntimeError as exc:
    print("RAY-ERROR:", exc)
assert not os.path.exists("artifacts"), "the failed attempt must not have touched a store"
code = main(sys.argv[1:])
assert "ray" not in {m.split(".")[0] for m, v in sys.modules.items() if v is not None}
sys.exit(code)
"""


@pytest.mark.slow
def test_local_runner_trains_without_ray(prefect_api, prefect_home, tmp_path):
    store, workdir = tmp_path / "store", tmp_path / "cwd"
    workdir.mkdir()  # the failed ray attempt would create ./artifacts here if it touched a store
    env = clean_env(PREFECT_API_URL=prefect_api, PREFECT_HOME=str(prefect_home),
                    MRKD_DATA_ROOT=str(tmp_path / "data"))
    proc = subprocess.run([sys.executable, "-c", NO_RAY, "--spec", "smoke", "--store", str(store), "--runner",
                           "local", "--categories", "obj_disc", "--image-size", "32", "--run-id", "no-ray",
                           "--no-register-models"],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "RAY-ERROR: runner='ray' needs" in proc.stdout and "runner='local'" in proc.stdout
    report = store / "reports" / "no-ray" / "report.html"
    assert f"report: {report}" in proc.stdout
    assert report.is_file()
    metrics = pd.read_parquet(store / "tables" / "metrics")
    assert list(metrics["category"]) == ["obj_disc"] and list(metrics["run_id"].astype(str)) == ["no-ray"]
    assert bool(metrics["narrowed"].iloc[0])  # --categories narrowed the spec, and the rows say so
    (manifest,) = (store / "runs" / "no-ray").rglob("manifest.json")
    assert json.loads(manifest.read_text())["run_id"] == "no-ray"
    # register_models off (a quick try): the registry is left alone
    assert not (store / "models").exists() and not (store / "tables" / "history").exists()


def test_run_id_placeholders_and_validation():
    assert resolve_run_id("nightly-{date}", "mvtec-full").startswith("nightly-2")
    assert resolve_run_id("fixed", "smoke") == "fixed"
    # Any text that names a folder: partition values are percent-encoded (tests/core/test_partitioned.py).
    for good in ("0001", "x=1", "nuit du 30 nov", "essai-été", "100%"):
        assert resolve_run_id(good, "smoke") == good
    for bad in ("a/b", "{nope}", " padded", "a*b", "..", "tab\there", "x" * 129):
        with pytest.raises(ConfigError):
            resolve_run_id(bad, "smoke")


def test_gpu_request_rules(monkeypatch):
    monkeypatch.delenv("MRKD_NUM_GPUS", raising=False)
    assert requested_gpus(None, "ray-head:6379") == 1.0  # a cluster: one GPU per training
    assert requested_gpus(None, None) is None  # local: decided by the GPUs the local Ray finds
    assert requested_gpus(None, "127.0.0.1:6379") is None  # the local head: the same rule
    assert requested_gpus(0.5, "ray-head:6379") == 0.5  # fractional: two trainings per GPU
    monkeypatch.setenv("MRKD_NUM_GPUS", "0.25")
    assert requested_gpus(None, "ray-head:6379") == 0.25
    assert requested_gpus(2, None) == 2.0  # the parameter wins over the environment
    with pytest.raises(ValueError):
        requested_gpus(-1, None)


def test_one_reading_of_a_ray_addresss_host_and_port():
    """The loopback decision and the reachability probe read an address the same way."""
    from flows.local_ray import host_and_port, is_loopback_address
    from flows.ray_runner import check_reachable

    assert host_and_port("127.0.0.1:6379") == ("127.0.0.1", 6379)
    assert host_and_port("[::1]:6379") == ("::1", 6379)
    assert host_and_port("ray-head") == ("ray-head", None) and host_and_port("::1") == ("::1", None)
    assert host_and_port("ray-head:http") == ("ray-head:http", None)
    for loopback in ("127.0.0.1:6379", "localhost:6379", "[::1]:6379", "127.0.0.1", "::1"):
        assert is_loopback_address(loopback), loopback
    for other in ("ray-head:6379", "10.0.0.5:6379", "ray://127.0.0.1:10001", "auto", None):
        assert not is_loopback_address(other), other
    check_reachable("auto")  # no port: left to Ray, nothing probed
    check_reachable("ray-head")
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConnectionError, match=f"no Ray at ray://127.0.0.1:{port}"):
        check_reachable(f"ray://127.0.0.1:{port}")


def test_worker_env_carries_store_settings_but_only_what_is_set(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("MRKD_S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("UNRELATED_SECRET", "x")
    env = worker_env("s3://b/p", "/data/datasets", "http://127.0.0.1:4200/api")
    assert env["MRKD_STORE"] == "s3://b/p" and env["MRKD_DATA_ROOT"] == "/data/datasets"
    assert env["AWS_SECRET_ACCESS_KEY"] == "secret" and env["MRKD_S3_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    assert env["PREFECT_API_URL"] == "http://127.0.0.1:4200/api"
    assert "AWS_SESSION_TOKEN" not in env and "UNRELATED_SECRET" not in env
    assert env["PYTHONPATH"].split(":")[0] == str(ROOT)


def test_worker_env_carries_every_datasets_download_overrides(monkeypatch):
    """A worker that downloads a dataset (ensure_dataset on its node) sees the driver's mirror and hash."""
    monkeypatch.setenv("MRKD_VISA_URL", "/mirror/VisA_20220922.tar")
    monkeypatch.setenv("MRKD_MVTEC_LOCO_SHA256", "ab" * 32)
    env = worker_env("s3://b/p", "/data/datasets", None)
    assert env["MRKD_VISA_URL"] == "/mirror/VisA_20220922.tar" and env["MRKD_MVTEC_LOCO_SHA256"] == "ab" * 32


@pytest.mark.slow
def test_failed_training_is_retried_and_a_lost_one_does_not_sink_the_report(prefect_api, local_store, monkeypatch):
    """Prefect retries a failing training (the runner resumes it); one that keeps failing
    fails the flow after the others' report is written."""
    import flows.benchmark as fb
    import flows.train_evaluate as fte
    from flows.train_evaluate import TRAIN_RETRIES, train_one

    real = fte.train_evaluate
    calls: dict[str, int] = {}

    def flaky(task, store, run_id, mode, reporters=None, register=None):
        calls[task.category] = calls.get(task.category, 0) + 1
        if task.category == "tex_stripes" or calls[task.category] == 1:
            raise RuntimeError(f"simulated failure {calls[task.category]} of {task.category}")
        return real(task, store, run_id, mode, reporters=reporters, register=register)

    monkeypatch.setattr(fte, "train_evaluate", flaky)
    monkeypatch.setattr(fb, "train_one", train_one.with_options(retry_delay_seconds=0))
    state = fb.benchmark(spec="smoke", run_id="flaky", runner="local", image_size=32, return_state=True)
    assert state.is_failed() and "BenchmarkFailed" in state.message and "tex_stripes" in state.message
    assert calls == {"tex_stripes": 1 + TRAIN_RETRIES, "obj_disc": 2}
    metrics = pd.read_parquet(local_store / "tables" / "metrics")
    assert list(metrics["category"]) == ["obj_disc"]
    assert (local_store / "reports" / "flaky" / "report.html").is_file()
    # Every attempt is in the training's own task run, with one progress artifact at its final state.
    runs, _, _ = asyncio.run(api(lambda c: runs_of(c, state.state_details.flow_run_id)))
    for category, attempts, final in (("obj_disc", 2, "done in "),
                                      ("tex_stripes", 1 + TRAIN_RETRIES, "failed at 0.0 % (epoch 0/1): RuntimeError: "
                                       f"simulated failure {1 + TRAIN_RETRIES} of tex_stripes")):
        run, logs, artifacts = runs[f"train-folder-{category}-mrkd"]
        assert run.run_count == attempts, (category, run.run_count)
        assert [m.split(":")[0] for m in logs if m.startswith("attempt ")] == \
            [f"attempt {n}" for n in range(1, attempts + 1)], logs
        (progress,) = [a for a in artifacts if a.type == "progress"]
        assert progress.description.startswith(f"{category} (folder, mrkd): {final}"), progress.description


def test_a_diverged_training_is_not_retried_and_a_crash_is():
    """A retry resumes from the last checkpoint with the same seeds and diverges again: only the config can fix it."""
    from prefect.states import Failed

    from flows.train_evaluate import retry_unless_bad_input
    from mrkd_core.errors import TrainingDiverged

    assert not retry_unless_bad_input(None, None, Failed(data=TrainingDiverged("obj_disc: the training diverged")))
    assert retry_unless_bad_input(None, None, Failed(data=RuntimeError("worker lost")))


def test_a_ray_address_where_no_head_runs_fails_the_run_in_one_line(prefect_api, prefect_home, tmp_path):
    """RAY_ADDRESS naming a stopped head: the run fails at once, naming the address and the fixes
    (``ray.init`` would retry for minutes while the flow run hangs Running)."""
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = clean_env(PREFECT_API_URL=prefect_api, PREFECT_HOME=str(prefect_home), RAY_ADDRESS=f"127.0.0.1:{port}",
                    MRKD_STORE=str(tmp_path / "store"), MRKD_DATA_ROOT=str(tmp_path / "data"))
    proc = subprocess.run([sys.executable, "-m", "flows.benchmark", "--spec", "smoke", "--categories", "obj_disc",
                           "--image-size", "32"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert f"no Ray at 127.0.0.1:{port}" in out and "python -m flows.ray_head start" in out, out[-3000:]
    assert not (tmp_path / "store" / "runs").exists()  # nothing trained or stored


def test_a_port_a_stopped_head_left_in_time_wait_is_free_and_a_listening_one_is_not():
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Ray's gRPC and dashboard servers bind
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = server.accept()
        conn.close()  # the server's end closes first: its port stays in TIME_WAIT
        client.close()
    assert port_free(port)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        assert not port_free(listening.getsockname()[1])
