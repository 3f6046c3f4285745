"""The ILM preset as a config field (``ilm_preset``): its spellings, errors, hash rule and ``auto``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mrkd_core.config import HASH_NEUTRAL_DEFAULTS, MRKDConfig
from mrkd_core.data import get_dataset
from mrkd_core.data.synthetic import make_synthetic_mvtec
from mrkd_core.data.torch_datasets import ILMTrainDataset, decode_train_images
from mrkd_core.errors import ConfigError
from mrkd_core.ilm import (
    PRESETS,
    TEXTURE_PRESET,
    UNKNOWN_CATEGORY_PRESET,
    canonical_preset,
    describe_preset,
    object_mask,
    resolve_preset,
)
from mrkd_core.ilm.auto import estimate_background, estimate_preset

# Hashes of configs as they were before ilm_preset and the subsample fields existed (main at
# 1179ada): results, checkpoints and models stored under them must stay reachable.
PINNED_HASHES = [
    ({}, "4facc73f56d158fc"),
    ({"backbone": "resnet18", "teacher_weights": "none", "image_size": 128, "epochs": 15, "batch_size": 8},
     "b151c62f300d7508"),
]


@pytest.mark.parametrize("fields, expected", PINNED_HASHES)
def test_hashes_of_existing_configs_are_unchanged(fields, expected):
    cfg = MRKDConfig(**fields)
    assert cfg.config_hash() == expected
    assert cfg.replace(ilm_preset="default", train_subsample=0, test_subsample=0).config_hash() == expected
    hashed = cfg.hashed_dict()
    assert not set(HASH_NEUTRAL_DEFAULTS) & set(hashed)  # left out at their neutral value ...
    for change in ({"ilm_preset": "auto"}, {"ilm_preset": "texture"}, {"train_subsample": 10}, {"test_subsample": 5}):
        assert cfg.replace(**change).config_hash() != expected, change  # ... and hashed at any other


@pytest.mark.parametrize(
    "value, canonical",
    [
        ("default", "default"),
        ("AUTO", "auto"),
        (" Bottle ", "bottle"),
        ("texture", "texture"),
        ("patches=2, half_size=0.03:0.15", "half_height=0.03:0.15,half_width=0.03:0.15,patches=2"),
        ("half_width=0.03:0.2,half_height=0.01", "half_height=0.01:0.01,half_width=0.03:0.2,patches=4"),
        ({"half_size": [0.03, 0.15], "patches": 2}, "half_height=0.03:0.15,half_width=0.03:0.15,patches=2"),
        ("background=200,threshold=60",
         "half_height=0.03:0.4,half_width=0.03:0.4,patches=4,background=200,threshold=60,min_object=0.7,"
         "min_overlap=0.25"),
    ],
)
def test_one_spelling_per_preset(value, canonical):
    assert canonical_preset(value) == canonical
    cfg = MRKDConfig.from_dict({"ilm_preset": value})
    assert cfg.ilm_preset == canonical
    assert MRKDConfig.from_json(cfg.to_json()) == cfg  # the JSON round trip keeps it (and its hash)


def test_equal_presets_hash_equally():
    a = MRKDConfig(ilm_preset="patches=2,half_size=0.03:0.15")
    b = MRKDConfig.from_dict({"ilm_preset": {"patches": 2, "half_height": [0.03, 0.15], "half_width": "0.03:0.15"}})
    assert a == b and a.config_hash() == b.config_hash()


@pytest.mark.parametrize(
    "value, fragment",
    [
        ("botle", "unknown preset 'botle'"),
        ("", "empty"),
        ("patches=0", "patches='0' must be a whole number >= 1"),
        ("patches=2.5", "whole number"),
        ("half_size=0.3:0.1", "need 0 < LO <= HI <= 0.5"),
        ("half_size=0.03:0.6", "need 0 < LO <= HI <= 0.5"),
        ("half_size=a", "'a' is not a number"),
        ("half_size=0.1:0.2:0.3", "must be LO:HI"),
        ("background=200", "background needs threshold"),
        ("threshold=20", "used only with a background"),
        ("background=300,threshold=20", "parameter 'background'"),
        ("background=200,threshold=20,min_object=1.5", "parameter 'min_object'"),
        ("size=3", "unknown parameter 'size'"),
        ("half_size=0.1,half_width=0.2", "half_width is given twice"),
        ("patches=2,oops", "'oops' is not key=value"),
    ],
)
def test_bad_values_are_one_line_naming_the_field(value, fragment):
    with pytest.raises(ConfigError) as err:
        MRKDConfig(ilm_preset=value)
    msg = str(err.value)
    assert "ilm_preset" in msg and fragment in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="ilm_preset"):
        MRKDConfig.from_json(json.dumps({"ilm_preset": value}), source="cfg.json")


def test_not_a_name_nor_parameters():
    with pytest.raises(ConfigError, match="field 'ilm_preset' must be str"):
        MRKDConfig.from_dict({"ilm_preset": 3})
    with pytest.raises(ConfigError, match="empty mapping"):
        MRKDConfig.from_dict({"ilm_preset": {}})


def test_resolution_per_category():
    assert resolve_preset("default", "Bottle") is PRESETS["bottle"]  # MVTec keeps its published preset
    assert resolve_preset("default", "carpet") is PRESETS["carpet"]
    assert UNKNOWN_CATEGORY_PRESET in ("texture", "auto")
    assert resolve_preset("texture", "bottle") is TEXTURE_PRESET  # an explicit value wins over the name
    assert resolve_preset("screw", "my_bolts") is PRESETS["screw"]  # a user's bolts with screw's preset
    explicit = resolve_preset("half_size=0.03:0.15,patches=2,background=20,threshold=20,min_object=0.5", "parts")
    assert explicit.width_bounds_pct == ((0.03, 0.15), (0.03, 0.15)) and explicit.num_patches == 2
    assert (explicit.background, explicit.background_threshold) == (20.0, 20.0)
    assert (explicit.min_object_pct, explicit.min_overlap_pct) == (0.5, 0.25)
    with pytest.raises(ConfigError, match="needs the training images"):
        resolve_preset("auto", "parts")


def test_describe_preset_gives_parameters_that_reproduce_it():
    for preset in (*PRESETS.values(), TEXTURE_PRESET):
        again = resolve_preset(describe_preset(preset), "x")
        for field in ("width_bounds_pct", "num_patches", "background", "background_threshold",
                      "min_object_pct", "min_overlap_pct"):
            assert getattr(again, field) == getattr(preset, field), (preset.name, field)


# --------------------------------------------------------------------------- auto
@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("auto")
    cats = ("obj_disc", "obj_capsule", "tex_stripes", "tex_grain", "tex_brick")
    make_synthetic_mvtec(root, categories=cats, n_train=8, n_test_good=1, n_test_defect=1, size=64, seed=3)
    return {c: decode_train_images(get_dataset("folder").train_samples(root, c), 64, c) for c in cats}


@pytest.mark.parametrize("category, background, share", [("obj_disc", 32.0, 0.30), ("obj_capsule", 213.0, 0.11)])
def test_auto_finds_a_part_on_a_plain_background(generated, category, background, share):
    images = generated[category]
    est = estimate_background(images)
    assert est.is_object and abs(est.level - background) < 6 and abs(est.object_share - share) < 0.05
    preset = estimate_preset(images)
    assert preset.is_object and preset.background == pytest.approx(est.level, abs=0.05)
    assert (preset.min_object_pct, preset.min_overlap_pct, preset.num_patches) == (0.5, 0.25, 3)
    # Patches at most as large as the part: the capsule is long and flat, so its height bound is smaller.
    (h_lo, h_hi), (w_lo, w_hi) = preset.width_bounds_pct
    assert h_lo == w_lo == 0.03 and h_hi <= 0.5 * est.extent[0] + 1e-3 and w_hi <= 0.5 * est.extent[1] + 1e-3
    # The mask ILM then uses covers the part, not the background.
    masks = [object_mask(img, preset) for img in images]
    assert abs(np.mean([m.mean() for m in masks]) - share) < 0.05


@pytest.mark.parametrize("category", ["tex_stripes", "tex_grain", "tex_brick"])
def test_auto_keeps_the_texture_setting_on_textures(generated, category):
    preset = estimate_preset(generated[category])
    assert not preset.is_object
    assert (preset.width_bounds_pct, preset.num_patches) == (TEXTURE_PRESET.width_bounds_pct, TEXTURE_PRESET.num_patches)


def test_auto_is_deterministic_and_resolved_by_the_training_dataset(generated):
    images = generated["obj_capsule"]
    assert estimate_preset(images) == estimate_preset(list(images))
    cfg = MRKDConfig(backbone="resnet18", teacher_weights="none", image_size=64, ilm_preset="auto", num_workers=0)
    dataset = ILMTrainDataset(images, cfg, "obj_capsule")
    assert dataset.preset == estimate_preset(images)
    assert ILMTrainDataset(images, cfg.replace(ilm=False), "obj_capsule").preset is None
    item = dataset[0]
    assert item.synthetic.shape == item.normal.shape
