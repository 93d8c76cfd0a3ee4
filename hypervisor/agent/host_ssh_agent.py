"""The host's ssh-agent inside the guest, at Docker Desktop's fixed path (issue #15).

`docker run -v /run/host-services/ssh-auth.sock:/agent.sock -e SSH_AUTH_SOCK=/agent.sock …` and
`docker build --ssh default=/run/host-services/ssh-auth.sock` then reach the keys of the agent the
user's session runs. It rides on the engine link's SSH transport: one long-lived session asks
sshd for agent forwarding (paramiko answers each agent channel from the host's SSH_AUTH_SOCK),
and the command it runs links sshd's per-session socket to the fixed path, then waits. When the
session ends (a reconnect, a stop) sshd removes its socket, and the session is opened again.
No agent on the host: nothing is forwarded, the path stays absent, and the status says so.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger("pinnace.agent")

GUEST_PATH = "/run/host-services/ssh-auth.sock"
# The socket sshd made for this session, linked at the fixed path and opened to every user of the
# guest's containers (a container's user is rarely the guest's root); the session then just waits.
GUEST_COMMAND = (
    'test -S "$SSH_AUTH_SOCK" || exit 3; mkdir -p /run/host-services; chmod 0666 "$SSH_AUTH_SOCK"; '
    f'ln -sfn "$SSH_AUTH_SOCK" {GUEST_PATH}; exec sleep 2147483647'
)
RETRY_S = (0.5, 1.0, 2.0, 5.0, 10.0)

OpenTransport = Callable[[], Any]  # GuestSSH.ensure_connected: the live paramiko Transport


def host_agent_socket(env: Mapping[str, str] | None = None) -> tuple[str | None, str]:
    """The host's agent socket, or None and why not (shown in `status`)."""
    path = (os.environ if env is None else env).get("SSH_AUTH_SOCK", "")
    if not path:
        return None, "no ssh-agent on the host (SSH_AUTH_SOCK was not set when the VM started)"
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return None, f"SSH_AUTH_SOCK ({path}) is not a socket"
    except OSError as exc:
        return None, f"the host's ssh-agent socket {path} cannot be reached: {exc.strerror or exc}"
    return path, ""


class HostAgentForward:
    """Keeps the forwarding session open for the VM's life (a thread; `close` ends it)."""

    def __init__(self, open_transport: OpenTransport, on_change: Callable[[str], None]) -> None:
        self.open_transport, self.on_change = open_transport, on_change
        self._closed = threading.Event()
        self._channel: Any = None
        self._thread = threading.Thread(target=self._run, name="host-ssh-agent", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        channel = self._channel
        if channel is not None:
            try:
                channel.close()
            except Exception:  # noqa: BLE001 - closing a dead channel
                pass

    def _run(self) -> None:
        attempt = 0
        while not self._closed.is_set():
            try:
                channel = self._open()
            except Exception as exc:  # noqa: BLE001 - SSH down for a moment (guest restarting, sleep)
                log.info("host ssh-agent: cannot open the forwarding session: %s", exc)
                self._closed.wait(RETRY_S[min(attempt, len(RETRY_S) - 1)])
                attempt += 1
                continue
            self.on_change(f"forwarded to {GUEST_PATH}")
            attempt = 0
            code = channel.recv_exit_status()  # until the session ends
            if self._closed.is_set():
                break
            if code == 3:
                self.on_change("not forwarded: the guest's sshd refused agent forwarding")
                log.warning("host ssh-agent: the guest's sshd refused agent forwarding (an older image?)")
                return
            log.info("host ssh-agent: the forwarding session ended (%s); opening it again", code)
            self._closed.wait(RETRY_S[0])

    def _open(self) -> Any:
        transport = self.open_transport()
        channel = transport.open_session(timeout=10.0)
        self._channel = channel
        import paramiko.agent  # here, not at the top: the agent loads SSH after QEMU has started

        paramiko.agent.AgentRequestHandler(channel)  # answers the guest's agent channels from SSH_AUTH_SOCK
        channel.exec_command(GUEST_COMMAND)
        return channel
