"""Dashboard rows from the engine's list answers."""

from __future__ import annotations

from app.tray.dashboard_model import container_row, duration_text, format_ports, image_row, prune_text


def test_ports_published_only_and_deduplicated() -> None:
    ports = [
        {"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},
        {"IP": "::", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},
        {"IP": "127.0.0.1", "PrivatePort": 53, "PublicPort": 5353, "Type": "udp"},
        {"PrivatePort": 9000, "Type": "tcp"},
    ]
    assert format_ports(ports) == "8080->80/tcp, 127.0.0.1:5353->53/udp"
    assert format_ports(None) == ""


def test_container_row() -> None:
    row = container_row(
        {
            "Id": "abc123",
            "Names": ["/web"],
            "Image": "nginx:1",
            "State": "running",
            "Status": "Up 5 minutes",
            "Ports": [{"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"}],
        }
    )
    assert (row.name, row.image, row.state, row.ports, row.uptime) == (
        "web",
        "nginx:1",
        "running",
        "8080->80/tcp",
        "Up 5 minutes",
    )
    assert row.running


def test_image_row_and_durations() -> None:
    raw = {"Id": "sha256:0123456789abcdef", "RepoTags": None, "Size": 2048, "Created": 0}
    row = image_row(raw, now=90061)
    assert row.tags == "<untagged> 0123456789ab"
    assert row.size == "2.0 KiB"
    assert row.created == "1 d 1 h ago"
    assert duration_text(59) == "59 s" and duration_text(3600) == "1 h 0 min"
    assert prune_text({"ImagesDeleted": [{}, {}], "SpaceReclaimed": 1024}) == (
        "Removed 2 image layer(s), reclaimed 1.0 KiB."
    )
