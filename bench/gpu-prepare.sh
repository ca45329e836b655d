#!/usr/bin/env bash
# Builds what bench/gpu.sh runs on a GPU machine (which has no Rust): the
# release binary and the CUDA test binary, stripped, into .gpu/ (ignored by
# git; carry it with the device tool's `carry: [".gpu"]`).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
tests=$(cargo test --release --test cuda --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "cuda" and m.get("executable"):
        print(m["executable"])')
rm -rf .gpu && mkdir -p .gpu
strip -o .gpu/ptuning target/release/ptuning
strip -o .gpu/cuda-tests "$tests"
du -sh .gpu/*
