"""`pinnace env`: each shell gets a line that sets DOCKER_HOST to exactly the path, whatever it holds
(macOS's "Application Support" has a space; a PINNACE_HOME may hold a quote or a dollar sign)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from app import cli, shell_env
from app.shell_env import assignment
from hypervisor import launcher
from hypervisor.paths import Paths

AWKWARD = "unix:///Users/o'neil/Library/Application Support/$HOME/pinnace `x` \\n/docker.sock"
POSIX_SHELLS = ("sh", "bash", "zsh")


@pytest.mark.parametrize("shell", POSIX_SHELLS)
def test_posix_shells_quote_like_shlex(shell: str) -> None:
    line = assignment("DOCKER_HOST", AWKWARD, shell)
    assert line == f"export DOCKER_HOST={shlex.quote(AWKWARD)}"
    assert shlex.split(line) == ["export", f"DOCKER_HOST={AWKWARD}"]
    assert assignment("DOCKER_HOST", "unix:///run/user/1000/pinnace/docker.sock", shell) == (
        "export DOCKER_HOST=unix:///run/user/1000/pinnace/docker.sock")  # a plain path stays as it was


def run_posix(shell: str, line: str) -> str:
    script = f'{line}\nprintf %s "$DOCKER_HOST"'
    return subprocess.run([shell, "-c", script], capture_output=True, text=True, check=True, timeout=10).stdout


@pytest.mark.parametrize("shell", ["sh", "dash", "bash", "zsh"])
def test_posix_line_evaluates_to_the_value(shell: str) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    assert run_posix(shell, assignment("DOCKER_HOST", AWKWARD, "sh")) == AWKWARD


def test_fish_escapes_backslash_and_quote_only() -> None:
    assert assignment("X", "a b'c$d\\e", "fish") == "set -gx X 'a b\\'c$d\\\\e'"
    if shutil.which("fish"):
        script = assignment("DOCKER_HOST", AWKWARD, "fish") + "; printf %s $DOCKER_HOST"
        assert subprocess.run(["fish", "-c", script], capture_output=True, text=True, timeout=10).stdout == AWKWARD


def test_powershell_escapes_what_a_double_quoted_string_expands() -> None:
    assert assignment("X", "a b'c$d`e\"f", "powershell") == '$Env:X = "a b\'c`$d``e`"f"'
    assert assignment("X", "\u201cq\u201d \u201e", "powershell") == '$Env:X = "`\u201cq`\u201d `\u201e"'
    pipe = "npipe:////./pipe/pinnace-dev"
    assert assignment("DOCKER_HOST", pipe, "powershell") == f'$Env:DOCKER_HOST = "{pipe}"'
    pwsh = shutil.which("pwsh")
    if pwsh:
        script = assignment("DOCKER_HOST", AWKWARD, "powershell") + "; [Console]::Out.Write($Env:DOCKER_HOST)"
        assert subprocess.run([pwsh, "-NoProfile", "-Command", script], capture_output=True, text=True,
                              timeout=60).stdout == AWKWARD


def test_cmd_sets_in_quotes_and_refuses_what_it_cannot_carry() -> None:
    assert assignment("X", r"C:\Users\o'neil\a b & $c", "cmd") == r'set "X=C:\Users\o' + "'" + r'neil\a b & $c"'
    for bad in ("100%", 'a"b', "a\nb"):
        with pytest.raises(ValueError, match="cannot be set in cmd.exe"):
            assignment("X", bad, "cmd")


def test_bad_names_nul_and_unknown_shells_are_value_errors() -> None:
    for name in ("", "1X", "A-B", "A B", "A;rm"):
        with pytest.raises(ValueError, match="not an environment variable name"):
            assignment(name, "v", "sh")
    with pytest.raises(ValueError, match="NUL"):
        assignment("X", "a\0b", "fish")
    with pytest.raises(ValueError, match="unknown shell"):
        assignment("X", "v", "tcsh")
    assert shell_env.env_lines({"A": "1", "B": "x y"}, "sh") == ["export A=1", "export B='x y'"]


# --- the command -----------------------------------------------------------------------------------


@pytest.mark.skipif(os.name != "posix", reason="a unix socket path in DOCKER_HOST")
def test_pinnace_env_output_evaluates_to_docker_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "it's $HOME a"
    monkeypatch.setenv("PINNACE_HOME", str(home))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # a short socket alias, if any, stays here
    expected = launcher.docker_host(Paths.for_instance("dev", {"PINNACE_HOME": str(home)}))
    assert cli.main(["--name", "dev", "env", "--shell", "bash"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and run_posix("sh", out) == expected
    assert cli.main(["--name", "dev", "env", "--shell", "fish"]) == 0
    assert capsys.readouterr().out == assignment("DOCKER_HOST", expected, "fish") + "\n"


@pytest.mark.skipif(os.name != "posix", reason="a unix socket path in DOCKER_HOST")
def test_pinnace_env_for_cmd_fails_in_one_line_when_it_cannot_quote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PINNACE_HOME", str(tmp_path / "100%"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert cli.main(["env", "--shell", "cmd"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "cannot be set in cmd.exe" in captured.err


def test_every_shell_is_a_choice() -> None:
    parser = cli.build_parser()
    assert [parser.parse_args(["env", "--shell", s]).shell for s in shell_env.SHELLS] == list(shell_env.SHELLS)
