"""Where a flow run's trainings execute: the runner, resolved once into a :class:`Runner`.

``runner`` (a flow parameter) and ``ray_address``/``RAY_ADDRESS`` are resolved once, at
the start of the flow run (:func:`resolve_runner`), into a :class:`Runner` (a
:class:`LocalRunner` or a :class:`RayRunner`) that knows its task runner, the Ray
remote options of a training (GPUs, retries, worker reuse) and the environment the Ray
workers get; the fan-out subflow is a loop of submits inside :meth:`Runner.submitting`,
the way prefect-ray's ``remote_options`` is meant to be used.

Three places a training can run:

- ``ray`` with no address: a Ray of this flow run, started by the fan-out on this machine
  and stopped with it: loopback only, token authentication, dashboard on
  http://127.0.0.1:8265 (another free port, logged, when 8265 is taken), every core.
  A GPU per training only if this machine has one.
- ``ray`` with a loopback address (``127.0.0.1:6379``): the long-lived local head of
  ``python -m flows.ray_head start``, same rules, its dashboard outlives the run.
- ``ray`` with another address (``auto``, ``ray://head:10001``, ``10.0.0.5:6379``): a cluster;
  every training asks for ``num_gpus`` (1 unless ``MRKD_NUM_GPUS`` or the parameter says
  otherwise; fractions share a GPU), since its autoscaler adds GPU nodes only for tasks
  that ask for them.
- ``local``: Prefect's ``ThreadPoolTaskRunner`` with one worker: no Ray at all, trainings
  run one after another in the flow's process.

GPU trainings reuse Ray worker processes (``MRKD_RAY_REUSE_GPU_WORKERS``, on by default).
Ray's default for a GPU task is a fresh process per task (``max_calls=1``): each one pays
the worker start and the imports of torch, torchvision and Prefect (5.3 s on a 2-core VM,
plus a CUDA context on a GPU node): 12.9 % of a 60-second training against 2.3 % with
reuse (``bench/bench_orchestration.py``). Reuse is safe because each task picks
its GPU itself: its ``runtime_env`` sets ``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES``,
so Ray leaves ``CUDA_VISIBLE_DEVICES`` as the node has it (a CUDA context created by an
earlier task would otherwise pin the process to that task's GPU), and
:func:`assigned_gpu` runs the training on the device of ``ray.get_gpu_ids()`` and
releases the cached GPU memory when it ends.

Ray workers inherit the environment of the process that started Ray (the raylet), not
the driver's, so everything a training needs to find its data and store travels in
``runtime_env={"env_vars": ...}`` (:func:`worker_env`). It is set per task through
``remote_options`` rather than only in ``ray.init``: when Ray is already initialised in
the process (a notebook, a test), the runner reuses it and ``init_kwargs`` never apply.
The :class:`Runner` itself holds no secret (it is a parameter of the fan-out subflow,
stored and shown by Prefect): the environment is built from the driver's when submitting.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows.local_ray import LOOPBACK, host_and_port, is_loopback_address, port_free
from flows.ray_env import forwarded_env
from mrkd_core.model.weights import ENV_STAGED, STAGED_FOLDER

log = logging.getLogger(__name__)

RUNNERS = ("ray", "local")
ENV_NUM_GPUS = "MRKD_NUM_GPUS"
DASHBOARD_HOST = LOOPBACK
DASHBOARD_PORT = 8265
# Ray re-runs a task whose worker process died (OOM kill, lost node) this many times;
# Python exceptions are Prefect's to retry (see flows.train_evaluate), not Ray's.
RAY_MAX_RETRIES = 2

# "0" gives every GPU training a fresh Ray worker process again (Ray's default, max_calls=1).
ENV_REUSE_GPU_WORKERS = "MRKD_RAY_REUSE_GPU_WORKERS"
# Read by Ray inside the worker before each task: when set, Ray does not narrow
# CUDA_VISIBLE_DEVICES to the task's GPUs, and the task selects its device itself.
RAY_NOSET_CUDA_ENV = "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"

class Runner(Protocol):
    """The runner of one flow run, resolved once by :func:`resolve_runner`: where trainings execute.

    Two kinds behind one protocol: :class:`LocalRunner` (no Ray) and :class:`RayRunner`.
    The fan-out subflow asks it for its task runner and submits inside :meth:`submitting`.
    """

    kind: str

    def describe(self) -> str:
        """One line for the flow run's log: where the trainings will run."""
        ...

    def dashboard_hint(self) -> str:
        """The Ray dashboard's URL as far as it is known before connecting."""
        ...

    def task_runner(self, num_cpus: int | None = None, num_gpus: int | None = None) -> TaskRunner:
        """The fan-out subflow's task runner."""
        ...

    def submitting(self) -> contextlib.AbstractContextManager[dict[str, Any]]:
        """Submissions inside this block carry a training's options; yields them for the log."""
        ...


