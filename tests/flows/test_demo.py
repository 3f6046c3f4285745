"""``make demo``: the console shows each training's epochs while it runs, and the report at the end.

The Makefile's ``demo`` target as a user runs it (``ARGS`` narrows the demo spec to one
category, two epochs, 32 px, so that it fits the suite); the virtual environment is the
one running the tests (``-o`` keeps make from rebuilding it). The console must show, for
every training (both variants of the demo spec), a line per epoch naming the training.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.flows.servers import ROOT, clean_env

pytestmark = pytest.mark.slow

EPOCHS = 2


def test_make_demo_prints_every_trainings_epochs(prefect_api, tmp_path):
    venv = Path(sys.executable).parent.parent
    store = tmp_path / "store"
    args = f"--categories obj_disc --epochs {EPOCHS} --image-size 32 --store {store} --run-id demo-test"
    proc = subprocess.run(["make", "-s", "-C", str(ROOT), "-o", f"{venv}/.installed-stamp", f"VENV={venv}", "demo",
                           f"ARGS={args}"],
                          env=clean_env(PREFECT_API_URL=prefect_api), capture_output=True, text=True, timeout=600)
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-4000:]
    for variant in ("mrkd", "baseline"):
        for epoch in range(1, EPOCHS + 1):
            line = rf"Task run 'train-folder-obj_disc-{variant}' - epoch {epoch}/{EPOCHS} \(\d+\.\d %\), loss \d"
            assert re.search(line, console), f"no progress line for {variant} epoch {epoch}:\n{console[-4000:]}"
    assert re.search(r"Ray dashboard: http://127\.0\.0\.1:\d+", console)
    assert f"report: {store}/reports/demo-test/report.html" in console
