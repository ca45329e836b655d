#!/usr/bin/env bash
# Builds what bench/gpu.sh runs on a GPU machine (which has no Rust): the
# release binary and the CUDA test binary, stripped, into .gpu/ (ignored by
# git; carry it with the device tool's `carry: [".gpu"]`). For its serving
# section, also the default backbone's tokenizer (the random BERTs have the
# same uncased vocabulary) and SuperGLUE CB's train and val files, from
# PTUNING_DATA (default ../shared/data); without them that section is skipped.
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
bash scripts/fetch-model.sh
tokenizer="${PTUNING_CACHE:-$HOME/.cache/ptuning}/models/all-MiniLM-L6-v2/tokenizer.json"
cb="${PTUNING_DATA:-../shared/data}/superglue/CB"
if [ -f "$cb/train.jsonl" ] && [ -f "$cb/val.jsonl" ]; then
    mkdir -p .gpu/serve/data/superglue/CB
    cp "$tokenizer" .gpu/serve/
    cp "$cb/train.jsonl" "$cb/val.jsonl" .gpu/serve/data/superglue/CB/
else
    echo "no CB data in $cb: bench/gpu.sh will skip serving" >&2
fi
du -sh .gpu/*
