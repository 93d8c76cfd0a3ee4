"""The ControlMaster's mux messages and command line (hypervisor/openssh_mux.py), and the atomic
switch of the engine socket's name between two real listeners (hypervisor/endpoint_switch.py)."""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

import pytest

from hypervisor import openssh_mux as mux
from hypervisor.endpoint_switch import EndpointSwitch
from hypervisor.errors import ForwardError

pytestmark = pytest.mark.timeout(30)

HOST_PUBLIC = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHPOOYXPT1E54MWAAFlXnBjpyXws4DH+EBQEVurlw45i guest"


def test_hello_and_requests_are_framed_as_openssh_reads_them() -> None:
    assert mux.hello() == struct.pack(">III", 8, mux.MUX_MSG_HELLO, 4)
    assert mux.alive_check(7) == struct.pack(">III", 8, mux.MUX_C_ALIVE_CHECK, 7)
    assert mux.terminate(9) == struct.pack(">III", 8, mux.MUX_C_TERMINATE, 9)


def test_replies_are_decoded_with_their_pid_or_reason() -> None:
    assert mux.parse_reply(struct.pack(">III", mux.MUX_S_ALIVE, 1, 4242)) == mux.Reply(mux.MUX_S_ALIVE, 1, 4242)
    refused = struct.pack(">III", mux.MUX_S_FAILURE, 3, 6) + b"no way"
    assert mux.parse_reply(refused).reason == "no way"
    assert mux.parse_reply(struct.pack(">II", mux.MUX_MSG_HELLO, 4)).value == 4
    with pytest.raises(mux.MuxError, match="malformed"):
        mux.parse_reply(struct.pack(">I", mux.MUX_S_ALIVE))


def test_packets_split_across_reads_are_joined_and_oversized_ones_refused() -> None:
    stream = mux.hello() + mux.alive_check(1)
    bodies, rest = mux.split_packets(stream[:10])
    assert bodies == [] and rest == stream[:10]
    bodies, rest = mux.split_packets(rest + stream[10:])
    assert [struct.unpack_from(">I", b)[0] for b in bodies] == [mux.MUX_MSG_HELLO, mux.MUX_C_ALIVE_CHECK]
    assert rest == b""
    with pytest.raises(mux.MuxError, match="too big"):
        mux.split_packets(struct.pack(">I", mux.MAX_REPLY + 1))


def test_the_pinned_key_is_written_under_a_fixed_alias() -> None:
    assert mux.known_hosts_line(HOST_PUBLIC) == f"{mux.HOST_KEY_ALIAS} {' '.join(HOST_PUBLIC.split()[:2])}\n"


def test_master_reads_no_user_config_accepts_only_the_pinned_key_and_serves_one_forward(tmp_path: Path) -> None:
    spec = mux.MasterSpec("127.0.0.1", 2222, "root", tmp_path / "id", tmp_path / "known", tmp_path / "ctl",
                          tmp_path / "engine.ssh", "/var/run/docker.sock")
    argv = mux.master_argv("/usr/bin/ssh", spec)
    options = dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "-o")
    assert argv[:4] == ["/usr/bin/ssh", "-N", "-F", os.devnull]
    assert options["StrictHostKeyChecking"] == "yes" and options["UserKnownHostsFile"] == str(tmp_path / "known")
    assert options["GlobalKnownHostsFile"] == os.devnull and options["HostKeyAlias"] == mux.HOST_KEY_ALIAS
    assert options["IdentitiesOnly"] == "yes" and options["IdentityAgent"] == "none"
    assert options["IdentityFile"] == str(tmp_path / "id") and options["BatchMode"] == "yes"
    assert options["ControlMaster"] == "yes" and options["ControlPath"] == str(tmp_path / "ctl")
    assert options["ControlPersist"] == "no" and options["ServerAliveInterval"] == "0"
    assert options["StreamLocalBindMask"] == "0177" and options["ExitOnForwardFailure"] == "yes"
    assert options["ForwardAgent"] == "no" and options["PermitLocalCommand"] == "no"
    assert argv[-3:] == ["-L", f"{tmp_path / 'engine.ssh'}:/var/run/docker.sock", "127.0.0.1"]
    assert argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-l") + 1] == "root"


def _listener(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(8)
    return sock


def _reaches(path: Path, listener: socket.socket) -> bool:
    """Connect by name and see which listener takes it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(str(path))
        listener.settimeout(1.0)
        try:
            accepted, _ = listener.accept()
        except TimeoutError:
            return False
        accepted.close()
        return True


def test_the_endpoint_name_moves_between_live_listeners_without_a_gap(tmp_path: Path) -> None:
    endpoint, master_path = tmp_path / "docker.sock", tmp_path / "engine.ssh"
    agent, master = _listener(endpoint), _listener(master_path)
    switch = EndpointSwitch(endpoint)
    switch.adopt()
    assert _reaches(switch.own, agent)
    switch.point_to(master_path)
    assert switch.leads_to(master_path) and _reaches(endpoint, master)
    switch.to_agent()
    assert not switch.leads_to(master_path) and _reaches(endpoint, agent)
    switch.to_agent()  # already there: nothing changes
    assert _reaches(endpoint, agent)
    switch.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docker.sock", "engine.ssh"]
    agent.close()
    master.close()


def test_a_missing_listener_leaves_the_endpoint_as_it_was(tmp_path: Path) -> None:
    endpoint = tmp_path / "docker.sock"
    agent = _listener(endpoint)
    switch = EndpointSwitch(endpoint)
    switch.adopt()
    with pytest.raises(ForwardError, match="cannot point"):
        switch.point_to(tmp_path / "engine.ssh")
    assert _reaches(endpoint, agent)
    assert not (tmp_path / "engine.new").exists()
    agent.close()
