#!/usr/bin/env bash
# Builds what bench/gpu.sh runs on a GPU machine (which has no Rust): the
# release binary and the CUDA test binary, stripped, into .gpu/ (ignored by
# git; carry it with the device tool's `carry: [".gpu"]`). For its serving
# section, also the default backbone's tokenizer (the random BERTs have the
# same uncased vocabulary) and SuperGLUE CB's train and val files, from
# PTUNING_DATA (default ../shared/data); without them that section is skipped.
# PTUNING_NVRTC_LIBS (folders of libnvrtc.so.13, colon-separated): the
# kernels must compile with each NVRTC before device time is spent. The GPU
# machine's may be older than ours: NVRTC 13.0 refused a generic lambda
# that 13.2 took, and a whole card run was lost to it (scripts/test.sh
# checks 13.0 too: PTUNING_NVRTC_LIBS="$(bash scripts/fetch-nvrtc.sh)").
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
IFS=: read -ra nvrtc_libs <<< "${PTUNING_NVRTC_LIBS:-}"
for lib in "${nvrtc_libs[@]}"; do
    echo "compiling the kernels with the NVRTC in $lib" >&2
    PTUNING_REQUIRE_NVRTC=1 LD_LIBRARY_PATH="$lib" cargo test --release --quiet --test cuda -- kernels_compile_with_nvrtc >&2
done
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