@dataclass(frozen=True)
class LocalRunner:
    """``runner=local``: Prefect's thread pool with one worker, no Ray; trainings run one after another here."""

    kind: Literal["local"] = "local"

    def describe(self) -> str:
        return "runner=local: no Ray, one training after another in this process"

    def dashboard_hint(self) -> str:
        return "none (runner=local)"

    def task_runner(self, num_cpus: int | None = None, num_gpus: int | None = None) -> TaskRunner:
        return ThreadPoolTaskRunner(max_workers=1)

    @contextlib.contextmanager
    def submitting(self) -> Iterator[dict[str, Any]]:
        yield {"num_gpus": 0.0}


@dataclass(frozen=True)
class RayRunner:
    """``runner=ray``: a Ray of this run, the local head, or a cluster.

    ``address``: the Ray to join (None: a Ray of this run). ``num_gpus``: GPUs per training
    (None: 1 if the local Ray has a GPU, else 0). ``dashboard_port``: the dashboard of a Ray
    of this run. ``store_root``/``data_root``: the driver's resolved locations, handed to the
    workers. ``api_url``: the Prefect API the workers report to (None: Prefect's default).
    """

    address: str | None = None
    num_gpus: float | None = None
    dashboard_port: int | None = None
    store_root: str = ""
    data_root: str = ""
    api_url: str | None = None
    kind: Literal["ray"] = "ray"

    @property
    def loopback(self) -> bool:
        """Ray on this machine only (a Ray of this run, or the local head)."""
        return self.address is None or is_loopback_address(self.address)

    def describe(self) -> str:
        if self.address is None:
            return "runner=ray: a Ray of this run, started by the fan-out (127.0.0.1 only, token auth)"
        if self.loopback:
            return f"runner=ray: the local Ray head at {self.address}"
        return f"runner=ray: the Ray cluster at {self.address}"

    def dashboard_hint(self) -> str:
        if self.address is None:
            return f"http://{DASHBOARD_HOST}:{self.dashboard_port} (while the trainings of this run last)"
        if self.loopback:
            from flows.ray_head import read_head

            head = read_head()
            if head is not None and head.address == self.address:
                return head.dashboard_url
            return f"the local head's at {self.address} (logged when the fan-out connects)"
        return "the cluster head's (logged when the fan-out connects)"

    def task_runner(self, num_cpus: int | None = None, num_gpus: int | None = None) -> TaskRunner:
        """``num_cpus``/``num_gpus`` size a Ray of this run (default: every core, the GPUs Ray
        finds); benchmarks declare GPUs with them."""
        from flows.ray_task_runner import LoggedRayTaskRunner

        if self.address:
            # Joining a cluster: its nodes declare CPUs/GPUs; the dashboard is the head's.
            return LoggedRayTaskRunner(address=self.address, init_kwargs={"log_to_driver": True},
                                       loopback=self.loopback)
        # "local" forces a new Ray: a bare ray.init() would join any cluster another user
        # started on this host (it reads /tmp/ray/ray_current_cluster) and run there.
        init = {"num_cpus": num_cpus or os.cpu_count() or 1, "include_dashboard": True,
                "dashboard_host": DASHBOARD_HOST, "dashboard_port": self.dashboard_port or dashboard_port(),
                "log_to_driver": True}
        if num_gpus is not None:
            init["num_gpus"] = num_gpus
        return LoggedRayTaskRunner(address="local", init_kwargs=init, loopback=True)

    def gpus_per_training(self) -> float:
        """GPUs each training asks for; call once Ray is up (a local Ray's GPUs decide the default)."""
        if self.num_gpus is not None:
            if not self.loopback:
                warn_if_no_gpu(self.num_gpus)
            return self.num_gpus
        return local_gpu_request()

    def worker_env(self) -> dict[str, str]:
        """The Ray workers' environment, built now from the driver's (credentials included)."""
        return worker_env(self.store_root, self.data_root, self.api_url)

    @contextlib.contextmanager
    def submitting(self) -> Iterator[dict[str, Any]]:
        """The Ray options of a training (GPUs, retries, worker reuse, runtime env) on every submit
        inside the block; yields them without the runtime environment (for the log)."""
        from prefect_ray.context import remote_options

        options = ray_options(self.gpus_per_training(), self.worker_env(), reuse_gpu_workers())
        with remote_options(**options):
            yield {k: v for k, v in options.items() if k != "runtime_env"}


