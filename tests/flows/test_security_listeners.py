"""What a run opens to the network: every listener on 127.0.0.1, and Ray asks every client for the token.

The long-lived local head (``python -m flows.ray_head start``) is started as users start it;
every TCP listener of its process tree (GCS, raylet, dashboard, agents, client server) is
listed with psutil and must be on a loopback address or be named in docs/reliability.md's
"Ports Ray cannot bind to loopback"; its GCS must refuse a gRPC client without the token and
answer one with it, and so must its dashboard's API. A flow run's own Ray gets the same
checks while it trains, in the deployment run of ``test_deployments.py`` (one run serves
both tests) and here through the CLI.
"""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request

import pytest
import yaml

from tests.flows.netwatch import ListenerWatch, gcs_answers, listeners, read_session_token, wide_listeners
from tests.flows.servers import BIN, clean_env, stop_process

pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = 240


def _spec(tmp_path) -> str:
    spec = {
        "name": "listeners",
        "datasets": [{"name": "folder", "root": "generated-listeners", "categories": ["obj_disc"],
                      "generate": {"kind": "synthetic_mvtec", "categories": ["obj_disc"], "n_train": 8,
                                   "n_test_good": 2, "n_test_defect": 2, "size": 32, "seed": 0}}],
        "base": {"backbone": "resnet18", "teacher_weights": "none", "image_size": 32, "epochs": 4,
                 "batch_size": 4, "num_workers": 0, "progress": False},
        "variants": {"mrkd": {}},
    }
    path = tmp_path / "listeners.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_a_cli_runs_listeners_are_loopback_and_its_gcs_refuses_clients_without_the_token(prefect_api, tmp_path):
    env = clean_env(PREFECT_API_URL=prefect_api, MRKD_DATA_ROOT=str(tmp_path / "data"))
    log = open(tmp_path / "run.log", "wb")
    run = subprocess.Popen([str(BIN / "python"), "-m", "flows.benchmark", "--spec", _spec(tmp_path), "--store",
                            str(tmp_path / "store"), "--run-id", "listeners"],
                           cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    watch = ListenerWatch(lambda: run.pid)
    watch.start()
    try:
        code = run.wait(timeout=RUN_TIMEOUT_S)
    finally:
        watch.stop.set()
        watch.join(timeout=30)
        stop_process(run)
        log.close()
    assert code == 0, (tmp_path / "run.log").read_text(errors="replace")[-3000:]
    watch.check()


def test_the_local_head_is_loopback_only_and_asks_every_client_for_the_token(ray_head):
    from flows.local_ray import auth_headers

    head, _, printed = ray_head
    assert f"export RAY_ADDRESS={head.address}" in printed and head.dashboard_url in printed
    deadline = time.monotonic() + 30  # agents come up just after the dashboard answers
    while True:
        found = listeners(head.pid)
        if {"gcs_server", "raylet"} <= {n for n, _, _ in found} and len(found) >= 8 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert {"gcs_server", "raylet"} <= {n for n, _, _ in found}, found
    assert wide_listeners(found) == [], f"listening beyond loopback: {wide_listeners(found)}"
    refused = gcs_answers(head.address, None)
    assert refused[0] is False and "UNAUTHENTICATED" in refused[1], refused
    assert gcs_answers(head.address, read_session_token()) == (True, "answered")
    # The dashboard's API too: 401 without the token, the version with it.
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(f"{head.dashboard_url}/api/version", timeout=10)
    assert denied.value.code == 401
    request = urllib.request.Request(f"{head.dashboard_url}/api/version", headers=auth_headers())
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200 and b"ray_version" in resp.read()
