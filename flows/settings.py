"""Where a run reads and writes, and what it is called: resolved once, in the driver.

The artifact store and the data root come from the environment (``MRKD_STORE``,
``MRKD_DATA_ROOT``), never from flow parameters, so that credentials and endpoints stay
out of Prefect's database and UI. The driver resolves them to absolute locations before
the fan-out, because Ray workers do not share the driver's working directory: a relative
``./artifacts`` would point somewhere else on every worker.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

from mrkd_core.errors import ConfigError
from mrkd_core.partitioned import check_run_id
from mrkd_core.storage import ArtifactStore

ENV_DATA_ROOT = "MRKD_DATA_ROOT"
REMOTE_DATA_ROOT = "~/.cache/mrkd/datasets"


def open_store() -> ArtifactStore:
    """The artifact store named by ``MRKD_STORE`` (default ``./artifacts``)."""
    return ArtifactStore()


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


def resolve_run_id(run_id: str | None, spec_name: str, when: datetime | None = None) -> str:
    """``<spec>-<UTC yyyymmdd-HHMMSS>`` by default; ``{date}``, ``{time}``, ``{spec}`` are filled in.

    Placeholders let a deployment keep a static parameter (``nightly-{date}``) while each
    scheduled run gets its own id; ``when`` is the run's scheduled time so that a late or
    retried nightly keeps the date it was scheduled for.
    """
    when = (when or datetime.now(timezone.utc)).astimezone(timezone.utc)
    if not run_id:
        run_id = "{spec}-{date}-{time}"
    try:
        resolved = run_id.format(spec=spec_name, date=when.strftime("%Y%m%d"), time=when.strftime("%H%M%S"))
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"run id {run_id!r}: unknown placeholder ({exc}); use {{date}}, {{time}}, {{spec}}") from None
    # Any text that can name a folder (digits only, dates, spaces, Unicode): partition
    # values are percent-encoded and read back as strings (mrkd_core.partitioned).
    return check_run_id(resolved)
