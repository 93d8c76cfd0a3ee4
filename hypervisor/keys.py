"""SSH key material for one instance: the host's client key and the guest's pinned host key.

Both keys are made on the host, so the guest's host key is known before the guest ever boots and
can be pinned exactly (no trust-on-first-use). paramiko cannot generate ed25519 keys, so this uses
`cryptography` (already a paramiko dependency).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hypervisor import platform as host_platform

log = logging.getLogger(__name__)

CLIENT_KEY_NAME = "id_ed25519"
HOST_KEY_NAME = "ssh_host_ed25519_key"

# restrict: no agent/X11/port forwarding, no pty, no ~/.ssh/rc. Then re-enable exactly what we use:
# port-forwarding (covers direct-streamlocal, i.e. the engine socket), pty (`pinnace ssh`) and
# agent-forwarding (the host's ssh-agent at /run/host-services/ssh-auth.sock).
AUTHORIZED_KEY_OPTIONS = "restrict,port-forwarding,pty,agent-forwarding"


@dataclass(frozen=True)
class InstanceKeys:
    """Paths and OpenSSH public lines of an instance's client key and guest host key."""

    client_key: Path
    client_public: str
    host_key: Path
    host_public: str


def _write_atomic(path: Path, data: bytes, private: bool) -> None:
    """Temp file + rename (a crash never leaves half a key); a private one is owner-only first."""
    host_platform.current().write_atomic(path, data, private=private)


def _ensure_private_dir(directory: Path, tighten_existing: bool = False) -> None:
    """Create `directory` private; only tighten an existing one when asked (never e.g. a parent
    the caller chose), and then only if it is ours."""
    host_platform.current().private_dir(directory, tighten=tighten_existing)


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
    _write_atomic(private_path, pem, private=True)
    _write_atomic(_pub_path(private_path), (public + "\n").encode("ascii"), private=False)
    log.info("generated ed25519 key %s", private_path)
    return public


def _pub_path(private_path: Path) -> Path:
    return private_path.with_name(private_path.name + ".pub")


def public_line(private_path: Path, comment: str = "") -> str:
    """The OpenSSH public line derived from the private key itself (the .pub file is not trusted);
    read without following a symlink planted at the key's name (NotPrivateError)."""
    data = host_platform.current().read_private(Path(private_path))
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
    host_platform.current().restrict(private_path)  # a key someone loosened is tightened again
    public = public_line(private_path, comment)
    pub = _pub_path(private_path)
    if not pub.exists() or pub.read_text(encoding="ascii").strip() != public:
        _write_atomic(pub, (public + "\n").encode("ascii"), private=False)
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
