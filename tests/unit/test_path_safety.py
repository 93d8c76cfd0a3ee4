"""StrictModes for private paths: every component from / must be yours or root's and writable by
nobody else (a root-owned sticky /tmp excepted); planted symlinks at private files are refused.

Most tests walk a fake file system (owners and modes without root); the real-filesystem ones work
as root too, since they use modes, and chown only where root may."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest

from hypervisor.errors import SettingsError
from hypervisor.paths import Paths
from hypervisor.platform import NotPrivateError, PosixPlatform
from hypervisor.platform.path_safety import check_ancestry

ME, OTHER = 1000, 1001
posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX owners, modes and O_NOFOLLOW")


def node(mode: int, uid: int = 0, kind: int = stat.S_IFDIR) -> os.stat_result:
    return os.stat_result((kind | mode, 0, 0, 1, uid, 0, 0, 0, 0, 0))


class FakeFs:
    """lstat/readlink over a dict; records what was looked at."""

    def __init__(self, entries: dict[str, os.stat_result], links: dict[str, str] | None = None) -> None:
        self.entries = {"/": node(0o755), **entries}
        self.links = links or {}
        self.seen: list[str] = []

    def lstat(self, path: str) -> os.stat_result:
        self.seen.append(path)
        if path not in self.entries:
            raise FileNotFoundError(path)
        return self.entries[path]

    def readlink(self, path: str) -> str:
        return self.links[path]

    def link(self, path: str, target: str, uid: int = 0) -> FakeFs:
        self.entries[path] = node(0o777, uid, stat.S_IFLNK)
        self.links[path] = target
        return self

    def check(self, path: str, **kw: object) -> None:
        check_ancestry(path, uid=ME, lstat=self.lstat, readlink=self.readlink, **kw)


HOME = {"/home": node(0o755), "/home/me": node(0o750, ME)}


def refusal(fs: FakeFs, path: str, **kw: object) -> str:
    with pytest.raises(NotPrivateError) as info:
        fs.check(path, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- the walk, over fakes ---------------------------------------------------------------------------


def test_a_home_of_ours_under_root_dirs_passes() -> None:
    fs = FakeFs({**HOME, "/home/me/.local": node(0o700, ME)})
    fs.check("/home/me/.local/share/pinnace")
    assert fs.seen == ["/", "/home", "/home/me", "/home/me/.local", "/home/me/.local/share"]  # the walk ends there


def test_world_writable_parent_is_refused_by_name() -> None:
    fs = FakeFs({**HOME, "/home/me/shared": node(0o777, ME)})
    message = refusal(fs, "/home/me/shared/pinnace/config")
    assert message.startswith("/home/me/shared is writable by other users (mode 0777): ")


def test_group_writable_parent_is_refused() -> None:
    fs = FakeFs({"/srv": node(0o755), "/srv/team": node(0o775, ME)})
    assert refusal(fs, "/srv/team/pinnace").startswith("/srv/team is writable by its group (mode 0775): ")


def test_root_sticky_tmp_is_accepted_but_not_a_sticky_dir_of_a_user() -> None:
    fs = FakeFs({"/tmp": node(0o1777), "/tmp/pinnace-1000": node(0o700, ME)})
    fs.check("/tmp/pinnace-1000/0123456789ab")
    fs.entries["/tmp"] = node(0o1777, ME)
    assert refusal(fs, "/tmp/pinnace-1000").startswith("/tmp is writable by other users (mode 1777)")


def test_a_component_of_another_user_is_refused() -> None:
    fs = FakeFs({"/home": node(0o755), "/home/bob": node(0o755, OTHER)})
    message = refusal(fs, "/home/bob/pinnace")
    assert message.startswith("/home/bob is owned by uid 1001, not by you (uid 1000) or root: ")


def test_root_owned_symlinks_are_followed_and_their_targets_checked() -> None:
    # Debian's /var/run -> /run, macOS's /tmp -> private/tmp and /var -> private/var (relative)
    fs = FakeFs({"/var": node(0o755), "/run": node(0o755), "/run/user": node(0o755),
                 "/run/user/1000": node(0o700, ME), "/private": node(0o755), "/private/tmp": node(0o1777)})
    fs.link("/var/run", "/run").link("/tmp", "private/tmp")
    fs.check("/var/run/user/1000/pinnace")
    fs.check("/tmp/pinnace-1000")
    assert "/private/tmp" in fs.seen
    fs.entries["/private/tmp"] = node(0o777)  # what the link leads to is judged too
    assert refusal(fs, "/tmp/pinnace-1000").startswith("/private/tmp is writable by other users")


def test_a_symlink_of_another_user_is_refused_one_of_yours_followed() -> None:
    fs = FakeFs({**HOME, "/data": node(0o755), "/data/me": node(0o700, ME)})
    fs.link("/home/me/.local", "/data/me", uid=ME)  # a home dir moved to a bigger disk
    fs.check("/home/me/.local/share")
    fs.link("/home/me/.local", "/data/me", uid=OTHER)
    message = refusal(fs, "/home/me/.local/share")
    assert message.startswith("/home/me/.local is a symlink owned by uid 1001, not by you (uid 1000) or root")


def test_a_symlink_loop_is_refused() -> None:
    fs = FakeFs(HOME).link("/home/me/a", "b", uid=ME).link("/home/me/b", "a", uid=ME)
    assert "too many levels of symbolic links" in refusal(fs, "/home/me/a/x")


def test_check_self_false_leaves_the_directory_itself_to_the_caller() -> None:
    fs = FakeFs({**HOME, "/home/me/loose": node(0o777, ME)})
    fs.check("/home/me/loose", check_self=False)  # about to be tightened to 0700
    refusal(fs, "/home/me/loose")
    fs.link("/home/me/alias", "/home/me/loose", uid=OTHER)  # but not a symlink leading to it
    assert "symlink owned by uid 1001" in refusal(fs, "/home/me/alias", check_self=False)


def test_dot_dot_climbs_from_where_a_symlink_led() -> None:
    fs = FakeFs({**HOME, "/srv": node(0o755), "/srv/open": node(0o777), "/srv/open/x": node(0o700, ME)})
    fs.link("/home/me/link", "/srv/open/x", uid=ME)
    assert refusal(fs, "/home/me/link/../y").startswith("/srv/open is writable")


def test_a_path_with_a_newline_still_makes_one_line() -> None:
    fs = FakeFs({**HOME, "/home/me/a\nb": node(0o777, ME)})
    assert "'/home/me/a\\nb' is writable by other users" in refusal(fs, "/home/me/a\nb/c")


# --- the real file system (the tests run as root: modes, and chown where root may) -----------------


@posix_only
def test_real_world_writable_dir_is_refused_and_nothing_made_under_it(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(NotPrivateError, match=r"shared is writable by other users \(mode 0777\)"):
        PosixPlatform().private_dir(shared / "pinnace" / "config")
    assert list(shared.iterdir()) == []
    shared.chmod(0o775)
    with pytest.raises(NotPrivateError, match=r"shared is writable by its group \(mode 0775\)"):
        PosixPlatform().write_private_text(shared / "state.json", "{}")


@posix_only
def test_real_sticky_dir_is_accepted_and_parents_are_made_private(tmp_path: Path) -> None:
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    if sticky.stat().st_uid != 0:
        pytest.skip("only a root-owned sticky directory is trusted")
    old = os.umask(0o002)  # would make the parents group-writable, and refused next time
    try:
        PosixPlatform().private_dir(sticky / "pinnace-0" / "alias")
        PosixPlatform().private_dir(sticky / "pinnace-0" / "alias")
    finally:
        os.umask(old)
    assert stat.S_IMODE((sticky / "pinnace-0").stat().st_mode) == 0o700


@posix_only
@pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0, reason="chown needs root")
def test_real_dir_of_another_user_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, 4242, 4242)
    with pytest.raises(NotPrivateError, match="theirs is owned by uid 4242"):
        PosixPlatform().private_dir(theirs / "mine")


@posix_only
def test_the_temp_dir_passes(tmp_path: Path) -> None:
    """The short socket aliases live in the temp dir (sticky, root's): it must pass as it is."""
    check_ancestry(tempfile.gettempdir())
    check_ancestry(tmp_path)


@posix_only
def test_ensure_dirs_and_the_cli_say_it_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from app import cli

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    home = shared / "pinnace"
    with pytest.raises(SettingsError, match=r"^\S*shared is writable by other users \(mode 0777\): [^\n]*$"):
        Paths.for_instance("dev", {"PINNACE_HOME": str(home)}, temp_dir=str(tmp_path)).ensure_dirs()
    monkeypatch.setenv("PINNACE_HOME", str(home))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert cli.main(["env", "--shell", "sh"]) == 1
    err = capsys.readouterr().err
    assert err == f"pinnace: {shared} is writable by other users (mode 0777): refusing to keep private files under it\n"


# --- a symlink planted at a private file's name ----------------------------------------------------


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, Path]:
    """(link, victim): a symlink where a private file belongs, to a file that must stay untouched."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"not yours")
    victim.chmod(0o644)
    link = tmp_path / "keys" / "id_ed25519"
    link.parent.mkdir(mode=0o700)
    link.symlink_to(victim)
    return link, victim


def untouched(victim: Path) -> bool:
    return victim.read_bytes() == b"not yours" and stat.S_IMODE(victim.stat().st_mode) == 0o644


@posix_only
def test_planted_symlink_is_refused_when_writing(planted: tuple[Path, Path]) -> None:
    link, victim = planted
    with pytest.raises(NotPrivateError, match=r"id_ed25519 is a symlink; refusing to replace it") as info:
        PosixPlatform().write_atomic(link, b"secret")
    assert "\n" not in str(info.value) and link.is_symlink() and untouched(victim)
    with pytest.raises(NotPrivateError):
        PosixPlatform().write_private_text(link, "secret")
    assert sorted(p.name for p in link.parent.iterdir()) == ["id_ed25519"]  # no temp file left


@posix_only
def test_planted_symlink_is_refused_when_reading_or_restricting(planted: tuple[Path, Path]) -> None:
    link, victim = planted
    with pytest.raises(NotPrivateError, match=r"id_ed25519 is a symlink; refusing to open a private file"):
        PosixPlatform().read_private(link)
    with pytest.raises(NotPrivateError, match="is a symlink"):
        PosixPlatform().restrict(link)  # chmod would have made the victim 0600
    assert untouched(victim)


@posix_only
def test_keys_refuse_a_planted_key(planted: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from hypervisor import keys
    from hypervisor import platform as hplatform

    monkeypatch.setattr(hplatform, "current", PosixPlatform)
    link, victim = planted
    with pytest.raises(NotPrivateError, match="id_ed25519 is a symlink"):
        keys.ensure_instance_keys(link.parent.parent, "keys")
    with pytest.raises(NotPrivateError, match="id_ed25519 is a symlink"):
        keys.public_line(link)
    assert untouched(victim)


@posix_only
def test_private_files_still_read_and_restrict_normally(tmp_path: Path) -> None:
    plat = PosixPlatform()
    plat.write_atomic(tmp_path / "key", b"secret")
    (tmp_path / "key").chmod(0o644)
    plat.restrict(tmp_path / "key")
    assert plat.read_private(tmp_path / "key") == b"secret"
    assert stat.S_IMODE((tmp_path / "key").stat().st_mode) == 0o600
