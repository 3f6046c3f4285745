"""The speed choices of the training loop change speed only (docs/performance.md).

Each optimisation that ``bench/bench_train.py`` measures is checked here against the
straightforward computation it replaces: the clean-image teacher feature cache against
a teacher pass per step, NHWC against NCHW, fused against for-loop Adam, persistent
DataLoader workers against synthesis in the main process, the layout choice itself, and
the CPU heap reuse (an allocator setting that must be undone when training ends).
"""

from __future__ import annotations

import copy
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mrkd_core.config import MRKDConfig
from mrkd_core.data import get_dataset
from mrkd_core.data.synthetic import make_synthetic_mvtec
from mrkd_core.data.torch_datasets import ILMTrainDataset, epoch_order, make_loader, normalize
from mrkd_core.device import CPU_CHANNELS_LAST_MIN_SIZE, _glibc, place_model, use_channels_last
from mrkd_core.errors import ConfigError
from mrkd_core.model import build_mrkd, mrkd_loss
from mrkd_core.model_io import load_model_file, model_bytes
from mrkd_core.train import build_optimizer, teacher_feature_cache, train

TINY = dict(backbone="resnet18", teacher_weights="none", image_size=64, batch_size=4, num_workers=0,
            progress=False, device="cpu", memory_format="contiguous")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    root = tmp_path_factory.mktemp("perf")
    make_synthetic_mvtec(root, categories=("tex_stripes",), n_train=6, n_test_good=1, n_test_defect=1,
                         size=64, seed=5)
    return get_dataset("folder").train_samples(str(root), "tex_stripes")


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_weights_close(a, b, tol):
    wa, wb = _weights(a), _weights(b)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=tol, atol=tol, msg=lambda m, k=k: f"{k}: {m}")


# The trunk of each teacher family: torchvision's ResNet and timm's EfficientNet-Lite (pretrained:
# the only teacher whose BatchNorm statistics are ImageNet's, as in the paper's setting).
FAMILIES = [{}, {"backbone": "efficientnet_lite0", "teacher_weights": "imagenet"}]


@pytest.mark.parametrize("teacher", FAMILIES, ids=["resnet18", "efficientnet_lite0"])
def test_teacher_cache_equals_a_teacher_pass_per_step(samples, teacher):
    """θ_T is frozen and the clean images fixed: cached f_T,n give the same training."""
    cfg = MRKDConfig(epochs=2, **{**TINY, **teacher})
    cached = train(cfg, samples, "tex_stripes", teacher_cache=True)
    per_step = train(cfg, samples, "tex_stripes", teacher_cache=False)
    assert cached.epoch_losses == pytest.approx(per_step.epoch_losses, rel=1e-6, abs=1e-7)
    _assert_weights_close(cached.model, per_step.model, 1e-5)


def test_teacher_cache_without_ilm_trains_like_a_teacher_pass_per_step(samples):
    """The RD4AD baseline: with the cache the batch carries only indices, and no teacher runs per step."""
    cfg = MRKDConfig(epochs=2, ilm=False, flm=False, **TINY)
    cached = train(cfg, samples, "tex_stripes", teacher_cache=True)
    per_step = train(cfg, samples, "tex_stripes", teacher_cache=False)
    assert cached.epoch_losses == pytest.approx(per_step.epoch_losses, rel=1e-6, abs=1e-7)
    _assert_weights_close(cached.model, per_step.model, 1e-5)


@pytest.mark.parametrize("ilm", [True, False])
def test_with_the_cache_the_loader_sends_indices_instead_of_clean_images(samples, ilm):
    cfg = MRKDConfig(ilm=ilm, **TINY)
    full = ILMTrainDataset.from_samples(samples, cfg, "tex_stripes")
    lean = ILMTrainDataset.from_samples(samples, cfg, "tex_stripes", with_normal=False)
    for key in [(0, 3), (1, 3), (1, 5)]:
        _, x_n, x_a = full[key]
        index, _, x_a_lean = lean[key]
        assert index.dtype == torch.int64 and int(index) == key[1]
        if ilm:
            assert torch.equal(x_a_lean, x_a)  # the same ILM draw from (seed, epoch, index)
        else:
            assert x_a_lean.numel() == 0  # nothing of the image is needed
    loader = make_loader(lean, cfg.replace(batch_size=4), epoch=1)
    loader.sampler.set_epoch(1)
    indices = torch.cat([batch.index for batch in loader]).tolist()
    assert indices == epoch_order(len(lean), cfg.seed, 1)


