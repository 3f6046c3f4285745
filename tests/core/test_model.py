"""The networks: shapes for all backbones, exact WRN50 parameter counts, FLM, teacher weights."""

from __future__ import annotations

import pytest
import torch

from mrkd_core.config import MRKDConfig
from mrkd_core.errors import WeightsError
from mrkd_core.model import MRKD, build_mrkd, build_teacher, flm_mask, mrkd_loss
from mrkd_core.model.summary import model_summary
from mrkd_core.model.teacher import imagenet_weights_path

torch.set_num_threads(2)


def _cfg(backbone: str, **kw) -> MRKDConfig:
    return MRKDConfig(backbone=backbone, teacher_weights="none", image_size=64, **kw)


@pytest.fixture(scope="module")
def wrn50() -> MRKD:
    torch.manual_seed(0)
    return build_mrkd(_cfg("wide_resnet50_2"))


def _count(m) -> int:
    return sum(p.numel() for p in m.parameters())


def test_wrn50_parameter_counts(wrn50):
    # The counts of the official code's live layers (no dead 1×1 conv/BN in ours).
    assert _count(wrn50.teacher) == 24_862_528
    assert _count(wrn50.bottleneck) == 58_885_120
    assert _count(wrn50.student) == 24_917_504
    assert _count(wrn50.generation) == 24_776_192
    assert sum(p.numel() for p in wrn50.trainable_parameters()) == 58_885_120 + 24_917_504 + 24_776_192


@pytest.mark.parametrize("backbone,channels,emb", [
    ("resnet18", (64, 128, 256), 512),
    ("resnet50", (256, 512, 1024), 2048),
    ("wide_resnet50_2", (256, 512, 1024), 2048),
])
def test_shapes_for_all_backbones(backbone, channels, emb, wrn50):
    model = wrn50 if backbone == "wide_resnet50_2" else build_mrkd(_cfg(backbone))
    x = torch.randn(2, 3, 64, 64)
    f_t, f_g = model.forward_train(x, x.flip(-1))
    assert [tuple(f.shape) for f in f_t] == [(2, c, 64 // s, 64 // s) for c, s in zip(channels, (4, 8, 16))]
    assert [f.shape for f in f_g] == [f.shape for f in f_t]
    assert model.bottleneck(f_t).shape == (2, emb, 2, 2)
    assert model.teacher.channels == channels


def test_teacher_frozen_and_always_eval(wrn50):
    wrn50.train()
    assert not wrn50.teacher.training and wrn50.student.training
    assert all(not p.requires_grad for p in wrn50.teacher.parameters())
    x = torch.randn(2, 3, 64, 64)
    f_t, f_g = wrn50.forward_train(x, x + 0.1)
    mrkd_loss(f_t, f_g).backward()
    assert all(p.grad is None for p in wrn50.teacher.parameters())
    assert any(p.grad is not None for p in wrn50.student.parameters())
    wrn50.zero_grad(set_to_none=True)
    wrn50.eval()


def test_batched_teacher_equals_two_passes():
    model = build_mrkd(_cfg("resnet18"))
    model.train()
    x_n, x_a = torch.randn(3, 3, 64, 64), torch.randn(3, 3, 64, 64)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    f_n, f_g = model.forward_train(x_n, x_a, generator=g1)
    with torch.no_grad():
        ref_n, ref_a = model.teacher(x_n), model.teacher(x_a)
    for a, b in zip(f_n, ref_n):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    ref_g = model.generation(model.student(model.bottleneck(ref_a)), generator=g2)
    for a, b in zip(f_g, ref_g):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_flm_mask_ratio_and_channel_sharing():
    g = torch.Generator().manual_seed(0)
    m = flm_mask((8, 64, 32, 32), 0.2, g, "cpu")
    assert m.shape == (8, 1, 32, 32)
    zero = 1 - m.mean().item()
    assert abs(zero - 0.2) < 0.02  # 8192 positions: 5 σ ≈ 0.022
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(flm_mask((8, 64, 32, 32), 0.2, torch.Generator().manual_seed(0), "cpu"), m)
    assert flm_mask((2, 3, 8, 8), 0.0, g, "cpu").min() == 1.0


def test_flm_zeroes_all_channels_at_masked_positions():
    model = build_mrkd(_cfg("resnet18", flm_ratio=0.5))
    seen = {}

    def hook(module, inputs, output):
        seen["x"] = inputs[0]

    h = model.generation.blocks[0].register_forward_hook(hook)
    x = torch.randn(1, 3, 64, 64)
    model.forward_test(x, generator=torch.Generator().manual_seed(1))
    h.remove()
    masked = seen["x"].abs().sum(dim=1) == 0  # positions where every channel is zero
    assert 0.35 < masked.float().mean().item() < 0.65


def test_flm_off_and_mask_free_inference():
    model = build_mrkd(_cfg("resnet18", flm=False))
    assert model.generation is None
    model = build_mrkd(_cfg("resnet18")).eval()
    x = torch.randn(1, 3, 64, 64)
    a = model.forward_test(x, generator=torch.Generator().manual_seed(3))[1]
    b = model.forward_test(x, generator=torch.Generator().manual_seed(3))[1]
    c = model.forward_test(x, flm=False)[1]
    d = model.forward_test(x, flm=False)[1]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert all(torch.equal(p, q) for p, q in zip(c, d))
    assert not torch.equal(a[0], c[0])


def test_loss_known_values():
    f = [torch.randn(2, 4, 3, 3) for _ in range(3)]
    assert mrkd_loss(f, [t.clone() for t in f]).item() == pytest.approx(0.0, abs=1e-6)
    assert mrkd_loss(f, [-t for t in f]).item() == pytest.approx(6.0, abs=1e-5)  # 1 − (−1) per scale
    a = torch.zeros(1, 2, 1, 1)
    a[0, 0] = 1
    b = torch.zeros(1, 2, 1, 1)
    b[0, 1] = 1
    assert mrkd_loss([a, a, a], [b, b, b]).item() == pytest.approx(3.0)  # orthogonal: 1 per scale


def test_teacher_weights_none_path_and_missing_cache(tmp_path, monkeypatch):
    t = build_teacher("resnet18", "none")
    path = tmp_path / "r18.pth"
    state = {k: v + 1.0 if v.is_floating_point() else v for k, v in t.state_dict().items()}
    state["fc.weight"] = torch.zeros(10, 512)  # a full torchvision state dict: extra keys are ignored
    torch.save(state, path)
    loaded = build_teacher("resnet18", str(path))
    torch.testing.assert_close(loaded.conv1.weight, t.conv1.weight + 1.0)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="do not fit resnet18"):
        build_teacher("resnet18", str(tmp_path / "bad.pth"))
    with pytest.raises(WeightsError, match="file not found"):
        build_teacher("resnet18", str(tmp_path / "absent.pth"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(WeightsError, match="not in the local torch cache"):
        build_teacher("wide_resnet50_2", "imagenet")
    assert imagenet_weights_path("wide_resnet50_2").startswith(str(tmp_path / "empty-cache"))


def test_model_summary_gflops_match_the_reference():
    s = model_summary("wide_resnet50_2", 256)
    g = s["forward_gflops_per_image"]
    # stack-notes: teacher 24.0, bottleneck 14.6, student + generation 51.3 (generation 29.0)
    for key, ref in [("teacher", 24.0), ("bottleneck", 14.6), ("student_and_generation", 51.3), ("generation", 29.0)]:
        assert g[key] == pytest.approx(ref, rel=0.02), key
    assert s["feature_shapes"]["bottleneck"] == [2048, 8, 8]
