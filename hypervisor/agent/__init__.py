"""The host agent: one detached process per instance that owns the VM and serves the control API.

Where things are (each module has one job):

    entry.py           `python -m hypervisor.agent`: lock, logging, run the Agent
    agent.py           Agent: control operations and the lifecycle over the parts below
    lifecycle.py       the states and the legal moves between them
    status_board.py    the one writer of the status: state.json and the watchers
    control_server.py  the control API's server side (JSON lines on the private endpoint)
    qemu_driver.py     the QEMU process: image, accelerator, argv, spawn, adopt, powerdown -> quit -> kill
    guest_image.py     a guest image, verified against its manifest
    image_slots.py     which image boots: known good, previous, candidate (and rollback)
    image_health.py    the health check a candidate image passes before it is known good
    engine_link.py     SSH to the guest, the engine-socket forwarder, readiness, published ports
    file_events.py     host file changes under bind-mounted shares -> inotify events in the guest

The CLI and the tray are clients; either can crash or quit without harming the VM. If the agent
itself dies, QEMU keeps running and the next agent adopts it (pidfile + QMP socket).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Agent", "main"]


def __getattr__(name: str) -> Any:
    """`Agent` and `main` load the whole agent (paramiko, the servers) only when asked for: the CLI
    imports this package for its small modules (image_slots, guest_image), and every command
    would otherwise pay ~0.15 s of imports before it starts."""
    if name == "Agent":
        from hypervisor.agent.agent import Agent
        return Agent
    if name == "main":
        from hypervisor.agent.entry import main
        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
