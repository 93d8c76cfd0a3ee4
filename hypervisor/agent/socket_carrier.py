"""Who carries the engine socket's bytes: an OpenSSH ControlMaster when the host has `ssh`, the
agent's own paramiko forwarder otherwise and whenever it must answer itself.

The master starts in the background once the engine answers, so it never delays "ready"; the
engine socket's name is switched to its listener once it serves (endpoint_switch.py). A paused VM
switches back to the agent, whose forwarder answers in one line; a master that exits switches back
too and a new one is tried after REVIVE_INTERVAL_S. Its state is one status line ("transport").
"""

from __future__ import annotations

import logging
import re
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from hypervisor import platform as host_platform
from hypervisor.endpoint_switch import EndpointSwitch
from hypervisor.errors import PinnaceError
from hypervisor.openssh_mux import MasterSpec, OpenSSHMaster, known_hosts_line
from hypervisor.paths import Paths

if TYPE_CHECKING:
    from hypervisor.ssh import SSHTarget

log = logging.getLogger("pinnace.agent")

REVIVE_INTERVAL_S = 10.0
MAX_RETRY_S = 300.0
MASTER_LISTENER = "engine.ssh"  # beside the engine socket, so it fits wherever that name fits
AGENT = "paramiko channels"


def openssh_version(ssh_binary: str) -> str:
    """"OpenSSH_9.2p1" from `ssh -V`, or "" if it cannot be told."""
    try:
        done = subprocess.run([ssh_binary, "-V"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    found = re.search(r"OpenSSH_[\w.]+", done.stderr + done.stdout)
    return found.group(0) if found else ""


class SocketCarrier:
    """The ControlMaster of one running VM: started, watched, paused with the VM, revived."""

    def __init__(self, paths: Paths, endpoint: Path, target: SSHTarget, remote_socket: str,
                 on_change: Callable[[str], None], ssh_binary: str | None = None) -> None:
        """`target`: the guest's sshd as the agent's own link reaches it (port, key, pinned key)."""
        host_platform.current().write_private_text(paths.ssh_known_hosts, known_hosts_line(target.host_public))
        self.switch = EndpointSwitch(endpoint)
        spec = MasterSpec(target.host, target.port, target.user, target.client_key, paths.ssh_known_hosts,
                          paths.ssh_mux_socket, endpoint.with_name(MASTER_LISTENER), remote_socket)
        self.master = OpenSSHMaster(spec, paths.ssh_master_log, ssh_binary)
        self._on_change = on_change
        self._lock = threading.RLock()
        self._starting = False
        self._closed = False
        self._paused = False
        self._failures = 0  # master starts failed in a row: retries back off
        self._version = ""

    def start(self) -> None:
        """Call once the agent's forwarder is bound at the endpoint; the master follows."""
        self.switch.adopt()
        if not self.master.available:
            self._on_change(f"{AGENT} (no OpenSSH client on PATH)")
            return
        self._on_change(f"{AGENT} (OpenSSH master starting)")
        self._revive(0.0)

    def pause(self, drop_connections: bool) -> None:
        """The agent answers while the VM is paused; `drop_connections` also ends the master's."""
        with self._lock:
            self._paused = True
            self._switch_to_agent()
        if drop_connections:
            self.master.stop()

    def resume(self) -> None:
        with self._lock:
            self._paused = False
            if self.master.running():
                self._switch_to_master()
                return
        self._revive(0.0)

    def endpoint_replaced(self) -> None:
        """A new forwarder is bound at the endpoint (its directory was wiped): the master's
        listener lost its name with it, so a new master is started."""
        self.switch.adopt()
        self.master.stop()  # its watcher revives it

    def close(self) -> None:
        """Back to the agent's listener (its forwarder removes the endpoint), then end the master."""
        with self._lock:
            self._closed = True
            self._switch_to_agent()
        self.master.stop()
        self.switch.release()

    # --- the master's life -----------------------------------------------------------------------

    def _revive(self, delay: float) -> None:
        with self._lock:
            if self._closed or self._starting or not self.master.available:
                return
            self._starting = True
        threading.Thread(target=self._run_master, args=(delay,), name="ssh-master", daemon=True).start()

    def _run_master(self, delay: float) -> None:
        next_delay = None
        try:
            next_delay = self._start_and_watch(delay)
        finally:
            with self._lock:
                self._starting = False
        if next_delay is not None:
            self._revive(next_delay)

    def _start_and_watch(self, delay: float) -> float | None:
        """Start a master, hand it the endpoint, watch it until it exits and hand the endpoint
        back; how long until the next try (None: not until the VM resumes)."""
        time.sleep(delay)
        with self._lock:
            if self._closed or self._paused:
                return None
        self.master.stop()  # what a dead one left behind
        try:
            self.master.start()
        except PinnaceError as e:
            self._failures += 1
            log.warning("the engine socket stays on %s: %s", AGENT, e)
            self._on_change(f"{AGENT} (OpenSSH master failed: {e})")
            return min(MAX_RETRY_S, REVIVE_INTERVAL_S * 2 ** self._failures)
        self._failures = 0
        with self._lock:
            if self._closed:
                self.master.stop()
                return None
            if not self._paused:
                self._switch_to_master()
        code = self.master.wait()
        with self._lock:
            if self._closed:
                return None
            self._switch_to_agent()
        why = self._exit_reason(code)
        log.warning("ssh master exited (%s): the agent carries the engine socket", why)
        self._on_change(f"{AGENT} (OpenSSH master exited: {why}; retrying)")
        return REVIVE_INTERVAL_S

    def _exit_reason(self, code: int | None) -> str:
        if self.master.stopped_by_us:
            return "stopped by the agent"
        if code is not None and code < 0:
            return f"killed by signal {-code}"
        return self.master.log_tail() if code else "ended"

    def _switch_to_master(self) -> None:
        try:
            self.switch.point_to(self.master.spec.listen_path)
        except PinnaceError as e:
            log.warning("the engine socket stays on %s: %s", AGENT, e)
            self._on_change(f"{AGENT} ({e})")
            return
        if not self._version:
            self._version = openssh_version(self.master.ssh_binary or "ssh") or "OpenSSH"
        self._on_change(f"{self._version} ControlMaster")

    def _switch_to_agent(self) -> None:
        try:
            self.switch.to_agent()
        except PinnaceError as e:
            log.error("%s", e)
