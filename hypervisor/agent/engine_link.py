"""The engine link: the way from the host to the guest's dockerd, and what rides on it.

One SSH transport to the guest's sshd (pinned host key), the engine-socket forwarder on the host
(a private unix socket, or a named pipe where the platform has no unix sockets for docker), an
OpenSSH ControlMaster that carries the unix socket's bytes while the VM runs (socket_carrier.py), the
engine's readiness (`/_ping`, then `/version`), published ports (QMP hostfwd kept equal to the
containers' ports; the agent relays IPv6 ones, with a guest relay over this link when needed),
the hint for bind mounts outside the shares, and the host file changes under bind-mounted
shares replayed as inotify events in the guest (file_events.py). Failures are raised with their
cause; `close` never blocks longer than its bounds, even against a dead or paused guest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hypervisor import engine, mounts
from hypervisor.agent.file_events import FileEventRelay
from hypervisor.agent.host_ssh_agent import HostAgentForward, host_agent_socket
from hypervisor.agent.qemu_driver import Machine
from hypervisor.agent.recovery import paused_engine_message
from hypervisor.agent.socket_carrier import AGENT as AGENT_TRANSPORT
from hypervisor.agent.socket_carrier import SocketCarrier
from hypervisor.agent.status_board import StatusBoard
from hypervisor.errors import EngineUnavailableError, HostKeyMismatchError, MachineError, PinnaceError, SSHError
from hypervisor.openssh_mux import end_stale_master
from hypervisor.paths import Paths
from hypervisor.platform import Platform
from hypervisor.port_publisher import Hmp, PortPublisher
from hypervisor.settings import HostFacts
from hypervisor.settings import load as load_settings

if TYPE_CHECKING:
    from hypervisor.ssh import GuestSSH

log = logging.getLogger("pinnace.agent")

ENGINE_SOCKET = "/var/run/docker.sock"
ENGINE_RECONNECT_GRACE_S = 20.0  # how long a new channel waits out an sshd restart in the guest
ENGINE_CALL_TIMEOUT_S = 10.0  # one readiness request; a paused guest must not hold a thread forever
CLOSE_STEP_TIMEOUT_S = 5.0
KEEPALIVE_S = 7.5  # asked every 7.5 s, answered within 7.5 s: a dead transport is found within 15 s


class EngineLink:
    def __init__(self, paths: Paths, board: StatusBoard, platform: Platform) -> None:
        self.paths, self.board, self.platform = paths, board, platform
        self.ssh: GuestSSH | None = None
        self.forwarder: Any = None  # UnixSocketForwarder | NamedPipeForwarder
        self.ports: PortPublisher | None = None
        self.file_events: FileEventRelay | None = None
        self.paused: str | None = None  # why the VM is paused: new engine connections are refused
        self._retired: list[Any] = []  # forwarders whose socket file was removed (keep_endpoint)
        self.host_agent: HostAgentForward | None = None
        self.carrier: SocketCarrier | None = None  # the OpenSSH master carrying engine connections

    # --- connecting ------------------------------------------------------------------------

    async def reach(self, machine: Machine, deadline: float) -> None:
        """Until the guest's sshd answers with the pinned key (it starts long before the engine)."""

        def connect() -> None:
            # SSH (paramiko, ~0.1 s of imports) loads here, on an executor thread while the guest
            # boots, not before QEMU starts.
            from hypervisor.ssh import GuestSSH, SSHTarget

            self.ssh = GuestSSH(SSHTarget("127.0.0.1", machine.ssh_port, "root", machine.client_key,
                                          machine.host_public, self.paths.instance))
            self.ssh.wait_until_reachable(deadline)

        await asyncio.get_running_loop().run_in_executor(None, connect)

    async def attach(self, hmp: Hmp, ssh_port: int, deadline: float) -> None:
        """The engine answering, its socket forwarded and published ports followed."""
        loop = asyncio.get_running_loop()
        version = await self._engine_version(deadline)
        self.board.update(engine_version=str(version.get("Version", "")))
        endpoint = self.platform.engine_endpoint(self.paths)
        await loop.run_in_executor(None, end_stale_master, self.paths.ssh_mux_socket)  # it would hold the socket
        self.forwarder = self.platform.engine_forwarder(endpoint, self.open_engine_channel)
        await loop.run_in_executor(None, self.forwarder.start)
        self.board.update(docker_socket=str(endpoint))
        self._start_carrier(endpoint)
        self._start_ports(hmp, ssh_port)
        self._forward_host_agent()

    def _start_carrier(self, endpoint: Path | str) -> None:
        """The OpenSSH master where the engine socket is a unix socket (not a Windows pipe), to the
        guest's sshd as this link's own transport reaches it."""
        ssh = self.ssh
        if ssh is None or not isinstance(endpoint, Path):
            self.board.update(socket_transport=AGENT_TRANSPORT)
            return
        try:
            self.carrier = SocketCarrier(self.paths, endpoint, ssh.target, ENGINE_SOCKET,
                                         on_change=self.board.updater("socket_transport"))
            self.carrier.start()
        except (OSError, PinnaceError) as exc:
            log.warning("the engine socket stays on %s: %s", AGENT_TRANSPORT, exc)
            self.board.update(socket_transport=f"{AGENT_TRANSPORT} ({exc})")
            self.carrier = None

    def _forward_host_agent(self) -> None:
        socket_path, why_not = host_agent_socket()
        ssh = self.ssh
        if socket_path is None or ssh is None:
            self.board.update(host_ssh_agent=f"not forwarded: {why_not}" if why_not else "")
            return
        self.host_agent = HostAgentForward(ssh.ensure_connected, on_change=self.board.updater("host_ssh_agent"))
        self.host_agent.start()

    async def keep_alive(self) -> None:
        """For the VM's life: a keepalive that must be answered every KEEPALIVE_S, so a dead
        transport is found within ~2 × KEEPALIVE_S and replaced on the next request (not while
        QEMU has the VM paused: it cannot answer, and its connections must survive the pause)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(KEEPALIVE_S)
            ssh = self.ssh
            if ssh is not None and self.paused is None:
                answered = await loop.run_in_executor(None, ssh.probe, KEEPALIVE_S, lambda: self.paused is None)
                carrier = self.carrier
                if not answered and carrier is not None:  # its connection to the guest is as dead
                    await loop.run_in_executor(None, carrier.master.stop)

    def set_paused(self, reason: str | None, drop_connections: bool = False) -> None:
        """While paused, docker clients get `reason` at once instead of a connection that hangs;
        `drop_connections` also ends those in flight (they cannot finish before space is freed)."""
        self.paused = reason
        carrier = self.carrier
        if carrier is not None:
            if reason is None:
                carrier.resume()
            else:
                carrier.pause(drop_connections)
        forwarder = self.forwarder
        if reason is not None and drop_connections and forwarder is not None:
            dropped = forwarder.abort_all()
            if dropped:
                log.warning("dropped %d engine connection(s) of the paused VM", dropped)

    def open_engine_channel(self):  # noqa: ANN201 - a paramiko Channel
        """A channel to the guest's engine socket; rides out an sshd restart (a few seconds)."""
        deadline, delay = time.monotonic() + ENGINE_RECONNECT_GRACE_S, 0.1
        while True:
            if self.paused is not None:
                raise EngineUnavailableError(paused_engine_message(self.paused))
            ssh = self.ssh
            if ssh is None:
                raise MachineError("the VM is not running")
            try:
                return ssh.open_unix_channel(ENGINE_SOCKET, timeout=10.0)
            except HostKeyMismatchError:
                raise
            except SSHError:
                # A live transport means the guest refused the socket (dockerd down): fail now.
                if ssh.is_active() or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _engine_get(self, path: str) -> tuple[int, bytes]:
        channel = self.open_engine_channel()
        channel.settimeout(ENGINE_CALL_TIMEOUT_S)
        return engine.get(channel, path)

    async def _engine_version(self, deadline: float) -> dict:
        loop = asyncio.get_running_loop()
        last: BaseException | None = None
        while time.monotonic() < deadline:
            # /version alone: it answers only once the API serves, as /_ping does, and each
            # request is a channel through the guest's sshd (~0.1 s of the ready path under TCG).
            try:
                code, body = await loop.run_in_executor(None, self._engine_get, "/version")
                if code == 200:
                    return engine.version_of(body)
                last = MachineError(f"the engine answered /version with HTTP {code}")
            except (PinnaceError, OSError, ValueError) as exc:
                last = exc
            await asyncio.sleep(0.3)
        raise MachineError("the engine did not answer /version in time", last)

    def open_guest_command(self, command: str):  # noqa: ANN201 - a paramiko Channel
        """A command in the guest on the shared transport; its stdin is ours to write."""
        ssh = self.ssh
        if ssh is None:
            raise MachineError("the VM is not running")
        channel = ssh.ensure_connected().open_session(timeout=10.0)
        channel.exec_command(command)
        return channel

    def _start_ports(self, hmp: Hmp, ssh_port: int) -> None:
        try:
            expose_all = load_settings(self.paths.settings_file, HostFacts.detect()).expose_ports_on_all_interfaces
        except PinnaceError as exc:
            log.warning("published ports stay on loopback: %s", exc)
            expose_all = False
        shares = mounts.read_fw_cfg(self.paths.shares_record)
        if shares:
            self.file_events = FileEventRelay(self.open_guest_command, shares)
            self.file_events.start()
        self.ports = PortPublisher(
            hmp, self.open_engine_channel, expose_all,
            reserved={("tcp", "127.0.0.1", ssh_port)},
            on_change=lambda entries: self.board.update(port_forwards=entries),
            on_new_container=mounts.BindHinter(shares),
            on_binds=self.file_events.follow if self.file_events else None,
            guest_command=self.open_guest_command)
        self.ports.start()

    async def keep_endpoint(self) -> None:
        """The engine socket removed under a running forwarder (a logout's runtime dir): serve it
        again from a new forwarder; connections in flight stay on the old one until close."""
        forwarder, endpoint = self.forwarder, self.platform.engine_endpoint(self.paths)
        if forwarder is None or not isinstance(endpoint, Path) or endpoint.exists():
            return
        log.warning("%s was removed under the running VM: serving it again", endpoint)
        fresh = self.platform.engine_forwarder(endpoint, self.open_engine_channel)
        await asyncio.get_running_loop().run_in_executor(None, fresh.start)
        self.forwarder, self._retired = fresh, [*self._retired, forwarder]
        if self.carrier is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.carrier.endpoint_replaced)

    # --- closing ---------------------------------------------------------------------------

    async def close(self) -> None:
        """Ports, forwarder, SSH: each step bounded, so a dead or paused guest cannot stall a stop
        or the report of a crash."""
        loop = asyncio.get_running_loop()
        ports, self.ports = self.ports, None
        if ports is not None:
            await self._bounded("stopping published ports", ports.stop())
        host_agent, self.host_agent = self.host_agent, None
        if host_agent is not None:
            host_agent.close()
        file_events, self.file_events = self.file_events, None
        if file_events is not None:
            await self._bounded("stopping file events", loop.run_in_executor(None, file_events.close))
        carrier, self.carrier = self.carrier, None
        if carrier is not None:  # first: the engine socket leads back to the forwarder, which removes it
            await self._bounded("stopping the ssh master", loop.run_in_executor(None, carrier.close))
        forwarders, self.forwarder, self._retired = [*self._retired, self.forwarder], None, []
        for forwarder in forwarders:
            if forwarder is not None:
                await self._bounded("stopping the engine socket", loop.run_in_executor(None, forwarder.stop))
        ssh, self.ssh = self.ssh, None
        if ssh is not None:
            await self._bounded("closing SSH", loop.run_in_executor(None, ssh.close))
        self.paused = None
        self.board.update(port_forwards=[], docker_socket="", host_ssh_agent="", socket_transport="")

    @staticmethod
    async def _bounded(what: str, step: Any) -> None:
        try:
            await asyncio.wait_for(step, CLOSE_STEP_TIMEOUT_S)
        except TimeoutError:
            log.warning("%s took over %.0f s; going on", what, CLOSE_STEP_TIMEOUT_S)
        except (PinnaceError, OSError) as exc:
            log.warning("%s: %s", what, exc)
        except Exception:  # noqa: BLE001 - teardown goes on whatever one step raised
            log.exception("%s failed", what)
