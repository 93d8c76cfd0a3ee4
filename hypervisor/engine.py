"""The one Docker Engine API client: minimal HTTP/1.0 over a stream, with no engine TCP port and no
Docker SDK. The agent and the port publisher speak it over SSH channels; the CLI and the tray over
the forwarded engine (its unix socket, or its named pipe on Windows)."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from hypervisor.control import PipeStream, is_pipe
from hypervisor.errors import EngineError

log = logging.getLogger(__name__)

API_TIMEOUT = 15.0
STOP_GRACE = 10  # seconds `docker stop` gives a container before it kills it
POLL_SECONDS = 1.0  # how often a stream's reader looks whether it was closed meanwhile
LOG_TAIL = 500


class Stream(Protocol):
    def sendall(self, data: bytes) -> None: ...
    def recv(self, size: int) -> bytes: ...
    def close(self) -> None: ...


def request_bytes(method: str, path: str) -> bytes:
    body_length = "" if method == "GET" else "Content-Length: 0\r\n"
    return f"{method} {path} HTTP/1.0\r\nHost: docker\r\nUser-Agent: pinnace\r\n{body_length}\r\n".encode()


def parse_response(raw: bytes) -> tuple[int, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise ValueError(f"not an HTTP response: {raw[:60]!r}")
    return int(status_line[1]), body


def exchange(stream: Stream, method: str, path: str) -> tuple[int, bytes]:
    """One request on a fresh stream (HTTP/1.0: the engine closes when done); closes the stream."""
    try:
        stream.sendall(request_bytes(method, path))
        chunks = []
        while chunk := stream.recv(65536):
            chunks.append(chunk)
    finally:
        stream.close()
    return parse_response(b"".join(chunks))


def get(stream: Stream, path: str) -> tuple[int, bytes]:
    return exchange(stream, "GET", path)


def version_of(body: bytes) -> dict[str, Any]:
    data = json.loads(body)
    return data if isinstance(data, dict) else {}


# --- the forwarded engine on the host ------------------------------------------------------------


def unix_connect(socket_path: str, timeout: float | None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(socket_path)
    except OSError:
        sock.close()
        raise
    return sock


def open_stream(address: str | Path, timeout: float | None = API_TIMEOUT) -> Stream:
    """A new connection to the forwarded engine: its named pipe on Windows (no AF_UNIX there),
    else its unix socket."""
    if is_pipe(address):
        return PipeStream.connect(str(address), timeout)
    return unix_connect(str(address), timeout)


def unix_get(socket_path: str, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """GET through the forwarded host socket."""
    return get(unix_connect(socket_path, timeout), path)


def request(address: str | Path, method: str, path: str, timeout: float = API_TIMEOUT) -> tuple[int, bytes]:
    """One request to the forwarded engine, on its own connection."""
    if method == "GET" and not is_pipe(address):
        return unix_get(str(address), path, timeout)
    return exchange(open_stream(address, timeout), method, path)


def _unreachable(address: str | Path, exc: BaseException) -> EngineError:
    if isinstance(exc, FileNotFoundError | ConnectionRefusedError):
        return EngineError(f"engine not running (no answer on {address})", exc)
    return EngineError(f"cannot reach the engine on {address}", exc)


def _refusal(method: str, path: str, code: int, body: bytes) -> EngineError:
    try:
        message = str(json.loads(body).get("message") or "")
    except (ValueError, AttributeError):
        message = body.decode("utf-8", "replace").strip()
    return EngineError(f"{method} {path.split('?', 1)[0]} failed: {message or f'HTTP {code}'}")


def call(address: str | Path, method: str, path: str, timeout: float = API_TIMEOUT) -> Any:
    """The engine's JSON answer (None for an empty one); EngineError when unreachable or refused."""
    try:
        code, body = request(address, method, path, timeout)
    except (OSError, ValueError) as exc:
        raise _unreachable(address, exc) from exc
    if code >= 400:
        raise _refusal(method, path, code, body)
    try:
        return json.loads(body) if body.strip() else None
    except ValueError as exc:
        raise EngineError(f"{method} {path.split('?', 1)[0]}: malformed answer", exc) from exc


def system_df(address: str | Path) -> dict[str, Any] | None:
    """`docker system df` as a dict, or None when the engine cannot be asked."""
    try:
        df = call(address, "GET", "/system/df")
    except EngineError as exc:
        log.info("engine df unavailable: %s", exc)
        return None
    return df if isinstance(df, dict) else None


def containers(address: str | Path) -> list[dict[str, Any]]:
    return list(call(address, "GET", "/containers/json?all=1") or [])


def images(address: str | Path) -> list[dict[str, Any]]:
    return list(call(address, "GET", "/images/json") or [])


def container_action(address: str | Path, container_id: str, action: str) -> None:
    """start | stop | remove (remove forces, like the dashboard's confirmation says)."""
    cid = quote(container_id, safe="")
    if action == "start":
        call(address, "POST", f"/containers/{cid}/start")
    elif action == "stop":
        call(address, "POST", f"/containers/{cid}/stop?t={STOP_GRACE}", API_TIMEOUT + STOP_GRACE)
    elif action == "remove":
        call(address, "DELETE", f"/containers/{cid}?force=1")
    else:
        raise ValueError(f"unknown container action {action!r}")


def prune_images(address: str | Path) -> dict[str, Any]:
    """Remove every image no container uses (not only dangling ones)."""
    filters = quote(json.dumps({"dangling": ["false"]}), safe="")
    return dict(call(address, "POST", f"/images/prune?filters={filters}", 120.0) or {})


