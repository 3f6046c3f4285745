"""The S3 store goes away while a task writes: clear error, nothing half-complete, rerun completes.

moto's S3 server runs on 127.0.0.1 in this process; "down" means the listening socket is
closed (connections refused), "hung" a socket that accepts and never answers. moto keeps
its buckets in the process, so a server restarted on the same port has them all.

The credentials are a unique random secret: ``test_the_secret_never_appears...`` looks
for it in every log record, every error, everything printed and every stored object.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from mrkd_core.engine import train_evaluate
from mrkd_core.errors import StorageError
from mrkd_core.layout import find_complete, run_dir
from mrkd_core.partitioned import read_metrics, read_scores
from mrkd_core.report import write_report
from mrkd_core.results import read_maps, verify_manifest
from mrkd_core.storage import ArtifactStore
from tests.reliability.relkit import ROOT, S3Env

RUN = "outage"


class _Capture(logging.Handler):
    """Every record of every logger, formatted with its traceback (caplog is per test)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # noqa: BLE001 - a record that cannot format is kept raw
            self.lines.append(repr(record.__dict__))


def error_texts(exc: BaseException) -> list[str]:
    """str, repr and the full traceback including every chained cause and context."""
    out = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        out += [str(e), repr(e), repr(getattr(e, "args", ()))]
        e = e.__cause__ or e.__context__
    return out


@dataclass
class Outage:
    task: object
    store: ArtifactStore
    errors: list[StorageError] = field(default_factory=list)
    fail_seconds: list[float] = field(default_factory=list)
    between: list[dict] = field(default_factory=list)
    result: dict | None = None
    log: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def outage(s3: S3Env, data_root) -> Iterator[Outage]:
    """Two attempts that lose the server mid-write (before model.pt, then before the manifest), then one that completes.

    Logs of all loggers at DEBUG are kept for the secret test.
    """
    from tests.reliability.relkit import make_task

    capture = _Capture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    task = make_task(data_root, epochs=1)
    store = s3.store("outage")
    out = Outage(task, store, log=capture.lines)
    d = run_dir(task, RUN)
    original = ArtifactStore.write_bytes
    down_before: list[str] = []
    stopped_at: list[float] = []

    def flaky(self, rel, data):  # the server dies just before this object is written
        if down_before and rel.endswith("/" + down_before[0]) and s3.server.up:
            s3.server.stop()
            stopped_at.append(time.monotonic())
        return original(self, rel, data)

    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(ArtifactStore, "write_bytes", flaky)
            for victim in ("model.pt", "manifest.json"):
                down_before[:] = [victim]
                with pytest.raises(StorageError) as err:
                    train_evaluate(task, store, RUN)
                out.fail_seconds.append(time.monotonic() - stopped_at[-1])
                out.errors.append(err.value)
                s3.server.start()
                out.between.append({
                    "victim": victim,
                    "manifest": store.exists(f"{d}/manifest.json"),
                    "problems": verify_manifest(store, d),
                    "complete": find_complete(store, task),
                    "objects": sorted(p.rsplit("/", 1)[-1] for p in store.list(d)),
                    "checkpoint": store.exists(f"checkpoints/{task.key}/epoch-0001.pt"),
                    "metrics_rows": len(read_metrics(store, RUN)),
                })
        out.result = train_evaluate(task, store, RUN)
        yield out
    finally:
        s3.server.start()
        root.removeHandler(capture)
        root.setLevel(old_level)


def test_outage_fails_fast_with_one_clear_line_and_nothing_counts_as_complete(outage):
    d = run_dir(outage.task, RUN)
    for err, victim, seconds in zip(outage.errors, ("model.pt", "manifest.json"), outage.fail_seconds):
        msg = str(err)
        assert "\n" not in msg and "s3://mrkd-rel/outage" in msg and f"{d}/{victim}" in msg, msg
        assert "cannot write" in msg
        assert seconds < 30, f"took {seconds:.1f} s to give up on a refused connection"
    first, second = outage.between
    # before model.pt: partial objects, no manifest
    assert first["objects"] == ["config.json"] and not first["manifest"]
    # before the manifest: every object written, still not complete
    assert {"model.pt", "metrics.parquet", "scores.parquet", "maps.npz", "train.json"} <= set(second["objects"])
    assert not second["manifest"]
    for b in (first, second):
        assert b["complete"] is None and b["metrics_rows"] == 0
        assert b["problems"] and "no manifest" in b["problems"][0]
        assert b["checkpoint"], "objects written before the outage must survive it"


def test_rerun_after_the_server_returns_completes_from_the_checkpoint(outage):
    r = outage.result
    d = run_dir(outage.task, RUN)
    assert r.status == "trained" and r.run_dir == d
    assert r.resumed_from_epoch == 1  # the checkpoint written before the outage, not a retraining
    assert verify_manifest(outage.store, d) == [] and find_complete(outage.store, outage.task) == d
    assert len(read_metrics(outage.store, RUN)) == 1
    assert not outage.store.exists(f"claims/{outage.task.key}.json")
    # the failed attempts' claims were taken over at once, not waited out
    assert any("left by an earlier attempt in this process" in line for line in outage.log)


