"""Offline container images for tests: a static busybox from the guest build's own package cache,
so no registry is needed."""

from __future__ import annotations

import functools
import io
import subprocess
import tarfile
from pathlib import Path

from vmimage import locations

APPLETS = ("sh", "echo", "cat", "ls", "sleep", "uname", "httpd", "nc", "wc", "head", "seq", "dd",
           "sha256sum", "touch", "mkdir", "rm", "stat", "id", "true", "false", "env", "date", "printf",
           "wget", "nslookup")


def busybox_deb(arch: str = "amd64") -> Path:
    debs = sorted((locations.cache_dir() / "apt").glob(f"trixie-{arch}/debs/busybox-static_*_{arch}.deb"))
    if not debs:
        raise FileNotFoundError("busybox-static .deb not in the image build cache: build the image first")
    return debs[-1]


def fetch_busybox_deb(arch: str) -> Path:
    """busybox_deb(arch); for another Debian arch (arm64) than the image's, download busybox-static
    through the builder's private apt state for that arch (what `image build --arch` would use)."""
    try:
        return busybox_deb(arch)
    except FileNotFoundError:
        if arch == "amd64":
            raise
    from vmimage import apt
    from vmimage.recipe import load_recipe

    recipe = load_recipe()
    machine = {debian: ours for ours, debian in apt.DEBIAN_ARCH.items()}[arch]
    pkgs = apt.PrivateApt(locations.cache_dir() / "apt" / f"{recipe.suite}-{arch}", recipe.suite, recipe.mirror,
                          recipe.keyring, machine)
    pkgs.update()
    pkgs.fetch(["busybox-static"])
    return busybox_deb(arch)


@functools.cache
def busybox_binary(arch: str = "amd64") -> bytes:
    raw = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(fetch_busybox_deb(arch))], capture_output=True,
                         check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        member = tar.extractfile("./usr/bin/busybox")
        assert member is not None
        return member.read()


def rootfs_tar(arch: str = "amd64", extra: dict[str, bytes] | None = None) -> bytes:
    """A root filesystem tarball: /bin/busybox, applet links, /tmp, optional extra files."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "tmp", "etc", "www"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        data = busybox_binary(arch)
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
        for name, content in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(content), 0o644
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def busybox_image(client, tag: str = "pinnace-test/busybox:latest") -> str:  # noqa: ANN001 - docker SDK client
    """Import the busybox rootfs into the engine (once) and return its tag."""
    try:
        client.images.get(tag)
        return tag
    except Exception:  # noqa: BLE001 - docker.errors.ImageNotFound
        pass
    repo, _, version = tag.partition(":")
    client.api.import_image_from_data(rootfs_tar(), repository=repo, tag=version or "latest",
                                      changes=['CMD ["sh"]', 'ENV PATH=/bin'])
    return tag
