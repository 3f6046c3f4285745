"""The Ray Serve application of ``mrkd serve``: a gateway and one scorer deployment per served model.

::

    HTTP (Serve's proxy, 127.0.0.1:8000) ─► gateway (1 replica) ─► model-<name> (N replicas or autoscaled)
                                            token, limits, routes,    decode, serve.batch, Predictor
                                            versions, the record

- **gateway** (:class:`Gateway`): the one ingress. It checks the token and the body, splits
  a multipart body into images, picks the version each request runs on, sends every image
  to the model's scorer, answers JSON and appends each answer to the ``inspections`` table
  (:class:`mrkd_core.inspections.InspectionRecorder`: flushed every 5 s and on shutdown). It
  follows the registry: every ``follow_seconds`` it reads the alias again, and when it moved
  it has the scorer load the new version beside the old one, then switches its route in one
  step. A request keeps the version it started with to its end, so answers change version
  once, and every answer names the version that made it. One replica, so that the switch
  is one step for every client (it only routes; the scorers do the work).
- **model-<name>** (:class:`Scorer`): decodes each image exactly as ``mrkd predict`` reads a
  file (``mrkd_core.data.io.load_image_bytes``), batches images of concurrent requests
  (``serve.batch``: up to ``max_batch_size`` images, waiting at most ``batch_wait_ms``) and
  scores them with :class:`mrkd_core.inference.Predictor` (``predict_decoded``), the library
  code of ``mrkd predict``. It holds the versions it is asked for (two during a swap) and
  drops an old one once it is idle.

The application does not depend on the process that deployed it: the gateway resolves the
versions itself (also after a restart), so the same application runs from ``mrkd serve`` and
from a KubeRay RayService (:func:`build`, ``infra/k8s/rayservice.yaml``).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import torch
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse

from flows.serve.models import UNCALIBRATED, LoadedModel, ServedModel, current_version
from flows.serve.options import ServeOptions
from flows.serve.settings import options_from
from flows.local_ray import is_loopback_host
from flows.serve.web import TOKEN_ENV, HTTPProblem, authorize, env_token_digest, image_parts, read_body
from mrkd_core.data.io import load_image_bytes
from mrkd_core.errors import ConfigError, DataError
from mrkd_core.inference.overlays import mask_png
from mrkd_core.inspections import InspectionRecorder, inspection_row
from mrkd_core.results import utcnow
from mrkd_core.storage import ArtifactStore

log = logging.getLogger(__name__)

APP_NAME = "mrkd"
GATEWAY = "gateway"
SCORER_PREFIX = "model-"
# The gateway only awaits its scorers: many requests at once cost it little.
GATEWAY_MAX_ONGOING = 1000
# A version that is no longer current is dropped once no request used it for this long
# (a request that picked it just before a switch may still be on its way).
RETIRE_IDLE_S = 10.0
# A request whose scorer replica died is sent again (Serve starts another replica), with
# these waits in between: ~15 s in all, the time a replica of a small model takes to come back.
RESEND_WAITS_S = (0.5, 1.0, 2.0, 4.0, 8.0)
# While a model is not loaded yet, the gateway looks again this often.
RETRY_LOAD_S = 2.0
RESULT_FIELDS = ("filename", "width", "height", "score", "normalized_score", "verdict", "threshold",
                 "defect_area_fraction", "latency_ms", "reason")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _decode(data: bytes, filename: str | None) -> tuple[Any, str]:
    """(H×W×3 uint8 image as ``mrkd predict`` decodes the same file, sha256 of the bytes)."""
    image = load_image_bytes(data, filename or "the request body")
    return image, hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- scorer
class Scorer:
    """One served model in one replica: the versions it was asked for, and a batch queue."""

    def __init__(self, model: ServedModel, options: ServeOptions):
        self.model = model
        self.device = options.device
        self.batch_size = options.max_batch_size
        if options.cpus_per_replica >= 1:
            # As many threads as CPUs reserved (what --cpus-per-replica promises), whatever Ray's
            # OMP_NUM_THREADS: more threads than cores collapse under load (docs/performance.md). The
            # ONNX Runtime and OpenVINO backends take the same count (inference.backends.cpu_threads).
            torch.set_num_threads(int(options.cpus_per_replica))
        self.loaded: dict[int | None, LoadedModel] = {}
        self.inflight: collections.Counter = collections.Counter()
        self.last_used: dict[int | None, float] = {}
        self._loading: dict[int | None, asyncio.Lock] = {}
        # The version the gateway made current last (by the time it did: ``epoch``).
        version, _ = current_version(model)
        self.current, self.current_epoch = version, 0.0
        self.loaded[version] = LoadedModel(model, version, self.device, self.batch_size)
        self.score_batch.set_max_batch_size(options.max_batch_size)
        self.score_batch.set_batch_wait_timeout_s(options.batch_wait_ms / 1000.0)
        log.info("%s: version %s loaded (%s)", model.name, version, self.loaded[version].source)

    async def _get(self, version: int | None) -> LoadedModel:
        """The loaded version; loaded now (off the event loop) when this replica lacks it."""
        loaded = self.loaded.get(version)
        if loaded is not None:
            return loaded
        async with self._loading.setdefault(version, asyncio.Lock()):
            loaded = self.loaded.get(version)
            if loaded is None:
                loaded = await asyncio.to_thread(LoadedModel, self.model, version, self.device, self.batch_size)
                self.loaded[version] = loaded
                log.info("%s: version %s loaded beside %s", self.model.name, version,
                         sorted(v for v in self.loaded if v != version))
        return loaded

    def _note(self, version: int | None, epoch: float) -> None:
        if epoch > self.current_epoch:
            self.current, self.current_epoch = version, epoch

    def _retire(self) -> None:
        now = time.monotonic()
        for version in list(self.loaded):
            idle = now - self.last_used.get(version, 0.0)
            if version != self.current and self.inflight[version] == 0 and idle > RETIRE_IDLE_S:
                self.loaded.pop(version).close()
                log.info("%s: version %s dropped (version %s is current)", self.model.name, version, self.current)

    async def load(self, version: int | None, epoch: float) -> dict[str, Any]:
        """Have ``version`` loaded here and make it current as of ``epoch``; what ``/models`` shows of it."""
        loaded = await self._get(version)
        self._note(version, epoch)
        self.last_used[version] = time.monotonic()
        self._retire()
        return loaded.describe()

    async def check_health(self) -> None:
        """Serve calls this every few seconds: the moment to drop a version nobody uses any more."""
        self._retire()

    async def predict(self, data: bytes, filename: str | None, version: int | None, epoch: float,
                      want_mask: bool) -> dict[str, Any]:
        """One image's result (``RESULT_FIELDS`` but latency), or ``{"error": ...}`` for an undecodable one."""
        self._note(version, epoch)
        self.inflight[version] += 1
        try:
            loaded = await self._get(version)
            try:
                image, digest = await asyncio.to_thread(_decode, data, filename)
            except DataError as exc:
                return {"error": str(exc)}
            pred = await self.score_batch((version, filename or "", image))
            result = {"filename": filename, "width": pred.width, "height": pred.height, "score": pred.score,
                      "normalized_score": pred.normalized_score, "verdict": pred.verdict,
                      "threshold": pred.threshold, "defect_area_fraction": pred.defect_area_fraction,
                      "reason": None if pred.verdict is not None else UNCALIBRATED,
                      "image_sha256": digest, "source": loaded.source, "engine": loaded.engine}
            if want_mask:
                png = None if pred.mask is None else await asyncio.to_thread(mask_png, pred.mask)
                result["mask_png"] = None if png is None else base64.b64encode(png).decode("ascii")
            return result
        finally:
            self.inflight[version] -= 1
            self.last_used[version] = time.monotonic()
            self._retire()

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def score_batch(self, items: list[tuple[int | None, str, Any]]) -> list[Any]:
        """Score the images of concurrent requests together: one forward pass per version among them."""
        out: list[Any] = [None] * len(items)
        by_version: dict[int | None, list[int]] = {}
        for i, (version, _, _) in enumerate(items):
            by_version.setdefault(version, []).append(i)
        for version, indices in by_version.items():
            predictor = self.loaded[version].predictor  # loaded: its requests are in flight
            preds = await asyncio.to_thread(predictor.predict_decoded, [items[i][1:] for i in indices])
            for i, pred in zip(indices, preds):
                out[i] = pred
        return out

    def __del__(self) -> None:
        for loaded in getattr(self, "loaded", {}).values():
            loaded.close()


