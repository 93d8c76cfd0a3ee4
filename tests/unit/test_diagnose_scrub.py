"""The bundle's scrubber (pure): private keys (whole, or cut by a log tail), SSH key lines,
registry credentials, Authorization headers, tokens and passwords go; what is left is found by
nothing; the rest of the text stays."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hypervisor.diagnose.scrub import find_secrets, scrub_text


@pytest.fixture(scope="module")
def key() -> tuple[str, str]:
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH).decode()
    return pem, public


def body_lines(pem: str) -> list[str]:
    return [ln for ln in pem.splitlines() if ln and "-----" not in ln]


def test_a_pem_block_is_found_and_removed(key: tuple[str, str]) -> None:
    pem, _ = key
    text = f"2026-01-01 agent started\n{pem}2026-01-01 next line\n"
    assert "private key" in find_secrets(text)
    clean = scrub_text(text)
    assert "PRIVATE KEY-----" not in clean
    assert not any(line in clean for line in body_lines(pem))
    assert "agent started" in clean and "next line" in clean
    assert find_secrets(clean) == []


def test_a_block_cut_by_a_log_tail_goes_too(key: tuple[str, str]) -> None:
    pem, _ = key
    lines = pem.splitlines()
    without_begin = "\n".join(lines[1:]) + "\nafter\n"
    without_end = "before\n" + "\n".join(lines[:-1]) + "\n"
    for text in (without_begin, without_end):
        clean = scrub_text(text)
        assert not any(line in clean for line in body_lines(pem)), clean
        assert "PRIVATE KEY-----" not in clean
        assert find_secrets(clean) == []
    assert scrub_text(without_begin).endswith("after\n")


def test_a_key_on_one_line_and_a_stray_marker(key: tuple[str, str]) -> None:
    pem, _ = key
    escaped = json.dumps({"key": pem})
    clean = scrub_text(f"config {escaped}\nsomething -----END RSA PRIVATE KEY----- trailing\n")
    assert "PRIVATE KEY-----" not in clean and body_lines(pem)[0] not in clean
    assert clean.startswith("config ")


def test_ssh_key_lines_are_removed(key: tuple[str, str]) -> None:
    _, public = key
    line = f"restrict,port-forwarding,pty {public} pinnace-default"
    clean = scrub_text(line)
    assert public.split()[1] not in clean
    assert clean == "restrict,port-forwarding,pty ssh-ed25519 *** pinnace-default"


@pytest.mark.parametrize(("text", "gone", "kept"), [
    ('{"auths": {"registry.example": {"auth": "dXNlcjpodW50ZXIy"}}}', "dXNlcjpodW50ZXIy", "registry.example"),
    ('{"IdentityToken": "eyJhbGciOi.payload.sig"}', "eyJhbGciOi", "IdentityToken"),
    ("GET /v2/ HTTP/1.1\r\nAuthorization: Basic dXNlcjpwYXNz\r\nHost: x", "dXNlcjpwYXNz", "Host: x"),
    ("X-Registry-Auth: eyJ1c2VybmFtZSI6ImJvYiJ9", "eyJ1c2VybmFtZSI6ImJvYiJ9", "X-Registry-Auth"),
    ("token response Bearer abc.def-ghi_jkl~", "abc.def-ghi_jkl", "token response"),
    ("mysql --user=root password=hunter2 --port=3306", "hunter2", "--port=3306"),
    ("PGPASSWORD: x; secret=swordfish&next=1", "swordfish", "next=1"),
    ("HTTPS_PROXY=http://alice:s3cr3t@proxy.example:3128", "s3cr3t", "proxy.example:3128"),
])
def test_tokens_and_passwords_are_removed(text: str, gone: str, kept: str) -> None:
    assert find_secrets(text)
    clean = scrub_text(text)
    assert gone not in clean and kept in clean
    assert find_secrets(clean) == []
    assert scrub_text(clean) == clean


def test_ordinary_text_is_left_alone() -> None:
    text = ("time=2026-01-01 level=info msg=\"API listen on /var/run/docker.sock\"\n"
            "unix:///run/user/1000/pinnace/default/docker.sock\n"
            "PINNACE-STAGE engine\n"
            '{"Containers": 3, "Name": "pinnace-default", "auth": ""}\n')
    assert find_secrets(text) == []
    assert scrub_text(text) == text
