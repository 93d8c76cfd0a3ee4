"""Docker subnets against the host's routes (pure): the VPN case, IPv6, what is not a conflict,
and the three ways routes are read."""

from __future__ import annotations

import json

from hypervisor.diagnose import routes

VPN_IP_JSON = json.dumps([
    {"dst": "default", "gateway": "192.168.1.1", "dev": "wlan0", "protocol": "dhcp", "flags": []},
    {"dst": "10.0.0.0/8", "dev": "tun0", "scope": "link", "flags": []},
    {"dst": "192.168.1.0/24", "dev": "wlan0", "protocol": "kernel", "scope": "link", "flags": []},
    {"dst": "169.254.0.0/16", "dev": "wlan0", "scope": "link", "flags": []},
    {"type": "unreachable", "dst": "172.31.0.0/16", "flags": []},
    {"dst": "203.0.113.7", "gateway": "192.168.1.1", "dev": "wlan0", "flags": []},
])

NETWORKS = [
    {"Name": "bridge", "IPAM": {"Config": [{"Subnet": "172.17.0.0/16", "Gateway": "172.17.0.1"}]}},
    {"Name": "host", "IPAM": {"Config": []}},
    {"Name": "none", "IPAM": {"Config": None}},
    {"Name": "app", "IPAM": {"Config": [{"Subnet": "10.89.0.0/24"}, {"Subnet": "fd00:dead::/64"}]}},
]


def test_a_vpn_route_over_a_docker_subnet_is_found() -> None:
    found = routes.overlaps(routes.docker_subnets(NETWORKS), routes.parse_ip_json(VPN_IP_JSON))
    assert [(o.subnet.network, str(o.subnet.subnet), str(o.route.dst), o.route.dev) for o in found] == [
        ("app", "10.89.0.0/24", "10.0.0.0/8", "tun0")]
    assert not found[0].host_docker
    assert found[0].describe() == ("Docker network app (10.89.0.0/24) overlaps the host's route to 10.0.0.0/8 "
                                   "via tun0")


def test_the_default_route_link_local_and_unreachable_routes_are_no_conflict() -> None:
    parsed = routes.parse_ip_json(VPN_IP_JSON)
    assert "172.31.0.0/16" not in {str(r.dst) for r in parsed}  # unreachable: routes nowhere
    assert str(parsed[-1].dst) == "203.0.113.7/32"  # a host route without a prefix
    wide = [routes.Subnet("wide", routes.parse_network("169.254.0.0/16")),
            routes.Subnet("any", routes.parse_network("192.0.0.0/2"))]
    found = routes.overlaps(wide, parsed)
    assert {str(o.route.dst) for o in found} == {"192.168.1.0/24", "203.0.113.7/32"}  # never default, never 169.254


def test_ipv6_overlaps_ipv6_only() -> None:
    v6 = routes.parse_ip_json(json.dumps([
        {"dst": "fd00::/8", "dev": "wg0", "flags": []},
        {"dst": "fe80::/64", "dev": "eth0", "flags": []},
        {"dst": "default", "gateway": "fe80::1", "dev": "eth0", "flags": []},
        {"dst": "::1", "dev": "lo", "flags": []},
    ]), family=6)
    assert {str(r.dst) for r in v6} == {"fd00::/8", "fe80::/64", "::/0", "::1/128"}
    found = routes.overlaps(routes.docker_subnets(NETWORKS), v6)
    assert [(str(o.subnet.subnet), o.route.dev) for o in found] == [("fd00:dead::/64", "wg0")]


def test_a_host_docker_bridge_is_told_apart() -> None:
    found = routes.overlaps(routes.docker_subnets(NETWORKS),
                            [routes.Route(routes.parse_network("172.17.0.0/16"), "docker0"),
                             routes.Route(routes.parse_network("10.89.0.0/24"), "br-0123456789ab")])
    assert [o.host_docker for o in found] == [True, True]


def test_proc_net_route_is_read() -> None:
    text = ("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
            "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
            "tun0\t0000000A\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0\n"
            "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n")
    parsed = routes.parse_proc_net_route(text)
    assert [(str(r.dst), r.dev) for r in parsed] == [("0.0.0.0/0", "eth0"), ("10.0.0.0/8", "tun0"),
                                                     ("192.0.2.0/24", "eth0")]
    found = routes.overlaps([routes.Subnet("vpnish", routes.parse_network("10.1.0.0/16"))], parsed)
    assert [o.route.dev for o in found] == ["tun0"]


def test_proc_ipv6_route_is_read() -> None:
    text = ("fd000000000000000000000000000000 08 00000000000000000000000000000000 00 "
            "00000000000000000000000000000000 00000400 00000001 00000000 00000001 wg0\n"
            "00000000000000000000000000000001 80 00000000000000000000000000000000 00 "
            "00000000000000000000000000000000 00000000 00000002 00000000 80200001 lo\n"
            "garbage\n")
    assert [(str(r.dst), r.dev) for r in routes.parse_proc_ipv6_route(text)] == [("fd00::/8", "wg0"),
                                                                              ("::1/128", "lo")]


def test_unparsable_input_is_no_route() -> None:
    assert routes.parse_ip_json("not json") == []
    assert routes.parse_ip_json('{"dst": "10.0.0.0/8"}') == []
    assert routes.parse_ip_json('[{"dst": "nonsense"}]') == []
    assert routes.docker_subnets([{"Name": "x", "IPAM": {"Config": [{"Subnet": "bad"}, {}]}}]) == []
