"""Published ports: engine bindings -> QEMU host forwards, what QEMU forwards now, the diff."""

from __future__ import annotations

import asyncio
import errno
import json
import socket

import pytest

from hypervisor import port_publisher, ports
from hypervisor.ipv6_relay import RelaySpec
from hypervisor.ports import GUEST_ADDR, GUEST_LOOPBACK_ADDR, GUEST_RELAY_ADDR, Ipv6Rule, PortRule

pytestmark = pytest.mark.timeout(30)


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


# --- IPv6 bindings ----------------------------------------------------------------------------


def six(rules: list[Ipv6Rule]) -> set[tuple]:
    return {(r.proto, r.host_ip, r.host_port, r.guest_ip, r.twin_host_ip) for r in rules}


@pytest.mark.parametrize("engine_ip", ["::1", "::"])
def test_ipv6_only_binding_takes_no_ipv4_port(engine_ip: str) -> None:
    data = inspect({"80/tcp": [{"HostIp": engine_ip, "HostPort": "18081"}]})
    assert ports.rules_from_inspect(data, False) == []  # 127.0.0.1:18081 stays free for others
    (rule,) = ports.ipv6_rules_from_inspect(data, False)
    assert (rule.host_ip, rule.guest_ip, rule.twin_key, rule.guest_key) == ("::1", "::1", None, ("tcp", 18081))
    assert rule.address == "[::1]:18081/tcp" and rule.container_name == "web" and rule.container_port == 80


def test_ipv6_any_listens_on_all_ipv6_only_when_exposing() -> None:
    data = inspect({"80/tcp": [{"HostIp": "::", "HostPort": "18082"}],
                    "81/tcp": [{"HostIp": "::1", "HostPort": "18083"}]})
    assert six(ports.ipv6_rules_from_inspect(data, True)) == {("tcp", "::", 18082, "::1", ""),
                                                              ("tcp", "::1", 18083, "::1", "")}


def test_default_publish_gets_an_ipv6_twin_relayed_to_its_ipv4_forward() -> None:
    data = inspect({"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}, {"HostIp": "::", "HostPort": "8080"}]})
    assert triples(ports.rules_from_inspect(data, False)) == {("tcp", "127.0.0.1", 8080, GUEST_ADDR, 8080, 80)}
    (rule,) = ports.ipv6_rules_from_inspect(data, False)
    assert (rule.host_ip, rule.twin_key, rule.guest_ip) == ("::1", ("tcp", "127.0.0.1", 8080), GUEST_ADDR)
    (exposed,) = ports.ipv6_rules_from_inspect(data, True)
    assert (exposed.host_ip, exposed.twin_key) == ("::", ("tcp", "0.0.0.0", 8080))


def test_loopback_twins_and_empty_host_ip() -> None:
    data = inspect({"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8081"}, {"HostIp": "::1", "HostPort": "8081"}],
                    "53/udp": [{"HostIp": "", "HostPort": "5353"}]})
    assert triples(ports.rules_from_inspect(data, True)) == {
        ("tcp", "127.0.0.1", 8081, GUEST_LOOPBACK_ADDR, 8081, 80), ("udp", "0.0.0.0", 5353, GUEST_ADDR, 5353, 53)}
    assert six(ports.ipv6_rules_from_inspect(data, False)) == {
        ("tcp", "::1", 8081, GUEST_LOOPBACK_ADDR, "127.0.0.1"), ("udp", "::1", 5353, GUEST_ADDR, "127.0.0.1")}


def test_a_twin_must_be_in_the_same_port_spec_and_not_a_specific_address() -> None:
    data = inspect({"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}],
                    "81/tcp": [{"HostIp": "::", "HostPort": "8080"}],
                    "82/tcp": [{"HostIp": "192.168.1.7", "HostPort": "8082"}, {"HostIp": "::1", "HostPort": "8082"}]})
    assert {(r.container_port, r.twin_key) for r in ports.ipv6_rules_from_inspect(data, False)} == {
        (81, None), (82, None)}


def test_a_specific_ipv6_address_is_loopback_unless_exposing() -> None:
    data = inspect({"80/tcp": [{"HostIp": "2001:db8::7", "HostPort": "8080"}]})
    assert six(ports.ipv6_rules_from_inspect(data, False)) == {("tcp", "::1", 8080, "2001:db8::7", "")}
    assert six(ports.ipv6_rules_from_inspect(data, True)) == {("tcp", "2001:db8::7", 8080, "2001:db8::7", "")}


def v6(port: int, twin: str = "", name: str = "a", proto: str = "tcp", host: str = "::1") -> Ipv6Rule:
    return Ipv6Rule(proto, host, port, GUEST_ADDR if twin else "::1", port, twin, name * 12, name, 80)


