"""One tray per user and instance: a second start hands its request to the first and exits.

On POSIX the server is a socket file in the instance's private runtime dir (per-user by
construction, isolated by PINNACE_HOME); on Windows a named pipe carrying user and instance.
"""

from __future__ import annotations

import getpass
import hashlib
import logging

from PySide6.QtCore import QObject, Signal
from PySide6.QtNetwork import QLocalServer, QLocalSocket

from hypervisor.paths import Paths

log = logging.getLogger(__name__)

MESSAGES = ("menu", "dashboard", "settings")
CONNECT_TIMEOUT_MS = 1000


def server_name(paths: Paths, host_os: str) -> str:
    if host_os == "windows":
        try:
            user = getpass.getuser()
        except Exception:  # noqa: BLE001 - no user name: fall back to a constant per machine
            user = "user"
        digest = hashlib.sha256(f"{user}\0{paths.runtime_dir}".encode()).hexdigest()[:12]
        return f"pinnace-tray-{paths.instance}-{digest}"
    return str(paths.socket_path(paths.socket_dir / "tray.sock"))


def send(name: str, message: str, timeout_ms: int = CONNECT_TIMEOUT_MS) -> bool:
    """Deliver `message` to a running tray; False when none answers."""
    sock = QLocalSocket()
    sock.connectToServer(name)
    if not sock.waitForConnected(timeout_ms):
        return False
    sock.write(message.encode() + b"\n")
    ok = sock.waitForBytesWritten(timeout_ms)
    sock.disconnectFromServer()
    return ok


class SingleInstance(QObject):
    """Owns the server; `activated(message)` fires when a second start knocks."""

    activated = Signal(str)

    def __init__(self, name: str, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.name = name
        self.server = QLocalServer(self)
        self.server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)
        self.server.newConnection.connect(self._on_connection)

    def claim(self) -> bool:
        """Listen unless a live tray answers; a stale socket left by a crash is replaced.

        Ask first: with socket options set, Qt binds elsewhere and renames over the name,
        which would silently steal a live server's address."""
        if send(self.name, "ping", 300):
            return False
        if self.server.listen(self.name):
            return True
        QLocalServer.removeServer(self.name)
        if self.server.listen(self.name):
            return True
        log.warning("cannot listen on %s: %s", self.name, self.server.errorString())
        return False

    def close(self) -> None:
        self.server.close()

    def _on_connection(self) -> None:
        while self.server.hasPendingConnections():
            sock = self.server.nextPendingConnection()
            if sock is None:
                break
            # Connect to our own slots (no lambdas holding the socket): the server owns it.
            sock.readyRead.connect(self._read_sender)
            sock.disconnected.connect(sock.deleteLater)
            self._read(sock)

    def _read_sender(self) -> None:
        sock = self.sender()
        if isinstance(sock, QLocalSocket):
            self._read(sock)

    def _read(self, sock: QLocalSocket) -> None:
        while sock.canReadLine():
            message = bytes(sock.readLine().data()).decode(errors="replace").strip()
            if message in MESSAGES:
                log.info("another start asked for the %s", message)
                self.activated.emit(message)
