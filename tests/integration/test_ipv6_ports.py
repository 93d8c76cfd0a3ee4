"""Published ports on the host's IPv6 loopback, through the real CLI, agent, QEMU, guest and engine.

-p [::1]:P:80 and -p [::]:P:80 answer on the host's [::1]:P and leave 127.0.0.1:P alone; -p P:80
answers on both; UDP on [::1] echoes; a removed container's IPv6 port refuses connections and
leaves no guest relay behind.
"""

from __future__ import annotations

import shutil
import socket
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hypervisor.ports import GUEST_RELAY_ADDR
from tests.conftest import Instance
from tests.integration.test_ports_mounts import HTTPD, build_udp_echo, forwards
from tests.netcheck import needs_ipv6
from tests.waiting import wait_for

pytestmark = [pytest.mark.vm]


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free on both 127.0.0.1 and ::1, so "refused" on either means Pinnace left it alone."""
    for _ in range(50):
        with socket.socket(socket.AF_INET6, kind) as six:
            six.bind(("::1", 0))
            port = int(six.getsockname()[1])
            with socket.socket(socket.AF_INET, kind) as four:
                try:
                    four.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port
    raise AssertionError("no port free on both loopbacks")


def http_get(host: str, port: int, timeout: float = 5.0) -> str:
    url = f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
    with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310
        return reply.read().decode()


def refused(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return False
    except OSError:
        return True


def guest(vm: Instance, command: str, timeout: float = 30.0) -> str:
    """A command in the guest (tests/guestexec.run_in)."""
    from tests import guestexec

    return guestexec.run_in(vm, command, timeout)


def guest_relays(vm: Instance) -> list[str]:
    """The guest relays running now (docker-proxy processes on the relay address)."""
    lines = guest(vm, "ps -o pid,args").splitlines()
    return [line for line in lines if "docker-proxy" in line and f"-host-ip {GUEST_RELAY_ADDR} " in line]


def entries_of(vm: Instance, name: str) -> dict[str, dict]:
    """The container's status entries, by their first host address."""
    return {e["addresses"][0]: e for e in forwards(vm) if e["container_name"] == name}


@pytest.fixture
def host_dir() -> Iterator[Path]:
    """A directory under the default share ($HOME)."""
    path = Path.home() / f"pinnace-test-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@needs_ipv6
@pytest.mark.timeout(600)
def test_tcp_on_ipv6_loopback_and_gone_with_the_container(vm_instance: Instance, busybox: str) -> None:
    vm = vm_instance
    only_loop, only_any, default = free_port(), free_port(), free_port()
    name = f"web6-{uuid.uuid4().hex[:6]}"
    vm.docker("run", "-d", "--name", name, "--hostname", "web6", "-p", f"[::1]:{only_loop}:80",
              "-p", f"[::]:{only_any}:80", "-p", f"{default}:80", busybox, "sh", "-c", HTTPD)
    try:
        for host, port in (("::1", only_loop), ("::1", only_any), ("::1", default), ("127.0.0.1", default)):
            assert wait_for(f"HTTP on {host} port {port}", lambda h=host, p=port: http_get(h, p) == "hello-web6\n", 60)
        # An IPv6-only binding takes nothing on the host's IPv4 loopback.
        assert refused("127.0.0.1", only_loop) and refused("127.0.0.1", only_any)

        entries = wait_for("the IPv6 entries", lambda: (found := entries_of(vm, name)) and len(found) == 3 and found,
                           30)
        assert set(entries) == {f"[::1]:{only_loop}/tcp", f"[::1]:{only_any}/tcp", f"127.0.0.1:{default}/tcp"}
        assert all(e["error"] == "" for e in entries.values()), entries
        assert entries[f"[::1]:{only_loop}/tcp"]["host_ip"] == "::1"
        assert entries[f"[::1]:{only_loop}/tcp"]["via"].startswith("127.0.0.1:")
        assert entries[f"127.0.0.1:{default}/tcp"]["addresses"] == [f"127.0.0.1:{default}/tcp", f"[::1]:{default}/tcp"]
        relays = guest_relays(vm)
        assert {p for p in (only_loop, only_any) if any(f"-host-port {p} " in line for line in relays)} == {
            only_loop, only_any}, relays
    finally:
        vm.docker("rm", "-f", name, check=False)
    for port in (only_loop, only_any, default):
        wait_for(f"[::1]:{port} refused after rm", lambda p=port: refused("::1", p), 10, 0.2)
    wait_for("no guest relay left", lambda: not [line for line in guest_relays(vm)
                                                 if f"-host-port {only_loop} " in line
                                                 or f"-host-port {only_any} " in line], 10, 0.5)
    assert not entries_of(vm, name)


def udp_echo(port: int, payload: bytes) -> bytes:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(payload, ("::1", port))
        return s.recvfrom(65536)[0]


@needs_ipv6
@pytest.mark.timeout(600)
def test_udp_on_ipv6_loopback(vm_instance: Instance, busybox: str, host_dir: Path) -> None:
    # busybox's nc has no -u and the image's busybox has no udpsvd: a tiny static UDP echo server.
    build_udp_echo(host_dir)
    vm = vm_instance
    port = free_port(socket.SOCK_DGRAM)
    name = f"udp6-{uuid.uuid4().hex[:6]}"
    vm.docker("run", "-d", "--name", name, "-p", f"[::1]:{port}:9000/udp", "-v", f"{host_dir}:/x:ro", busybox,
              "/x/udpecho", "9000")
    try:
        assert wait_for("UDP echo on [::1]", lambda: udp_echo(port, b"ping6") == b"ping6", 60)
        entry = entries_of(vm, name)[f"[::1]:{port}/udp"]
        assert entry["proto"] == "udp" and entry["error"] == ""
        assert any(f"-proto udp -host-ip {GUEST_RELAY_ADDR} -host-port {port} " in line for line in guest_relays(vm))
    finally:
        vm.docker("rm", "-f", name, check=False)
    wait_for("the UDP relay gone", lambda: not entries_of(vm, name)
             and not [line for line in guest_relays(vm) if f"-host-port {port} " in line], 30, 0.5)
