"""Published ports: engine bindings -> QEMU host forwards, what QEMU forwards now, the diff."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from hypervisor import port_publisher, ports
from hypervisor.ports import GUEST_ADDR, GUEST_LOOPBACK_ADDR, PortRule


def inspect(ports_map: dict, name: str = "web", cid: str = "c" * 64) -> dict:
    return {"Id": cid, "Name": f"/{name}", "State": {"Running": True}, "NetworkSettings": {"Ports": ports_map}}


def triples(rules: list[PortRule]) -> set[tuple]:
    return {(r.proto, r.host_ip, r.host_port, r.guest_ip, r.guest_port, r.container_port) for r in rules}


# --- bindings -> rules ------------------------------------------------------------------------

def test_default_publish_binds_host_loopback_and_collapses_ipv6_twin() -> None:
    rules = ports.rules_from_inspect(inspect({"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"},
                                                         {"HostIp": "::", "HostPort": "8080"}]}), False)
    assert triples(rules) == {("tcp", "127.0.0.1", 8080, GUEST_ADDR, 8080, 80)}
    assert rules[0].container_name == "web"
    assert rules[0].add_command() == "hostfwd_add net0 tcp:127.0.0.1:8080-10.0.2.15:8080"
    assert rules[0].remove_command() == "hostfwd_remove net0 tcp:127.0.0.1:8080"


def test_expose_all_binds_every_host_interface() -> None:
    rules = ports.rules_from_inspect(inspect({"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}), True)
    assert triples(rules) == {("tcp", "0.0.0.0", 8080, GUEST_ADDR, 8080, 80)}


def test_empty_host_ip_is_all_interfaces() -> None:
    assert ports.host_address("", False) == ("127.0.0.1", GUEST_ADDR)
    assert ports.host_address("", True) == ("0.0.0.0", GUEST_ADDR)


@pytest.mark.parametrize("expose_all", [False, True])
def test_loopback_publish_stays_loopback_and_targets_guest_loopback(expose_all: bool) -> None:
    rules = ports.rules_from_inspect(inspect({"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8081"}]}),
                                     expose_all)
    assert triples(rules) == {("tcp", "127.0.0.1", 8081, GUEST_LOOPBACK_ADDR, 8081, 80)}


def test_ipv6_loopback_twin_prefers_the_ipv4_loopback_binding() -> None:
    rules = ports.rules_from_inspect(inspect({"80/tcp": [{"HostIp": "::", "HostPort": "8082"},
                                                         {"HostIp": "127.0.0.1", "HostPort": "8082"}]}), False)
    assert triples(rules) == {("tcp", "127.0.0.1", 8082, GUEST_LOOPBACK_ADDR, 8082, 80)}


def test_specific_address_is_loopback_unless_exposing() -> None:
    assert ports.host_address("192.168.1.7", False) == ("127.0.0.1", GUEST_ADDR)
    assert ports.host_address("192.168.1.7", True) == ("192.168.1.7", GUEST_ADDR)
    assert ports.host_address("[::1]", True) == ("127.0.0.1", GUEST_LOOPBACK_ADDR)


def test_udp_random_ports_and_unpublished() -> None:
    data = inspect({
        "9000/udp": [{"HostIp": "0.0.0.0", "HostPort": "9000"}],
        "80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "32768"}],  # -p 80 / -P: the engine's choice
        "443/tcp": None,  # EXPOSEd only
        "5000/sctp": [{"HostIp": "0.0.0.0", "HostPort": "5000"}],  # QEMU cannot forward sctp
        "81/tcp": [{"HostIp": "0.0.0.0", "HostPort": ""}],  # not assigned (yet)
    })
    assert triples(ports.rules_from_inspect(data, False)) == {
        ("udp", "127.0.0.1", 9000, GUEST_ADDR, 9000, 9000),
        ("tcp", "127.0.0.1", 32768, GUEST_ADDR, 32768, 80),
    }
    rule = next(r for r in ports.rules_from_inspect(data, False) if r.proto == "udp")
    assert rule.add_command() == "hostfwd_add net0 udp:127.0.0.1:9000-10.0.2.15:9000"


def test_no_network_settings() -> None:
    assert ports.rules_from_inspect({"Id": "x"}, False) == []
    assert ports.rules_from_inspect(inspect({}), False) == []


# --- info usernet -----------------------------------------------------------------------------

USERNET = """\
Hub -1 (net0):
  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ
  TCP[ESTABLISHED]   27       127.0.0.1 34953       10.0.2.15    22     0     0
  TCP[HOST_FORWARD]  25       127.0.0.1  8080       10.0.2.15  8080     0     0
  TCP[HOST_FORWARD]  24               *  8443       10.0.2.15  8443     0     0
  TCP[HOST_FORWARD]  13       127.0.0.1 34953       10.0.2.15    22     0     0
  UDP[HOST_FORWARD]  26       127.0.0.1  9000       10.0.2.16  9000     0     0
  UDP[236 sec]       28        10.0.2.15 40000        8.8.8.8    53     0     0