# --------------------------------------------------------------------------- gateway
@dataclass
class Route:
    """Where requests for one served name go: the version now, since when, and what it is."""

    model: ServedModel
    version: int | None = None
    epoch: float = 0.0
    since: str | None = None
    info: dict[str, Any] | None = None
    ready: bool = False
    problem: str | None = None


class Gateway:
    """The ingress: token, limits, routing by name and version, JSON answers, the record."""

    def __init__(self, scorers: dict[str, DeploymentHandle], options: ServeOptions):
        self.options = options
        self.scorers = scorers
        self.routes = {m.name: Route(m) for m in options.models}
        self.digest = options.token_digest or env_token_digest()
        self.limit = int(options.max_body_mb * 2**20)
        self.recorder = InspectionRecorder(ArtifactStore(options.record)) if options.record else None
        self._follower = asyncio.get_running_loop().create_task(self._follow())

    # ---------------------------------------------------------------- versions
    async def _follow(self) -> None:
        """Load every model's version now, then look at the registry every ``follow_seconds``."""
        while True:
            for route in self.routes.values():
                try:
                    await self._refresh(route)
                except Exception as exc:  # noqa: BLE001 - keep serving what is loaded; say why in /healthz
                    route.problem = _one_line(exc)
                    log.warning("%s: %s", route.model.name, route.problem)
            ready = all(r.ready for r in self.routes.values())
            wait = self.options.follow_seconds if ready else min(RETRY_LOAD_S, self.options.follow_seconds)
            await asyncio.sleep(wait)

    async def _refresh(self, route: Route) -> None:
        if route.ready and route.model.follows is None:
            return
        version, _ = await asyncio.to_thread(current_version, route.model)
        if route.ready and version == route.version:
            return
        epoch = time.time()
        handle = self.scorers[route.model.name]
        infos = await asyncio.gather(*[handle.load.remote(version, epoch) for _ in range(self.options.load_calls)])
        previous = route.version if route.ready else None
        # One step: every request from now on runs on `version`; those in flight keep theirs.
        route.version, route.epoch, route.info = version, epoch, infos[0]
        route.since, route.ready, route.problem = utcnow().isoformat(), True, None
        if previous is not None:
            log.info("%s: now serving version %s (was %s; %s)", route.model.name, version, previous,
                     route.model.location)

    # ---------------------------------------------------------------- HTTP
    async def __call__(self, request: Request) -> JSONResponse:
        started, received_at = time.perf_counter(), utcnow()
        try:
            authorize(request.headers, self.digest)
            path = "/" + request.url.path.strip("/")
            if path == "/predict" or path.startswith("/predict/"):
                self._method(request, "POST")
                return await self._predict(request, path[len("/predict"):].strip("/") or None, started,
                                           received_at)
            if path == "/healthz":
                self._method(request, "GET")
                return self._healthz()
            if path == "/models":
                self._method(request, "GET")
                return JSONResponse({"models": [self._describe(r) for r in self.routes.values()]})
            raise HTTPProblem(404, f"no endpoint {path}: POST /predict/{{name}}, GET /healthz, GET /models")
        except HTTPProblem as problem:
            return problem.response()
        except Exception as exc:  # noqa: BLE001 - the server's own failure: 500, logged, the replica lives on
            log.exception("%s %s failed", request.method, request.url.path)
            return JSONResponse({"error": f"internal error ({_one_line(exc)})"}, status_code=500)

    @staticmethod
    def _method(request: Request, allowed: str) -> None:
        if request.method != allowed:
            raise HTTPProblem(405, f"{request.url.path} answers {allowed} only")

    def _route(self, name: str | None) -> Route:
        served = sorted(self.routes)
        if name is None:
            if len(served) == 1:
                return self.routes[served[0]]
            raise HTTPProblem(404, f"{len(served)} models are served: POST /predict/{{name}}", served=served)
        if name not in self.routes:
            raise HTTPProblem(404, f"no model {name!r} is served here", served=served)
        return self.routes[name]

    def _healthz(self) -> JSONResponse:
        versions = {name: r.version for name, r in self.routes.items() if r.ready}
        waiting = {name: r.problem or "loading" for name, r in self.routes.items() if not r.ready}
        if waiting:
            return JSONResponse({"status": "loading", "models": versions, "waiting": waiting}, status_code=503)
        return JSONResponse({"status": "ok", "models": versions})

    @staticmethod
    def _describe(route: Route) -> dict[str, Any]:
        info = route.info or {}
        return {"name": route.model.name, "version": route.version, "engine": info.get("engine"),
                "reference": route.model.location, "follows": route.model.follows, "source": info.get("source"),
                "image_size": info.get("image_size"), "threads": info.get("threads"),
                "calibrated": info.get("calibration") is not None,
                "calibration": info.get("calibration"), "since": route.since, "ready": route.ready,
                "problem": route.problem}

    async def _predict(self, request: Request, name: str | None, started: float, received_at) -> JSONResponse:
        route = self._route(name)
        mask = request.query_params.get("mask")
        if mask not in (None, "png"):
            raise HTTPProblem(400, f"mask={mask!r}: the mask comes as ?mask=png (base64 PNG in mask_png)")
        if not route.ready:
            raise HTTPProblem(503, f"{route.model.name} is not loaded yet ({route.problem or 'loading'}); "
                                   "retry shortly")
        parts = await image_parts(request.headers, await read_body(request, self.limit))
        version, epoch = route.version, route.epoch  # this request's version, to its end
        results = await asyncio.gather(*[self._score(route.model.name, version, epoch, filename, data,
                                                     mask == "png", started) for filename, data in parts])
        for result in results:
            if "error" in result:
                raise HTTPProblem(400, result["error"])
        # Serve's proxy gives every request an id (the client's X-Request-ID when it sends one) and
        # answers it in the X-Request-ID header: the same id in the answer, Serve's logs and the record.
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        if self.recorder is not None:
            self.recorder.add(self._record(route.model.name, version, request_id, received_at, results))
        public = [{k: r.get(k) for k in (*RESULT_FIELDS, *(("mask_png",) if mask else ()))} for r in results]
        return JSONResponse({"model": route.model.name, "version": version, "request_id": request_id,
                             "results": public})

    async def _score(self, name: str, version: int | None, epoch: float, filename: str | None, data: bytes,
                     want_mask: bool, started: float) -> dict[str, Any]:
        handle = self.scorers[name]
        for wait in (*RESEND_WAITS_S, None):
            try:
                result = await handle.predict.remote(data, filename, version, epoch, want_mask)
                break
            except (RayActorError, ActorUnavailableError) as exc:  # the replica died; Serve starts another
                if wait is None:
                    raise
                log.warning("%s: a replica was lost (%s); sending the image again in %.1f s", name, _one_line(exc),
                            wait)
                await asyncio.sleep(wait)
        result["latency_ms"] = (time.perf_counter() - started) * 1000.0
        return result

    @staticmethod
    def _record(name: str, version: int | None, request_id: str, received_at, results) -> list[dict[str, Any]]:
        return [inspection_row(name, request_id, i, received_at, filename=r["filename"],
                               image_sha256=r["image_sha256"], width=r["width"], height=r["height"],
                               model_version=version, model_source=r["source"], engine=r["engine"],
                               score=r["score"], normalized_score=r["normalized_score"], verdict=r["verdict"],
                               threshold=r["threshold"], defect_area_fraction=r["defect_area_fraction"],
                               latency_ms=r["latency_ms"])
                for i, r in enumerate(results)]

    def __del__(self) -> None:
        """Serve calls this when it stops the replica (Ctrl-C, SIGTERM, a redeploy): the last rows are written."""
        follower = getattr(self, "_follower", None)
        if follower is not None:
            follower.cancel()
        recorder = getattr(self, "recorder", None)
        if recorder is not None:
            self.recorder = None
            written = recorder.close()
            log.info("inspections: %d rows written at shutdown", written)


