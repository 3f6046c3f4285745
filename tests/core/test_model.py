"""The networks: shapes for all backbones, exact WRN50 parameter counts, FLM, teacher weights.

Kept small for 2 busy cores: ResNet18 at 64 px for behaviour; WRN50 and ResNet50 are
built once each (module fixtures) and run one forward at 64 px; the EfficientNet-Lite
networks are small enough to run for real (Lite0) or on the meta device (Lite1, Lite2).
Where 'imagenet' weights come from is tests/core/test_weights.py.
"""

from __future__ import annotations

import copy

import pytest
import torch

from mrkd_core.backbones import BACKBONES, get_backbone
from mrkd_core.config import MRKDConfig
from mrkd_core.data.torch_datasets import TrainItem
from mrkd_core.device import place_model
from mrkd_core.errors import ConfigError, WeightsError
from mrkd_core.model import (
    MRKD,
    OCBE,
    GenerationModules,
    build_mrkd,
    build_student,
    build_teacher,
    flm_mask,
    mrkd_loss,
)
from mrkd_core.model.flm import flm_test_mask, flm_test_masks
from mrkd_core.model.summary import model_summary
from mrkd_core.train import TeacherPass

torch.set_num_threads(2)

# The official code's live WRN50 layers (stack-notes); ours has no dead 1×1 conv/BN.
WRN50_COUNTS = {"teacher": 24_862_528, "ocbe": 58_885_120, "student": 24_917_504,
                "generation": 24_776_192}
# EfficientNet-Lite0 (beyond the paper): timm's trunk up to stride 16 (the packaged file's
# 4,694,073 values less the stride-32 stages, head and classifier); OCBE and student from
# ResNet18's basic blocks at the teacher's widths (docs/fidelity.md).
LITE0_COUNTS = {"teacher": 700_768, "ocbe": 3_933_008, "student": 729_440, "generation": 265_312}


def _cfg(backbone: str = "resnet18", **kw) -> MRKDConfig:
    return MRKDConfig(backbone=backbone, teacher_weights="none", image_size=64, **kw)


def _count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(scope="module")
def wrn50() -> MRKD:
    """WRN50 on the meta device: real shapes and parameter counts, no memory, no compute."""
    with torch.device("meta"):
        return build_mrkd(_cfg("wide_resnet50_2"))


@pytest.fixture(scope="module")
def resnet50() -> MRKD:
    torch.manual_seed(0)
    return build_mrkd(_cfg("resnet50"))


@pytest.fixture(scope="module")
def lite0() -> MRKD:
    torch.manual_seed(0)
    return build_mrkd(_cfg("efficientnet_lite0"))


def _meta(backbone: str) -> MRKD:
    with torch.device("meta"):
        return build_mrkd(_cfg(backbone))


@pytest.fixture(scope="module")
def r18() -> MRKD:
    """Shared by several tests: each sets the mode it needs and clears gradients it makes."""
    torch.manual_seed(0)
    return build_mrkd(_cfg("resnet18"))


# ---------------------------------------------------------------- architecture
def test_wrn50_parameter_counts(wrn50):
    for name, expected in WRN50_COUNTS.items():
        assert _count(getattr(wrn50, name)) == expected, name
    assert sum(p.numel() for p in wrn50.trainable_parameters()) == 58_885_120 + 24_917_504 + 24_776_192
    # Only OCBE convs/BNs and the residual stage: no unused module is handed to Adam.
    assert not any(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) and m.in_channels == 4096
                   for m in wrn50.ocbe.modules())


def test_lite0_parameter_counts(lite0):
    for name, expected in LITE0_COUNTS.items():
        assert _count(getattr(lite0, name)) == expected, name
    assert sum(p.numel() for p in lite0.trainable_parameters()) == 3_933_008 + 729_440 + 265_312


SHAPES = {
    "resnet18": ((64, 128, 256), 512),
    "resnet50": ((256, 512, 1024), 2048),
    "wide_resnet50_2": ((256, 512, 1024), 2048),
    "efficientnet_lite0": ((24, 40, 112), 320),
    "efficientnet_lite1": ((24, 40, 112), 320),
    "efficientnet_lite2": ((24, 48, 120), 352),
}


def test_every_catalogued_backbone_has_its_shapes_checked():
    assert set(SHAPES) == set(BACKBONES)


