"""Talking to the forwarded docker engine with the docker SDK (imported lazily: optional dep).

Everything here blocks; callers run it through `run_task` or on their own daemon threads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.tray.dashboard_model import ContainerRow, ImageRow, container_row, image_row
from hypervisor.errors import PinnaceError
from hypervisor.paths import PIPE_PREFIX, npipe_url

log = logging.getLogger(__name__)

API_TIMEOUT = 15


class EngineError(PinnaceError):
    """The engine could not be reached or refused a request."""


@dataclass
class EngineSnapshot:
    containers: list[ContainerRow] = field(default_factory=list)
    images: list[ImageRow] = field(default_factory=list)


def connect(docker_socket: str | Path, timeout: int = API_TIMEOUT) -> Any:
    """A `docker.DockerClient` on the forwarded socket; EngineError when unavailable."""
    try:
        import docker
    except ImportError as exc:
        raise EngineError("the docker Python SDK is not installed (pip install docker)", exc) from exc
    try:
        return docker.DockerClient(base_url=engine_url(str(docker_socket)), timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - the SDK raises several unrelated types here
        raise EngineError("cannot connect to the engine", exc) from exc


def engine_url(address: str) -> str:
    """docker SDK base_url for the engine: npipe:// on Windows (probing a pipe would take a
    connection from the forwarder), else unix:// once the socket exists."""
    if address.startswith(PIPE_PREFIX):
        return npipe_url(address)
    if not Path(address).exists():
        raise EngineError(f"engine not running (no socket at {address})")
    return "unix://" + address


def _wrap(what: str, exc: Exception) -> EngineError:
    return EngineError(f"{what} failed", exc)


def system_df(docker_socket: str | Path) -> dict[str, Any] | None:
    """`docker system df` as a dict, or None when the engine cannot be asked."""
    try:
        client = connect(docker_socket)
        try:
            return client.df()
        finally:
            client.close()
    except Exception as exc:  # noqa: BLE001 - None is the documented "unavailable" answer
        log.info("engine df unavailable: %s", exc)
        return None


def snapshot(docker_socket: str | Path) -> EngineSnapshot:
    client = connect(docker_socket)
    try:
        containers = client.api.containers(all=True)
        images = client.api.images()
    except Exception as exc:  # noqa: BLE001
        raise _wrap("listing containers and images", exc) from exc
    finally:
        client.close()
    rows = sorted((container_row(c) for c in containers), key=lambda r: (not r.running, r.name))
    return EngineSnapshot(rows, sorted((image_row(i) for i in images), key=lambda r: r.tags))


def container_action(docker_socket: str | Path, container_id: str, action: str) -> None:
    """start | stop | remove (remove forces, like the dashboard's confirmation says)."""
    client = connect(docker_socket)
    try:
        if action == "start":
            client.api.start(container_id)
        elif action == "stop":
            client.api.stop(container_id, timeout=10)
        elif action == "remove":
            client.api.remove_container(container_id, force=True)
        else:
            raise ValueError(f"unknown container action {action!r}")
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _wrap(f"{action} container", exc) from exc
    finally:
        client.close()


def prune_images(docker_socket: str | Path) -> dict[str, Any]:
    """Remove every image no container uses (not only dangling ones)."""
    client = connect(docker_socket)
    try:
        return client.api.prune_images(filters={"dangling": False})
    except Exception as exc:  # noqa: BLE001
        raise _wrap("pruning images", exc) from exc
    finally:
        client.close()
