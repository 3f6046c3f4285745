"""Where a run reads and writes, and what it is called: resolved once, in the driver.

The artifact store, the data root and the spec search path come from the environment
(``MRKD_STORE``, ``MRKD_DATA_ROOT``, ``MRKD_SPEC_PATH``): this module is where the flows
read it (the library never does), never from flow parameters, so that credentials and
endpoints stay out of Prefect's database and UI. The driver resolves them to absolute
locations before the fan-out, because Ray workers do not share the driver's working
directory: a relative ``./artifacts`` would point somewhere else on every worker. Run ids
follow the library's one rule (``mrkd_core.layout.resolve_run_id``, re-exported here).

The Prefect API a command-line run talks to is resolved here too (:func:`start_prefect_api`):
``PREFECT_API_URL``, else Prefect's temporary server, started before the flow so that a
server that does not come up is one line saying what to do, not a traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from mrkd_core.errors import MRKDError
from mrkd_core.layout import resolve_run_id  # the run ids of the CLI and the flows: one rule
from mrkd_core.specs import ENV_SPEC_PATH, parse_search_path
from mrkd_core.storage import DEFAULT_ROOT, ENV_ROOT, ArtifactStore

__all__ = ["ENV_DATA_ROOT", "ENV_PREFECT_STARTUP", "PrefectUnavailable", "REMOTE_DATA_ROOT", "SPEC_DIR", "data_root",
           "open_store", "resolve_run_id", "run_flow_command", "spec_path", "start_prefect_api"]

ENV_DATA_ROOT = "MRKD_DATA_ROOT"
# Prefect 3.9's setting: how long a process waits for its temporary API server (default
# 20 s there, 120 s by flows/__init__.py's defaults: a busy laptop took longer than 20 s).
ENV_PREFECT_STARTUP = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
REMOTE_DATA_ROOT = "~/.cache/mrkd/datasets"

# The flows' own experiment specs (YAML under version control).
SPEC_DIR = Path(__file__).resolve().parent / "specs"


def open_store() -> ArtifactStore:
    """The artifact store named by ``MRKD_STORE`` (default ``./artifacts``)."""
    return ArtifactStore(os.environ.get(ENV_ROOT) or DEFAULT_ROOT)


def spec_path() -> list[Path]:
    """Where specs are found by name: the folders of ``MRKD_SPEC_PATH`` first, then ``flows/specs/``."""
    return [*parse_search_path(os.environ.get(ENV_SPEC_PATH)), SPEC_DIR]


def data_root(store: ArtifactStore) -> str:
    """``MRKD_DATA_ROOT``, else ``<store>/datasets`` for a local store, else the user cache.

    Datasets are extracted to a local disk even when results go to S3: training reads
    every image each epoch, and object storage is the wrong place for that.
    """
    explicit = os.environ.get(ENV_DATA_ROOT)
    if explicit:
        return os.path.abspath(os.path.expanduser(explicit))
    if store.is_local:
        return os.path.join(store.root, "datasets")
    return os.path.abspath(os.path.expanduser(REMOTE_DATA_ROOT))


class PrefectUnavailable(MRKDError):
    """No Prefect API to run a flow against: the temporary server did not start, or none is configured."""


def start_prefect_api() -> str | None:
    """Make sure this process has a Prefect API before a flow runs; returns its URL (None: configured).

    With ``PREFECT_API_URL`` set nothing happens (the server named there is used). Without
    it, Prefect would start its temporary server on the flow's first call and, on a busy
    machine, fail there with a traceback (``Timed out while attempting to connect to
    ephemeral Prefect API server``); started here, the same server is the one the flow
    then uses, and a failure is a :class:`PrefectUnavailable` naming the fix.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value():
        return None
    hint = ("start a Prefect server once (`prefect server start --host 127.0.0.1`) and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api")
    if not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        raise PrefectUnavailable(f"no Prefect API: PREFECT_API_URL is not set and Prefect's temporary server is "
                                 f"switched off (PREFECT_SERVER_EPHEMERAL_ENABLED) — {hint}")
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    server = SubprocessASGIServer()
    try:
        server.start()
    except RuntimeError as exc:
        server.stop()
        waited = PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
        cause = str(exc).split(". ", 1)[0].rstrip(".")
        raise PrefectUnavailable(f"Prefect's temporary API server did not start within {waited} s ({cause}; a busy "
                                 f"machine starts it slowly): run the command again, allow it longer with "
                                 f"{ENV_PREFECT_STARTUP}=300, or {hint}") from None
    return server.api_url


def run_flow_command(prog: str, run: Callable[[], int], check: Callable[[], object] | None = None) -> int:
    """What every ``python -m flows.…`` command does around its flow; returns its exit status.

    ``check`` (e.g. loading the spec) runs first, so that bad input fails before any server
    starts; then :func:`start_prefect_api`; then ``run``. An ``MRKDError`` from any of them is
    one line on stderr (``<prog>: error: …``) and exit status 2, as in the ``mrkd`` command.
    """
    try:
        if check is not None:
            check()
        start_prefect_api()
        return run()
    except MRKDError as exc:
        sys.stderr.write(f"{prog}: error: {exc}\n")
        return 2
