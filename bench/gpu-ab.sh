#!/usr/bin/env bash
# Times several builds of ptuning against each other on one GPU, in rounds
# that alternate them, so that a change is judged against its base on the
# same card in the same lease (PyTorch's times moved by up to 60 % between
# two calls of one lease: docs/results.md, run 6). No PyTorch needed but to
# write the random weights (bench/random_bert.py).
# Usage: bash bench/gpu-ab.sh NAME=BINARY [NAME=BINARY ...]
#   SIZES (default "large"), PRECISIONS (default "bf16"), ROUNDS (default 3):
#   each round runs `bench` of every build on every size and precision
#   (batch 32 x seq 128, prefix 20, 20 iterations after 3 of warm-up).
# Writes every run's JSON to ${OUT:-.}/gpu-ab.jsonl and prints, per size,
# precision and build, the median over the rounds of the training step's
# and the inference's medians, with their range.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}"
python="${PTUNING_TORCH_PYTHON:-python3}"
[ $# -ge 1 ] || { echo "usage: bash bench/gpu-ab.sh NAME=BINARY [NAME=BINARY ...]" >&2; exit 2; }
. bench/cuda-libs.sh
results="$out/gpu-ab.jsonl"; : > "$results"
for size in ${SIZES:-large}; do
    dir="/tmp/bert-$size"
    [ -f "$dir/model.safetensors" ] || "$python" bench/random_bert.py --size "$size" --out "$dir" > /dev/null
done
for round in $(seq "${ROUNDS:-3}"); do
    for size in ${SIZES:-large}; do
        for precision in ${PRECISIONS:-bf16}; do
            for build in "$@"; do
                name="${build%%=*}" bin="${build#*=}"
                run=$(timeout 120 "$bin" bench --device cuda --precision "$precision" --model "/tmp/bert-$size" \
                    --batch 32 --seq 128 --prefix-len 20 --warmup 3 --iters 20 --json 2>> "$out/gpu-ab-errors.log")
                echo "{\"round\": $round, \"size\": \"$size\", \"precision\": \"$precision\", \"build\": \"$name\", \"run\": ${run:-null}}" >> "$results"
            done
        done
    done
done
"$python" - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
groups = {}
for r in rows:
    groups.setdefault((r["size"], r["precision"], r["build"]), []).append(r["run"] or {})
print("| model | precision | build | train step (ms) | inference (ms) |")
print("| --- | --- | --- | --- | --- |")
for (size, precision, build), runs in groups.items():
    def cell(key):
        v = [r[key] for r in runs if key in r]
        if not v:
            return "failed"
        return f"{statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})"
    print(f"| bert-{size} | {precision} | {build} | {cell('train_step_ms')} | {cell('infer_ms')} |")
PY
