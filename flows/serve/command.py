"""``mrkd serve``: the registry's models answering the line over HTTP, on Ray Serve, until Ctrl-C or SIGTERM.

A command of ``mrkd`` although it lives beside the flows: ``mrkd_core`` never imports Ray,
so ``flows`` adds it through the ``mrkd.commands`` entry-point group (``pyproject.toml``),
which ``mrkd_core.cli.build_parser`` reads. Registering the parser imports nothing heavy;
Ray, Serve and the models are loaded when the command runs.

It prints one line per model when every model answers (``serving NAME vN on
http://HOST:PORT``), one line each time a followed model changes version, and stops
cleanly: the application is removed (its replicas stop gracefully, the last record rows
are written), then Serve and Ray if this process started them. docs/serving.md has the
whole.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from flows.local_ray import LOOPBACK
from flows.serve.options import DEFAULT_HOST, DEFAULT_PORT, DEFAULTS, ENGINES, NO_RECORD, STORE_ENV, ServeOptions
from mrkd_core.console import out
from mrkd_core.errors import ConfigError, MRKDError

log = logging.getLogger("mrkd")

READY_TIMEOUT_S = 900  # loading a WRN50 from S3 on a busy node, with room
WATCH_S = 2.0  # how often the command looks at the models (to print a version change)


def add_command(sub: argparse._SubParsersAction) -> None:
    """Register ``serve`` on ``mrkd``'s subparsers (the ``mrkd.commands`` entry point of ``flows``)."""
    from flows.serve.web import MIN_TOKEN_CHARS, TOKEN_ENV

    p = sub.add_parser(
        "serve", help="serve models over HTTP on Ray Serve: POST /predict/NAME, follows the champion, records "
                      "every answer",
        description="Serve models over HTTP on Ray Serve until Ctrl-C or SIGTERM. Each image gets the answer "
                    "`mrkd predict` gives for the same file; a registered model's champion is followed (a "
                    "promotion or rollback is taken over without a failed request); every answer is appended "
                    "to <record store>/tables/inspections. docs/serving.md has the HTTP API.")
    p.add_argument("models", nargs="+", metavar="MODEL_REF",
                   help="a model.pt, an .onnx from `mrkd export`, or a registered model: <store>/models/<name>/"
                        "<dataset>/<category>@champion (@latest, @N); with --store also <name>@champion or "
                        "<name>/<dataset>/<category>@champion. NAME=MODEL_REF serves it as /predict/NAME "
                        "(default: its category, or the file's stem)")
    p.add_argument("--store", "-s", help=f"artifact store of the registered models (default: {STORE_ENV})")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address of the HTTP proxy (default: %(default)s); any other than loopback needs a token "
                        f"({TOKEN_ENV} or --token-file)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="HTTP port (default: %(default)s)")
    p.add_argument("--engine", choices=ENGINES,
                   help="torch for a model.pt, onnxruntime or openvino for an .onnx (default: by the file); "
                        "onnxruntime/openvino on a model.pt export it when a replica loads it")
    p.add_argument("--replicas", default=DEFAULTS["replicas"], metavar="N|auto",
                   help="replicas per model, or auto (autoscaling from 1 to --max-replicas) (default: %(default)s)")
    p.add_argument("--max-replicas", type=int, help="the most replicas per model with --replicas auto "
                                                    "(default: the Ray's GPUs, else its CPUs / --cpus-per-replica)")
    p.add_argument("--max-batch-size", type=int, default=DEFAULTS["max_batch_size"],
                   help="images of concurrent requests scored in one forward pass (default: %(default)s)")
    p.add_argument("--batch-wait-ms", type=float, default=DEFAULTS["batch_wait_ms"],
                   help="how long a replica waits for more images to fill a batch (default: %(default)s)")
    p.add_argument("--record", metavar=f"URI|{NO_RECORD}",
                   help="store of the record of every answer (tables/inspections) (default: --store, else the "
                        f"registered model's store); {NO_RECORD}: no record")
    p.add_argument("--follow-seconds", type=float, default=DEFAULTS["follow_seconds"],
                   help="how often a @champion/@latest reference is read again (default: %(default)s)")
    p.add_argument("--max-body-mb", type=float, default=DEFAULTS["max_body_mb"],
                   help="larger request bodies are refused with 413 (default: %(default)s)")
    p.add_argument("--token-file", type=Path,
                   help=f"file holding the token every request must bring as 'Authorization: Bearer TOKEN' "
                        f"(at least {MIN_TOKEN_CHARS} characters; or {TOKEN_ENV})")
    p.add_argument("--device", default=DEFAULTS["device"], help="auto, cpu or cuda (default: %(default)s)")
    p.add_argument("--cpus-per-replica", type=float, default=DEFAULTS["cpus_per_replica"],
                   help="CPUs Ray reserves for each replica; also its threads, whatever the engine "
                        "(default: %(default)s)")
    p.add_argument("--gpus-per-replica", type=float,
                   help="GPUs per replica (default: 1 when the Ray has GPUs, else 0; fractions share one)")
    p.set_defaults(func=cmd_serve)