@pytest.fixture
def hung_endpoint(monkeypatch) -> Iterator[str]:
    """A socket that accepts connections and never answers (an overloaded or wedged server)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
    for k, v in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_REGION": "us-east-1",
                 "MRKD_S3_ENDPOINT_URL": endpoint, "MRKD_S3_TIMEOUT": "0.5"}.items():
        monkeypatch.setenv(k, v)
    try:
        yield endpoint
    finally:
        stop.set()
        t.join(timeout=5)
        for c in held:
            c.close()
        listener.close()


def test_a_hung_server_fails_writes_and_reads_within_the_configured_timeout(hung_endpoint):
    """Without a write deadline a PUT to a hung server never returned (aiohttp waits for
    '100 Continue' without a timeout); reads are bounded by retries × attempts × timeout."""
    store = ArtifactStore("s3://mrkd-rel/hung")
    t0 = time.monotonic()
    with pytest.raises(StorageError) as err:
        store.write_bytes("runs/r/model.pt", b"x" * 1000)
    assert time.monotonic() - t0 < 10
    msg = str(err.value)
    assert "\n" not in msg and "runs/r/model.pt" in msg and "no answer within" in msg and "MRKD_S3_TIMEOUT" in msg
    t0 = time.monotonic()
    with pytest.raises(StorageError, match="cannot read 'runs/r/config.json'"):
        store.read_bytes("runs/r/config.json")
    assert time.monotonic() - t0 < 20


FLOW_SPEC = """\
name: relflow
datasets:
  - name: folder
    root: generated-relflow
    categories: [obj_disc]
    generate: {kind: synthetic_mvtec, categories: [obj_disc], n_train: 4, n_test_good: 2, n_test_defect: 2, size: 32, seed: 3}
base: {backbone: resnet18, teacher_weights: none, image_size: 32, epochs: 1, batch_size: 4, num_workers: 0,
       progress: false, device: cpu}
"""


def _run_flow(s3: S3Env, tmp_path, prefect_home) -> int:
    """The smoke-sized benchmark flow, runner=local, to s3://mrkd-rel/flow; returns its exit code."""
    spec = tmp_path / "relflow.yaml"
    spec.write_text(FLOW_SPEC)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAY_ADDRESS", "MRKD_STORE"))}
    env.update(PREFECT_HOME=str(prefect_home), PREFECT_LOGGING_LEVEL="DEBUG", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               MRKD_DATA_ROOT=str(tmp_path / "data"), OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    assert env["AWS_SECRET_ACCESS_KEY"] == s3.secret
    proc = subprocess.run([sys.executable, "-m", "flows.benchmark", "--spec", str(spec), "--store",
                           f"s3://{s3.bucket}/flow", "--runner", "local", "--run-id", "relflow"],
                          cwd=ROOT, env=env, timeout=300)
    return proc.returncode


def test_the_secret_never_appears_in_logs_errors_reports_or_stored_objects(s3, outage, caplog, capfd, tmp_path):
    secret = s3.secret
    caplog.set_level(logging.DEBUG)  # every logger, botocore and s3fs included
    store = outage.store
    d = run_dir(outage.task, RUN)
    # the report of the run, from the store, as the flow's last task writes it
    report = write_report(store, RUN, read_metrics(store, RUN), read_scores(store, RUN),
                          lambda category: read_maps(store, d))
    assert report["html"].startswith(f"reports/{RUN}/")
    # one more outage, under caplog/capfd: a read, a listing and a write against a dead server
    s3.server.stop()
    more: list[StorageError] = []
    try:
        for call in (lambda: store.read_bytes(f"{d}/metrics.parquet"), lambda: store.list("runs"),
                     lambda: store.write_bytes("x.bin", b"1")):
            with pytest.raises(StorageError) as err:
                call()
            more.append(err.value)
    finally:
        s3.server.start()
    # the flow path: `python -m flows.benchmark` against the same bucket, with its own Prefect
    # (temporary server, DEBUG logs); its output goes to this test's fds (capfd)
    prefect_home = tmp_path / "prefect-home"
    flow_rc = _run_flow(s3, tmp_path, prefect_home)
    # a store and a task as they travel to Ray workers and Prefect (pickled / as parameters)
    travelling = [pickle.dumps(store), pickle.dumps(ArtifactStore(store.root)), repr(store).encode(),
                  repr(outage.task.to_dict()).encode(), repr(store._storage_options).encode()]
    printed = capfd.readouterr()
    assert flow_rc == 0, printed.err[-3000:]
    assert "report: s3://mrkd-rel/flow/reports/relflow/report.html" in printed.out
    # Prefect's database holds the flow's parameters, task inputs and logs
    prefect_files = [p for p in prefect_home.rglob("*") if p.is_file()]
    assert any(p.name.startswith("prefect.db") for p in prefect_files), prefect_files
    for p in prefect_files:
        assert secret.encode() not in p.read_bytes(), p
    texts = [*outage.log, caplog.text, printed.out, printed.err]
    for e in (*outage.errors, *more):
        texts += error_texts(e)
    assert len(outage.log) > 50 and any("botocore" in line for line in outage.log), "DEBUG logs were not captured"
    for t in texts:
        assert secret not in t
    for blob in travelling:
        assert secret.encode() not in blob
    objects = store.list("", recursive=True)
    assert any(o.endswith("report.html") for o in objects) and any(o.endswith("metrics.parquet") for o in objects)
    for rel in objects:
        assert secret.encode() not in store.read_bytes(rel), rel
    # the access key id is not secret, but it does not belong in results either
    for rel in objects:
        if rel.startswith(("reports/", "tables/")) or rel.endswith((".json", ".parquet")):
            assert s3.access_key.encode() not in store.read_bytes(rel), rel
