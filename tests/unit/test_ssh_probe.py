"""GuestSSH.probe: a keepalive that must be answered, so a transport whose guest is gone is
dropped (and the next request reconnects) instead of hanging every connection on it."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from hypervisor.ssh import GuestSSH, SSHTarget

pytestmark = pytest.mark.timeout(30)


class FakeTransport:
    def __init__(self, answers: bool) -> None:
        self.answers, self.active, self.requests = answers, True, []
        self._closed = threading.Event()

    def is_active(self) -> bool:
        return self.active

    def global_request(self, kind: str, wait: bool = True) -> None:
        self.requests.append((kind, wait))
        if not self.answers:
            self._closed.wait()  # as paramiko does: until a reply, or the transport dies

    def close(self) -> None:
        self.active = False
        self._closed.set()


def guest_ssh(transport: FakeTransport) -> GuestSSH:
    ssh = object.__new__(GuestSSH)  # no key parsing: the probe needs only the transport
    ssh.target = SSHTarget("127.0.0.1", 1, "root", Path("/k"), "ssh-ed25519 AAAA")
    ssh._lock = threading.Lock()
    ssh._transport = transport  # type: ignore[assignment]
    return ssh


def test_an_answered_keepalive_keeps_the_transport() -> None:
    transport = FakeTransport(answers=True)
    ssh = guest_ssh(transport)
    assert ssh.probe(timeout=2.0)
    assert transport.requests == [("keepalive@openssh.com", True)]
    assert ssh.is_active()


def test_an_unanswered_keepalive_drops_the_transport() -> None:
    transport = FakeTransport(answers=False)
    ssh = guest_ssh(transport)
    assert not ssh.probe(timeout=0.3)
    assert not transport.active and not ssh.is_active()  # the next channel open reconnects


def test_a_keepalive_unanswered_because_the_vm_was_paused_meanwhile_keeps_the_transport() -> None:
    transport = FakeTransport(answers=False)
    ssh = guest_ssh(transport)
    assert ssh.probe(timeout=0.3, still_expected=lambda: False)  # QEMU paused it: no reply is no news
    assert transport.active and ssh.is_active()


def test_nothing_to_probe_is_not_a_failure() -> None:
    ssh = guest_ssh(FakeTransport(answers=True))
    ssh._transport = None
    assert ssh.probe(timeout=0.1)
