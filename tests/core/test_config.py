"""The config: paper defaults, validation errors that name the field, a stable hash."""

import json

import pytest

from mrkd_core.config import RUNTIME_FIELDS, MRKDConfig
from mrkd_core.errors import ConfigError


def test_paper_defaults():
    cfg = MRKDConfig()
    # Sec. 4.1 and the official code's conventions (stack-notes).
    assert cfg.backbone == "wide_resnet50_2"
    assert (cfg.lr, cfg.betas, cfg.batch_size, cfg.epochs, cfg.image_size) == (0.005, (0.5, 0.999), 16, 200, 256)
    assert (cfg.flm_ratio, cfg.ilm_fraction, cfg.gaussian_sigma) == (0.2, 1.0, 4.0)
    assert (cfg.ilm_source, cfg.ilm_blend, cfg.score_scales, cfg.seed) == ("same", "swap", (1, 2, 3), 111)
    assert cfg.ilm and cfg.flm and cfg.flm_at_test


def test_json_roundtrip_and_hash_stable():
    cfg = MRKDConfig(backbone="resnet18", flm_ratio=0.4, score_scales=(2, 3))
    back = MRKDConfig.from_json(cfg.to_json())
    assert back == cfg and back.config_hash() == cfg.config_hash()
    assert len(cfg.config_hash()) == 16
    # A hash is a function of the result-defining fields only.
    assert cfg.replace(device="cpu", num_workers=7).config_hash() == cfg.config_hash()
    assert cfg.replace(flm_ratio=0.2).config_hash() != cfg.config_hash()
    assert "device" in RUNTIME_FIELDS and "flm_ratio" not in RUNTIME_FIELDS


def test_fields_added_later_keep_the_stored_hashes_at_their_neutral_value():
    """Adding ``validation_fraction`` must not rename every stored result, checkpoint and model."""
    assert MRKDConfig().config_hash() == "4facc73f56d158fc"  # the hash of the defaults before the field
    small = MRKDConfig(backbone="resnet18", image_size=64, teacher_weights="none", epochs=1)
    assert small.config_hash() == "d291478eee0b1eb2"
    assert small.replace(validation_fraction=0.2).config_hash() != small.config_hash()
    assert MRKDConfig.from_dict({"backbone": "resnet18"}).validation_fraction == 0.0  # older files load


@pytest.mark.parametrize(
    "field,value,fragment",
    [
        ("validation_fraction", 1.0, "validation_fraction"),
        ("flm_ratio", 1.0, "flm_ratio"),
        ("flm_ratio", -0.1, "flm_ratio"),
        ("ilm_fraction", 1.5, "ilm_fraction"),
        ("backbone", "vgg16", "backbone"),
        ("image_size", 100, "image_size"),
        ("score_scales", (4,), "score_scales"),
        ("ilm_blend", "mix", "ilm_blend"),
        ("device", "tpu", "device"),
    ],
)
def test_invalid_values_name_the_field(field, value, fragment):
    with pytest.raises(ConfigError, match=fragment):
        MRKDConfig(**{field: value})


def test_unknown_keys_and_wrong_types_are_named():
    with pytest.raises(ConfigError, match="flm_ration"):
        MRKDConfig.from_dict({"flm_ration": 0.2})
    with pytest.raises(ConfigError, match="'epochs' must be int"):
        MRKDConfig.from_dict({"epochs": "ten"})
    with pytest.raises(ConfigError, match="'ilm' must be bool"):
        MRKDConfig.from_dict({"ilm": "yes"})
    with pytest.raises(ConfigError, match="not valid JSON"):
        MRKDConfig.from_json("{nope")
    # ints are accepted for floats, lists for tuples
    cfg = MRKDConfig.from_dict(json.loads('{"lr": 1, "betas": [0.9, 0.99]}'))
    assert cfg.lr == 1.0 and cfg.betas == (0.9, 0.99)
