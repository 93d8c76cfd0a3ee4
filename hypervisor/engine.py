"""Minimal HTTP over a stream to the Docker Engine API: enough to check readiness and ask the
engine's version through an SSH channel without any engine TCP port."""

from __future__ import annotations

import json
from typing import Any, Protocol


class Stream(Protocol):
    def sendall(self, data: bytes) -> None: ...
    def recv(self, size: int) -> bytes: ...
    def close(self) -> None: ...


def request_bytes(method: str, path: str) -> bytes:
    return f"{method} {path} HTTP/1.0\r\nHost: docker\r\nUser-Agent: pinnace\r\n\r\n".encode()


def parse_response(raw: bytes) -> tuple[int, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise ValueError(f"not an HTTP response: {raw[:60]!r}")
    return int(status_line[1]), body


def get(stream: Stream, path: str) -> tuple[int, bytes]:
    """One GET on a fresh stream (HTTP/1.0: the engine closes when done); closes the stream."""
    try:
        stream.sendall(request_bytes("GET", path))
        chunks = []
        while chunk := stream.recv(65536):
            chunks.append(chunk)
    finally:
        stream.close()
    return parse_response(b"".join(chunks))


def version_of(body: bytes) -> dict[str, Any]:
    data = json.loads(body)
    return data if isinstance(data, dict) else {}


def unix_get(socket_path: str, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """GET through the forwarded host socket (what the CLI uses for the reset summary)."""
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(socket_path)
    return get(sock, path)


def usage_summary(df: dict[str, Any]) -> dict[str, int]:
    """Counts and bytes from /system/df: what a reset deletes."""
    containers = df.get("Containers") or []
    images = df.get("Images") or []
    volumes = df.get("Volumes") or []
    size = int(df.get("LayersSize") or 0) + sum(int((v.get("UsageData") or {}).get("Size") or 0) for v in volumes)
    return {"containers": len(containers), "images": len(images), "volumes": len(volumes), "bytes": max(size, 0)}
