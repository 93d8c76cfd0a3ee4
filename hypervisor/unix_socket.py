"""A unix socket's file left behind by a process that died: told apart from a live one, and removed.

Apart from the forwarder (hypervisor/forward.py) so the agent's control server can use it without
loading SSH (paramiko) before QEMU starts.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
from pathlib import Path

from hypervisor.errors import ForwardError

log = logging.getLogger("hypervisor.forward")


def remove_stale_socket(path: Path) -> None:
    """Remove a socket file nobody accepts on; refuse to touch a live socket or a non-socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ForwardError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        log.info("removing stale socket %s", path)
        os.unlink(path)
        return
    except FileNotFoundError:
        return
    except OSError as e:
        raise ForwardError(f"cannot tell whether {path} is in use", e) from e
    finally:
        probe.close()
    raise ForwardError(f"{path} is already being served by another process")
