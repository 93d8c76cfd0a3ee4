"""The engine's settings on the host: engine.json checks naming the key, Pinnace's defaults and
what the user may not override, the proxy (settings, environment, the host's loopback as the
guest sees it), CA bundles, and what a boot hands the guest (engine_setup)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hypervisor import engine_config, engine_validate
from hypervisor.agent import engine_setup
from hypervisor.engine_config import EngineConfigError, Proxy
from hypervisor.paths import Paths
from hypervisor.platform import current
from hypervisor.settings import HostFacts, Settings, pem_file_problem

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parents[2]
PEM = """-----BEGIN CERTIFICATE-----
MIIBszCCAVmgAwIBAgIUQ3N0ZXN0Y2VydGlmaWNhdGUwCgYIKoZIzj0EAwIwEjEQ
MA4GA1UEAwwHdGVzdCBjYTAeFw0yNjAxMDEwMDAwMDBaFw0zNjAxMDEwMDAwMDBa
-----END CERTIFICATE-----
"""


def test_the_images_daemon_json_is_pinnaces_defaults() -> None:
    image = json.loads((ROOT / "vmimage" / "guest" / "daemon.json").read_text())
    assert image == engine_config.PINNACE_DEFAULTS
    assert "log-opts" not in image  # a stock engine has no log rotation; clients' tests compare


@pytest.mark.parametrize(("text", "named"), [
    ('{"registry-mirror": ["http://m"]}',
     "'registry-mirror' is not a dockerd setting (did you mean 'registry-mirrors'?)"),
    ('{"hosts": ["tcp://0.0.0.0:2375"]}', "'hosts' is managed by Pinnace"),
    ('{"data-root": "/x"}', "'data-root' is managed by Pinnace"),
    ('{"registry-mirrors": "http://m"}', "'registry-mirrors' must be a list of strings"),
    ('{"registry-mirrors": ["m:5000"]}', "must list http:// or https:// URLs"),
    ('{"log-opts": {"max-size": 10}}', "'log-opts' must be an object of strings"),
    ('{"default-address-pools": [{"base": "10.300.0.0/16", "size": 24}]}', "base that is not a network"),
    ('{"default-address-pools": [{"base": "10.10.0.0/16", "size": 8}]}', "size that does not fit"),
    ('{"dns": ["dns.example"]}', "must list IP addresses"),
    ('{"debug": "yes"}', "'debug' must be true or false"),
    ("[1, 2]", "expected a JSON object"),
    ('{"a": ', "not valid JSON"),
])
def test_refused_configurations_name_the_key(text: str, named: str) -> None:
    with pytest.raises(EngineConfigError) as caught:
        engine_config.parse(text, "engine.json")
    message = str(caught.value)
    assert named in message and message.startswith("engine.json: ") and "\n" not in message


def test_a_good_configuration_merges_over_the_defaults() -> None:
    user = engine_config.parse(json.dumps({
        "registry-mirrors": ["https://mirror.example:5000"], "insecure-registries": ["10.1.2.3:5000"],
        "log-opts": {"max-size": "10m", "max-file": "3"}, "features": {"containerd-snapshotter": True},
        "default-address-pools": [{"base": "10.200.0.0/16", "size": 24}]}))
    merged = engine_config.merged(user, Proxy())
    assert merged["registry-mirrors"] == ["https://mirror.example:5000"]
    assert merged["features"] == {"buildkit": True, "containerd-snapshotter": True}
    assert merged["iptables"] is False and merged["host-gateway-ip"] == "10.0.2.2"
    assert "proxies" not in merged
    assert engine_config.parse("") == {}


def test_the_proxy_comes_from_the_settings_then_the_environment() -> None:
    env = {"HTTPS_PROXY": "http://corp:3128", "no_proxy": "internal.example"}
    assert engine_config.choose_proxy("", "", "", True, env) == Proxy("", "http://corp:3128", "internal.example",
                                                                      "environment")
    assert engine_config.choose_proxy("", "", "", False, env).empty
    chosen = engine_config.choose_proxy("http://p:1", "", "x.example", True, env)
    assert chosen == Proxy("http://p:1", "", "x.example", "settings")
    assert "from the settings" in chosen.describe() and "except x.example" in chosen.describe()


@pytest.mark.parametrize(("url", "guest"), [
    ("http://127.0.0.1:8888", "http://10.0.2.2:8888"),
    ("http://localhost:3128", "http://10.0.2.2:3128"),
    ("http://user:secret@127.0.0.1:3128", "http://user:secret@10.0.2.2:3128"),
    ("http://[::1]:3128", "http://10.0.2.2:3128"),
    ("http://proxy.corp:3128", "http://proxy.corp:3128"),
    ("proxy.corp:3128", "http://proxy.corp:3128"),
])
def test_a_proxy_on_the_hosts_loopback_is_reached_through_the_host_alias(url: str, guest: str) -> None:
    assert engine_config.for_guest(url) == guest


def test_the_proxy_reaches_dockerd_as_its_proxies_and_the_users_own_wins() -> None:
    proxy = Proxy("http://127.0.0.1:1", "http://127.0.0.1:2", "registry.example", "settings")
    merged = engine_config.merged({}, proxy)
    assert merged["proxies"] == {"http-proxy": "http://10.0.2.2:1", "https-proxy": "http://10.0.2.2:2",
                                 "no-proxy": "registry.example"}
    own = {"http-proxy": "http://other:3"}
    assert engine_config.merged({"proxies": own}, proxy)["proxies"] == own


def test_ca_bundles_take_certificate_blocks_only(tmp_path: Path) -> None:
    good = tmp_path / "corp.pem"
    good.write_text("comment line\n" + PEM)
    bundle = engine_config.ca_bundle([str(good)], [("keychain", "junk\n" + PEM + PEM)])
    assert bundle.count == 3 and "comment" not in bundle.text and "junk" not in bundle.text
    assert bundle.describe().startswith("3 extra CA certificate(s) from ") and "keychain" in bundle.describe()
    (tmp_path / "bad.pem").write_text("not a cert")
    with pytest.raises(EngineConfigError, match=r"ca_files\[0\].*holds no PEM certificate"):
        engine_config.ca_bundle([str(tmp_path / "bad.pem")], [])
    assert pem_file_problem(str(tmp_path / "missing.pem")) == "does not exist"
    assert pem_file_problem(str(tmp_path)) == "is a directory, not a PEM file"


def test_linux_host_additions_are_read_from_the_local_dirs(tmp_path: Path) -> None:
    (tmp_path / "corp").mkdir()
    (tmp_path / "corp" / "root.crt").write_text(PEM)
    (tmp_path / "README").write_text("not a cert")
    found = engine_config.linux_additions((tmp_path, tmp_path / "absent"))
    assert [Path(source).name for source, _ in found] == ["root.crt"]
    assert engine_config.macos_additions_argv()[:3] == ["security", "find-certificate", "-a"]
    none, note = engine_config.host_additions("windows")
    assert none == [] and "ca_files" in note


def _paths(tmp_path: Path) -> Paths:
    paths = Paths.for_instance("e", {"PINNACE_HOME": str(tmp_path)})
    paths.ensure_dirs()
    return paths


def test_a_boot_hands_the_guest_the_merged_file_its_fallback_and_the_cas(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    (paths.config_dir / "engine.json").write_text('{"registry-mirrors": ["http://m:5000"]}')
    ca = tmp_path / "ca.pem"
    ca.write_text(PEM)
    settings = Settings.defaults(HostFacts(2, 4096, "linux"), home=str(tmp_path))
    settings.ca_files, settings.https_proxy = [str(ca)], "http://127.0.0.1:3128"
    setup = engine_setup.prepare(paths, settings, current(), {})
    names = [name for name, _ in setup.fw_cfg]
    assert names == ["opt/pinnace/engine.json", "opt/pinnace/engine_last_good.json", "opt/pinnace/proxy.sh",
                     "opt/pinnace/ca.pem"]
    assert "export https_proxy=http://10.0.2.2:3128" in (paths.runtime_dir / "proxy.sh").read_text()
    sent = json.loads((paths.runtime_dir / "engine.json").read_text())
    assert sent["registry-mirrors"] == ["http://m:5000"] and sent["proxies"]["https-proxy"] == "http://10.0.2.2:3128"
    fallback = json.loads((paths.runtime_dir / "engine_last_good.json").read_text())
    assert "registry-mirrors" not in fallback  # nothing has started with it yet
    assert (paths.runtime_dir / "ca.pem").stat().st_mode & 0o077 == 0
    engine_setup.remember_good(paths, current(), setup.user)
    again = engine_setup.prepare(paths, settings, current(), {})
    assert json.loads((paths.runtime_dir / "engine_last_good.json").read_text())["registry-mirrors"] == \
        ["http://m:5000"]
    assert again.warning == ""


def test_a_hand_edited_refused_file_boots_the_last_good_one_and_says_why(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    engine_setup.remember_good(paths, current(), {"debug": True})
    (paths.config_dir / "engine.json").write_text('{"debugg": true}')
    settings = Settings.defaults(HostFacts(2, 4096, "linux"), home=str(tmp_path))
    setup = engine_setup.prepare(paths, settings, current(), {})
    assert setup.user == {"debug": True}
    assert "'debugg' is not a dockerd setting" in setup.warning and "last good" in setup.warning
    assert json.loads((paths.runtime_dir / "engine.json").read_text())["debug"] is True


def test_the_guests_refusal_is_read_from_the_console() -> None:
    lines = ["pinnace: stage engine", "PINNACE-ENGINE-CONFIG-REFUSED invalid default-shm-size: lots", "x"]
    assert engine_setup.refusal(lines) == "invalid default-shm-size: lots"
    assert engine_setup.refusal(["PINNACE-READY 3.2"]) == ""


def test_the_guest_validation_command_and_its_answer() -> None:
    command = engine_validate.validate_command('{"debug": true}\n')
    assert "base64 -d" in command and "dockerd --validate --config-file /run/pinnace/validate.json" in command
    assert "'" not in command and '"' not in command  # nothing for the shell to misread
    output = ("unable to configure the Docker daemon with file /run/pinnace/validate.json: "
              "the following directives don't match any configuration option: nope\n")
    assert engine_validate.refusal_reason(output) == \
        "the following directives don't match any configuration option: nope"
    assert engine_validate.refusal_reason("") == "dockerd refused it"


def test_the_guests_shell_gets_the_proxy_quoted() -> None:
    text = engine_config.profile_lines(Proxy("http://u:p$w@127.0.0.1:3128", "", "a.example,b.example"))
    assert "export http_proxy='http://u:p$w@10.0.2.2:3128'" in text and "export HTTP_PROXY=" in text
    assert "export no_proxy=a.example,b.example" in text and "https_proxy" not in text
    assert engine_config.profile_lines(Proxy()) == ""
