"""Experiment specs: which datasets, categories and configurations a benchmark trains.

Specs are data (YAML under ``flows/specs/``, under version control). A spec expands
into ``Task`` records, one per (dataset, category, variant); a task is what the flows
fan out and what ``mrkd_core.runner.train_evaluate`` runs. Tasks travel between
processes as JSON-safe dicts, never as tensors.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mrkd_core.config import MRKDConfig
from mrkd_core.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SPEC_DIR = Path(__file__).resolve().parent.parent / "flows" / "specs"
_SPEC_KEYS = {"name", "description", "datasets", "base", "variants", "scale_sets"}
_DATASET_KEYS = {"name", "root", "categories", "generate"}
_GENERATE_KEYS = {"kind", "categories", "n_train", "n_test_good", "n_test_defect", "size", "seed"}


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    root: str | None = None
    categories: tuple[str, ...] | None = None  # None = all categories found
    generate: tuple[tuple[str, Any], ...] | None = None  # synthetic dataset parameters

    def root_path(self, data_root: str) -> str:
        """The dataset's folder: explicit ``root`` (relative to ``data_root``) or ``<data_root>/<name>``."""
        if self.root:
            return self.root if os.path.isabs(self.root) or "://" in self.root else os.path.join(data_root, self.root)
        return os.path.join(data_root, self.name if not self.generate else f"generated-{self.name}")


@dataclass(frozen=True)
class Task:
    """One training + evaluation: the unit the flows fan out."""

    dataset: str
    category: str
    variant: str
    config: MRKDConfig
    data_root: str
    spec: str = ""
    narrowed: bool = False
    scale_sets: tuple[tuple[int, ...], ...] = ()

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.category}/{self.config.config_hash()}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset, "category": self.category, "variant": self.variant,
            "config": self.config.to_dict(), "data_root": self.data_root, "spec": self.spec,
            "narrowed": self.narrowed, "scale_sets": [list(s) for s in self.scale_sets],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Task":
        return cls(
            dataset=d["dataset"], category=d["category"], variant=d["variant"],
            config=MRKDConfig.from_dict(d["config"], source="task"), data_root=d["data_root"],
            spec=d.get("spec", ""), narrowed=bool(d.get("narrowed", False)),
            scale_sets=tuple(tuple(int(x) for x in s) for s in d.get("scale_sets", [])),
        )


@dataclass(frozen=True)
class ExperimentSpec:
    name: str
    datasets: tuple[DatasetEntry, ...]
    base: tuple[tuple[str, Any], ...] = ()
    variants: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = (("mrkd", ()),)
    scale_sets: tuple[tuple[int, ...], ...] = ()
    description: str = ""
    narrowed: bool = False
    narrowing: tuple[tuple[str, Any], ...] = field(default=())
    source: str = ""  # the YAML file, for error messages

    def configs(self) -> dict[str, MRKDConfig]:
        """variant name → its config (base + variant overrides + narrowing)."""
        out = {}
        for vname, overrides in self.variants:
            data = {**dict(self.base), **dict(overrides), **dict(self.narrowing)}
            where = f"{self.source or 'spec ' + repr(self.name)}, variant '{vname}'"
            try:
                out[vname] = MRKDConfig.from_dict(data, source=where)
            except ConfigError as exc:
                msg = str(exc)
                raise ConfigError(msg if msg.startswith(where) else f"{where}: {msg}") from None
        return out

    def tasks(self, data_root: str) -> list[Task]:
        from mrkd_core.data import get_dataset

        configs = self.configs()
        tasks = []
        for entry in self.datasets:
            root = entry.root_path(data_root)
            if entry.categories:
                cats = list(entry.categories)
            else:
                try:
                    cats = get_dataset(entry.name).categories(root)
                except DataError as exc:
                    raise DataError(f"spec '{self.name}': {exc}; download it first (python -m flows.download "
                                    f"--spec {self.name}) or point MRKD_DATA_ROOT at it") from None
                if not cats:
                    raise ConfigError(f"spec '{self.name}': dataset '{entry.name}' has no categories in {root} — "
                                      f"download or generate it first (python -m flows.download --spec {self.name})")
            for cat in cats:
                for vname, cfg in configs.items():
                    tasks.append(Task(entry.name, cat, vname, cfg, root, self.name, self.narrowed, self.scale_sets))
        return tasks

    def narrow(self, categories: list[str] | None = None, epochs: int | None = None,
               image_size: int | None = None) -> "ExperimentSpec":
        """A quick version of the spec; reports say it was narrowed."""
        if not (categories or epochs or image_size):
            return self
        datasets = self.datasets
        if categories:
            datasets = tuple(dataclasses.replace(d, categories=tuple(categories)) for d in datasets)
        narrowing = dict(self.narrowing)
        if epochs:
            narrowing["epochs"] = int(epochs)
        if image_size:
            narrowing["image_size"] = int(image_size)
        spec = dataclasses.replace(self, datasets=datasets, narrowed=True, narrowing=tuple(sorted(narrowing.items())))
        spec.configs()  # validate now, not inside a remote task
        return spec


