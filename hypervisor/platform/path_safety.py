"""StrictModes for private paths (POSIX): every directory above a private file must be safe too.

A private directory at mode 0700 protects nothing if a directory above it can be renamed or
replaced by someone else: another user who may write to a parent can swap the whole subtree
(keys, sockets, settings) for one of theirs. Like OpenSSH's StrictModes, `check_ancestry` walks
from / to the path and accepts a component only if it is owned by you or root and writable by
nobody else, except a root-owned sticky directory such as /tmp. Symlinks on the way are followed
(and their targets checked the same way) when owned by you or root, as /var/run -> /run on Debian
or /tmp -> private/tmp on macOS are; one owned by anyone else is refused.

Pure but for the file system calls, which are parameters so tests can fake owners and modes.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Callable
from pathlib import PurePath

from hypervisor.platform.base import NotPrivateError, shown

MAX_SYMLINKS = 40  # Linux's limit for one lookup (ELOOP)
REFUSAL = "refusing to keep private files under it"
Lstat = Callable[[str], os.stat_result]
Readlink = Callable[[str], str]


def check_ancestry(path: PurePath | str, *, check_self: bool = True, uid: int | None = None,
                   lstat: Lstat = os.lstat, readlink: Readlink = os.readlink) -> None:
    """Raise NotPrivateError (one line, naming the component) unless every existing component of
    `path` is safe; the first missing one ends the walk (the caller creates the rest, privately).

    Without `check_self` the directory `path` resolves to is not judged: the caller is about to
    check its owner and tighten its mode itself (symlinks leading to it are still checked).
    """
    uid = os.getuid() if uid is None else uid
    pending = _components(path)
    current = "/"
    check_component("/", lstat("/"), uid)
    hops = 0
    while pending:
        name = pending.pop()
        if name == "..":
            current = posixpath.dirname(current)
            continue
        candidate = posixpath.join(current, name)
        try:
            info = lstat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            return
        if stat.S_ISLNK(info.st_mode):
            hops = _follow(candidate, info, uid, hops)
            target = readlink(candidate)
            current = "/" if target.startswith("/") else current
            pending.extend(reversed(_names(target)))
            continue
        if pending or check_self:
            check_component(candidate, info, uid)
        current = candidate


def check_component(path: str, info: os.stat_result, uid: int) -> None:
    """One directory on the way: yours or root's, and writable by nobody else (unless root's sticky)."""
    owner = info.st_uid
    if owner not in (uid, 0):
        raise NotPrivateError(f"{shown(path)} is owned by uid {owner}, not by you (uid {uid}) or root: {REFUSAL}")
    mode = info.st_mode
    if not mode & 0o022 or _root_sticky_dir(info):
        return
    who = "other users" if mode & 0o002 else "its group"
    raise NotPrivateError(f"{shown(path)} is writable by {who} (mode {stat.S_IMODE(mode):04o}): {REFUSAL}")


def _root_sticky_dir(info: os.stat_result) -> bool:
    """/tmp and the like: others may create entries but not rename or delete ours."""
    return stat.S_ISDIR(info.st_mode) and bool(info.st_mode & stat.S_ISVTX) and info.st_uid == 0


def _follow(link: str, info: os.stat_result, uid: int, hops: int) -> int:
    """A symlink's own mode means nothing; only whoever owns it could have pointed it elsewhere."""
    if info.st_uid not in (uid, 0):
        raise NotPrivateError(
            f"{shown(link)} is a symlink owned by uid {info.st_uid}, not by you (uid {uid}) or root: "
            "refusing to follow it to private files")
    if hops >= MAX_SYMLINKS:
        raise NotPrivateError(f"{shown(link)}: too many levels of symbolic links")
    return hops + 1


def _components(path: PurePath | str) -> list[str]:
    """The names of an absolute `path`, last first (a stack); a relative one is taken from the cwd."""
    text = os.fspath(path)
    if not text.startswith("/"):
        text = posixpath.join(os.getcwd(), text)
    return list(reversed(_names(text)))


def _names(text: str) -> list[str]:
    return [name for name in text.split("/") if name not in ("", ".")]
