"""`pinnace diagnose` against real instances: a healthy one passes every check (warnings only where
the environment decides: TCG, an offline host's DNS, a small disk); each injected fault flips
exactly its own check to fail — a byte flipped in a copy of the root image, a share folder that
vanished, the engine's socket gone in the guest, a Docker network over a host route, a loose mode
on the engine socket; and the support bundle holds what it lists and no key material.

The shared instance is never damaged: the image fault uses a copy of the image, the share and
engine faults a throwaway instance, and the network and socket faults are undone in `finally`."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Instance, make_instance

pytestmark = [pytest.mark.vm]

ALL_KEYS = {"qemu", "accel", "image", "disk_space", "data_disk", "processes", "permissions", "engine", "clock",
            "dns_guest", "dns_container", "host_docker_internal", "networks", "ports", "shares"}
VM_KEYS = {"engine", "clock", "dns_guest", "dns_container", "host_docker_internal", "networks", "ports", "shares"}
# Warnings the environment causes, not Pinnace: TCG (no usable KVM here), DNS on an offline host,
# a small host disk, a clock not measured yet right after a boot, a Docker Engine on the host itself
# whose docker0 route overlaps the guest's default bridge (a VPN-like overlap is a failure).
ENVIRONMENT_WARNINGS = {"accel", "dns_guest", "dns_container", "disk_space", "clock", "networks"}
DUMMY_IFACE, DUMMY_ADDR, DUMMY_SUBNET = "pinnace-dx", "172.31.250.1/24", "172.31.250.0/24"


def diagnose(instance: Instance, timeout: float = 480) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    result = instance.pinnace("diagnose", "--json", timeout=timeout)
    assert "Traceback" not in result.stderr, result.stderr
    try:
        doc = json.loads(result.stdout)
    except ValueError:
        pytest.fail(f"diagnose --json printed no JSON ({result.returncode}): {result.stdout}\n{result.stderr}")
    assert result.returncode == (0 if doc["ok"] else 1), doc
    return result, doc


def checks(doc: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {c["key"]: c for c in doc["checks"]}


def failing(doc: dict[str, Any]) -> dict[str, str]:
    return {c["key"]: c["detail"] for c in doc["checks"] if c["outcome"] == "fail"}


def status_of(instance: Instance) -> dict[str, Any]:
    result = instance.pinnace("status", "--json", timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def guest(instance: Instance, command: str, timeout: float = 30.0) -> str:
    """A command in the guest (tests/guestexec.run_in)."""
    from tests import guestexec

    return guestexec.run_in(instance, command, timeout)


def started(instance: Instance) -> None:
    done = instance.pinnace("start", timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


# --- healthy, and stopped ------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_a_healthy_instance_passes_every_check(vm_instance: Instance) -> None:
    result, doc = diagnose(vm_instance)
    found = checks(doc)
    assert set(found) == ALL_KEYS
    bad = {k: (c["outcome"], c["detail"]) for k, c in found.items()
           if c["outcome"] == "fail" or (c["outcome"] == "warn" and k not in ENVIRONMENT_WARNINGS)}
    assert not bad, bad
    assert result.returncode == 0
    # Every check ran: only host.docker.internal may skip (Pinnace does not provide it yet).
    assert {k for k, c in found.items() if c["outcome"] == "skip"} <= {"host_docker_internal"}, found
    assert found["engine"]["outcome"] == "pass" and "/_ping" in found["engine"]["detail"]
    assert found["image"]["outcome"] == "pass" and "match their sha256" in found["image"]["detail"]
    assert found["processes"]["outcome"] == "pass" and "matches qemu.pid" in found["processes"]["detail"]
    if found["accel"]["outcome"] == "warn":
        assert "TCG" in found["accel"]["detail"] and found["accel"]["hint"]
    for c in found.values():
        if c["outcome"] in ("warn", "fail"):
            assert c["hint"], c


@pytest.mark.timeout(180)
def test_a_stopped_instance_runs_the_host_checks_only(tmp_path: Path, image_dir: Path) -> None:
    vm = make_instance(tmp_path, image_dir, name="diagstop")
    table = vm.pinnace("diagnose", timeout=120)
    assert table.returncode == 0, table.stdout + table.stderr
    assert "Traceback" not in table.stderr
    assert "skip  Engine answers /_ping" in table.stdout and "the VM is not running" in table.stdout
    _, doc = diagnose(vm)
    found = checks(doc)
    for key in VM_KEYS:
        assert (found[key]["outcome"], found[key]["detail"]) == ("skip", "the VM is not running"), key
    assert found["image"]["outcome"] == "pass" and found["data_disk"]["outcome"] == "skip"
    assert not failing(doc)
    assert not vm.paths.qemu_pidfile.exists()  # nothing was started


# --- faults that need no VM ----------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_a_flipped_byte_in_a_copy_of_the_root_image_fails_the_image_check(tmp_path: Path, image_dir: Path) -> None:
    from vmimage import manifest

    copy = tmp_path / "image"
    shutil.copytree(image_dir, copy)
    rootfs = manifest.load(copy).path_of(copy, "rootfs")
    with open(rootfs, "r+b") as f:
        middle = rootfs.stat().st_size // 2
        f.seek(middle)
        byte = f.read(1)
        f.seek(middle)
        f.write(bytes([byte[0] ^ 0x01]))
    vm = make_instance(tmp_path / "home", copy, name="diagimage")
    result, doc = diagnose(vm, timeout=240)
    assert set(failing(doc)) == {"image"}, failing(doc)
    image = checks(doc)["image"]
    assert str(rootfs) in image["detail"] and "does not match" in image["detail"]
    assert "pinnace image build" in image["hint"]
    assert result.returncode == 1
    assert manifest.sha256_file(manifest.load(image_dir).path_of(image_dir, "rootfs")) == \
        manifest.load(image_dir).artifacts["rootfs"].sha256  # the shared image is untouched


# --- faults on a throwaway instance ---------------------------------------------------------------


@pytest.fixture(scope="module")
def throwaway(tmp_path_factory: pytest.TempPathFactory, image_dir: Path) -> Iterator[tuple[Instance, Path]]:
    """A running instance of its own that shares only one folder under tmp (not $HOME)."""
    folder = tmp_path_factory.mktemp("diag-share") / "shared"
    folder.mkdir()
    (folder / "hello.txt").write_text("hello\n")
    vm = make_instance(tmp_path_factory.mktemp("diag-throwaway"), image_dir, name="diagfault")
    try:
        done = vm.pinnace("config", "set", "shares", str(folder))
        assert done.returncode == 0, done.stdout + done.stderr
        started(vm)
        yield vm, folder
    finally:
        vm.pinnace("stop", timeout=120)


@pytest.mark.timeout(600)
def test_a_share_folder_that_vanished_fails_the_shares_check(throwaway: tuple[Instance, Path]) -> None:
    vm, folder = throwaway
    _, before = diagnose(vm)
    assert checks(before)["shares"]["outcome"] == "pass", checks(before)["shares"]
    assert not failing(before), failing(before)
    moved = folder.with_name("shared-moved")
    folder.rename(moved)
    try:
        _, doc = diagnose(vm)
    finally:
        moved.rename(folder)
    assert set(failing(doc)) == {"shares"}, failing(doc)
    shares = checks(doc)["shares"]
    assert str(folder) in shares["detail"] and "no longer exists" in shares["detail"]
    assert "pinnace config set shares" in shares["hint"]


@pytest.mark.timeout(600)
def test_the_engine_gone_in_the_guest_fails_the_engine_check(throwaway: tuple[Instance, Path]) -> None:
    vm, _ = throwaway
    # dockerd keeps running (busybox init would respawn an engine that exits); its socket goes
    # away, so every new connection through the forwarded socket is refused in the guest.
    guest(vm, "mv /var/run/docker.sock /var/run/docker.sock.diagnose")
    try:
        _, doc = diagnose(vm)
    finally:
        guest(vm, "mv /var/run/docker.sock.diagnose /var/run/docker.sock")
    assert set(failing(doc)) == {"engine"}, failing(doc)
    found = checks(doc)
    assert "socket is missing" in found["engine"]["detail"] or "docker.sock is missing" in found["engine"]["detail"]
    assert "pinnace restart" in found["engine"]["hint"]
    for key in ("dns_container", "host_docker_internal", "networks"):
        assert found[key]["outcome"] == "skip" and "engine" in found[key]["detail"], found[key]
    assert vm.docker("version", "--format", "{{.Server.Version}}").stdout.strip()  # restored


# --- faults on the shared instance, undone -------------------------------------------------------


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@pytest.mark.timeout(600)
def test_a_docker_network_over_a_host_route_fails_the_networks_check(vm_instance: Instance) -> None:
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2's ip")
    # a VPN's tunnel as the host sees it: an interface of its own with a route (dummy where the
    # module exists, else a veth pair, which any kernel with network namespaces has)
    added = _ip("link", "add", DUMMY_IFACE, "type", "dummy")
    if added.returncode != 0:
        added = _ip("link", "add", DUMMY_IFACE, "type", "veth", "peer", "name", f"{DUMMY_IFACE}p")
    if added.returncode != 0:
        pytest.skip(f"cannot add an interface here (needs root): {added.stderr.strip()}")
    network = f"pinnace-diag-{uuid.uuid4().hex[:6]}"
    try:
        for args in (("addr", "add", DUMMY_ADDR, "dev", DUMMY_IFACE), ("link", "set", DUMMY_IFACE, "up")):
            done = _ip(*args)
            assert done.returncode == 0, done.stderr
        routes = json.loads(_ip("-j", "-4", "route", "show").stdout)
        assert any(r.get("dst") == DUMMY_SUBNET and r.get("dev") == DUMMY_IFACE for r in routes), routes
        vm_instance.docker("network", "create", "--subnet", DUMMY_SUBNET, network)
        try:
            _, doc = diagnose(vm_instance)
        finally:
            vm_instance.docker("network", "rm", network, check=False)
    finally:
        _ip("link", "del", DUMMY_IFACE)
    assert set(failing(doc)) == {"networks"}, failing(doc)
    found = checks(doc)["networks"]
    assert network in found["detail"] and DUMMY_SUBNET in found["detail"] and DUMMY_IFACE in found["detail"]
    assert "--subnet" in found["hint"]


@pytest.mark.timeout(600)
def test_a_loose_mode_on_the_engine_socket_fails_the_permissions_check(vm_instance: Instance) -> None:
    sock = vm_instance.docker_socket
    mode = sock.stat().st_mode & 0o777
    assert mode == 0o600
    sock.chmod(0o666)
    try:
        _, doc = diagnose(vm_instance)
    finally:
        sock.chmod(mode)
    assert set(failing(doc)) == {"permissions"}, failing(doc)
    found = checks(doc)["permissions"]
    assert str(sock) in found["detail"] and "0666" in found["detail"]
    assert "chmod 600" in found["hint"]


# --- the support bundle --------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_the_bundle_holds_what_it_lists_and_no_key_material(vm_instance: Instance, tmp_path: Path) -> None:
    dest = tmp_path / "support.tar.gz"
    result = vm_instance.pinnace("diagnose", "--bundle", str(dest), timeout=480)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"support bundle written: {dest}" in result.stdout and "running the checks" in result.stdout
    assert dest.stat().st_mode & 0o777 == 0o600
    with tarfile.open(dest) as tar:
        got = {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    listed = {"README.txt", "versions.json", "status.json", "settings.toml", "checks.json", "logs/agent.log",
              "logs/serial.log", "logs/qemu.log", "image/manifest.json", "engine/info.json",
              "engine/containers.json", "guest/dmesg.txt", "guest/dockerd.log", "guest/mounts.txt"}
    assert listed <= set(got), sorted(listed - set(got))
    versions = json.loads(got["versions.json"])
    assert versions["pinnace"] and versions["qemu"].startswith("QEMU emulator version") and versions["python"]
    assert json.loads(got["status.json"])["state"] == "running"
    assert json.loads(got["engine/info.json"])["ServerVersion"]
    assert isinstance(json.loads(got["engine/containers.json"]), list)
    assert {c["key"] for c in json.loads(got["checks.json"])["checks"]} == ALL_KEYS
    assert b"Linux version" in got["guest/dmesg.txt"]
    assert b"PINNACE-READY" in got["logs/serial.log"] or b"PINNACE-STAGE" in got["logs/serial.log"]

    everything = b"\n".join(got.values())
    assert b"PRIVATE KEY-----" not in everything
    key_dir = vm_instance.paths.keys_dir / vm_instance.name
    private_keys = [key_dir / "id_ed25519", key_dir / "ssh_host_ed25519_key"]
    assert all(p.is_file() for p in private_keys)
    for path in private_keys:
        data = path.read_bytes()
        assert data not in everything
        body = [ln for ln in data.splitlines() if ln and b"-----" not in ln]
        assert body and not any(ln in everything for ln in body), path.name
    public_blob = (key_dir / "id_ed25519.pub").read_text().split()[1].encode()
    assert public_blob not in everything  # public keys are scrubbed too
    assert not any("id_ed25519" in name or "ssh_host" in name for name in got)
