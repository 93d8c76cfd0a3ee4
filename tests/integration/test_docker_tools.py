"""Docker's own tools through the engine socket, unchanged: Compose v2 and BuildKit (buildx).

The plugins are Debian trixie's `docker-compose` and `docker-buildx`, fetched with the image
builder's private apt (tests/dockerplugins.py) and installed only into the test instance's
DOCKER_CONFIG. BuildKit builds go through the engine's hijacked `/session` and `/grpc` endpoints,
i.e. long-lived HTTP/2 streams inside our per-connection SSH channels.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.imagekit import busybox_binary

pytestmark = pytest.mark.skipif(shutil.which("docker") is None, reason="needs the docker CLI")


@pytest.fixture(scope="module")
def plugins(vm_instance) -> dict[str, Path]:
    from tests.dockerplugins import PluginUnavailable, install_plugins

    try:
        return install_plugins(Path(vm_instance.env["DOCKER_CONFIG"]))
    except PluginUnavailable as exc:
        pytest.skip(f"docker CLI plugins unavailable: {exc}")


def unique(prefix: str) -> str:
    return f"pinnace-{prefix}-{uuid.uuid4().hex[:10]}"


def docker(vm, *args: str, buildkit: bool = False, cwd: Path | None = None, timeout: float = 600,  # noqa: ANN001
           check: bool = True) -> subprocess.CompletedProcess[str]:
    """The docker CLI against the instance, with BuildKit on or off (conftest's helper forces it off)."""
    env = {**vm.env, "DOCKER_HOST": vm.docker_host, "DOCKER_BUILDKIT": "1" if buildkit else "0"}
    env.pop("DOCKER_CONTEXT", None)
    env.pop("COMPOSE_PROJECT_NAME", None)
    proc = subprocess.run(["docker", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def busybox_context(directory: Path, dockerfile: str, files: dict[str, str] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "busybox").write_bytes(busybox_binary())
    (directory / "busybox").chmod(0o755)
    for name, text in (files or {}).items():
        (directory / name).write_text(text)
    (directory / "Dockerfile").write_text(dockerfile)
    return directory


FROM_SCRATCH = (
    "FROM scratch\n"
    "COPY busybox /bin/busybox\n"
    'RUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
    "ENV PATH=/bin\n"
)

COMPOSE = """\
services:
  web:
    build: ./web
    command: ["httpd", "-f", "-v", "-p", "8080", "-h", "/www"]
  worker:
    build: ./worker
    depends_on: [web]
    command:
      - sh
      - -c
      - 'while true; do echo "got: $$(wget -q -O - http://web:8080/index.html)"; sleep 1; done'
"""


@pytest.mark.vm
@pytest.mark.timeout(60)
def test_plugins_are_found_by_the_cli(vm_instance, plugins):
    assert set(plugins) == {"docker-compose", "docker-buildx"}
    version = docker(vm_instance, "compose", "version").stdout
    assert re.match(r"Docker Compose version v?2\.", version), version
    assert "buildx" in docker(vm_instance, "buildx", "version").stdout
    ls = docker(vm_instance, "buildx", "ls").stdout
    assert "running" in ls, ls  # the engine's builder, reached through our socket


@pytest.mark.vm
@pytest.mark.timeout(900)
@pytest.mark.parametrize("buildkit", [False, True], ids=["classic-builder", "buildkit"])
def test_compose_up_ps_logs_down(vm_instance, plugins, tmp_path, buildkit):
    """A two-service project built offline: up -d, ps, logs (worker fetches from web by name), down."""
    project = unique("compose")
    root = tmp_path / "project"
    busybox_context(root / "web", FROM_SCRATCH + "COPY index.html /www/index.html\n",
                    {"index.html": f"hello from {project}\n"})
    busybox_context(root / "worker", FROM_SCRATCH)
    (root / "compose.yaml").write_text(COMPOSE)

    def compose(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        return docker(vm_instance, "compose", "-p", project, "-f", str(root / "compose.yaml"), *args,
                      buildkit=buildkit, cwd=root, timeout=timeout, check=check)

    try:
        up = compose("up", "-d", "--build", "--quiet-pull")
        built = up.stdout + up.stderr
        if buildkit:  # compose drives the engine's BuildKit (via /session and /grpc) itself
            assert "exporting to image" in built or "naming to" in built, built
        ps = compose("ps", "--format", "json").stdout
        rows = _json_rows(ps)
        assert {r["Service"] for r in rows} == {"web", "worker"}, ps
        assert all(r["State"] == "running" for r in rows), ps

        def worker_logs() -> str:
            return compose("logs", "--no-color", "worker", timeout=120).stdout

        deadline = time.monotonic() + 120
        logs = worker_logs()
        while f"got: hello from {project}" not in logs and time.monotonic() < deadline:
            time.sleep(2)
            logs = worker_logs()
        assert f"got: hello from {project}" in logs, logs
        web_logs = compose("logs", "--no-color", "web", timeout=120).stdout
        assert "response:200" in web_logs, web_logs  # busybox httpd -v logs each request it served

        compose("down", "--rmi", "local", "--volumes", "--timeout", "2")
        left = docker(vm_instance, "ps", "-a", "--filter", f"label=com.docker.compose.project={project}",
                      "-q").stdout
        assert left.strip() == "", left
        networks = docker(vm_instance, "network", "ls", "--filter", f"name={project}", "-q").stdout
        assert networks.strip() == "", networks
        images = docker(vm_instance, "images", "-q", f"{project}-*").stdout
        assert images.strip() == "", images
    finally:
        compose("down", "--rmi", "local", "--volumes", "--timeout", "1", timeout=300, check=False)


def _json_rows(text: str) -> list[dict]:
    """`compose ps --format json` prints one object per line (v2.21+) or a JSON array (older)."""
    text = text.strip()
    if not text:
        return []
    if text.startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


BUILDKIT_DOCKERFILE = (
    "FROM scratch\n"
    "COPY busybox /bin/busybox\n"
    'RUN ["/bin/busybox", "sh", "-c", "/bin/busybox --install -s /bin && echo built-by-buildkit > /hello.txt"]\n'
    "ENV PATH=/bin\n"
    "ARG STAMP\n"
    'RUN echo "$STAMP" > /stamp.txt\n'
    'CMD ["sh", "-c", "cat /hello.txt /stamp.txt"]\n'
)


@pytest.mark.vm
@pytest.mark.timeout(600)
@pytest.mark.parametrize("command", [("buildx", "build", "--load"), ("build",)], ids=["buildx-build", "docker-build"])
def test_buildkit_build_from_scratch(vm_instance, plugins, tmp_path, command):
    """BuildKit (the engine's, via buildx's docker driver): /session + /grpc through the forward."""
    ctx = busybox_context(tmp_path / "ctx", BUILDKIT_DOCKERFILE)
    tag = f"{unique('buildkit')}:test"
    stamp = uuid.uuid4().hex
    try:
        build = docker(vm_instance, *command, "--progress=plain", "--build-arg", f"STAMP={stamp}", "-t", tag,
                       str(ctx), buildkit=True)
        log = build.stderr + build.stdout
        # Only BuildKit prints numbered steps and an image export; the classic builder says "Step 1/7".
        assert "Step 1/" not in log, log
        assert "exporting to image" in log or "naming to" in log, log
        assert "transferring context" in log, log  # the context went up over the /session stream
        run = docker(vm_instance, "run", "--rm", tag)
        assert run.stdout.split() == ["built-by-buildkit", stamp]
    finally:
        docker(vm_instance, "rmi", "-f", tag, check=False, timeout=120)
