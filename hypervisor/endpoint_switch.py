"""Which listener the engine socket's name leads to: the agent's or the ssh master's.

Both listeners stay bound for the VM's life, each under a private second name in the same 0700
directory; switching makes a hard link of the chosen one at a temporary name and renames it over
the engine socket. rename(2) is atomic, so a client connecting meanwhile reaches one listener or
the other, never "no such file"; connections already accepted by either go on undisturbed.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from hypervisor.errors import ForwardError

log = logging.getLogger(__name__)

OWN_NAME = "engine.own"  # the agent's listener, by a name of its own
TEMPORARY_NAME = "engine.new"


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


@dataclass
class EndpointSwitch:
    """The engine socket `endpoint`, and the agent's listener kept under a second name."""

    endpoint: Path

    @property
    def own(self) -> Path:
        return self.endpoint.with_name(OWN_NAME)

    def adopt(self) -> None:
        """Give the agent's listener, bound at `endpoint` just now, its second name."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.own)
        try:
            os.link(self.endpoint, self.own)
        except OSError as e:
            raise ForwardError(f"cannot give {self.endpoint} a second name", e) from e

    def point_to(self, listener: Path) -> None:
        """Make `endpoint` lead to the socket bound at `listener`, atomically."""
        temporary = self.endpoint.with_name(TEMPORARY_NAME)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        try:
            os.link(listener, temporary)
            os.replace(temporary, self.endpoint)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise ForwardError(f"cannot point {self.endpoint} at {listener}", e) from e

    def to_agent(self) -> None:
        """Back to the agent's listener (it answers a paused or stopped VM in one line)."""
        if _identity(self.own) is not None and _identity(self.endpoint) != _identity(self.own):
            self.point_to(self.own)
            log.info("%s: the agent answers again", self.endpoint)

    def leads_to(self, listener: Path) -> bool:
        found = _identity(self.endpoint)
        return found is not None and found == _identity(listener)

    def release(self) -> None:
        """Drop the second name (the agent's forwarder removes the endpoint itself)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.own)
