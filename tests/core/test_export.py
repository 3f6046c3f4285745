"""ONNX export: the same maps as PyTorch, a dynamic batch, and a self-contained file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mrkd_core.cli import main
from mrkd_core.data import get_dataset
from mrkd_core.data.synthetic import make_synthetic_mvtec
from mrkd_core.inference import Predictor, calibrate_model, predict_images
from mrkd_core.inference.export import KEY_CALIBRATION, KEY_PREPROCESSING, onnx_metadata
from mrkd_core.model import build_mrkd
from mrkd_core.model_io import load_model_file, save_model
from mrkd_core.storage import ArtifactStore
from tests.tiny import TINY_CFG

pytest.importorskip("onnxruntime")
torch.set_num_threads(2)
CFG = TINY_CFG


def _export(base, cfg) -> tuple[str, object, list[str]]:
    """(model.pt, model.onnx, test image paths) of a calibrated tiny model of ``cfg``, exported by `mrkd export`."""
    make_synthetic_mvtec(base / "data", categories=("obj_disc",), n_train=2, n_test_good=3, n_test_defect=3,
                         size=64, seed=2)
    samples = get_dataset("folder").test_samples(str(base / "data"), "obj_disc")
    torch.manual_seed(1)
    model = build_mrkd(cfg).eval()
    cal = calibrate_model(model, cfg, test_samples=samples)
    pt = save_model(model, cfg, ArtifactStore(base), "model.pt", extra={"category": "obj_disc"},
                    calibration=cal.to_dict())
    onnx_path = base / "model.onnx"
    assert main(["-q", "export", pt, "--format", "onnx", "-o", str(onnx_path)]) == 0
    return pt, onnx_path, [s.path for s in samples]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("export"), CFG)


@pytest.fixture(scope="module", params=["resnet18", "efficientnet_lite0"])
def exported_family(request, exported, tmp_path_factory):
    """Each teacher family's export: the ResNet18 one above, and EfficientNet-Lite0 with its ImageNet weights
    (timm's TF "same" padding and depthwise convolutions in the graph)."""
    if request.param == "resnet18":
        return exported
    return _export(tmp_path_factory.mktemp("export-lite"), CFG.replace(backbone=request.param,
                                                                       teacher_weights="imagenet"))


def test_onnx_maps_equal_pytorch_within_1e_4_at_any_batch_size(exported_family):
    pt, onnx_path, paths = exported_family
    torch_pred = Predictor.load(pt, device="cpu", batch_size=3)
    for b in (1, 3, 6):
        onnx_pred = Predictor.load(str(onnx_path), batch_size=b)
        assert onnx_pred.backend.info.engine == "onnxruntime"
        ours = list(onnx_pred.predict(paths))
        ref = list(torch_pred.predict(paths))
        np.testing.assert_allclose(np.stack([p.anomaly_map for p in ours]), np.stack([p.anomaly_map for p in ref]),
                                   rtol=0, atol=1e-4)
        np.testing.assert_allclose([p.score for p in ours], [p.score for p in ref], rtol=0, atol=1e-4)
        assert [p.verdict for p in ours] == [p.verdict for p in ref]


def test_the_export_holds_the_test_time_masks_and_its_calibration(exported):
    pt, onnx_path, _ = exported
    meta = onnx_metadata(onnx_path)
    record = load_model_file(pt, build=False)
    assert json.loads(meta[KEY_CALIBRATION]) == record.calibration
    pre = json.loads(meta[KEY_PREPROCESSING])
    assert pre["image_size"] == 64 and pre["mean"] == list(CFG.normalize_mean) and "LANCZOS" in pre["resize"]
    import onnx

    graph = onnx.load(str(onnx_path))
    ops = {n.op_type for n in graph.graph.node}
    assert not ops & {"RandomUniform", "RandomUniformLike", "RandomNormal", "Bernoulli"}  # masks are constants


def test_predict_with_the_onnx_file_writes_the_same_outputs(exported, tmp_path, capsys):
    pt, onnx_path, paths = exported
    a = predict_images(pt, paths, tmp_path / "pt", device="cpu")
    assert main(["-q", "predict", str(onnx_path), *paths, "-o", str(tmp_path / "onnx")]) == 0
    import pandas as pd

    b = pd.read_parquet(tmp_path / "onnx" / "predictions.parquet")
    assert b["verdict"].tolist() == [p.verdict for p in a.predictions]
    np.testing.assert_allclose(b["score"], [p.score for p in a.predictions], atol=1e-4)
    assert all((tmp_path / "onnx" / f).is_file() for f in b["mask_path"].map(lambda s: s.rsplit("/", 1)[1]))
    capsys.readouterr()
    assert main(["models", "info", str(onnx_path)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["thresholds"]["image"] == load_model_file(pt, build=False).calibration["image_threshold"]
    assert "device" not in shown["config"] and "device" in shown["trained_with"]


def test_openvino_runs_the_export_with_the_same_maps(exported, tmp_path):
    """OpenVINO in float32 (its bf16 default on such CPUs moved maps by ~6e-3)."""
    pytest.importorskip("openvino")
    pt, onnx_path, paths = exported
    ref = list(Predictor.load(pt, device="cpu").predict(paths))
    ours = list(Predictor.load(str(onnx_path), engine="openvino", batch_size=4).predict(paths))
    np.testing.assert_allclose(np.stack([p.anomaly_map for p in ours]), np.stack([p.anomaly_map for p in ref]),
                               rtol=0, atol=1e-4)
    assert [p.verdict for p in ours] == [p.verdict for p in ref]
    assert main(["-q", "predict", str(onnx_path), paths[0], "-o", str(tmp_path), "--engine", "openvino"]) == 0
    assert main(["-q", "predict", pt, paths[0], "-o", str(tmp_path), "--engine", "openvino"]) == 2  # needs an export


@pytest.mark.parametrize("threads", [1, 2])
def test_every_engine_runs_on_the_processs_thread_count(exported, threads):
    """ONNX Runtime and OpenVINO take as many threads as PyTorch is set to, as a Serve replica sets it to
    its reserved CPUs (``--cpus-per-replica``); left to themselves they took every core."""
    from mrkd_core.inference.backends import open_backend

    _, onnx_path, _ = exported
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert open_backend(str(onnx_path)).session.get_session_options().intra_op_num_threads == threads
        try:
            import openvino  # noqa: F401
        except ImportError:
            return
        compiled = open_backend(str(onnx_path), engine="openvino").compiled
        assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == threads
    finally:
        torch.set_num_threads(before)
