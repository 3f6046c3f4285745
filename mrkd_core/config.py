"""Typed, frozen configuration for one MRKD run, with the paper's values as defaults.

Every hyperparameter of the paper (Sec. 4.1) and every convention of the official
code that changes a result has a named field here. The config is serialised to JSON
and hashed; the hash names the run, so two runs with the same hash are the same
experiment. Fields that only change *how* a run executes (device, workers,
checkpoint cadence) are excluded from the hash: see ``RUNTIME_FIELDS``. Fields added after
results were stored are left out of the hash while they hold the value that trains what
was trained before they existed: see ``HASH_NEUTRAL_DEFAULTS``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from mrkd_core.backbones import BACKBONES
from mrkd_core.errors import ConfigError
from mrkd_core.ilm.presets import PRESET_DEFAULT, canonical_preset

ILM_SOURCES = ("same", "other")
ILM_BLENDS = ("swap", "poisson")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")

# ImageNet statistics (Sec. 4.1: "normalized by the mean and variance of the ImageNet dataset").
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# λ of Eq. 2 (Sec. 4.1): the probability that FLM masks a feature position.
DEFAULT_FLM_RATIO = 0.2


def check_flm_ratio(ratio: float) -> None:
    """λ must lie in [0, 1): 1 would mask every position. Raises ConfigError naming the field."""
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"config field 'flm_ratio': λ={ratio} must lie in [0, 1) (1 would mask every position)")


# Fields that do not change what is computed, only where/how fast; not part of the hash.
RUNTIME_FIELDS = frozenset(
    {"device", "num_workers", "checkpoint_every", "progress", "eval_batch_size", "memory_format"}
)

# Result-defining fields added after results were stored under config hashes: left out of
# the hash while they hold the value that reproduces what was trained before they existed,
# so the hashes (and the stored results, checkpoints and models keyed by them) stay valid.
# Any other value is hashed. A change of what such a default *trains* (e.g. the preset
# "default" resolves to for unknown categories) is a new training revision instead
# (mrkd_core/revision.py), which keeps old states from being reused.
HASH_NEUTRAL_DEFAULTS: dict[str, object] = {"ilm_preset": PRESET_DEFAULT, "train_subsample": 0, "test_subsample": 0,
                                             "validation_fraction": 0.0, "tile_size": 0, "tile_stride": 0}

# The smallest tile side: a tile is resized to image_size for the network, and below this a
# tile holds too little of the part for the teacher's receptive field to mean anything.
MIN_TILE_SIZE = 16


@dataclass(frozen=True)
class MRKDConfig:
    """One MRKD training + evaluation. Defaults are the paper's (Sec. 4.1) / official code's."""

    # --- model (Sec. 3.2-3.3) ---
    backbone: str = "wide_resnet50_2"
    # "imagenet" (the backbone's ImageNet weights: torchvision's, downloaded once into the torch
    # cache and sha256-checked, or the file of the backbone's package; mrkd_core.model.weights),
    # "none" (random init, never the paper's setting) or a path/URI to a state dict.
    teacher_weights: str = "imagenet"

    # --- data ---
    image_size: int = 256
    normalize_mean: tuple[float, float, float] = IMAGENET_MEAN
    normalize_std: tuple[float, float, float] = IMAGENET_STD
    # At most this many training / test images, a seeded choice (mrkd_core.data.selection;
    # the test choice keeps every defect type); 0 = all. A subsample is other data, so it
    # is part of the hash; specs set it per dataset (datasets[].subsample).
    train_subsample: int = 0
    test_subsample: int = 0
    # Fraction of train/good held out from training (seeded by ``seed``) for calibrating
    # thresholds on defect-free images the model never saw; 0 = the paper's training set.
    validation_fraction: float = 0.0
    # High-resolution frames (docs/tiling.md): the side of a square tile in pixels of the
    # original image, each tile resized to image_size for the network; 0 = the whole image
    # resized to image_size (the paper's setting). tile_stride: pixels between tile origins
    # (0 = tile_size, i.e. no overlap; smaller overlaps, and overlaps are averaged).
    tile_size: int = 0
    tile_stride: int = 0

    # --- optimisation (Sec. 4.1) ---
    epochs: int = 200
    batch_size: int = 16
    lr: float = 0.005
    betas: tuple[float, float] = (0.5, 0.999)
    seed: int = 111

    # --- ILM (Sec. 3.2): NSA-style synthetic anomalies ---
    ilm: bool = True
    # α in Table 6: fraction of training images that receive synthetic anomalies.
    ilm_fraction: float = 1.0
    # The official code cuts patches from the same image and pastes them plainly; the
    # paper's text says another training image, seamlessly blended. See docs/fidelity.md.
    ilm_source: str = "same"
    ilm_blend: str = "swap"
    # Where and how large the patches are (docs/ilm.md, "Choosing the preset"): "default"
    # (an MVTec category's published NSA preset, else the measured default for unknown
    # categories), "auto" (estimated from the training images), "texture", an MVTec
    # category's name, or parameters like "half_size=0.03:0.15,patches=2".
    ilm_preset: str = PRESET_DEFAULT

    # --- FLM (Sec. 3.3): feature-level masking ---
    flm: bool = True
    flm_ratio: float = DEFAULT_FLM_RATIO  # λ in Eq. 2
    flm_at_test: bool = True  # Sec. 3.4: "also carry out masking at the feature level" at test
    flm_test_seed: int = 0  # seeds the test-time masks so scores are repeatable

    # --- scoring (Eq. 5-6) ---
    score_scales: tuple[int, ...] = (1, 2, 3)  # Table 7: which SM^l are fused
    gaussian_sigma: float = 4.0

    # --- numerics (hashed: bf16 changes results) ---
    precision: str = "fp32"  # "bf16" = autocast on CUDA only; CPU always runs fp32

    # --- runtime (not hashed) ---
    # auto = the layout measured faster for the device and image size (mrkd_core.device.
    # use_channels_last); channels_last / contiguous force NHWC / NCHW. Speed only.
    memory_format: str = "auto"
    device: str = "auto"
    num_workers: int = 2
    checkpoint_every: int = 1  # epochs between checkpoints
    # The official code tests with batch 1; with the test-time masks fixed per model, any
    # batch size gives the same scores (float32 rounding), and 16 evaluates 3-4× faster on
    # CPU (bench/bench_inference.py, docs/performance.md).
    eval_batch_size: int = 16
    progress: bool = True

    def __post_init__(self) -> None:
        validate(self)
        # One spelling per tiling: a stride equal to the tile is its default (0), so that
        # "--tile-size 256" and "--tile-size 256 --tile-stride 256" are one experiment.
        if self.tile_stride == self.tile_size:
            object.__setattr__(self, "tile_stride", 0)
        # One spelling per preset ('Bottle' = 'bottle'; parameters in a fixed order), so that
        # equal presets hash equally.
        object.__setattr__(self, "ilm_preset", canonical_preset(self.ilm_preset))

    @property
    def tiled(self) -> bool:
        """Whether images are processed in tiles (``tile_size`` > 0) rather than resized whole."""
        return self.tile_size > 0

    @property
    def stride(self) -> int:
        """Pixels between tile origins: ``tile_stride``, or ``tile_size`` when that is 0 (no overlap)."""
        return self.tile_stride or self.tile_size

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> "MRKDConfig":
        """Build from a mapping; unknown keys and wrong types are a ConfigError naming the key."""
        known = {f.name: f for f in fields(cls)}
        data = _upgrade_legacy(data, source)
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(
                f"{source}: unknown config field(s) {unknown}; valid fields: {sorted(known)}"
            )
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            kwargs[name] = _coerce(name, value, known[name], source)
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str, *, source: str = "config") -> "MRKDConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{source}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object of config fields")
        return cls.from_dict(data, source=source)

    def replace(self, **changes: Any) -> "MRKDConfig":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ hash
    def hashed_dict(self) -> dict[str, Any]:
        """The fields that define the result (everything but RUNTIME_FIELDS and the
        HASH_NEUTRAL_DEFAULTS fields at their neutral value)."""
        return {k: v for k, v in self.to_dict().items()
                if k not in RUNTIME_FIELDS and not (k in HASH_NEUTRAL_DEFAULTS and v == HASH_NEUTRAL_DEFAULTS[k])}

    def config_hash(self) -> str:
        """Stable 16-hex-digit name of the experiment (sha256 of the canonical JSON)."""
        canon = json.dumps(self.hashed_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:16]


def _upgrade_legacy(data: dict[str, Any], source: str) -> dict[str, Any]:
    """Read configs stored before ``memory_format`` replaced the boolean ``channels_last``.

    Models and checkpoints written then must stay loadable; the old field meant NHWC
    when true and NCHW when false, so that is what it maps to.
    """
    if "channels_last" not in data:
        return data
    data = dict(data)
    legacy = data.pop("channels_last")
    if not isinstance(legacy, bool):
        raise ConfigError(f"{source}: legacy field 'channels_last' must be true or false, got {legacy!r}; "
                          "use memory_format: auto, channels_last or contiguous")
    data.setdefault("memory_format", "channels_last" if legacy else "contiguous")
    return data


def _coerce(name: str, value: Any, f: dataclasses.Field, source: str) -> Any:
    """Check a JSON/YAML value against the field's type; lists become tuples."""
    default = f.default
    kind = type(default)
    bad = ConfigError(
        f"{source}: field '{name}' must be {kind.__name__}"
        f"{' of numbers' if kind is tuple else ''}, got {value!r} ({type(value).__name__})"
    )
    if kind is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if kind is str:
        if name == "ilm_preset" and isinstance(value, Mapping):
            return canonical_preset(value)  # explicit parameters as a JSON/YAML mapping
        if not isinstance(value, str):
            raise bad
        return value
    if kind is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad
        item_type = type(default[0]) if default else float
        out = []
        for v in value:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise bad
            out.append(item_type(v))
        return tuple(out)
    return value