def read_token(token_file: Path | None) -> str | None:
    """The token of ``--token-file``, else ``MRKD_SERVE_TOKEN``, else None; too short is a one-line error."""
    from flows.serve.web import TOKEN_ENV, check_token

    if token_file is not None:
        try:
            text = token_file.read_text()
        except OSError as exc:
            raise ConfigError(f"--token-file {token_file}: cannot read it ({exc.strerror})") from None
        where = f"--token-file {token_file}"
    elif os.environ.get(TOKEN_ENV):
        text, where = os.environ[TOKEN_ENV], TOKEN_ENV
    else:
        return None
    try:
        return check_token(text, where)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def cmd_serve(args: argparse.Namespace) -> int:
    from flows.serve.models import check_loadable
    from flows.serve.settings import options_from
    from flows.local_ray import is_loopback_host
    from flows.serve.web import TOKEN_ENV, token_digest

    token = read_token(args.token_file)
    if token is None and not is_loopback_host(args.host):
        raise ConfigError(f"--host {args.host}: the service answers beyond this machine only with a token — set "
                          f"{TOKEN_ENV} or pass --token-file FILE (and put a TLS proxy in front: docs/serving.md)")
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port}: must be 1-65535")
    settings = {k: getattr(args, k) for k in ("store", "engine", "max_batch_size", "batch_wait_ms", "max_body_mb",
                                              "follow_seconds", "record", "device", "replicas", "max_replicas",
                                              "cpus_per_replica", "gpus_per_replica")}
    options = options_from({**settings, "models": args.models}, token_digest(token) if token else None)
    for model in options.models:
        check_loadable(model)
    run_service(options, args.host, args.port, token)
    return 0


