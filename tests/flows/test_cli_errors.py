"""`python -m flows.benchmark`: a bad spec is one line on stderr and exit code 2, before any server starts;
Prefect's temporary server gets a generous start-up time, and one line says what to do when it still fails."""

import contextlib
import subprocess
import sys
import uuid

import psutil

from flows.benchmark import main
from flows.settings import ENV_PREFECT_STARTUP
from tests.flows.servers import ROOT, clean_env


def test_unknown_spec_is_one_line(capsys):
    assert main(["--spec", "no-such-spec"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no-such-spec" in err and "smoke" in err


def test_bad_narrowing_is_one_line(capsys):
    assert main(["--spec", "smoke", "--image-size", "100"]) == 2
    err = capsys.readouterr().err.strip()
    assert "image_size" in err and len(err.splitlines()) == 1


# --------------------------------------------------------------------------- Prefect's temporary server
def _fresh_env(tmp_path, **extra: str) -> dict[str, str]:
    """A user's shell: no Prefect server configured, no start-up timeout set, a fresh PREFECT_HOME."""
    env = {k: v for k, v in clean_env(PREFECT_HOME=str(tmp_path / "prefect-home")).items()
           if k != ENV_PREFECT_STARTUP}
    env.update(extra)
    return env


def test_the_generous_prefect_startup_timeout_reaches_a_fresh_process_and_an_operators_value_wins(tmp_path):
    """`python -m flows.…` imports the package `flows` first, then Prefect: Prefect's own 20 s become 120 s."""
    probe = ("import flows, prefect.settings as s; "
             "print(s.PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())")
    for extra, expected in (({}, "120"), ({ENV_PREFECT_STARTUP: "45"}, "45")):
        proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=_fresh_env(tmp_path, **extra),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.strip().splitlines()[-1] == expected


def test_a_prefect_server_that_does_not_start_is_one_line_saying_what_to_do(tmp_path):
    """What `make demo` printed on a loaded machine, forced here with a start-up timeout of 0 s."""
    mark = uuid.uuid4().hex
    env = _fresh_env(tmp_path, **{ENV_PREFECT_STARTUP: "0", "MRKD_TEST_MARK": mark})
    proc = subprocess.run([sys.executable, "-m", "flows.benchmark", "--spec", "smoke", "--runner", "local",
                           "--store", str(tmp_path / "store")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("mrkd-benchmark: error:")]
    assert "temporary API server did not start within 0 s" in line
    assert f"{ENV_PREFECT_STARTUP}=" in line and "PREFECT_API_URL" in line and "prefect server start" in line
    assert not (tmp_path / "store" / "runs").exists()  # nothing ran
    leftovers = []  # the server process it started was stopped, not left behind
    for p in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            if p.environ().get("MRKD_TEST_MARK") == mark:
                leftovers.append(p.pid)
    assert not leftovers
