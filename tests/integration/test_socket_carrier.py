"""The engine socket carried by an OpenSSH ControlMaster (hypervisor/agent/socket_carrier.py),
against the host's own sshd: the agent's forwarder and the master behind one socket name, and what
each fault leaves the user (a paused VM, a killed master, a wrong host key, a killed agent)."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sshd_fixture import HostSSHD, UnixServer, echo_handler, ping_handler, sshd_available

from hypervisor.agent import socket_carrier
from hypervisor.agent.socket_carrier import SocketCarrier
from hypervisor.errors import EngineUnavailableError, ForwardError
from hypervisor.forward import UnixSocketForwarder
from hypervisor.keys import generate_keypair
from hypervisor.openssh_mux import end_stale_master
from hypervisor.paths import Paths
from hypervisor.ssh import GuestSSH
from tests.waiting import wait_for

pytestmark = [
    pytest.mark.skipif(not sshd_available() or sys.platform == "win32",
                       reason="needs OpenSSH sshd and ssh (apt-get install openssh-server openssh-client)"),
    pytest.mark.timeout(120),
]

PING = b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n"


def half_close_handler(conn: socket.socket) -> None:
    """Answer at once, end its own side, then keep reading until the client ends too (as dockerd
    ends an attach stream whose container exited while the client's stdin is still open)."""
    conn.sendall(b"container exited\n")
    conn.shutdown(socket.SHUT_WR)
    while conn.recv(65536):
        pass


def slow_handler(conn: socket.socket) -> None:
    """Answer 'late' two seconds after the request: a connection in flight across a pause."""
    conn.recv(65536)
    time.sleep(2)
    conn.sendall(b"late")


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    work = tmp_path_factory.mktemp("carrier")
    sshd = HostSSHD(work)
    sshd.start()
    servers = [UnixServer(work / f"{name}.sock", handler) for name, handler in
               (("ping", ping_handler), ("echo", echo_handler), ("halfclose", half_close_handler),
                ("slow", slow_handler))]
    ssh = GuestSSH(sshd.target())
    ssh.connect()
    yield work, sshd, ssh
    ssh.close()
    for server in servers:
        server.close()
    sshd.stop()


class Agent:
    """The agent's side of one socket: its forwarder and the carrier, as EngineLink runs them."""

    def __init__(self, paths: Paths, sshd: HostSSHD, ssh: GuestSSH, remote: Path, host_public: str) -> None:
        self.paths, self.remote, self.paused = paths, remote, ""
        self.states: list[str] = []
        self.forwarder = UnixSocketForwarder(paths.docker_socket, self._open, "engine")
        self._ssh = ssh
        self.carrier = SocketCarrier(paths, paths.docker_socket, sshd.target(host_public), str(remote),
                                     self.states.append)

    def _open(self):  # noqa: ANN202 - a paramiko Channel
        if self.paused:
            raise EngineUnavailableError(self.paused)
        return self._ssh.open_unix_channel(str(self.remote))

    def start(self) -> None:
        self.forwarder.start()
        self.carrier.start()

    def wait_for_master(self) -> None:
        wait_for("the ssh master serving the socket", lambda: self.on_master(), 20, 0.05)

    def on_master(self) -> bool:
        return bool(self.states) and self.states[-1].endswith("ControlMaster") and \
            self.carrier.switch.leads_to(self.carrier.master.spec.listen_path)

    def close(self) -> None:
        self.carrier.close()
        self.forwarder.stop()


@pytest.fixture
def agent(host, tmp_path) -> Iterator[callable]:
    work, sshd, ssh = host
    made: list[Agent] = []

    def make(remote: str = "ping", host_public: str | None = None, start: bool = True) -> Agent:
        paths = Paths.for_instance(f"c{len(made)}", {"PINNACE_HOME": str(tmp_path / "home")})
        paths.ensure_dirs()
        made.append(Agent(paths, sshd, ssh, work / f"{remote}.sock", host_public or sshd.keys.host_public))
        if start:
            made[-1].start()
        return made[-1]

    yield make
    for each in made:
        each.close()


def ask(path: Path, request: bytes = PING, timeout: float = 10.0) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        client.connect(str(path))
        client.sendall(request)
        reply = b""
        while not reply.endswith(b"OK") and b"\r\n\r\n{" not in reply:
            chunk = client.recv(65536)
            if not chunk:
                break
            reply += chunk
        while b"\r\n\r\n{" in reply and not reply.endswith(b"}"):
            reply += client.recv(65536)
        return reply


def test_the_master_takes_the_socket_and_carries_requests_in_c(agent) -> None:
    one = agent()
    assert ask(one.paths.docker_socket).endswith(b"OK")  # the agent answers before the master is up
    one.wait_for_master()
    assert one.states[0].startswith("paramiko channels (OpenSSH master starting")
    for _ in range(20):
        assert ask(one.paths.docker_socket).endswith(b"OK")
    assert one.forwarder.active_connections == 0
    for path in (one.paths.docker_socket, one.carrier.master.spec.listen_path, one.paths.ssh_mux_socket):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    assert stat.S_IMODE(os.stat(one.paths.docker_socket.parent).st_mode) == 0o700


def test_bytes_and_half_closes_pass_exactly_both_ways(agent) -> None:
    echo = agent("echo")
    echo.wait_for_master()
    payload = os.urandom(3 << 20)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(20)
        client.connect(str(echo.paths.docker_socket))
        sender = threading.Thread(target=lambda: (client.sendall(payload), client.shutdown(socket.SHUT_WR)))
        sender.start()
        got = b""
        while chunk := client.recv(1 << 20):
            got += chunk
        sender.join()
    assert got == payload + b"BYE"  # the client's EOF reached the server, which still answered

    closing = agent("halfclose")
    closing.wait_for_master()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(10)
        client.connect(str(closing.paths.docker_socket))
        got = b""
        while chunk := client.recv(4096):  # EOF must arrive while our own side is still open
            got += chunk
        assert got == b"container exited\n"
        client.sendall(b"still writable")


def pause_with_a_request_in_flight(slow: Agent, reason: str, drop_connections: bool) -> socket.socket:
    """A request the guest answers 2 s later, then the VM paused under it; the client's socket."""
    slow.wait_for_master()
    in_flight = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    in_flight.settimeout(10)
    in_flight.connect(str(slow.paths.docker_socket))
    in_flight.sendall(b"request")
    time.sleep(0.3)
    slow.paused = reason
    slow.carrier.pause(drop_connections=drop_connections)
    return in_flight


def test_a_paused_vm_is_answered_by_the_agent_and_keeps_connections_in_flight(agent) -> None:
    slow = agent("slow")
    with pause_with_a_request_in_flight(slow, "the VM is paused: test", False) as in_flight:
        reply = ask(slow.paths.docker_socket)
        assert b"503" in reply.split(b"\r\n")[0] and json.loads(reply.split(b"\r\n\r\n")[1]) == \
            {"message": "the VM is paused: test"}
        assert in_flight.recv(16) == b"late"
    slow.paused = ""
    slow.carrier.resume()
    assert slow.on_master()


def test_a_pause_that_drops_connections_ends_the_master_and_resume_brings_one_back(agent, monkeypatch) -> None:
    monkeypatch.setattr(socket_carrier, "REVIVE_INTERVAL_S", 0.5)
    slow = agent("slow")
    with pause_with_a_request_in_flight(slow, "the data disk is full", True) as in_flight:
        assert in_flight.recv(16) == b""  # ended, not left hanging until space is freed
    assert not slow.carrier.master.running()
    slow.paused = ""
    slow.carrier.resume()
    slow.wait_for_master()


def test_a_killed_master_hands_the_socket_back_at_once_and_is_replaced(agent, monkeypatch) -> None:
    monkeypatch.setattr(socket_carrier, "REVIVE_INTERVAL_S", 1.0)
    one = agent()
    one.wait_for_master()
    pid = one.carrier.master._process.pid  # noqa: SLF001 - the fault is a kill -9 of that process
    os.kill(pid, signal.SIGKILL)
    wait_for("the agent answering again", lambda: not one.carrier.switch.leads_to(
        one.carrier.master.spec.listen_path) or not one.carrier.master.running(), 5, 0.01)
    assert ask(one.paths.docker_socket).endswith(b"OK")
    wait_for("the status naming the exit", lambda: "killed by signal 9" in one.states[-1] or
             one.states[-1].endswith("ControlMaster"), 5, 0.05)
    assert any("OpenSSH master exited: killed by signal 9" in s for s in one.states)
    one.wait_for_master()
    assert one.carrier.master._process.pid != pid  # noqa: SLF001
    assert ask(one.paths.docker_socket).endswith(b"OK")


def test_a_wrong_host_key_keeps_the_agent_answering_and_says_why(agent, tmp_path) -> None:
    one = agent(host_public=generate_keypair(tmp_path / "impostor" / "key", "impostor"))
    wait_for("the master's failure", lambda: "failed" in (one.states[-1] if one.states else ""), 20, 0.05)
    assert "OpenSSH master failed" in one.states[-1] and "Host key verification failed" in one.states[-1]
    assert not one.on_master() and not one.carrier.master.running()
    assert ask(one.paths.docker_socket).endswith(b"OK")  # the agent's own, verified, link still serves


def test_no_ssh_client_leaves_the_agent_carrying(agent, host) -> None:
    one = agent(start=False)
    one.carrier.master.ssh_binary = None
    one.start()
    assert one.states == ["paramiko channels (no OpenSSH client on PATH)"]
    assert ask(one.paths.docker_socket).endswith(b"OK")


def test_a_master_left_by_a_killed_agent_is_ended_before_a_new_agent_serves(agent, host) -> None:
    old = agent()
    old.wait_for_master()
    orphan = old.carrier.master._process  # noqa: SLF001 - the agent dies and leaves it running
    old.carrier.switch.release()
    old.forwarder.stop()  # what a killed agent leaves: the engine socket leads to the orphan
    assert ask(old.paths.docker_socket).endswith(b"OK")
    successor = UnixSocketForwarder(old.paths.docker_socket, lambda: host[2].open_unix_channel(str(old.remote)))
    with pytest.raises(ForwardError, match="already being served"):
        successor.start()
    assert end_stale_master(old.paths.ssh_mux_socket)  # what the next agent does first
    assert orphan.wait(5) is not None  # it has exited, not merely been asked to
    with successor:
        assert ask(old.paths.docker_socket).endswith(b"OK")


def test_close_leaves_no_socket_or_process_behind(agent) -> None:
    one = agent()
    one.wait_for_master()
    process = one.carrier.master._process  # noqa: SLF001
    one.close()
    assert process.poll() is not None
    assert sorted(os.listdir(one.paths.docker_socket.parent)) == []
    assert not one.paths.ssh_mux_socket.exists()
