"""Pure tests of the image builder: strict recipe, cpio, ELF reading, apt plumbing, kernel config."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from vmimage import apt, cpio, elf, kernel, rootfs
from vmimage.errors import RecipeError
from vmimage.recipe import DEFAULT_RECIPE, load_recipe


def test_default_recipe_loads_and_pins_the_suite() -> None:
    recipe = load_recipe()
    assert recipe.suite == "trixie"
    assert "docker.io" in recipe.packages and "openssh-server" in recipe.packages
    assert recipe.kernel_config("x86_64").is_file()


def write_recipe(tmp_path: Path, text: str) -> Path:
    (tmp_path / "guest").mkdir(exist_ok=True)
    for name in ("init", "boot"):
        (tmp_path / "guest" / name).write_text("#!/bin/sh\n")
    path = tmp_path / "image.toml"
    path.write_text(text)
    return path


def recipe_text(**replace: str) -> str:
    text = DEFAULT_RECIPE.read_text()
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    return text


def test_unknown_key_is_named_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "image.toml"
    path.write_text(recipe_text(**{'suite = "trixie"': 'suite = "trixie"\nsuit = "bookworm"'}))
    with pytest.raises(RecipeError, match=r"image\.toml: image\.suit: unknown key"):
        load_recipe(path)


def test_wrong_type_is_named(tmp_path: Path) -> None:
    path = tmp_path / "image.toml"
    path.write_text(recipe_text(**{'version = "0.1.0"': "version = 1"}))
    with pytest.raises(RecipeError, match=r"image\.version: expected str, got int"):
        load_recipe(path)


def test_missing_guest_file_is_an_error(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, recipe_text())
    with pytest.raises(RecipeError, match="no such guest file"):
        load_recipe(path)


def test_unknown_table(tmp_path: Path) -> None:
    path = tmp_path / "image.toml"
    path.write_text(recipe_text() + "\n[extras]\nx = 1\n")
    with pytest.raises(RecipeError, match=r"recipe\.extras: unknown key"):
        load_recipe(path)


def test_cpio_is_reproducible_and_readable(tmp_path: Path) -> None:
    entries = [cpio.directory("bin"), cpio.regular("bin/hello", b"hi\n", 0o755), cpio.symlink("bin/sh", "hello"),
               cpio.char_device("dev/console", 5, 1)]
    first, second = cpio.write_newc(entries), cpio.write_newc(list(reversed(entries)))
    assert first == second
    listing = subprocess.run(["cpio", "-t", "-v"], input=first, capture_output=True, check=True).stdout.decode()
    assert "bin/hello" in listing and "bin/sh -> hello" in listing
    assert "root" in listing.splitlines()[0]
    assert all(len(line) for line in listing.splitlines())


def test_elf_reader_finds_interpreter_and_needed() -> None:
    info = elf.read_elf(Path("/bin/ls").read_bytes())
    assert info.interpreter and info.interpreter.endswith("ld-linux-x86-64.so.2")
    assert "libc.so.6" in info.needed
    with pytest.raises(ValueError):
        elf.read_elf(b"#!/bin/sh\n")


def test_elf_sections_name_and_link_the_dynamic_tables() -> None:
    data = Path("/bin/ls").read_bytes()
    found = elf.sections(data)
    by_name = {s.name: s for s in found}
    assert {b".gnu.hash", b".dynsym", b".dynstr", b".rela.dyn", b".text"} <= set(by_name)
    assert by_name[b".gnu.hash"].kind == 0x6FFFFFF6
    assert found[by_name[b".gnu.hash"].link].name == b".dynsym"
    assert found[by_name[b".dynsym"].link].name == b".dynstr"
    assert all(s.offset + s.size <= len(data) for s in found if s.kind != 8)  # SHT_NOBITS has no bytes
    # Not ELF64, or a section table that runs past the end of the file: no sections, no exception.
    assert elf.sections(b"#!/bin/sh\n" * 10) == []
    truncated = bytearray(data[:4096])
    assert elf.sections(truncated) == []


def test_apt_options_never_touch_the_host_state(tmp_path: Path) -> None:
    opts = apt.apt_options(tmp_path, "aarch64")
    joined = " ".join(opts)
    assert "Dir::Etc::SourceList=/dev/null" in joined
    assert f"Dir::State::status={tmp_path}/status" in joined
    assert "APT::Architecture=arm64" in joined
    assert "/var/lib/apt" not in joined and "/etc/apt" not in joined


def test_parse_simulated_install() -> None:
    out = ("Inst libc6 (2.41-12 Debian:13/stable [amd64])\n"
           "Inst docker.io (26.1.5+dfsg1-9+b1 Debian:13/stable [amd64])\nConf libc6 (2.41-12)\n")
    assert apt.parse_simulated_install(out) == [apt.Package("libc6", "2.41-12", "amd64"),
                                                apt.Package("docker.io", "26.1.5+dfsg1-9+b1", "amd64")]
    assert apt.deb_filename(apt.Package("zlib1g", "1:1.3", "amd64")) == "zlib1g_1%3a1.3_amd64.deb"


def test_config_mismatches() -> None:
    fragment = "CONFIG_A=y\nCONFIG_B=n\nCONFIG_C=\"x\"\n"
    config = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"y\"\n"
    assert kernel.config_mismatches(fragment, config) == ['CONFIG_C="x" (got "y")']


def test_kernel_cache_key_changes_with_inputs() -> None:
    base = kernel.cache_key("src", b"CONFIG_A=y\n", "x86_64", "gcc 12")
    assert base != kernel.cache_key("src", b"CONFIG_A=n\n", "x86_64", "gcc 12")
    assert base != kernel.cache_key("src2", b"CONFIG_A=y\n", "x86_64", "gcc 12")
    assert base != kernel.cache_key("src", b"CONFIG_A=y\n", "x86_64", "gcc 13")


def test_mksquashfs_is_reproducible(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "file").write_text("x" * 10000)
    outs = []
    for n in range(2):
        (src / "etc" / "file").touch()  # a different mtime must not matter
        out = tmp_path / f"out{n}.img"
        subprocess.run(rootfs.mksquashfs_argv(src, out, "zstd", "128K", "x86_64"), check=True, capture_output=True)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_inittab_from_services() -> None:
    text = rootfs.inittab(load_recipe())
    assert "::sysinit:/usr/lib/pinnace/boot" in text
    assert "::respawn:/usr/sbin/sshd -D -e -f /etc/ssh/sshd_config" in text
    assert "::shutdown:/usr/lib/pinnace/shutdown" in text


def test_initrd_contains_only_busybox_and_init() -> None:
    from vmimage.initrd import initrd_entries

    names = {e.name for e in initrd_entries(b"BB", b"#!/bin/busybox sh\n")}
    assert {"init", "bin/busybox", "dev/console"} <= names
    assert not any(n.startswith(("usr", "lib")) for n in names)


def test_mksquashfs_argv_for_lz4_and_uncompressed() -> None:
    lz4 = rootfs.mksquashfs_argv(Path("/src"), Path("/out"), "lz4", "1M", "x86_64")
    assert lz4[lz4.index("-comp") + 1] == "lz4" and "-Xhc" in lz4
    none = rootfs.mksquashfs_argv(Path("/src"), Path("/out"), "none", "1M", "x86_64")
    assert "-comp" not in none and {"-noI", "-noD", "-noF", "-noX"} <= set(none)


def test_the_default_recipe_uses_lz4_and_the_kernel_reads_it() -> None:
    from vmimage.recipe import DEFAULT_RECIPE, load_recipe

    assert load_recipe(DEFAULT_RECIPE).compression == "lz4"
    for arch in ("x86_64", "aarch64"):
        config = (DEFAULT_RECIPE.parent / "kernel" / f"{arch}.config").read_text()
        assert "CONFIG_SQUASHFS_LZ4=y" in config
