"""`pinnace config set shares`: a guest system path or a missing folder is refused with one line and
the settings file untouched; a hand-edited file holding one is refused at start and fixable."""

from __future__ import annotations

from pathlib import Path

import pytest

from app import cli
from hypervisor import launcher
from hypervisor.paths import Paths


class DeadAgent:
    def is_alive(self) -> bool:
        return False


@pytest.fixture
def paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Paths:
    monkeypatch.setenv("PINNACE_HOME", str(tmp_path / "pinnace"))
    monkeypatch.setattr(launcher, "client", lambda _p, timeout=5.0: DeadAgent())

    def no_agent(*_a: object, **_k: object) -> None:
        raise AssertionError("no agent may be spawned")

    monkeypatch.setattr(launcher, "ensure_agent", no_agent)
    p = Paths.for_instance("test")
    p.ensure_dirs()
    return p


def run(*argv: str) -> int:
    return cli.main(["--name", "test", *argv])


def one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("/usr/local", "'/usr/local' is under the VM's own /usr (its programs and libraries)"),
        ("/etc/docker", "'/etc/docker' is under the VM's own /etc (its configuration)"),
        ("/var/lib/docker", "'/var/lib/docker' is under the VM's own /var/lib"),
        ("/tmp", "'/tmp' is the VM's own /tmp"),
        ("/", "'/' would hide the VM's own /bin"),
        ("/var", "'/var' would hide the VM's own /var/lib"),
    ],
)
def test_config_set_refuses_a_guest_system_path(paths: Paths, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                value: str, reason: str) -> None:
    assert run("config", "set", "shares", str(tmp_path)) == 0
    before = paths.settings_file.read_bytes()
    capsys.readouterr()
    assert run("config", "set", "shares", f"{tmp_path},{value}") == 2
    out, err = capsys.readouterr()
    line = one_line(err)
    assert line.startswith(f"pinnace: shares[1].path: {reason}") and line.endswith("; share another folder")
    assert out == ""
    assert paths.settings_file.read_bytes() == before


def test_config_set_refusal_creates_no_settings_file(paths: Paths, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("config", "set", "shares", "/usr/local") == 2
    assert "'/usr/local' is under the VM's own /usr" in one_line(capsys.readouterr().err)
    assert not paths.settings_file.exists()


def test_config_set_refuses_a_folder_that_does_not_exist(paths: Paths, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert run("config", "set", "shares", str(tmp_path)) == 0
    before = paths.settings_file.read_bytes()
    missing = tmp_path / "not-there"
    assert run("config", "set", "shares", f"{missing}:ro") == 2
    assert one_line(capsys.readouterr().err) == (
        f"pinnace: shares[0].path: '{missing}' does not exist on this host; create it first")
    assert paths.settings_file.read_bytes() == before


def test_config_set_accepts_usual_folders(paths: Paths, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    assert run("config", "set", "shares", f"{tmp_path},{src}:ro") == 0
    assert capsys.readouterr().out.splitlines()[0] == f"shares = {tmp_path},{src}:ro"
    assert run("config", "get", "shares") == 0
    assert capsys.readouterr().out.strip() == f"{tmp_path},{src}:ro"


def test_hand_edited_guest_system_share_is_refused_at_start_and_fixable(
        paths: Paths, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = '[[shares]]\npath = "/usr/local"\nread_only = false\n'
    paths.settings_file.parent.mkdir(parents=True, exist_ok=True)
    paths.settings_file.write_text(body)
    assert run("start") == 1  # before any agent or VM
    assert one_line(capsys.readouterr().err) == (
        f"pinnace: {paths.settings_file}: shares[0].path: '/usr/local' is under the VM's own /usr "
        f"(its programs and libraries); share another folder")
    assert run("config", "show") == 2
    assert "'/usr/local' is under the VM's own /usr" in one_line(capsys.readouterr().err)
    assert run("config", "set", "cpus", "1") == 2  # any other key: still refused, still named
    assert "'/usr/local'" in one_line(capsys.readouterr().err)
    assert paths.settings_file.read_text() == body
    # setting the shares is the way out
    assert run("config", "set", "shares", str(tmp_path)) == 0
    assert run("config", "get", "shares") == 0
    assert capsys.readouterr().out.splitlines()[-1] == str(tmp_path)