def _freeze(d: dict) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in d.items()))


def _check_keys(mapping: Any, allowed: set[str], where: str, source: str) -> dict:
    if not isinstance(mapping, dict):
        raise ConfigError(f"{source}: {where} must be a mapping, got {type(mapping).__name__}")
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown} in {where}; allowed: {sorted(allowed)}")
    return mapping


def parse_spec(data: Any, source: str) -> ExperimentSpec:
    """Validate a parsed YAML document into an ExperimentSpec (every error names file and key)."""
    data = _check_keys(data, _SPEC_KEYS, "the spec", source)
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{source}: 'name' must be a non-empty string")
    raw_datasets = data.get("datasets")
    if not isinstance(raw_datasets, list) or not raw_datasets:
        raise ConfigError(f"{source}: 'datasets' must be a non-empty list")
    datasets = []
    for i, d in enumerate(raw_datasets):
        where = f"datasets[{i}]"
        d = _check_keys(d, _DATASET_KEYS, where, source)
        if not isinstance(d.get("name"), str):
            raise ConfigError(f"{source}: {where}.name must be a dataset name string")
        cats = d.get("categories", "all")
        if cats == "all" or cats is None:
            cats_t = None
        elif isinstance(cats, list) and all(isinstance(c, (str, int)) for c in cats):
            cats_t = tuple(str(c) for c in cats)
        else:
            raise ConfigError(f"{source}: {where}.categories must be 'all' or a list of names")
        root = d.get("root")
        if root is not None and not isinstance(root, str):
            raise ConfigError(f"{source}: {where}.root must be a string path")
        gen = d.get("generate")
        if gen is not None:
            gen = _check_keys(gen, _GENERATE_KEYS, f"{where}.generate", source)
            if gen.get("kind", "synthetic_mvtec") != "synthetic_mvtec":
                raise ConfigError(f"{source}: {where}.generate.kind must be 'synthetic_mvtec'")
            gen = _freeze(gen)
        datasets.append(DatasetEntry(d["name"], root, cats_t, gen))
    base = data.get("base") or {}
    _check_keys(base, {f.name for f in dataclasses.fields(MRKDConfig)}, "base", source)
    variants_raw = data.get("variants") or {"mrkd": {}}
    if not isinstance(variants_raw, dict):
        raise ConfigError(f"{source}: 'variants' must map a variant name to config overrides")
    variants = []
    for vname, overrides in variants_raw.items():
        overrides = overrides or {}
        _check_keys(overrides, {f.name for f in dataclasses.fields(MRKDConfig)}, f"variants.{vname}", source)
        variants.append((str(vname), _freeze(overrides)))
    scale_sets_raw = data.get("scale_sets") or []
    if not isinstance(scale_sets_raw, list) or not all(
        isinstance(s, list) and s and all(isinstance(x, int) and x in (1, 2, 3) for x in s) for s in scale_sets_raw
    ):
        raise ConfigError(f"{source}: 'scale_sets' must be a list of lists of scales from 1, 2, 3")
    desc = data.get("description", "")
    if not isinstance(desc, str):
        raise ConfigError(f"{source}: 'description' must be a string")
    spec = ExperimentSpec(name=name, datasets=tuple(datasets), base=_freeze(base), variants=tuple(variants),
                          scale_sets=tuple(tuple(s) for s in scale_sets_raw), description=desc, source=source)
    spec.configs()  # every variant must be a valid config (errors name the spec and variant)
    return spec


def available_specs() -> list[str]:
    return sorted(p.stem for p in SPEC_DIR.glob("*.yaml"))


def load_spec(name_or_path: str) -> ExperimentSpec:
    """A spec by name (``flows/specs/<name>.yaml``) or by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SPEC_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"experiment spec {name_or_path!r} not found; available: {', '.join(available_specs())}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    return parse_spec(data, str(path))


def prepare_data(spec: ExperimentSpec, data_root: str) -> list[str]:
    """Generate the spec's synthetic datasets (idempotent); returns the roots it made."""
    from mrkd_core.data.synthetic import make_synthetic_mvtec

    made = []
    for entry in spec.datasets:
        if not entry.generate:
            continue
        params = dict(entry.generate)
        params.pop("kind", None)
        if "categories" in params:
            params["categories"] = tuple(params["categories"])
        root = Path(entry.root_path(data_root))
        marker = root / ".mrkd_generated.json"
        wanted = json.dumps(params, sort_keys=True, default=list)
        if marker.is_file() and marker.read_text() == wanted:
            continue
        make_synthetic_mvtec(root, **params)
        marker.write_text(wanted)
        made.append(str(root))
        log.info("generated dataset %s in %s", entry.name, root)
    return made
