"""The host platform strategy: the one place that knows which OS Pinnace runs on.

`current()` reads `sys.platform` once and returns a `Platform`: a `PosixPlatform` (Linux; macOS
is `MacPlatform`, its differences as attributes and overrides) or a `WindowsPlatform`. It owns
process liveness and termination, detached spawning, the engine and control endpoints (unix
sockets or named pipes) and private files and directories. Nothing else branches on the OS.

Tests get a specific one with `for_os("windows")` and make it the current one with
`monkeypatch.setattr(hypervisor.platform, "current", lambda: fake)`; callers therefore look it up
as `platform.current()` at call time rather than binding it at import.
"""

from __future__ import annotations

import functools
import sys

from hypervisor.platform.base import Endpoint, NotPrivateError, Platform
from hypervisor.platform.posix import MacPlatform, PosixPlatform, other_unix
from hypervisor.platform.windows import WindowsPlatform

__all__ = ["Endpoint", "MacPlatform", "NotPrivateError", "Platform", "PosixPlatform", "WindowsPlatform",
           "current", "for_os", "normalise_os"]


def normalise_os(plat: str) -> str:
    """A `sys.platform` value (or an OS name) as "linux", "darwin" or "windows"; other Unixes
    pass through unchanged."""
    if plat.startswith("linux"):
        return "linux"
    if plat == "darwin":
        return "darwin"
    if plat in ("win32", "cygwin", "msys", "windows"):
        return "windows"
    return plat


def for_os(name: str) -> Platform:
    """The strategy for an OS name or `sys.platform` value, whatever host this runs on."""
    os_name = normalise_os(name)
    if os_name == "windows":
        return WindowsPlatform()
    if os_name == "darwin":
        return MacPlatform()
    if os_name == "linux":
        return PosixPlatform()
    return other_unix(os_name)


@functools.cache
def current() -> Platform:
    """This host's strategy, chosen on first use and kept for the life of the process."""
    return for_os(sys.platform)