def resolve_runner(runner: str, ray_address: str | None, num_gpus: float | None, store_root: str = "",
                   data_root: str = "", api_url: str | None = None) -> LocalRunner | RayRunner:
    """Check ``runner`` and settle address, GPUs and dashboard once; fails before any work."""
    check_runner(runner)
    if runner == "local":
        return LocalRunner()
    address = resolve_address(ray_address)
    if address:
        check_reachable(address)
    return RayRunner(address, requested_gpus(num_gpus, address), None if address else dashboard_port(),
                     store_root, data_root, api_url)


# How long a Ray head's port may take to accept a connection before the run fails.
REACH_TIMEOUT_S = 10.0


def check_reachable(address: str, timeout: float = REACH_TIMEOUT_S) -> None:
    """Fail now, in one line, when nothing accepts connections at the Ray address ``address``.

    ``ray.init`` retries an unreachable GCS for minutes and a flow run would hang Running
    meanwhile. ``host:port`` and ``ray://host:port`` are probed with one TCP connection;
    ``auto`` (Ray's own discovery) is left to Ray. Raises ``ConnectionError``.
    """
    host, port = host_and_port(address.removeprefix("ray://"))
    if port is None:
        return
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise ConnectionError(
            f"no Ray at {address} (ray_address or RAY_ADDRESS): {exc} — start the local head "
            "(python -m flows.ray_head start), point RAY_ADDRESS at a running cluster, or unset it "
            "for a Ray of this run") from None


def resolve_address(ray_address: str | None) -> str | None:
    """The Ray to join: the parameter, else ``RAY_ADDRESS``; None means a Ray of this run."""
    return ray_address or os.environ.get("RAY_ADDRESS") or None


def requested_gpus(num_gpus: float | None, address: str | None) -> float | None:
    """GPUs per training: the parameter, else ``MRKD_NUM_GPUS``, else 1 on a cluster.

    Returns None for a Ray on this machine (no address, or the loopback head) without an
    explicit request: the runner then asks for a GPU only if that Ray found one
    (:func:`local_gpu_request`). On a cluster the default stays 1 even when no GPU node is
    up yet, because the autoscaler adds GPU nodes only for tasks that ask for GPUs.
    """
    if num_gpus is None and os.environ.get(ENV_NUM_GPUS):
        num_gpus = float(os.environ[ENV_NUM_GPUS])
    if num_gpus is not None:
        if num_gpus < 0:
            raise ValueError(f"num_gpus must be ≥ 0, got {num_gpus}")
        return float(num_gpus)
    return 1.0 if address and not is_loopback_address(address) else None


