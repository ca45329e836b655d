#!/usr/bin/env bash
# The main job on a fresh machine: fetch the default model once, build, then
# train a deep prompt on SuperGLUE CB and evaluate its best checkpoint.
# Data root: $PTUNING_DATA (default ../shared/data, beside this clone).
# Run folder: $PTUNING_RUN (default runs/cb). Extra flags go to `ptuning train`.
set -euo pipefail
cd "$(dirname "$0")/.."
data="${PTUNING_DATA:-../shared/data}/superglue/CB"
run="${PTUNING_RUN:-runs/cb}"
bash scripts/fetch-model.sh
cargo build --release --quiet
if [ -e "$run/last" ]; then
    echo "$run already holds a run: remove it or set PTUNING_RUN" >&2
    exit 1
fi
# The recipe is recipes/cb.toml; flags given to this script override it.
target/release/ptuning train --config recipes/cb.toml --data "$data" --out "$run" "$@"
echo
echo "dev metrics of $run/best:"
target/release/ptuning eval --run "$run/best" --data "$data" --split val --json
