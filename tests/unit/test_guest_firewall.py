"""The guest boot script's firewall: one rule list feeds both the single iptables-restore and the
rule-by-rule fallback, run by a real busybox sh on the host with iptables faked on PATH."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

BOOT_SCRIPT = Path(__file__).resolve().parents[2] / "vmimage" / "guest" / "boot"

NAT_RULES = [
    "-I PREROUTING -d 10.0.2.16/32 -p tcp -j DNAT --to-destination 127.0.0.1",
    "-I PREROUTING -d 10.0.2.16/32 -p udp -j DNAT --to-destination 127.0.0.1",
    "-A POSTROUTING -o eth0 -j MASQUERADE",
]
SSHD_RULE = "-A INPUT -p tcp --dport 22 ! -s 10.0.2.2 -j DROP"

# The fakes log their arguments; FAKE_REFUSE makes any call whose arguments contain it fail, and
# FAKE_PRESENT makes `-C` (is the rule there?) succeed for a rule containing it.
FAKE_IPTABLES = """#!{busybox} sh
echo "$*" >> "{log}"
case "$*" in *"$FAKE_REFUSE"*) [ -n "$FAKE_REFUSE" ] && exit 1;; esac
case "$1 $2 $3" in *-C*) case "$*" in *"$FAKE_PRESENT"*) [ -n "$FAKE_PRESENT" ] && exit 0;; esac; exit 1;; esac
exit 0
"""
FAKE_RESTORE = """#!{busybox} sh
cat > "{input}"
[ "$FAKE_RESTORE_OK" = yes ]
"""


def firewall_fragment(console: Path, extra_rules: tuple[str, ...] = ()) -> str:
    """The boot script's `fail` and its firewall block, the console redirected to a file;
    `extra_rules` are appended to the rule list."""
    lines = BOOT_SCRIPT.read_text().splitlines()
    fail = next(line for line in lines if line.startswith("fail() "))
    start = next(i for i, line in enumerate(lines) if line.startswith("FIREWALL="))
    end = next(i for i in range(start, len(lines)) if lines[i] == "fi")
    block = lines[start:end + 1]
    if extra_rules:
        last = next(i for i, line in enumerate(block) if line.endswith("'"))
        block[last:last + 1] = [block[last][:-1], *extra_rules[:-1], extra_rules[-1] + "'"]
    return "\n".join([fail, *block, "echo booted-on"]).replace("/dev/console", str(console)) + "\n"


@dataclass
class Run:
    returncode: int
    console: str
    restore_input: str
    iptables_calls: list[str]


@pytest.fixture
def run_firewall(tmp_path: Path, host_busybox: Path):  # noqa: ANN201 - a runner
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log, restore_input, console = tmp_path / "iptables.log", tmp_path / "restore.in", tmp_path / "console"
    (bin_dir / "iptables").write_text(FAKE_IPTABLES.format(busybox=host_busybox, log=log))
    (bin_dir / "iptables-restore").write_text(FAKE_RESTORE.format(busybox=host_busybox, input=restore_input))
    for fake in bin_dir.iterdir():
        fake.chmod(0o755)
    script = tmp_path / "firewall.sh"

    def run(restore_ok: bool, refuse: str = "", present: str = "", extra_rules: tuple[str, ...] = ()) -> Run:
        script.write_text(firewall_fragment(console, extra_rules))
        for path in (log, restore_input, console):
            path.unlink(missing_ok=True)
        env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_RESTORE_OK": "yes" if restore_ok else "no",
               "FAKE_REFUSE": refuse, "FAKE_PRESENT": present}
        result = subprocess.run([str(host_busybox), "sh", str(script)], env=env, capture_output=True, text=True,
                                timeout=30)
        assert result.stderr == "", result.stderr

        def text(path: Path) -> str:
            return path.read_text() if path.exists() else ""

        booted = result.stdout == "booted-on\n"
        assert booted == (result.returncode == 0), result
        return Run(result.returncode, text(console), text(restore_input), text(log).splitlines())

    return run


def test_all_rules_go_in_one_restore_when_it_is_accepted(run_firewall) -> None:  # noqa: ANN001
    run = run_firewall(restore_ok=True)
    assert run.returncode == 0 and run.console == ""
    assert run.restore_input.splitlines() == ["*nat", *NAT_RULES, "COMMIT", "*filter", SSHD_RULE, "COMMIT"]
    assert run.iptables_calls == []


def test_the_restore_has_a_block_for_each_run_of_a_table_in_the_list(run_firewall) -> None:  # noqa: ANN001
    # A rule in a table the list did not have yet, and nat coming back after it: nothing is left out.
    run = run_firewall(restore_ok=True, extra_rules=("may mangle PREROUTING -A -j ACCEPT",
                                                     "may nat OUTPUT -A -j ACCEPT"))
    assert run.returncode == 0
    assert run.restore_input.splitlines() == ["*nat", *NAT_RULES, "COMMIT", "*filter", SSHD_RULE, "COMMIT",
                                              "*mangle", "-A PREROUTING -j ACCEPT", "COMMIT",
                                              "*nat", "-A OUTPUT -j ACCEPT", "COMMIT"]


def test_a_refused_restore_adds_the_same_rules_one_by_one(run_firewall) -> None:  # noqa: ANN001
    run = run_firewall(restore_ok=False)
    assert run.returncode == 0
    assert run.console == "pinnace: iptables-restore refused the rules; adding them one by one\n"
    added = [call for call in run.iptables_calls if "-C" not in call.split()]
    assert added == [*(f"-t nat {rule}" for rule in NAT_RULES), f"-t filter {SSHD_RULE}"]


def test_the_fallback_leaves_a_rule_that_is_already_there(run_firewall) -> None:  # noqa: ANN001
    run = run_firewall(restore_ok=False, present="MASQUERADE")
    assert run.returncode == 0
    assert "-t nat -C POSTROUTING -o eth0 -j MASQUERADE" in run.iptables_calls
    assert "-t nat -A POSTROUTING -o eth0 -j MASQUERADE" not in run.iptables_calls
    assert f"-t filter {SSHD_RULE}" in run.iptables_calls


def test_a_refused_nat_rule_is_said_and_the_boot_goes_on(run_firewall) -> None:  # noqa: ANN001
    run = run_firewall(restore_ok=False, refuse="MASQUERADE")
    assert run.returncode == 0
    assert "pinnace: cannot add the firewall rule -t nat -A POSTROUTING -o eth0 -j MASQUERADE\n" in run.console
    assert f"-t filter {SSHD_RULE}" in run.iptables_calls


def test_a_refused_sshd_rule_stops_the_boot(run_firewall) -> None:  # noqa: ANN001
    run = run_firewall(restore_ok=False, refuse="--dport 22")
    assert run.returncode == 1
    assert run.console.endswith(f"PINNACE-FAILED cannot add the firewall rule -t filter {SSHD_RULE}\n")
