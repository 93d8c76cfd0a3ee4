"""Environment assignments spelled for each shell `pinnace env` writes for.

Values are paths (macOS's default one holds a space: "~/Library/Application Support/..."), and a
PINNACE_HOME may hold a quote or a dollar sign, so every value is quoted by the shell's own rules
rather than pasted in. Pure: no I/O.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping

SHELLS = ("sh", "bash", "zsh", "fish", "powershell", "cmd")
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
POWERSHELL_SPECIAL = re.compile("[`$\"\u201c\u201d\u201e]")
"""What a PowerShell double-quoted string expands or ends at: `, $, and the straight and curly
double quotes (PowerShell treats “ ” „ as quotes too)."""
CMD_UNSAFE = re.compile("[%\"\r\n]")
"""What cmd.exe expands (%VAR%) or re-parses (a quote ends `set "..."`'s quoting) even in quotes."""


def posix_assignment(name: str, value: str) -> str:
    """sh, bash and zsh: single quotes, a ' written as '"'"' (shlex.quote)."""
    return f"export {name}={shlex.quote(value)}"


def fish_assignment(name: str, value: str) -> str:
    """fish: in single quotes only \\ and \\' are escapes, so exactly those two are escaped."""
    quoted = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"set -gx {name} '{quoted}'"


def powershell_assignment(name: str, value: str) -> str:
    """PowerShell: a double-quoted string (the form `pinnace env` always printed) with every
    character it would expand or end at escaped by a backtick."""
    quoted = POWERSHELL_SPECIAL.sub(lambda m: "`" + m.group(), value)
    return f'$Env:{name} = "{quoted}"'


def cmd_assignment(name: str, value: str) -> str:
    """cmd.exe: `set "NAME=value"` keeps & | < > ^ literal; % and " cannot be escaped there."""
    bad = CMD_UNSAFE.search(value)
    if bad:
        raise ValueError(f"{name} cannot be set in cmd.exe: its value holds {bad.group()!r}")
    return f'set "{name}={value}"'


FORMATTERS: dict[str, Callable[[str, str], str]] = {
    "sh": posix_assignment,
    "bash": posix_assignment,
    "zsh": posix_assignment,
    "fish": fish_assignment,
    "powershell": powershell_assignment,
    "cmd": cmd_assignment,
}


def assignment(name: str, value: str, shell: str) -> str:
    """One line that sets and exports `name` to exactly `value` in `shell`; ValueError if it cannot."""
    if not NAME_RE.match(name):
        raise ValueError(f"not an environment variable name: {name!r}")
    if "\0" in value:
        raise ValueError(f"{name} cannot hold a NUL character")
    try:
        formatter = FORMATTERS[shell]
    except KeyError:
        raise ValueError(f"unknown shell {shell!r}; expected one of {', '.join(SHELLS)}") from None
    return formatter(name, value)


def env_lines(env: Mapping[str, str], shell: str) -> list[str]:
    """The assignments for every variable in `env`, in order."""
    return [assignment(name, value, shell) for name, value in env.items()]
