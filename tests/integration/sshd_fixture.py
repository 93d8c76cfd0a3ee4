"""A throwaway OpenSSH sshd on 127.0.0.1 standing in for the guest's sshd, plus tiny unix-socket servers.

Used by the integration tests and the forwarder benchmark. The sshd uses keys made by
hypervisor.keys exactly as a real instance would (pinned host key, restricted authorized_keys).
"""

from __future__ import annotations

import getpass
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from hypervisor.keys import authorized_keys_line, ensure_instance_keys
from hypervisor.ssh import SSHTarget

log = logging.getLogger(__name__)

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def sshd_available() -> bool:
    return os.path.exists(SSHD)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    """All descendants of pid (sshd's per-connection children survive their parent's death)."""
    by_parent: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        by_parent.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in by_parent.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


@dataclass
class HostSSHD:
    """sshd -D on a free port with a temp config; `kill_all` simulates a guest reboot."""

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.keys = ensure_instance_keys(self.workdir / "keys", "test")
        self.authorized_keys = self.workdir / "authorized_keys"
        self.authorized_keys.write_text(authorized_keys_line(self.keys.client_public) + "\n")
        self.config = self.workdir / "sshd_config"
        self.config.write_text(
            "\n".join(
                [
                    "ListenAddress 127.0.0.1",
                    f"AuthorizedKeysFile {self.authorized_keys}",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "PermitRootLogin prohibit-password",
                    "AllowStreamLocalForwarding yes",
                    "PidFile none",
                    "StrictModes no",
                    "UsePAM no",
                    "LogLevel ERROR",
                    "MaxStartups 100:30:200",
                    "",
                ]
            )
        )

    def target(self, host_public: str | None = None) -> SSHTarget:
        return SSHTarget(
            host="127.0.0.1",
            port=self.port,
            user=getpass.getuser(),
            client_key=self.keys.client_key,
            host_public=host_public or self.keys.host_public,
            instance="test",
        )

    def start(self, timeout: float = 10.0) -> None:
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation dir
        log_file = open(self.workdir / "sshd.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.config), "-p", str(self.port), "-h", str(self.keys.host_key)],
            stdout=log_file,
            stderr=log_file,
        )
        log_file.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.workdir / 'sshd.log').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    if s.recv(4).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sshd did not start listening")

    def kill_all(self) -> None:
        """SIGKILL sshd and every per-connection child, like a guest reboot would."""
        if self.proc is None:
            return
        for pid in [self.proc.pid, *_children(self.proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=5)
        self.proc = None

    def stop(self) -> None:
        self.kill_all()


# --- unix-socket servers the channels connect to ----------------------------------------------


class UnixServer:
    """A threaded unix-socket server; `handle(conn)` runs per connection in its own thread."""

    def __init__(self, path: Path, handle) -> None:  # noqa: ANN001
        self.path = Path(path)
        self._handle = handle
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(self.path))
        self._sock.listen(512)
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name=f"srv-{path.name}")
        self._thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            self._handle(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def echo_handler(conn: socket.socket) -> None:
    """Echo everything; on EOF, send 'BYE' after the echo (tests half-close), then close."""
    while True:
        data = conn.recv(262144)
        if not data:
            break
        conn.sendall(data)
    conn.sendall(b"BYE")


def ping_handler(conn: socket.socket) -> None:
    """Minimal HTTP/1.1 server answering every request (e.g. GET /_ping) with 'OK', keep-alive."""
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            data = conn.recv(65536)
            if not data:
                return
            buf += data
        head, _, buf = buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(buf) < length:
            data = conn.recv(min(1 << 20, length - len(buf)))
            if not data:
                return
            buf += data
        buf = buf[length:]
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nOK")


def sink_handler(conn: socket.socket) -> None:
    """Read and count everything until EOF, then answer the byte count (bulk upload benchmark)."""
    total = 0
    while True:
        data = conn.recv(1 << 20)
        if not data:
            break
        total += len(data)
    conn.sendall(str(total).encode())