def local_gpu_request() -> float:
    """1 when the local Ray has a GPU (so two trainings never share it unasked), else 0."""
    import ray

    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def worker_env(store_root: str, data_root: str, api_url: str | None) -> dict[str, str]:
    """The environment every Ray worker gets: store, data root, S3 settings, teacher weights, Prefect API.

    ``store_root`` and ``data_root`` are the driver's resolved absolute locations. The
    Prefect API URL matters: without one each Ray worker starts its own temporary Prefect
    server (~10 s per worker) and the task runs land in throwaway databases. Teacher
    weights are read from ``<store_root>/weights`` (where the driver staged them,
    ``flows.download``) unless the driver's ``MRKD_TEACHER_WEIGHTS`` names another folder.
    """
    env = forwarded_env()
    env["MRKD_STORE"] = store_root
    env["MRKD_DATA_ROOT"] = data_root
    if store_root:
        env.setdefault(ENV_STAGED, f"{store_root.rstrip('/')}/{STAGED_FOLDER}")
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def check_runner(runner: str) -> None:
    """Fail before any work when the runner cannot exist here (unknown name, Ray not installed)."""
    if runner not in RUNNERS:
        raise ValueError(f"runner must be one of {RUNNERS}, got {runner!r}")
    if runner == "ray":
        try:
            import prefect_ray  # noqa: F401
            import ray  # noqa: F401
        except ImportError as exc:
            raise RuntimeError("runner='ray' needs `ray[default]` and `prefect-ray` (the project's "
                               "`pipeline` extra); or use runner='local'") from exc
        reuse_gpu_workers()  # a bad MRKD_RAY_REUSE_GPU_WORKERS fails here, before any work


def dashboard_port() -> int:
    """8265, or a free port when 8265 is taken (Ray would refuse to start, not pick another)."""
    if port_free(DASHBOARD_PORT, DASHBOARD_HOST):
        return DASHBOARD_PORT
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((DASHBOARD_HOST, 0))
        port = int(sock.getsockname()[1])
    log.info("port %d is taken (the local Ray head, or another Ray): this run's Ray dashboard is on "
             "http://%s:%d", DASHBOARD_PORT, DASHBOARD_HOST, port)
    return port


def reuse_gpu_workers() -> bool:
    """``MRKD_RAY_REUSE_GPU_WORKERS``: true unless set to 0/false/no/off."""
    value = os.environ.get(ENV_REUSE_GPU_WORKERS, "1").strip().lower()
    if value in ("1", "true", "yes", "on", ""):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{ENV_REUSE_GPU_WORKERS}={value!r}: use 1 (reuse Ray workers across GPU trainings, "
                     "the default) or 0 (a fresh worker process per GPU training)")


def ray_options(num_gpus: float, env: Mapping[str, str], reuse: bool) -> dict[str, Any]:
    """The ``ray.remote`` options of one training task.

    ``max_calls=0`` (no limit) replaces Ray's 1 for GPU tasks when ``reuse``; the task's
    environment then tells Ray to leave ``CUDA_VISIBLE_DEVICES`` alone (see the module
    docstring). CPU-only tasks are reused by Ray anyway and get neither.
    """
    env_vars = dict(env)
    options: dict[str, Any] = {"num_gpus": num_gpus, "max_retries": RAY_MAX_RETRIES}
    if num_gpus > 0:
        options["max_calls"] = 0 if reuse else 1
        if reuse:
            env_vars[RAY_NOSET_CUDA_ENV] = "1"
    options["runtime_env"] = {"env_vars": env_vars}
    return options


