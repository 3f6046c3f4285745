"""Where a run reads and writes, and what it is called: resolved once, in the driver.

The artifact store, the data root and the spec search path come from the environment
(``MRKD_STORE``, ``MRKD_DATA_ROOT``, ``MRKD_SPEC_PATH``): this module is where the flows
read it (the library never does), never from flow parameters, so that credentials and
endpoints stay out of Prefect's database and UI. The driver resolves them to absolute
locations before the fan-out, because Ray workers do not share the driver's working
directory: a relative ``./artifacts`` would point somewhere else on every worker. Run ids
follow the library's one rule (``mrkd_core.layout.resolve_run_id``, re-exported here).
"""

from __future__ import annotations

import os
from pathlib import Path

from mrkd_core.layout import resolve_run_id  # the run ids of the CLI and the flows: one rule
from mrkd_core.specs import ENV_SPEC_PATH, parse_search_path
from mrkd_core.storage import DEFAULT_ROOT, ENV_ROOT, ArtifactStore

__all__ = ["ENV_DATA_ROOT", "REMOTE_DATA_ROOT", "SPEC_DIR", "data_root", "open_store", "resolve_run_id", "spec_path"]

ENV_DATA_ROOT = "MRKD_DATA_ROOT"
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
