"""The service's settings: one frozen record, whichever door started it (``mrkd serve``, a RayService).

Light to import (``mrkd --help`` reads the defaults from here); ``flows.serve.settings``
checks and resolves what a user gave into a :class:`ServeOptions`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mrkd_core.inspections import NO_RECORD

ENGINES = ("torch", "onnxruntime", "openvino")  # --engine (the backends report pytorch/onnxruntime/openvino)
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULTS: dict[str, Any] = {"max_batch_size": 16, "batch_wait_ms": 5.0, "max_body_mb": 64.0, "follow_seconds": 60.0,
                            "device": "auto", "replicas": "1", "cpus_per_replica": 1.0}
STORE_ENV = "MRKD_STORE"


@dataclass(frozen=True)
class ServeOptions:
    """Everything the application needs.

    ``replicas`` None means autoscaling between 1 and ``max_replicas`` (0: not set yet). ``token_digest``: the
    sha256 of the token (the token itself is never passed around); None, and no
    ``MRKD_SERVE_TOKEN`` in the gateway's environment, means no token. ``record``: the store
    of the ``inspections`` table, None for no record.
    """

    models: tuple[Any, ...]  # flows.serve.models.ServedModel
    max_batch_size: int = DEFAULTS["max_batch_size"]
    batch_wait_ms: float = DEFAULTS["batch_wait_ms"]
    max_body_mb: float = DEFAULTS["max_body_mb"]
    follow_seconds: float = DEFAULTS["follow_seconds"]
    record: str | None = None
    token_digest: str | None = None
    device: str = DEFAULTS["device"]
    replicas: int | None = 1
    max_replicas: int = 0
    cpus_per_replica: float = DEFAULTS["cpus_per_replica"]
    gpus_per_replica: float = 0.0

    @property
    def load_calls(self) -> int:
        """How many ``load`` calls reach (most likely) every replica of a scorer: one per replica."""
        return max(1, self.replicas or self.max_replicas)


__all__ = ["DEFAULTS", "DEFAULT_HOST", "DEFAULT_PORT", "ENGINES", "NO_RECORD", "STORE_ENV", "ServeOptions"]
