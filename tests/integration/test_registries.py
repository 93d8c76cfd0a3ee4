"""Pulls and pushes through Pinnace's socket to real registries behind a real proxy (issue #16),
on one small throwaway instance: Debian's `docker-registry` with TLS from a test CA and in plain
HTTP, Debian's `tinyproxy`, all on the host's loopback, reached from the guest as
host.docker.internal. Each restart applies settings the way a user does (`pinnace config`)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import registrykit, tlskit
from tests.conftest import Instance, make_instance

pytestmark = [pytest.mark.vm]

TAG = "pinnace-test/busybox:latest"


@dataclass
class Setup:
    vm: Instance
    tls: registrykit.Server
    plain: registrykit.Server
    proxy: registrykit.Server
    cert: tlskit.ServerCert
    root: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, image_dir: Path) -> Iterator[Setup]:
    why = registrykit.missing()
    if why:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("registries")
    cert = tlskit.make(root / "tls")
    vm = make_instance(root / "home", image_dir, name="registries")
    settings = root / "home" / "config" / "registries" / "settings.toml"
    settings.parent.mkdir(parents=True)
    settings.write_text("disk_gib = 4\nmemory_mib = 1024\nshares = []\n")
    vm.env = {k: v for k, v in vm.env.items() if k.lower() not in ("http_proxy", "https_proxy", "no_proxy")}
    with registrykit.registry(root / "tls-registry", cert) as tls, registrykit.registry(root / "plain") as plain, \
            registrykit.tinyproxy(root / "proxy", (tls.port,)) as proxy:
        try:
            yield Setup(vm, tls, plain, proxy, cert, root)
        finally:
            vm.pinnace("stop", timeout=120)


def ok(done: Any) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def status_of(vm: Instance) -> dict[str, Any]:
    return json.loads(ok(vm.pinnace("status", "--json", timeout=180)))


def push_pull(vm: Instance, ref: str) -> None:
    """Tag the local busybox as `ref`, push it, drop it locally, pull it back, run it."""
    vm.docker("tag", TAG, ref)
    vm.docker("push", ref, timeout=300)
    vm.docker("rmi", ref)
    vm.docker("pull", ref, timeout=300)
    assert vm.docker("run", "--rm", ref, "echo", "pulled").stdout.strip() == "pulled"


def test_without_the_ca_the_x509_error_reaches_the_user_and_plain_http_is_refused(world: Setup) -> None:
    vm = world.vm
    ok(vm.pinnace("start"))
    vm.busybox_image()
    vm.docker("tag", TAG, f"{world.tls.address}/team/app:1")
    failed = vm.docker("push", f"{world.tls.address}/team/app:1", check=False)
    assert failed.returncode != 0
    assert "x509" in failed.stderr or "certificate signed by unknown authority" in failed.stderr, failed.stderr
    vm.docker("tag", TAG, f"{world.plain.address}/team/app:1")
    plain = vm.docker("push", f"{world.plain.address}/team/app:1", check=False)
    assert plain.returncode != 0 and "HTTP response to HTTPS client" in plain.stderr, plain.stderr
    assert status_of(vm)["engine_ca"] == ""


def test_ca_proxy_mirror_and_insecure_registry_settings_apply_at_restart(world: Setup) -> None:
    vm = world.vm
    refused = vm.pinnace("config", "set", "ca_files", str(world.root / "tls" / "server.key"))
    assert refused.returncode == 2 and "holds no PEM certificate" in refused.stderr
    ok(vm.pinnace("config", "set", "ca_files", str(world.cert.ca_pem)))
    ok(vm.pinnace("config", "set", "https_proxy", f"http://127.0.0.1:{world.proxy.port}"))
    engine = {"registry-mirrors": [f"http://{world.plain.address}"], "insecure-registries": [world.plain.address]}
    ok(vm.pinnace("config", "engine", "set", "-", input=json.dumps(engine)))
    ok(vm.pinnace("restart"))
    status = status_of(vm)
    assert "1 extra CA certificate(s)" in status["engine_ca"]
    assert f"https http://127.0.0.1:{world.proxy.port}" in status["engine_proxy"]
    assert status["engine_config_warning"] == ""
    shell = ok(vm.pinnace("ssh", "--", "sh", "-c", "'. /etc/profile; echo $https_proxy'"))
    assert shell.strip() == f"http://10.0.2.2:{world.proxy.port}"  # the guest's own tools too

    before = world.proxy.log_text().count(f"host.docker.internal:{world.tls.port}")
    push_pull(vm, f"{world.tls.address}/team/app:1")  # TLS with the CA, through the proxy
    assert world.proxy.log_text().count(f"host.docker.internal:{world.tls.port}") > before

    push_pull(vm, f"{world.plain.address}/team/app:1")  # plain HTTP, listed as insecure
    # the mirror: a Docker Hub name that only the local registry has
    vm.docker("tag", TAG, f"{world.plain.address}/library/pinnace-mirror-test:1")
    vm.docker("push", f"{world.plain.address}/library/pinnace-mirror-test:1")
    vm.docker("rmi", f"{world.plain.address}/library/pinnace-mirror-test:1")
    vm.docker("pull", "pinnace-mirror-test:1", timeout=300)
    assert "/v2/library/pinnace-mirror-test/manifests/1" in world.plain.log_text()


def test_no_proxy_bypasses_the_proxy(world: Setup) -> None:
    vm = world.vm
    ok(vm.pinnace("config", "set", "no_proxy", "host.docker.internal"))
    ok(vm.pinnace("restart"))
    assert "except host.docker.internal" in status_of(vm)["engine_proxy"]
    before = world.proxy.log_text().count(f"host.docker.internal:{world.tls.port}")
    vm.docker("rmi", f"{world.tls.address}/team/app:1")
    vm.docker("pull", f"{world.tls.address}/team/app:1", timeout=300)
    assert world.proxy.log_text().count(f"host.docker.internal:{world.tls.port}") == before


def test_refused_engine_settings_name_the_key_and_the_engine_keeps_its_last_good_one(world: Setup) -> None:
    vm = world.vm
    engine_file = vm.paths.config_dir / "engine.json"
    saved = engine_file.read_text()
    typo = vm.pinnace("config", "engine", "set", "-", input='{"registry-mirror": ["http://x"]}')
    assert typo.returncode == 2 and "'registry-mirror' is not a dockerd setting" in typo.stderr
    assert len(typo.stderr.strip().splitlines()) == 1 and "Traceback" not in typo.stderr
    # a value only dockerd can judge: the running guest's dockerd is asked
    bad_value = vm.pinnace("config", "engine", "check", "-", input='{"default-shm-size": "lots"}')
    assert bad_value.returncode == 2 and "dockerd refuses it" in bad_value.stderr, bad_value.stderr
    assert engine_file.read_text() == saved  # nothing was saved
    assert status_of(vm)["state"] == "running"

    # the same value written by hand: dockerd refuses it at the restart, the last good one runs
    engine_file.write_text(json.dumps({**json.loads(saved), "default-shm-size": "lots"}))
    ok(vm.pinnace("restart"))
    status = status_of(vm)
    assert status["state"] == "running"
    assert "dockerd refused engine.json" in status["engine_config_warning"]
    assert re.search(r"shm|lots", status["engine_config_warning"]), status["engine_config_warning"]
    # the last good configuration: the insecure registry still works; nothing was lost
    vm.docker("pull", f"{world.plain.address}/team/app:1", timeout=300)
    assert vm.docker("run", "--rm", f"{world.tls.address}/team/app:1", "echo", "kept").stdout.strip() == "kept"
    engine_file.write_text(saved)