def test_teacher_cache_holds_the_teacher_features_in_dataset_order(samples):
    cfg = MRKDConfig(**TINY)
    torch.manual_seed(0)
    model = place_model(build_mrkd(cfg), cfg, CPU).eval()
    dataset = ILMTrainDataset.from_samples(samples, cfg, "tex_stripes")
    cache = teacher_feature_cache(model, dataset.images, cfg, CPU, limit=1 << 40)
    assert [c.shape[0] for c in cache] == [len(dataset)] * 3
    x = normalize(dataset.images[4], cfg.normalize_mean, cfg.normalize_std)[None]
    with torch.no_grad():
        ref = model.teacher(x)
    for c, r in zip(cache, ref):
        torch.testing.assert_close(c[4:5], r, rtol=1e-4, atol=1e-5)  # batch of 4 vs 1: rounding
    assert teacher_feature_cache(model, dataset.images, cfg, CPU, limit=1000) is None  # too big: per-step pass


def test_persistent_workers_reproduce_the_main_process(samples):
    """(epoch, index) travels with every index, so ILM draws do not depend on where they run."""
    cfg = MRKDConfig(epochs=2, **TINY)
    main = train(cfg, samples, "tex_stripes")
    workers = train(cfg.replace(num_workers=2), samples, "tex_stripes")
    assert workers.epoch_losses == main.epoch_losses
    wa, wb = _weights(main.model), _weights(workers.model)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _loss_and_grads(model, x_n, x_a, cfg):
    model.zero_grad(set_to_none=True)
    f_t, f_g = model.forward_train(x_n, x_a, generator=torch.Generator().manual_seed(3))
    loss = mrkd_loss(f_t, f_g)
    loss.backward()
    return float(loss.detach()), [p.grad.clone() for p in model.trainable_parameters()]


def test_channels_last_changes_loss_and_gradients_by_rounding_only():
    """NHWC vs NCHW: the fp32 loss within 1e-5; in float64 the gradients agree to 1e-10.

    The gradients are compared in float64 because in fp32 the BatchNorm backward of a
    randomly initialised net amplifies last-bit differences to ~0.5 % in some tensors:
    float64 shows that the two layouts compute the same function.
    """
    cfg = MRKDConfig(**{**TINY, "image_size": 128})
    nhwc_cfg = cfg.replace(memory_format="channels_last")
    torch.manual_seed(1)
    base = build_mrkd(cfg).train()
    x_n = torch.randn(2, 3, 128, 128)
    x_a = x_n.clone()
    x_a[:, :, 32:64, 40:80] = torch.randn(2, 3, 32, 40)
    ref_loss, _ = _loss_and_grads(base, x_n, x_a, cfg)
    loss, _ = _loss_and_grads(place_model(copy.deepcopy(base), nhwc_cfg, CPU), x_n, x_a, cfg)
    assert abs(loss - ref_loss) <= 1e-5
    b64 = copy.deepcopy(base).double()
    _, ref_grads = _loss_and_grads(b64, x_n.double(), x_a.double(), cfg)
    _, grads = _loss_and_grads(place_model(copy.deepcopy(b64), nhwc_cfg, CPU), x_n.double(), x_a.double(), cfg)
    for g, r in zip(grads, ref_grads):
        assert float((g - r).norm() / r.norm()) < 1e-10


def test_fused_adam_equals_for_loop_adam():
    """Same gradients, three steps: weights agree to float rounding.

    (Weights after a step of two *layouts* are not compared: Adam's first update is
    ≈ lr·sign(g), so a gradient that rounds across zero moves a weight by 2·lr.)
    """
    cfg = MRKDConfig(**TINY)
    torch.manual_seed(2)
    a = build_mrkd(cfg)
    b = copy.deepcopy(a)
    opt_a = build_optimizer(a, cfg)
    opt_b = torch.optim.Adam(b.trainable_parameters(), lr=cfg.lr, betas=cfg.betas, foreach=False)
    for step in range(3):
        g = torch.Generator().manual_seed(step)
        for pa, pb in zip(a.trainable_parameters(), b.trainable_parameters()):
            pa.grad = torch.randn(pa.shape, generator=g)
            pb.grad = pa.grad.clone()
        opt_a.step()
        opt_b.step()
    _assert_weights_close(a, b, 1e-6)


def test_build_optimizer_is_the_paper_adam():
    cfg = MRKDConfig(**TINY)
    opt = build_optimizer(build_mrkd(cfg), cfg)
    group = opt.param_groups[0]
    assert isinstance(opt, torch.optim.Adam) and group["lr"] == 0.005 and group["betas"] == (0.5, 0.999)
    assert group["fused"] is True