class _Stop:
    """Set by SIGINT or SIGTERM: the command then leaves cleanly (the handlers are restored after)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._saved = {sig: signal.signal(sig, self._set) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _set(self, signum: int, frame: Any) -> None:
        log.info("%s: stopping the service", signal.Signals(signum).name)
        self.event.set()

    def restore(self) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)


def run_service(options: ServeOptions, host: str, port: int, token: str | None) -> None:
    """Deploy the application on Ray Serve, print the ready lines, watch the versions until stopped."""
    import ray
    from ray import serve

    from flows.ray_env import forwarded_env
    from flows.serve.app import APP_NAME, build_app
    from flows.serve.cluster import ray_session, start_serve, stop_serve

    with ray_session() as session:
        # Installed once Ray is up: Ray's own handler would print a crash report for a plain SIGTERM.
        stop = _Stop()
        try:
            options = _fit_to_cluster(options, ray.cluster_resources(), session.address is None)
            log.info("serving on %s", session.describe())
            started_serve = start_serve(host, port, session)
            try:
                try:
                    serve.run(build_app(options, env=forwarded_env()), name=APP_NAME, route_prefix="/",
                              blocking=False)
                except RuntimeError as exc:
                    raise MRKDError(f"the service did not start: {_deploy_error(_deploy_report(str(exc)))}") from None
                url = f"http://{host}:{port}"
                client = _Client(host, port, token)
                models = client.wait_ready(stop.event)
                if options.record:
                    log.info("every answer is recorded in %s/tables/inspections", options.record.rstrip("/"))
                for m in models:
                    out(_serving_line(m, url))
                _watch(client, models, url, stop.event)
            finally:
                log.info("stopping: removing the application%s", " and Serve" if started_serve else "")
                stop_serve(APP_NAME, started_serve)
                log.info("stopped")
        finally:
            stop.restore()


def _fit_to_cluster(options: ServeOptions, resources: dict[str, float], own_ray: bool) -> ServeOptions:
    """GPUs per replica and the autoscaling ceiling from what the Ray has; a one-line error when a Ray
    of this machine cannot hold one replica of every model (Ray would wait forever)."""
    from dataclasses import replace

    gpus = options.gpus_per_replica
    if gpus == 0.0 and resources.get("GPU", 0) >= 1 and options.device != "cpu":
        gpus = 1.0
    ceiling = options.max_replicas
    if options.replicas is None and not ceiling:
        ceiling = int(resources.get("GPU", 0) // gpus) if gpus else int(
            resources.get("CPU", 1) // max(options.cpus_per_replica, 1e-9))
        ceiling = max(1, ceiling)
    need = len(options.models) * options.cpus_per_replica * (options.replicas or 1)
    if own_ray and need > resources.get("CPU", 0):
        raise ConfigError(f"{len(options.models)} model(s) × {options.replicas or 1} replica(s) × "
                          f"--cpus-per-replica {options.cpus_per_replica:g} = {need:g} CPUs, but this Ray has "
                          f"{resources.get('CPU', 0):g}: lower --cpus-per-replica (e.g. 0.5)")
    return replace(options, gpus_per_replica=gpus, max_replicas=ceiling)


def _deploy_report(summary: str) -> str:
    """Serve's summary of a failed deployment, with each deployment's own message (the replica's error)."""
    from ray import serve

    from flows.serve.app import APP_NAME

    try:
        app = serve.status().applications.get(APP_NAME)
    except Exception:  # noqa: BLE001 - the summary alone still says that it failed
        return summary
    messages = [d.message for d in (app.deployments.values() if app else []) if d.message]
    return "\n".join([summary, *messages])


def _deploy_error(text: str) -> str:
    """The line that says why a replica could not start, out of Serve's deployment report."""
    import re

    found = re.findall(r"(?:mrkd_core\.errors\.)?(?:MRKDError|DataError|ConfigError|StorageError): (.+)", text)
    if found:
        return found[-1].strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error (see Ray's serve logs)"


class _Client:
    """The command's own requests to the service (with the token when it has one)."""

    def __init__(self, host: str, port: int, token: str | None):
        # A wildcard address (every interface) is reached here through loopback.
        unspecified = host in ("", "::") or host.count(".") == 3 and set(host) <= {"0", "."}
        self.url = f"http://{LOOPBACK if unspecified else host}:{port}"
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(self.url + path, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def wait_ready(self, stop: threading.Event) -> list[dict[str, Any]]:
        """The served models once ``/healthz`` says every one is loaded."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        last: Any = None
        while not stop.is_set():
            try:
                status, body = self.get("/healthz")
                if status == 200:
                    return self.get("/models")[1]["models"]
                last = body.get("waiting") or body
            except (OSError, ValueError) as exc:
                last = exc
            if time.monotonic() > deadline:
                raise MRKDError(f"the service did not become ready within {READY_TIMEOUT_S} s ({last})")
            stop.wait(1.0)
        return []


def _serving_line(model: dict[str, Any], url: str) -> str:
    what = f"v{model['version']}" if model["version"] is not None else f"({model['source']})"
    return f"serving {model['name']} {what} on {url}"


def _watch(client: _Client, models: list[dict[str, Any]], url: str, stop: threading.Event) -> None:
    """Until stopped, and once more then: print a line when a model's version changed (a promotion or
    rollback followed)."""
    versions = {m["name"]: m["version"] for m in models}
    while True:
        stopping = stop.wait(WATCH_S)
        try:
            status, body = client.get("/models")
        except (OSError, ValueError) as exc:
            log.warning("the service does not answer (%s); Serve restarts what died", exc)
            status, body = 0, {}
        if status == 200:
            for m in body["models"]:
                if m["ready"] and m["version"] != versions.get(m["name"]):
                    out(f"{_serving_line(m, url)} (was v{versions.get(m['name'])})")
                    versions[m["name"]] = m["version"]
        if stopping:
            return


__all__ = ["add_command", "cmd_serve", "read_token", "run_service"]
