"""Where images and build caches live by default (platformdirs; PINNACE_HOME / PINNACE_CACHE_DIR
override), so `python -m vmimage` and the hypervisor agree without importing each other."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import platformdirs

APP = "pinnace"


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """Build caches (apt state, kernels) are shared by every PINNACE_HOME: they are big and keyed."""
    env = os.environ if env is None else env
    if env.get("PINNACE_CACHE_DIR"):
        return Path(env["PINNACE_CACHE_DIR"])
    return Path(platformdirs.user_cache_dir(APP))


def image_root(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("PINNACE_HOME"):
        return Path(env["PINNACE_HOME"]) / "images"
    return Path(platformdirs.user_data_dir(APP)) / "images"


def default_image_dir(arch: str, env: Mapping[str, str] | None = None) -> Path:
    """PINNACE_IMAGE_DIR (a built image to use as is) wins; otherwise <image root>/<arch>."""
    env = os.environ if env is None else env
    if env.get("PINNACE_IMAGE_DIR"):
        return Path(env["PINNACE_IMAGE_DIR"])
    return image_root(env) / arch
