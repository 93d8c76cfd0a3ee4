"""The engine-socket data path end to end against the host's own OpenSSH sshd."""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sshd_fixture import (
    HostSSHD,
    UnixServer,
    echo_handler,
    ping_handler,
    sshd_available,
)

from hypervisor.errors import ForwardError, HostKeyMismatchError, SSHError
from hypervisor.forward import UnixSocketForwarder
from hypervisor.keys import generate_keypair
from hypervisor.ssh import GuestSSH
from tests import guestexec
from tests.waiting import wait_for

pytestmark = pytest.mark.skipif(
    not sshd_available() or sys.platform == "win32",
    reason="needs OpenSSH sshd (apt-get install openssh-server)",
)


def silent_handler(conn: socket.socket) -> None:
    """Read until EOF, then hold the connection open without ever answering."""
    while conn.recv(1 << 20):
        pass
    time.sleep(120)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    work = tmp_path_factory.mktemp("fwd")
    sshd = HostSSHD(work)
    sshd.start()
    servers = {
        "echo": UnixServer(work / "echo.sock", echo_handler),
        "ping": UnixServer(work / "ping.sock", ping_handler),
        "silent": UnixServer(work / "silent.sock", silent_handler),
    }
    ssh = GuestSSH(sshd.target())
    ssh.connect()
    yield work, sshd, ssh
    ssh.close()
    for s in servers.values():
        s.close()
    sshd.stop()


@pytest.fixture
def forwarder(env, tmp_path):
    """A forwarder factory: forwarder(target_name) -> (forwarder, client-socket path)."""
    work, _, ssh = env
    made: list[UnixSocketForwarder] = []

    def make(target: str = "echo", guest: GuestSSH | None = None) -> tuple[UnixSocketForwarder, Path]:
        conn = guest or ssh
        path = tmp_path / "run" / f"{target}-{len(made)}.sock"
        fwd = UnixSocketForwarder(path, lambda: conn.open_unix_channel(str(work / f"{target}.sock")), target)
        fwd.start()
        made.append(fwd)
        return fwd, path

    yield make
    for fwd in made:
        fwd.stop()


def connect(path: Path, timeout: float = 20.0) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(str(path))
    return s


def read_all(s: socket.socket) -> bytes:
    chunks = []
    while chunk := s.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def refused(s: socket.socket) -> bool:
    """The forwarder closed us: EOF, or a reset if it closed with our request unread."""
    try:
        return s.recv(100) == b""
    except ConnectionResetError:
        return True


