"""Docker networks in the guest whose subnets overlap a route of the host (pure).

The classic breakage: a VPN pushes 10.0.0.0/8 (or a corporate 172.16.0.0/12) to the host, and a
Docker network in the VM uses a subnet inside it. A container that talks to an address there
reaches the VM's own bridge instead of the VPN. The host's routes are read as `ip -j route`
prints them (or from /proc/net/route and /proc/net/ipv6_route); the networks as the engine's
GET /networks answers.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Interfaces of a Docker Engine on the host itself: an overlap with them is the host's own
# containers, worth a warning but not the VPN breakage this check is about.
HOST_DOCKER_DEV = re.compile(r"^(docker\d+|br-[0-9a-f]{12}|veth\w*)$")


@dataclass(frozen=True)
class Route:
    dst: Network
    dev: str = ""


@dataclass(frozen=True)
class Subnet:
    network: str  # the Docker network's name
    subnet: Network


@dataclass(frozen=True)
class Overlap:
    subnet: Subnet
    route: Route

    @property
    def host_docker(self) -> bool:
        """The route is one of a Docker Engine running on the host itself."""
        return bool(HOST_DOCKER_DEV.match(self.route.dev))

    def describe(self) -> str:
        via = f" via {self.route.dev}" if self.route.dev else ""
        return (f"Docker network {self.subnet.network} ({self.subnet.subnet}) overlaps the host's route to "
                f"{self.route.dst}{via}")


def parse_network(text: str, default_family: int = 4) -> Network | None:
    """"10.0.0.0/8", "10.1.2.3" (a host route), "default" (for `default_family`); None if unusable."""
    text = text.strip()
    if text == "default":
        return ipaddress.ip_network("0.0.0.0/0" if default_family == 4 else "::/0")
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def parse_ip_json(text: str, family: int = 4) -> list[Route]:
    """`ip -j [-6] route` output; only unicast routes (unreachable, blackhole... route nowhere)."""
    try:
        raw = json.loads(text or "[]")
    except ValueError:
        return []
    routes = []
    for entry in raw if isinstance(raw, list) else []:
        if not isinstance(entry, dict) or entry.get("type", "unicast") != "unicast":
            continue
        dst = parse_network(str(entry.get("dst", "")), family)
        if dst is not None:
            routes.append(Route(dst, str(entry.get("dev") or "")))
    return routes


def parse_proc_net_route(text: str) -> list[Route]:
    """/proc/net/route: Iface, Destination and Mask as little-endian hex (Linux)."""
    routes = []
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 8:
            continue
        try:
            dst = int(cols[1], 16).to_bytes(4, "little")
            mask = int(cols[7], 16).to_bytes(4, "little")
            prefix = bin(int.from_bytes(mask, "big")).count("1")
            routes.append(Route(ipaddress.ip_network((bytes(dst), prefix), strict=False), cols[0]))
        except ValueError:
            continue
    return routes


def parse_proc_ipv6_route(text: str) -> list[Route]:
    """/proc/net/ipv6_route: destination (32 hex digits), prefix length (hex), ..., device last."""
    routes = []
    for line in text.splitlines():
        cols = line.split()
        if len(cols) < 10 or len(cols[0]) != 32:
            continue
        try:
            dst = ipaddress.IPv6Address(bytes.fromhex(cols[0]))
            routes.append(Route(ipaddress.IPv6Network((dst, int(cols[1], 16)), strict=False), cols[-1]))
        except ValueError:
            continue
    return routes


def relevant(route: Route) -> bool:
    """Routes that say where a real destination is: not the default route, loopback, link-local or
    multicast (every host has those and none is reachable through it)."""
    dst = route.dst
    if dst.prefixlen == 0 or route.dev == "lo":
        return False
    return not (dst.is_loopback or dst.is_link_local or dst.is_multicast)


def docker_subnets(networks: Iterable[Mapping[str, Any]]) -> list[Subnet]:
    """Every IPAM subnet of the engine's networks (GET /networks)."""
    found = []
    for net in networks:
        name = str(net.get("Name") or str(net.get("Id") or "")[:12])
        for config in (net.get("IPAM") or {}).get("Config") or []:
            subnet = parse_network(str((config or {}).get("Subnet") or ""))
            if subnet is not None and subnet.prefixlen > 0:
                found.append(Subnet(name, subnet))
    return found


def overlaps(subnets: Iterable[Subnet], routes: Iterable[Route]) -> list[Overlap]:
    """Each (Docker subnet, host route) pair that shares addresses, IPv4 with IPv4, IPv6 with IPv6."""
    candidates = [r for r in routes if relevant(r)]
    found = []
    for subnet in subnets:
        for route in candidates:
            if subnet.subnet.version == route.dst.version and subnet.subnet.overlaps(route.dst):
                found.append(Overlap(subnet, route))
    return found
