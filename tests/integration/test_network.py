"""The network a developer's day needs (issue #15), with real parts: a host HTTP server on the
host's loopback reached from containers as host.docker.internal (default bridge, a user network,
`host-gateway`, a `docker build` RUN step), and the host's ssh-agent used from a container through
/run/host-services/ssh-auth.sock."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Instance, make_instance
from tests.waiting import wait_for

pytestmark = [pytest.mark.vm]

MARKER = "reached-the-host"


@pytest.fixture(scope="module")
def host_server() -> Iterator[int]:
    """An HTTP server on the host's 127.0.0.1 only: what a developer's local API looks like."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = MARKER.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def fetch(vm: Instance, image: str, url: str, *extra: str) -> str:
    return vm.docker("run", "--rm", *extra, image, "wget", "-qO-", "-T", "10", url, timeout=120).stdout


@pytest.mark.timeout(300)
def test_host_docker_internal_reaches_the_hosts_loopback(vm_instance: Instance, busybox: str, host_server: int) -> None:
    vm = vm_instance
    url = f"http://host.docker.internal:{host_server}/"
    assert fetch(vm, busybox, url) == MARKER  # the default bridge
    network = f"hdi-{os.getpid()}"
    vm.docker("network", "create", network)
    try:
        assert fetch(vm, busybox, url, "--network", network) == MARKER  # Docker's embedded DNS
    finally:
        vm.docker("network", "rm", network, check=False)
    # compose's `extra_hosts: - host.docker.internal:host-gateway`, and any other name
    assert fetch(vm, busybox, f"http://devapi:{host_server}/", "--add-host", "devapi:host-gateway") == MARKER
    gateway = vm.docker("run", "--rm", busybox, "nslookup", "gateway.docker.internal", timeout=120).stdout
    assert "10.0.2.2" in gateway, gateway


@pytest.mark.timeout(300)
def test_host_docker_internal_from_a_build_step(vm_instance: Instance, busybox: str, host_server: int,
                                                 tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(
        f"FROM {busybox}\nRUN wget -qO /fetched -T 10 http://host.docker.internal:{host_server}/\n"
        "CMD [\"cat\", \"/fetched\"]\n")
    vm, tag = vm_instance, f"pinnace-test/hdi-build:{os.getpid()}"
    vm.docker("build", "-q", "-t", tag, str(tmp_path), timeout=300)
    try:
        assert vm.docker("run", "--rm", tag).stdout == MARKER
    finally:
        vm.docker("rmi", "-f", tag, check=False)


# --- the host's ssh-agent ---------------------------------------------------------------------

# Lists an ssh-agent's identities (SSH2_AGENTC_REQUEST_IDENTITIES): one comment per line. Static,
# so it runs in a FROM-scratch container; the guest has no ssh client.
AGENT_LIST_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
static int full(int fd, unsigned char *b, size_t n) {
    while (n) { ssize_t r = read(fd, b, n); if (r <= 0) return -1; b += r; n -= (size_t)r; } return 0; }
static unsigned be32(const unsigned char *p) { return (unsigned)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3]; }
int main(int argc, char **argv) {
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    strncpy(a.sun_path, argc > 1 ? argv[1] : getenv("SSH_AUTH_SOCK"), sizeof a.sun_path - 1);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("connect"); return 2; }
    unsigned char req[5] = {0, 0, 0, 1, 11}, len[4];
    if (write(fd, req, 5) != 5 || full(fd, len, 4)) { perror("agent"); return 3; }
    unsigned n = be32(len); unsigned char *m = malloc(n);
    if (!m || full(fd, m, n) || m[0] != 12) { fprintf(stderr, "bad answer\n"); return 4; }
    unsigned char *p = m + 5; unsigned keys = be32(m + 1);
    for (unsigned i = 0; i < keys; i++) {
        unsigned bl = be32(p); p += 4 + bl; unsigned cl = be32(p);
        printf("%.*s\n", (int)cl, (char *)p + 4); p += 4 + cl;
    }
    return 0;
}
"""


@pytest.fixture
def host_agent(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An ssh-agent of the test's own, holding one generated key."""
    if shutil.which("ssh-agent") is None or shutil.which("gcc") is None:
        pytest.skip("ssh-agent and gcc are needed")
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        wait_for("the ssh-agent socket", sock.exists, 10, 0.1)
        key = tmp_path / "id_test"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pinnace-agent-test", "-f", str(key)],
                       check=True)
        subprocess.run(["ssh-add", "-q", str(key)], env={**os.environ, "SSH_AUTH_SOCK": str(sock)}, check=True,
                       capture_output=True)
        yield {"SSH_AUTH_SOCK": str(sock)}
    finally:
        agent.terminate()
        agent.wait(10)


