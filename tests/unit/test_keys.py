"""Key generation: formats paramiko and sshd accept, private modes, idempotence."""

from __future__ import annotations

import os
import stat

import paramiko
import pytest

from hypervisor.keys import (
    authorized_keys_line,
    ensure_instance_keys,
    generate_keypair,
    public_line,
)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_generate_keypair_formats_and_modes(tmp_path):
    key = tmp_path / "new" / "id_ed25519"
    line = generate_keypair(key, "me@pinnace")
    assert line.startswith("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5") and line.endswith(" me@pinnace")
    assert key.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert mode(key) == 0o600
    assert mode(key.parent) == 0o700
    assert (tmp_path / "new" / "id_ed25519.pub").read_text() == line + "\n"
    assert not [p for p in key.parent.iterdir() if p.name.endswith(".tmp")]
    # paramiko can load it, and it is the same key as the public line
    loaded = paramiko.PKey.from_path(key)
    assert f"{loaded.get_name()} {loaded.get_base64()}" == line.rsplit(" ", 1)[0]
    assert public_line(key) == line.rsplit(" ", 1)[0]
    assert public_line(key, "c") == line.rsplit(" ", 1)[0] + " c"


def test_generate_keypair_leaves_existing_parent_mode_alone(tmp_path):
    os.chmod(tmp_path, 0o755)
    generate_keypair(tmp_path / "k", "x")
    assert mode(tmp_path) == 0o755


def test_ensure_instance_keys_is_idempotent(tmp_path):
    first = ensure_instance_keys(tmp_path / "keys", "default")
    assert first.client_key != first.host_key
    assert first.client_public != first.host_public
    assert mode(first.client_key) == mode(first.host_key) == 0o600
    assert mode(tmp_path / "keys" / "default") == 0o700
    second = ensure_instance_keys(tmp_path / "keys", "default")
    assert second == first


def test_ensure_instance_keys_repairs_pub_and_mode(tmp_path):
    keys = ensure_instance_keys(tmp_path, "x")
    pub = keys.client_key.with_name(keys.client_key.name + ".pub")
    pub.unlink()
    os.chmod(keys.client_key, 0o644)
    again = ensure_instance_keys(tmp_path, "x")
    assert again == keys
    assert pub.read_text().strip() == keys.client_public
    assert mode(keys.client_key) == 0o600


def test_public_line_rejects_non_ed25519(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    (tmp_path / "ecdsa").write_bytes(other)
    with pytest.raises(ValueError, match="not an ed25519"):
        public_line(tmp_path / "ecdsa")


def test_authorized_keys_line_reenables_forwarding_pty_and_the_agent():
    line = authorized_keys_line("ssh-ed25519 AAAAkey comment\n")
    options, rest = line.split(" ", 1)
    assert options.split(",") == ["restrict", "port-forwarding", "pty", "agent-forwarding"]
    assert rest == "ssh-ed25519 AAAAkey comment"