def test_hop_rule_and_its_adoption_from_info_usernet() -> None:
    hop = ports.hop_rule(v6(18081), 40001)
    assert hop.add_command() == f"hostfwd_add net0 tcp:127.0.0.1:40001-{GUEST_RELAY_ADDR}:18081"
    assert "IPv6 guest relay" in hop.describe()
    active = ports.parse_usernet(f"  TCP[HOST_FORWARD]  25  127.0.0.1 40001  {GUEST_RELAY_ADDR} 18081  0 0\n"
                                 f"  TCP[HOST_FORWARD]  26  127.0.0.1 18081  {GUEST_ADDR} 18081  0 0\n")
    assert ports.adopted_hop_port(v6(18081), active) == 40001
    assert ports.adopted_hop_port(v6(18081, proto="udp"), active) is None
    assert ports.adopted_hop_port(v6(18082), active) is None


def test_twin_relay_only_onto_its_own_working_ipv4_forward() -> None:
    mine, other = rule(8080, name="a"), rule(8080, name="b")
    twin = v6(8080, twin="127.0.0.1", name="a")
    assert ports.twin_relay_error(twin, {mine.key: mine}, {}) is None
    assert ports.twin_relay_error(twin, {mine.key: mine}, {mine.key: "taken"}) == "taken"
    assert "also published by b" in ports.twin_relay_error(twin, {other.key: other}, {})
    assert "no IPv4 forward" in ports.twin_relay_error(twin, {}, {})
    assert ports.twin_relay_error(v6(8080), {}, {}) is None  # IPv6-only: not a twin


def test_ipv6_messages_bracket_the_address() -> None:
    assert ports.format_address("::1", 80, "udp") == "[::1]:80/udp"
    assert ports.format_address("127.0.0.1", 80) == "127.0.0.1:80"
    text = ports.conflict_message(v6(8080, name="web"), "Address already in use")
    assert "host port [::1]:8080/tcp for container web" in text and "already in use" in text
    low = ports.add_failure_message(v6(80), "Permission denied", euid=1000, first_unprivileged=1024)
    assert "[::1]:80/tcp" in low and "needs privileges" in low
    gone = ports.relay_failure_message(v6(8080), OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"),
                                       1000, 1024)
    assert "IPv6 disabled" in gone and "\n" not in gone
    assert ports.unrelayable(OSError(errno.EADDRNOTAVAIL, "x"))
    assert not ports.unrelayable(OSError(errno.EADDRINUSE, "x"))


def test_status_entry_lists_addresses_and_the_hop() -> None:
    entry = ports.status_entry(rule(8080), "", ["[::1]:8080/tcp"])
    assert entry["addresses"] == ["127.0.0.1:8080/tcp", "[::1]:8080/tcp"] and entry["via"] == ""
    assert entry["host_ip"] == "127.0.0.1" and len(entry["container_id"]) == 12
    only6 = ports.status_entry(v6(18081), "", via="127.0.0.1:40001/tcp")
    assert only6["host_ip"] == "::1" and only6["addresses"] == ["[::1]:18081/tcp"] and "twin_host_ip" not in only6


# --- the guest relay's shell command and its answers -------------------------------------------

def test_guest_relay_command_runs_docker_proxy_for_the_session() -> None:
    cmd = ports.guest_relay_command("udp", 18090, "::1")
    assert f"ip addr replace {GUEST_RELAY_ADDR}/32 dev eth0" in cmd
    assert (f"-proto udp -host-ip {GUEST_RELAY_ADDR} -host-port 18090 -container-ip ::1 "
            "-container-port 18090 3>&1 </dev/null 2>/dev/null &") in cmd
    assert cmd.endswith("cat >/dev/null; kill $p 2>/dev/null")  # the session's end ends the relay
    assert all(path in cmd for path in ports.DOCKER_PROXY_PATHS)


PS_OUTPUT = f"""\
PID   COMMAND
  342 /usr/sbin/docker-proxy -proto tcp -host-ip 0.0.0.0 -host-port 18083 -container-ip 172.17.0.2 -container-port 80
  493 /usr/sbin/docker-proxy -proto tcp -host-ip {GUEST_RELAY_ADDR} -host-port 18082 -container-ip ::1 -container-port 2
  504 /usr/sbin/docker-proxy -proto tcp -host-ip {GUEST_RELAY_ADDR} -host-port 18081 -container-ip ::1 -container-port 1
  505 /usr/sbin/docker-proxy -proto udp -host-ip {GUEST_RELAY_ADDR} -host-port 18081 -container-ip ::1 -container-port 1
  506 /usr/sbin/docker-proxy -proto tcp -host-ip 10.0.2.170 -host-port 18081 -container-ip ::1 -container-port 18081
  510 sh -c kill $(ps -o pid,args | awk '/docker-proxy/ && / -host-ip 10.0.2.17 /') docker-proxy
"""


