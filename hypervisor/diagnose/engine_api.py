"""The few engine calls diagnose makes beyond hypervisor.engine's GETs: requests with a body
(importing an empty image, creating a container) and one short-lived probe container, all through
the forwarded engine socket, each bounded by a timeout.

The probe container needs no registry: its image is an empty tar imported once
(`pinnace-diagnose:empty`), and the guest's static busybox is bind-mounted into it read-only.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypervisor import engine
from hypervisor.errors import EngineError

log = logging.getLogger(__name__)

PROBE_REPO, PROBE_TAG = "pinnace-diagnose", "empty"
PROBE_IMAGE = f"{PROBE_REPO}:{PROBE_TAG}"
GUEST_BUSYBOX = "/usr/bin/busybox"  # static (vmimage/image.toml: busybox-static)
PROBE_LABEL = "org.pinnace.diagnose"
EMPTY_TAR = bytes(10240)  # an archive with no members: two zero blocks, padded to a 10 KiB record
CALL_TIMEOUT_S = 15.0


def request(address: str | Path, method: str, path: str, body: bytes = b"",
            content_type: str = "application/json", timeout: float = CALL_TIMEOUT_S) -> tuple[int, bytes]:
    """One HTTP/1.0 request with a body on its own connection (the engine closes when done)."""
    head = (f"{method} {path} HTTP/1.0\r\nHost: docker\r\nUser-Agent: pinnace-diagnose\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    stream = engine.open_stream(address, timeout)
    try:
        stream.sendall(head + body)
        chunks = []
        while chunk := stream.recv(65536):
            chunks.append(chunk)
    finally:
        stream.close()
    return engine.parse_response(b"".join(chunks))


def call(address: str | Path, method: str, path: str, payload: Any = None, body: bytes | None = None,
         content_type: str = "application/json", timeout: float = CALL_TIMEOUT_S) -> Any:
    """The engine's JSON answer (or its raw bytes when not JSON); EngineError naming the call."""
    data = body if body is not None else (json.dumps(payload).encode() if payload is not None else b"")
    what = f"{method} {path.split('?', 1)[0]}"
    try:
        code, answer = request(address, method, path, data, content_type, timeout)
    except TimeoutError as exc:
        raise EngineError(f"{what}: no answer in {timeout:.0f} s", exc) from exc
    except (OSError, ValueError) as exc:
        raise EngineError(f"{what}: the engine did not answer", exc) from exc
    if code >= 400:
        raise EngineError(f"{what} failed: {_message(answer) or f'HTTP {code}'}")
    try:
        return json.loads(answer) if answer.strip() else None
    except ValueError:
        return answer


def _message(body: bytes) -> str:
    try:
        return str(json.loads(body).get("message") or "")
    except (ValueError, AttributeError):
        return body.decode("utf-8", "replace").strip()[:200]


def stream_error(body: Any) -> str:
    """The first error in a JSON-lines progress stream (an import answers 200 and reports there)."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else json.dumps(body)
    for line in text.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict) and item.get("error"):
            return str(item["error"])
    return ""


def ensure_probe_image(address: str | Path) -> str:
    """`pinnace-diagnose:empty`, imported from an empty tar the first time (idempotent)."""
    try:
        call(address, "GET", f"/images/{PROBE_IMAGE}/json")
        return PROBE_IMAGE
    except EngineError as exc:
        if "No such image" not in str(exc) and "404" not in str(exc):
            raise
    answer = call(address, "POST", f"/images/create?fromSrc=-&repo={PROBE_REPO}&tag={PROBE_TAG}",
                  body=EMPTY_TAR, content_type="application/x-tar", timeout=60.0)
    problem = stream_error(answer)
    if problem:
        raise EngineError(f"cannot import the empty probe image: {problem}")
    log.info("imported %s for the diagnose probes", PROBE_IMAGE)
    return PROBE_IMAGE


@dataclass(frozen=True)
class ContainerRun:
    exit_code: int
    output: str
    seconds: float


def run_probe(address: str | Path, script: str, timeout: float = 60.0) -> ContainerRun:
    """Run `script` with the guest's busybox sh in a new container on the default bridge network;
    the container is removed whatever happens."""
    image = ensure_probe_image(address)
    started = time.monotonic()
    spec = {
        "Image": image,
        "Entrypoint": ["/bin/busybox"],
        "Cmd": ["sh", "-c", script],
        "Labels": {PROBE_LABEL: "1"},
        "HostConfig": {"Binds": [f"{GUEST_BUSYBOX}:/bin/busybox:ro"], "NetworkMode": "bridge"},
    }
    name = f"pinnace-diagnose-{secrets.token_hex(4)}"
    created = call(address, "POST", f"/containers/create?name={name}", spec)
    cid = str(created.get("Id") or name) if isinstance(created, dict) else name
    try:
        call(address, "POST", f"/containers/{cid}/start")
        waited = call(address, "POST", f"/containers/{cid}/wait?condition=not-running", timeout=timeout)
        status = int((waited or {}).get("StatusCode", -1)) if isinstance(waited, dict) else -1
        raw = call(address, "GET", f"/containers/{cid}/logs?stdout=1&stderr=1")
        frames, rest = engine.log_frames(raw if isinstance(raw, bytes) else b"")
        output = (b"".join(frames) + rest).decode("utf-8", "replace")
        return ContainerRun(status, output, time.monotonic() - started)
    finally:
        try:
            call(address, "DELETE", f"/containers/{cid}?force=1")
        except EngineError as exc:
            log.warning("cannot remove the probe container %s: %s", name, exc)


# --- name lookups in a container ------------------------------------------------------------------

_NAME = re.compile(r"^[A-Za-z0-9.-]+$")


def lookup_script(names: list[str], seconds: int = 10) -> str:
    """A busybox sh script that looks each name up and marks where each answer starts and ends."""
    for name in names:
        if not _NAME.match(name):
            raise ValueError(f"not a host name: {name!r}")
    return "; ".join(f"echo '@@begin {n}'; /bin/busybox timeout {seconds} /bin/busybox nslookup {n} 2>&1; "
                     f"echo \"@@end {n} $?\"" for n in names)


def parse_lookups(output: str) -> dict[str, tuple[int, str]]:
    """{name: (exit status, nslookup's output)} from `lookup_script`'s output."""
    found: dict[str, tuple[int, str]] = {}
    current: str | None = None
    lines: list[str] = []
    for line in output.splitlines():
        if line.startswith("@@begin "):
            current, lines = line[len("@@begin "):].strip(), []
        elif line.startswith("@@end ") and current is not None:
            parts = line.split()
            try:
                code = int(parts[-1])
            except (ValueError, IndexError):
                code = -1
            found[current] = (code, "\n".join(lines).strip())
            current = None
        elif current is not None:
            lines.append(line)
    return found
