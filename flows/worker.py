"""``python -m flows.worker``: ``prefect worker start`` that stops on one SIGTERM however it was started.

::

    python -m flows.worker --pool mrkd-process --type process > prefect-worker.log 2>&1 &
    kill %1          # or kill <its PID>: one SIGTERM, and it stops gracefully within seconds

The arguments are those of ``prefect worker start``, which runs in this process (same PID:
``$!``, a pidfile), with one difference. Prefect's worker stops on SIGINT: its SIGTERM
handler sends the process a SIGINT, whose handler restores the handler SIGINT had before
and sends it again, which raises ``KeyboardInterrupt``. A command started in the
background of a shell without job control (a script, ``nohup … &``, the start commands
of ``ray up``) inherits SIGINT *ignored*: the restored handler is "ignore", and the
worker never stops. Measured with Prefect 3.9.1: a worker started so was still running
45 s after its SIGTERM (60-95 s in the issue that found it, #25), and only a second
SIGTERM, which Prefect turns into a SIGKILL, ended it, without its graceful shutdown.
Here SIGINT gets Python's own handler back before Prefect installs its handlers, so one
SIGTERM is Prefect's graceful shutdown wherever the worker was started.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

import flows  # noqa: F401 - offline-safe environment defaults


def restore_sigint() -> bool:
    """Give SIGINT Python's handler (``KeyboardInterrupt``) if it was inherited ignored; True if it was."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        return True
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """``prefect worker start <argv>`` in this process, after :func:`restore_sigint`; its exit status."""
    from prefect.cli import app

    args = list(sys.argv[1:] if argv is None else argv)
    restore_sigint()
    sys.argv = ["prefect", "worker", "start", *args]  # what the `prefect` command hands its app
    app()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
