"""Every `pinnace` command pays for what the CLI module imports before it parses its arguments:
the agent, SSH (paramiko, cryptography) and the guest checks load only in the commands that use
them (`pinnace start` spent 0.5 s in imports before it spawned the agent; now ~0.25 s here). The
agent, in turn, starts QEMU before it loads SSH (~0.1 s of paramiko)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("paramiko", "cryptography", "hypervisor.ssh", "hypervisor.agent.agent", "hypervisor.engine_validate",
         "hypervisor.diagnose.runner", "qemu.qmp")


def test_the_cli_module_does_not_load_the_agent_or_ssh() -> None:
    probe = f"import sys, app.cli; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []


def test_the_agent_starts_qemu_before_it_loads_ssh() -> None:
    probe = ("import sys, hypervisor.agent.entry; "
             "print(' '.join(m for m in ('paramiko', 'hypervisor.ssh', 'hypervisor.forward') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []


def test_the_agent_package_still_offers_its_entry_points() -> None:
    from hypervisor import agent
    from hypervisor.agent.agent import Agent
    from hypervisor.agent.entry import main

    assert agent.Agent is Agent and agent.main is main