# --------------------------------------------------------------------------- the application
def build_app(options: ServeOptions, env: dict[str, str] | None = None) -> serve.Application:
    """The bound application: the gateway over one ``model-<name>`` deployment per served model.

    ``env``: variables every replica gets (``runtime_env``): the code's location, the store's
    settings and credentials (``flows.ray_env.forwarded_env``); None for a Ray whose nodes
    already have them (a RayService's pods).
    """
    runtime = {"runtime_env": {"env_vars": dict(env)}} if env else {}
    scaling: dict[str, Any] = ({"num_replicas": options.replicas} if options.replicas else
                               {"autoscaling_config": {"min_replicas": 1, "max_replicas": max(1, options.max_replicas),
                                                       "target_ongoing_requests": options.max_batch_size}})
    scorers = {}
    for model in options.models:
        deployment = serve.deployment(Scorer).options(
            name=SCORER_PREFIX + model.name, max_ongoing_requests=2 * options.max_batch_size,
            ray_actor_options={"num_cpus": options.cpus_per_replica, "num_gpus": options.gpus_per_replica,
                               **runtime},
            **scaling)
        scorers[model.name] = deployment.bind(model, options)
    gateway = serve.deployment(Gateway).options(
        name=GATEWAY, num_replicas=1, max_ongoing_requests=GATEWAY_MAX_ONGOING,
        ray_actor_options={"num_cpus": 0, **runtime})
    return gateway.bind(scorers, options)


