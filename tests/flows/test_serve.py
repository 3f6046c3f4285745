"""``mrkd serve`` as users run it (issue 24's acceptance): one service for the whole module.

Two versions of the registered model ``line`` (obj_disc, ResNet18, random teacher, 64 px,
1 and 2 epochs) are trained with ``mrkd train --register``, v1 is made the champion, and
``mrkd serve line@champion raw=<an uncalibrated model.pt> --store … --token-file …`` runs on
the session's local Ray head (``flows.ray_head``), started and stopped by PID, on a free
loopback port, with the registry read every 2 s and a body limit of 1 MB. Every case talks
HTTP to it: the fields, equality with ``mrkd predict`` alone and batched, bad input, the
token, 400 requests at concurrency 16, a promotion and a rollback under load, replicas
SIGKILLed under load, and last SIGTERM (the record's last rows, no replica left behind).
The README's block runs separately, as written (``test_serve_readme.py``).
"""

from __future__ import annotations

import base64
import io
import os
import secrets
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import requests
from PIL import Image

from mrkd_core import cli
from mrkd_core.data.io import load_image
from mrkd_core.inference import Predictor
from mrkd_core.inspections import FLUSH_SECONDS, read_inspections
from mrkd_core.model_io import load_model_file, save_model
from mrkd_core.registry.reference import parse_reference, resolve
from mrkd_core.storage import ArtifactStore
from tests.datagen import save_16bit, save_rotated_jpeg
from tests.flows.netwatch import listeners, wide_listeners
from tests.flows.servers import BIN, clean_env, free_port, stop_process
from tests.tiny import tiny_category

pytestmark = pytest.mark.slow

TRAIN = ("--backbone", "resnet18", "--teacher-weights", "none", "--image-size", "64", "--batch-size", "4",
         "--num-workers", "0", "--no-progress", "--device", "cpu")
START_TIMEOUT = 300
REL = 1e-6  # scores equal to mrkd predict's (float32 rounding of passes of other sizes)


@dataclass
class Line:
    store: Path
    entry: str  # <store>/models/line/folder/obj_disc
    raw: Path  # v1's weights without calibration
    images: dict[str, Path]

    def uri(self, version: int) -> str:
        return resolve(parse_reference(f"{self.entry}@{version}")).uri


@dataclass
class Service:
    proc: subprocess.Popen
    url: str
    port: int
    token: str
    out: Path
    line: Line
    reference: dict[int, dict[str, float]] = field(default_factory=dict)  # version → image → in-process score

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def post(self, path: str, session=requests, token: bool = True, **kwargs) -> requests.Response:
        headers = {**(self.auth if token else {}), **kwargs.pop("headers", {})}
        return session.post(self.url + path, headers=headers, timeout=120, **kwargs)

    def get(self, path: str, token: bool = True) -> requests.Response:
        return requests.get(self.url + path, headers=self.auth if token else {}, timeout=30)

    def image(self, session, name: str, model: str = "obj_disc") -> requests.Response:
        return self.post(f"/predict/{model}", session, data=self.line.images[name].read_bytes(),
                         headers={"Content-Type": "application/octet-stream"})

    def printed(self) -> str:
        return self.out.read_text(errors="replace")


def _make_images(root: Path, folder: Path) -> dict[str, Path]:
    """Test images of the category, and the same picture as 16-bit PNG, RGBA PNG and rotated non-square JPEG."""
    folder.mkdir()
    test = root / "obj_disc" / "test"
    picks = {"good.png": test / "good" / "000.png", "defect.png": sorted((test).glob("[!g]*/000.png"))[0],
             "good2.png": test / "good" / "001.png"}
    images = {}
    for name, src in picks.items():
        images[name] = folder / name
        images[name].write_bytes(src.read_bytes())
    pic = load_image(picks["defect.png"], None)
    images["wide16.png"] = save_16bit(folder / "wide16.png", np.concatenate([pic, pic[:, :16]], axis=1))
    images["rgba.png"] = folder / "rgba.png"
    Image.fromarray(np.dstack([pic, np.full(pic.shape[:2], 180, np.uint8)])).save(images["rgba.png"])
    images["rotated.jpg"] = save_rotated_jpeg(folder / "rotated.jpg", pic[8:48])  # 64×40 upright
    return images


