"""The engine's own settings: Pinnace's daemon.json defaults, the user's `engine.json` merged over
them, the proxy and extra CA certificates, all checked on the host before the guest sees them.

The guest gets the merged daemon.json, and the CA bundle, through fw_cfg (vmimage/guest/boot);
if dockerd still refuses the file, the guest's engine script falls back to the last good one and
says so on the console (the agent shows it in the status). Pure functions, but for reading files.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import logging
import re
import shlex
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hypervisor.errors import SettingsError

log = logging.getLogger("pinnace.engine")

ENGINE_FILE = "engine.json"  # in the instance's config dir
LAST_GOOD_FILE = "engine.last-good.json"  # in the data dir: what the engine last started with
HOST_ALIAS = "10.0.2.2"  # QEMU user networking's address for the host's loopback

# Pinnace's defaults. No log rotation: a stock engine has none, and clients' own test suites
# compare HostConfig.LogConfig with it; set "log-opts" in engine.json to cap container logs.
PINNACE_DEFAULTS: dict[str, Any] = {
    "storage-driver": "overlay2",
    "log-driver": "json-file",
    "shutdown-timeout": 5,
    "features": {"buildkit": True},
    # iptables off: ~100 iptables calls cost 10 s of boot under TCG; the guest's boot script NATs,
    # docker-proxy serves published ports (hypervisor/ports.py relies on it).
    "iptables": False,
    "ip6tables": False,
    "userland-proxy": True,
    "host-gateway-ip": HOST_ALIAS,
}

# Keys Pinnace must own for the VM to work: the socket the host reaches, where data lives, how
# ports and the host alias work. A user value would break the VM, so it is refused with why.
MANAGED_KEYS = {
    "hosts": "the engine socket is Pinnace's way in",
    "data-root": "the engine's data lives on the data disk",
    "exec-root": "the engine's runtime state is Pinnace's",
    "pidfile": "the engine's runtime state is Pinnace's",
    "containerd": "containerd is started by the guest",
    "iptables": "published ports and NAT are set up by Pinnace",
    "ip6tables": "published ports and NAT are set up by Pinnace",
    "userland-proxy": "published ports go through docker-proxy",
    "userland-proxy-path": "published ports go through docker-proxy",
    "host-gateway-ip": "host-gateway is the host (host.docker.internal)",
    "host-gateway-ips": "host-gateway is the host (host.docker.internal)",
    "tls": "the engine has no TCP listener",
    "tlsverify": "the engine has no TCP listener",
    "tlscacert": "the engine has no TCP listener",
    "tlscert": "the engine has no TCP listener",
    "tlskey": "the engine has no TCP listener",
    "group": "the socket's owner is set by Pinnace",
}

# dockerd's daemon.json keys on Linux (Docker Engine 26), for "unknown key" with a suggestion.
KNOWN_KEYS = frozenset({
    "allow-nondistributable-artifacts", "api-cors-header", "authorization-plugins", "bip", "bip6", "bridge",
    "builder", "cdi-spec-dirs", "cgroup-parent", "containerd", "containerd-namespace",
    "containerd-plugins-namespace", "data-root", "debug", "default-address-pools", "default-cgroupns-mode",
    "default-gateway", "default-gateway-v6", "default-ipc-mode", "default-network-opts", "default-runtime",
    "default-shm-size", "default-ulimits", "dns", "dns-opts", "dns-search", "exec-opts", "exec-root",
    "experimental", "features", "fixed-cidr", "fixed-cidr-v6", "group", "host-gateway-ip", "host-gateway-ips",
    "hosts", "icc", "init", "init-path", "insecure-registries", "ip", "ip-forward", "ip-forward-no-drop",
    "ip-masq", "iptables", "ip6tables", "ipv6", "labels", "live-restore", "log-driver", "log-format",
    "log-level", "log-opts", "max-concurrent-downloads", "max-concurrent-uploads", "max-download-attempts",
    "metrics-addr", "min-api-version", "mtu", "no-new-privileges", "node-generic-resources",
    "oom-score-adjust", "pidfile", "proxies", "raw-logs", "registry-mirrors", "runtimes", "seccomp-profile",
    "selinux-enabled", "shutdown-timeout", "storage-driver", "storage-opts", "swarm-default-advertise-addr",
    "tls", "tlscacert", "tlscert", "tlskey", "tlsverify", "userland-proxy", "userland-proxy-path",
    "userns-remap",
})


class EngineConfigError(SettingsError):
    """The user's engine configuration is refused; the message names the key."""


# --- the user's file ---------------------------------------------------------------------------


