"""Experiment specs: which datasets, categories and configurations a benchmark trains.

Specs are data: YAML files found by name along a search path that the caller passes
(``load_spec(name, search_path)``). The library has no folder of its own: the flows pass
``MRKD_SPEC_PATH`` (read at the edge, :func:`parse_search_path`) followed by their own
``flows/specs/``, so a team's specs shadow the shipped ones of the same name. A path
(anything with a suffix or a ``/``) is read as it is.

A spec expands into ``Task`` records, one per (dataset, category, variant); a task is
what the flows fan out and what ``mrkd_core.engine.train_evaluate`` runs. Records
serialise themselves (``to_dict``/``from_dict``) and travel between processes as
JSON-safe dicts, never as tensors.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mrkd_core.config import MRKDConfig
from mrkd_core.errors import ConfigError, DataError
from mrkd_core.ilm.presets import canonical_preset

log = logging.getLogger(__name__)

ENV_SPEC_PATH = "MRKD_SPEC_PATH"  # read by the callers (the flows), never here: see parse_search_path
_SPEC_KEYS = {"name", "description", "datasets", "base", "variants", "scale_sets"}
_DATASET_KEYS = {"name", "root", "categories", "generate", "subsample"}
# datasets[].subsample → the config fields it sets on that dataset's tasks.
_SUBSAMPLE_FIELDS = {"train": "train_subsample", "test": "test_subsample"}
_GENERATE_KEYS = {"kind", "categories", "n_train", "n_test_good", "n_test_defect", "size", "seed", "defect_px"}


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset of a spec: its registered name, an optional folder, categories, generation.

    ``root``: the folder, absolute or relative to the data root (None: ``<data root>/<name>``,
    ``generated-<name>`` for generated ones). ``categories``: None means every category
    found. ``generate``: the parameters of ``make_synthetic_mvtec`` for a generated
    dataset (sorted key/value pairs, hashable), None for a real one. ``subsample``: at
    most this many ``train`` / ``test`` images per category (sorted pairs), set as the
    config fields ``train_subsample`` / ``test_subsample`` of this dataset's tasks, so a
    subsample is keyed apart from the whole data (``mrkd_core.data.selection``).
    """

    name: str
    root: str | None = None
    categories: tuple[str, ...] | None = None  # None = all categories found
    generate: tuple[tuple[str, Any], ...] | None = None  # synthetic dataset parameters
    subsample: tuple[tuple[str, int], ...] | None = None  # (("test", m), ("train", n))

    def config_overrides(self) -> dict[str, int]:
        """The config fields this entry sets on its tasks (its subsample)."""
        return {_SUBSAMPLE_FIELDS[k]: n for k, n in self.subsample or ()}

    def root_path(self, data_root: str) -> str:
        """The dataset's folder: explicit ``root`` (relative to ``data_root``) or ``<data_root>/<name>``."""
        if self.root:
            return self.root if os.path.isabs(self.root) or "://" in self.root else os.path.join(data_root, self.root)
        return os.path.join(data_root, self.name if not self.generate else f"generated-{self.name}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: tuples become lists, ``generate`` a mapping."""
        return {
            "name": self.name, "root": self.root,
            "categories": list(self.categories) if self.categories is not None else None,
            "generate": {k: list(v) if isinstance(v, tuple) else v for k, v in self.generate}
            if self.generate is not None else None,
            "subsample": dict(self.subsample) if self.subsample is not None else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DatasetEntry":
        """The inverse of :meth:`to_dict`."""
        cats, gen, sub = d.get("categories"), d.get("generate"), d.get("subsample")
        return cls(d["name"], d.get("root"), tuple(cats) if cats is not None else None,
                   _freeze(gen) if gen is not None else None, _freeze(sub) if sub is not None else None)


@dataclass(frozen=True)
class Task:
    """One training + evaluation: the unit the flows fan out and ``engine.train_evaluate`` runs.

    ``data_root`` is the dataset's folder (already resolved, e.g. by ``DatasetEntry.root_path``);
    ``spec`` and ``narrowed`` say where the task came from (tables and reports show them);
    ``scale_sets`` lists extra fusions of scales to score (Table 7).
    """

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
        """``<dataset>/<category>/<config_hash>``: the one name of a task's work in the store.

        The run directory (``runs/<run_id>/<key>``), the checkpoints (``checkpoints/<key>``)
        and the claim (``claims/<key>.json``) are all derived from it (``mrkd_core.engine``).
        """
        return f"{self.dataset}/{self.category}/{self.config.config_hash()}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record; ``key`` is included for readers of the record and ignored by :meth:`from_dict`."""
        return {
            "dataset": self.dataset, "category": self.category, "variant": self.variant,
            "config": self.config.to_dict(), "data_root": self.data_root, "spec": self.spec,
            "narrowed": self.narrowed, "scale_sets": [list(s) for s in self.scale_sets], "key": self.key,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Task":
        """The inverse of :meth:`to_dict` (the config is validated again)."""
        return cls(
            dataset=d["dataset"], category=d["category"], variant=d["variant"],
            config=MRKDConfig.from_dict(d["config"], source="task"), data_root=d["data_root"],
            spec=d.get("spec", ""), narrowed=bool(d.get("narrowed", False)),
            scale_sets=tuple(tuple(int(x) for x in s) for s in d.get("scale_sets", [])),
        )


# A task's outcome (TaskOutcome.status).
TRAINED, SKIPPED, FAILED = "trained", "skipped", "failed"


@dataclass(frozen=True)
class TaskOutcome:
    """What became of one task: the one record the engine returns and the flows pass on.

    ``status``: ``trained`` (trained here, or resumed and finished), ``skipped`` (its key
    was complete for the same inputs) or ``failed`` (:meth:`failure`: ``error`` says why,
    ``Type: first line``). ``run_id``: the run id its rows are recorded under, the run's
    own or ``<run id>.<n>`` when the run already held another result of the key
    (``layout.record_run_id``). ``run_dir``: the run directory holding the result, relative to
    the store (a skipped task's is the run that trained it). ``rows``: its summary rows,
    one per fused scale set, the config's own fusion first (``results.summary_rows``).
    ``resumed_from_epoch``: completed epochs taken from a checkpoint (trained tasks).
    ``calibration``: the calibration's one-line summary (None: uncalibrated or not trained
    here). ``registry``: what the model registry decided (``registry.tracking.track``) when
    the run registers results. ``replaces``: the key's earlier result a training could not
    reuse, why, and which training images changed since (``layout.Replacement.to_dict``). The flows add where and when it ran (``started``,
    ``finished`` as Unix times, ``seconds``, ``node``: node id, pid, host, GPU ids).
    """

    key: str
    dataset: str
    category: str
    variant: str
    status: str
    run_id: str | None = None
    run_dir: str | None = None
    rows: tuple[dict[str, Any], ...] = ()
    evaluated: bool = False
    resumed_from_epoch: int | None = None
    calibration: str | None = None
    registry: dict[str, Any] | None = None
    replaces: dict[str, Any] | None = None
    error: str | None = None
    started: float | None = None
    finished: float | None = None
    seconds: float | None = None
    node: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, task: Task, status: str, **fields: Any) -> "TaskOutcome":
        """The outcome of ``task`` with ``status`` and the given fields."""
        return cls(task.key, task.dataset, task.category, task.variant, status, **fields)

    @classmethod
    def failure(cls, task: Task | dict[str, Any], error: str) -> "TaskOutcome":
        """A failed task (``task`` as a :class:`Task` or its ``to_dict`` record) with its error line."""
        if isinstance(task, Task):
            return cls.of(task, FAILED, error=error)
        return cls(task["key"], task["dataset"], task["category"], task["variant"], FAILED, error=error)

    def replace(self, **changes: Any) -> "TaskOutcome":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record (what Prefect and Ray carry): the node's entries at the top level."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "node"}
        d["rows"] = [dict(r) for r in self.rows]
        return {**d, **self.node}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TaskOutcome":
        """The inverse of :meth:`to_dict`."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        kwargs["rows"] = tuple(dict(r) for r in d.get("rows") or ())
        kwargs["node"] = {k: v for k, v in d.items() if k not in names}
        return cls(**kwargs)


@dataclass(frozen=True)
class ExperimentSpec:
    """A parsed spec: datasets × variants (base config + each variant's overrides), plus narrowing.

    Built by :func:`parse_spec` / :func:`load_spec`; :meth:`tasks` expands it, :meth:`narrow`
    makes a quick version of it that reports call out.
    """

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
            overrides = entry.config_overrides()
            for cat in cats:
                for vname, cfg in configs.items():
                    cfg = cfg.replace(**overrides) if overrides else cfg
                    tasks.append(Task(entry.name, cat, vname, cfg, root, self.name, self.narrowed, self.scale_sets))
        return tasks

    def narrow(self, categories: list[str] | None = None, epochs: int | None = None,
               image_size: int | None = None) -> "ExperimentSpec":
        """A quick version of the spec; reports say it was narrowed.

        ``categories`` keeps, in each dataset, those of its categories that are named (a
        dataset that lists none of them is left out; one that takes every category found
        gets them all). Raises ``ConfigError`` when a named category is in no dataset.
        """
        if not (categories or epochs or image_size):
            return self
        datasets = self.datasets
        if categories:
            datasets = self._with_categories(tuple(categories))
        narrowing = dict(self.narrowing)
        if epochs:
            narrowing["epochs"] = int(epochs)
        if image_size:
            narrowing["image_size"] = int(image_size)
        spec = dataclasses.replace(self, datasets=datasets, narrowed=True, narrowing=tuple(sorted(narrowing.items())))
        spec.configs()  # validate now, not inside a remote task
        return spec

    def _with_categories(self, categories: tuple[str, ...]) -> tuple[DatasetEntry, ...]:
        """The datasets narrowed to ``categories`` (see :meth:`narrow`)."""
        kept, found = [], set()
        for d in self.datasets:
            mine = categories if d.categories is None else tuple(c for c in categories if c in d.categories)
            if mine:
                kept.append(dataclasses.replace(d, categories=mine))
                found.update(mine)
        missing = [c for c in categories if c not in found]
        if missing:
            listed = sorted({c for d in self.datasets for c in d.categories or ()})
            raise ConfigError(f"spec {self.name!r}: categories {missing} are in none of its datasets; "
                              f"choose from {listed}")
        return tuple(kept)


def _freeze(d: dict) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in d.items()))


def _preset_text(overrides: dict, where: str, source: str) -> dict:
    """``ilm_preset`` given as a mapping of parameters (YAML) → its canonical text, so the spec stays hashable."""
    value = overrides.get("ilm_preset")
    if not isinstance(value, dict):
        return overrides
    try:
        return {**overrides, "ilm_preset": canonical_preset(value)}
    except ConfigError as exc:
        raise ConfigError(f"{source}: {where}: {exc}") from None


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
        sub = d.get("subsample")
        if sub is not None:
            sub = _check_keys(sub, set(_SUBSAMPLE_FIELDS), f"{where}.subsample", source)
            for k, n in sub.items():
                if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                    raise ConfigError(f"{source}: {where}.subsample.{k} must be a whole number of images >= 1, "
                                      f"got {n!r}")
            sub = _freeze(sub)
        datasets.append(DatasetEntry(d["name"], root, cats_t, gen, sub))
    base = data.get("base") or {}
    _check_keys(base, {f.name for f in dataclasses.fields(MRKDConfig)}, "base", source)
    variants_raw = data.get("variants") or {"mrkd": {}}
    if not isinstance(variants_raw, dict):
        raise ConfigError(f"{source}: 'variants' must map a variant name to config overrides")
    variants = []
    for vname, overrides in variants_raw.items():
        overrides = overrides or {}
        _check_keys(overrides, {f.name for f in dataclasses.fields(MRKDConfig)}, f"variants.{vname}", source)
        variants.append((str(vname), _freeze(_preset_text(overrides, f"variants.{vname}", source))))
    scale_sets_raw = data.get("scale_sets") or []
    if not isinstance(scale_sets_raw, list) or not all(
        isinstance(s, list) and s and all(isinstance(x, int) and x in (1, 2, 3) for x in s) for s in scale_sets_raw
    ):
        raise ConfigError(f"{source}: 'scale_sets' must be a list of lists of scales from 1, 2, 3")
    desc = data.get("description", "")
    if not isinstance(desc, str):
        raise ConfigError(f"{source}: 'description' must be a string")
    spec = ExperimentSpec(name=name, datasets=tuple(datasets), base=_freeze(_preset_text(base, "base", source)), variants=tuple(variants),
                          scale_sets=tuple(tuple(s) for s in scale_sets_raw), description=desc, source=source)
    spec.configs()  # every variant must be a valid config (errors name the spec and variant)
    return spec


def parse_search_path(value: str | None) -> list[Path]:
    """The folders of an ``MRKD_SPEC_PATH`` value (``os.pathsep``-separated, empty entries skipped)."""
    return [Path(p).expanduser() for p in (value or "").split(os.pathsep) if p.strip()]


def available_specs(search_path: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Names of the specs (``<name>.yaml``) in the folders of ``search_path``."""
    return sorted({p.stem for d in search_path for p in Path(d).glob("*.yaml")})


def find_spec(name: str, search_path: Sequence[str | os.PathLike[str]]) -> Path | None:
    """``<dir>/<name>.yaml`` of the first folder of ``search_path`` that has it."""
    for d in search_path:
        path = Path(d) / f"{name}.yaml"
        if path.is_file():
            return path
    return None


def load_spec(name_or_path: str, search_path: Sequence[str | os.PathLike[str]] = ()) -> ExperimentSpec:
    """A spec by name (the first ``<dir>/<name>.yaml`` along ``search_path``) or by path.

    A path is anything with a suffix or a path separator. An unknown name is a
    ``ConfigError`` listing the folders searched and the specs found there.
    """
    path: Path | None = Path(name_or_path)
    if not path.suffix and os.sep not in name_or_path and "/" not in name_or_path:
        path = find_spec(name_or_path, search_path)
    if path is None or not path.is_file():
        where = ", ".join(str(d) for d in search_path) or "no folder (pass a YAML path, or set MRKD_SPEC_PATH)"
        raise ConfigError(f"experiment spec {name_or_path!r} not found in {where}; "
                          f"available: {', '.join(available_specs(search_path)) or 'none'}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    return parse_spec(data, str(path))


def generate_dataset(entry: DatasetEntry, data_root: str) -> str | None:
    """Generate ``entry``'s synthetic dataset into its folder unless it is there already.

    Returns the folder when it was (re)generated, None when it was up to date or
    ``entry`` is not a generated dataset. A marker holding the parameters makes a second
    call a no-op; callers running in parallel serialise with a lock (``flows.download``).
    """
    from mrkd_core.data.synthetic import make_synthetic_mvtec

    if not entry.generate:
        return None
    params = dict(entry.generate)
    params.pop("kind", None)
    if "categories" in params:
        params["categories"] = tuple(params["categories"])
    root = Path(entry.root_path(data_root))
    marker = root / ".mrkd_generated.json"
    wanted = json.dumps(params, sort_keys=True, default=list)
    if marker.is_file() and marker.read_text() == wanted:
        return None
    make_synthetic_mvtec(root, **params)
    marker.write_text(wanted)
    log.info("generated dataset %s in %s", entry.name, root)
    return str(root)


def prepare_data(spec: ExperimentSpec, data_root: str) -> list[str]:
    """Generate the spec's synthetic datasets (idempotent); returns the roots it made."""
    made = (generate_dataset(entry, data_root) for entry in spec.datasets)
    return [root for root in made if root is not None]