def validate(cfg: MRKDConfig) -> None:
    """Reject values the paper's method cannot run with; each error names the field and the fix."""

    def fail(field_name: str, msg: str) -> None:
        raise ConfigError(f"config field '{field_name}': {msg}")

    if cfg.backbone not in BACKBONES:
        fail("backbone", f"unknown backbone {cfg.backbone!r}; choose one of {', '.join(BACKBONES)}")
    if not isinstance(cfg.teacher_weights, str) or not cfg.teacher_weights:
        fail("teacher_weights", "use 'imagenet', 'none', or a path/URI to a state dict")
    if cfg.image_size < 32 or cfg.image_size % 32:
        fail("image_size", f"{cfg.image_size} must be a multiple of 32 and at least 32 (e.g. 256)")
    if cfg.tile_size < 0 or 0 < cfg.tile_size < MIN_TILE_SIZE:
        fail("tile_size", f"{cfg.tile_size} must be 0 (whole image) or at least {MIN_TILE_SIZE} pixels "
                          "of the original image (e.g. 256)")
    if cfg.tile_stride < 0 or (cfg.tile_stride and not cfg.tile_size):
        fail("tile_stride", f"{cfg.tile_stride}: must be ≥ 0 and needs tile_size > 0 (set --tile-size too)")
    if cfg.tile_size and cfg.tile_stride > cfg.tile_size:
        fail("tile_stride", f"{cfg.tile_stride} is larger than tile_size {cfg.tile_size}: pixels between the tiles "
                            f"would never be inspected; use a stride ≤ {cfg.tile_size} (0 = tile_size)")
    if not 0.0 <= cfg.validation_fraction < 1.0:
        fail("validation_fraction", f"{cfg.validation_fraction} must lie in [0, 1) (0 = train on all of train/good)")
    if cfg.epochs < 1:
        fail("epochs", f"{cfg.epochs} must be at least 1")
    if cfg.batch_size < 1:
        fail("batch_size", f"{cfg.batch_size} must be at least 1")
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        fail("lr", f"{cfg.lr} must be a positive number")
    if len(cfg.betas) != 2 or not all(0 <= b < 1 for b in cfg.betas):
        fail("betas", f"{cfg.betas} must be two numbers in [0, 1)")
    if not 0.0 <= cfg.ilm_fraction <= 1.0:
        fail("ilm_fraction", f"α={cfg.ilm_fraction} must lie in [0, 1]")
    if cfg.ilm_source not in ILM_SOURCES:
        fail("ilm_source", f"{cfg.ilm_source!r}; choose one of {', '.join(ILM_SOURCES)}")
    if cfg.ilm_blend not in ILM_BLENDS:
        fail("ilm_blend", f"{cfg.ilm_blend!r}; choose one of {', '.join(ILM_BLENDS)}")
    canonical_preset(cfg.ilm_preset)  # its ConfigError names the field and the bad part
    for name in ("train_subsample", "test_subsample"):
        if getattr(cfg, name) < 0:
            fail(name, f"{getattr(cfg, name)} must be ≥ 0 (0 = every image)")
    check_flm_ratio(cfg.flm_ratio)
    if not cfg.score_scales or any(s not in (1, 2, 3) for s in cfg.score_scales) or len(
        set(cfg.score_scales)
    ) != len(cfg.score_scales):
        fail("score_scales", f"{cfg.score_scales} must be distinct values from 1, 2, 3")
    if cfg.gaussian_sigma < 0:
        fail("gaussian_sigma", f"{cfg.gaussian_sigma} must be ≥ 0 (0 disables smoothing)")
    if len(cfg.normalize_mean) != 3 or len(cfg.normalize_std) != 3 or any(
        s <= 0 for s in cfg.normalize_std
    ):
        fail("normalize_std", "mean and std need three values each, std > 0")
    if cfg.precision not in PRECISIONS:
        fail("precision", f"{cfg.precision!r}; choose one of {', '.join(PRECISIONS)}")
    if cfg.memory_format not in MEMORY_FORMATS:
        fail("memory_format", f"{cfg.memory_format!r}; choose one of {', '.join(MEMORY_FORMATS)}")
    if cfg.device not in DEVICES:
        fail("device", f"{cfg.device!r}; choose one of {', '.join(DEVICES)}")
    if cfg.num_workers < 0:
        fail("num_workers", f"{cfg.num_workers} must be ≥ 0")
    if cfg.checkpoint_every < 1:
        fail("checkpoint_every", f"{cfg.checkpoint_every} must be ≥ 1")
    if cfg.eval_batch_size < 1:
        fail("eval_batch_size", f"{cfg.eval_batch_size} must be ≥ 1")


def paper_defaults() -> MRKDConfig:
    """The configuration of the paper's main results (Tables 1-2)."""
    return MRKDConfig()
