#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, then every test in
# release mode (the golden tests run the real MiniLM forward and backward).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-model.sh
cargo fmt --all -- --check
cargo clippy --release --all-targets --quiet -- -D warnings
cargo test --release
