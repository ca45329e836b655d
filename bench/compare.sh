#!/usr/bin/env bash
# Runs `ptuning bench` and the PyTorch peer (bench/torch_peer.py) on the same
# model and shapes in one run, and prints both with the ratios ours/PyTorch.
# Needs a Python with torch and transformers: $PTUNING_TORCH_PYTHON
# (default /work/venv/torch/bin/python; see tools/README.md).
# Usage: bench/compare.sh [--model DIR] [--batch 16] [--seq 128] [--prefix-len 16] [--threads 2]
#                         [--method p-tuning-v2|prompt-tuning]
# --method prompt-tuning: shallow prompt tuning on both sides (the peer runs PEFT's PROMPT_TUNING).
set -euo pipefail
cd "$(dirname "$0")/.."
model="${PTUNING_MODEL_DIR:-$HOME/.cache/ptuning/models/all-MiniLM-L6-v2}"
batch=16 seq=128 prefix=16 threads=2 method=p-tuning-v2
while [ $# -gt 0 ]; do
    case "$1" in
        --model) model="$2"; shift 2 ;;
        --batch) batch="$2"; shift 2 ;;
        --seq) seq="$2"; shift 2 ;;
        --prefix-len) prefix="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        --method) method="$2"; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
python="${PTUNING_TORCH_PYTHON:-/work/venv/torch/bin/python}"
cargo build --release --quiet
ours=$(target/release/ptuning --threads "$threads" bench --model "$model" --method "$method" --batch "$batch" --seq "$seq" --prefix-len "$prefix" --json)
peer=$("$python" bench/torch_peer.py --model "$model" --method "$method" --batch "$batch" --seq "$seq" --prefix-len "$prefix" --threads "$threads" --json)
python3 - "$ours" "$peer" <<'PY'
import json, sys
ours, peer = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"{ours['method']}: batch {ours['batch']} x seq {ours['seq']}, prefix {ours['prefix_len']}, "
      f"{ours['threads']} threads (peer: {peer['peer']})")
print(f"{'':22}{'ptuning':>10}{'pytorch':>10}{'ratio':>8}")
for key, unit in [("train_step_ms", "ms"), ("infer_ms", "ms"), ("working_mb", "MB"), ("peak_rss_mb", "MB"), ("rss_after_load_mb", "MB")]:
    a, b = ours[key], peer[key]
    print(f"{key + ' (' + unit + ')':22}{a:>10.1f}{b:>10.1f}{a / b:>8.2f}")
PY
