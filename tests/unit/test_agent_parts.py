"""Pure parts of the machine layer: control protocol, boot log, disk argv, engine HTTP, CLI text."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from app import dockerctx
from app.cli import describe
from hypervisor import bootlog, disk, engine, launcher
from hypervisor.control import ControlClient, Status, decode, encode
from hypervisor.errors import ControlError
from hypervisor.paths import Paths


def test_status_round_trips_and_ignores_unknown_fields() -> None:
    status = Status(instance="x", state="running", accel="kvm", cpus=2)
    data = json.loads(encode({"result": status.to_dict()}))["result"]
    data["added_later"] = 1
    assert Status.from_dict(data) == status


def test_decode_rejects_garbage() -> None:
    with pytest.raises(ControlError):
        decode(b"not json")
    with pytest.raises(ControlError):
        decode(b"[1, 2]")


def test_control_client_against_a_tiny_server(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()

    def serve() -> None:
        for _ in range(2):
            conn, _ = server.accept()
            request = json.loads(conn.makefile().readline())
            if request["op"] == "status":
                conn.sendall(encode({"ok": True, "result": Status("x", state="running").to_dict()}))
            else:
                conn.sendall(encode({"ok": False, "error": "instance 'x' is not running"}))
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    client = ControlClient(path, timeout=5)
    assert client.status().state == "running"
    with pytest.raises(ControlError, match="not running"):
        client.call("stop")
    server.close()


def test_control_client_when_no_agent(tmp_path: Path) -> None:
    client = ControlClient(tmp_path / "missing.sock")
    assert not client.is_alive()
    with pytest.raises(ControlError, match="agent is not running"):
        client.status()
    with pytest.raises(ControlError):
        client.call("format-disk")


def test_boot_log_lines() -> None:
    assert bootlog.parse_line("PINNACE-STAGE data 3.57") == bootlog.BootEvent("stage", "data", 3.57)
    assert bootlog.parse_line("PINNACE-READY 12.5").kind == "ready"
    assert bootlog.parse_line("PINNACE-FAILED data disk has errors").value == "data disk has errors"
    assert bootlog.parse_line("[    1.0] random kernel line") is None
    assert bootlog.parse_line("PINNACE-STAGE data notanumber") is None
    # as seen on a TCG guest's console: control bytes before the line, and its \r
    assert bootlog.parse_line("\x16" + "\x00" * 11 + "PINNACE-READY 7.66\r") == \
        bootlog.BootEvent("ready", "ready", 7.66)


def test_serial_tail_keeps_partial_lines(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_text("PINNACE-STAGE init 1.0\nPINNACE-STA")
    tail = bootlog.SerialTail(log)
    assert [e.value for e in tail.events()] == ["init"]
    with open(log, "a") as f:
        f.write("GE data 2.0\n")
    assert [e.value for e in tail.events()] == ["data"]
    assert bootlog.last_lines(log, 1) == ["PINNACE-STAGE data 2.0"]


def test_disk_argv() -> None:
    img = Path("/usr/bin/qemu-img")
    assert disk.create_argv(img, Path("/d/data.qcow2"), 64)[-2:] == ["/d/data.qcow2", "64G"]
    assert disk.resize_argv(img, Path("/d/data.qcow2"), 80) == [str(img), "resize", "-q", "/d/data.qcow2", "80G"]
    assert "-U" in disk.info_argv(img, Path("/d/data.qcow2")), "reading a disk in use must not need its lock"


def test_engine_http_helpers() -> None:
    code, body = engine.parse_response(b"HTTP/1.1 200 OK\r\nApi-Version: 1.45\r\n\r\nOK")
    assert (code, body) == (200, b"OK")
    with pytest.raises(ValueError):
        engine.parse_response(b"garbage")
    assert engine.request_bytes("GET", "/_ping").startswith(b"GET /_ping HTTP/1.0\r\n")
    df = {"Containers": [{}, {}], "Images": [{}], "Volumes": [{"UsageData": {"Size": 100}}], "LayersSize": 900}
    assert engine.usage_summary(df) == {"containers": 2, "images": 1, "volumes": 1, "bytes": 1000}


def test_docker_context_commands() -> None:
    assert dockerctx.context_name("default") == "pinnace"
    assert dockerctx.context_name("dev") == "pinnace-dev"
    argv = dockerctx.context_argv("docker", "pinnace", "unix:///r/docker.sock", exists=False)
    assert argv[:4] == ["docker", "context", "create", "pinnace"] and argv[-1] == "host=unix:///r/docker.sock"
    assert dockerctx.context_argv("docker", "pinnace", "unix:///x", exists=True)[2] == "update"
    assert dockerctx.env_lines("unix:///x", "sh") == ["export DOCKER_HOST=unix:///x"]
    assert dockerctx.env_lines("unix:///x", "powershell") == ['$Env:DOCKER_HOST = "unix:///x"']


def test_last_status_corrects_a_dead_vm(tmp_path: Path) -> None:
    paths = Paths.for_instance("default", {"PINNACE_HOME": str(tmp_path)})
    paths.ensure_dirs()
    paths.state_file.write_text(json.dumps(Status("default", state="running", docker_socket="/x").to_dict()))
    status = launcher.last_status(paths)
    assert status.state == "error" and "no longer running" in status.reason and status.docker_socket == ""


def test_describe_names_accelerator_reason_and_socket() -> None:
    text = describe(Status("default", state="running", accel="tcg", accel_reason="TCG: fallback, KVM failed",
                           docker_socket="/run/docker.sock", engine_version="26.1.5", cpus=2, memory_mib=2048,
                           disk_gib=64))
    assert "tcg — TCG: fallback, KVM failed" in text
    assert "/run/docker.sock" in text and "Docker 26.1.5" in text and "2 CPUs, 2 GiB memory" in text
    shared = describe(Status("default", state="running", shares=[
        {"path": "/home/me", "read_only": False, "transport": "virtiofs"},
        {"path": "/data", "read_only": True, "transport": "virtiofs"}]))
    assert "shares     /home/me (virtiofs, read-write)\n           /data (virtiofs, read-only)" in shared
