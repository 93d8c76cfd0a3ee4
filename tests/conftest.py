"""Shared fixtures. Pure tests run first; tests marked `vm` share one booted instance
(`vm_instance`), each test in its own containers. The image is built once (cached)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PINNACE = [sys.executable, "-m", "app.cli"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Pure tests first, then the ones that boot or use a VM: fast feedback, one boot."""
    items.sort(key=lambda item: 1 if item.get_closest_marker("vm") else 0)


HOST_MARKERS = {"windows": "win32", "darwin": "darwin"}


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked for another host OS are skipped here, with the reason."""
    for marker, platform in HOST_MARKERS.items():
        if item.get_closest_marker(marker) and sys.platform != platform:
            pytest.skip(f"needs a {marker} host")


@pytest.fixture(scope="session")
def image_dir() -> Path:
    """The guest image, built on demand (the kernel build is cached under the user cache dir)."""
    from vmimage import locations, manifest

    directory = locations.default_image_dir("x86_64")
    try:
        manifest.load(directory)
    except manifest.ManifestError:
        subprocess.run([*PINNACE, "image", "build", "--out", str(directory)], cwd=ROOT, check=False)
        manifest.load(directory)
    return directory


@pytest.fixture(scope="session")
def image_archive(image_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """That image as shipped (`pinnace image pack`: ~4 min of xz -9e on 2 cores), made once."""
    from vmimage import pack

    return pack.pack_image(image_dir, tmp_path_factory.mktemp("pack"))


@dataclass
class Instance:
    name: str
    home: Path
    env: dict[str, str]

    @property
    def paths(self):  # noqa: ANN201 - hypervisor.paths.Paths
        from hypervisor.paths import Paths

        return Paths.for_instance(self.name, self.env)

    @property
    def docker_socket(self) -> Path:
        return self.paths.docker_socket

    @property
    def docker_host(self) -> str:
        return f"unix://{self.docker_socket}"

    def pinnace(self, *args: str, timeout: float = 600, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*PINNACE, "--name", self.name, *args], cwd=ROOT, env=self.env, text=True,
                              capture_output=True, timeout=timeout, input=input)

    def docker(self, *args: str, timeout: float = 300, input: str | bytes | None = None,
               check: bool = True) -> subprocess.CompletedProcess:
        env = {**self.env, "DOCKER_HOST": self.docker_host, "DOCKER_BUILDKIT": "0"}
        env.pop("DOCKER_CONTEXT", None)
        proc = subprocess.run(["docker", *args], env=env, capture_output=True, timeout=timeout, input=input,
                              text=not isinstance(input, bytes))
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def client(self):  # noqa: ANN201 - docker.DockerClient
        import docker

        return docker.DockerClient(base_url=self.docker_host, timeout=300)

    def busybox_image(self) -> str:
        """Import the busybox image (once) through a client that is closed at once.

        An SDK client left to the garbage collector keeps an idle keep-alive connection to the
        engine socket open until some later collection, which upsets tests that count them.
        """
        from tests.imagekit import busybox_image

        client = self.client()
        try:
            return busybox_image(client)
        finally:
            client.close()


def make_instance(tmp_root: Path, image: Path, name: str = "default") -> Instance:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PINNACE_", "DOCKER_"))}
    env.update(PINNACE_HOME=str(tmp_root), PINNACE_IMAGE_DIR=str(image), DOCKER_CONFIG=str(tmp_root / "docker-config"))
    return Instance(name=name, home=tmp_root, env=env)


@pytest.fixture(scope="session")
def vm_instance(tmp_path_factory: pytest.TempPathFactory, image_dir: Path):
    """One booted instance for every test that needs no fresh VM."""
    instance = make_instance(tmp_path_factory.mktemp("vm"), image_dir)
    result = instance.pinnace("start", timeout=600)
    if result.returncode != 0:
        pytest.fail(f"pinnace start failed: {result.stdout}\n{result.stderr}")
    yield instance
    instance.pinnace("stop", timeout=120)


@pytest.fixture(scope="session")
def busybox(vm_instance: Instance) -> str:
    return vm_instance.busybox_image()


@pytest.fixture
def fresh_instance(tmp_path_factory: pytest.TempPathFactory, image_dir: Path):
    """A separate instance for tests that stop, kill or reset it (never the shared one)."""
    instance = make_instance(tmp_path_factory.mktemp("fresh"), image_dir, name="fresh")
    yield instance
    instance.pinnace("stop", timeout=120)
