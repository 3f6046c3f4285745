"""The dataset catalog: name → dataset layout. Each dataset adds itself in its own module with ``@catalogued``.

Adding a dataset (e.g. VisA) is one new file in ``mrkd_core/data/`` with a class decorated
``@catalogued("visa")``: ``discover()`` imports every module of this package that is not
infrastructure, so nothing else has to be edited. (The *model* registry, versions and
champions, is :mod:`mrkd_core.registry`; this is only the table of dataset names.)
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Callable
from typing import TypeVar

from mrkd_core.data.base import DatasetLayout
from mrkd_core.data.download import sha256_env_var
from mrkd_core.errors import ConfigError

log = logging.getLogger(__name__)

# The catalogued instances, by name. Filled when ``mrkd_core.data`` is imported.
DATASETS: dict[str, DatasetLayout] = {}

# Modules of this package that hold no dataset (never imported by discover()).
_INFRASTRUCTURE = frozenset(
    {"base", "catalog", "io", "download", "validate", "synthetic", "torch_datasets", "split",
     "selection", "fingerprint", "detect"}
)
_discovered = False

T = TypeVar("T", bound=type[DatasetLayout])


def catalogued(name: str) -> Callable[[T], T]:
    """Class decorator: instantiate the dataset layout once and make it ``get_dataset(name)``."""

    def deco(cls: T) -> T:
        if name in DATASETS and type(DATASETS[name]) is not cls:
            raise ValueError(f"dataset name {name!r} catalogued twice ({type(DATASETS[name]).__name__}, {cls.__name__})")
        cls.name = name
        DATASETS[name] = cls()
        return cls

    return deco


def discover() -> None:
    """Import every dataset module of this package once, so their ``@catalogued`` lines run."""
    global _discovered
    if _discovered:
        return
    import mrkd_core.data as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_") or info.name in _INFRASTRUCTURE:
            continue
        importlib.import_module(f"{package.__name__}.{info.name}")
    _discovered = True


def override_variables() -> tuple[str, ...]:
    """Every catalogued dataset's download overrides: ``MRKD_<NAME>_URL`` and ``MRKD_<NAME>_SHA256``.

    What a worker that may download a dataset must see of its driver's environment
    (``flows.ray_env``); a new dataset adds its own by being catalogued.
    """
    discover()
    found: list[str] = []
    for name in sorted(DATASETS):
        info = getattr(DATASETS[name], "download_info", None)
        if info is not None:
            found += [info.env_var, sha256_env_var(info)]
    return tuple(dict.fromkeys(found))


def get_dataset(name: str) -> DatasetLayout:
    """The catalogued dataset called ``name`` (mvtec, btad, mtd, folder, ...)."""
    discover()
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown dataset {name!r}; choose one of {', '.join(sorted(DATASETS))} "
            "(use 'folder' for any directory in MVTec AD layout)"
        ) from None