"""


def test_parse_usernet_lists_host_forwards_except_ignored() -> None:
    active = ports.parse_usernet(USERNET, ignore={("tcp", "127.0.0.1", 34953)})
    assert set(active) == {("tcp", "127.0.0.1", 8080), ("tcp", "0.0.0.0", 8443), ("udp", "127.0.0.1", 9000)}
    assert active[("udp", "127.0.0.1", 9000)].target == (GUEST_LOOPBACK_ADDR, 9000)


# --- desired vs active ------------------------------------------------------------------------

def rule(port: int, guest: str = GUEST_ADDR, proto: str = "tcp", name: str = "a", host: str = "127.0.0.1") -> PortRule:
    return PortRule(proto, host, port, guest, port, name * 12, name, 80)


def test_diff_adds_missing_removes_stale_keeps_equal() -> None:
    active = {r.key: r for r in (rule(8080), rule(9999))}
    plan = ports.diff([rule(8080), rule(8081)], active)
    assert [r.host_port for r in plan.add] == [8081]
    assert [r.host_port for r in plan.remove] == [9999]
    assert plan.clashes == []


def test_diff_replaces_a_forward_pointing_elsewhere() -> None:
    active = {rule(8080).key: rule(8080)}
    plan = ports.diff([rule(8080, guest=GUEST_LOOPBACK_ADDR)], active)
    assert [r.host_port for r in plan.remove] == [8080]
    assert [(r.host_port, r.guest_ip) for r in plan.add] == [(8080, GUEST_LOOPBACK_ADDR)]


def test_diff_same_port_two_protocols_is_no_clash() -> None:
    plan = ports.diff([rule(53), rule(53, proto="udp")], {})
    assert len(plan.add) == 2 and not plan.clashes


def test_diff_reports_clash_first_wins() -> None:
    plan = ports.diff([rule(8080, name="a"), rule(8080, guest=GUEST_LOOPBACK_ADDR, name="b")], {})
    assert [r.container_name for r in plan.add] == ["a"]
    assert [(lo.container_name, win.container_name) for lo, win in plan.clashes] == [("b", "a")]


def test_diff_nothing_desired_removes_everything() -> None:
    active = {rule(1).key: rule(1), rule(2, proto="udp").key: rule(2, proto="udp")}
    assert len(ports.diff([], active).remove) == 2


def test_hmp_outputs() -> None:
    assert not ports.add_failed("")
    assert ports.add_failed("could not set up host forwarding rule 'tcp:127.0.0.1:8080-:8080'\r\n")
    assert not ports.remove_failed("host forwarding rule for tcp:127.0.0.1:8080 removed\r\n")
    assert ports.remove_failed("host forwarding rule for tcp:127.0.0.1:8080 not found\r\n")


def test_conflict_message_names_container_and_port() -> None:
    text = ports.conflict_message(rule(8080, name="web"), "could not set up host forwarding rule")
    assert "127.0.0.1:8080/tcp" in text and "container web" in text and "port 80/tcp" in text


# --- event stream -----------------------------------------------------------------------------

def test_split_events_keeps_partial_line() -> None:
    a = json.dumps({"Type": "container", "Action": "start", "id": "x"}).encode()
    events, rest = ports.split_events(a + b"\n" + b"\n" + b'{"Type": "cont')
    assert [e["Action"] for e in events] == ["start"]
    assert rest == b'{"Type": "cont'


@pytest.mark.parametrize("event,expected", [
    ({"Type": "container", "Action": "start"}, True),
    ({"Type": "container", "Action": "die"}, True),
    ({"Type": "container", "Action": "destroy"}, True),
    ({"Type": "container", "Action": "exec_start: sh"}, False),
    ({"Type": "network", "Action": "connect"}, True),
    ({"Type": "network", "Action": "create"}, False),
    ({"Type": "image", "Action": "pull"}, False),
])
def test_relevant_events(event: dict, expected: bool) -> None:
    assert ports.relevant(event) is expected


def test_events_path_is_url_encoded() -> None:
    assert ports.events_path() == "/events?filters=%7B%22type%22%3A%5B%22container%22%2C%22network%22%5D%7D"


def test_udp_precheck_sees_a_bound_socket() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert ports.host_port_busy("udp", "127.0.0.1", port)
    assert not ports.host_port_busy("udp", "127.0.0.1", port)


# --- the publisher against fakes --------------------------------------------------------------

class FakeQemu:
    def __init__(self, taken: set[int] = frozenset()) -> None:
        self.rules: dict[tuple, str] = {}
        self.taken = set(taken)
        self.log: list[str] = []

    async def hmp(self, line: str) -> str:
        self.log.append(line)
        if line == "info usernet":
            rows = [f"  {p.upper()}[HOST_FORWARD]  3  {h} {hp}  {g} {gp}  0 0"
                    for (p, h, hp), (g, gp) in self.rules.items()]
            return "Hub -1 (net0):\n" + "\n".join(rows) + "\n"
        verb, _, arg = line.split(" ", 2)
        proto, host, rest = arg.split(":", 2)
        if verb == "hostfwd_add":
            hp, _, target = rest.partition("-")
            if int(hp) in self.taken:
                return f"could not set up host forwarding rule '{arg}'\r\n"
            g, gp = target.split(":")
            self.rules[(proto, host, int(hp))] = (g, int(gp))
            return ""
        found = self.rules.pop((proto, host, int(rest)), None)
        return f"host forwarding rule for {arg} {'removed' if found else 'not found'}\r\n"


class FakeEngine(port_publisher.EngineClient):
    def __init__(self, containers: dict[str, dict]) -> None:
        self.containers = containers

    def running(self) -> list[str]:
        return list(self.containers)

    def inspect(self, cid: str) -> dict | None:
        return self.containers.get(cid)


def make_publisher(qemu: FakeQemu, containers: dict[str, dict], seen: list) -> port_publisher.PortPublisher:
    pub = port_publisher.PortPublisher(qemu.hmp, lambda: None, False, reserved={("tcp", "127.0.0.1", 2222)},
                              on_change=seen.append)
    pub.engine = FakeEngine(containers)
    return pub


def test_publisher_adds_reports_conflicts_and_removes_on_stop() -> None:
    qemu = FakeQemu(taken={8081})
    qemu.rules[("tcp", "127.0.0.1", 2222)] = ("10.0.2.15", 22)  # the SSH forward: never touched
    containers = {
        "a": inspect({"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}, name="web", cid="a" * 64),
        "b": inspect({"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8081"}]}, name="busy", cid="b" * 64),
    }
    seen: list = []
    pub = make_publisher(qemu, containers, seen)
    asyncio.run(pub.sync())
    assert ("tcp", "127.0.0.1", 8080) in qemu.rules
    entries = {e["host_port"]: e for e in seen[-1]}
    assert entries[8080]["error"] == ""
    assert "already in use" in entries[8081]["error"] and "busy" in entries[8081]["error"]

    del containers["a"]
    qemu.taken.clear()
    asyncio.run(pub.sync())
    assert set(qemu.rules) == {("tcp", "127.0.0.1", 2222), ("tcp", "127.0.0.1", 8081)}
    assert [(e["host_port"], e["error"]) for e in seen[-1]] == [(8081, "")]


def test_publisher_adopts_what_qemu_already_forwards() -> None:
    qemu = FakeQemu()
    qemu.rules[("tcp", "127.0.0.1", 8080)] = ("10.0.2.15", 8080)  # left by the previous agent
    qemu.rules[("tcp", "127.0.0.1", 7777)] = ("10.0.2.15", 7777)  # its container is gone
    containers = {"a": inspect({"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}, cid="a" * 64)}
    pub = make_publisher(qemu, containers, [])
    asyncio.run(pub.sync())
    assert set(qemu.rules) == {("tcp", "127.0.0.1", 8080)}
    assert not any(line.startswith("hostfwd_add") for line in qemu.log)


def test_a_privileged_port_says_how_to_get_it_not_that_it_is_taken(tmp_path) -> None:  # noqa: ANN001
    from hypervisor.ports import add_failure_message, first_unprivileged_port

    low = rule(80)
    message = add_failure_message(low, "Could not set up host forwarding rule", euid=1000, first_unprivileged=1024)
    assert "needs privileges" in message and "CAP_NET_BIND_SERVICE" in message and "in use" not in message
    assert "ip_unprivileged_port_start=80" in message and "-p 8080:80" in message and "\n" not in message
    # root, or a port above the limit: a real conflict
    assert "already in use" in add_failure_message(low, "x", euid=0, first_unprivileged=1024)
    assert "already in use" in add_failure_message(rule(8080), "x", euid=1000, first_unprivileged=1024)
    sysctl = tmp_path / "start"
    sysctl.write_text("80\n")
    assert first_unprivileged_port(sysctl) == 80
    assert first_unprivileged_port(tmp_path / "missing") == 1024
