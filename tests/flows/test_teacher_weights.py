"""A cluster fetches the teacher's ImageNet weights once: the download flow stages them in the store, and a
Ray worker (a process with exactly the environment ``worker_env`` gives it: an empty torch cache, offline)
copies them from there with the same sha256 check. A local HTTP server stands in for the publisher."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flows.ray_runner import worker_env
from mrkd_core.backbones import get_backbone
from mrkd_core.model.teacher import ResNetTeacher
from mrkd_core.model.weights import ENV_OFFLINE, ENV_STAGED
from tests.http_files import serve_files

ROOT = Path(__file__).resolve().parents[2]
SPEC = """name: staged
datasets:
  - name: folder
    root: generated-staged
    categories: [obj_disc]
    generate: {kind: synthetic_mvtec, categories: [obj_disc], n_train: 2, n_test_good: 1, n_test_defect: 1, size: 32, seed: 0}
base: {backbone: resnet18, teacher_weights: imagenet, image_size: 32, epochs: 1}
variants:
  mrkd: {}
  random: {teacher_weights: none}
"""
# What a worker runs when it builds the teacher; prints the sum of a weight to compare.
WORKER = ("from mrkd_core.model import build_teacher; "
          "print(build_teacher('resnet18', 'imagenet', progress=False).conv1.weight.double().sum().item())")


@pytest.mark.slow
def test_the_download_flow_stages_the_weights_once_and_workers_read_them_offline(prefect_api, local_store,
                                                                                   tmp_path, monkeypatch):
    from flows.download import download

    torch.manual_seed(11)
    teacher = ResNetTeacher(get_backbone("resnet18"))
    buf = io.BytesIO()
    torch.save(teacher.state_dict(), buf)
    data = buf.getvalue()
    name = f"resnet18-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "staged.yaml").write_text(SPEC)
    monkeypatch.setenv("MRKD_SPEC_PATH", str(tmp_path / "specs"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "driver-torch"))
    monkeypatch.delenv(ENV_OFFLINE, raising=False)
    monkeypatch.delenv(ENV_STAGED, raising=False)
    with serve_files() as (state, base):
        state.files[f"/models/{name}"] = data
        monkeypatch.setenv("MRKD_RESNET18_WEIGHTS_URL", f"{base}/models/{name}")
        first = download(spec="staged")
        again = download(spec="staged")
        assert state.paths_requested() == [f"/models/{name}"]  # one download for the whole cluster
    staged = local_store / "weights" / name
    assert first[-1] == again[-1] == str(staged) and staged.read_bytes() == data

    env = worker_env(str(local_store), str(tmp_path / "data"), None)
    assert env[ENV_STAGED] == f"{local_store}/weights" and env["MRKD_RESNET18_WEIGHTS_URL"].endswith(name)
    worker = {**env, "PATH": os.environ["PATH"], "TORCH_HOME": str(tmp_path / "worker-torch"), ENV_OFFLINE: "1"}
    out = subprocess.run([sys.executable, "-c", WORKER], cwd=ROOT, env=worker, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.split()[-1]) == teacher.conv1.weight.double().sum().item()
    assert (tmp_path / "worker-torch" / "hub" / "checkpoints" / name).read_bytes() == data