def parse(text: str, source: str = ENGINE_FILE) -> dict[str, Any]:
    """The user's engine.json as a dict, checked (EngineConfigError naming the key otherwise)."""
    try:
        value = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise EngineConfigError(f"{source}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise EngineConfigError(f"{source}: expected a JSON object ({{\"key\": value, …}})")
    for key, item in value.items():
        problem = key_problem(key, item)
        if problem:
            raise EngineConfigError(f"{source}: {key!r} {problem}")
    return value


def key_problem(key: str, value: Any) -> str:
    """'' when dockerd would take `key` = `value` and Pinnace lets the user set it; else why not."""
    if key in MANAGED_KEYS:
        return f"is managed by Pinnace ({MANAGED_KEYS[key]})"
    if key not in KNOWN_KEYS:
        close = difflib.get_close_matches(key, sorted(KNOWN_KEYS), n=1)
        return "is not a dockerd setting" + (f" (did you mean {close[0]!r}?)" if close else "")
    checker = _VALUE_CHECKS.get(key)
    return checker(value) if checker else ""


def _string_list(value: Any) -> str:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        return "must be a list of strings"
    return ""


def _mirrors(value: Any) -> str:
    problem = _string_list(value)
    if problem:
        return problem
    for url in value:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            return f"must list http:// or https:// URLs ({url!r} is not one)"
    return ""


def _string_map(value: Any) -> str:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        return "must be an object of strings (e.g. {\"max-size\": \"10m\"})"
    return ""


def _bool_map(value: Any) -> str:
    if not isinstance(value, dict) or not all(isinstance(v, bool) for v in value.values()):
        return "must be an object of true/false values"
    return ""


def _pools(value: Any) -> str:
    if not isinstance(value, list):
        return "must be a list of {\"base\": CIDR, \"size\": N}"
    for pool in value:
        if not isinstance(pool, dict) or set(pool) - {"base", "size"} or "base" not in pool:
            return "must be a list of {\"base\": CIDR, \"size\": N}"
        try:
            net = ipaddress.ip_network(str(pool["base"]), strict=False)
        except ValueError:
            return f"has a base that is not a network ({pool['base']!r})"
        size = pool.get("size", net.prefixlen)
        if type(size) is not int or not net.prefixlen <= size <= net.max_prefixlen:
            return f"has a size that does not fit {pool['base']} ({size!r})"
    return ""


def _addresses(value: Any) -> str:
    problem = _string_list(value)
    if problem:
        return problem
    for item in value:
        try:
            ipaddress.ip_address(item)
        except ValueError:
            return f"must list IP addresses ({item!r} is not one)"
    return ""


def _boolean(value: Any) -> str:
    return "" if isinstance(value, bool) else "must be true or false"


_VALUE_CHECKS = {
    "registry-mirrors": _mirrors, "insecure-registries": _string_list, "log-opts": _string_map,
    "log-driver": lambda v: "" if isinstance(v, str) and v else "must be a driver name",
    "features": _bool_map, "default-address-pools": _pools, "dns": _addresses, "labels": _string_list,
    "debug": _boolean, "live-restore": _boolean, "experimental": _boolean, "ipv6": _boolean,
    "max-concurrent-downloads": lambda v: "" if type(v) is int and v > 0 else "must be a positive integer",
    "max-concurrent-uploads": lambda v: "" if type(v) is int and v > 0 else "must be a positive integer",
}


def load_user(config_dir: Path) -> dict[str, Any]:
    """The user's engine.json ({} when there is none); EngineConfigError when it is refused."""
    path = Path(config_dir) / ENGINE_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise EngineConfigError(f"{path}: cannot be read ({exc})") from None
    return parse(text, str(path))


# --- the proxy -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proxy:
    http: str = ""
    https: str = ""
    no_proxy: str = ""
    source: str = ""  # "settings", "environment" or ""

    @property
    def empty(self) -> bool:
        return not (self.http or self.https)

    def describe(self) -> str:
        if self.empty:
            return ""
        parts = [f"http {self.http}" if self.http else "", f"https {self.https}" if self.https else "",
                 f"except {self.no_proxy}" if self.no_proxy else ""]
        return ", ".join(p for p in parts if p) + (f" (from the {self.source})" if self.source else "")


def _env(env: Mapping[str, str], name: str) -> str:
    return (env.get(name.lower()) or env.get(name.upper()) or "").strip()


def choose_proxy(http: str, https: str, no_proxy: str, from_environment: bool,
                 env: Mapping[str, str]) -> Proxy:
    """The settings' proxy; empty values taken from the host environment when allowed."""
    if http or https:
        return Proxy(http, https, no_proxy, "settings")
    if from_environment:
        found = Proxy(_env(env, "http_proxy"), _env(env, "https_proxy"), no_proxy or _env(env, "no_proxy"),
                      "environment")
        if not found.empty:
            return found
    return Proxy(no_proxy=no_proxy)


class ProxySettings(Protocol):
    """What the proxy is chosen from: hypervisor.settings.Settings, or the tray's form values."""

    http_proxy: str
    https_proxy: str
    no_proxy: str
    proxy_from_environment: bool


def proxy_of(settings: ProxySettings, env: Mapping[str, str]) -> Proxy:
    """The proxy `settings` give, with `env` for what they leave empty (choose_proxy)."""
    return choose_proxy(settings.http_proxy, settings.https_proxy, settings.no_proxy,
                        settings.proxy_from_environment, env)


def for_guest(url: str) -> str:
    """A proxy URL as the guest must use it: the host's loopback is user networking's host alias."""
    if not url:
        return url
    parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    host = (parsed.hostname or "").lower()
    loopback = host == "localhost"
    try:
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if not loopback:
        return urllib.parse.urlunsplit(parsed)
    netloc = HOST_ALIAS + (f":{parsed.port}" if parsed.port else "")
    if parsed.username:
        auth = parsed.username + (f":{parsed.password}" if parsed.password else "")
        netloc = f"{auth}@{netloc}"
    return urllib.parse.urlunsplit(parsed._replace(netloc=netloc))


# --- the merged daemon.json ----------------------------------------------------------------------


def merged(user: Mapping[str, Any], proxy: Proxy) -> dict[str, Any]:
    """Pinnace's defaults, then the proxy (as dockerd's `proxies`), then the user's keys."""
    config: dict[str, Any] = json.loads(json.dumps(PINNACE_DEFAULTS))
    if not proxy.empty:
        proxies = {"http-proxy": for_guest(proxy.http), "https-proxy": for_guest(proxy.https),
                   "no-proxy": proxy.no_proxy}
        config["proxies"] = {k: v for k, v in proxies.items() if v}
    for key, value in user.items():
        if key == "features" and isinstance(value, dict):
            config["features"] = {**config.get("features", {}), **value}
        else:
            config[key] = value
    return config


def profile_lines(proxy: Proxy) -> str:
    """The proxy for the guest's own shell tools (`pinnace ssh`): /etc/profile's exports."""
    values = {"http_proxy": for_guest(proxy.http), "https_proxy": for_guest(proxy.https),
              "no_proxy": proxy.no_proxy}
    lines = []
    for name, value in values.items():
        if value:
            lines += [f"export {name}={shlex.quote(value)}", f"export {name.upper()}={shlex.quote(value)}"]
    return "\n".join(lines) + ("\n" if lines else "")


def render(config: Mapping[str, Any]) -> str:
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


# --- CA certificates -----------------------------------------------------------------------------

# The host's own trust-store additions, by OS: where a user or an admin puts a company's CA.
LINUX_CA_DIRS = (Path("/usr/local/share/ca-certificates"), Path("/etc/pki/ca-trust/source/anchors"))
MACOS_SYSTEM_KEYCHAIN = "/Library/Keychains/System.keychain"


def macos_additions_argv() -> list[str]:
    """`security` printing the certificates an admin added to the System keychain, as PEM."""
    return ["security", "find-certificate", "-a", "-p", MACOS_SYSTEM_KEYCHAIN]


def linux_additions(dirs: tuple[Path, ...] = LINUX_CA_DIRS) -> list[tuple[str, str]]:
    """(path, PEM text) of each local addition (update-ca-certificates' and update-ca-trust's dirs)."""
    found: list[tuple[str, str]] = []
    for directory in dirs:
        if directory.is_dir():
            for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix in (".crt", ".pem")):
                try:
                    found.append((str(path), path.read_text(encoding="ascii", errors="replace")))
                except OSError as exc:
                    log.warning("skipping the host CA %s: %s", path, exc)
    return found


Additions = list[tuple[str, str]]  # (where from, PEM text)


def host_additions(os_name: str, run_text: Callable[[list[str]], str] | None = None) -> tuple[Additions, str]:
    """The host's trust-store additions as (source, PEM text), and a note when this OS gives none."""
    if os_name == "linux":
        return linux_additions(), ""
    if os_name == "darwin" and run_text is not None:
        try:
            return [(MACOS_SYSTEM_KEYCHAIN, run_text(macos_additions_argv()))], ""
        except OSError as exc:
            return [], f"cannot read the System keychain: {exc}"
    return [], f"the host's trust-store additions are not read on {os_name}: list their files in ca_files"


_PEM_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)


@dataclass
class CaBundle:
    text: str = ""
    sources: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return self.text.count("-----BEGIN CERTIFICATE-----")

    def describe(self) -> str:
        if not self.count:
            return ""
        return f"{self.count} extra CA certificate(s) from {', '.join(self.sources)}"


def ca_bundle(files: list[str], additions: list[tuple[str, str]]) -> CaBundle:
    """The PEM certificates of `files` (each must hold one: EngineConfigError otherwise), then of
    the host's additions (where only certificate blocks are taken)."""
    from hypervisor.settings import pem_file_problem

    bundle = CaBundle()
    for i, name in enumerate(files):
        problem = pem_file_problem(name)
        if problem:
            raise EngineConfigError(f"ca_files[{i}]: {name!r} {problem}")
        blocks = _PEM_BLOCK.findall(Path(name).read_text(encoding="ascii", errors="replace"))
        bundle.text += "\n".join(blocks) + "\n"
        bundle.sources.append(name)
    for source, text in additions:
        blocks = _PEM_BLOCK.findall(text)
        if blocks:
            bundle.text += "\n".join(blocks) + "\n"
            bundle.sources.append(source)
    return bundle
