"""Real servers from Debian's packages on the host's loopback, for pull, push and proxy tests:
the distribution registry (`docker-registry`, plain HTTP or TLS) and `tinyproxy`.

The guest reaches them as host.docker.internal (user networking's host alias, 10.0.2.2). A proxy
on the host must resolve that name too: tinyproxy runs in a private mount namespace whose
/etc/hosts maps it to 127.0.0.1, so the host's own /etc/hosts is never touched."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.tlskit import ServerCert

REGISTRY = "docker-registry"
TINYPROXY = "tinyproxy"


def missing() -> str:
    """Why these tests cannot run here ('' when they can)."""
    for tool in (REGISTRY, TINYPROXY, "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/install.sh installs it)"
    return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen, log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"not listening on {port} after {timeout} s: {log.read_text(errors='replace')[-2000:]}")


@dataclass
class Server:
    port: int
    proc: subprocess.Popen
    log: Path

    @property
    def address(self) -> str:
        """As the guest names it."""
        return f"host.docker.internal:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def registry_config(root: Path, port: int, tls: ServerCert | None) -> str:
    lines = ["version: 0.1", "log:", "  level: info", "storage:", "  filesystem:",
             f"    rootdirectory: {root}", "  delete:", "    enabled: true", "http:", f"  addr: 127.0.0.1:{port}"]
    if tls is not None:
        lines += ["  tls:", f"    certificate: {tls.cert_pem}", f"    key: {tls.key_pem}"]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def registry(directory: Path, tls: ServerCert | None = None) -> Iterator[Server]:
    """Debian's distribution registry on 127.0.0.1 (TLS with `tls`), its storage in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = directory / "config.yml"
    config.write_text(registry_config(directory / "storage", port, tls))
    log = directory / "registry.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([REGISTRY, "serve", str(config)], stdout=out, stderr=subprocess.STDOUT)
    server = Server(port, proc, log)
    try:
        wait_listening(port, proc, log)
        yield server
    finally:
        server.stop()


def tinyproxy_config(port: int, log: Path, connect_ports: tuple[int, ...]) -> str:
    lines = [f"Port {port}", "Listen 127.0.0.1", "Timeout 120", f"LogFile \"{log}\"", "LogLevel Info",
             "MaxClients 50", "Allow 127.0.0.1", "DisableViaHeader Yes"]
    lines += [f"ConnectPort {p}" for p in connect_ports]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def tinyproxy(directory: Path, connect_ports: tuple[int, ...]) -> Iterator[Server]:
    """tinyproxy on 127.0.0.1, resolving host.docker.internal to the host's loopback in a private
    mount namespace; CONNECT allowed to `connect_ports`. Its log records each request."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = directory / "tinyproxy.log"
    log.touch()
    config = directory / "tinyproxy.conf"
    config.write_text(tinyproxy_config(port, log, connect_ports))
    hosts = directory / "hosts"
    hosts.write_text("127.0.0.1 localhost host.docker.internal\n::1 localhost\n")
    script = f"mount --bind {hosts} /etc/hosts && exec {shutil.which(TINYPROXY)} -d -c {config}"
    with open(directory / "tinyproxy.out", "wb") as out:
        proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                                stdout=out, stderr=subprocess.STDOUT)
    server = Server(port, proc, log)
    try:
        wait_listening(port, proc, directory / "tinyproxy.out")
        yield server
    finally:
        server.stop()