@pytest.mark.parametrize("which,expected", [(("tcp", 18081), ["504"]), ((), ["493", "504", "505"])])
def test_relay_pid_matching_finds_only_guest_relays(tmp_path, which: tuple, expected: list[str]) -> None:  # noqa: ANN001
    import shutil
    import subprocess

    if shutil.which("awk") is None:
        pytest.skip("no awk on this host")
    sample = tmp_path / "ps.txt"
    sample.write_text(PS_OUTPUT)
    script = ports._relay_pids(*which).replace("ps -o pid,args", f"cat {sample}")
    assert subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout.split() == expected


def test_parse_relay_start() -> None:
    assert ports.parse_relay_start("") == ports.RelayStart()
    assert ports.parse_relay_start("pid 12\n") == ports.RelayStart(12)
    assert ports.parse_relay_start("pid 12\n0\n") == ports.RelayStart(12, True)
    failed = ports.parse_relay_start("pid 12\n1\nlisten tcp4 10.0.2.17:22: bind: address already in use")
    assert failed == ports.RelayStart(12, False, "listen tcp4 10.0.2.17:22: bind: address already in use")
    assert ports.parse_relay_start("1\nno docker-proxy in the guest\n").error == "no docker-proxy in the guest"


# --- the publisher with IPv6 bindings, against fakes -------------------------------------------

class FakeRelays:
    """HostRelays' interface: records what runs; `fail` maps a key to the OSError its bind raises."""

    def __init__(self) -> None:
        self.running: dict = {}
        self.fail: dict = {}

    async def apply(self, wanted: dict) -> dict:
        self.running = {k: s for k, s in wanted.items() if k not in self.fail}
        return {k: self.fail[k] for k in wanted if k in self.fail}

    async def close(self) -> None:
        self.running = {}


class FakeGuest:
    def __init__(self) -> None:
        self.running: dict = {}
        self.fail: dict = {}
        self.calls: list[dict] = []

    def apply(self, wanted: dict) -> dict:
        self.calls.append(dict(wanted))
        self.running = {k: t for k, t in wanted.items() if k not in self.fail}
        return {k: self.fail[k] for k in wanted if k in self.fail}

    def close(self) -> None:
        self.running = {}


def ipv6_publisher(qemu: FakeQemu, containers: dict, seen: list) -> tuple:
    pub = make_publisher(qemu, containers, seen)
    pub.relays, pub.guest = FakeRelays(), FakeGuest()
    return pub, pub.relays, pub.guest


def test_ipv6_only_port_goes_through_a_hop_and_the_guest_relay() -> None:
    qemu, seen = FakeQemu(), []
    containers = {"a": inspect({"80/tcp": [{"HostIp": "::1", "HostPort": "18081"}]}, name="web", cid="a" * 64)}
    pub, relays, guest = ipv6_publisher(qemu, containers, seen)
    asyncio.run(pub.sync())
    (hop_key,) = [k for k in qemu.rules if k != ("tcp", "127.0.0.1", 2222)]
    assert hop_key[:2] == ("tcp", "127.0.0.1") and hop_key[2] != 18081
    assert qemu.rules[hop_key] == (GUEST_RELAY_ADDR, 18081)
    assert guest.running == {("tcp", 18081): "::1"}
    assert relays.running == {("tcp", "::1", 18081): RelaySpec("tcp", "::1", 18081, ("127.0.0.1", hop_key[2]))}
    (entry,) = seen[-1]
    assert entry["addresses"] == ["[::1]:18081/tcp"] and entry["error"] == ""
    assert entry["via"] == f"127.0.0.1:{hop_key[2]}/tcp" and entry["container_name"] == "web"

    qemu.log.clear()
    asyncio.run(pub.sync())  # steady: the same hop, nothing added
    assert not [line for line in qemu.log if line.startswith("hostfwd_add")]

    del containers["a"]
    asyncio.run(pub.sync())
    assert qemu.rules == {} and guest.running == {} and relays.running == {}
    assert seen[-1] == []


def test_a_new_agent_adopts_the_hop_qemu_still_has() -> None:
    qemu = FakeQemu()
    qemu.rules[("udp", "127.0.0.1", 40001)] = (GUEST_RELAY_ADDR, 18090)
    containers = {"a": inspect({"9000/udp": [{"HostIp": "::", "HostPort": "18090"}]}, cid="a" * 64)}
    pub, relays, _ = ipv6_publisher(qemu, containers, [])
    asyncio.run(pub.sync())
    assert not [line for line in qemu.log if line.startswith("hostfwd_")]
    assert relays.running[("udp", "::1", 18090)].upstream == ("127.0.0.1", 40001)