def test_memory_format_choice():
    cuda = torch.device("cuda")
    assert use_channels_last("auto", CPU, CPU_CHANNELS_LAST_MIN_SIZE)
    assert not use_channels_last("auto", CPU, CPU_CHANNELS_LAST_MIN_SIZE - 32)
    assert use_channels_last("auto", cuda, 64)
    assert use_channels_last("channels_last", CPU, 64)
    assert not use_channels_last("contiguous", cuda, 256)
    model = place_model(build_mrkd(MRKDConfig(**TINY)), MRKDConfig(**{**TINY, "memory_format": "auto",
                                                                       "image_size": 256}), CPU)
    assert model.channels_last
    assert model.student.stage1[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    model = place_model(model, MRKDConfig(**TINY), CPU)  # and back
    assert not model.channels_last and model.student.stage1[0].conv1.weight.is_contiguous()


def test_memory_format_is_runtime_only_and_validated():
    a = MRKDConfig(**TINY)
    assert a.replace(memory_format="channels_last").config_hash() == a.config_hash()
    with pytest.raises(ConfigError, match="memory_format"):
        a.replace(memory_format="nhwc")


@pytest.mark.parametrize("legacy, expected", [(True, "channels_last"), (False, "contiguous")])
def test_configs_stored_with_the_old_channels_last_field_still_load(legacy, expected, tmp_path):
    """Models written before ``memory_format`` existed keep loading with the layout they ran in."""
    data = {k: v for k, v in MRKDConfig(**TINY).to_dict().items() if k != "memory_format"}
    cfg = MRKDConfig.from_dict({**data, "channels_last": legacy})
    assert cfg.memory_format == expected
    with pytest.raises(ConfigError, match="channels_last"):
        MRKDConfig.from_dict({**data, "channels_last": "yes"})
    cfg = MRKDConfig(**TINY)
    state = torch.load(io.BytesIO(model_bytes(build_mrkd(cfg), cfg)), weights_only=True)
    state["config"] = json.dumps({**data, "channels_last": legacy})  # as an old model.pt holds it
    buf = io.BytesIO()
    torch.save(state, buf)
    (tmp_path / "model.pt").write_bytes(buf.getvalue())
    record = load_model_file(str(tmp_path / "model.pt"))
    model, loaded = record.model, record.config
    assert loaded.memory_format == expected and model.channels_last == legacy


HEAP_PROBE = """
import json, resource, sys, torch
from mrkd_core.device import cpu_heap_reuse

def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20

def step():  # three large activations, each above glibc's largest mmap threshold (32 MB)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    activations = [torch.ones(n) for n in (16 << 20, 10 << 20, 12 << 20)]  # 64 + 40 + 48 MB
    del activations
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

out = {"default": [step() for _ in range(3)], "rss_before": rss()}
with cpu_heap_reuse(torch.device("cpu")) as active, cpu_heap_reuse(torch.device("cpu")):
    out["active"] = active
    out["inside"] = [step() for _ in range(12)]
    out["rss_held"] = rss()
out["rss_after"] = rss()
with cpu_heap_reuse(torch.device("meta")) as active:
    out["meta"] = active
json.dump(out, sys.stdout)
"""


@pytest.mark.skipif(_glibc() is None, reason="glibc's allocator only")
def test_cpu_heap_reuse_keeps_large_blocks_for_the_next_step_and_gives_them_back_after():
    """Probed in a fresh process (the allocator's state is per process)."""
    probe = subprocess.run([sys.executable, "-c", HEAP_PROBE], capture_output=True, text=True, timeout=120,
                           cwd=Path(__file__).resolve().parents[2], check=True)
    r = json.loads(probe.stdout)
    pages = (38 << 20) * 4 // 4096
    assert min(r["default"]) > pages // 2, r  # glibc's default: every step maps and faults anew
    assert r["active"] and not r["meta"]  # on the CPU only
    # Inside: once the heap has grown to hold a step's blocks wherever the step's small allocations
    # fell (up to 6 steps here: brk growth of 48-64 MB in the first ones, nothing given back between
    # steps), it serves each next step's pages. 12 steps; the last three each fault < 10 %.
    assert all(faults < pages // 10 for faults in r["inside"][-3:]), r
    assert r["rss_held"] > r["rss_before"] + 100, r  # ... by keeping them between steps
    assert r["rss_after"] < r["rss_before"] + 30, r  # the last user gone (nested: counted), memory returned