@pytest.mark.parametrize("backbone", list(SHAPES))
def test_shapes_for_all_backbones(backbone, request):
    channels, emb = SHAPES[backbone]
    fixture = {"resnet18": "r18", "resnet50": "resnet50", "wide_resnet50_2": "wrn50", "efficientnet_lite0": "lite0"}
    model = request.getfixturevalue(fixture[backbone]) if backbone in fixture else _meta(backbone)
    model.eval()
    device = next(model.parameters()).device
    assert model.teacher.channels == channels and model.generation.channels == channels
    seen = {}

    def record(module, inputs, output) -> None:
        seen["f_b"] = output.shape

    hook = model.ocbe.register_forward_hook(record)
    x = torch.randn(2, 3, 64, 64, device=device)
    with torch.no_grad():
        f_t, f_g = model.forward_train(x, x.flip(-1))
    hook.remove()
    assert [tuple(f.shape) for f in f_t] == [(2, c, 64 // s, 64 // s) for c, s in zip(channels, (4, 8, 16))]
    assert [f.shape for f in f_g] == [f.shape for f in f_t]
    assert tuple(seen["f_b"]) == (2, emb, 2, 2)
    if device.type != "meta":
        assert all(torch.isfinite(f).all() for f in f_g)


def test_resnet18_generation_uses_its_own_channels(r18):
    # The official code hard-codes 1024/512/256 here and crashes on ResNet18.
    assert r18.generation.channels == (64, 128, 256)
    assert [g.conv1.in_channels for g in r18.generation] == [64, 128, 256]
    # conv3x3 with bias, twice per scale
    assert _count(r18.generation) == sum(2 * (9 * c * c + c) for c in (64, 128, 256))


def test_ocbe_and_student_standalone(r18):
    with torch.device("meta"):
        assert OCBE(get_backbone("resnet50")).out_channels == 2048
        assert build_student("resnet50").channels == (256, 512, 1024)
    ocbe, student = r18.ocbe.eval(), r18.student.eval()
    feats = [torch.randn(1, c, 32 // s, 32 // s) for c, s in zip((64, 128, 256), (1, 2, 4))]
    with torch.no_grad():
        f_b = ocbe(feats)
        assert f_b.shape == (1, 512, 4, 4)
        assert [tuple(f.shape) for f in student(f_b)] == [tuple(f.shape) for f in feats]
    # student upsamples with 2×2 stride-2 transposed convolutions in each stage's first block
    ups = [m for m in student.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert ups and all(m.kernel_size == (2, 2) and m.stride == (2, 2) for m in ups)


def _old_naming(state: dict) -> dict:
    """A state dict as versions before the OCBE rename wrote it (``bottleneck.*``)."""
    return {("bottleneck." + k[len("ocbe."):] if k.startswith("ocbe.") else k): v for k, v in state.items()}


def test_a_model_file_of_the_old_naming_still_loads(tmp_path):
    """model.pt files written while OCBE was ``Bottleneck`` (attribute ``.bottleneck``) load unchanged."""
    import io

    from mrkd_core.model_io import MODEL_FORMAT, load_model_file

    cfg = _cfg()
    torch.manual_seed(4)
    model = build_mrkd(cfg)
    old = _old_naming(model.state_dict())
    assert any(k.startswith("bottleneck.") for k in old) and not any(k.startswith("ocbe.") for k in old)
    buf = io.BytesIO()
    torch.save({"format": MODEL_FORMAT, "config": cfg.to_json(), "state_dict": old, "extra": {}}, buf)
    (tmp_path / "old model.pt").write_bytes(buf.getvalue())
    loaded = load_model_file(str(tmp_path / "old model.pt")).model
    want, got = model.state_dict(), loaded.state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    with pytest.raises(RuntimeError, match="Missing key"):  # the mapping renames, it does not invent keys
        build_mrkd(cfg).load_state_dict({k: v for k, v in old.items() if not k.startswith("bottleneck.")})


def test_ocbe_and_student_start_from_rd4ad_initialisation(r18):
    # Kaiming-normal, fan_out, ReLU gain: std = sqrt(2 / (out_channels × k × k)); no optimiser step runs here.
    w = r18.ocbe.fuse2[0].weight  # 3×3, 128 → 256
    assert w.std().item() == pytest.approx((2 / (256 * 9)) ** 0.5, rel=0.03)
    w = r18.student.stage1[1].conv2.weight  # 3×3, 64 → 64
    assert w.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.05)


def test_unknown_backbone_is_a_config_error():
    with pytest.raises(ConfigError, match="backbone"):
        build_teacher("vgg16", "none")
    with pytest.raises(ConfigError, match="backbone.*efficientnet_lite0"):
        MRKDConfig(backbone="vgg16")


def test_lite_teacher_frozen_and_its_features_the_stride_4_8_16_stage_outputs(lite0):
    """f_T^1..3 are the outputs of timm's blocks.1, blocks.2 and blocks.4 (its feature_info)."""
    lite0.train()
    assert not lite0.teacher.training and lite0.student.training
    assert all(not p.requires_grad for p in lite0.teacher.parameters())
    assert lite0.teacher.taps == (1, 2, 4) and len(lite0.teacher.blocks) == 5  # no stride-32 stage built
    lite0.eval()
    x = torch.randn(1, 3, 64, 64)
    seen = []
    hooks = [lite0.teacher.blocks[i].register_forward_hook(lambda m, i, o: seen.append(o)) for i in (1, 2, 4)]
    with torch.no_grad():
        f_t = lite0.teacher(x)
    for h in hooks:
        h.remove()
    assert all(torch.equal(a, b) for a, b in zip(f_t, seen))


# ---------------------------------------------------------------- teacher
def test_teacher_frozen_and_always_eval(wrn50, r18):
    wrn50.train()
    assert not wrn50.teacher.training and wrn50.student.training and wrn50.ocbe.training
    assert all(not p.requires_grad for p in wrn50.teacher.parameters())
    wrn50.eval()
    r18.train()
    x = torch.randn(2, 3, 32, 32)
    running = r18.teacher.bn1.running_mean.clone()
    f_t, f_g = r18.forward_train(x, x + 0.1)
    mrkd_loss(f_t, f_g).backward()
    assert torch.equal(r18.teacher.bn1.running_mean, running)  # no BN statistics update
    assert all(p.grad is None for p in r18.teacher.parameters())
    assert all(p.grad is not None for p in r18.trainable_parameters())
    r18.zero_grad(set_to_none=True)


def test_batched_teacher_equals_two_passes(r18):
    r18.train()
    x_n, x_a = torch.randn(3, 3, 64, 64), torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        f_n, f_g = r18.forward_train(x_n, x_a, generator=torch.Generator().manual_seed(5))
        ref_n, ref_a = r18.teacher(x_n), r18.teacher(x_a)
        ref_g = r18.generation(r18.student(r18.ocbe(ref_a)), generator=torch.Generator().manual_seed(5))
    for a, b in zip(f_n, ref_n):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for a, b in zip(f_g, ref_g):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_without_ilm_the_teacher_runs_once_on_the_normal_batch(r18):
    """The step's teacher pass without ILM (x_a = x_n) sees the clean batch once; with two
    batches (``forward_train``) it runs one batched pass over both halves."""
    batches = []
    hook = r18.teacher.register_forward_hook(lambda m, i, o: batches.append(i[0].shape[0]))
    x = torch.randn(2, 3, 64, 64)
    item = TrainItem(torch.arange(2), x, torch.empty(2, 0))
    with torch.no_grad():
        f_n, f_a = TeacherPass(ilm=False)(r18, item)
        f_g = r18.restore(f_a)
        assert batches == [2]
        r18.forward_train(x, x.clone())
    hook.remove()
    assert batches == [2, 4]  # two batches: one batched pass over both halves
    assert [f.shape for f in f_n] == [f.shape for f in f_g]


# ---------------------------------------------------------------- FLM
def test_flm_mask_ratio_seeding_and_shape():
    m = flm_mask((8, 64, 32, 32), 0.2, torch.Generator().manual_seed(0), "cpu")
    assert m.shape == (8, 1, 32, 32) and m.dtype == torch.float32
    assert set(m.unique().tolist()) == {0.0, 1.0}
    zero = 1 - m.mean().item()
    assert abs(zero - 0.2) < 0.022  # 8192 Bernoulli(0.2): σ ≈ 0.0044, bound ≈ 5σ
    assert torch.equal(flm_mask((8, 64, 32, 32), 0.2, torch.Generator().manual_seed(0), "cpu"), m)
    assert not torch.equal(flm_mask((8, 64, 32, 32), 0.2, torch.Generator().manual_seed(1), "cpu"), m)
    assert flm_mask((2, 3, 8, 8), 0.0, torch.Generator().manual_seed(0), "cpu").min() == 1.0
    with pytest.raises(ConfigError, match="flm_ratio"):
        flm_mask((1, 1, 2, 2), 1.0, None, "cpu")


def test_flm_masks_all_channels_of_a_position_together():
    gen = GenerationModules((4, 8, 16), ratio=0.5)
    seen = []
    hooks = [g.register_forward_pre_hook(lambda m, i: seen.append(i[0])) for g in gen]
    feats = [torch.ones(2, c, 16 // s, 16 // s) for c, s in zip((4, 8, 16), (1, 2, 4))]
    out = gen(feats, generator=torch.Generator().manual_seed(1))
    for h in hooks:
        h.remove()
    assert [o.shape for o in out] == [f.shape for f in feats]
    for x in seen:
        per_pos = x.sum(dim=1)  # C where kept, 0 where masked: never in between
        assert torch.all((per_pos == 0) | (per_pos == x.shape[1]))
    masked = torch.cat([(x[:, 0] == 0).flatten() for x in seen]).float().mean().item()
    assert 0.35 < masked < 0.65  # 672 positions at λ = 0.5
    seen.clear()
    gen(feats, mask=False)
    assert all(torch.equal(x, f) for x, f in zip(seen, feats))


def test_test_time_masks_are_a_function_of_seed_scale_and_size():
    m = flm_test_mask(0, 1, 16, 24, 0.2)
    assert m.shape == (1, 1, 16, 24) and m.dtype == torch.float32 and m.device.type == "cpu"
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(flm_test_mask(0, 1, 16, 24, 0.2), m)  # repeatable
    for other in (flm_test_mask(1, 1, 16, 24, 0.2), flm_test_mask(0, 2, 16, 24, 0.2)):
        assert not torch.equal(other, m)
    big = flm_test_mask(7, 3, 128, 128, 0.2)
    assert abs((big == 0).float().mean().item() - 0.2) < 0.01  # λ of 16,384 positions
    assert flm_test_mask(7, 3, 128, 128, 0.0).min() == 1.0
    shapes = [(2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4)]
    assert [tuple(x.shape) for x in flm_test_masks(0, shapes, 0.2)] == [(1, 1, 16, 16), (1, 1, 8, 8), (1, 1, 4, 4)]


def test_test_time_masks_are_the_same_for_every_image_and_can_be_switched_off(r18):
    r18.eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        a = r18.forward_test(x)[1]
        f_s = r18.student(r18.ocbe(r18.teacher(x)))
        masks = [flm_test_mask(r18.flm_test_seed, level, f.shape[2], f.shape[3], r18.generation.ratio)
                 for level, f in enumerate(f_s, start=1)]
        ref = r18.generation(f_s, mask=True, masks=masks)
        e = r18.forward_test(x, flm=False)[1]
        unmasked = r18.generation(f_s, mask=False)
        other_seed = copy.deepcopy(r18)
        other_seed.flm_test_seed = 5
        c = other_seed.forward_test(x)[1]
    assert all(torch.equal(p, q) for p, q in zip(a, ref))
    assert all(torch.equal(p, q) for p, q in zip(e, unmasked))
    assert not torch.equal(a[0], e[0]) and not torch.equal(a[0], c[0])


def test_flm_off_restores_with_the_student_alone(r18):
    with torch.device("meta"):
        built = build_mrkd(_cfg(flm=False))
    assert built.generation is None
    assert len(built.trainable_parameters()) == len(list(built.ocbe.parameters())) + len(
        list(built.student.parameters()))
    model = copy.deepcopy(r18).eval()
    model.generation = None
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        f_t, f_s = model.forward_test(x)
        ref = model.student(model.ocbe(f_t))
    assert all(torch.equal(p, q) for p, q in zip(f_s, ref))


def test_channels_last_gives_the_same_features(r18):
    r18.eval()
    cl = place_model(copy.deepcopy(r18), _cfg(memory_format="channels_last"), torch.device("cpu"))
    assert cl.channels_last
    assert cl.student.stage1[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref, out = r18.forward_test(x)[1], cl.forward_test(x)[1]
    assert out[0].is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(ref, out):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- loss (Eq. 4)
def test_loss_known_values():
    f = [torch.randn(2, 4, 3, 3) for _ in range(3)]
    assert mrkd_loss(f, [t.clone() for t in f]).item() == pytest.approx(0.0, abs=1e-6)
    assert mrkd_loss(f, [2.5 * t for t in f]).item() == pytest.approx(0.0, abs=1e-6)  # scale-invariant
    assert mrkd_loss(f, [-t for t in f]).item() == pytest.approx(6.0, abs=1e-5)  # 1 − (−1) per scale
    a, b = torch.zeros(1, 2, 1, 1), torch.zeros(1, 2, 1, 1)
    a[0, 0], b[0, 1] = 1, 1
    assert mrkd_loss([a, a, a], [b, b, b]).item() == pytest.approx(3.0)  # orthogonal: 1 per scale
    # per-sample flattening, then the batch mean: sample 0 identical (0), sample 1 opposite (2) → 1 per scale
    t = torch.randn(2, 3, 4, 4)
    s = torch.stack([t[0], -t[1]])
    assert mrkd_loss([t, t], [s, s]).item() == pytest.approx(2.0, abs=1e-5)
    loss = mrkd_loss([t.bfloat16()], [s.bfloat16()])
    assert loss.dtype == torch.float32
    with pytest.raises(ValueError):
        mrkd_loss([t], [t, t])


# ---------------------------------------------------------------- teacher weights
def test_teacher_weights_none_path_and_errors(tmp_path):
    t = build_teacher("resnet18", "none")
    path = tmp_path / "r18.pth"
    state = {k: v + 1.0 if v.is_floating_point() else v for k, v in t.state_dict().items()}
    state["fc.weight"] = torch.zeros(10, 512)  # a full torchvision state dict: fc/layer4 are ignored
    state["layer4.0.conv1.weight"] = torch.zeros(512, 256, 3, 3)
    torch.save(state, path)
    loaded = build_teacher("resnet18", str(path))
    torch.testing.assert_close(loaded.conv1.weight, t.conv1.weight + 1.0)
    torch.testing.assert_close(loaded.layer3[1].bn2.running_var, t.layer3[1].bn2.running_var + 1.0)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    # a DataParallel prefix is stripped
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "dp.pth")
    torch.testing.assert_close(build_teacher("resnet18", str(tmp_path / "dp.pth")).conv1.weight, loaded.conv1.weight)

    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="do not fit resnet18.*missing"):
        build_teacher("resnet18", str(tmp_path / "bad.pth"))
    torch.save({**state, "layer3.9.conv1.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(WeightsError, match="unexpected.*layer3.9.conv1.weight"):
        build_teacher("resnet18", str(tmp_path / "extra.pth"))
    with pytest.raises(WeightsError, match="wrong shape"):  # a ResNet18 file for a ResNet50 teacher
        build_teacher("resnet50", str(path))
    with pytest.raises(WeightsError, match="file not found"):
        build_teacher("resnet18", str(tmp_path / "absent.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot load"):
        build_teacher("resnet18", str(tmp_path / "junk.pth"))


# ---------------------------------------------------------------- summary
def test_model_summary_counts_and_gflops_match_the_reference():
    s = model_summary("wide_resnet50_2", 256)
    assert {k: s["parameters"][k] for k in WRN50_COUNTS} == WRN50_COUNTS
    assert s["parameters"]["total_trainable"] == 58_885_120 + 24_917_504 + 24_776_192
    g = s["forward_gflops_per_image"]
    # stack-notes, WRN50 at 256 px: teacher 24.0, OCBE 14.6, student + generation 51.3, generation 29.0
    for key, ref in [("teacher", 24.0), ("ocbe", 14.6), ("student_and_generation", 51.3),
                     ("generation", 29.0)]:
        assert g[key] == pytest.approx(ref, rel=0.02), key
    assert g["total"] == pytest.approx(g["teacher"] + g["ocbe"] + g["student_and_generation"], abs=0.01)
    assert s["feature_shapes"]["ocbe"] == [2048, 8, 8]
    assert s["feature_shapes"]["student"] == s["feature_shapes"]["teacher"] == [[256, 64, 64], [512, 32, 32],
                                                                                [1024, 16, 16]]
