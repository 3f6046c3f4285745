"""Prefect 3 flows that orchestrate :mod:`mrkd_core` (which knows nothing of Prefect or Ray).

- ``flows.download``        datasets into the data root, once (idempotent)
- ``flows.train_evaluate``  the per-task Prefect task, and a flow for one category
- ``flows.benchmark``       ``mrkd-benchmark``: spec → data → fan-out (Ray) → tables/report
- ``flows.nightly``         the deployments' names, schedule and parameters; ``serve`` for one machine
- ``flows.ray_runner``      task runners, GPU requests and the environment Ray workers get
- ``flows.settings``        store / data root / run id resolution shared by the flows

Importing the package sets offline-safe defaults for local runs. ``setdefault`` keeps
whatever an operator set explicitly (e.g. ``RAY_AUTH_MODE=token`` on a cluster):

- ``RAY_AUTH_MODE=disabled``: a local ``ray.init()`` otherwise switches token auth on and
  writes ``~/.ray/auth_token``, after which other local Ray heads answer 401.
- ``PREFECT_LOGGING_EXTRA_LOGGERS=mrkd_core``: library log lines reach the flow run's log.
- ``RAY_USAGE_STATS_ENABLED=0`` and ``PREFECT_SERVER_ANALYTICS_ENABLED=false``: machines
  without internet would otherwise wait on telemetry endpoints.
"""

from __future__ import annotations

import os

_LOCAL_DEFAULTS = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # The library's own log lines (epochs, losses, skips) appear in the Prefect UI too.
    "PREFECT_LOGGING_EXTRA_LOGGERS": "mrkd_core",
    # ... and outside a flow run (the library called directly) they stay local, silently.
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}

for _name, _value in _LOCAL_DEFAULTS.items():
    os.environ.setdefault(_name, _value)
