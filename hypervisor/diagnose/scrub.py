"""Removing secrets from text that goes into a support bundle (pure).

What is removed: PEM private key blocks (whole, or what a log tail kept of one, and any other line
with a private key marker), OpenSSH key lines (public ones too: an authorized_keys line has no
business in a bundle), registry credentials in a docker config (`"auth"`, `"identitytoken"`, …),
`Authorization:` / `X-Registry-Auth:` headers, bearer tokens, `password=…`-like pairs and the
password in `scheme://user:password@host`. Every rule is idempotent: scrubbing scrubbed text changes
nothing, so `find_secrets` (what a scrub would still change) is empty after `scrub_text`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

REMOVED = "***"
KEY_REMOVED = "[private key removed]"
KEY_LINE_REMOVED = "[line with a private key marker removed]"

_BEGIN = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
_END = re.compile(r"-----END [A-Z0-9 ]*PRIVATE KEY-----")
_ONE_LINE_BLOCK = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?-----END [A-Z0-9 ]*PRIVATE KEY-----")
_MARKER = "PRIVATE KEY-----"
_PEM_BODY = re.compile(r"^\s*(?:[A-Za-z0-9+/=]{16,}|[A-Za-z-]+: .*|)\s*$")  # base64, or a Proc-Type header
_BASE64_LINE = re.compile(r"^\s*[A-Za-z0-9+/=]{16,}\s*$")


@dataclass(frozen=True)
class Rule:
    name: str
    apply: Callable[[str], str]


def _regex_rule(name: str, pattern: str, replacement: str, flags: int = 0) -> Rule:
    compiled = re.compile(pattern, flags)
    return Rule(name, lambda text: compiled.sub(replacement, text))


def remove_private_keys(text: str) -> str:
    """PEM private key blocks out, line by line: a block cut by a log tail (its END without BEGIN,
    or a BEGIN whose END never came) goes too, and so does any other line with the marker."""
    text = _ONE_LINE_BLOCK.sub(KEY_REMOVED, text)
    if _MARKER not in text:
        return text
    out: list[str] = []
    in_block = False
    for line in text.splitlines(keepends=True):
        if in_block:
            if _END.search(line):
                in_block = False
                continue
            if _PEM_BODY.match(line):
                continue
            in_block = False  # the block was cut: this line is ordinary text again
        if _BEGIN.search(line):
            out.append(KEY_REMOVED + ("\n" if line.endswith("\n") else ""))
            in_block = not _END.search(line)
            continue
        if _END.search(line):  # the BEGIN was cut off: drop the base64 lines kept before it
            while out and _BASE64_LINE.match(out[-1]):
                out.pop()
            out.append(KEY_REMOVED + ("\n" if line.endswith("\n") else ""))
            continue
        if _MARKER in line:
            out.append(KEY_LINE_REMOVED + ("\n" if line.endswith("\n") else ""))
            continue
        out.append(line)
    return "".join(out)


RULES: tuple[Rule, ...] = (
    Rule("private key", remove_private_keys),
    _regex_rule("ssh key", r"\b((?:ssh-(?:ed25519|rsa|dss)|ecdsa-sha2-nistp\d+|sk-[a-z0-9@.-]+)\s+)AAAA[A-Za-z0-9+/=]+",
                rf"\1{REMOVED}"),
    _regex_rule("registry credential",
                r'("(?:auth|identitytoken|registrytoken|password|secret|token|access_token|refresh_token)"\s*:\s*)'
                r'"[^"]+"', rf'\1"{REMOVED}"', re.IGNORECASE),
    _regex_rule("authorization header", r"(\b(?:Proxy-)?Authorization\s*:\s*)[^\r\n]+", rf"\1{REMOVED}", re.IGNORECASE),
    _regex_rule("registry auth header", r"(\bX-Registry-(?:Auth|Config)\s*:\s*)[^\r\n]+", rf"\1{REMOVED}",
                re.IGNORECASE),
    _regex_rule("bearer token", r"(\bBearer\s+)[A-Za-z0-9._~+/-]+=*", rf"\1{REMOVED}", re.IGNORECASE),
    _regex_rule("password", r"(\b(?:password|passwd|pwd|secret|token|api[_-]?key)\s*[=:]\s*)[^\s&;,'\"]+",
                rf"\1{REMOVED}", re.IGNORECASE),
    _regex_rule("url credential", r"(\b[a-z][a-z0-9+.-]*://[^\s:/@]+:)[^\s@/]+@", rf"\1{REMOVED}@", re.IGNORECASE),
)


def scrub_text(text: str) -> str:
    """`text` with every secret the rules know replaced."""
    for rule in RULES:
        text = rule.apply(text)
    return text


def find_secrets(text: str) -> list[str]:
    """The names of the rules that would still change `text` (empty for scrubbed text)."""
    return [rule.name for rule in RULES if rule.apply(text) != text]
