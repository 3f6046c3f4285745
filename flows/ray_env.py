"""What a Ray worker needs from its driver's environment: the code's location, the store's settings, credentials.

Ray workers inherit the environment of the process that started Ray (the raylet), not the
driver's: a worker on the long-lived local head or on a cluster sees neither the driver's
``PYTHONPATH`` (a checkout that is not pip-installed) nor its S3 endpoint and credentials.
Whatever starts work on Ray (a flow's trainings, the service's replicas) hands
:func:`forwarded_env` to it in ``runtime_env={"env_vars": ...}``. Values are never logged.
"""

from __future__ import annotations

import os
from pathlib import Path

from mrkd_core.backbones import CATALOG
from mrkd_core.data.catalog import override_variables
from mrkd_core.model.weights import ENV_OFFLINE, ENV_STAGED, weights_env_vars

# Variables forwarded to Ray workers when set in the driver (the teacher weights' staged
# folder, offline mode and each catalogued backbone's mirror among them); with every
# catalogued dataset's download overrides (MRKD_<NAME>_URL, MRKD_<NAME>_SHA256), see forwarded_env.
FORWARDED_ENV = (
    "MRKD_STORE", "MRKD_DATA_ROOT", "MRKD_S3_ENDPOINT_URL", ENV_STAGED, ENV_OFFLINE, *weights_env_vars(CATALOG),
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
    "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL",
    "PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_API_AUTH_STRING",
    "TORCH_HOME", "MRKD_LOG_LEVEL",
)
# Settings of the flows package that a worker must share with its driver.
SHARED_SETTINGS = ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED", "PREFECT_SERVER_ANALYTICS_ENABLED",
                   "PREFECT_LOGGING_EXTRA_LOGGERS", "PREFECT_LOGGING_LEVEL")

# The folder that holds the `flows` and `mrkd_core` packages (a checkout, or site-packages).
CODE_ROOT = str(Path(__file__).resolve().parent.parent)


def forwarded_env() -> dict[str, str]:
    """The driver's variables of :data:`FORWARDED_ENV` and :data:`SHARED_SETTINGS` that are set,
    and a ``PYTHONPATH`` that starts with :data:`CODE_ROOT`."""
    env = {k: os.environ[k] for k in (*FORWARDED_ENV, *override_variables()) if os.environ.get(k)}
    # Workers import flows.* by name; from a checkout that is not pip-installed the code
    # is found only through PYTHONPATH (in the image it is installed, and this is a no-op).
    paths = [CODE_ROOT, *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != CODE_ROOT]]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    for k in SHARED_SETTINGS:
        if os.environ.get(k):
            env[k] = os.environ[k]
    return env
