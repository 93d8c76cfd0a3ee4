"""Entry script of the frozen (PyInstaller) executables `pinnace` and `pinnace-tray`, on macOS and
Windows alike (installers/windows/pinnace.spec uses this file too).

A frozen program has no interpreter behind it, yet the app starts Python modules with
`sys.executable -m MODULE`: the host agent (hypervisor.launcher.agent_argv) and, if no tray
executable sits beside it, the tray (app.autostart.tray_command). Those arrive here as
`-m MODULE ARGS...` and go to that module's main; any other command line goes to the program
the executable's name says.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

Main = Callable[[list[str]], int | None]


def _agent(argv: list[str]) -> int | None:
    from hypervisor.agent import main

    return main(argv)


def _tray(argv: list[str]) -> int | None:
    from app.tray_main import main

    return main(argv)


def _cli(argv: list[str]) -> int | None:
    from app.cli import main

    return main(argv)


MODULES: dict[str, Main] = {"hypervisor.agent": _agent, "app.tray_main": _tray, "app.cli": _cli}
TRAY_NAME = "pinnace-tray"


def pick(executable: str, argv: Sequence[str]) -> tuple[Main, list[str]]:
    """The main to run and its arguments (argv without the program name)."""
    args = list(argv)
    if args[:1] == ["-m"]:
        if len(args) < 2 or args[1] not in MODULES:
            module = args[1] if len(args) > 1 else ""
            raise SystemExit(f"{Path(executable).name}: -m {module}: not a module of this build")
        return MODULES[args[1]], args[2:]
    is_tray = Path(executable).stem.lower() == TRAY_NAME
    return (_tray if is_tray else _cli), args


if __name__ == "__main__":
    target, target_args = pick(sys.executable, sys.argv[1:])
    sys.exit(target(target_args))
