"""The library's layering: ``mrkd_core`` imports neither Prefect nor Ray (docs/architecture, docs/interfaces.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Imports every module of mrkd_core in one fresh interpreter, then lists what got loaded.
_PROBE = """
import importlib, json, pkgutil, sys
import mrkd_core
names = sorted(m.name for m in pkgutil.walk_packages(mrkd_core.__path__, "mrkd_core."))
for name in names:
    importlib.import_module(name)
loaded = sorted({m.split(".")[0] for m in sys.modules})
print(json.dumps({"modules": names, "loaded": loaded}))
"""

ORCHESTRATORS = {"prefect", "prefect_ray", "ray"}


def test_no_mrkd_core_module_imports_prefect_or_ray():
    proc = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"mrkd_core.engine", "mrkd_core.train", "mrkd_core.cli", "mrkd_core.checkpoint"} <= set(out["modules"])
    assert len(out["modules"]) >= 40  # every module, not a few
    leaked = ORCHESTRATORS & set(out["loaded"])
    assert not leaked, f"importing mrkd_core loads {sorted(leaked)}: the library must not depend on the orchestrator"