def build(args: dict[str, Any]) -> serve.Application:
    """The application builder of ``serve run flows.serve.app:build`` and a RayService's ``import_path``.

    ``args``: ``models`` (a list of ``mrkd serve``'s MODEL_REFs, ``SERVED=REF`` allowed, or one
    string of them separated by spaces) and any of ``store``, ``engine``, ``max_batch_size``,
    ``batch_wait_ms``, ``max_body_mb``, ``follow_seconds``, ``record`` (a store URI, or ``none``),
    ``device``, ``replicas`` (a number or ``auto``), ``max_replicas``, ``cpus_per_replica``,
    ``gpus_per_replica``: the command's options, same defaults, same checks. The token is
    ``MRKD_SERVE_TOKEN`` of the environment where the builder runs (a Secret in the pod); without
    it the application is refused unless Serve's HTTP proxy binds a loopback address.
    """
    from flows.serve.cluster import serve_http_config

    given = dict(args)
    if isinstance(given.get("models"), str):
        given["models"] = given["models"].split()
    digest = env_token_digest()
    http = serve_http_config()
    if digest is None and (http is None or not is_loopback_host(http[0])):
        where = f"binds {http[0]}" if http else "is not known here"
        raise ConfigError(f"Serve's HTTP proxy {where}: set {TOKEN_ENV} (a Secret) so that every request must bring "
                          "the token (docs/serving.md)")
    return build_app(options_from(given, digest))


__all__ = ["APP_NAME", "GATEWAY", "Gateway", "SCORER_PREFIX", "Scorer", "build", "build_app"]
