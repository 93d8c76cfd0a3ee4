#!/usr/bin/env bash
# Installs everything Pinnace needs on a fresh Debian/Ubuntu machine (run as root or with sudo):
# QEMU, the image-builder tools, a virtual environment with the package, and the guest image.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
APT_PACKAGES=(
  qemu-system-x86 qemu-utils                       # the VM
  qemu-system-arm gcc-aarch64-linux-gnu            # the aarch64 guest: run it under TCG, cross-compile its kernel
  openssh-client                                   # `pinnace ssh`, the socket benchmark
  squashfs-tools zstd cpio                         # root image and initrd
  build-essential bc bison flex libelf-dev libssl-dev xz-utils   # the guest kernel
  python3-venv python3-dev debian-archive-keyring
  openssh-server                                   # tests: a host sshd for the forwarder tests
  libsqlite3-dev                                   # tests: a static sqlite for the WAL-on-a-share test
  dnsmasq-base                                     # tests: a DNS server on the host's loopback (no service)
  docker-registry tinyproxy                        # tests: a registry and a proxy on the host's loopback
  xvfb trayer imagemagick libxcb-cursor0 libxkbcommon-x11-0 libxcb-icccm4 libxcb-keysyms1
  libxcb-image0 libxcb-render-util0 libxcb-xinerama0 libxcb-shape0 libegl1 libgl1 libfontconfig1
  libdbus-1-3                                      # the tray app (and its screenshot tests)
  dpkg-dev debootstrap lintian                     # the .deb: build it, install it into a fresh root, lint it
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  # The tests start their own registry and proxy on private loopback ports: the packages' system
  # services (listening on :5000 and :8888) are not wanted where this script installed them.
  if [ -d /run/systemd/system ]; then
    for unit in docker-registry tinyproxy; do
      if printf '%s\n' "${missing[@]}" | grep -qx "$unit"; then
        $SUDO systemctl disable --now "$unit" >/dev/null 2>&1 || true
      fi
    done
  fi
fi

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'

# The guest image: kernel (cached by input hash under ~/.cache/pinnace), initrd, root image.
.venv/bin/pinnace image build
# The aarch64 image too, for its tests (CI sets this): the cross-built kernel takes ~12 min once.
if [ "${PINNACE_WITH_AARCH64:-0}" = 1 ]; then
  .venv/bin/pinnace image build --arch aarch64
fi