def test_ping_through_forwarder(forwarder):
    _, path = forwarder("ping")
    with connect(path) as s:
        for _ in range(3):  # keep-alive: several requests on one connection
            s.sendall(b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n")
            reply = b""
            while not reply.endswith(b"OK"):
                reply += s.recv(4096)
            assert reply.startswith(b"HTTP/1.1 200 OK")


def test_run_collects_output_and_status(env):
    _, _, ssh = env
    result = guestexec.run(ssh, "echo out; echo err >&2; exit 7", timeout=10)
    assert (result.exit_status, result.stdout, result.stderr) == (7, b"out\n", b"err\n")


@pytest.mark.timeout(60)
def test_hundred_concurrent_clients(forwarder):
    fwd, path = forwarder("echo")
    barrier = threading.Barrier(100)
    errors: list[BaseException] = []

    def client(i: int) -> None:
        payload = os.urandom(1000 + i * 37)
        try:
            with connect(path) as s:
                barrier.wait(timeout=20)
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                assert read_all(s) == payload + b"BYE"
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(50)
    assert not errors, errors[:3]
    wait_for("every connection released", lambda: fwd.active_connections == 0, 5, 0.05)


@pytest.mark.timeout(60)
def test_64mb_echo_is_byte_exact(forwarder):
    _, path = forwarder("echo")
    size = 64 << 20
    expected = hashlib.sha256()
    with connect(path, timeout=30) as s:

        def upload() -> None:
            for _ in range(size // (1 << 20)):
                block = os.urandom(1 << 20)
                expected.update(block)
                s.sendall(block)
            s.shutdown(socket.SHUT_WR)

        writer = threading.Thread(target=upload)
        writer.start()
        got, n = hashlib.sha256(), 0
        while chunk := s.recv(1 << 20):
            got.update(chunk)
            n += len(chunk)
        writer.join()
    expected.update(b"BYE")
    assert n == size + 3
    assert got.hexdigest() == expected.hexdigest()


def test_half_close_reply_after_client_eof(forwarder):
    _, path = forwarder("echo")
    with connect(path) as s:
        s.sendall(b"request")
        s.shutdown(socket.SHUT_WR)
        # "BYE" is only sent by the server after it saw our EOF through the channel.
        assert read_all(s) == b"requestBYE"


KILLED_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
print("connected", flush=True)
block = b"x" * 65536
while True:
    s.sendall(block)
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("target", ["echo", "silent"])
def test_killed_client_releases_channel(forwarder, target):
    fwd, path = forwarder(target)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, str(path)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"connected"
        wait_for("the client connected", lambda: fwd.active_connections == 1, 5, 0.05)
        time.sleep(0.5)  # mid-transfer
    finally:
        proc.kill()
        proc.wait()
    wait_for("the channel released", lambda: fwd.active_connections == 0, 5, 0.05)
    # The forwarder is still healthy afterwards.
    if target == "echo":
        with connect(path) as s:
            s.sendall(b"again")
            s.shutdown(socket.SHUT_WR)
            assert read_all(s) == b"againBYE"


@pytest.mark.timeout(60)
def test_reconnects_after_sshd_restart(env, tmp_path):
    work, _, _ = env
    sshd = HostSSHD(tmp_path / "sshd")
    sshd.start()
    ssh = GuestSSH(sshd.target())
    fwd = UnixSocketForwarder(
        tmp_path / "run" / "e.sock", lambda: ssh.open_unix_channel(str(work / "echo.sock")), "restart"
    )
    fwd.start()
    try:
        for round_ in range(2):
            with connect(tmp_path / "run" / "e.sock") as s:
                s.sendall(b"round%d" % round_)
                s.shutdown(socket.SHUT_WR)
                assert read_all(s) == b"round%dBYE" % round_
            if round_ == 0:
                sshd.kill_all()  # like a guest reboot: master and per-connection children
                sshd.start()
    finally:
        fwd.stop()
        ssh.close()
        sshd.stop()


def test_wrong_host_key_is_refused(env, forwarder, tmp_path):
    _, sshd, _ = env
    impostor = generate_keypair(tmp_path / "other_key", "other")
    bad = GuestSSH(sshd.target(host_public=impostor))
    with pytest.raises(HostKeyMismatchError, match="does not match the pinned key"):
        bad.connect(timeout=5)

    # wait_until_reachable never retries a mismatch.
    start = time.monotonic()
    with pytest.raises(HostKeyMismatchError):
        bad.wait_until_reachable(time.monotonic() + 20)
    assert time.monotonic() - start < 5

    fwd, path = forwarder("echo", guest=bad)
    start = time.monotonic()
    with connect(path) as s:
        s.sendall(b"hello")
        assert refused(s)  # closed at once, not hung
    assert time.monotonic() - start < 5
    wait_for("the refused connection released", lambda: fwd.active_connections == 0, 5, 0.05)


def test_wait_until_reachable_gives_up_with_cause(env):
    _, sshd, _ = env
    from sshd_fixture import free_port

    target = sshd.target()
    nobody = GuestSSH(type(target)(**{**target.__dict__, "port": free_port()}))
    start = time.monotonic()
    with pytest.raises(SSHError, match="did not answer in time") as info:
        nobody.wait_until_reachable(time.monotonic() + 1.0)
    assert time.monotonic() - start < 4
    assert info.value.cause is not None


def test_missing_guest_socket_refuses_client_promptly(env, tmp_path):
    _, _, ssh = env
    with pytest.raises(SSHError, match="refused"):
        ssh.open_unix_channel(str(tmp_path / "nothing.sock"), timeout=5)
    fwd = UnixSocketForwarder(
        tmp_path / "run" / "n.sock", lambda: ssh.open_unix_channel(str(tmp_path / "nothing.sock")), "n"
    )
    with fwd:
        with connect(tmp_path / "run" / "n.sock", timeout=5) as s:
            assert refused(s)
        assert ssh.is_active()  # a refused channel must not tear down the shared transport


def test_socket_and_dir_modes(forwarder):
    _, path = forwarder("echo")
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


def test_stale_socket_is_replaced(env, tmp_path):
    _, _, ssh = env
    path = tmp_path / "run" / "stale.sock"
    path.parent.mkdir(mode=0o700)
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))
    dead.close()  # file stays, nobody listens
    with UnixSocketForwarder(path, lambda: ssh.open_unix_channel(str(env[0] / "echo.sock")), "s"):
        with connect(path) as s:
            s.sendall(b"x")
            s.shutdown(socket.SHUT_WR)
            assert read_all(s) == b"xBYE"
    assert not path.exists()


def test_live_socket_is_not_stolen(env, tmp_path):
    _, _, ssh = env
    path = tmp_path / "run" / "live.sock"
    path.parent.mkdir(mode=0o700)
    live = socket.socket(socket.AF_UNIX)
    live.bind(str(path))
    live.listen(1)
    try:
        fwd = UnixSocketForwarder(path, lambda: ssh.open_unix_channel(), "live")
        with pytest.raises(ForwardError, match="already being served"):
            fwd.start()
        assert path.exists()
        with connect(path):
            pass  # still the original owner's socket
    finally:
        live.close()


def test_non_socket_file_is_not_removed(tmp_path):
    path = tmp_path / "run" / "file.sock"
    path.parent.mkdir(mode=0o700)
    path.write_text("precious")
    with pytest.raises(ForwardError, match="not a socket"):
        UnixSocketForwarder(path, lambda: None, "f").start()  # type: ignore[arg-type, return-value]
    assert path.read_text() == "precious"


def test_stop_closes_live_connections(forwarder):
    fwd, path = forwarder("echo")
    s = connect(path, timeout=5)
    s.sendall(b"hi")
    assert s.recv(2) == b"hi"
    assert fwd.active_connections == 1
    fwd.stop()
    assert s.recv(10) == b""
    s.close()
    assert fwd.active_connections == 0
    assert not path.exists()