@pytest.fixture(scope="module")
def line(tmp_path_factory) -> Line:
    root = tiny_category(tmp_path_factory, "serve-data", n_train=6, n_test_good=3, n_test_defect=3, seed=5)
    base = tmp_path_factory.mktemp("serve")
    store = base / "store"
    started = time.monotonic()
    for run_id, epochs in (("v1", "1"), ("v2", "2")):
        assert cli.main(["-q", "train", str(root), "-o", str(store), "--run-id", run_id, "--register", "line",
                         *TRAIN, "--epochs", epochs]) == 0
    entry = f"{store}/models/line/folder/obj_disc"
    assert cli.main(["-q", "models", "promote", f"{entry}@1", "--reason", "the test starts on v1"]) == 0
    record = load_model_file(resolve(parse_reference(f"{entry}@1")).uri)
    save_model(record.model, record.config, ArtifactStore(base), "raw/model.pt", extra=record.extra)
    print(f"two versions trained and registered in {time.monotonic() - started:.1f} s")
    return Line(store, entry, base / "raw" / "model.pt", _make_images(root, base / "images"))


@pytest.fixture(scope="module")
def service(line, ray_head) -> Service:
    """``mrkd serve`` on the session's Ray head; its ready lines printed; stopped by PID at the end."""
    token = secrets.token_hex(16)
    (token_file := line.store.parent / "token").write_text(token + "\n")
    port = free_port()
    out, err = line.store.parent / "serve.out", line.store.parent / "serve.err"
    cmd = [str(BIN / "mrkd"), "serve", "line@champion", f"raw={line.raw}", "--store", str(line.store),
           "--port", str(port), "--follow-seconds", "2", "--max-body-mb", "1", "--token-file", str(token_file)]
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen(cmd, cwd=line.store.parent, env=clean_env(RAY_ADDRESS=ray_head[0].address),
                                stdout=stdout, stderr=stderr, start_new_session=True)
    svc = Service(proc, f"http://127.0.0.1:{port}", port, token, out, line)
    try:
        started = time.monotonic()
        while svc.printed().count("serving ") < 2:
            assert proc.poll() is None and time.monotonic() - started < START_TIMEOUT, \
                svc.printed() + err.read_text(errors="replace")[-4000:]
            time.sleep(0.5)
        print(f"mrkd serve ready in {time.monotonic() - started:.1f} s")
        for version in (1, 2):  # in-process references, one image per pass, as `mrkd predict` of one file
            predictor = Predictor.load(line.uri(version), device="cpu")
            svc.reference[version] = {n: next(predictor.predict([p])).score for n, p in line.images.items()}
        yield svc
    finally:
        stop_process(proc, grace=60)
        print(err.read_text(errors="replace")[-3000:])


def _replicas(head_pid: int, deployment: str) -> list[psutil.Process]:
    """The replica processes of ``deployment`` (Ray titles them ``ray::ServeReplica:<app>:<deployment>[.<method>]``)."""
    title = f"ray::ServeReplica:mrkd:{deployment}"
    return [p for p in psutil.Process(head_pid).children(recursive=True)
            if _name(p) == title or _name(p).startswith(title + ".")]


def _name(p: psutil.Process) -> str:
    try:
        return p.name()
    except psutil.Error:
        return ""


# --------------------------------------------------------------------------- what users get
def test_ready_lines_health_and_models(service):
    printed = service.printed()
    assert f"serving obj_disc v1 on {service.url}\n" in printed
    assert f"serving raw ({service.line.raw}) on {service.url}\n" in printed
    health = service.get("/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok", "models": {"obj_disc": 1, "raw": None}}
    models = {m["name"]: m for m in service.get("/models").json()["models"]}
    assert set(models) == {"obj_disc", "raw"}
    champion, raw = models["obj_disc"], models["raw"]
    assert champion["version"] == 1 and champion["follows"] == "champion" and champion["engine"] == "pytorch"
    assert champion["source"] == service.line.uri(1) and champion["reference"] == f"{service.line.entry}@champion"
    assert champion["calibrated"] and champion["calibration"]["image_threshold"] > 0
    assert "image threshold" in champion["calibration"]["summary"] and champion["since"]
    assert raw["version"] is None and raw["follows"] is None and not raw["calibrated"] and raw["calibration"] is None


def test_every_request_needs_the_token(service):
    for method, path in (("GET", "/healthz"), ("GET", "/models"), ("POST", "/predict/obj_disc")):
        for headers in ({}, {"Authorization": "Bearer not-the-token-0123456789"}, {"Authorization": service.token}):
            r = requests.request(method, service.url + path, headers=headers, data=b"x", timeout=30)
            assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer", (path, headers, r.text)
            assert "token" in r.json()["error"]


