#!/usr/bin/env bash
# Set-up for bench/instructions.py: the instruction-count plugin and an arm64 LiteRT sysroot.
#
# Has the farm build its qemu plugin (fwedge.device_farm.instructions) and puts together an arm64 Python 3.11
# with numpy and ai-edge-litert, unpacked (never installed) from Debian's arm64 .debs and PyPI's
# manylinux aarch64 wheels, for qemu-aarch64 -L. The plugin lands in fwedge's cache, the sysroot in the cache folder
# (default ~/.cache/fwedge/bench); a step whose result is there is skipped, so a second run does
# nothing. Needs root the first time, for dpkg --add-architecture arm64; the plugin needs no glib headers.
#
# Usage: bench/setup_instructions.sh [CACHE_DIR]     (make bench-setup)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${1:-${FWEDGE_BENCH_CACHE:-$HOME/.cache/fwedge/bench}}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$CACHE"

# 1. The plugin: the farm's own (fwedge/device_farm/qemu_plugin/), built by the farm's builder
# into fwedge's cache.
"$PYTHON" -c "from fwedge.device_farm.instructions import build_plugin; print('plugin:', build_plugin())"

# 2. The arm64 sysroot (the peer's only; the farm does not need it). Debian bookworm's Python is 3.11, so numpy stays below 2.3 (the last
# minor with 3.11 wheels); ai-edge-litert is the version of the project's constraints.
SYSROOT="$CACHE/sysroot-arm64"
LITERT_VERSION="$(sed -n 's/^ai-edge-litert==//p' "$HERE/../constraints.txt")"
STAMP="$SYSROOT/.fwedge-sysroot-litert-$LITERT_VERSION"
DEBS=(python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 zlib1g libexpat1 libffi8 libssl3
      libstdc++6 libgcc-s1 libbz2-1.0 liblzma5 libcrypt1 libuuid1)
if [ ! -f "$STAMP" ]; then
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    if [ "$(id -u)" != 0 ]; then echo "need root for dpkg --add-architecture arm64" >&2; exit 1; fi
    dpkg --add-architecture arm64
    apt-get update -qq
  fi
  WORK="$(mktemp -d "$CACHE/sysroot.XXXXXX")"
  trap 'rm -rf "$WORK"' EXIT
  mkdir -p "$WORK/debs" "$WORK/root" "$WORK/wheels"
  (cd "$WORK/debs" && apt-get download -q "${DEBS[@]/%/:arm64}" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
  for deb in "$WORK"/debs/*.deb; do dpkg-deb -x "$deb" "$WORK/root"; done
  test -x "$WORK/root/usr/bin/python3.11" || { echo "the arm64 python3.11 did not unpack" >&2; exit 1; }
  "$PYTHON" -m pip download -q --isolated --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_27_aarch64 --platform manylinux2014_aarch64 -d "$WORK/wheels" \
    "numpy<2.3" "ai-edge-litert==$LITERT_VERSION"
  SITE="$WORK/root/usr/lib/python3/dist-packages"  # what Debian's site.py puts on sys.path
  mkdir -p "$SITE"
  # a wheel is a zip laid out for site-packages: unpacking it is all an install does that matters here
  for wheel in "$WORK"/wheels/*.whl; do "$PYTHON" -m zipfile -e "$wheel" "$SITE"; done
  rm -rf "$SYSROOT"
  mv "$WORK/root" "$SYSROOT"
  touch "$STAMP"
  echo "unpacked the arm64 sysroot into $SYSROOT"
fi
echo "sysroot: $SYSROOT"