# --- streams: events and container logs ----------------------------------------------------------


Splitter = Callable[[bytes], tuple[list[Any], bytes]]


def json_lines(buffer: bytes) -> tuple[list[Any], bytes]:
    """Complete JSON lines (HTTP/1.0: no chunking) and the unfinished rest."""
    *lines, rest = buffer.split(b"\n")
    return [json.loads(line) for line in lines if line.strip()], rest


def log_frames(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Payloads of the multiplexed log stream (8-byte header: stream, 0, 0, 0, big-endian size)."""
    out = []
    while len(buffer) >= 8:
        end = 8 + int.from_bytes(buffer[4:8], "big")
        if len(buffer) < end:
            break
        out.append(buffer[8:end])
        buffer = buffer[end:]
    return out, buffer


def raw_chunks(buffer: bytes) -> tuple[list[bytes], bytes]:
    """A TTY container's log stream is not framed: every chunk is output."""
    return ([buffer] if buffer else []), b""


class EngineStream:
    """A long GET (events, logs) read item by item; close() from any thread ends the iteration."""

    def __init__(self, conn: Stream, split: Splitter, buffer: bytes = b"") -> None:
        self._conn, self._split, self._buffer = conn, split, buffer
        self._closed = threading.Event()

    def __iter__(self) -> Iterator[Any]:
        try:
            items, self._buffer = self._split(self._buffer)
            yield from items
            while not self._closed.is_set():
                try:
                    chunk = self._conn.recv(65536)
                except TimeoutError:
                    continue  # idle: look again whether we were closed
                except OSError:
                    if self._closed.is_set():
                        return
                    raise
                if not chunk:
                    return
                items, self._buffer = self._split(self._buffer + chunk)
                yield from items
        finally:
            self._conn.close()

    def close(self) -> None:
        self._closed.set()
        if isinstance(self._conn, socket.socket):  # wakes a reader blocked in recv() at once
            with contextlib.suppress(OSError):
                self._conn.shutdown(socket.SHUT_RDWR)


def read_head(stream: Stream) -> bytes:
    """Bytes up to and past the end of an HTTP response head; ValueError if the stream ends first."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        chunk = stream.recv(65536)
        if not chunk:
            raise ValueError("the engine closed the connection before answering")
        raw += chunk
    return raw


def open_get(address: str | Path, path: str, split: Splitter) -> EngineStream:
    """Send a streaming GET and read its head; EngineError when unreachable or refused."""
    try:
        conn = open_stream(address, API_TIMEOUT)
    except OSError as exc:
        raise _unreachable(address, exc) from exc
    try:
        conn.sendall(request_bytes("GET", path))
        code, body = parse_response(read_head(conn))
        if code >= 400:
            while chunk := conn.recv(65536):
                body += chunk
            raise _refusal("GET", path, code, body)
        if hasattr(conn, "settimeout"):
            conn.settimeout(POLL_SECONDS)
    except (OSError, ValueError) as exc:
        conn.close()
        raise _unreachable(address, exc) from exc
    except EngineError:
        conn.close()
        raise
    return EngineStream(conn, split, body)


def events(address: str | Path) -> EngineStream:
    """The engine's event stream: one dict per event, until closed."""
    return open_get(address, "/events", json_lines)


def logs(address: str | Path, container_id: str, tail: int = LOG_TAIL) -> EngineStream:
    """A container's output (stdout and stderr), following: bytes chunks, until closed."""
    cid = quote(container_id, safe="")
    tty = bool(((call(address, "GET", f"/containers/{cid}/json") or {}).get("Config") or {}).get("Tty"))
    path = f"/containers/{cid}/logs?stdout=1&stderr=1&follow=1&tail={tail}"
    return open_get(address, path, raw_chunks if tty else log_frames)


# --- what the engine holds -----------------------------------------------------------------------


def _size(value: Any) -> int:
    """df reports -1 for sizes it did not compute; count those as 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


@dataclass(frozen=True)
class EngineUsage:
    """Counts and bytes from /system/df: what a reset deletes (the CLI and the tray both show it)."""

    containers: int
    running: int
    images: int
    volumes: int
    build_cache: int
    disk_bytes: int

    @classmethod
    def from_df(cls, df: dict[str, Any]) -> EngineUsage:
        containers = df.get("Containers") or []
        images = df.get("Images") or []
        volumes = df.get("Volumes") or []
        cache = df.get("BuildCache") or []
        layers = _size(df.get("LayersSize"))
        if not layers:  # older engines leave LayersSize out: fall back to unique image sizes
            layers = sum(_size(i.get("Size")) - _size(i.get("SharedSize")) for i in images)
        disk = (
            layers
            + sum(_size(c.get("SizeRw")) for c in containers)
            + sum(_size((v.get("UsageData") or {}).get("Size")) for v in volumes)
            + sum(_size(b.get("Size")) for b in cache if not b.get("Shared"))
        )
        return cls(
            containers=len(containers),
            running=sum(1 for c in containers if c.get("State") == "running"),
            images=len(images),
            volumes=len(volumes),
            build_cache=len(cache),
            disk_bytes=disk,
        )


def usage(address: str | Path) -> EngineUsage | None:
    """What the engine holds now, or None when it cannot be asked."""
    df = system_df(address)
    return EngineUsage.from_df(df) if df is not None else None


def usage_summary(df: dict[str, Any]) -> dict[str, int]:
    """EngineUsage's counts as a dict."""
    u = EngineUsage.from_df(df)
    return {"containers": u.containers, "images": u.images, "volumes": u.volumes, "bytes": u.disk_bytes}