def test_default_publish_relays_ipv6_onto_its_ipv4_forward_in_one_status_entry() -> None:
    qemu, seen = FakeQemu(), []
    containers = {"a": inspect({"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"},
                                           {"HostIp": "::", "HostPort": "8080"}]}, cid="a" * 64)}
    pub, relays, guest = ipv6_publisher(qemu, containers, seen)
    asyncio.run(pub.sync())
    assert relays.running == {("tcp", "::1", 8080): RelaySpec("tcp", "::1", 8080, ("127.0.0.1", 8080))}
    assert guest.running == {}
    (entry,) = seen[-1]
    assert entry["host_ip"] == "127.0.0.1" and entry["addresses"] == ["127.0.0.1:8080/tcp", "[::1]:8080/tcp"]


def test_no_relay_onto_an_ipv4_forward_that_failed_or_is_someone_elses() -> None:
    qemu, seen = FakeQemu(taken={8080}), []
    twin = [{"HostIp": "0.0.0.0", "HostPort": "8080"}, {"HostIp": "::", "HostPort": "8080"}]
    containers = {"a": inspect({"80/tcp": twin}, name="busy", cid="a" * 64)}
    pub, relays, _ = ipv6_publisher(qemu, containers, seen)
    asyncio.run(pub.sync())
    assert relays.running == {}
    assert "already in use" in seen[-1][0]["error"] and "127.0.0.1:8080/tcp" in seen[-1][0]["error"]
    assert pub.errors  # retried

    qemu.taken.clear()
    loopback = {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8081"}]}
    containers.clear()
    containers["x"] = inspect(loopback, name="first", cid="x" * 64)
    containers["y"] = inspect({"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8081"},
                                          {"HostIp": "::1", "HostPort": "8081"}]}, name="second", cid="y" * 64)
    asyncio.run(pub.sync())
    assert relays.running == {}  # [::1]:8081 -> 127.0.0.1:8081 would reach container "first"
    second = next(e for e in seen[-1] if e["container_name"] == "second")
    assert "also published by first" in second["error"]


def test_relay_bind_errors_are_status_errors_except_a_missing_ipv6_for_twins() -> None:
    qemu, seen = FakeQemu(), []
    containers = {
        "a": inspect({"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}, {"HostIp": "::", "HostPort": "8080"}]},
                     name="web", cid="a" * 64),
        "b": inspect({"80/tcp": [{"HostIp": "::1", "HostPort": "18081"}]}, name="only6", cid="b" * 64),
    }
    pub, relays, _ = ipv6_publisher(qemu, containers, seen)
    relays.fail[("tcp", "::1", 8080)] = OSError(errno.EADDRINUSE, "Address already in use")
    asyncio.run(pub.sync())
    web = next(e for e in seen[-1] if e["container_name"] == "web")
    assert "host port [::1]:8080/tcp for container web" in web["error"] and "already in use" in web["error"]
    assert pub.errors

    gone = OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
    relays.fail = {("tcp", "::1", 8080): gone, ("tcp", "::1", 18081): gone}
    asyncio.run(pub.sync())
    web = next(e for e in seen[-1] if e["container_name"] == "web")
    only6 = next(e for e in seen[-1] if e["container_name"] == "only6")
    assert web["error"] == "" and web["addresses"] == ["127.0.0.1:8080/tcp"]  # IPv4 serves localhost
    assert "IPv6 disabled" in only6["error"]


def test_a_guest_relay_failure_is_the_ports_error() -> None:
    qemu, seen = FakeQemu(), []
    containers = {"a": inspect({"80/tcp": [{"HostIp": "::1", "HostPort": "18081"}]}, name="web", cid="a" * 64)}
    pub, relays, guest = ipv6_publisher(qemu, containers, seen)
    guest.fail[("tcp", 18081)] = "the guest relay for 18081/tcp failed: bind: address already in use"
    asyncio.run(pub.sync())
    assert relays.running == {}
    assert "[::1]:18081/tcp" in seen[-1][0]["error"] and "address already in use" in seen[-1][0]["error"]


def test_without_a_guest_link_an_ipv6_only_port_is_an_error_not_an_ipv4_one() -> None:
    qemu, seen = FakeQemu(), []
    containers = {"a": inspect({"80/tcp": [{"HostIp": "::1", "HostPort": "18081"}]}, cid="a" * 64)}
    pub = make_publisher(qemu, containers, seen)
    pub.relays = FakeRelays()
    asyncio.run(pub.sync())
    assert ("tcp", "127.0.0.1", 18081) not in qemu.rules
    assert "no guest link" in seen[-1][0]["error"]
