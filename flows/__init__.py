"""Prefect 3 flows that orchestrate :mod:`mrkd_core` (which knows nothing of Prefect or Ray).

- ``flows.download``        datasets into the data root, once (idempotent)
- ``flows.train_evaluate``  the per-task Prefect tasks (train, record a complete key), progress
- ``flows.benchmark``       ``mrkd-benchmark``: spec → data → fan-out (Ray) → tables/report
- ``flows.nightly``         ``serve`` of the deployments that ``deployments/prefect.yaml`` declares
- ``flows.ray_runner``      the :class:`~flows.ray_runner.Runner` of a flow run: task runner, GPU
                            requests, the environment Ray workers get
- ``flows.ray_task_runner`` prefect-ray's task runner as the fan-out uses it
- ``flows.attempts``        every attempt of a training in its task run: Ray re-runs, deaths
- ``flows.worker``          ``python -m flows.worker``: ``prefect worker start`` that stops on one SIGTERM
- ``flows.local_ray``       Ray on one machine: loopback only, one token per machine
- ``flows.ray_head``        the long-lived local Ray head (``python -m flows.ray_head start``)
- ``flows.settings``        store / data root / run id resolution shared by the flows

Deployments load the flow by module path (``flows.benchmark.benchmark``), never by file
path: a file loaded by path becomes a top-level module (``benchmark``) that Ray workers
cannot import, and every training then fails to unpickle.

Importing the package sets defaults for local runs. ``setdefault`` keeps whatever an
operator set explicitly:

- ``RAY_AUTH_MODE=token``: every Ray this package starts or joins asks for the machine's
  token (``flows.local_ray``); Ray would otherwise leave its ports open to anyone.
- ``PREFECT_LOGGING_EXTRA_LOGGERS=mrkd_core``: the library's log lines (each epoch's loss,
  images/s and ETA; done, skip, report) reach the task run's log in the Prefect API, from
  Ray workers too; and the ``mrkd_core`` logger is set to ``MRKD_LOG_LEVEL`` (INFO), since
  Prefect leaves extra loggers at the root's WARNING, which dropped every one of them.
- ``RAY_USAGE_STATS_ENABLED=0`` and ``PREFECT_SERVER_ANALYTICS_ENABLED=false``: machines
  without internet would otherwise wait on telemetry endpoints.
- ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120``: a run without ``PREFECT_API_URL``
  (``make demo``) starts Prefect's temporary API server and waits this long for it; Prefect's
  20 s were missed on a machine with a load average of 6-9. Should it still not come up,
  ``flows.settings.start_prefect_api`` says so in one line, with what to do.

Prefect reads its settings when it is first imported: these apply to every process that
imports ``flows`` (or any of its modules) before Prefect, as ``python -m flows.…`` does.
"""

from __future__ import annotations

import logging
import os

ENV_LOG_LEVEL = "MRKD_LOG_LEVEL"

_LOCAL_DEFAULTS = {
    "RAY_AUTH_MODE": "token",
    "RAY_USAGE_STATS_ENABLED": "0",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # The library's own log lines (epochs, losses, skips) appear in the Prefect UI too.
    "PREFECT_LOGGING_EXTRA_LOGGERS": "mrkd_core",
    # ... and outside a flow run (the library called directly) they stay local, silently.
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    # Prefect's temporary API server gets 120 s to start instead of 20 (busy machines).
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}

for _name, _value in _LOCAL_DEFAULTS.items():
    os.environ.setdefault(_name, _value)

_library = logging.getLogger("mrkd_core")
if _library.level == logging.NOTSET:
    _library.setLevel(os.environ.get(ENV_LOG_LEVEL, "INFO").upper())
