#!/usr/bin/env bash
# Builds and runs the CPU emulation of the CUDA kernels (no GPU needed), once
# with the blocks and the threads of each block in order and once reversed: a
# race shows as a different digest. HEAD_DIM=64 bash run.sh for BERT's heads.
set -euo pipefail
cd "$(dirname "$0")"
hd="${HEAD_DIM:-8}"
out="${TMPDIR:-/tmp}/ptuning-check-kernels-$hd"
g++ -std=c++20 -O1 -Wno-unknown-pragmas -DHEAD_DIM="$hd" -o "$out" check_kernels.cpp
"$out" | tee "$out.forward"
PTUNING_EMU_ORDER=reverse "$out" >"$out.reverse"
if ! cmp -s "$out.forward" "$out.reverse"; then
    echo "the threads' order changes the results (a race):" >&2
    diff "$out.forward" "$out.reverse" >&2 || true
    exit 1
fi
echo "the same in reverse thread order"
