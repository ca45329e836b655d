#!/usr/bin/env bash
# Fetches NVRTC 13.0 once and prints the folder of its libnvrtc.so.13: PyPI's
# nvidia-cuda-nvrtc carries the library, checked against a pinned sha256.
# 13.0 is the oldest CUDA 13, what PyTorch's cu130 wheels (and so the GPU
# machines) carry; it refuses C++ that newer NVRTCs and the emulator's g++
# accept (a generic lambda cost a whole card run). scripts/test.sh compiles
# the CUDA kernels with it, for every architecture, on machines without a GPU.
set -euo pipefail

cache="${PTUNING_CACHE:-$HOME/.cache/ptuning}"
version="13.0.88"
wheel_sha256="ad9b6d2ead2435f11cbb6868809d2adeeee302e9bb94bcf0539c7a40d80e8575"
dest="$cache/nvrtc/$version"

if [ -f "$dest/libnvrtc.so.13" ] && [ -f "$dest/libnvrtc-builtins.so.13.0" ]; then
    echo "$dest"
    exit 0
fi

echo "fetching NVRTC $version (PyPI nvidia-cuda-nvrtc, about 90 MB) into $dest" >&2
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --disable-pip-version-check \
    --only-binary=:all: --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 \
    "nvidia-cuda-nvrtc==$version" -d "$tmp"
wheel="$(ls "$tmp"/*.whl)"
echo "$wheel_sha256  $wheel" | sha256sum --check --quiet
# Unpack the two libraries next to the destination, then rename the folder
# into place, so an interrupted fetch never leaves half a library behind.
mkdir -p "$cache/nvrtc"
rm -rf "$dest.partial"
python3 - "$wheel" "$dest.partial" <<'PY'
import os, sys, zipfile
wheel, stage = sys.argv[1], sys.argv[2]
os.makedirs(stage)
with zipfile.ZipFile(wheel) as z:
    for lib in ("libnvrtc.so.13", "libnvrtc-builtins.so.13.0"):
        with open(os.path.join(stage, lib), "wb") as f:
            f.write(z.read("nvidia/cu13/lib/" + lib))
PY
rm -rf "$dest"
mv "$dest.partial" "$dest"
echo "NVRTC ready: $dest" >&2
echo "$dest"
