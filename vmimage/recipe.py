"""Strict loader for the image recipe (vmimage/image.toml).

Unknown keys and wrong types are errors naming the file and the key, so a typo never silently
changes what goes into the guest.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmimage.errors import RecipeError

DEFAULT_RECIPE = Path(__file__).with_name("image.toml")
ARCHES = ("x86_64", "aarch64")


ROOTFS_COMPRESSIONS = ("xz", "zstd", "gzip", "lz4", "none")


@dataclass(frozen=True)
class GuestFile:
    source: str
    mode: int


@dataclass(frozen=True)
class Recipe:
    path: Path
    name: str
    version: str
    suite: str
    mirror: str
    keyring: str
    kernel_source_package: str
    kernel_configs: dict[str, str]
    cmdline: str
    packages: tuple[str, ...]
    compression: str
    block_size: str
    include: tuple[str, ...]
    ca_bundle: str
    links: dict[str, str]
    files: dict[str, GuestFile]
    initrd_init: str
    initrd_compression: str
    sysinit: str
    respawn: tuple[str, ...]
    shutdown: str
    arch_include: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def directory(self) -> Path:
        return self.path.parent

    def kernel_config(self, arch: str) -> Path:
        if arch not in self.kernel_configs:
            raise RecipeError(f"{self.path.name}: kernel.config has no entry for arch '{arch}'")
        return self.directory / self.kernel_configs[arch]

    def include_for(self, arch: str) -> tuple[str, ...]:
        """rootfs.include plus the entries only this architecture's image takes."""
        return self.include + self.arch_include.get(arch, ())

    def guest_file(self, name: str) -> Path:
        return self.directory / "guest" / name


class _Table:
    """One TOML table read key by key; leftover keys are reported as unknown."""

    def __init__(self, file: str, name: str, data: Any) -> None:
        if not isinstance(data, dict):
            raise RecipeError(f"{file}: [{name}] must be a table")
        self.file, self.name, self.data = file, name, dict(data)

    def _where(self, key: str) -> str:
        return f"{self.file}: {self.name}.{key}"

    def take(self, key: str, kind: type, default: Any = ...) -> Any:
        if key not in self.data:
            if default is ...:
                raise RecipeError(f"{self._where(key)}: missing")
            return default
        value = self.data.pop(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise RecipeError(f"{self._where(key)}: expected {kind.__name__}, got {type(value).__name__}")
        return value

    def take_strings(self, key: str) -> tuple[str, ...]:
        values = self.take(key, list)
        if not all(isinstance(v, str) for v in values):
            raise RecipeError(f"{self._where(key)}: expected a list of strings")
        return tuple(values)

    def take_str_map(self, key: str, default: Any = ...) -> dict[str, str]:
        mapping = self.take(key, dict, default)
        if not all(isinstance(v, str) for v in mapping.values()):
            raise RecipeError(f"{self._where(key)}: expected a table of strings")
        return dict(mapping)

    def done(self) -> None:
        if self.data:
            key = sorted(self.data)[0]
            raise RecipeError(f"{self._where(key)}: unknown key")


def _parse_mode(file: str, key: str, text: str) -> int:
    try:
        return int(text, 8)
    except ValueError as exc:
        raise RecipeError(f"{file}: files.\"{key}\".mode: not an octal mode: {text!r}") from exc


def _arch_include(file: str, raw: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    table = _Table(file, "rootfs.arch_include", raw)
    result = {}
    for arch in list(raw):
        if arch not in ARCHES:
            raise RecipeError(f"{file}: rootfs.arch_include.{arch}: unknown architecture (known: {', '.join(ARCHES)})")
        result[arch] = table.take_strings(arch)
    table.done()
    return result


def load_recipe(path: Path = DEFAULT_RECIPE) -> Recipe:
    """Read and validate a recipe; every problem is one RecipeError line naming file and key."""
    file = path.name
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise RecipeError(f"{path}: recipe not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{file}: not valid TOML", exc) from exc

    top = _Table(file, "recipe", raw)
    image = _Table(file, "image", top.take("image", dict))
    kernel = _Table(file, "kernel", top.take("kernel", dict))
    packages = _Table(file, "packages", top.take("packages", dict))
    rootfs = _Table(file, "rootfs", top.take("rootfs", dict))
    files_raw = top.take("files", dict)
    initrd = _Table(file, "initrd", top.take("initrd", dict))
    services = _Table(file, "services", top.take("services", dict))
    top.done()

    configs = kernel.take_str_map("config")
    for arch in configs:
        if arch not in ARCHES:
            raise RecipeError(f"{file}: kernel.config.{arch}: unknown architecture (known: {', '.join(ARCHES)})")

    files: dict[str, GuestFile] = {}
    for dest, spec in files_raw.items():
        entry = _Table(file, f'files."{dest}"', spec)
        source = entry.take("source", str)
        mode = _parse_mode(file, dest, entry.take("mode", str, "0644"))
        entry.done()
        files[dest] = GuestFile(source=source, mode=mode)

    recipe = Recipe(
        path=path,
        name=image.take("name", str),
        version=image.take("version", str),
        suite=image.take("suite", str),
        mirror=image.take("mirror", str),
        keyring=image.take("keyring", str),
        kernel_source_package=kernel.take("source_package", str),
        kernel_configs=configs,
        cmdline=kernel.take("cmdline", str),
        packages=packages.take_strings("install"),
        compression=rootfs.take("compression", str),
        block_size=rootfs.take("block_size", str, "1M"),
        include=rootfs.take_strings("include"),
        ca_bundle=rootfs.take("ca_bundle", str, ""),
        links=rootfs.take_str_map("links", {}),
        arch_include=_arch_include(file, rootfs.take("arch_include", dict, {})),
        files=files,
        initrd_init=initrd.take("init", str),
        initrd_compression=initrd.take("compression", str),
        sysinit=services.take("sysinit", str),
        respawn=services.take_strings("respawn"),
        shutdown=services.take("shutdown", str),
    )
    for t in (image, kernel, packages, rootfs, initrd, services):
        t.done()
    if recipe.compression not in ROOTFS_COMPRESSIONS:
        raise RecipeError(f"{file}: rootfs.compression: must be one of {', '.join(ROOTFS_COMPRESSIONS)}, "
                          f"got {recipe.compression!r}")
    if recipe.initrd_compression not in ("zstd", "gzip", "none"):
        raise RecipeError(f"{file}: initrd.compression: must be zstd, gzip or none")
    for dest, guest in recipe.files.items():
        if not recipe.guest_file(guest.source).is_file():
            raise RecipeError(f"{file}: files.\"{dest}\".source: no such guest file {guest.source!r}")
    return recipe
