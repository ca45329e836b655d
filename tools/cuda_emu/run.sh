#!/usr/bin/env bash
# Builds and runs the CPU emulation of the CUDA kernels (no GPU needed).
set -euo pipefail
cd "$(dirname "$0")"
out="${TMPDIR:-/tmp}/ptuning-check-kernels"
g++ -std=c++20 -O1 -pthread -Wno-unknown-pragmas -o "$out" check_kernels.cpp
"$out"
