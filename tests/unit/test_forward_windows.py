"""The Windows named-pipe forwarder: pure parts everywhere, the real pipe only on Windows."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from hypervisor.errors import ForwardError
from hypervisor.forward_windows import NamedPipeForwarder, owner_only_sddl
from hypervisor.paths import pipe_name


def test_owner_only_sddl():
    sid = "S-1-5-21-1004336348-1177238915-682003330-1001"
    assert owner_only_sddl(sid) == f"D:P(A;;GA;;;{sid})"
    for bad in ["", "WD", "S-1-5-21;(A;;GA;;;WD)", "D:P(A;;GA;;;WD)"]:
        with pytest.raises(ForwardError):
            owner_only_sddl(bad)


def test_rejects_non_local_pipe_names():
    with pytest.raises(ForwardError):
        NamedPipeForwarder(r"\\server\pipe\x", lambda: None)


def test_linux_import_of_forward_does_not_pull_windows_module():
    code = "import sys, hypervisor.forward; assert 'hypervisor.forward_windows' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(sys.platform != "win32", reason="needs Windows")
@pytest.mark.timeout(60)
def test_named_pipe_roundtrip():
    """A fake channel (a socketpair end) behind a real pipe: bytes both ways, then EOF."""
    import os
    import socket

    ours, theirs = socket.socketpair()

    class FakeChannel:
        def sendall(self, data):
            ours.sendall(data)

        def recv(self, n):
            return ours.recv(n)

        def shutdown_write(self):
            ours.shutdown(socket.SHUT_WR)

        def close(self):
            ours.close()

    def peer():
        data = theirs.recv(100)
        theirs.sendall(data.upper())
        theirs.close()

    threading.Thread(target=peer, daemon=True).start()
    name = pipe_name(f"test{os.getpid()}", "docker")
    fwd = NamedPipeForwarder(name, FakeChannel)
    fwd.start()
    try:
        with open(name, "r+b", buffering=0) as pipe:
            pipe.write(b"hello")
            assert pipe.read(5) == b"HELLO"
    finally:
        fwd.stop()
