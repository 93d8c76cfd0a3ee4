"""Which host ssh-agent the guest gets, and why none (what `pinnace status` shows)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from hypervisor.agent.host_ssh_agent import GUEST_COMMAND, GUEST_PATH, host_agent_socket

pytestmark = pytest.mark.timeout(30)


def test_no_agent_on_the_host_is_said_so() -> None:
    path, why = host_agent_socket({})
    assert path is None and "no ssh-agent on the host" in why


def test_a_socket_is_forwarded(tmp_path: Path) -> None:
    sock_path = tmp_path / "agent.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(sock_path))
        assert host_agent_socket({"SSH_AUTH_SOCK": str(sock_path)}) == (str(sock_path), "")


def test_a_stale_or_wrong_path_is_named(tmp_path: Path) -> None:
    path, why = host_agent_socket({"SSH_AUTH_SOCK": str(tmp_path / "gone")})
    assert path is None and str(tmp_path / "gone") in why and "\n" not in why
    (tmp_path / "file").write_text("")
    assert host_agent_socket({"SSH_AUTH_SOCK": str(tmp_path / "file")})[1].endswith("is not a socket")


def test_the_guest_links_sshds_socket_at_docker_desktops_path() -> None:
    assert GUEST_PATH == "/run/host-services/ssh-auth.sock"
    assert f'ln -sfn "$SSH_AUTH_SOCK" {GUEST_PATH}' in GUEST_COMMAND and "exit 3" in GUEST_COMMAND