def test_listeners_are_loopback_and_replicas_refuse_a_client_without_rays_token(service, ray_head):
    import grpc

    found = listeners(ray_head[0].pid)
    proxy = {ip for name, ip, port in found if port == service.port}
    assert proxy == {"127.0.0.1"}, found  # the HTTP proxy: loopback by default
    assert wide_listeners(found) == [], f"listening beyond loopback: {wide_listeners(found)}"
    wide = [(n, port) for n, ip, port in found if n.startswith("ray::ServeReplica:mrkd:") and ip in ("::", "0.0.0.0")]
    assert wide, found  # Serve's replica gRPC servers, documented in docs/reliability.md
    for _, port in wide:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.RpcError) as refused:
                channel.unary_unary("/ray.serve.ASGIService/HandleRequest")(b"", timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, refused.value


def test_answers_equal_mrkd_predict_alone_and_batched(service, tmp_path):
    line = service.line
    folder = next(iter(line.images.values())).parent
    assert cli.main(["-q", "predict", f"{line.entry}@champion", str(folder), "-o", str(tmp_path / "out")]) == 0
    expected = {Path(r.path).name: r for r in pd.read_parquet(tmp_path / "out" / "predictions.parquet").itertuples()}
    assert set(expected) == set(line.images)

    def check(result: dict, name: str) -> None:
        want = expected[name]
        assert (result["width"], result["height"]) == (want.width, want.height), name
        assert result["score"] == pytest.approx(want.score, rel=REL, abs=0), name
        assert result["normalized_score"] == pytest.approx(want.normalized_score, rel=1e-5, abs=1e-6), name
        assert (result["verdict"], result["threshold"], result["reason"]) == (want.verdict, want.threshold, None)
        mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(result["mask_png"]))))
        written = np.asarray(Image.open(want.mask_path))
        assert mask.shape == written.shape == (want.height, want.width), name
        assert (mask != written).mean() <= 0.001, name  # only where float32 rounding crosses the threshold
        assert result["defect_area_fraction"] == pytest.approx((mask > 0).mean(), abs=1e-3)
        assert result["latency_ms"] > 0

    assert expected["rotated.jpg"].width == 64 and expected["rotated.jpg"].height == 40  # upright, not square
    assert expected["wide16.png"].width == 80
    with requests.Session() as s:
        for name, path in line.images.items():  # alone: the image is the body
            r = service.post("/predict/obj_disc?mask=png", s, data=path.read_bytes(),
                             headers={"Content-Type": "image/jpeg" if name.endswith(".jpg") else "image/png"})
            assert r.status_code == 200, r.text
            body = r.json()
            assert (body["model"], body["version"]) == ("obj_disc", 1)
            assert r.headers["X-Request-ID"] == body["request_id"]
            (result,) = body["results"]
            assert result["filename"] is None
            check(result, name)

    def batched(_):
        files = [("file", (n, p.read_bytes(), "image/png")) for n, p in line.images.items()]
        return service.post("/predict/obj_disc", params={"mask": "png"}, files=files)

    with ThreadPoolExecutor(6) as pool:  # six multipart requests at once: batched with each other
        answers = list(pool.map(batched, range(6)))
    for r in answers:
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [x["filename"] for x in results] == list(line.images)
        for result in results:
            check(result, result["filename"])


def test_an_uncalibrated_model_answers_scores_and_says_why_there_is_no_verdict(service):
    r = service.post("/predict/raw", files=[("file", ("defect.png", service.line.images["defect.png"].read_bytes()))])
    assert r.status_code == 200, r.text
    (result,) = r.json()["results"]
    assert r.json()["version"] is None
    assert result["verdict"] is None and result["normalized_score"] is None and result["threshold"] is None
    assert result["defect_area_fraction"] is None and "uncalibrated" in result["reason"]
    assert "mrkd calibrate" in result["reason"]
    assert result["score"] == pytest.approx(service.reference[1]["defect.png"], rel=REL, abs=0)  # v1's weights