def cuda_index(gpu_ids: list[Any], visible: str | None, ray_narrowed: bool) -> int:
    """The torch CUDA index, in this process, of the first GPU Ray assigned the task.

    ``gpu_ids``: ``ray.get_gpu_ids()``, the node's GPU ids (entries of the node's
    ``CUDA_VISIBLE_DEVICES`` when it has one, else physical indices). ``visible``: this
    process's ``CUDA_VISIBLE_DEVICES``. ``ray_narrowed``: Ray set that variable to the
    task's GPUs (its default), so the first visible device is the task's.
    """
    if not gpu_ids:
        raise ValueError("no GPU was assigned to this task")
    if ray_narrowed:
        return 0
    gpu = str(gpu_ids[0]).strip()
    if visible is None:
        if not gpu.isdigit():
            raise ValueError(f"Ray assigned GPU {gpu!r} but CUDA_VISIBLE_DEVICES is unset, so it has no index")
        return int(gpu)
    order = [v.strip() for v in visible.split(",") if v.strip()]
    if gpu not in order:
        raise ValueError(f"Ray assigned GPU {gpu!r}, which CUDA_VISIBLE_DEVICES={visible!r} of this worker does "
                         "not list: start the Ray node with the same CUDA_VISIBLE_DEVICES as its workers")
    return order.index(gpu)


@contextlib.contextmanager
def assigned_gpu() -> Iterator[int | None]:
    """Run the body on the GPU Ray assigned this task (its CUDA index), then free cached GPU memory.

    Yields None outside Ray, for CPU tasks, and where torch sees no CUDA (a GPU declared
    to Ray but absent, as in tests): the training then picks its device as usual. The
    cleanup matters in a reused worker: the next training must find the GPU empty.
    """
    gpu_ids = _ray_gpu_ids()
    if not gpu_ids:
        yield None
        return
    import gc

    import torch

    if not torch.cuda.is_available():
        log.warning("Ray assigned GPU(s) %s but torch sees no CUDA device: training on the CPU", gpu_ids)
        yield None
        return
    # Ray's own reading of the flag (ray._common.utils.env_bool): "1" or "true" only.
    noset = os.environ.get(RAY_NOSET_CUDA_ENV, "").lower() in ("1", "true")
    index = cuda_index(gpu_ids, os.environ.get("CUDA_VISIBLE_DEVICES"), ray_narrowed=not noset)
    try:
        with torch.cuda.device(index):
            yield index
    finally:
        gc.collect()  # tensors held by reference cycles (e.g. a failed training's traceback)
        torch.cuda.empty_cache()


def _ray_gpu_ids() -> list[Any]:
    try:
        import ray
    except ImportError:
        return []
    if not ray.is_initialized():
        return []
    try:
        return list(ray.get_gpu_ids())
    except Exception:  # noqa: BLE001 - a driver, not a worker: no assignment
        return []


def warn_if_no_gpu(num_gpus: float) -> None:
    """A GPU request on a cluster without GPU nodes pends silently: say so in the flow log."""
    import ray

    have = ray.cluster_resources().get("GPU", 0)
    if num_gpus > 0 and have < num_gpus:
        log.warning("each training asks for %s GPU(s) but the cluster has %s now: tasks wait until "
                    "the autoscaler adds GPU nodes (set MRKD_NUM_GPUS=0 to train on CPUs)", num_gpus, have)


def node_info() -> dict[str, Any]:
    """Where this code runs: the Ray node id inside a Ray worker, else None (local runner)."""
    info: dict[str, Any] = {"node_id": None, "pid": os.getpid(), "host": os.uname().nodename, "gpu_ids": []}
    try:
        import ray
    except ImportError:
        return info
    if ray.is_initialized():
        with contextlib.suppress(Exception):
            info["node_id"] = ray.get_runtime_context().get_node_id()
        info["gpu_ids"] = [str(g) for g in _ray_gpu_ids()]
    return info
