"""The README's block from "I have a champion" to "my line gets verdicts", run as written.

The block is read from README.md and run by bash (``set -euo pipefail``) in a folder that holds
what the README's section before it describes (``parts/bracket/`` and ``new_images/``, generated
here), with the environment's ``mrkd``, ``python`` and ``curl`` on PATH and no Ray to join:
``mrkd serve`` starts a Ray of its own and binds Serve's default 127.0.0.1:8000. While it runs,
every TCP listener of the block's process tree is collected (psutil, as ``ss -ltnp`` lists
them): by default the service listens on 127.0.0.1 only (Serve's replica gRPC servers aside,
documented in docs/reliability.md). Afterwards no replica is left.
"""

from __future__ import annotations

import re
import runpy
import subprocess
import threading
import time

import psutil
import pytest

from tests.flows.netwatch import listeners, wide_listeners
from tests.flows.servers import BIN, ROOT, clean_env, stop_process

pytestmark = pytest.mark.slow

RUN_TIMEOUT = 900


def readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    found = [b for b in blocks if b.startswith("# I have a champion") and "my line gets verdicts" in b]
    assert len(found) == 1, "README.md: one bash block from '# I have a champion' to 'my line gets verdicts'"
    return found[0]


def test_the_readme_block_runs_as_written(tmp_path):
    # The folder of the README's section before it (bench/try_folder.py), smaller: 64 px, 8 training parts.
    runpy.run_path(str(ROOT / "bench" / "try_folder.py"))["make_try_folder"](
        tmp_path, size=64, n_train=8, n_good=3, n_defect=3, n_new=2)
    (script := tmp_path / "readme.sh").write_text("set -euo pipefail\n" + readme_block())
    home = tmp_path / "home"  # no local Ray head of this machine's user to attach to
    home.mkdir()
    env = clean_env(HOME=str(home), PATH=f"{BIN}:/usr/bin:/bin")
    proc = subprocess.Popen(["bash", str(script)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen: set = set()
    watching = threading.Event()

    def watch() -> None:
        while not watching.is_set():
            seen.update(listeners(proc.pid))
            watching.wait(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.monotonic()
    try:
        stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        watching.set()
        watcher.join(timeout=10)
        stop_process(proc)
    print(f"README block: {time.monotonic() - started:.1f} s\n{stdout}")
    assert proc.returncode == 0, stdout[-3000:] + stderr[-5000:]
    assert "serving bracket v1 on http://127.0.0.1:8000\n" in stdout
    assert "serving bracket v2 on http://127.0.0.1:8000 (was v1)\n" in stdout
    answers = re.findall(r'\{"model":"bracket","version":(\d),"request_id":"[^"]+","results":\[(.*?)\]\}', stdout)
    assert [v for v, _ in answers][:2] == ["1", "1"] and len(re.findall(r'"mask_png":"', answers[1][1])) == 2
    assert re.search(r"received_at\s+model_version\s+score\s+verdict", stdout)  # the record, read by pandas
    assert re.search(r"\s2\s+\d+\.\d+\s+(good|defective)\n", stdout)  # rows answered by v2
    proxy = {ip for name, ip, port in seen if port == 8000}
    assert proxy == {"127.0.0.1"}, seen
    assert wide_listeners(seen) == [], f"listening beyond loopback: {wide_listeners(seen)}"
    left = [p for p in psutil.process_iter(["name"])
            if (p.info["name"] or "").startswith("ray::ServeReplica:mrkd:model-bracket")]
    assert left == []