def test_bad_input_is_the_clients_error_and_crashes_nothing(service):
    good = service.line.images["good.png"].read_bytes()
    cases = [
        ("empty body", dict(data=b""), 400, "body is empty"),
        ("not an image", dict(data=b"GIF? no, text"), 400, "cannot read image (UnidentifiedImageError"),
        ("truncated PNG", dict(data=good[: len(good) // 2]), 400, "cannot read image"),
        ("one bad part", dict(files=[("file", ("a.png", good)), ("file", ("b.png", b"junk"))]), 400,
         "b.png: cannot read image"),
        ("no file part", dict(files=[("other", ("a.png", good))]), 400, "'other'"),
        ("over --max-body-mb 1", dict(data=b"\0" * (1_100_000)), 413, "over the service's limit of 1 MB"),
    ]
    for what, kwargs, status, says in cases:
        r = service.post("/predict/obj_disc", **kwargs)
        assert r.status_code == status and says in r.json()["error"], (what, r.status_code, r.text)
    r = service.post("/predict/nope", data=good)
    assert r.status_code == 404 and r.json()["served"] == ["obj_disc", "raw"]
    r = service.post("/predict", data=good)  # two models served: the name is needed
    assert r.status_code == 404 and r.json()["served"] == ["obj_disc", "raw"]
    assert service.post("/predict/obj_disc?mask=jpeg", data=good).status_code == 400
    assert requests.get(service.url + "/predict/obj_disc", headers=service.auth, timeout=30).status_code == 405
    assert service.get("/nothing-here").status_code == 404
    assert service.get("/healthz").status_code == 200  # still answering, with the replicas it had
    assert service.post("/predict/obj_disc", data=good).status_code == 200


# --------------------------------------------------------------------------- load, swap, kills
def _stream(service: Service, stop: threading.Event, answers: list, failures: list, names: list[str]) -> None:
    """One client sending one image after another until ``stop``: (time, version, request id, image, score)."""
    with requests.Session() as s:
        i = 0
        while not stop.is_set():
            name = names[i % len(names)]
            i += 1
            try:
                r = service.image(s, name)
            except requests.RequestException as exc:
                failures.append((time.time(), repr(exc)))
                continue
            if r.status_code != 200:
                failures.append((time.time(), r.status_code, r.text[:200]))
                continue
            body = r.json()
            answers.append((time.time(), body["version"], body["request_id"], name, body["results"][0]["score"]))


def _recorded(service: Service, ids: set[str], timeout: float = 4 * FLUSH_SECONDS) -> pd.DataFrame:
    """The record's rows of the model, once every id of ``ids`` is in it (or the timeout passed)."""
    deadline = time.monotonic() + timeout
    while True:
        df = read_inspections(ArtifactStore(service.line.store), model="obj_disc")
        if ids <= set(df.request_id) or time.monotonic() > deadline:
            return df
        time.sleep(1)


def test_400_requests_at_concurrency_16_all_answered_with_the_in_process_scores(service):
    names = ["good.png", "defect.png", "good2.png", "rgba.png", "wide16.png", "rotated.jpg"]
    sessions = threading.local()

    def one(i: int):
        sessions.s = getattr(sessions, "s", None) or requests.Session()
        return names[i % len(names)], service.image(sessions.s, names[i % len(names)])

    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(400)))
    seconds = time.perf_counter() - started
    bad = [(n, r.status_code, r.text[:200]) for n, r in results if r.status_code != 200]
    assert bad == []
    for name, r in results:
        body = r.json()
        assert body["version"] == 1
        assert body["results"][0]["score"] == pytest.approx(service.reference[1][name], rel=REL, abs=0), name
    print(f"400 requests at concurrency 16: {400 / seconds:.1f} requests/s")
    ids = {r.json()["request_id"] for _, r in results}
    df = _recorded(service, ids)
    mine = df[df.request_id.isin(ids)]
    assert len(mine) == 400 and mine.request_id.is_unique and set(mine.model_version) == {1}


def test_a_promotion_under_load_switches_every_stream_once_and_fails_nothing(service):
    line = service.line
    stop, failures = threading.Event(), []
    streams: list[list] = [[] for _ in range(6)]
    names = ["good.png", "defect.png"]
    threads = [threading.Thread(target=_stream, args=(service, stop, s, failures, names)) for s in streams]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 120
        while min(len(s) for s in streams) < 5 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert cli.main(["-q", "models", "promote", f"{line.entry}@2", "--reason", "under load"]) == 0
        promoted = time.time()
        while not all(sum(a[1] == 2 for a in s) >= 5 for s in streams) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    assert failures == []
    first_v2 = min(a[0] for s in streams for a in s if a[1] == 2)
    print(f"v2 answered {first_v2 - promoted:.1f} s after the promotion (--follow-seconds 2)")
    for s in streams:
        versions = [a[1] for a in s]
        assert versions == sorted(versions) and set(versions) == {1, 2}, versions  # one switch, never back
        for _, version, _, name, score in s:  # each answer names the version that made it
            assert score == pytest.approx(service.reference[version][name], rel=REL, abs=0), (version, name)
    deadline = time.monotonic() + 30
    while "serving obj_disc v2 on" not in service.printed() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert f"serving obj_disc v2 on {service.url} (was v1)" in service.printed()

    # a rollback is followed the same way
    assert cli.main(["-q", "models", "rollback", line.entry, "--reason", "back"]) == 0
    with requests.Session() as s:
        deadline = time.monotonic() + 60
        while (r := service.image(s, "good.png")).json()["version"] != 1:
            assert r.status_code == 200 and time.monotonic() < deadline
            time.sleep(0.5)
    assert service.get("/healthz").json()["models"]["obj_disc"] == 1

    answered = {a[2]: a[1] for s in streams for a in s}
    df = _recorded(service, set(answered))
    mine = df[df.request_id.isin(answered)]
    assert len(mine) == len(answered) and mine.request_id.is_unique  # every request once
    assert dict(zip(mine.request_id, mine.model_version)) == answered  # with the version that answered it


def test_killed_replicas_come_back_and_the_record_loses_at_most_the_flush_window(service, ray_head):
    """SIGKILL the model's replica mid-load: Serve starts another and the gateway sends the images
    again (nothing fails). SIGKILL the gateway mid-load: requests in flight fail, Serve restarts it,
    and the record loses at most the answers of the flush window before the kill (counted)."""
    head = ray_head[0].pid
    stop, answers, failures = threading.Event(), [], []
    threads = [threading.Thread(target=_stream, args=(service, stop, answers, failures, ["defect.png", "good.png"]))
               for _ in range(4)]
    for t in threads:
        t.start()
    try:
        def answered_after(t: float, n: int, timeout: float = 180) -> None:
            deadline = time.monotonic() + timeout
            while sum(a[0] > t for a in answers) < n:
                assert time.monotonic() < deadline, (failures[-3:], len(answers))
                time.sleep(0.2)

        answered_after(0, 20)
        (scorer,) = _replicas(head, "model-obj_disc")  # one replica (--replicas 1)
        os.kill(scorer.pid, signal.SIGKILL)
        killed_scorer = time.time()
        answered_after(killed_scorer, 20)
        assert [p.pid for p in _replicas(head, "model-obj_disc")] != [scorer.pid]
        assert failures == [], failures  # the gateway sent the images of the lost replica again

        (gateway,) = _replicas(head, "gateway")
        os.kill(gateway.pid, signal.SIGKILL)
        killed_gateway = time.time()
        answered_after(killed_gateway, 20)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    print(f"gateway killed: {len(failures)} requests failed while Serve restarted it")
    # Answers the killed gateway gave since its last flush are lost: at most FLUSH_SECONDS of them
    # (their clients may read them a moment after the kill, while the proxy passes them on).
    ok = {a[2]: a[0] for a in answers}
    kept = {i for i, t in ok.items() if t > killed_gateway + 2 or t < killed_gateway - FLUSH_SECONDS - 1}
    df = _recorded(service, kept)
    lost = {i: t for i, t in ok.items() if i not in set(df.request_id)}
    window = [i for i, t in ok.items() if killed_gateway - FLUSH_SECONDS - 1 <= t <= killed_gateway + 2]
    print(f"record: {len(lost)} of {len(ok)} answered requests lost with the gateway; {len(window)} were answered "
          f"within the {FLUSH_SECONDS:g} s flush window of the kill")
    assert all(killed_gateway - FLUSH_SECONDS - 1 <= t <= killed_gateway + 2 for t in lost.values()), \
        sorted(t - killed_gateway for t in lost.values())
    assert not df.duplicated(["request_id", "image_index"]).any()


def test_sigterm_writes_the_last_answers_and_leaves_no_replica(service, ray_head):
    with requests.Session() as s:
        ids = {service.image(s, "good.png").json()["request_id"] for _ in range(5)}
    service.proc.send_signal(signal.SIGTERM)
    assert service.proc.wait(timeout=120) == 0
    assert "stopped" in (service.out.parent / "serve.err").read_text(errors="replace")
    assert ids <= set(read_inspections(ArtifactStore(service.line.store)).request_id)
    left = [_name(p) for p in psutil.Process(ray_head[0].pid).children(recursive=True)
            if _name(p).startswith(("ray::ServeReplica", "ray::ProxyActor", "ray::ServeController"))]
    assert left == []
    with pytest.raises(requests.ConnectionError):
        requests.get(service.url + "/healthz", timeout=5)
