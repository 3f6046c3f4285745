"""``python -m flows.worker`` gives SIGINT back to Python when it was inherited ignored (no server).

That a worker started as deployments/README.md says stops on one SIGTERM, on a real Prefect
server, is ``test_deployments.py::test_on_demand_through_prefect_deploy_and_a_process_worker``.
"""

from __future__ import annotations

import signal
import subprocess

from tests.flows.servers import PYTHON, ROOT, clean_env

PROBE = ("import signal; from flows.worker import restore_sigint; "
         "print(restore_sigint(), signal.getsignal(signal.SIGINT) is signal.default_int_handler)")


def _probe(ignore_sigint: bool) -> str:
    def setup() -> None:
        # SIG_IGN: what a background job of a shell without job control inherits. SIG_DFL set
        # explicitly, since the suite itself may be such a job (`make test &`) and would pass it on.
        signal.signal(signal.SIGINT, signal.SIG_IGN if ignore_sigint else signal.SIG_DFL)

    proc = subprocess.run([PYTHON, "-c", PROBE], cwd=ROOT, env=clean_env(), capture_output=True, text=True,
                          timeout=120, preexec_fn=setup)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_sigint_ignored_by_inheritance_gets_pythons_handler_back():
    assert _probe(ignore_sigint=True) == "True True"
    assert _probe(ignore_sigint=False) == "False True"  # a handler of its own is left alone
