"""What the host's network offers tests (IPv6 loopback), decided once."""

from __future__ import annotations

import socket

import pytest


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not has_ipv6_loopback(), reason="the host has no IPv6 loopback")
