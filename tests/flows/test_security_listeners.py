"""What a run opens to the network: every listener on 127.0.0.1, and Ray asks every client for the token.

The long-lived local head (``python -m flows.ray_head start``) is started as users start it;
every TCP listener of its process tree (GCS, raylet, dashboard, agents, client server) is
listed with psutil and must be on a loopback address or be named in docs/reliability.md's
"Ports Ray cannot bind to loopback"; its GCS must refuse a gRPC client without the token and
answer one with it, and so must its dashboard's API. A flow run's own Ray gets the same
checks while it trains: the run that ``test_deployments.py`` starts through ``prefect
deployment run`` is watched (``tests.flows.netwatch.ListenerWatch``), so one run serves both.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import pytest

from tests.flows.netwatch import gcs_answers, listeners, read_session_token, wide_listeners

pytestmark = pytest.mark.slow


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
