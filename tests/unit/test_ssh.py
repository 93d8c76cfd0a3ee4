"""SSH helpers without a server, including the paramiko-internals contract for direct-streamlocal.

If test_streamlocal_channel_open_wire_format fails after a paramiko upgrade, hypervisor/ssh.py's
_StreamLocalTransport must be adapted before the engine socket can work again.
"""

from __future__ import annotations

import socket

import paramiko
import pytest
from paramiko.common import MSG_CHANNEL_OPEN
from paramiko.message import Message

from hypervisor.keys import generate_keypair
from hypervisor.ssh import (
    PREFERRED_CIPHERS,
    STREAMLOCAL_KIND,
    _cipher_order,
    _host_key_types,
    _StreamLocalTransport,
    parse_public_line,
)


def test_streamlocal_channel_open_wire_format(monkeypatch):
    """open_streamlocal must send CHANNEL_OPEN with path, reserved string and reserved uint32."""
    left, right = socket.socketpair()
    transport = _StreamLocalTransport(left)
    sent: list[bytes] = []

    def capture(self, data):  # stands in for the network and the server's OPEN_CONFIRMATION
        sent.append(data.asbytes())
        chanid = Message(data.asbytes())
        chanid.get_byte()
        chanid.get_text()
        self.channel_events[chanid.get_int()].set()

    monkeypatch.setattr(paramiko.Transport, "_send_user_message", capture)
    transport.active = True  # pretend the handshake happened; nothing is read from the socket
    try:
        chan = transport.open_streamlocal("/var/run/docker.sock", timeout=5)
        assert isinstance(chan, paramiko.Channel)
        assert len(sent) == 1
        m = Message(sent[0])
        assert m.get_byte()[0] == MSG_CHANNEL_OPEN
        assert m.get_text() == STREAMLOCAL_KIND
        assert m.get_int() == chan.get_id()  # sender channel
        assert m.get_int() > 0  # initial window
        assert m.get_int() > 0  # max packet
        assert m.get_text() == "/var/run/docker.sock"
        assert m.get_text() == ""
        assert m.get_int() == 0
        assert m.get_remainder() == b""
        # Other messages sent by the same thread afterwards are left untouched.
        other = Message()
        other.add_byte(bytes([MSG_CHANNEL_OPEN]))
        other.add_string(STREAMLOCAL_KIND)
        transport._send_user_message(other)
        assert sent[1] == other.asbytes()
    finally:
        transport.active = False
        left.close()
        right.close()


def test_parse_public_line(tmp_path):
    line = generate_keypair(tmp_path / "k", "comment")
    kind, blob = parse_public_line(line)
    assert kind == "ssh-ed25519"
    assert paramiko.PKey.from_path(tmp_path / "k").asbytes() == blob
    with pytest.raises(ValueError):
        parse_public_line("ssh-ed25519")
    with pytest.raises(ValueError):
        parse_public_line("ssh-ed25519 !!!notbase64")
    with pytest.raises(ValueError, match="does not match"):
        parse_public_line("ssh-rsa " + line.split()[1])


def test_cipher_order_prefers_gcm_and_falls_back():
    supported = tuple(paramiko.Transport._preferred_ciphers)
    order = _cipher_order(supported)
    assert sorted(order) == sorted(supported)
    expected_first = [c for c in PREFERRED_CIPHERS if c in supported]
    assert order[: len(expected_first)] == expected_first
    assert "aes128-gcm@openssh.com" in supported, "installed paramiko lost AES-GCM support"
    # an old paramiko without GCM still gets ctr first
    assert _cipher_order(("aes256-cbc", "aes128-ctr"))[0] == "aes128-ctr"


def test_host_key_types_pin_the_algorithm():
    supported = ("ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-512", "ssh-rsa")
    assert _host_key_types("ssh-ed25519", supported) == ["ssh-ed25519"]
    assert _host_key_types("ssh-rsa", supported) == ["rsa-sha2-512", "ssh-rsa"]
