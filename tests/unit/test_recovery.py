"""The pure rules behind crash restarts and pauses (hypervisor/agent/recovery.py), and the socket
forwarder's answer to docker clients while the VM is paused."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from hypervisor.agent.recovery import (
    RESUME_FREE_BYTES,
    RestartPolicy,
    is_out_of_space,
    pause_reason,
    paused_engine_message,
)
from hypervisor.errors import EngineUnavailableError
from hypervisor.forward import UnixSocketForwarder

pytestmark = pytest.mark.timeout(30)

NOSPACE = {"node-name": "data", "operation": "write", "action": "stop", "nospace": True,
           "reason": "No space left on device"}


def test_restarts_grow_slower_then_stop_within_the_window() -> None:
    policy = RestartPolicy(limit=3, window_s=300.0, delays_s=(2.0, 5.0, 15.0))
    assert [policy.next_delay(t) for t in (0.0, 10.0, 20.0)] == [2.0, 5.0, 15.0]
    assert policy.next_delay(30.0) is None
    assert "crashed 4 times in 5 minutes" in policy.give_up_reason("QEMU exited")


def test_crashes_older_than_the_window_are_forgotten() -> None:
    policy = RestartPolicy(limit=2, window_s=60.0, delays_s=(1.0, 4.0))
    assert policy.next_delay(0.0) == 1.0
    assert policy.next_delay(10.0) == 4.0
    assert policy.next_delay(100.0) == 1.0  # the two before are over a minute old
    assert policy.attempt == 1
    assert policy.restarting_reason("QEMU exited (killed by signal 9)", 1.0) == \
        "QEMU exited (killed by signal 9); restarting in 1 s (1 of 2)"


def test_out_of_space_is_only_a_nospace_error_that_stopped_the_vm() -> None:
    assert is_out_of_space(NOSPACE)
    assert not is_out_of_space({**NOSPACE, "nospace": False})
    assert not is_out_of_space({**NOSPACE, "action": "report"})
    assert not is_out_of_space(None)


def test_pause_reasons_name_the_disk_and_the_way_out() -> None:
    disk = Path("/home/u/.local/share/pinnace/instances/default/data.qcow2")
    full = pause_reason(NOSPACE, disk, 12 * 1024 * 1024)
    assert full.startswith(f"the disk holding {disk} is full (12 MiB free)")
    assert f"{RESUME_FREE_BYTES >> 20} MiB" in full and "\n" not in full
    assert "Input/output error" in pause_reason({**NOSPACE, "nospace": False, "reason": "Input/output error"},
                                                disk, None)
    assert "pinnace start" in pause_reason(None, disk, None)
    assert paused_engine_message("x") == "Pinnace: the VM is paused: x"


def test_a_paused_engine_answers_docker_with_a_503_and_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "run" / "docker.sock"

    def refuse():  # noqa: ANN202 - what EngineLink.open_engine_channel raises while paused
        raise EngineUnavailableError(paused_engine_message("the disk holding /d is full"))

    with UnixSocketForwarder(path, refuse, name="test"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(5)
            client.connect(str(path))
            client.sendall(b"GET /v1.47/version HTTP/1.1\r\nHost: docker\r\n\r\n")
            reply = b""
            while chunk := client.recv(65536):
                reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ")
    assert json.loads(body) == {"message": "Pinnace: the VM is paused: the disk holding /d is full"}
