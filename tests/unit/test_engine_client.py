"""hypervisor.engine against a fake engine on a unix socket: the one client the CLI, the tray's
dashboard and reset dialog, and the agent share."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hypervisor import engine
from hypervisor.engine import EngineUsage
from hypervisor.errors import EngineError

Handler = Callable[[str, socket.socket], None]


def reply(conn: socket.socket, code: int, body: bytes = b"", content_type: str = "application/json") -> None:
    conn.sendall(f"HTTP/1.0 {code} X\r\nContent-Type: {content_type}\r\n\r\n".encode() + body)


@pytest.fixture
def fake_engine(tmp_path: Path) -> Iterator[tuple[str, list[str], dict[str, Handler]]]:
    """(socket path, request lines seen, handlers by request line prefix)."""
    path = str(tmp_path / "docker.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)
    seen: list[str] = []
    handlers: dict[str, Handler] = {}

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += conn.recv(4096)
                line = head.split(b"\r\n", 1)[0].decode()
                seen.append(line)
                for prefix, handle in handlers.items():
                    if line.startswith(prefix):
                        handle(line, conn)
                        break
                else:
                    reply(conn, 404, b'{"message": "page not found"}')

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path, seen, handlers
    server.close()


def test_lists_and_actions(fake_engine) -> None:  # noqa: ANN001
    path, seen, handlers = fake_engine
    handlers["GET /containers/json?all=1 "] = lambda _l, c: reply(c, 200, b'[{"Id": "abc"}]')
    handlers["POST /containers/abc/stop?t=10 "] = lambda _l, c: reply(c, 204)
    handlers["DELETE /containers/abc?force=1 "] = lambda _l, c: reply(c, 409, b'{"message": "in use"}')
    assert engine.containers(path) == [{"Id": "abc"}]
    engine.container_action(path, "abc", "stop")
    with pytest.raises(EngineError, match="DELETE /containers/abc failed: in use"):
        engine.container_action(path, "abc", "remove")
    with pytest.raises(ValueError):
        engine.container_action(path, "abc", "explode")
    assert seen[1] == "POST /containers/abc/stop?t=10 HTTP/1.0"


def test_prune_asks_for_every_unused_image(fake_engine) -> None:  # noqa: ANN001
    path, seen, handlers = fake_engine
    handlers["POST /images/prune"] = lambda _l, c: reply(c, 200, b'{"ImagesDeleted": [], "SpaceReclaimed": 5}')
    assert engine.prune_images(path) == {"ImagesDeleted": [], "SpaceReclaimed": 5}
    assert "filters=%7B%22dangling%22%3A%20%5B%22false%22%5D%7D" in seen[0]


def test_no_engine_is_one_error_and_df_none(tmp_path: Path) -> None:
    missing = str(tmp_path / "none.sock")
    with pytest.raises(EngineError, match="engine not running"):
        engine.images(missing)
    assert engine.system_df(missing) is None and engine.usage(missing) is None


def test_usage_from_the_engine(fake_engine) -> None:  # noqa: ANN001
    path, _, handlers = fake_engine
    df = {"Containers": [{"State": "running", "SizeRw": 10}], "Images": [{}], "Volumes": [], "LayersSize": 90}
    handlers["GET /system/df "] = lambda _l, c: reply(c, 200, json.dumps(df).encode())
    assert engine.usage(path) == EngineUsage(containers=1, running=1, images=1, volumes=0, build_cache=0,
                                             disk_bytes=100)
    assert engine.usage_summary(df) == {"containers": 1, "images": 1, "volumes": 0, "bytes": 100}


def test_events_stream_until_closed(fake_engine) -> None:  # noqa: ANN001
    path, _, handlers = fake_engine
    release = threading.Event()

    def events(_line: str, conn: socket.socket) -> None:
        reply(conn, 200, b'{"Type": "container", "Action": "start"}\n{"Type": "ima')
        conn.sendall(b'ge", "Action": "pull"}\n')
        release.wait(10)  # then idle, as the engine does between events

    handlers["GET /events "] = events
    stream = engine.events(path)
    got = []
    reader = threading.Thread(target=lambda: got.extend(stream), daemon=True)
    reader.start()
    deadline = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got == [{"Type": "container", "Action": "start"}, {"Type": "image", "Action": "pull"}]
    stream.close()
    reader.join(5)
    assert not reader.is_alive(), "close() must end a reader blocked on an idle stream"
    release.set()


def test_logs_demultiplex_unless_tty(fake_engine) -> None:  # noqa: ANN001
    path, _, handlers = fake_engine
    tty = {"value": False}

    def inspect(_line: str, conn: socket.socket) -> None:
        reply(conn, 200, json.dumps({"Config": {"Tty": tty["value"]}}).encode())

    handlers["GET /containers/c1/json "] = inspect

    def frame(stream: int, data: bytes) -> bytes:
        return bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data

    def logs(line: str, conn: socket.socket) -> None:
        assert "follow=1" in line and "tail=7" in line
        body = b"raw output\n" if tty["value"] else frame(1, b"out\n") + frame(2, b"err\n")
        reply(conn, 200, body, "application/vnd.docker.multiplexed-stream")

    handlers["GET /containers/c1/logs"] = logs
    assert list(engine.logs(path, "c1", tail=7)) == [b"out\n", b"err\n"]
    tty["value"] = True
    assert b"".join(engine.logs(path, "c1", tail=7)) == b"raw output\n"


def test_log_frames_wait_for_a_whole_frame() -> None:
    data = bytes([1, 0, 0, 0, 0, 0, 0, 5]) + b"hello"
    assert engine.log_frames(data[:9]) == ([], data[:9])
    assert engine.log_frames(data + data[:3]) == ([b"hello"], data[:3])
