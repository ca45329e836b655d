#!/usr/bin/env bash
# The main job on a fresh machine: fetch the default model once, build, and
# train and evaluate a deep prompt on SuperGLUE CB.
# Data root: $PTUNING_DATA (default ../shared/data, beside this clone).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-model.sh
cargo build --release --quiet
exec target/release/ptuning demo --data "${PTUNING_DATA:-../shared/data}/superglue/CB" "$@"
