"""SSH key material for one instance: the host's client key and the guest's pinned host key.

Both keys are made on the host, so the guest's host key is known before the guest ever boots and
can be pinned exactly (no trust-on-first-use). paramiko cannot generate ed25519 keys, so this uses
`cryptography` (already a paramiko dependency).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

log = logging.getLogger(__name__)

CLIENT_KEY_NAME = "id_ed25519"
HOST_KEY_NAME = "ssh_host_ed25519_key"

# restrict: no agent/X11/port forwarding, no pty, no ~/.ssh/rc. Then re-enable exactly what we use:
# port-forwarding (covers direct-streamlocal, i.e. the engine socket) and pty (`pinnace ssh`).
AUTHORIZED_KEY_OPTIONS = "restrict,port-forwarding,pty"


@dataclass(frozen=True)
class InstanceKeys:
    """Paths and OpenSSH public lines of an instance's client key and guest host key."""

    client_key: Path
    client_public: str
    host_key: Path
    host_public: str


def _is_private(mode: int) -> bool:
    return not mode & 0o077


def _restrict(path: Path, mode: int, fd: int | None = None, directory: bool = False) -> None:
    """chmod on POSIX; on Windows, where chmod only toggles read-only, an owner-only ACL for what
    must be private (a key, its directory) and nothing for what may be public (a .pub file).

    On Windows a failure is logged, not raised: the file keeps the ACL it inherited, which in the
    default location (the user's profile) already excludes other users.
    """
    if sys.platform != "win32":
        if fd is not None:
            os.fchmod(fd, mode)
        else:
            os.chmod(path, mode)
        return
    if not _is_private(mode):
        return
    from hypervisor.forward_windows import set_owner_only_acl

    try:
        set_owner_only_acl(str(path), inherit=directory)
    except OSError as exc:
        log.warning("cannot restrict %s to its owner: %s", path, exc)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write via a temp file + rename so a crash never leaves a half-written key behind."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        _restrict(Path(tmp), mode, fd)  # before the secret is written; the rename keeps it
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _ensure_private_dir(directory: Path, tighten_existing: bool = False) -> None:
    """Create `directory` 0700; only tighten an existing one when it is ours (never e.g. /tmp)."""
    if not directory.exists():
        directory.mkdir(parents=True, mode=0o700)
        _restrict(directory, 0o700, directory=True)  # mkdir's mode is filtered through the umask
    elif tighten_existing and (sys.platform == "win32" or directory.stat().st_mode & 0o077):
        _restrict(directory, 0o700, directory=True)


def _public_openssh(key: Ed25519PrivateKey, comment: str) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    line = raw.decode("ascii")
    return f"{line} {comment}" if comment else line


def generate_keypair(private_path: Path, comment: str) -> str:
    """Create a new ed25519 key (OpenSSH format, 0600) and `<path>.pub`; return the public line."""
    private_path = Path(private_path)
    _ensure_private_dir(private_path.parent)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = _public_openssh(key, comment)
    _write_atomic(private_path, pem, 0o600)
    _write_atomic(_pub_path(private_path), (public + "\n").encode("ascii"), 0o644)
    log.info("generated ed25519 key %s", private_path)
    return public


def _pub_path(private_path: Path) -> Path:
    return private_path.with_name(private_path.name + ".pub")


def public_line(private_path: Path, comment: str = "") -> str:
    """The OpenSSH public line derived from the private key itself (the .pub file is not trusted)."""
    data = Path(private_path).read_bytes()
    key = serialization.load_ssh_private_key(data, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{private_path} is not an ed25519 key")
    return _public_openssh(key, comment)


def authorized_keys_line(client_public: str) -> str:
    """The guest's authorized_keys entry: locked down except forwarding (engine socket) and pty."""
    return f"{AUTHORIZED_KEY_OPTIONS} {client_public.strip()}"


def _ensure_key(private_path: Path, comment: str) -> str:
    if not private_path.exists():
        return generate_keypair(private_path, comment)
    if sys.platform == "win32" or private_path.stat().st_mode & 0o077:  # st_mode is no ACL on Windows
        _restrict(private_path, 0o600)
    public = public_line(private_path, comment)
    pub = _pub_path(private_path)
    if not pub.exists() or pub.read_text(encoding="ascii").strip() != public:
        _write_atomic(pub, (public + "\n").encode("ascii"), 0o644)
    return public


def ensure_instance_keys(keys_dir: Path, instance: str) -> InstanceKeys:
    """Create the instance's client key and guest host key if missing; idempotent."""
    directory = Path(keys_dir) / instance
    _ensure_private_dir(directory, tighten_existing=True)
    client_key = directory / CLIENT_KEY_NAME
    host_key = directory / HOST_KEY_NAME
    client_public = _ensure_key(client_key, f"pinnace-{instance}")
    host_public = _ensure_key(host_key, f"pinnace-{instance}-host")
    return InstanceKeys(client_key, client_public, host_key, host_public)