@pytest.mark.timeout(600)
def test_the_hosts_ssh_agent_is_usable_in_a_container(tmp_path_factory: pytest.TempPathFactory, image_dir: Path,
                                                      host_agent: dict[str, str]) -> None:
    vm = make_instance(tmp_path_factory.mktemp("agent"), image_dir, name="agentfw")
    vm.env.update(host_agent)
    work = tmp_path_factory.mktemp("agentlist")
    (work / "agent-list.c").write_text(AGENT_LIST_C)
    subprocess.run(["gcc", "-static", "-Os", "-o", str(work / "agent-list"), str(work / "agent-list.c")], check=True)
    try:
        assert vm.pinnace("start").returncode == 0
        status = json.loads(vm.pinnace("status", "--json").stdout)
        assert status["host_ssh_agent"] == "forwarded to /run/host-services/ssh-auth.sock", status["host_ssh_agent"]
        tar = subprocess.run(["tar", "-C", str(work), "-c", "agent-list"], capture_output=True, check=True).stdout
        vm.docker("import", "-c", 'ENTRYPOINT ["/agent-list"]', "-", "pinnace-test/agent-list", input=tar)
        listed = vm.docker("run", "--rm", "-u", "1000", "-v", "/run/host-services/ssh-auth.sock:/agent.sock",
                           "pinnace-test/agent-list", "/agent.sock", timeout=120)
        assert listed.stdout.splitlines() == ["pinnace-agent-test"], listed.stdout + listed.stderr
    finally:
        vm.pinnace("stop", timeout=120)


# --- DNS that follows the host ----------------------------------------------------------------

TEST_NAME = "pinnace-dns-test.example"
TEST_ADDRESS = "192.0.2.55"  # TEST-NET-1: never a real host
TEST_RESOLVER = "127.0.0.77"


@pytest.fixture
def host_resolver_switch() -> Iterator[Path]:
    """A DNS server of the test's own on a loopback address (Debian's dnsmasq) that knows one test
    name and forwards the rest to the host's resolver; yields /etc/resolv.conf, restored after."""
    resolv = Path("/etc/resolv.conf")
    if os.geteuid() != 0 or shutil.which("dnsmasq") is None:
        pytest.skip("needs root and dnsmasq (dnsmasq-base)")
    original = resolv.read_bytes()
    upstream = [ln.split()[1] for ln in original.decode().splitlines() if ln.startswith("nameserver")]
    server = subprocess.Popen(
        ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces",
         f"--listen-address={TEST_RESOLVER}", "--port=53", "--cache-size=0", "--pid-file=",
         f"--address=/{TEST_NAME}/{TEST_ADDRESS}", *(f"--server={u}" for u in upstream[:1])],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield resolv
    finally:
        resolv.write_bytes(original)
        server.terminate()
        server.wait(10)


def resolves(vm: Instance, image: str) -> bool:
    out = vm.docker("run", "--rm", image, "nslookup", TEST_NAME, check=False, timeout=120)
    return TEST_ADDRESS in out.stdout


@pytest.mark.timeout(300)
def test_dns_follows_the_hosts_resolver_without_a_restart(vm_instance: Instance, busybox: str,
                                                          host_resolver_switch: Path) -> None:
    vm, resolv = vm_instance, host_resolver_switch
    assert not resolves(vm, busybox)
    original = resolv.read_text()
    resolv.write_text(f"nameserver {TEST_RESOLVER}\n")  # what a VPN client does on connect
    wait_for("the new resolver used by a new container", lambda: resolves(vm, busybox), 20, 1.0)
    resolv.write_text(original)  # and on disconnect
    wait_for("the old resolver back", lambda: not resolves(vm, busybox), 20, 1.0)
